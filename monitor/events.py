"""The one event model of socat-monitor.

Every stage speaks these typed records: capture produces `ConnectionEvent`
and `ProcessEvent`, policy and detect produce `Alert`, enforce produces
`BlockEvent`, and the agent itself reports `PipelineError` and `Heartbeat`.
ECS documents are a rendering of these records done once, in `monitor.ecs`;
nothing inside the agent passes dicts between stages.

Times are integers in nanoseconds: `timestamp_ns` is wall-clock time (Unix
epoch, UTC) and `ktime_ns`, where the kernel gave one, is its monotonic
clock, kept for exact ordering and latency figures.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import dataclass, field


class Action(str, enum.Enum):
    """`event.action` values written by socat-monitor."""

    ACCEPTED = "connection_accepted"      # socat accepted a client (ingress)
    ATTEMPTED = "connection_attempted"    # socat connected to a backend (egress)
    CLOSED = "connection_closed"          # a connection ended
    DENIED = "connection_denied"          # socat accepted, then refused (range=/tcpwrap)
    PROCESS_STARTED = "process_started"   # a socat process exec'd
    PROCESS_ENDED = "process_ended"       # a socat process exited
    BLOCKED = "address_blocked"
    UNBLOCKED = "address_unblocked"
    BLOCK_REFUSED = "block_refused"       # a block the safety rules refused
    BLOCK_DRY_RUN = "block_dry_run"       # a block --dry-run would have made
    BLOCK_COUNTERS = "block_counters"     # periodic: what an active block dropped (event.kind metric)
    CONNECTION_DROPPED = "connection_dropped"   # a drop listener's rule dropped a new source's SYN
    DROP_COUNTERS = "drop_counters"       # periodic: a dropped source's running count (event.kind metric)


class Direction(str, enum.Enum):
    INGRESS = "ingress"   # a client reached a socat listener
    EGRESS = "egress"     # socat dialled a backend


class Outcome(str, enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


# The members the per-record paths compare against, as module globals to import: `Action.ACCEPTED` is
# looked up through the enum's class each time, several times the cost of a global
ACCEPTED, ATTEMPTED, CLOSED, DENIED = Action.ACCEPTED, Action.ATTEMPTED, Action.CLOSED, Action.DENIED
INGRESS, EGRESS = Direction.INGRESS, Direction.EGRESS
SUCCESS, FAILURE = Outcome.SUCCESS, Outcome.FAILURE

# Each member's `.value`, by member, for the per-event paths: a dict lookup hashes a member as its str,
# where `.value` runs the enum's descriptor (several times slower)
VALUES: dict[enum.Enum, str] = {member: member.value for kind in (Action, Direction, Outcome) for member in kind}


class Severity(enum.IntEnum):
    """`event.severity`; `risk_score` maps each to 0-100."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def risk_score(self) -> int:
        return {1: 21, 2: 47, 3: 73, 4: 99}[int(self)]

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}: expected low, medium, high or critical") from None


_id_lock = threading.Lock()
_last_id_ns = 0
_ID_PREFIX = f"{os.getpid():x}"


def new_event_id() -> str:
    """A unique, time-ordered id: also the Elasticsearch `_id` of the document.

    Nanosecond wall clock made strictly increasing within the process, plus the
    process id, so two agents on one host never collide.
    """
    global _last_id_ns
    _id_lock.acquire()   # not `with`: half the cost, for every record
    try:
        now = time.time_ns()
        if now <= _last_id_ns:
            now = _last_id_ns + 1
        _last_id_ns = now
    finally:
        _id_lock.release()
    return f"{now:x}-{_ID_PREFIX}"


UNRECORDED_ID_PREFIX = "line-"


def unrecorded_id(timestamp_ns: int) -> str:
    """The id of a connection document that carries no `event.id` (other tools' files).

    Made from its time, so readable in `trigger_event_ids`, but not unique: two
    lines of one second share it. `has_recorded_id` tells such an id apart."""
    return f"{UNRECORDED_ID_PREFIX}{timestamp_ns}"


