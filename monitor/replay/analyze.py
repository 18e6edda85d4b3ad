"""Offline analysis: replay NDJSON event files through policy and the detectors.

`analyze(paths, ...)` streams the files in columnar chunks
(`monitor.replay.reader`), runs the declared policy on each event when one
is given, and runs all anomaly rules vectorised (`monitor.detect.BatchEngine`)
in event-time order, with the same crossing rules the live `Detector` uses
(an event whose source is known only in part, `socat.source_partial`, is
counted read but judged by neither, as live),
then the same decision stage (`monitor.decide.Decider`, without an enforcer),
so replaying a day of events gives the alerts and blocks the agent would have
raised.
Memory stays bounded by the detection windows and the number of distinct
sources, not by the size of the files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..decide import DecideConfig, Decider
from ..detect import Baseline, BatchEngine, DetectConfig, IpTable, Rows
from ..detect.rows import counted
from ..enforce.enforcer import EnforceConfig
from ..errors import EXIT_FINDINGS, EXIT_OK
from ..events import Action, Alert
from .fields import CODE
from .reader import EventChunk, Malformed, ReadStats, prefetch
from .sources import plan, read_sources


@dataclass
class ListenerSummary:
    port: int
    connections: int
    refused: int
    sources: int
    alerts: int


@dataclass
class SourceSummary:
    ip: str
    connections: int
    refused: int
    listeners: int
    alerts: int


@dataclass
class AnalysisResult:
    alerts: list[Alert]
    files: list[str]
    lines: int
    connection_events: int
    other_documents: int
    malformed: int
    bad_lines: list[Malformed]
    late_events: int
    listeners: list[ListenerSummary]
    sources: list[SourceSummary]          # the busiest and the alerted ones
    baseline: Baseline
    elapsed_s: float
    policy_checked: bool = False
    alerts_by_rule: dict[str, int] = field(default_factory=dict)
    handovers: list[str] = field(default_factory=list)   # files the fast scan left to the line-checking reader
    policy_counts: Any = None             # the policy engine's EngineCounts, when a policy was checked

    @property
    def exit_code(self) -> int:
        return EXIT_FINDINGS if self.alerts else EXIT_OK

    def summary(self) -> dict[str, Any]:
        """Everything but the alerts, as plain data (for `--format json`)."""
        return {
            "files": self.files,
            "lines": self.lines,
            "connection_events": self.connection_events,
            "other_documents": self.other_documents,
            "malformed": self.malformed,
            "malformed_lines": [str(m) for m in self.bad_lines],
            "late_events": self.late_events,
            "read_line_by_line": self.handovers,
            "alerts": len(self.alerts),
            "alerts_by_rule": self.alerts_by_rule,
            "policy_checked": self.policy_checked,
            "policy": self.policy_counts.as_dict() if self.policy_counts is not None else None,
            "learning": {
                "start_ns": self.baseline.learning_start_ns,
                "end_ns": self.baseline.learning_end_ns,
                "complete": self.baseline.complete,
                "listeners": {str(port): {"start_ns": start, "end_ns": end}
                              for port, (start, end) in sorted(self.baseline.listener_learning.items())},
            },
            "listeners": [vars(s) for s in self.listeners],
            "sources": [vars(s) for s in self.sources],
            "elapsed_s": round(self.elapsed_s, 3),
        }


class _Tally:
    """Connections and refusals per (listener, source), summed over chunks (numpy: sorted keys, bincounts)."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.rows = 0

    def add(self, rows: Rows) -> None:
        self.parts.append(_summed((rows.lst << 32) | rows.src, rows.start, rows.refused))
        self.rows += len(self.parts[-1][0])
        if self.rows > 200_000:
            self.parts = [self.total()]
            self.rows = len(self.parts[0][0])

    def total(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(listener << 32 | source code, connections, refusals), keys ascending."""
        if not self.parts:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        return _summed(*(np.concatenate([part[i] for part in self.parts]) for i in range(3)))


def _summed(keys: np.ndarray, conn: np.ndarray, refused: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct keys ascending, with the sums of `conn` and `refused` (bools or counts) of each."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    sums = [np.bincount(inverse, weights=column, minlength=len(distinct)).astype(np.int64) for column in (conn, refused)]
    return distinct, sums[0], sums[1]


def to_rows(chunk: EventChunk, ips: IpTable, short_ns: int) -> Rows:
    """Detector rows of a chunk, sorted by event time (stable): the moments `counted` says count, but
    none of a source known only in part (`source_partial`, judged by no rule, as live)."""
    t = chunk.t
    in_order = len(t) < 2 or bool((t[1:] >= t[:-1]).all())     # as the agent writes them: no sort needed
    order = None if in_order else np.argsort(t, kind="stable")

    def arranged(column: np.ndarray) -> np.ndarray:
        return column if order is None else column[order]
    action = arranged(chunk.action)
    start, refused, short = counted(~arranged(chunk.egress), action == CODE[Action.ACCEPTED],
                                    action == CODE[Action.DENIED], action == CODE[Action.CLOSED],
                                    arranged(chunk.refused), arranged(chunk.duration), short_ns)
    judged = (start | refused | short) & ~arranged(chunk.partial)   # a source known in part is not judged
    kept = np.flatnonzero(judged)                        # positions, not masks: numpy gathers them faster
    index = kept if order is None else order[kept]
    src_codes = ips.codes(chunk.src_values)
    dst_codes = ips.codes(chunk.dst_values)
    ids = chunk.event_id
    return Rows(
        t=t[index], lst=chunk.listener[index], src=src_codes[chunk.src[index]],
        dst=dst_codes[chunk.dst[index]], start=start[kept], refused=refused[kept], short=short[kept],
        event_id=lambda i: ids(int(index[i])),
    )


def analyze(paths: Iterable[str | Path], *, policy: Any = None, config: DetectConfig,
            baseline: Baseline | None = None, top_sources: int = 20, engine_config: Any = None,
            decider: Decider | None = None, columnar: bool = True) -> AnalysisResult:
    """Replay event files through policy (if given, with the policy engine's `engine_config`), the
    anomaly detectors and the decision stage (`decider`, default: the default `decide` and
    `enforce.default_ttl` settings). A period with a Parquet segment is read from it unless
    `columnar` is False (`monitor.replay.sources`)."""
    if decider is None:
        decider = Decider(DecideConfig(), default_ttl_s=EnforceConfig.default_ttl_s, block_rules=config.block_rules)
    began = time.perf_counter()
    sources = plan(paths, columnar)                     # names a missing file
    files = [str(source.path) for source in sources]
    base = baseline if baseline is not None else Baseline.for_config(config)
    base.check_config(config, "baseline")
    ips = IpTable(config)
    engine = BatchEngine(config, base, ips, config.rules, [r for r in config.rules if decider.may_block(r)])
    checker = _policy_engine(policy, engine_config)
    stats = ReadStats()
    tally = _Tally()
    short_ns = int(round(config.scan_short_s * 1e9))
    alerts: list[Alert] = []
    for chunk in prefetch(read_sources(sources, stats, full=checker is not None)):
        raised: list[Alert] = []
        if checker is not None:
            for i in np.argsort(chunk.t, kind="stable"):
                if chunk.partial[i]:
                    continue   # as the live pipeline: a source known in part is not judged
                found = checker.check(chunk.event(int(i)))
                raised.extend(found)
                flag_sources(engine, found)
        rows = to_rows(chunk, ips, short_ns)
        tally.add(rows)
        raised.extend(engine.process(rows))
        raised.sort(key=lambda a: a.timestamp_ns)
        alerts.extend(r for r in decider.decide(raised) if isinstance(r, Alert))
    alerts.sort(key=lambda a: (a.timestamp_ns, a.rule_id, a.source_ip or ""))
    listeners, sources = _summaries(tally.total(), alerts, ips, top_sources)
    by_rule: dict[str, int] = {}
    for alert in alerts:
        by_rule[alert.rule_id] = by_rule.get(alert.rule_id, 0) + 1
    return AnalysisResult(
        alerts=alerts, files=files, lines=stats.lines, connection_events=stats.connections,
        other_documents=stats.other_documents, malformed=stats.malformed, bad_lines=stats.bad_lines,
        late_events=engine.late_events, listeners=listeners, sources=sources, baseline=base,
        elapsed_s=time.perf_counter() - began, policy_checked=checker is not None, alerts_by_rule=by_rule,
        handovers=stats.handovers, policy_counts=checker.counts() if checker is not None else None,
    )


def flag_sources(engine: BatchEngine, alerts: list[Alert]) -> None:
    """Sources the policy alerted on are not learned from (as `run` passes `flagged` to the detector)."""
    for alert in alerts:
        if alert.source_ip:
            engine.taint(alert.source_ip, alert.timestamp_ns)


def _policy_engine(policy: Any, engine_config: Any):
    if policy is None:
        return None
    from ..policy import PolicyEngine   # written by the policy stage; imported only when asked for
    return PolicyEngine(policy, engine_config)


def _summaries(total: tuple[np.ndarray, np.ndarray, np.ndarray], alerts: list[Alert], ips: IpTable,
               top: int) -> tuple[list[ListenerSummary], list[SourceSummary]]:
    per_listener_alerts: dict[int, int] = {}
    per_source_alerts: dict[str, int] = {}
    for alert in alerts:
        if alert.listener is not None:
            per_listener_alerts[alert.listener.port] = per_listener_alerts.get(alert.listener.port, 0) + 1
        if alert.source_ip:
            per_source_alerts[alert.source_ip] = per_source_alerts.get(alert.source_ip, 0) + 1
    keys, conn, refused = total
    ports, port_conn, port_refused, port_sources = _per(keys >> 32, conn, refused)
    listeners = [ListenerSummary(int(port), int(c), int(r), int(n), per_listener_alerts.get(int(port), 0))
                 for port, c, r, n in zip(ports, port_conn, port_refused, port_sources)]
    codes, src_conn, src_refused, src_listeners = _per(keys & 0xFFFFFFFF, conn, refused)
    names = [ips.ips[code] for code in codes.tolist()]
    alerted = [i for i, ip in enumerate(names) if ip in per_source_alerts]
    busiest = np.lexsort((codes, -src_conn))[:top].tolist()       # the first of equals, as the busiest
    chosen = sorted(dict.fromkeys(alerted + busiest),
                    key=lambda i: (-per_source_alerts.get(names[i], 0), -int(src_conn[i]), names[i]))
    sources = [SourceSummary(names[i], int(src_conn[i]), int(src_refused[i]), int(src_listeners[i]),
                             per_source_alerts.get(names[i], 0)) for i in chosen[: max(top, len(alerted))]]
    return listeners, sources


def _per(group: np.ndarray, conn: np.ndarray, refused: np.ndarray) -> tuple[np.ndarray, ...]:
    """(distinct groups ascending, their connections, refusals, and distinct (listener, source) pairs)."""
    distinct, inverse = np.unique(group, return_inverse=True)
    sums = (np.bincount(inverse, weights=column, minlength=len(distinct)).astype(np.int64) for column in (conn, refused))
    return distinct, *sums, np.bincount(inverse, minlength=len(distinct))
