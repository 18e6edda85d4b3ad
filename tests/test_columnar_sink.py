"""The columnar sink beside a real NDJSON sink: every closed events file gets its segment (the
current one never), segments follow the NDJSON retention, a half-written segment left by a kill
is replaced, and a file that cannot be converted is named once while the others go on."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from monitor.agent.wiring import make_sinks
from monitor.config import Config, load_config
from monitor.ecs import render
from monitor.replay.periods import segment_of, stem
from monitor.replay.reader import ReadStats, read_chunks
from monitor.replay.sources import plan, read_sources
from monitor.sinks import columnar as columnar_sink
from monitor.sinks import ColumnarConfig, ColumnarSink, NdjsonConfig, NdjsonSink
from monitor.yamlfile import InputErrors
from tests import sample_records as S
from tests.test_sinks import HOST

WAIT_S = 180.0        # conversions are child processes; the machine may be loaded


def wait_for(predicate, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.1)


def closed_files(directory: Path) -> list[Path]:
    current = os.readlink(directory / "events.ndjson")
    return sorted(p for p in directory.glob("events-*.ndjson") if p.name != current)


def all_converted(directory: Path) -> bool:
    return all(segment_of(p).exists() for p in closed_files(directory))


def events_of(chunks) -> list:
    return [chunk.event(i) for chunk in chunks for i in range(len(chunk))]


def test_each_closed_file_gets_its_segment_and_a_mix_reads_every_event_once(tmp_path):
    ndjson = NdjsonSink(NdjsonConfig(tmp_path, rotate_bytes=64 * 1024), HOST)
    errors = []
    columnar = ColumnarSink(ColumnarConfig(), tmp_path, on_error=errors.append)
    records = [S.connection(i) for i in range(200)]
    try:
        for record in records:
            ndjson.write(record)
        ndjson.write(S.every_kind()[-1])          # other documents are not connection events
        ndjson.flush()
        columnar.flush()
        wait_for(lambda: len(closed_files(tmp_path)) >= 2 and all_converted(tmp_path)
                 and columnar.converted.segments == len(closed_files(tmp_path)))
    finally:
        ndjson.close()
        columnar.close()
    current = os.readlink(tmp_path / "events.ndjson")
    assert not segment_of(tmp_path / current).exists()
    assert not list(tmp_path.glob(".*.tmp")) and errors == []
    converted = sum(1 for p in closed_files(tmp_path) for _ in read_chunks([p]))
    assert columnar.converted.segments == len(closed_files(tmp_path)) and converted
    everything = sorted(tmp_path.glob("events-*"))
    sources = plan(everything)
    assert [s.segment for s in sources] == [True] * len(closed_files(tmp_path)) + [False]
    assert events_of(read_sources(sources, ReadStats())) == events_of(read_chunks(sorted(
        tmp_path.glob("events-*.ndjson"), key=lambda p: int(stem(p).rsplit("-", 1)[1]))))
    assert [e.id for e in events_of(read_sources(sources, ReadStats()))] == [r.id for r in records]
    assert columnar.stats.written == sum(len(c) for s in sources if s.segment
                                         for c in read_sources([s], ReadStats()))


def test_segments_follow_the_ndjson_retention(tmp_path):
    ndjson = NdjsonSink(NdjsonConfig(tmp_path, rotate_bytes=32 * 1024, retention_bytes=100 * 1024), HOST)
    columnar = ColumnarSink(ColumnarConfig(), tmp_path)
    try:
        for i in range(40):
            ndjson.write(S.connection(i))
        ndjson.flush()
        wait_for(lambda: all_converted(tmp_path) and closed_files(tmp_path))
        for i in range(40, 400):
            ndjson.write(S.connection(i))
        ndjson.flush()
        ndjson.prune()
        columnar.flush()
        wait_for(lambda: ndjson.retired.files >= 1 and all_converted(tmp_path)
                 and {stem(p) for p in tmp_path.glob("events-*.parquet")} <= {stem(p) for p in closed_files(tmp_path)})
    finally:
        ndjson.close()
        columnar.close()
    assert columnar.converted.retired >= 1


def _write_closed(directory: Path, name: str, count: int) -> Path:
    path = directory / name
    path.write_bytes(b"".join(orjson.dumps(render(S.connection(i), HOST)) + b"\n" for i in range(count)))
    return path


def test_a_segment_half_written_at_a_kill_is_replaced_at_start(tmp_path):
    closed = _write_closed(tmp_path, "events-20260101T000000Z-1.ndjson", 30)
    current = _write_closed(tmp_path, "events-20260101T000000Z-2.ndjson", 5)
    os.symlink(current.name, tmp_path / "events.ndjson")
    leftover = tmp_path / f".{segment_of(closed).name}.tmp"
    leftover.write_bytes(b"PAR1 half a row group")       # what a kill mid-conversion leaves
    sink = ColumnarSink(ColumnarConfig(), tmp_path)
    try:
        wait_for(lambda: segment_of(closed).exists())
    finally:
        sink.close()
    assert not leftover.exists() and not segment_of(current).exists()
    sources = plan([closed, current])
    assert [s.segment for s in sources] == [True, False]
    assert len(events_of(read_sources(sources, ReadStats()))) == 35


def test_a_file_that_cannot_be_converted_is_named_once_and_the_others_go_on(tmp_path):
    good = _write_closed(tmp_path, "events-20260101T000000Z-1.ndjson", 20)
    unreadable = tmp_path / "events-20260101T000000Z-2.ndjson"
    unreadable.mkdir()                                    # named like an events file, not a file
    junk = tmp_path / "events-20260101T000000Z-3.ndjson"
    junk.write_bytes(b"\x00\xff not json\n{\"half\": \n")
    current = _write_closed(tmp_path, "events-20260101T000000Z-4.ndjson", 3)
    os.symlink(current.name, tmp_path / "events.ndjson")
    errors = []
    sink = ColumnarSink(ColumnarConfig(), tmp_path, on_error=errors.append)
    try:
        wait_for(lambda: segment_of(good).exists() and segment_of(junk).exists() and errors)
        sink.flush()
        time.sleep(3)                                     # another pass: the failed file is not tried again
    finally:
        sink.close()
    assert len(errors) == 1 and errors[0].count == 1 and sink.converted.failed == 1
    assert str(unreadable) in errors[0].message and "\n" not in errors[0].message
    stats = ReadStats()
    events = events_of(read_sources(plan([good, junk, current]), stats))
    assert len(events) == 23 and stats.malformed == 2
    assert {bad.path for bad in stats.bad_lines} == {str(junk)}


def test_one_child_converts_file_after_file_ends_when_idle_and_a_dead_one_is_replaced(tmp_path, monkeypatch):
    """A relay at full rate closes a file every few seconds: one child converts them all (not a child
    and its imports per file), ends once idle, and one killed while idle costs no file."""
    monkeypatch.setattr(columnar_sink, "LINGER_S", 3.0)
    files = [_write_closed(tmp_path, f"events-20260101T000000Z-{n}.ndjson", 10) for n in (1, 2, 3)]
    os.symlink(files[-1].name, tmp_path / "events.ndjson")
    errors = []
    sink = ColumnarSink(ColumnarConfig(), tmp_path, on_error=errors.append)
    try:
        wait_for(lambda: sink.converted.segments == 2)
        assert sink.converted.children == 1
        wait_for(lambda: sink._child is None, timeout=30)                 # idle: ended
        monkeypatch.setattr(columnar_sink, "LINGER_S", 600.0)             # the next one stays to be killed
        _rotate(tmp_path, 4)
        wait_for(lambda: sink.converted.segments == 3)
        assert sink.converted.children == 2
        child = sink._child
        os.kill(child.pid, signal.SIGKILL)                                # the OOM killer, say
        child.wait()
        _rotate(tmp_path, 5)
        wait_for(lambda: sink.converted.segments == 4)
    finally:
        sink.close()
    assert sink.converted.children == 3 and sink.converted.failed == 0 and errors == []
    assert all(segment_of(p).exists() for p in closed_files(tmp_path))


def test_a_child_that_dies_on_a_file_is_named_with_its_last_words_and_the_next_file_gets_another(tmp_path, monkeypatch):
    real = columnar_sink.python_child
    started = []

    def dying_first(args, **popen):   # the first child reads its file's name, says why it dies, and dies
        started.append(args)
        if len(started) == 1:
            return real(["-c", "import sys; sys.stdin.readline(); print('MemoryError: the cause', file=sys.stderr);"
                               " sys.exit(3)"], **popen)
        return real(args, **popen)

    monkeypatch.setattr(columnar_sink, "python_child", dying_first)
    first, second = (_write_closed(tmp_path, f"events-20260101T000000Z-{n}.ndjson", 10) for n in (1, 2))
    os.symlink(_write_closed(tmp_path, "events-20260101T000000Z-3.ndjson", 1).name, tmp_path / "events.ndjson")
    errors = []
    sink = ColumnarSink(ColumnarConfig(), tmp_path, on_error=errors.append)
    try:
        wait_for(lambda: segment_of(second).exists() and errors)
    finally:
        sink.close()
    assert not segment_of(first).exists() and sink.converted.failed == 1 and sink.converted.children == 2
    assert errors[0].message == f"{first}: conversion child exited 3: MemoryError: the cause"


def _rotate(directory: Path, n: int) -> None:
    """What the NDJSON sink's rotation does: a new current file, the previous one closed."""
    new = _write_closed(directory, f"events-20260101T000000Z-{n}.ndjson", 10)
    link = directory / "events.ndjson.tmp"
    os.symlink(new.name, link)
    os.replace(link, directory / "events.ndjson")