def has_recorded_id(event: "ConnectionEvent") -> bool:
    """Whether the event's id was recorded with it (so a second record with that id is the same record)."""
    return not event.id.startswith(UNRECORDED_ID_PREFIX)


@dataclass(frozen=True, slots=True)
class Container:
    """The container a process runs in, from its cgroup path (`monitor.host.identity`)."""

    id: str                       # the runtime's id (an nspawn machine's name)
    name: str | None = None       # where the runtime's state names it
    runtime: str | None = None    # docker, containerd, cri-o, podman, systemd-nspawn


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What is known of the socat process behind an event."""

    pid: int
    comm: str
    ppid: int | None = None
    tid: int | None = None
    uid: int | None = None
    gid: int | None = None
    user_name: str | None = None
    executable: str | None = None
    args: tuple[str, ...] = ()
    start_ns: int | None = None   # process start (wall clock), part of entity_id
    started_uid: int | None = None   # the uid it was exec'd as (socat's su= drops uid later, not this)
    netns: int | None = None      # inode of its network namespace (None: unknown)
    userns_owner: int | None = None   # uid owning its user namespace (0: the host's or root's; None: unknown)
    netns_name: str | None = None     # its network namespace's `ip netns` name (None: unnamed or unknown)
    cgroup: str | None = None         # its cgroup path (v2, else systemd's v1)
    container: Container | None = None

    @property
    def command_line(self) -> str:
        return " ".join(self.args)


@dataclass(frozen=True, slots=True)
class Listener:
    """The listening socket a connection came through (or, for an egress
    connection, the listener of the relay that dialled)."""

    ip: str
    port: int
    name: str | None = None   # the policy's name for it, filled by policy
    pid: int | None = None    # the process holding the listening socket (Capture.listeners)


@dataclass(slots=True)
class ConnectionEvent:
    """One TCP connection moment seen in a socat process.

    For `ACCEPTED`/`DENIED`/`CLOSED` of an ingress connection, source is the
    client and destination the listener address. For `ATTEMPTED` (egress),
    source is socat's local end and destination the backend.
    """

    action: Action
    timestamp_ns: int
    source_ip: str
    source_port: int
    destination_ip: str
    destination_port: int
    direction: Direction = Direction.INGRESS
    outcome: Outcome = Outcome.SUCCESS
    process: ProcessInfo | None = None
    listener: Listener | None = None
    session_id: str | None = None
    ktime_ns: int | None = None
    duration_ns: int | None = None        # CLOSED / DENIED
    bytes_in: int | None = None           # bytes socat read from this peer
    bytes_out: int | None = None          # bytes socat wrote to this peer
    error: str | None = None              # errno name of a failed connect
    refused: bool = False                 # socat refused it (range=, tcpwrap)
    source_partial: bool = False          # source_ip holds only the first 64 bits of the client (unknown for an
                                          # IPv4 client of a dual-stack relay): an accept the capture missed
    id: str = field(default_factory=new_event_id)

    @property
    def network_type(self) -> str:
        return "ipv6" if ":" in self.source_ip else "ipv4"

    @property
    def client_ip(self) -> str:
        """The remote peer: the client for ingress, the backend for egress."""
        return self.source_ip if self.direction is Direction.INGRESS else self.destination_ip


@dataclass(slots=True)
class ProcessEvent:
    """A socat process started (exec, with argv) or ended (with status)."""

    action: Action
    timestamp_ns: int
    process: ProcessInfo
    exit_code: int | None = None
    signal: int | None = None
    ktime_ns: int | None = None
    id: str = field(default_factory=new_event_id)


@dataclass(slots=True)
class Alert:
    """A finding that something is wrong: a policy violation, an audit
    finding or an anomaly. Producers describe what they saw; the decision
    stage (`monitor.decide`) fills `block`, `block_target` and `block_ttl_s`.

    `deduplicated` marks a repeat that the producer's dedup window holds back:
    it is never written, but the decision stage still sees it (a re-offence of
    a source no longer blocked is blocked again). The next alert written for
    the same key counts those repeats in `suppressed`."""

    rule_id: str                 # e.g. policy.source_denied, audit.exec_address
    rule_name: str
    description: str
    ruleset: str                 # policy | audit | anomaly | enforce
    severity: Severity
    timestamp_ns: int
    source_ip: str | None = None
    source_network: str | None = None    # anomaly: the IPv6 /64 the rule counted as one source (source_ip is in it)
    listener: Listener | None = None
    process: ProcessInfo | None = None
    trigger_event_ids: tuple[str, ...] = ()
    observed: float | None = None    # the value that crossed the threshold
    baseline: float | None = None
    threshold: float | None = None
    score: float | None = None
    window_s: float | None = None
    top_sources: tuple[str, ...] = ()
    token: str | None = None         # audit: the offending command-line token
    fix: str | None = None           # audit: how to fix it
    outcome: Outcome = Outcome.UNKNOWN
    listener_action: str | None = None   # the policy's action for the listener (alert | block): a decision input
    listener_trusts_unprivileged: bool = False   # the listener's `trust_unprivileged`: a decision input
    deduplicated: bool = False
    suppressed: int = 0              # repeats held back by the dedup window since the previous alert
    block: bool = False              # the decision: drop block_target for block_ttl_s
    block_target: str | None = None  # an address or CIDR to block
    block_ttl_s: float | None = None
    block_skipped: str | None = None     # why a block the action asked for was not made (an untrusted relay)
    destination_ip: str | None = None    # egress alerts: the backend socat dialled
    destination_port: int | None = None
    id: str = field(default_factory=new_event_id)


@dataclass(slots=True)
class BlockEvent:
    """A change (or refused change) of the firewall's block sets."""

    action: Action                   # BLOCKED, UNBLOCKED, BLOCK_REFUSED, BLOCK_DRY_RUN
    timestamp_ns: int
    target: str                      # address or CIDR
    ttl_s: float | None = None
    rule_id: str | None = None       # the rule that caused it
    reason: str | None = None        # why refused / unblocked
    alert_id: str | None = None
    ktime_ns: int | None = None
    dropped_packets: int | None = None  # BLOCK_COUNTERS: new connections' packets dropped since the block began
    dropped_bytes: int | None = None
    id: str = field(default_factory=new_event_id)


