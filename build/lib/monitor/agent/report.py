"""What the agent tells about itself: the typed `status` answer of the
control socket, the Prometheus samples (also in the heartbeat) and the exit
summary. Read-only over the agent's parts."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING

from .. import __version__
from ..metrics import Sample, process_samples
from ..status import BlockRow, Counters, RunSummary, Status

if TYPE_CHECKING:
    from .agent import Agent


def counters(agent: Agent) -> Counters:
    """The health counters (the event and alert counts are the status's own)."""
    sink = agent.sinks.stats
    return Counters(
        kernel_lost=agent.capture.stats.kernel_lost if agent.capture is not None else 0,
        user_lost=agent.handoff.lost,
        queue_depth=agent.handoff.held,
        blocks_active=len(agent.enforcer.active()) if agent.enforcer is not None else 0,
        es_spool_bytes=sink.spool_bytes,
        es_lag_s=sink.lag_s,
    )


def snapshot(agent: Agent) -> Status:
    blocks: tuple[BlockRow, ...] = ()
    if agent.enforcer is not None:
        stamp = time.time_ns()
        blocks = tuple(BlockRow(b.target, round(b.remaining_s(stamp), 1), b.rule_id) for b in agent.enforcer.active())
    health = dataclasses.replace(counters(agent), rss_bytes=process_samples()[0].value)
    return agent.status.snapshot(version=__version__, pid=os.getpid(), host=agent.host.name, counters=health,
                                 blocks=blocks, last_reload=agent.last_reload)


def samples(agent: Agent) -> list[Sample]:
    c = counters(agent)
    live = agent.status
    out = [Sample("events_total", "counter", "Records written, by event.action.", v, (("action", k),))
           for k, v in sorted(live.events.items())]
    out += [Sample("alerts_total", "counter", "Alerts raised, by rule.", v, (("rule", k),))
            for k, v in sorted(live.alerts.items())]
    out += [
        Sample("kernel_lost_events_total", "counter", "Events the kernel could not deliver.", c.kernel_lost),
        Sample("user_lost_events_total", "counter", "Events dropped in the agent (queue full).", c.user_lost),
        Sample("queue_depth", "gauge", "Records waiting between capture and pipeline.", c.queue_depth),
        Sample("blocks_active", "gauge", "Sources blocked now.", c.blocks_active),
        Sample("audit_dropped_total", "counter", "Execs not audited: the audit queue was full.", agent.audits.dropped),
        Sample("audit_repeats_total", "counter", "Execs not audited again: same executable, user and argv.",
               agent.audits.repeats),
        Sample("elasticsearch_spool_bytes", "gauge", "Bytes spooled for Elasticsearch.", c.es_spool_bytes),
        Sample("elasticsearch_lag_seconds", "gauge", "Age of the oldest unacknowledged event.", c.es_lag_s),
    ]
    out += [Sample("sink_lost_events_total", "counter", "Events lost by a sink, by stage.", v, (("stage", k),))
            for k, v in sorted(live.pipeline_lost.items())]
    return out + process_samples()


def summary(agent: Agent) -> RunSummary:
    kernel_lost = agent.capture.stats.kernel_lost if agent.capture is not None else 0
    return agent.status.summary(kernel_lost, agent.handoff.lost, agent.config.agent.output)
