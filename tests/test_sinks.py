"""Unit tests of the sinks that need no server: NDJSON files, the spool, the
alert feed (to a local UDP listener and unix socket), fan-out and the
template's coverage of every rendered field."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from monitor.config import section_from_flags
from monitor.ecs import HostInfo, render
from monitor.errors import InputError
from monitor.events import PipelineError
from monitor.sinks import AlertFeed, AlertFeedConfig, Fanout, NdjsonConfig, NdjsonSink, SinkStats
from monitor.sinks import ndjson as ndjson_module
from monitor.sinks.spool import DiskSpool
from monitor.sinks.template import DYNAMIC_OBJECTS, FIELDS
from tests import sample_records as S

HOST = HostInfo(name="unit-host", id="2" * 32)


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _all_docs(directory: Path, stream: str) -> list[dict]:
    files = sorted((p for p in directory.glob(f"{stream}-*.ndjson")),
                   key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [doc for path in files for doc in _lines(path)]


def _wait(predicate, timeout: float = 3.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


# -- NDJSON sink -------------------------------------------------------------

def test_events_and_alerts_go_to_their_own_files_with_stable_names(tmp_path):
    sink = NdjsonSink(NdjsonConfig(tmp_path), HOST)
    records = S.every_kind()
    for record in records:
        sink.write(record)
    sink.close()
    events, alerts = _lines(tmp_path / "events.ndjson"), _lines(tmp_path / "alerts.ndjson")
    assert [d["event"]["kind"] for d in alerts] == ["alert"]
    assert len(events) == len(records) - 1 and all(d["event"]["kind"] != "alert" for d in events)
    assert {d["event"]["id"] for d in events + alerts} == {r.id for r in records}
    assert os.path.islink(tmp_path / "events.ndjson")
    assert re.fullmatch(r"events-\d{8}T\d{6}Z-1\.ndjson", os.readlink(tmp_path / "events.ndjson"))
    assert sink.stats.written == len(records) and sink.stats.pending == 0


def test_a_line_is_in_the_file_within_a_second(tmp_path):
    sink = NdjsonSink(NdjsonConfig(tmp_path), HOST)
    try:
        event = S.connection(1)
        sink.write(event)
        waited = _wait(lambda: (tmp_path / "events.ndjson").exists()
                       and (tmp_path / "events.ndjson").read_bytes().endswith(b"\n"), timeout=1.0)
        assert waited < 1.0
        assert _lines(tmp_path / "events.ndjson")[0]["event"]["id"] == event.id
    finally:
        sink.close()


def test_rotation_by_size_keeps_every_line_once_and_in_order(tmp_path):
    sink = NdjsonSink(NdjsonConfig(tmp_path, rotate_bytes=8192), HOST)
    records = [S.connection(i) for i in range(60)]
    for record in records:
        sink.write(record)
        if record is records[30]:
            sink.flush()
    sink.close()
    files = sorted(tmp_path.glob("events-*.ndjson"))
    assert len(files) >= 5
    assert all(p.stat().st_size <= 8192 for p in files)
    assert [d["event"]["id"] for d in _all_docs(tmp_path, "events")] == [r.id for r in records]
    newest = max(files, key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    assert os.readlink(tmp_path / "events.ndjson") == newest.name


def test_close_fsyncs_the_files(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(ndjson_module.os, "fsync", recording_fsync)
    sink = NdjsonSink(NdjsonConfig(tmp_path, rotate_bytes=4096), HOST)
    for i in range(10):
        sink.write(S.connection(i))
    sink.write(S.alert())
    sink.close()
    names = {Path(p).name for p in synced}
    assert os.readlink(tmp_path / "events.ndjson") in names       # the current file, at close
    assert os.readlink(tmp_path / "alerts.ndjson") in names
    assert any(name.endswith("-1.ndjson") and name.startswith("events") for name in names)  # at rotation


def test_unwritable_directory_becomes_pipeline_error_not_a_crash(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    errors: list[PipelineError] = []
    sink = NdjsonSink(NdjsonConfig(blocker / "out", flush_interval_s=0.05), HOST, on_error=errors.append)
    for i in range(5):
        sink.write(S.connection(i))
    _wait(lambda: sink.stats.pending == 5 and not (blocker / "out").exists())
    sink.close()
    assert sink.stats.failed == 5 and sink.stats.written == 0
    assert errors and all(e.stage == "sinks.ndjson" for e in errors)
    assert any("cannot write" in e.message and "Not a directory" in e.message for e in errors)
    assert any("unwritten at shutdown" in e.message and e.count == 5 for e in errors)


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB tmpfs, to fill up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_disk_full_is_reported_and_loses_nothing_once_space_returns(small_disk):
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        try:
            fh.write(b"x" * 250 * 1024)
        except OSError:
            pass
    errors: list[PipelineError] = []
    out = small_disk / "out"
    sink = NdjsonSink(NdjsonConfig(out, flush_interval_s=0.05), HOST, on_error=errors.append)
    try:
        records = [S.connection(i) for i in range(100)]
        for record in records:
            sink.write(record)
        _wait(lambda: any("No space left" in e.message for e in errors), timeout=5)
        assert sink.stats.pending > 0
        for doc in _all_docs(out, "events"):   # what is on disk is whole lines only
            assert doc["event"]["kind"] == "event"
        filler.unlink()
        _wait(lambda: sink.stats.pending == 0, timeout=5)
    finally:
        sink.close()
    assert [d["event"]["id"] for d in _all_docs(out, "events")] == [r.id for r in records]
    assert sink.stats.written == 100 and sink.stats.failed == 0


def test_buffer_bound_drops_oldest_and_counts(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    errors: list[PipelineError] = []
    sink = NdjsonSink(NdjsonConfig(blocker / "out", max_buffer_bytes=20_000), HOST, on_error=errors.append)
    for i in range(100):
        sink.write(S.connection(i))
    assert sink.stats.dropped > 0 and sink.stats.pending + sink.stats.dropped == 100
    sink.close()
    assert any("buffer full" in e.message for e in errors)


# -- spool -------------------------------------------------------------------

def _line(i: int) -> bytes:
    return b"e" + f"id-{i}".encode() + b"\t" + orjson.dumps({"n": i, "pad": "x" * 200}) + b"\n"


def test_spool_reads_acks_and_resumes_after_reopen(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=10 * 1024 * 1024, segment_bytes=4096)
    for i in range(100):
        assert spool.append(_line(i)) == 0
    got = []
    for _ in range(3):
        batch = spool.read_batch(10, 1 << 20)
        got += batch.lines
        spool.ack(batch)
    unacked = spool.read_batch(10, 1 << 20)    # read, not acked: comes back after a restart
    assert unacked.lines[0].startswith(f"eid-{len(got)}\t".encode())
    assert spool.pending == 100 - len(got)
    del spool                                  # as after a SIGKILL: no close

    spool = DiskSpool(tmp_path, max_bytes=10 * 1024 * 1024, segment_bytes=4096)
    assert spool.pending == 100 - len(got)
    while (batch := spool.read_batch(7, 1 << 20)) is not None:
        got += batch.lines
        spool.ack(batch)
    assert [line.split(b"\t")[0] for line in got] == [f"eid-{i}".encode() for i in range(100)]
    assert spool.pending == 0
    assert len(list(tmp_path.glob("segment-*.spool"))) <= 2   # fully acked segments are deleted
    spool.close()


def test_spool_hands_out_in_order_rewinds_and_acks_across_rotation(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=10 << 20, segment_bytes=4096)
    for i in range(3):
        spool.append(_line(i))
    first = spool.read_batch(100, 1 << 20)
    spool.ack(first)                      # ack at the very end of the segment being written
    for i in range(3, 60):                # the writer rotates to new segments
        spool.append(_line(i))
    a, b = spool.read_batch(5, 1 << 20), spool.read_batch(5, 1 << 20)
    assert b.lines[0].startswith(b"eid-8\t")
    spool.rewind()                        # a failed request: both come again
    assert spool.read_batch(5, 1 << 20).lines == a.lines
    spool.rewind()
    got = first.lines
    while (batch := spool.read_batch(7, 1 << 20)) is not None:
        spool.ack(batch)
        got += batch.lines
    assert [line.split(b"\t")[0] for line in got] == [f"eid-{i}".encode() for i in range(60)]
    assert spool.pending == 0
    spool.close()


def test_spool_bound_drops_oldest_segments_and_counts(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=1024 * 1024, segment_bytes=64 * 1024)
    dropped = sum(spool.append(_line(i)) for i in range(10_000))
    assert dropped > 0
    assert spool.pending + dropped == 10_000
    assert spool.pending_bytes <= 1024 * 1024
    first = spool.read_batch(1, 1 << 20).lines[0]
    assert first.startswith(f"eid-{dropped}\t".encode())   # the oldest went, in order
    spool.close()


def test_spool_on_a_full_disk_raises_and_leaves_no_fragment(small_disk):
    spool = DiskSpool(small_disk / "spool", max_bytes=10 << 20, segment_bytes=1 << 20)
    written = 0
    with pytest.raises(OSError):
        for i in range(10_000):
            spool.append(b"e" + f"id-{i}".encode() + b"\t" + orjson.dumps({"pad": "x" * 5000}) + b"\n")
            written += 1
    spool.close()
    spool = DiskSpool(small_disk / "spool", max_bytes=10 << 20, segment_bytes=1 << 20)
    recovered, pending = spool.recovered_partial, spool.pending
    spool.close()
    assert recovered == 0 and pending == written > 0


def test_spool_discards_a_line_cut_by_a_crash(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    spool.append(_line(1))
    spool.close()
    with open(next(tmp_path.glob("segment-*.spool")), "ab") as fh:
        fh.write(b'eid-2\t{"n": 2, "pa')
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    assert spool.recovered_partial == 1 and spool.pending == 1
    assert spool.read_batch(10, 1 << 20).lines == [_line(1)[:-1]]
    spool.close()


# -- alert feed ----------------------------------------------------------------

_RFC5424 = re.compile(rb"^<(\d+)>1 (\S+) (\S+) socat-monitor (\d+) (\S+) (\[socat@32473[^\]]*\]) (\{.*\})$")


def test_alert_feed_writes_alerts_and_blocks_to_file_and_udp_syslog(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(3)
        port = listener.getsockname()[1]
        feed = AlertFeed(AlertFeedConfig(path=tmp_path / "alerts.jsonl", syslog=f"udp://127.0.0.1:{port}"), HOST)
        records = S.every_kind()
        for record in records:
            feed.write(record)
        feed.close()
        datagrams = [listener.recv(65535) for _ in range(2)]
    docs = _lines(tmp_path / "alerts.jsonl")
    assert [d["event"]["dataset"] for d in docs] == ["socat.alert", "socat.enforce"]
    alert = _RFC5424.match(datagrams[0])
    assert alert, datagrams[0][:200]
    assert int(alert.group(1)) == 4 * 8 + 3            # facility auth, severity err (HIGH)
    assert alert.group(3) == b"unit-host" and alert.group(5) == b"anomaly.scan"
    assert b'rule="anomaly.scan"' in alert.group(6) and b'source="198.51.100.9"' in alert.group(6)
    assert orjson.loads(alert.group(7))["rule"]["id"] == "anomaly.scan"
    block = _RFC5424.match(datagrams[1])
    assert block and int(block.group(1)) == 4 * 8 + 5 and block.group(5) == b"address_blocked"
    assert b'target="198.51.100.0/24"' in block.group(6)
    assert feed.stats.written == 2


def test_alert_feed_to_unix_socket(tmp_path):
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(3)
        feed = AlertFeed(AlertFeedConfig(syslog=f"unix:{path}", facility="local3"), HOST)
        feed.write(S.alert(severity=S.Severity.CRITICAL))
        feed.close()
        assert listener.recv(65535).startswith(f"<{19 * 8 + 2}>1 ".encode())


@pytest.mark.parametrize("values, message", [
    ({"syslog": "tcp:/nowhere"}, "syslog: expected udp://host:port"),
    ({"syslog": "udp://:514"}, "syslog: no host"),
    ({"facility": "nope"}, "facility: expected one of kern"),
    ({"rotate_bytes": 10}, "rotate_bytes: expected a number >= 1024"),
    ({"keep": 0}, "keep: expected a number >= 1"),
])
def test_alert_feed_config_errors_name_the_key(values, message):
    with pytest.raises(InputError) as err:
        section_from_flags(AlertFeedConfig, values, "alert_feed")
    assert str(err.value).startswith(f"alert_feed: {message}"), str(err.value)


def test_alert_feed_file_rotates_and_keeps_the_newest(tmp_path):
    path = tmp_path / "alerts.jsonl"
    feed = AlertFeed(AlertFeedConfig(path=path, rotate_bytes=4096, keep=3, flush_interval_s=60), HOST)
    alerts = [S.alert(source_ip=f"198.51.100.{i % 250 + 1}") for i in range(60)]
    for alert in alerts:
        feed.write(alert)
        feed.flush()                      # one line per write: a rotation every few alerts
    feed.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2", "alerts.jsonl.3"]
    ids = [d["event"]["id"] for name in ("alerts.jsonl.3", "alerts.jsonl.2", "alerts.jsonl.1", "alerts.jsonl")
           for d in _lines(tmp_path / name)]
    assert ids == [a.id for a in alerts][-len(ids):]       # oldest first, none repeated, the newest kept
    assert all((tmp_path / f"alerts.jsonl.{n}").stat().st_size >= 4096 for n in (1, 2, 3))
    assert len(ids) < len(alerts) and feed.stats.written == len(alerts)


def test_alert_feed_unreachable_syslog_is_counted(tmp_path):
    errors: list[PipelineError] = []
    feed = AlertFeed(AlertFeedConfig(syslog=f"unix:{tmp_path / 'absent.sock'}"), HOST, on_error=errors.append)
    feed.write(S.alert())
    feed.close()
    assert feed.stats.failed == 1 and any("cannot send syslog" in e.message for e in errors)


# -- fan-out and template ------------------------------------------------------

class _Broken:
    stats = SinkStats()

    def write(self, record) -> None:
        raise OSError("boom")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_fanout_keeps_writing_when_one_sink_fails(tmp_path):
    errors: list[PipelineError] = []
    good = NdjsonSink(NdjsonConfig(tmp_path), HOST)
    fan = Fanout([_Broken(), good], on_error=errors.append)
    fan.write(S.connection(1))
    fan.close()
    assert len(_lines(tmp_path / "events.ndjson")) == 1
    assert errors and "boom" in errors[0].message
    assert fan.stats.written == 1


def _leaves(doc: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _leaves(value, name + ".")
        else:
            out.add(name)
    return out


def test_template_maps_every_field_we_render():
    rendered = set().union(*(_leaves(render(r, HOST)) for r in S.every_kind()))
    unmapped = {f for f in rendered if f not in FIELDS and not f.startswith(tuple(d + "." for d in DYNAMIC_OBJECTS))}
    assert not unmapped, f"fields rendered but not in the index template: {sorted(unmapped)}"


def test_elasticsearch_sink_spool_overflow_is_reported_while_server_is_down(tmp_path):
    from monitor.sinks import ElasticsearchConfig, ElasticsearchSink
    from tests.lab import free_port

    errors: list[PipelineError] = []
    config = ElasticsearchConfig(urls=[f"http://127.0.0.1:{free_port()}"], spool_dir=tmp_path / "spool",
                                 spool_max_bytes=1024 * 1024, segment_bytes=64 * 1024, close_timeout_s=0.2)
    sink = ElasticsearchSink(config, HOST, on_error=errors.append)
    start = time.monotonic()
    for i in range(3000):
        sink.write(S.connection(i))
    assert time.monotonic() - start < 3.0
    sink.close()
    stats = sink.stats
    assert stats.dropped > 0 and stats.pending + stats.dropped == 3000 and stats.written == 0
    assert stats.spool_bytes <= 1024 * 1024
    lost = [e for e in errors if "oldest events dropped" in e.message]
    assert lost and sum(e.count for e in lost) == stats.dropped
    assert any("unavailable" in e.message for e in errors)


def test_template_mappings_build_for_both_kinds_of_server():
    from monitor.sinks.template import index_template

    for wildcard in (True, False):
        props = index_template(["x-*"], wildcard=wildcard)["template"]["mappings"]["properties"]
        command_line = props["process"]["properties"]["command_line"]
        assert command_line["type"] == ("wildcard" if wildcard else "keyword")
        assert command_line["fields"]["text"]["type"] == "text"


def test_import_star_leaves_the_elasticsearch_sink_unloaded():
    probe = ("import sys; from monitor.sinks import *; "
             "print(sorted(m for m in sys.modules if m.startswith(('monitor.sinks.elasticsearch', 'elasticsearch'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_a_batch_is_written_around_a_record_that_cannot_be_rendered(tmp_path):
    errors: list[PipelineError] = []
    fan = Fanout([NdjsonSink(NdjsonConfig(tmp_path), HOST, on_error=errors.append)], on_error=errors.append)
    first, second = S.connection(1), S.connection(2)
    fan.write_all([first, object(), second, S.alert()])
    fan.close()
    events = _lines(tmp_path / "events.ndjson")
    assert [doc["source"]["port"] for doc in events] == [first.source_port, second.source_port]
    assert len(_lines(tmp_path / "alerts.ndjson")) == 1
    assert fan.stats.written == 3 and fan.stats.failed == 1
    assert any("cannot render object" in e.message for e in errors)
