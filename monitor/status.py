"""The agent's live picture, typed: what the control socket's `status`
answers, `top` draws, the metrics endpoint, the heartbeat and the exit
summary read.

`Status` (with its rows and `Counters`) is the one shape of a `status`
answer: the agent fills it (`LiveStatus.snapshot`), the control socket sends
it as `to_json(status)`, and `top` reads it back with `parse_status`, which
checks every value's type against the same dataclasses. `ReloadResult` is the
answer of a reload, and the status's `last_reload`.

`LiveStatus.observe_all(records)` is called for every batch of records the
agent writes (`observe(record)` for one); it keeps only bounded state (recent
rates per listener, the busiest sources, the last alerts, open connections),
so memory stays flat however long the agent runs. A listener's open
connections are counted as the policy engine counts them
(`monitor.policy.connections`): a connection whose close was lost is
forgotten when its 4-tuple is reused or after `open_idle_s`, so the count
does not drift up.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import types
import typing
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .ecs import iso_timestamp
from .errors import InputError
from .events import (
    ACCEPTED,
    CLOSED,
    DENIED,
    INGRESS,
    VALUES,
    Action,
    Alert,
    BlockEvent,
    ConnectionEvent,
    PipelineError,
    ProcessEvent,
    Record,
)
from .policy.connections import OpenConnections, open_key

RATE_WINDOW_S = 10.0
MAX_SOURCES = 4096
RECENT_ALERTS = 20
MAX_OPEN = 65_536        # as many sockets as the capture's kernel table tracks


@dataclass(frozen=True, slots=True)
class ListenerRow:
    ip: str
    port: int
    name: str | None = None
    pids: tuple[int, ...] = ()
    rate_per_s: float = 0.0
    active: int = 0


@dataclass(frozen=True, slots=True)
class SourceRow:
    ip: str
    connections: int = 0
    rate_per_s: float = 0.0
    listener_port: int | None = None


@dataclass(frozen=True, slots=True)
class AlertRow:
    timestamp: str = field(metadata={"json": "@timestamp"})
    rule_id: str = ""
    severity: str = ""
    source_ip: str | None = None
    listener_port: int | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class BlockRow:
    target: str
    expires_in_s: float | None = None
    rule_id: str | None = None


@dataclass(frozen=True, slots=True)
class DropRow:
    """A drop listener: SYNs its kernel rules dropped (dry run: counted) and the sources they remember."""

    listener: str
    port: int
    packets: int = 0
    sources: int = 0
    dry_run: bool = False
    netns: str | None = None     # the namespace of its rules (`ip netns` name; None: the agent's own)


@dataclass(frozen=True, slots=True)
class ForgottenCounts:
    """Open connections the policy engine forgot without their close, by why."""

    idle: int = 0
    reused: int = 0
    full: int = 0


@dataclass(frozen=True, slots=True)
class PolicyCounts:
    """What the policy engine counted besides alerts (`monitor.policy.engine.EngineCounts`)."""

    open: int = 0
    repeated_records: int = 0
    suppressed: int = 0
    open_forgotten: ForgottenCounts = field(default_factory=ForgottenCounts)


@dataclass(frozen=True, slots=True)
class Counters:
    events: dict[str, int] = field(default_factory=dict)
    alerts: dict[str, int] = field(default_factory=dict)
    kernel_lost: int = 0
    user_lost: int = 0
    queue_depth: int = 0
    blocks_active: int = 0
    es_spool_bytes: int = 0
    es_lag_s: float = 0.0
    rss_bytes: int = 0
    policy: PolicyCounts | None = None        # None: no policy in force

    @property
    def accepted(self) -> int:
        return self.events.get(Action.ACCEPTED.value, 0)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: `ok` when everything asked for is in force."""

    ok: bool
    policy: str | None = None                 # the policy file in force after it
    changed: tuple[str, ...] = ()             # settings now in force with new values
    rejected: tuple[str, ...] = ()            # settings kept at their old values, and why
    error: str | None = None                  # the new config or policy was refused: nothing changed