@dataclass(slots=True)
class DropEvent:
    """New connections a drop listener's kernel rule dropped before the handshake, from one source."""

    action: Action                   # CONNECTION_DROPPED (first seen), DROP_COUNTERS (it dropped more since)
    timestamp_ns: int
    source_ip: str
    listener: Listener               # the listener's declared address (or ::), port and policy name
    dropped_packets: int             # SYNs dropped from this source so far
    dry_run: bool = False            # the rule only counted: it would have dropped them
    source_port: int | None = None   # the port of its first dropped SYN
    netns: str | None = None         # the namespace whose rule dropped them (`ip netns` name; None: the agent's)
    id: str = field(default_factory=new_event_id)


@dataclass(slots=True)
class PipelineError:
    """The monitor's own losses and faults, never silent."""

    stage: str                       # capture | enrich | sinks.ndjson | sinks.elasticsearch | ...
    message: str
    timestamp_ns: int
    count: int = 1                   # events lost or affected
    id: str = field(default_factory=new_event_id)


@dataclass(slots=True)
class Heartbeat:
    """Periodic proof of life carrying the agent's counters."""

    timestamp_ns: int
    counters: tuple[tuple[str, float], ...]
    id: str = field(default_factory=new_event_id)


Record = ConnectionEvent | ProcessEvent | Alert | BlockEvent | DropEvent | PipelineError | Heartbeat


def now_ns() -> int:
    return time.time_ns()
