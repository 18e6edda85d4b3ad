"""What the agent tells about itself: the typed `status` answer of the
control socket, the Prometheus samples (also in the heartbeat) and the exit
summary. Read-only over the agent's parts."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING

from .. import __version__
from ..capture.capture import CaptureStats
from ..config import Config
from ..metrics import Sample, process_samples
from ..policy.engine import EngineCounts, PolicyEngine
from ..sinks import NdjsonSink, SinkStats
from ..status import BlockRow, Counters, DropRow, ForgottenCounts, PolicyCounts, RunSummary, Status

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)


def counters(agent: Agent, capture: CaptureStats | None = None) -> Counters:
    """The health counters (the event and alert counts are the status's own); `capture`: its stats, if
    the caller has them already (each read sums the kernel's per-CPU loss counter)."""
    sink = agent.sinks.stats_by_sink().get("ElasticsearchSink", SinkStats())   # the es_* figures are its own
    if capture is None and agent.capture is not None:
        capture = agent.capture.stats
    return Counters(
        kernel_lost=capture.kernel_lost if capture is not None else 0,
        user_lost=agent.handoff.lost,
        queue_depth=agent.handoff.held,
        blocks_active=len(agent.enforcer.active()) if agent.enforcer is not None else 0,
        es_spool_bytes=sink.spool_bytes,
        es_lag_s=sink.lag_s,
        policy=_policy_counts(agent),
    )


def _policy_counts(agent: Agent) -> PolicyCounts | None:
    if agent.pipeline.policy is None:
        return None
    counts = agent.pipeline.policy.counts()
    f = counts.forgotten
    return PolicyCounts(counts.open, counts.repeated, counts.suppressed, ForgottenCounts(f.expired, f.reused, f.evicted))


def snapshot(agent: Agent) -> Status:
    blocks: tuple[BlockRow, ...] = ()
    drops: tuple[DropRow, ...] = ()
    if agent.enforcer is not None:
        stamp = time.time_ns()
        blocks = tuple(BlockRow(b.target, round(b.remaining_s(stamp), 1), b.rule_id) for b in agent.enforcer.active())
        drops = tuple(DropRow(t.listener, t.port, t.packets, t.sources, t.dry_run, t.netns)
                      for t in agent.enforcer.drop_totals())
    health = dataclasses.replace(counters(agent), rss_bytes=process_samples()[0].value)
    return agent.status.snapshot(version=__version__, pid=os.getpid(), host=agent.host.name, counters=health,
                                 blocks=blocks, last_reload=agent.last_reload, drops=drops)


def samples(agent: Agent) -> list[Sample]:
    capture = agent.capture.stats if agent.capture is not None else None
    c = counters(agent, capture)
    events, alerts, lost = agent.status.totals()
    out = [Sample("events_total", "counter", "Records written, by event.action.", v, (("action", k),))
           for k, v in sorted(events.items())]
    out += [Sample("alerts_total", "counter", "Alerts raised, by rule.", v, (("rule", k),))
            for k, v in sorted(alerts.items())]
    out += [
        Sample("kernel_lost_events_total", "counter", "Events the kernel could not deliver.", c.kernel_lost),
        Sample("capture_partial_sources_total", "counter", "Accepts whose handshake the capture missed and whose "
               "source stayed known in part (written, not judged).",
               capture.partial_sources if capture is not None else 0),
        Sample("user_lost_events_total", "counter", "Events dropped in the agent (queue full).", c.user_lost),
        Sample("queue_depth", "gauge", "Records waiting between capture and pipeline.", c.queue_depth),
        Sample("blocks_active", "gauge", "Sources blocked now.", c.blocks_active),
        Sample("audit_dropped_total", "counter", "Execs not audited: the audit queue was full.", agent.audits.dropped),
        Sample("decide_reoffences_total", "counter", "Sources blocked again on a repeat while their alert was "
               "deduplicated.", agent.decider.reoffences),
        Sample("egress_lost_denials_total", "counter", "Refused backend connects the kernel could not report.",
               agent.egress.lost() if agent.egress is not None else 0),
        *_retention_samples(agent),
        Sample("audit_repeats_total", "counter", "Execs not audited again: same executable, user and argv.",
               agent.audits.repeats),
        Sample("elasticsearch_spool_bytes", "gauge", "Bytes spooled for Elasticsearch.", c.es_spool_bytes),
        Sample("elasticsearch_lag_seconds", "gauge", "Age of the oldest unacknowledged event.", c.es_lag_s),
    ]
    out += [Sample("sink_lost_events_total", "counter", "Events lost by a sink, by stage.", v, (("stage", k),))
            for k, v in sorted(lost.items())]
    if agent.pipeline.policy is not None:
        out += policy_samples(agent.pipeline.policy.counts())
    if agent.enforcing():
        out += agent.enforcer.samples()   # per-set drops, table rebuilds, netlink retries
    if agent.enforcer is not None:
        out += agent.enforcer.drop_samples()   # per drop listener, dry run included (what it would drop)
    return out + process_samples()


def _retention_samples(agent: Agent) -> list[Sample]:
    files = [s for s in agent.sinks.sinks if isinstance(s, NdjsonSink)]
    retired = files[0].retired if files else None
    return [Sample("ndjson_retired_files_total", "counter", "NDJSON files deleted by retention.",
                   retired.files if retired else 0),
            Sample("ndjson_retired_bytes_total", "counter", "Bytes of NDJSON files deleted by retention.",
                   retired.bytes if retired else 0)]


def exported_samples(agent: Agent) -> list[Sample]:
    """/metrics: the heartbeat's samples plus one series per active block (too many names for a document)."""
    return samples(agent) + (agent.enforcer.block_samples() if agent.enforcing() else [])


def policy_samples(counts: EngineCounts) -> list[Sample]:
    """The policy engine's counts as metrics."""
    forgotten = counts.forgotten
    return [
        Sample("policy_open_connections", "gauge", "Connections the policy engine counts as open.", counts.open),
        *(Sample("policy_open_forgotten_total", "counter",
                 "Open connections forgotten without their close, by why (idle, 4-tuple reused, table full).",
                 value, (("reason", reason),))
          for reason, value in (("idle", forgotten.expired), ("reused", forgotten.reused),
                                ("full", forgotten.evicted))),
        Sample("policy_repeated_records_total", "counter",
               "Repeated records of connection starts already counted (same event id), ignored.", counts.repeated),
    ]


class ForgottenReport:
    """A log line, at most once per heartbeat interval, when the policy engine forgot open connections
    whose close it never saw (the metrics and the status count them too)."""

    def __init__(self) -> None:
        self._logged = 0
        self._next = 0.0

    def log_new(self, engine: PolicyEngine, config: Config) -> None:
        now = time.monotonic()
        forgotten = engine.forgotten
        new = forgotten.total - self._logged
        if now < self._next or new <= 0:
            return
        self._logged, self._next = forgotten.total, now + config.agent.heartbeat_interval_s
        log.warning("policy: %d open connection(s) forgotten without their close since the last report "
                    "(in all: %d idle for %gs, %d whose 4-tuple a new connection reused, %d over the table's "
                    "%d); they no longer count toward max_concurrent_per_source", new, forgotten.expired,
                    config.policy_engine.open_idle_timeout_s, forgotten.reused, forgotten.evicted,
                    config.policy_engine.max_open)


def summary(agent: Agent) -> RunSummary:
    kernel_lost = agent.capture.stats.kernel_lost if agent.capture is not None else 0
    done = agent.status.summary(kernel_lost, agent.handoff.lost, agent.config.agent.output)
    return dataclasses.replace(done, policy=_policy_counts(agent))
