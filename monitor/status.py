"""The agent's live picture: what `top`, the control socket, the metrics
endpoint, the heartbeat and the exit summary all read.

`LiveStatus.observe(record)` is called for every record the agent writes;
it keeps only bounded state (recent rates per listener, the busiest sources,
the last alerts, open connections), so memory stays flat however long the
agent runs. A listener's open connections are counted as the policy engine
counts them (`monitor.policy.connections`): a connection whose close was
lost is forgotten when its 4-tuple is reused or after `open_idle_s`, so the
count does not drift up.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .ecs import iso_timestamp
from .events import Action, Alert, BlockEvent, ConnectionEvent, Direction, PipelineError, ProcessEvent, Record
from .policy.connections import OpenConnections, open_key

RATE_WINDOW_S = 10.0
MAX_SOURCES = 4096
RECENT_ALERTS = 20
MAX_OPEN = 65_536        # as many sockets as the capture's kernel table tracks


@dataclass
class _ListenerState:
    ip: str
    port: int
    name: str | None = None
    pids: set[int] = field(default_factory=set)
    accepts: deque = field(default_factory=deque)   # monotonic seconds of recent accepts


@dataclass
class _SourceState:
    connections: int = 0
    listener_port: int | None = None
    recent: deque = field(default_factory=deque)


class LiveStatus:
    """Bounded live counters over the record stream."""

    def __init__(self, clock=time.monotonic, open_idle_s: float = 3600.0) -> None:
        self.clock = clock
        self.started = clock()
        self.events: Counter = Counter()
        self.alerts: Counter = Counter()
        self.pipeline_lost: Counter = Counter()
        self.blocked_targets: list[str] = []
        self.listeners: dict[int, _ListenerState] = {}
        self.sources: OrderedDict[str, _SourceState] = OrderedDict()
        self.recent_alerts: deque = deque(maxlen=RECENT_ALERTS)
        self.open = OpenConnections(int(open_idle_s * 1e9), MAX_OPEN)

    def observe(self, record: Record) -> None:
        if isinstance(record, ConnectionEvent):
            self._connection(record)
        elif isinstance(record, Alert):
            self.alerts[record.rule_id] += 1
            self.recent_alerts.append(record)
        elif isinstance(record, BlockEvent):
            self.events[record.action.value] += 1
            if record.action is Action.BLOCKED and record.target not in self.blocked_targets:
                self.blocked_targets.append(record.target)
        elif isinstance(record, PipelineError):
            self.pipeline_lost[record.stage] += record.count
        elif isinstance(record, ProcessEvent):
            self.events[record.action.value] += 1

    def _connection(self, ev: ConnectionEvent) -> None:
        self.events[ev.action.value] += 1
        if ev.direction is not Direction.INGRESS or ev.listener is None:
            return
        state = self.listeners.get(ev.listener.port)
        if state is None:
            state = self.listeners[ev.listener.port] = _ListenerState(ev.listener.ip, ev.listener.port)
        state.name = ev.listener.name or state.name
        if ev.process is not None and ev.action is Action.ACCEPTED:
            state.pids.add(ev.process.pid)
            while len(state.pids) > 16:
                state.pids.pop()
        now = self.clock()
        self.open.expire(ev.timestamp_ns)
        if ev.action is Action.ACCEPTED:
            self.open.open(open_key(ev), _group(ev.listener.port), ev.id, ev.timestamp_ns)
            state.accepts.append(now)
            self._source(ev.source_ip, ev.listener.port, now)
        elif ev.action in (Action.CLOSED, Action.DENIED):
            self.open.close(open_key(ev))
        _trim(state.accepts, now)

    def _source(self, ip: str, port: int, now: float) -> None:
        src = self.sources.pop(ip, None) or _SourceState()
        src.connections += 1
        src.listener_port = port
        src.recent.append(now)
        _trim(src.recent, now)
        self.sources[ip] = src
        while len(self.sources) > MAX_SOURCES:
            self.sources.popitem(last=False)

    @property
    def connections_seen(self) -> int:
        return self.events[Action.ACCEPTED.value]

    def snapshot(self, extra_counters: dict[str, Any], blocks: list[dict[str, Any]]) -> dict[str, Any]:
        """The `status` answer of the control socket (see `monitor.control`)."""
        now = self.clock()
        listeners = []
        for state in sorted(self.listeners.values(), key=lambda s: s.port):
            _trim(state.accepts, now)
            listeners.append({
                "ip": state.ip, "port": state.port, "name": state.name, "pids": sorted(state.pids),
                "rate_per_s": round(len(state.accepts) / RATE_WINDOW_S, 2),
                "active": self.open.count(_group(state.port)),
            })
        top = sorted(self.sources.items(), key=lambda kv: (-len(kv[1].recent), -kv[1].connections))[:10]
        for _, src in top:
            _trim(src.recent, now)
        return {
            "uptime_s": round(now - self.started, 1),
            "counters": {
                "events": dict(self.events),
                "alerts": dict(self.alerts),
                **extra_counters,
            },
            "listeners": listeners,
            "top_sources": [
                {"ip": ip, "connections": s.connections, "rate_per_s": round(len(s.recent) / RATE_WINDOW_S, 2),
                 "listener_port": s.listener_port}
                for ip, s in top
            ],
            "recent_alerts": [_alert_line(a) for a in reversed(self.recent_alerts)],
            "blocks": blocks,
        }

    def summary(self, kernel_lost: int, user_lost: int) -> dict[str, Any]:
        return {
            "connections_seen": self.connections_seen,
            "events": dict(self.events),
            "alerts": dict(self.alerts),
            "sources_blocked": list(self.blocked_targets),
            "kernel_lost": kernel_lost,
            "user_lost": user_lost,
        }


def _group(port: int) -> tuple[str, str]:
    """Open connections are counted per listener here, not per source."""
    return (str(port), "")


def _trim(stamps: deque, now: float) -> None:
    while stamps and now - stamps[0] > RATE_WINDOW_S:
        stamps.popleft()


def _alert_line(alert: Alert) -> dict[str, Any]:
    return {
        "@timestamp": iso_timestamp(alert.timestamp_ns),
        "rule_id": alert.rule_id,
        "severity": alert.severity.name.lower(),
        "source_ip": alert.source_ip,
        "listener_port": alert.listener.port if alert.listener else None,
        "description": alert.description,
    }
