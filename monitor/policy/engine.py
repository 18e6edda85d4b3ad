"""Runtime policy checks: a pure, stateful engine over ConnectionEvents.

`PolicyEngine(policy).check(event)` returns the `Alert`s one event causes.
It does no I/O and reads no clock: every window is measured in event time
(`timestamp_ns`), so replaying the same events gives the same alerts.

Rules (rule id: when it fires):

- `policy.unknown_listener`: a client reached a listener port the policy does
  not name (only if `defaults.unknown_listener` is `alert`), or a relay no
  entry of its port means (another namespace, container, cgroup or user than
  they name: always).
- `policy.source_denied`: a client outside the listener's `allow_sources`
  connected (accepted or refused by socat; a refusal gives outcome failure).
- `policy.backend_denied`: a listener's child connected to a backend outside
  `allow_backends`; the client of the same session is blamed when known.
- `policy.rate_exceeded`: one source opened more than `max_rate_per_source`
  connections within the rate's period (sliding window, event time).
- `policy.concurrency_exceeded`: one source held more than
  `max_concurrent_per_source` connections open at once (accepts minus closes).

Deduplication: at most one alert per (rule, listener, source) per dedup window
(`dedup_window_s`, default 60 s of event time); for `policy.unknown_listener`
the key is (rule, listener port) and for `policy.backend_denied` it is
(rule, listener, client, backend). Later violations inside the window are
counted in `suppressed`, not alerted: each comes back as a `deduplicated`
alert (which the decision stage sees but nobody writes), and the next alert of
the key says how many there were (`Alert.suppressed`).

Which entry judges an event: the one on its listener's port that means its
relay (`Policy.listener`: the relay's network namespace, container, cgroup
and user against the entry's `Selector`; an entry naming none of them means
the relays of `home`, the namespaces enforced in). A relay no entry means is
an unknown listener.

Alerts carry the listener's `action` (`listener_action`); whether to block is
the decision stage's call (`monitor.decide`).

Counting (`connections.py`): every accepted connection counts toward the
rate, whatever its 4-tuple; only a repeated record of one already counted
(the same recorded `event.id`, while it is open or in the rate window) is
ignored and counted (`counts().repeated`). A connection is open from its accept to
its close, paired by the 4-tuple. Closes can be lost, so an open connection
is also forgotten when a new connection reuses its 4-tuple, when nothing was
seen of it for `open_idle_timeout_s` of event time, or beyond `max_open`
(all counted in `forgotten`): lost closes cannot make concurrency drift up.

State is bounded: per-source windows keep at most the declared count + 1
starts and are dropped once idle for longer than their period; open
connections are capped as above; dedup entries expire with the window.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass

from ..addresses import Address, unmapped
from ..events import (
    Action,
    Alert,
    ConnectionEvent,
    Direction,
    DropEvent,
    Listener,
    Outcome,
    ProcessInfo,
)
from ..settings import setting
from .connections import Counted, Forgotten, SourceCounter
from ..rules import new_alert, repeat_alert
from .model import ListenerPolicy, Policy

NS = 1_000_000_000

_MAX_TRIGGERS = 20
_SOURCE_CACHE = 65_536   # remembered (listener, source) decisions; cleared when full
_STARTS = (Action.ACCEPTED, Action.DENIED)


@dataclass(frozen=True)
class EngineConfig:
    """Settings of the policy engine: the config file's `policy_engine` section."""

    open_idle_timeout_s: float = 3600.0   # an open connection not seen for this long is forgotten; 0: never
    dedup_window_s: float = 60.0          # one alert per rule, listener and source per window
    max_open: int = setting(200_000, minimum=1)   # open connections tracked; beyond, the oldest is forgotten


