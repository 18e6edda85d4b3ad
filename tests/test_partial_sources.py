"""Accepts whose source the capture knows only in part (`ConnectionEvent.source_partial`, ECS
`socat.source_partial`): written and read back as such, and judged by neither the policy nor the
detectors, live (`Pipeline`) and in `analyze` (DuckDB scan, line reader, Parquet segment) alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from monitor.decide import DecideConfig, Decider
from monitor.detect import DetectConfig, Detector
from monitor.ecs import HostInfo, encode, parse_connection, render
from monitor.events import Action, Alert, ConnectionEvent, Listener
from monitor.pipeline import Pipeline
from monitor.policy import PolicyEngine, parse_policy
from monitor.replay.analyze import analyze
from monitor.replay.columnar import segment_chunks, write_segment
from monitor.replay.periods import segment_of
from monitor.replay.reader import ReadStats, read_chunks

S = 1_000_000_000
T0 = 1_767_225_600 * S          # 2026-01-01T00:00:00Z
PORTS = (8081, 8082, 8083)
HOST = HostInfo(name="partial-host", id="5" * 32, ip=("192.0.2.10",))
POLICY = parse_policy("version: 1\nlisteners:\n" + "".join(
    f"  - name: relay-{i}\n    port: {port}\n    allow_sources: [192.0.2.88]\n" for i, port in enumerate(PORTS)),
    "policy.yaml")


def accepts(partial: bool) -> list[ConnectionEvent]:
    """An IPv4 client's accepts by three dual-stack relays, as the capture writes them when it missed the
    handshakes: the source `::` (the first 8 bytes of ::ffff:a.b.c.d)."""
    return [ConnectionEvent(Action.ACCEPTED, T0 + i * S, "::", 40000 + i, "::", port, listener=Listener("::", port),
                            source_partial=partial) for i, port in enumerate(PORTS)]


def live(events: list[ConnectionEvent]) -> tuple[list, list[Alert]]:
    """What the pipeline writes for `events`, and the alerts among it (a detector tick after them)."""
    pipeline = Pipeline(policy=PolicyEngine(POLICY), detector=Detector(DetectConfig()),
                        decider=Decider(DecideConfig(), default_ttl_s=600))
    pipeline.watch(PORTS, T0)
    out = [record for event in events for record in pipeline.process(event)]
    out += pipeline.tick(T0 + 10 * S)
    return out, [r for r in out if isinstance(r, Alert)]


def rules(alerts: list[Alert]) -> set[tuple[str, str | None]]:
    return {(a.rule_id, a.source_network or a.source_ip) for a in alerts}


def test_the_same_accepts_judged_would_make_a_scanner_of_a_made_up_source():
    _, alerts = live(accepts(partial=False))
    assert {("anomaly.scan", "::/64"), ("policy.source_denied", "::")} <= rules(alerts)


def test_the_pipeline_writes_a_partial_source_named_but_judges_it_not():
    out, alerts = live(accepts(partial=True))
    assert alerts == []
    assert [(e.source_partial, e.listener.name) for e in out] == [(True, f"relay-{i}") for i in range(3)]


def test_ecs_carries_source_partial_and_reads_it_back():
    partial, whole = accepts(partial=True)[0], accepts(partial=False)[0]
    doc = render(partial, HOST)
    assert doc["socat"]["source_partial"] is True and "source_partial" not in render(whole, HOST)["socat"]
    assert encode(partial, HOST).rstrip(b"\n") and parse_connection(doc) == partial
    assert parse_connection(render(whole, HOST)).source_partial is False


def write(path: Path, events: list[ConnectionEvent], bad_first_line: bool = False) -> Path:
    lines = [b"not json\n"] if bad_first_line else []
    path.write_bytes(b"".join(lines + [encode(e, HOST) for e in events]))
    return path


@pytest.fixture
def period(tmp_path) -> Path:
    return tmp_path / "events-20260101T000000Z-1.ndjson"


@pytest.mark.parametrize("bad_first_line", [False, True], ids=["duckdb-scan", "line-reader"])
def test_analyze_judges_a_partial_source_as_the_pipeline_does(period, bad_first_line):
    _, judged = live(accepts(partial=False))
    whole = analyze([write(period, accepts(partial=False), bad_first_line)], policy=POLICY, config=DetectConfig(),
                    columnar=False)
    assert rules(whole.alerts) == rules(judged)
    partial = analyze([write(period, accepts(partial=True), bad_first_line)], policy=POLICY, config=DetectConfig(),
                      columnar=False)
    assert partial.alerts == [] and partial.connection_events == len(PORTS)


def test_a_segment_keeps_source_partial_and_analyze_leaves_those_rows_out(period):
    events = accepts(partial=True) + [dataclasses.replace(e, source_ip="192.0.2.88", source_partial=False, id=e.id + "w")
                                      for e in accepts(partial=False)]
    write(period, events)
    write_segment(period)
    got = [c.event(i) for c in segment_chunks(segment_of(period), ReadStats(), full=True) for i in range(len(c))]
    assert [e.source_partial for e in got] == [True] * 3 + [False] * 3
    result = analyze([period], policy=POLICY, config=DetectConfig())
    assert result.files == [str(segment_of(period))]
    assert rules(result.alerts) == {("anomaly.scan", "192.0.2.88")}   # the whole source only


def test_a_segment_written_before_the_column_still_reads(period):
    write(period, accepts(partial=False))
    write_segment(period)
    segment = segment_of(period)
    kept = {k: v for k, v in pq.ParquetFile(segment).metadata.metadata.items() if k.startswith(b"socat.")}
    table = pq.read_table(segment).drop_columns(["socat.source_partial"])
    with pq.ParquetWriter(segment, table.schema) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata(kept)
    assert "socat.source_partial" not in pq.ParquetFile(segment).schema_arrow.names
    got = [c.event(i) for c in segment_chunks(segment, ReadStats()) for i in range(len(c))]
    expected = [c.event(i) for c in read_chunks([period]) for i in range(len(c))]
    assert got == expected and len(got) == len(PORTS)
