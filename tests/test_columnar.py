"""Parquet segments: a segment reads back as its NDJSON twin, `analyze` gives the same alerts from
either, reads each period once from a mix, and names a bad or stale segment without losing events."""

from __future__ import annotations

import dataclasses
import os
import stat

import orjson
import pyarrow.parquet as pq
import pytest

import monitor.replay.columnar as replay_columnar
import monitor.replay.scan as scan
from monitor.detect import DetectConfig
from monitor.replay.analyze import analyze
from monitor.replay.columnar import BadSegment, open_segment, segment_chunks, write_segment
from monitor.replay.periods import segment_of
from monitor.replay.reader import ReadStats, read_chunks
from tests.synth import generate

CONFIG = DetectConfig().with_learning_period(600)


@pytest.fixture(scope="module")
def stream():
    return generate(hours=0.6, learn_s=600, sources=50, seed=11)


@pytest.fixture()
def period(stream, tmp_path):
    """One period's NDJSON file (no segment yet)."""
    path = tmp_path / "events-20260101T000000Z-1.ndjson"
    stream.write_ndjson(path)
    return path


def events_of(chunks) -> list:
    return [chunk.event(i) for chunk in chunks for i in range(len(chunk))]


def signature(result) -> list[tuple]:
    """Alerts without their own random ids (everything detection decided)."""
    return [dataclasses.replace(a, id="") for a in result.alerts]


def counts(result) -> tuple:
    return (result.connection_events, result.lines, result.other_documents, result.malformed,
            [str(m) for m in result.bad_lines], result.late_events)


@pytest.mark.parametrize("full", [False, True])
def test_a_segment_reads_back_as_its_twin(period, stream, full):
    period.chmod(0o640)
    write_segment(period)
    assert segment_of(period).stat().st_mode & 0o777 == 0o640
    twin, segment = ReadStats(), ReadStats()
    expected = events_of(read_chunks([period], twin, full=full))
    got = events_of(segment_chunks(segment_of(period), segment, full=full))
    assert got == expected and len(got) == len(stream)
    assert (segment.connections, segment.lines, segment.other_documents) == (len(stream), len(stream), 0)


def test_analyze_gives_the_same_alerts_from_the_segment(period):
    ndjson = analyze([period], config=CONFIG, columnar=False)
    write_segment(period)
    columnar = analyze([period], config=CONFIG)
    assert columnar.files == [str(segment_of(period))] and ndjson.files == [str(period)]
    assert ndjson.alerts and signature(columnar) == signature(ndjson)
    assert counts(columnar) == counts(ndjson)