@dataclass(frozen=True, slots=True)
class Status:
    """One `status` answer of the agent."""

    version: str = ""
    pid: int = 0
    uptime_s: float = 0.0
    host: str = ""
    counters: Counters = field(default_factory=Counters)
    listeners: tuple[ListenerRow, ...] = ()
    top_sources: tuple[SourceRow, ...] = ()
    recent_alerts: tuple[AlertRow, ...] = ()
    blocks: tuple[BlockRow, ...] = ()
    last_reload: ReloadResult | None = None
    drops: tuple[DropRow, ...] = ()


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What `run` prints when the agent stops."""

    connections_seen: int
    events: dict[str, int]
    alerts: dict[str, int]
    sources_blocked: tuple[str, ...]
    kernel_lost: int
    user_lost: int
    output: str
    policy: PolicyCounts | None = None


def to_json(value: Any) -> Any:
    """A status dataclass (or a reload result) as JSON data, under the keys `parse_status` reads."""
    if dataclasses.is_dataclass(value):
        return {f.metadata.get("json", f.name): to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def parse_status(data: Any, where: str = "status") -> Status:
    """The agent's status JSON (already decoded) as a `Status`.

    Unknown keys are ignored (newer agents may say more), missing ones take
    their defaults; a value of the wrong type raises `InputError` naming the key.
    """
    return from_json(Status, data, where)


def from_json(cls: type, data: Any, where: str) -> Any:
    """One of the dataclasses above from JSON data, every value type-checked."""
    if not isinstance(data, dict):
        raise InputError(where, f"expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key = f.metadata.get("json", f.name)
        if data.get(key) is not None:
            values[f.name] = _typed(hints[f.name], data[key], key, where)
    return cls(**values)


_SCALARS = {int: ((int, float), "a number"), float: ((int, float), "a number"), str: ((str,), "a string"),
            bool: ((bool,), "true or false")}


def _typed(tp: Any, value: Any, key: str, where: str) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, f"{where}: {key}")
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list):
            raise InputError(where, f"{key}: expected a list, got {type(value).__name__}")
        return tuple(_typed(typing.get_args(tp)[0], item, f"{key}[{i}]", where) for i, item in enumerate(value))
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise InputError(where, f"{key}: expected an object, got {type(value).__name__}")
        return {str(k): _typed(typing.get_args(tp)[1], v, str(k), f"{where}: {key}") for k, v in value.items()}
    kinds, name = _SCALARS[tp]
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, kinds):
        raise InputError(where, f"{key}: expected {name}, got {value!r}")
    return tp(value)


@dataclass
class _ListenerState:
    ip: str
    port: int
    name: str | None = None
    pids: set[int] = field(default_factory=set)
    accepts: deque = field(default_factory=deque)   # monotonic seconds of recent accepts
    group: tuple[str, str] = ("", "")               # its open connections' group (`_group`), made once


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
        self._lock = threading.Lock()   # the main thread observes; the control and metrics threads read

    def observe(self, record: Record) -> None:
        with self._lock:
            self._observe(record)

    def observe_all(self, records: list[Record]) -> None:
        """`observe` each record in turn, under one lock taking for them all."""
        with self._lock:
            for record in records:
                self._observe(record)

    def totals(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Copies of (events by action, alerts by rule, losses by stage), safe from any thread."""
        with self._lock:
            return dict(self.events), dict(self.alerts), dict(self.pipeline_lost)

    def _observe(self, record: Record) -> None:
        # by exact class, connection events first: this runs for every record
        if record.__class__ is ConnectionEvent:
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
        action, listener = ev.action, ev.listener
        self.events[VALUES[action]] += 1
        if ev.direction is not INGRESS or listener is None:   # egress: counted, nothing more
            return
        state = self.listeners.get(listener.port)
        if state is None:
            state = self.listeners[listener.port] = _ListenerState(listener.ip, listener.port,
                                                                   group=_group(listener.port))
        if listener.name:
            state.name = listener.name
        now = self.clock()
        self.open.expire(ev.timestamp_ns)
        if action is ACCEPTED:
            if ev.process is not None:
                pids = state.pids
                pids.add(ev.process.pid)
                while len(pids) > 16:
                    pids.pop()
            self.open.open(open_key(ev), state.group, ev.id, ev.timestamp_ns)
            state.accepts.append(now)
            if not ev.source_partial:   # "::" or a /64 stub is no source to list
                self._source(ev.source_ip, listener.port, now)
        elif action is CLOSED or action is DENIED:
            self.open.close(open_key(ev))
        _trim(state.accepts, now)

    def _source(self, ip: str, port: int, now: float) -> None:
        src = self.sources.get(ip)
        if src is None:
            src = self.sources[ip] = _SourceState()
        else:
            self.sources.move_to_end(ip)
        src.connections += 1
        src.listener_port = port
        src.recent.append(now)
        _trim(src.recent, now)
        while len(self.sources) > MAX_SOURCES:
            self.sources.popitem(last=False)

    @property
    def connections_seen(self) -> int:
        return self.events[Action.ACCEPTED.value]

    def snapshot(self, *, version: str, pid: int, host: str, counters: Counters, blocks: tuple[BlockRow, ...],
                 last_reload: ReloadResult | None, drops: tuple[DropRow, ...] = ()) -> Status:
        """The `status` answer of the control socket (see `monitor.control`), from any thread."""
        with self._lock:
            return dataclasses.replace(self._snapshot(version, pid, host, counters, blocks, last_reload),
                                       drops=drops)

    def _snapshot(self, version: str, pid: int, host: str, counters: Counters, blocks: tuple[BlockRow, ...],
                  last_reload: ReloadResult | None) -> Status:
        now = self.clock()
        listeners = []
        for state in sorted(self.listeners.values(), key=lambda s: s.port):
            _trim(state.accepts, now)
            listeners.append(ListenerRow(state.ip, state.port, state.name, tuple(sorted(state.pids)),
                                         round(len(state.accepts) / RATE_WINDOW_S, 2),
                                         self.open.count(state.group)))
        top = sorted(self.sources.items(), key=lambda kv: (-len(kv[1].recent), -kv[1].connections))[:10]
        for _, src in top:
            _trim(src.recent, now)
        return Status(
            version=version, pid=pid, uptime_s=round(now - self.started, 1), host=host,
            counters=dataclasses.replace(counters, events=dict(self.events), alerts=dict(self.alerts)),
            listeners=tuple(listeners),
            top_sources=tuple(SourceRow(ip, s.connections, round(len(s.recent) / RATE_WINDOW_S, 2), s.listener_port)
                              for ip, s in top),
            recent_alerts=tuple(_alert_row(a) for a in reversed(self.recent_alerts)),
            blocks=blocks,
            last_reload=last_reload,
        )

    def summary(self, kernel_lost: int, user_lost: int, output: str) -> RunSummary:
        return RunSummary(self.connections_seen, dict(self.events), dict(self.alerts), tuple(self.blocked_targets),
                          kernel_lost, user_lost, output)


def _group(port: int) -> tuple[str, str]:
    """Open connections are counted per listener here, not per source."""
    return (str(port), "")


def _trim(stamps: deque, now: float) -> None:
    while stamps and now - stamps[0] > RATE_WINDOW_S:
        stamps.popleft()


def _alert_row(alert: Alert) -> AlertRow:
    return AlertRow(timestamp=iso_timestamp(alert.timestamp_ns), rule_id=alert.rule_id,
                    severity=alert.severity.name.lower(), source_ip=alert.source_ip,
                    listener_port=alert.listener.port if alert.listener else None, description=alert.description)
