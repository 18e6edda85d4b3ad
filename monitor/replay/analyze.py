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
import pandas as pd

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
    """Connections and refusals per (listener, source), summed over chunks."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []
        self.rows = 0

    def add(self, rows: Rows) -> None:
        frame = pd.DataFrame({"lst": rows.lst, "src": rows.src, "conn": rows.start, "refused": rows.refused})
        self.frames.append(frame.groupby(["lst", "src"], sort=False).sum())
        self.rows += len(self.frames[-1])
        if self.rows > 200_000:
            self.frames = [pd.concat(self.frames).groupby(level=[0, 1]).sum()]
            self.rows = len(self.frames[0])

    def total(self) -> pd.DataFrame:
        if not self.frames:
            return pd.DataFrame({"conn": [], "refused": []}, index=pd.MultiIndex.from_tuples([], names=["lst", "src"]))
        return pd.concat(self.frames).groupby(level=[0, 1]).sum()


def to_rows(chunk: EventChunk, ips: IpTable, short_ns: int) -> Rows:
    """Detector rows of a chunk, sorted by event time (stable): the moments `counted` says count."""
    order = np.argsort(chunk.t, kind="stable")
    action = chunk.action[order]
    start, refused, short = counted(~chunk.egress[order], action == CODE[Action.ACCEPTED],
                                    action == CODE[Action.DENIED], action == CODE[Action.CLOSED],
                                    chunk.refused[order], chunk.duration[order], short_ns)
    keep = (start | refused | short) & ~chunk.partial[order]   # a source known in part is not judged
    index = order[keep]
    src_codes = ips.codes(chunk.src_values)
    dst_codes = ips.codes(chunk.dst_values)
    ids = chunk.event_id
    return Rows(
        t=chunk.t[index], lst=chunk.listener[index], src=src_codes[chunk.src[index]],
        dst=dst_codes[chunk.dst[index]], start=start[keep], refused=refused[keep], short=short[keep],
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


def _summaries(total: pd.DataFrame, alerts: list[Alert], ips: IpTable,
               top: int) -> tuple[list[ListenerSummary], list[SourceSummary]]:
    per_listener_alerts: dict[int, int] = {}
    per_source_alerts: dict[str, int] = {}
    for alert in alerts:
        if alert.listener is not None:
            per_listener_alerts[alert.listener.port] = per_listener_alerts.get(alert.listener.port, 0) + 1
        if alert.source_ip:
            per_source_alerts[alert.source_ip] = per_source_alerts.get(alert.source_ip, 0) + 1
    flat = total.reset_index()
    by_lst = flat.groupby("lst").agg(conn=("conn", "sum"), refused=("refused", "sum"), sources=("src", "nunique"))
    listeners = [ListenerSummary(int(port), int(r.conn), int(r.refused), int(r.sources),
                                 per_listener_alerts.get(int(port), 0)) for port, r in by_lst.iterrows()]
    by_src = flat.groupby("src").agg(conn=("conn", "sum"), refused=("refused", "sum"), listeners=("lst", "nunique"))
    by_src["ip"] = [ips.ips[int(code)] for code in by_src.index]
    by_src["alerts"] = [per_source_alerts.get(ip, 0) for ip in by_src["ip"]]
    chosen = pd.concat([by_src[by_src["alerts"] > 0], by_src.nlargest(top, "conn")])
    chosen = chosen[~chosen.index.duplicated()].sort_values(["alerts", "conn", "ip"], ascending=[False, False, True])
    sources = [SourceSummary(r.ip, int(r.conn), int(r.refused), int(r.listeners), int(r.alerts))
               for r in chosen.head(max(top, int((by_src["alerts"] > 0).sum()))).itertuples()]
    return listeners, sources