@dataclass(frozen=True, slots=True)
class EngineCounts:
    """What the engine counted besides alerts (for the agent's status and metrics and analyze's summary)."""

    open: int              # connections open now
    repeated: int          # repeated records of starts already counted, ignored
    suppressed: int        # violations inside a dedup window
    forgotten: Forgotten   # open connections forgotten without their close

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        f = self.forgotten
        return {"open": self.open, "repeated_records": self.repeated, "suppressed": self.suppressed,
                "open_forgotten": {"idle": f.expired, "reused": f.reused, "full": f.evicted}}


class PolicyEngine:
    """Applies a Policy to live or replayed ConnectionEvents (see module docstring for the rules)."""

    def __init__(self, policy: Policy, config: EngineConfig | None = None,
                 home: Collection[int] | None = None) -> None:
        """`home`: the inodes of the namespaces enforced in, which entries naming no relay identity mean
        (None: offline, every relay on the port)."""
        config = config if config is not None else EngineConfig()
        self.policy = policy
        self.home = frozenset(home) if home is not None else None
        self.config = config
        self.dedup_window_ns = int(config.dedup_window_s * NS)
        self.suppressed = 0
        self._last_alert: dict[tuple, int] = {}
        self._counter = SourceCounter(int(config.open_idle_timeout_s * NS), config.max_open)
        self._held: dict[tuple, int] = {}        # key -> repeats suppressed since its last alert
        self._last_prune_ns = 0
        self._source_cache: dict[tuple[str, str], bool] = {}

    @property
    def forgotten(self) -> Forgotten:
        """Open connections forgotten without their close (idle, 4-tuple reused, table full)."""
        return self._counter.open.forgotten

    @property
    def open_connections(self) -> int:
        return len(self._counter.open)

    def counts(self) -> EngineCounts:
        f = self.forgotten
        return EngineCounts(open=self.open_connections, repeated=self._counter.repeated, suppressed=self.suppressed,
                            forgotten=Forgotten(f.expired, f.reused, f.evicted))

    def carry_over(self, previous: "PolicyEngine") -> None:
        """Keep what a previous engine (the policy before a reload) counted: open connections (under this
        engine's idle time and size), rate windows, dedup state and counts, so a reload neither forgets
        a flood in progress nor repeats alerts already raised."""
        open_now = previous._counter.open
        open_now.idle_ns, open_now.max_open = self._counter.open.idle_ns, self._counter.open.max_open
        self._counter.open = open_now
        self._counter.windows = previous._counter.windows
        self._counter.repeated = previous._counter.repeated
        self._last_alert, self._held = previous._last_alert, previous._held
        self.suppressed = previous.suppressed

    def listener_name(self, port: int, process: ProcessInfo | None = None) -> str | None:
        entry = self.policy.listener(port, process=process, home=self.home)
        return entry.name if entry else None

    def check(self, event: ConnectionEvent) -> list[Alert]:
        """The alerts this event causes, in event time; updates the engine's state."""
        self._prune(event.timestamp_ns)
        if event.direction is Direction.EGRESS:
            return self._check_egress(event)
        port, ip = listening_socket(event)
        entry = self.policy.listener(port, ip, event.process, self.home)
        if event.action is Action.CLOSED:
            self._counter.close(event)
            return []
        if event.action not in _STARTS:
            return []
        if entry is None:
            return self._unknown(event, port, ip)
        rate = entry.max_rate_per_source
        counted = self._counter.start(event, (entry.name, event.source_ip), rate.count if rate else None,
                                      int(rate.period_s * NS) if rate else None)
        if counted is None:
            return []
        alerts = self._check_source(event, entry, port, ip)
        if counted.rate is not None:
            alerts += self._check_rate(event, entry, port, ip, counted)
        if counted.open is not None:
            alerts += self._check_concurrency(event, entry, port, ip, counted.open)
        return alerts

    # -- rules -------------------------------------------------------------------------------------

    def _unknown(self, ev: ConnectionEvent, port: int, ip: str) -> list[Alert]:
        """A relay no entry means: alerted when the defaults say so, and always when the port is declared
        for other relays (one elsewhere on a declared port is what a forged relay looks like)."""
        if ev.action is not Action.ACCEPTED:
            return []
        others = [entry.name for entry in self.policy.listeners if entry.port == port]
        if others:
            where = describe_relay(ev.process)
            return self._emit(("policy.unknown_listener", port, where), ev, None, port, ip,
                              f"connection from {ev.source_ip} to port {port} of {where}: the policy declares "
                              f"port {port} only for other relays ({', '.join(others)})")
        if self.policy.defaults.unknown_listener != "alert":
            return []
        return self._emit(("policy.unknown_listener", port), ev, None, port, ip,
                          f"connection from {ev.source_ip} to port {port}, which the policy does not name")

    def _check_source(self, ev: ConnectionEvent, entry: ListenerPolicy, port: int, ip: str) -> list[Alert]:
        if entry.allow_sources is None:
            return []
        key = (entry.name, ev.source_ip)
        allowed = self._source_cache.get(key)
        if allowed is None:
            if len(self._source_cache) >= _SOURCE_CACHE:
                self._source_cache.clear()
            allowed = self._source_cache[key] = entry.source_allowed(_address(ev.source_ip))
        if allowed:
            return []
        how = "refused by socat" if ev.refused or ev.action is Action.DENIED else "accepted"
        return self._emit(("policy.source_denied", entry.name, ev.source_ip), ev, entry, port, ip,
                          f"{ev.source_ip} connected to {entry.name} (port {port}) but is not in allow_sources "
                          f"({how})", source=ev.source_ip)

    def _check_rate(self, ev: ConnectionEvent, entry: ListenerPolicy, port: int, ip: str,
                    counted: Counted) -> list[Alert]:
        rate = entry.max_rate_per_source
        window = counted.rate
        if len(window.starts) <= rate.count:
            return []
        return self._emit(("policy.rate_exceeded", entry.name, ev.source_ip), ev, entry, port, ip,
                          f"{ev.source_ip} opened more than {rate.count} connections per {rate.text.split('/')[1]} "
                          f"to {entry.name} (declared {rate.text})", source=ev.source_ip,
                          triggers=window.event_ids(), observed=float(len(window.starts)),
                          threshold=float(rate.count), window_s=rate.period_s)

    def _check_concurrency(self, ev: ConnectionEvent, entry: ListenerPolicy, port: int, ip: str,
                           count: int) -> list[Alert]:
        limit = entry.max_concurrent_per_source
        if limit is None or count <= limit:
            return []
        return self._emit(("policy.concurrency_exceeded", entry.name, ev.source_ip), ev, entry, port, ip,
                          f"{ev.source_ip} holds {count} connections open to {entry.name}, more than the declared "
                          f"{limit}", source=ev.source_ip, observed=float(count), threshold=float(limit))

    def _check_egress(self, ev: ConnectionEvent) -> list[Alert]:
        if ev.action is not Action.ATTEMPTED or ev.listener is None:
            return []
        entry = self.policy.listener(ev.listener.port, ev.listener.ip, ev.process, self.home)
        if entry is None or entry.allow_backends is None:
            return []
        if entry.backend_allowed(_address(ev.destination_ip), ev.destination_port):
            return []
        client = self._counter.open.client(ev.session_id) if ev.session_id else None
        backend = f"[{ev.destination_ip}]:{ev.destination_port}" if ":" in ev.destination_ip else \
            f"{ev.destination_ip}:{ev.destination_port}"
        who = f" for client {client}" if client else ""
        return self._emit(("policy.backend_denied", entry.name, client, backend), ev, entry,
                          ev.listener.port, ev.listener.ip,
                          f"{entry.name} connected to backend {backend}{who}, which is not in allow_backends",
                          source=client)

    # -- state -------------------------------------------------------------------------------------

    def _prune(self, now_ns: int) -> None:
        """Forget idle open connections; drop expired dedup entries and idle rate windows at most once
        per dedup window."""
        self._counter.expire(now_ns)
        if now_ns - self._last_prune_ns < max(self.dedup_window_ns, NS):
            return
        self._last_prune_ns = now_ns
        self._held = {k: n for k, n in self._held.items() if now_ns - self._last_alert.get(k, 0) < 2 * self.dedup_window_ns}
        self._last_alert = {k: t for k, t in self._last_alert.items() if now_ns - t < self.dedup_window_ns}
        self._counter.drop_idle_windows(now_ns)

    def _emit(self, key: tuple, ev: ConnectionEvent, entry: ListenerPolicy | None, port: int, ip: str,
              description: str, *, source: str | None = None, triggers: tuple[str, ...] | None = None,
              observed: float | None = None, threshold: float | None = None,
              window_s: float | None = None) -> list[Alert]:
        last = self._last_alert.get(key)
        rule_id = key[0]
        if last is not None and ev.timestamp_ns - last < self.dedup_window_ns:
            self.suppressed += 1
            self._held[key] = self._held.get(key, 0) + 1
            return [repeat_alert(rule_id, ev.timestamp_ns, _blamed(rule_id, ev, source),
                                 entry.action if entry is not None else None, process=ev.process,
                                 listener_trusts_unprivileged=entry is not None and entry.trust_unprivileged)]
        self._last_alert[key] = ev.timestamp_ns
        severity = entry.severity if entry is not None else None
        refused = ev.refused or ev.action is Action.DENIED
        return [new_alert(
            rule_id,
            description=description,
            severity=severity,
            timestamp_ns=ev.timestamp_ns,
            source_ip=_blamed(rule_id, ev, source),
            listener=Listener(ip=ip, port=port, name=entry.name if entry else None),
            process=ev.process,
            trigger_event_ids=(triggers or (ev.id,))[-_MAX_TRIGGERS:],
            observed=observed,
            threshold=threshold,
            window_s=window_s,
            outcome=Outcome.FAILURE if refused else Outcome.SUCCESS,
            listener_action=entry.action if entry is not None else None,
            listener_trusts_unprivileged=entry is not None and entry.trust_unprivileged,
            suppressed=self._held.pop(key, 0),
        )]