def test_the_columnar_section_is_checked_by_name(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("columnar:\n  compression_level: 40\n  enabled: perhaps\n")
    with pytest.raises(InputErrors) as caught:
        load_config(config)
    text = "\n".join(caught.value.lines())
    assert f"{config}:2: columnar.compression_level" in text and f"{config}:3: columnar.enabled" in text
    config.write_text("columnar:\n  enabled: false\n  convert_timeout: 5m\n")
    loaded = load_config(config)
    assert loaded.columnar == ColumnarConfig(enabled=False, convert_timeout_s=300.0)
    assert load_config(None).columnar.enabled is True


def test_the_agent_builds_it_beside_the_ndjson_sink_unless_turned_off(tmp_path):
    config = Config(ndjson=NdjsonConfig(tmp_path))
    on = make_sinks(config, HOST, on_error=lambda error: None)
    off = make_sinks(dataclasses.replace(config, columnar=ColumnarConfig(enabled=False)), HOST,
                     on_error=lambda error: None)
    try:
        assert [type(s).__name__ for s in on.sinks] == ["NdjsonSink", "ColumnarSink"]
        assert on.sinks[1].directory == tmp_path
        assert [type(s).__name__ for s in off.sinks] == ["NdjsonSink"]
    finally:
        on.close()
        off.close()