def test_a_mix_reads_each_period_once_oldest_first(period, tmp_path):
    reference = analyze([period], config=CONFIG, columnar=False)
    lines = period.read_bytes().splitlines(keepends=True)
    older = tmp_path / "events-20260101T000000Z-2.ndjson"
    newer = tmp_path / "events-20260101T000000Z-3.ndjson"
    older.write_bytes(b"".join(lines[: len(lines) // 2]))
    newer.write_bytes(b"".join(lines[len(lines) // 2:]))
    write_segment(older)
    everything = [newer, segment_of(older), older, newer]      # both forms of a period, one file twice
    result = analyze(everything, config=CONFIG)
    assert result.files == [str(segment_of(older)), str(newer)]
    assert signature(result) == signature(reference) and counts(result) == counts(reference)
    ndjson_only = analyze(everything, config=CONFIG, columnar=False)
    assert ndjson_only.files == [str(segment_of(older)), str(newer)]     # a segment named is read
    assert analyze([older, newer], config=CONFIG, columnar=False).files == [str(older), str(newer)]


def test_bad_lines_of_the_twin_are_reported_from_the_segment(period, stream):
    lines = period.read_bytes().splitlines(keepends=True)
    lines[5] = b'{"@timestamp": "2026-01-01T00:00:00Z", "event": \n'
    lines[9] = b"not json\n"
    period.write_bytes(b"".join(lines))
    ndjson = analyze([period], config=CONFIG, columnar=False)
    write_segment(period)
    columnar = analyze([period], config=CONFIG)
    assert ndjson.malformed == 2 and [m.line for m in ndjson.bad_lines] == [6, 10]
    assert counts(columnar) == counts(ndjson) and signature(columnar) == signature(ndjson)


def test_a_segment_made_from_a_shorter_file_is_not_used(period):
    write_segment(period)
    with open(period, "ab") as fh:
        fh.write(orjson.dumps({"@timestamp": "2026-01-01T05:00:00Z", "event": {"action": "accepted"},
                               "source": {"ip": "192.0.2.9", "port": 1}, "destination": {"ip": "127.0.0.1",
                                                                                          "port": 8080}}) + b"\n")
    result = analyze([period], config=CONFIG)
    assert result.files == [str(period)] and result.connection_events == analyze(
        [period], config=CONFIG, columnar=False).connection_events
    assert len(result.handovers) == 1 and str(segment_of(period)) in result.handovers[0]
    assert "bytes" in result.handovers[0]


def test_an_unreadable_segment_is_named_and_its_twin_read_instead(period):
    reference = analyze([period], config=CONFIG, columnar=False)
    write_segment(period)
    segment = segment_of(period)
    segment.write_bytes(segment.read_bytes()[: segment.stat().st_size // 2])      # cut, as a full disk might
    result = analyze([period], config=CONFIG)
    assert result.files == [str(period)] and signature(result) == signature(reference)
    assert [note for note in result.handovers if str(segment) in note and "not a usable Parquet segment" in note]


def test_a_bad_segment_alone_is_one_malformed_entry_and_the_other_files_count(period, tmp_path):
    write_segment(period)
    good = segment_of(period)
    period.unlink()
    bad = tmp_path / "events-20260101T000000Z-7.parquet"
    bad.write_bytes(b"PAR1 this is not parquet PAR1")
    result = analyze([bad, good], config=CONFIG)
    assert result.connection_events == open_segment(good)[1].connections
    assert len(result.bad_lines) == 1 and result.bad_lines[0].path == str(bad)
    assert "not a usable Parquet segment" in result.bad_lines[0].message
    with pytest.raises(BadSegment):
        open_segment(bad)


def test_a_row_group_failing_its_checksum_hands_the_rest_to_the_twin(period, monkeypatch):
    monkeypatch.setattr(scan, "TABLE_ROWS", 2000)        # many chunks, so many row groups
    reference = analyze([period], config=CONFIG, columnar=False)
    write_segment(period)
    segment = segment_of(period)
    meta = pq.ParquetFile(segment).metadata
    assert meta.num_row_groups >= 3
    column = meta.row_group(2).column(0)          # the times of the third row group
    data = bytearray(segment.read_bytes())
    middle = column.data_page_offset + column.total_compressed_size // 2
    data[middle] ^= 0xFF
    segment.write_bytes(bytes(data))
    result = analyze([period], config=CONFIG)
    assert signature(result) == signature(reference) and counts(result) == counts(reference)
    assert [note for note in result.handovers if "row group 2" in note and "chunk 3" in note]


def test_a_parquet_file_of_another_shape_is_not_a_segment(period, tmp_path):
    counts = write_segment(period)
    table = pq.read_table(segment_of(period))
    other = table.set_column(0, "@timestamp", table.column("@timestamp").cast("string"))
    path = tmp_path / "events-20260101T000000Z-8.parquet"
    with pq.ParquetWriter(path, other.schema) as writer:
        writer.write_table(other)
        writer.add_key_value_metadata(counts.metadata())
    with pytest.raises(BadSegment, match="column @timestamp is string"):
        open_segment(path)
    plain = tmp_path / "events-20260101T000000Z-9.parquet"
    pq.write_table(table, plain)
    with pytest.raises(BadSegment, match="not a socat-monitor segment"):
        open_segment(plain)


def test_the_child_writes_the_segment_private_and_gives_it_the_twins_mode_when_whole(period, monkeypatch):
    period.chmod(0o644)
    seen = {}
    chmod = os.chmod

    def spy(path, mode):
        seen[str(path)] = stat.S_IMODE(os.stat(path).st_mode)      # the .tmp's mode while it was written
        chmod(path, mode)

    monkeypatch.setattr(replay_columnar.os, "chmod", spy)
    monkeypatch.setattr(replay_columnar.os, "nice", lambda increment: 0)   # not the test process
    umask = os.umask(0o022)
    try:
        assert replay_columnar.main([str(period)]) == 0
    finally:
        os.umask(umask)
    assert list(seen.values()) == [0o600]
    assert stat.S_IMODE(segment_of(period).stat().st_mode) == 0o644