def dropped_alert(ev: DropEvent) -> Alert:
    """The `policy.source_denied` alert of a source a drop listener's kernel rule dropped for the first time."""
    would = "would have dropped (dry run)" if ev.dry_run else "dropped"
    return new_alert("policy.source_denied", timestamp_ns=ev.timestamp_ns, source_ip=ev.source_ip,
                     listener=ev.listener, listener_action="drop", outcome=Outcome.FAILURE,
                     trigger_event_ids=(ev.id,),
                     description=f"{ev.source_ip} is not in allow_sources of {ev.listener.name} (port "
                                 f"{ev.listener.port}): the kernel {would} its connection before the handshake")


def describe_relay(process: ProcessInfo | None) -> str:
    """`relay pid N (uid U) in network namespace NAME` and its container, as far as known."""
    if process is None:
        return "a relay of unknown identity"
    started = process.started_uid if process.started_uid is not None else process.uid
    parts = [f"relay pid {process.pid}" + (f" (started by uid {started})" if started is not None else "")]
    if process.netns is not None:
        named = f" ({process.netns_name})" if process.netns_name else ""
        parts.append(f"in network namespace net:[{process.netns}]{named}")
    if process.container is not None:
        parts.append(f"in container {process.container.name or process.container.id[:12]}")
    return " ".join(parts)


def _blamed(rule_id: str, ev: ConnectionEvent, source: str | None) -> str | None:
    """The source an alert names: the one given, or for an unknown listener the connecting client."""
    if source is None and rule_id == "policy.unknown_listener":
        return ev.source_ip
    return source


def listening_socket(ev: ConnectionEvent) -> tuple[int, str]:
    """(port, ip) of the listener an ingress event came through."""
    if ev.listener is not None:
        return ev.listener.port, ev.listener.ip
    return ev.destination_port, ev.destination_ip


def _address(text: str) -> Address:
    return unmapped(ipaddress.ip_address(text))
