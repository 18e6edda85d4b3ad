"""The replay source: the DuckDB scan and the line-checking reader give the same
events, and a bad line mid-file hands the rest over without losing or repeating any."""

from __future__ import annotations

import gzip

import orjson
import pytest

import monitor.replay.reader as replay
import monitor.replay.scan as scan
from monitor.replay.reader import BLOCK_BYTES, ReadStats, read_chunks
from monitor.ecs import parse_timestamp
from tests.synth import generate


@pytest.fixture(scope="module")
def stream():
    return generate(hours=0.3, learn_s=600, sources=60, seed=21)


@pytest.fixture(scope="module")
def agent_file(stream, tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "events.ndjson"
    stream.write_ndjson(path)
    return path


def events_of(chunks) -> list:
    return [chunk.event(i) for chunk in chunks for i in range(len(chunk))]


def checked_only(path, full: bool, stats: ReadStats | None = None) -> list:
    """What the line-checking reader alone makes of the whole file."""
    return events_of(replay._checked(path, stats or ReadStats(), {}, full, BLOCK_BYTES, 0, "test"))


@pytest.mark.parametrize("full", [False, True])
def test_scan_reads_a_clean_file_whole_and_as_the_checking_reader_does(agent_file, stream, full):
    stats = ReadStats()
    scanned = events_of(read_chunks([agent_file], stats, full=full))
    assert stats.scanned == len(stream) and stats.handovers == [] and stats.slow_blocks == 0
    assert stats.connections == len(stream) and stats.malformed == 0
    assert scanned == checked_only(agent_file, full)
    assert [e.id for e in scanned] == [f"ev-{i}" for i in range(len(stream))]


def test_scan_reads_gzip_and_minimal_files(stream, tmp_path):
    minimal = tmp_path / "other-tool.ndjson"
    stream.write_ndjson(minimal, minimal=True)
    packed = tmp_path / "other-tool.log"          # gzip recognised by content, not by name
    packed.write_bytes(gzip.compress(minimal.read_bytes()))
    for path in (minimal, packed):
        stats = ReadStats()
        events = events_of(read_chunks([path], stats))
        assert stats.scanned == len(stream) and stats.handovers == []
        assert [(e.timestamp_ns, e.source_ip, e.source_port) for e in events] == \
               [(int(t), ip, int(p)) for t, ip, p in zip(stream.t, stream.src, stream.sport)]


def test_a_bad_line_mid_file_hands_the_rest_over(agent_file, stream, tmp_path, monkeypatch):
    # DuckDB stops all its readers at a parse error, so the bad line sits ~80 MB into a ~100 MB file
    monkeypatch.setattr(scan, "TABLE_ROWS", 1000)
    lines = agent_file.read_bytes().splitlines() * 3
    bad_at = len(lines) - 10_000                         # its line number in the new file
    body = lines[:2000] + [b"", b"   "] + lines[2000:bad_at - 3] + [b'{"@timestamp": broken'] + lines[bad_at - 3:]
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_bytes(b"\n".join(body) + b"\n")
    clean = tmp_path / "clean.ndjson"
    clean.write_bytes(b"\n".join(lines) + b"\n")
    stats = ReadStats()
    events = events_of(read_chunks([mixed], stats))
    assert 0 < stats.scanned < len(lines) and len(stats.handovers) == 1
    assert stats.malformed == 1 and [(b.line, b.path) for b in stats.bad_lines] == [(bad_at, str(mixed))]
    assert events == events_of(read_chunks([clean]))          # none lost, none twice


def test_a_table_failing_the_checks_hands_over_from_its_first_document(agent_file, stream, tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "TABLE_ROWS", 1000)
    lines = agent_file.read_bytes().splitlines()
    doc = orjson.loads(lines[4500])
    doc["source"]["port"] = 70000                        # well-formed JSON, a port out of range
    lines[4500] = orjson.dumps(doc)
    odd = tmp_path / "odd.ndjson"
    odd.write_bytes(b"\n".join(lines) + b"\n")
    stats = ReadStats()
    events = events_of(read_chunks([odd], stats))
    assert len(stats.handovers) == 1 and stats.scanned == 4000
    assert [b.line for b in stats.bad_lines] == [4501] and "port out of range" in stats.bad_lines[0].message
    clean = events_of(read_chunks([agent_file]))
    assert events == clean[:4500] + clean[4501:]


def test_a_path_duckdb_would_glob_is_read_by_the_checking_reader(agent_file, tmp_path):
    (tmp_path / "events1.ndjson").write_bytes(b"\n".join(agent_file.read_bytes().splitlines()[:10]) + b"\n")
    odd = tmp_path / "events[12].ndjson"              # as a glob it would match events1.ndjson
    odd.write_bytes(agent_file.read_bytes())
    stats = ReadStats()
    events = events_of(read_chunks([odd], stats))
    assert stats.scanned == 0 and len(stats.handovers) == 1 and stats.malformed == 0
    assert events == events_of(read_chunks([agent_file]))


def stamp_file(path, stamps: list[str]):
    path.write_bytes(b"".join(orjson.dumps({
        "@timestamp": stamp, "event": {"action": "connection_accepted"},
        "source": {"ip": "192.0.2.7", "port": 40000 + i}, "destination": {"ip": "127.0.0.1", "port": 8080},
    }) + b"\n" for i, stamp in enumerate(stamps)))
    return path


@pytest.mark.parametrize("stamps", [
    ["2026-01-01T00:00:00.016658Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123456789Z",
     "2026-01-01T02:00:00.5+02:00", "2026-01-01T00:00:00.987654321-05:30"],
    ["2026-01-01T00:00:01", "2026-01-01 00:00:02.25", "2026-01-01T00:00:03.123456789"],
], ids=["zoned", "naive"])
def test_timestamps_are_converted_at_once_as_parse_timestamp_would(stamps, tmp_path, monkeypatch):
    expected = [parse_timestamp(s) for s in stamps]

    def refuse(text):
        raise AssertionError(f"converted one by one: {text}")

    monkeypatch.setattr(replay, "parse_timestamp", refuse)
    stats = ReadStats()
    events = events_of(read_chunks([stamp_file(tmp_path / "stamps.ndjson", stamps)], stats))
    assert stats.scanned == len(stamps) and stats.handovers == []
    assert [e.timestamp_ns for e in events] == expected


def test_mixed_and_out_of_range_timestamps(tmp_path):
    mixed = ["2026-01-01T00:00:00Z", "2026-01-01T00:00:01", "2026-01-01T02:00:02+02:00",
             "2026-01-01T00:00:03.1234567891Z"]
    events = events_of(read_chunks([stamp_file(tmp_path / "mixed.ndjson", mixed)]))
    assert [e.timestamp_ns for e in events] == [parse_timestamp(s) for s in mixed]
    stats = ReadStats()
    far = ["2026-01-01T00:00:00Z", "2300-01-01T00:00:00Z", "2026-01-01T00:00:02Z"]
    events = events_of(read_chunks([stamp_file(tmp_path / "far.ndjson", far)], stats))
    assert [e.timestamp_ns for e in events] == [parse_timestamp(far[0]), parse_timestamp(far[2])]
    assert [(b.line, "@timestamp" in b.message) for b in stats.bad_lines] == [(2, True)]


def test_a_folder_named_like_a_field_is_not_a_field(agent_file, tmp_path):
    folder = tmp_path / "event=x" / "@timestamp=5"      # DuckDB's hive partitioning would read these as columns
    folder.mkdir(parents=True)
    (folder / "events.ndjson").write_bytes(agent_file.read_bytes())
    stats = ReadStats()
    assert events_of(read_chunks([folder / "events.ndjson"], stats)) == events_of(read_chunks([agent_file]))
    assert stats.handovers == []


def test_both_readers_convert_odd_values_alike(tmp_path):
    docs = [{"@timestamp": "2026-01-01T00:00:00Z", "event": {"action": "connection_closed", "duration": 1.5},
             "source": {"ip": "192.0.2.7", "port": 80.6}, "destination": {"ip": "127.0.0.1", "port": "8080"},
             "socat": {"listener": {"port": 9000.5}, "refused": "false"}}]
    path = tmp_path / "odd.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(orjson.dumps(d) + b"\n" for d in docs))
    scanned = events_of(read_chunks([path]))
    checked = checked_only(path, full=False)
    assert scanned == checked and len(scanned) == 1
    event = scanned[0]
    assert (event.source_port, event.destination_port, event.listener.port) == (81, 8080, 9000)
    assert event.duration_ns == 2 and event.refused is False


def test_why_the_scan_stopped_is_kept(tmp_path):
    path = stamp_file(tmp_path / "bad.ndjson", ["2026-01-01T00:00:00Z"])
    path.write_bytes(path.read_bytes() + b"{not json\n")
    stats = ReadStats()
    events_of(read_chunks([path], stats))
    assert len(stats.handovers) == 1 and str(path) in stats.handovers[0]
    assert "from line 1 (the fast scan stopped: " in stats.handovers[0] and "Malformed JSON" in stats.handovers[0]


def test_skipping_documents_skips_blank_lines(tmp_path):
    path = tmp_path / "blank.ndjson"
    path.write_bytes(b'{"a":1}\n\n  \n{"a":2}\n{"a":3}\n')
    for documents, line, after in [(0, 1, 0), (1, 2, 8), (2, 5, 20), (3, 6, 28)]:
        with open(path, "rb") as fh:
            assert replay._skip_documents(fh, documents) == line
            assert fh.tell() == after
