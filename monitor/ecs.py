"""ECS rendering: the single place where typed records become documents.

`render(record, host)` turns any `monitor.events` record into a nested ECS
dict and `encode(record, host)` into its JSON line. A connection event (most
of what the agent writes) is encoded from pieces: what changes per event
(its id, times, ports and byte counts) filled into templates encoded once
(the document's by action and outcome; the flow's by address pair and
direction; a fork child's process by what it shares with its siblings), and
what is the same for many events (the host and agent identity, once per
host; the process and user, once per process; the listener and session,
once per connection) encoded once and reused.
`parse_connection(doc)` turns an ECS document (ours, or another
tool's with the minimal fields) back into a `ConnectionEvent`, so replay and
offline analysis see exactly what the live agent saw.
"""

from __future__ import annotations

import binascii
import datetime as dt
import fcntl
import functools
import hashlib
import math
import platform
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import __version__
from .addresses import normalize_ip, packed
from .events import (
    Action,
    Alert,
    BlockEvent,
    Container,
    DropEvent,
    ConnectionEvent,
    Direction,
    Heartbeat,
    INGRESS,
    Listener,
    Outcome,
    PipelineError,
    ProcessEvent,
    ProcessInfo,
    Record,
    VALUES,
    unrecorded_id,
)
from .rules import RULES

ECS_VERSION = "8.11.0"
DATASET_CONNECTION = "socat.connection"
DATASET_PROCESS = "socat.process"
DATASET_ALERT = "socat.alert"
DATASET_ENFORCE = "socat.enforce"
DATASET_AGENT = "socat.agent"


SEVERITY_SCORES = {"low": 21, "medium": 47, "high": 73, "critical": 99}
_AGENT_NAMESPACE = uuid.UUID("0f1d1c52-5b8e-4a43-9d3c-6f2b9c3c7a11")


@dataclass(frozen=True, slots=True)
class HostOs:
    """`host.os.*`: the running kernel and the distribution of /etc/os-release."""

    name: str = "Linux"
    version: str = ""
    family: str = ""
    kernel: str = ""
    full: str = ""

    @classmethod
    def detect(cls) -> "HostOs":
        release = _os_release()
        return cls(name=release.get("NAME", "Linux"), version=release.get("VERSION_ID", ""),
                   family=release.get("ID", ""), kernel=platform.release(),
                   full=release.get("PRETTY_NAME", ""))

    def ecs(self) -> dict[str, Any]:
        out = {"type": "linux", "platform": self.family or "linux", "name": self.name}
        out.update((k, v) for k, v in (("version", self.version), ("family", self.family),
                                       ("kernel", self.kernel), ("full", self.full)) if v)
        return out


def _os_release() -> dict[str, str]:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


def _host_addresses() -> tuple[str, ...]:
    """The host's own addresses (not loopback, not link-local v6), from /proc and the interfaces."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), 0x8915, request)   # SIOCGIFADDR
            except OSError:
                continue
            found.append(socket.inet_ntoa(answer[20:24]))
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                raw = bytes.fromhex(line.split()[0])
                found.append(socket.inet_ntop(socket.AF_INET6, raw))
    except OSError:
        pass
    return tuple(sorted({ip for ip in found if not ip.startswith(("127.", "fe80:")) and ip != "::1"}))


@dataclass(frozen=True, slots=True)
class HostInfo:
    """The host and agent identity stamped on every document."""

    name: str
    id: str
    ip: tuple[str, ...] = ()
    os: HostOs = field(default_factory=HostOs)

    @classmethod
    def detect(cls) -> "HostInfo":
        try:
            with open("/etc/machine-id", encoding="ascii") as fh:
                host_id = fh.read().strip()
        except OSError:
            host_id = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:32]
        return cls(name=socket.gethostname(), id=host_id, ip=_host_addresses(), os=HostOs.detect())

    @property
    def agent_id(self) -> str:
        """`agent.id`: stable for this host, different on every other one."""
        return str(uuid.uuid5(_AGENT_NAMESPACE, self.id))

    def ecs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "hostname": self.name, "id": self.id, "os": self.os.ecs()}
        if self.ip:
            out["ip"] = list(self.ip)
        return out


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def iso_timestamp(ns: int) -> str:
    seconds, rem = divmod(ns, 1_000_000_000)
    return _iso_second(seconds) + f".{rem // 1000:06d}Z"


def parse_timestamp(text: str) -> int:
    """ISO 8601 (with Z or offset) to wall-clock nanoseconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    offset = ""
    for sign in ("+", "-"):
        if sign in frac:
            frac, _, rest = frac.partition(sign)
            offset = sign + rest
    if not frac and len(head) > 19 and head[19] in "+-":
        head, offset = head[:19], head[19:]
    stamp = dt.datetime.fromisoformat(head + (offset or "+00:00"))
    digits = (frac + "000000000")[:9] if frac else "0"
    ns = int(stamp.timestamp()) * 1_000_000_000 + int(digits)
    if not -(1 << 63) <= ns < (1 << 63):
        raise ValueError(f"{text!r} is outside the nanosecond range (years 1677..2262)")
    return ns


_PORTS = struct.Struct("!HH")


def _community_prefix(first: bytes, second: bytes, proto: int = 6, seed: int = 0) -> bytes:
    """What the Community ID hashes before the ports: seed, the two packed addresses (the smaller
    endpoint's first), protocol and a zero byte of padding."""
    return struct.pack("!H", seed) + first + second + struct.pack("!BB", proto, 0)


def _community_digest(prefix: bytes, first_port: int, second_port: int) -> bytes:
    """The base64 of the hash of a prefix and the ports (in its order), as `community_id` ends."""
    return binascii.b2a_base64(hashlib.sha1(prefix + _PORTS.pack(first_port, second_port)).digest(), newline=False)


def community_id(src_ip: str, src_port: int, dst_ip: str, dst_port: int, proto: int = 6, seed: int = 0) -> str:
    """Community ID v1 flow hash, so flows join with Zeek, Suricata and the Beats.

    SHA-1 over seed, source address, destination address, protocol, a zero
    byte of padding, source port, destination port (network byte order), with
    the smaller (address, port) endpoint first, so both directions agree.
    """
    src = packed(src_ip)
    dst = packed(dst_ip)
    if (src, src_port) > (dst, dst_port):
        src, dst, src_port, dst_port = dst, src, dst_port, src_port
    return "1:" + _community_digest(_community_prefix(src, dst, proto, seed), src_port, dst_port).decode()


def set_severity(doc: dict[str, Any], word: str) -> None:
    """Severity the way Elastic Security reads it: `event.severity` and `event.risk_score` as
    21/47/73/99 for low/medium/high/critical, the word itself in `socat.severity`."""
    try:
        score = SEVERITY_SCORES[word]
    except KeyError:
        raise ValueError(f"unknown severity {word!r}: expected {', '.join(SEVERITY_SCORES)}") from None
    doc["event"].update(severity=score, risk_score=float(score))
    doc.setdefault("socat", {})["severity"] = word


def _head(record_id: str, timestamp_ns: int, kind: str, dataset: str) -> dict[str, Any]:
    """`@timestamp` and `event`: the part of every document that changes with the record."""
    return {
        "@timestamp": iso_timestamp(timestamp_ns),
        "event": {"id": record_id, "kind": kind, "dataset": dataset, "module": "socat",
                  "created": iso_timestamp(time.time_ns())},
    }


def _identity(host: HostInfo) -> dict[str, Any]:
    """`ecs`, `host`, `agent` and `observer`: the same in every document of one host."""
    return {
        "ecs": {"version": ECS_VERSION},
        "host": host.ecs(),
        "agent": {"id": host.agent_id, "name": "socat-monitor", "type": "socat-monitor", "version": __version__},
        "observer": {"hostname": host.name, "type": "monitor", "vendor": "socat-monitor"},
    }


def _base(record_id: str, timestamp_ns: int, host: HostInfo, kind: str, dataset: str) -> dict[str, Any]:
    doc = _head(record_id, timestamp_ns, kind, dataset)
    doc.update(_identity(host))
    return doc


def _process(proc: ProcessInfo, host: HostInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"pid": proc.pid, "name": proc.comm}
    if proc.tid is not None:
        out["thread"] = {"id": proc.tid}
    if proc.ppid is not None:
        out["parent"] = {"pid": proc.ppid}
    if proc.executable:
        out["executable"] = proc.executable
    if proc.args:
        out["args"] = list(proc.args)
        out["command_line"] = proc.command_line
    if proc.start_ns is not None:
        out["start"] = iso_timestamp(proc.start_ns)
        out["entity_id"] = f"{host.id}-{proc.pid}-{proc.start_ns}"
    if proc.gid is not None:
        out["group"] = {"id": str(proc.gid)}
    return out


def _user(proc: ProcessInfo) -> dict[str, Any] | None:
    if proc.uid is None:
        return None
    user: dict[str, Any] = {"id": str(proc.uid)}
    if proc.user_name:
        user["name"] = proc.user_name
    return user


def _process_fields(proc: ProcessInfo, host: HostInfo) -> dict[str, Any]:
    """`process` and, when the uid is known, `user`."""
    out = {"process": _process(proc, host)}
    user = _user(proc)
    if user:
        out["user"] = user
    if proc.container is not None:
        out["container"] = {key: value for key, value in (("id", proc.container.id), ("name", proc.container.name),
                                                          ("runtime", proc.container.runtime)) if value}
    return out


def _process_identity(proc: ProcessInfo | None) -> dict[str, Any]:
    """The relay's identity under `socat`: its network namespace (inode, `ip netns` name) and cgroup."""
    out: dict[str, Any] = {}
    if proc is None:
        return out
    if proc.netns is not None:
        out["netns"] = {"inode": proc.netns, "name": proc.netns_name} if proc.netns_name else {"inode": proc.netns}
    if proc.cgroup:
        out["cgroup"] = proc.cgroup
    return out


def _add_process(doc: dict[str, Any], proc: ProcessInfo | None, host: HostInfo) -> None:
    if proc is not None:
        doc.update(_process_fields(proc, host))
        identity = _process_identity(proc)
        if identity:
            doc.setdefault("socat", {}).update(identity)


def _listener(listener: Listener) -> dict[str, Any]:
    out: dict[str, Any] = {"ip": listener.ip, "port": listener.port}
    if listener.name:
        out["name"] = listener.name
    return out


_CONNECTION_TYPES = {
    Action.ACCEPTED: ["connection", "start", "allowed"],
    Action.ATTEMPTED: ["connection", "start"],
    Action.CLOSED: ["connection", "end"],
    Action.DENIED: ["connection", "end", "denied"],
}


def _connection_event(ev: ConnectionEvent) -> dict[str, Any]:
    """`event` of a connection document."""
    return _event_fields(ev.id, iso_timestamp(time.time_ns()), ev.action, ev.outcome, ev.ktime_ns, ev.duration_ns)


def _event_fields(record_id: Any, created: Any, action: Action, outcome: Outcome, sequence: Any,
                  duration: Any) -> dict[str, Any]:
    """`_connection_event` of its values (each a value, or a marker of a template: `_template`)."""
    event = {"id": record_id, "kind": "event", "dataset": DATASET_CONNECTION, "module": "socat",
             "created": created, "category": ["network"],
             "type": list(_CONNECTION_TYPES[action]), "action": VALUES[action], "outcome": VALUES[outcome]}
    if sequence is not None:
        event["sequence"] = sequence
    if duration is not None:
        event["duration"] = duration
    return event


def _flow(ev: ConnectionEvent) -> dict[str, Any]:
    """`source`, `destination`, `network` and `related`: the flow's 4-tuple and direction (and its bytes)."""
    ingress = ev.direction is INGRESS
    counts = None if ev.bytes_in is None else (ev.bytes_in, ev.bytes_out) if ingress else (ev.bytes_out, ev.bytes_in)
    return _flow_fields(ev.source_ip, ev.source_port, ev.destination_ip, ev.destination_port, ev.direction, counts,
                        community_id(ev.source_ip, ev.source_port, ev.destination_ip, ev.destination_port))


def _flow_fields(src: str, src_port: Any, dst: str, dst_port: Any, direction: Direction,
                 counts: tuple[Any, Any] | None, community: Any) -> dict[str, Any]:
    """`_flow` of its values (each a value, or a marker of a template: `_template`); `counts`: the bytes of
    source and destination."""
    source = {"ip": src, "port": src_port}
    destination = {"ip": dst, "port": dst_port}
    if counts is not None:
        source["bytes"], destination["bytes"] = counts
    return {"source": source, "destination": destination,
            "network": {"transport": "tcp", "type": "ipv6" if ":" in src else "ipv4", "direction": VALUES[direction],
                        "community_id": community},
            "related": {"ip": [src] if src == dst else [src, dst] if src < dst else [dst, src]}}


def _session(ev: ConnectionEvent) -> dict[str, Any]:
    """The members of `socat` a connection event has of its own (not of its process or listener)."""
    out: dict[str, Any] = {}
    if ev.session_id:
        out["session"] = {"id": ev.session_id}
    if ev.refused:
        out["refused"] = True
    if ev.source_partial:
        out["source_partial"] = True
    if ev.error:
        out["error"] = ev.error
    return out


def _connection_fields(ev: ConnectionEvent) -> dict[str, Any]:
    """Everything of a connection document but the host identity and the process."""
    doc = {"@timestamp": iso_timestamp(ev.timestamp_ns), "event": _connection_event(ev)}
    doc.update(_flow(ev))
    socat: dict[str, Any] = _process_identity(ev.process)
    if ev.listener is not None:
        socat["listener"] = _listener(ev.listener)
    socat.update(_session(ev))
    if socat:
        doc["socat"] = socat
    return doc


def _render_connection(ev: ConnectionEvent, host: HostInfo) -> dict[str, Any]:
    doc = _connection_fields(ev)
    doc.update(_identity(host))
    if ev.process is not None:
        doc.update(_process_fields(ev.process, host))   # its identity under `socat` is in the fields already
    return doc


def _members(fields: dict[str, Any]) -> bytes:
    """`,"key":value,...`: the members of an object, encoded, to splice into another."""
    return b"," + orjson.dumps(fields)[1:-1] if fields else b""


# Marker values in the fields of a template: `_template` puts a field of a bytes %-format in the place of
# each: an integer, an encoded JSON value, an `iso_timestamp` (its second, encoded, and its microseconds)
_NUMBER, _ENCODED, _STAMP = "\0%d\0", "\0%b\0", "\0%b.%06dZ\0"
_FIELDS = {orjson.dumps(marker).replace(b"%", b"%%"): spec
           for marker, spec in ((_NUMBER, b"%d"), (_ENCODED, b"%b"), (_STAMP, b'"%b.%06dZ"'))}


def _template(fields: dict[str, Any]) -> bytes:
    """`_members(fields)` as a bytes %-format, a field in the place of each marker, in document order.
    Only for fields whose other values hold no NUL (addresses, process facts from the kernel and /proc):
    a marker is a string between two NULs."""
    encoded = _members(fields).replace(b"%", b"%%")
    for marker, spec in _FIELDS.items():
        encoded = encoded.replace(marker, spec)
    return encoded


@dataclass(frozen=True, slots=True)
class _FlowShape:
    """The flow members (`_flow`) of one address pair and direction as templates, to fill with the
    ports (and byte counts) and the community id; and what that id hashes before the ports."""

    plain: bytes    # source port, destination port, community id
    counted: bytes  # source port and bytes, destination port and bytes, community id
    prefix: bytes   # `_community_prefix` of the pair, the smaller address first
    order: int      # whose port comes first in the hash: -1 the source's, 1 the destination's, 0 the smaller
    ids: dict[int, bytes] = field(default_factory=dict)   # encoded community ids by ports (a close reuses its open's)

    @classmethod
    def of(cls, src: str, dst: str, direction: Direction) -> "_FlowShape":
        """The shape of the flows between these addresses in this direction (any ports)."""
        first, second = packed(src), packed(dst)
        order = (first > second) - (first < second)
        return cls(_template(_flow_fields(src, _NUMBER, dst, _NUMBER, direction, None, _ENCODED)),
                   _template(_flow_fields(src, _NUMBER, dst, _NUMBER, direction, (_NUMBER, _NUMBER), _ENCODED)),
                   _community_prefix(second, first) if order > 0 else _community_prefix(first, second), order)

    def new_community(self, src_port: int, dst_port: int) -> bytes:
        """The encoded `community_id` of the flow between these ports, kept in `ids` (`line` looks it up there)."""
        order = self.order
        if order > 0 or (not order and src_port > dst_port):
            found = b'"1:%b"' % _community_digest(self.prefix, dst_port, src_port)
        else:
            found = b'"1:%b"' % _community_digest(self.prefix, src_port, dst_port)
        self.ids[src_port << 16 | dst_port] = found
        return found


@functools.lru_cache(maxsize=4096)
def _iso_second_bytes(seconds: int) -> bytes:
    return _iso_second(seconds).encode()


def _document_template(action: Action, outcome: Outcome, sequence: bool, duration: bool) -> bytes:
    """A connection event's line up to the end of its `event`, as a template: its time, id and time of
    encoding (and sequence and duration when it has them); its flow, `socat`, host and process follow."""
    head = {"@timestamp": _STAMP, "event": _event_fields(_ENCODED, _STAMP, action, outcome,
                                                         _NUMBER if sequence else None, _NUMBER if duration else None)}
    return b"{" + _template(head)[1:]


def _kind(proc: ProcessInfo) -> tuple[Any, ...]:
    """What the encoded process members of a process without a start time hold but its pid, thread id and
    parent pid."""
    return (proc.comm, proc.uid, proc.gid, proc.user_name, proc.executable, proc.args, proc.netns, proc.netns_name,
            proc.cgroup, proc.container)


class _Pieces:
    """A connection event's JSON line, from encoded members (`,"key":value,...`) and templates (bytes
    %-formats: `_template`) reused across documents, each the encoding of the dict `render` builds for it:
    the host identity of the last host; the process, user and socat identity of recently seen processes
    (by object: the enricher hands out one `ProcessInfo` per process state, so an object seen before
    encodes the same), those of a fork child filled into the template of its kind (`_kind`: a relay's
    children differ only in their ids); the flow filled into the template of its address pair and
    direction (ports, byte counts, and the community id, hashed once per flow from the pair's prefix);
    the listener and the session; the document itself a template by action, outcome and the optional
    members it has, filled with the event's id and times and those pieces. `line` looks each piece up
    itself (a method call per piece cost as much as the lookup) and calls a `new_*` method to build one
    it lacks."""

    MAX = 4096   # entries per cache; a full one is emptied

    def __init__(self) -> None:
        self.identity: tuple[HostInfo | None, bytes] = (None, b"")   # one tuple: swapped whole
        self.processes: dict[int, tuple[ProcessInfo | None, HostInfo, bytes, bytes]] = {}
        self.flows: dict[tuple[str, str, bool], _FlowShape] = {}   # by addresses and ingress
        self.communities = 0   # community ids kept in the shapes of `flows` (at most: a dropped shape's went with it)
        self.kinds: dict[tuple[Any, ...], tuple[HostInfo, bytes, bytes]] = {}   # by `_kind`
        self.documents: dict[tuple[Action, Outcome, bool, bool], bytes] = {}   # by `_document_template`'s key
        self.listeners: dict[tuple[str, int, str | None], bytes] = {}
        self.sessions: dict[str, bytes] = {}

    def line(self, ev: ConnectionEvent, host: HostInfo) -> bytes:
        """`encode(ev, host)` of a connection event."""
        proc = ev.process
        known = self.processes.get(id(proc))
        if known is None or known[0] is not proc or known[1] is not host:
            known = self.new_process(proc, host)
        ingress = ev.direction is INGRESS
        shape = self.flows.get((ev.source_ip, ev.destination_ip, ingress)) or self.new_flow(ev)
        sport, dport = ev.source_port, ev.destination_port
        community = shape.ids.get(sport << 16 | dport) or self.new_community(shape, sport, dport)
        if ev.bytes_in is None:
            members = shape.plain % (sport, dport, community)
        elif ev.bytes_out is None:   # one count (not of the capture): its own
            members = _members(_flow(ev))
        elif ingress:
            members = shape.counted % (sport, ev.bytes_in, dport, ev.bytes_out, community)
        else:
            members = shape.counted % (sport, ev.bytes_out, dport, ev.bytes_in, community)
        listener = ev.listener
        if listener is None:
            at = b""
        else:
            at = self.listeners.get((listener.ip, listener.port, listener.name)) or self.new_listener(listener)
        session = ev.session_id
        if ev.refused or ev.source_partial or ev.error or not session:
            own = _members(_session(ev))
        else:
            own = self.sessions.get(session) or self.new_session(ev)
        socat = known[3] + at + own
        seen_host, identity = self.identity
        if seen_host is not host:
            identity = self.new_host(host)
        sequence, duration = ev.ktime_ns, ev.duration_ns
        template = self.documents.get((ev.action, ev.outcome, sequence is None, duration is None)) \
            or self.new_document(ev)
        second, rem = divmod(ev.timestamp_ns, 1_000_000_000)
        now, now_rem = divmod(time.time_ns(), 1_000_000_000)
        values = (_iso_second_bytes(second), rem // 1000, orjson.dumps(ev.id), _iso_second_bytes(now), now_rem // 1000)
        if sequence is not None:
            values += (sequence,)
        if duration is not None:
            values += (duration,)
        return b"".join((template % values, members, b',"socat":{%b}' % socat[1:] if socat else b"", identity,
                         known[2], b"}\n"))

    def new_document(self, ev: ConnectionEvent) -> bytes:
        """The document template (`_document_template`) of the event's action and outcome and of the
        members it has, kept for the next such event."""
        sequence, duration = ev.ktime_ns is None, ev.duration_ns is None
        found = self.documents[(ev.action, ev.outcome, sequence, duration)] = _document_template(
            ev.action, ev.outcome, not sequence, not duration)
        return found

    def new_host(self, host: HostInfo) -> bytes:
        encoded = _members(_identity(host))
        self.identity = (host, encoded)
        return encoded

    def new_process(self, proc: ProcessInfo | None, host: HostInfo) -> tuple[ProcessInfo | None, HostInfo, bytes, bytes]:
        """The members of the process and its user, and those of its identity under `socat`."""
        if len(self.processes) >= self.MAX:
            self.processes.clear()
        if proc is None:
            known = (proc, host, b"", b"")
        elif proc.start_ns is None and proc.tid is not None and proc.ppid is not None:   # a fork child, most often
            kind = self.kinds.get(_kind(proc))
            if kind is None or kind[0] is not host:
                kind = self.new_kind(proc, host)
            known = (proc, host, kind[1] % (proc.pid, proc.tid, proc.ppid), kind[2])
        else:
            known = (proc, host, _members(_process_fields(proc, host)), _members(_process_identity(proc)))
        self.processes[id(proc)] = known   # holds proc: its id is not reused meanwhile
        return known

    def new_kind(self, proc: ProcessInfo, host: HostInfo) -> tuple[HostInfo, bytes, bytes]:
        """The process members of a process without a start time, as a template to fill with its pid,
        thread id and parent pid (the only fields in which a relay's fork children differ), and its
        identity under `socat`."""
        if len(self.kinds) >= self.MAX:
            self.kinds.clear()
        fields = _process_fields(proc, host)
        process = fields["process"]
        process["pid"] = process["thread"]["id"] = process["parent"]["pid"] = _NUMBER
        kind = self.kinds[_kind(proc)] = (host, _template(fields), _members(_process_identity(proc)))
        return kind

    def new_flow(self, ev: ConnectionEvent) -> _FlowShape:
        if len(self.flows) >= self.MAX:
            self.flows.clear()
        shape = _FlowShape.of(ev.source_ip, ev.destination_ip, ev.direction)
        self.flows[(ev.source_ip, ev.destination_ip, ev.direction is INGRESS)] = shape
        return shape

    def new_community(self, shape: _FlowShape, src_port: int, dst_port: int) -> bytes:
        """`shape.new_community`, with at most `MAX` community ids kept in all shapes (beyond, all are emptied)."""
        self.communities += 1
        if self.communities > self.MAX:
            self.communities = 1
            for known in self.flows.values():
                known.ids.clear()
        return shape.new_community(src_port, dst_port)

    def new_listener(self, listener: Listener) -> bytes:
        if len(self.listeners) >= self.MAX:
            self.listeners.clear()
        found = self.listeners[(listener.ip, listener.port, listener.name)] = _members({"listener": _listener(listener)})
        return found

    def new_session(self, ev: ConnectionEvent) -> bytes:
        """The event's own members of `socat` when they are only its session (a connection's events share it)."""
        if len(self.sessions) >= self.MAX:
            self.sessions.clear()
        found = self.sessions[ev.session_id] = _members(_session(ev))
        return found


_PIECES = _Pieces()


def encode(record: Record, host: HostInfo) -> bytes:
    """The ECS document of any record as one JSON line (with the newline); the same document as
    `render`, built from reused pieces for connection events."""
    if record.__class__ is ConnectionEvent:
        return _PIECES.line(record, host)
    return orjson.dumps(render(record, host), option=orjson.OPT_APPEND_NEWLINE)


def _render_process(ev: ProcessEvent, host: HostInfo) -> dict[str, Any]:
    doc = _base(ev.id, ev.timestamp_ns, host, "event", DATASET_PROCESS)
    started = ev.action is Action.PROCESS_STARTED
    doc["event"].update(category=["process"], type=["start" if started else "end"], action=ev.action.value)
    if ev.ktime_ns is not None:
        doc["event"]["sequence"] = ev.ktime_ns
    _add_process(doc, ev.process, host)
    if ev.exit_code is not None:
        doc["process"]["exit_code"] = ev.exit_code
        doc["event"]["outcome"] = Outcome.SUCCESS.value if ev.exit_code == 0 else Outcome.FAILURE.value
    if ev.signal is not None:
        doc.setdefault("socat", {})["signal"] = ev.signal
    return doc


def _render_alert(alert: Alert, host: HostInfo) -> dict[str, Any]:
    doc = _base(alert.id, alert.timestamp_ns, host, "alert", DATASET_ALERT)
    doc["event"].update(
        category=["network", "intrusion_detection"],
        type=["info", "denied"] if alert.outcome is Outcome.FAILURE else ["info"],
        action=alert.rule_id,
        outcome=alert.outcome.value,
        reason=alert.description,
    )
    doc["rule"] = {
        "id": alert.rule_id,
        "name": alert.rule_name,
        "description": alert.description,
        "ruleset": alert.ruleset,
        "category": alert.ruleset,
    }
    doc["message"] = alert.description
    if alert.source_ip:
        doc["source"] = {"ip": alert.source_ip}
        doc["related"] = {"ip": [alert.source_ip]}
    if alert.destination_ip:
        doc["destination"] = {"ip": alert.destination_ip}
        if alert.destination_port is not None:
            doc["destination"]["port"] = alert.destination_port
        doc.setdefault("related", {"ip": []})["ip"].append(alert.destination_ip)
    _add_process(doc, alert.process, host)
    set_severity(doc, alert.severity.name.lower())
    socat: dict[str, Any] = doc["socat"]
    if alert.listener is not None:
        socat["listener"] = _listener(alert.listener)
    if alert.trigger_event_ids:
        socat["trigger_event_ids"] = list(alert.trigger_event_ids)
    detection = {
        k: v
        for k, v in (
            ("observed", alert.observed),
            ("baseline", alert.baseline),
            ("threshold", alert.threshold),
            ("score", alert.score),
            ("window_s", alert.window_s),
        )
        if v is not None
    }
    if detection:
        socat["detection"] = detection
    if alert.top_sources:
        socat["top_sources"] = list(alert.top_sources)
    if alert.source_network:
        socat["source_network"] = alert.source_network
    if alert.token is not None:
        socat["audit"] = {"token": alert.token, "fix": alert.fix}
    if alert.suppressed:
        socat["suppressed"] = alert.suppressed
    if alert.block:
        socat["block"] = {"target": alert.block_target or alert.source_ip}
        if alert.block_ttl_s is not None:
            socat["block"]["ttl_s"] = alert.block_ttl_s
    elif alert.block_skipped:
        socat["block"] = {"skipped": alert.block_skipped}
    doc["socat"] = socat
    threat = _threat(alert.rule_id)
    if threat:
        doc["threat"] = threat
    return doc


def _threat(rule_id: str) -> dict[str, Any] | None:
    """`threat.*` from the catalogue's ATT&CK technique of the rule, if it has one."""
    entry = RULES.get(rule_id)
    if entry is None or entry.technique is None:
        return None
    t = entry.technique
    return {"framework": "MITRE ATT&CK", "tactic": {"id": [t.tactic_id], "name": [t.tactic]},
            "technique": {"id": [t.id], "name": [t.name]}}


_BLOCK_TYPES = {
    Action.BLOCKED: "creation",
    Action.BLOCK_REFUSED: "creation",      # outcome failure: the rule was not made
    Action.BLOCK_DRY_RUN: "info",          # would have been created
    Action.UNBLOCKED: "deletion",
}


def _render_block(ev: BlockEvent, host: HostInfo) -> dict[str, Any]:
    counters = ev.action is Action.BLOCK_COUNTERS
    doc = _base(ev.id, ev.timestamp_ns, host, "metric" if counters else "event", DATASET_ENFORCE)
    failed = ev.action is Action.BLOCK_REFUSED
    doc["event"].update(
        category=["configuration"],
        type=["info"] if counters else [_BLOCK_TYPES[ev.action]],
        action=ev.action.value,
        outcome=Outcome.FAILURE.value if failed else Outcome.SUCCESS.value,
    )
    if ev.reason:
        doc["event"]["reason"] = ev.reason
    address = ev.target.split("/")[0]
    doc["source"] = {"ip": address}
    doc["related"] = {"ip": [address]}
    block: dict[str, Any] = {"target": ev.target}
    if ev.ttl_s is not None:
        block["ttl_s"] = ev.ttl_s
    if ev.alert_id:
        block["alert_id"] = ev.alert_id
    if ev.dropped_packets is not None:
        block.update(dropped_packets=ev.dropped_packets, dropped_bytes=ev.dropped_bytes)
    doc["socat"] = {"block": block}
    if ev.rule_id:
        doc["rule"] = {"id": ev.rule_id}
        if ev.rule_id in RULES:
            doc["rule"].update(name=RULES[ev.rule_id].name, ruleset=RULES[ev.rule_id].ruleset)
    return doc


def _render_drop(ev: DropEvent, host: HostInfo) -> dict[str, Any]:
    counters = ev.action is Action.DROP_COUNTERS
    doc = _base(ev.id, ev.timestamp_ns, host, "metric" if counters else "event", DATASET_ENFORCE)
    doc["event"].update(category=["network"], type=["connection", "denied"], action=ev.action.value,
                        outcome=Outcome.FAILURE.value)
    doc["source"] = {"ip": ev.source_ip} if ev.source_port is None else {"ip": ev.source_ip, "port": ev.source_port}
    doc["destination"] = {"port": ev.listener.port}
    doc["related"] = {"ip": [ev.source_ip]}
    doc["network"] = {"transport": "tcp"}
    doc["socat"] = {"listener": {"ip": ev.listener.ip, "port": ev.listener.port, "name": ev.listener.name},
                    "drop": {"packets": ev.dropped_packets, "dry_run": ev.dry_run}}
    if ev.netns is not None:
        doc["socat"]["netns"] = {"name": ev.netns}
    return doc


def _render_pipeline_error(ev: PipelineError, host: HostInfo) -> dict[str, Any]:
    doc = _base(ev.id, ev.timestamp_ns, host, "pipeline_error", DATASET_AGENT)
    doc["event"].update(action="events_lost", reason=ev.message)
    doc["message"] = ev.message
    doc["error"] = {"message": ev.message, "type": ev.stage}
    doc["socat"] = {"pipeline": {"stage": ev.stage, "lost": ev.count}}
    return doc


def _render_heartbeat(ev: Heartbeat, host: HostInfo) -> dict[str, Any]:
    doc = _base(ev.id, ev.timestamp_ns, host, "metric", DATASET_AGENT)
    doc["event"].update(action="heartbeat")
    doc["socat"] = {"metrics": {name: value for name, value in ev.counters}}
    return doc


_RENDERERS = {
    ConnectionEvent: _render_connection,
    ProcessEvent: _render_process,
    Alert: _render_alert,
    BlockEvent: _render_block,
    DropEvent: _render_drop,
    PipelineError: _render_pipeline_error,
    Heartbeat: _render_heartbeat,
}


def render(record: Record, host: HostInfo) -> dict[str, Any]:
    """The ECS document of any record."""
    return _RENDERERS[type(record)](record, host)


def is_alert(doc: dict[str, Any]) -> bool:
    return doc.get("event", {}).get("kind") == "alert"


class DocumentError(ValueError):
    """An ECS document that cannot become a ConnectionEvent; says which field."""


def _field(doc: dict[str, Any], dotted: str) -> Any:
    """A field by dotted name, from nested objects or a flat dotted key."""
    if dotted in doc:
        return doc[dotted]
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _required(doc: dict[str, Any], dotted: str) -> Any:
    value = _field(doc, dotted)
    if value is None:
        raise DocumentError(f"missing field {dotted}")
    return value


def _whole(value: Any, dotted: str) -> int:
    """A whole number the way the DuckDB scan of `analyze` converts one (decimals rounded half
    to even, digit strings read), so both of its readers agree."""
    if isinstance(value, (bool, int)):
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return round(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise DocumentError(f"{dotted}: not a whole number: {value!r}")


def _flag(value: Any, dotted: str) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise DocumentError(f"{dotted}: not true or false: {value!r}")


def _port(doc: dict[str, Any], dotted: str) -> int:
    value = _required(doc, dotted)
    try:
        port = _whole(value, dotted)
    except DocumentError:
        raise DocumentError(f"{dotted}: not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise DocumentError(f"{dotted}: port out of range: {port}")
    return port


def _optional_whole(doc: dict[str, Any], dotted: str) -> int | None:
    value = _field(doc, dotted)
    return None if value is None else _whole(value, dotted)


def _ip(doc: dict[str, Any], dotted: str) -> str:
    value = _required(doc, dotted)
    try:
        return normalize_ip(str(value))
    except ValueError:
        raise DocumentError(f"{dotted}: not an IP address: {value!r}") from None


def _parse_process(doc: dict[str, Any]) -> ProcessInfo | None:
    pid = _field(doc, "process.pid")
    if pid is None:
        return None
    uid = _field(doc, "user.id")
    args = _field(doc, "process.args") or ()
    return ProcessInfo(
        pid=int(pid),
        comm=str(_field(doc, "process.name") or ""),
        ppid=_field(doc, "process.parent.pid"),
        tid=_field(doc, "process.thread.id"),
        uid=int(uid) if uid is not None else None,
        user_name=_field(doc, "user.name"),
        executable=_field(doc, "process.executable"),
        args=tuple(args),
        netns=_optional_whole(doc, "socat.netns.inode"),
        netns_name=_field(doc, "socat.netns.name"),
        cgroup=_field(doc, "socat.cgroup"),
        container=Container(str(container), _field(doc, "container.name"), _field(doc, "container.runtime"))
        if (container := _field(doc, "container.id")) else None,
    )


def parse_connection(doc: dict[str, Any]) -> ConnectionEvent:
    """A ConnectionEvent from an ECS document; raises DocumentError naming the field."""
    try:
        action = Action(_required(doc, "event.action"))
    except ValueError:
        raise DocumentError(f"event.action: not a connection action: {_field(doc, 'event.action')!r}") from None
    if action not in _CONNECTION_TYPES:
        raise DocumentError(f"event.action: not a connection action: {action.value!r}")
    try:
        timestamp = parse_timestamp(str(_required(doc, "@timestamp")))
    except ValueError:
        raise DocumentError(f"@timestamp: not an ISO 8601 time: {_field(doc, '@timestamp')!r}") from None
    listener_port = _field(doc, "socat.listener.port")
    listener = None
    if listener_port is not None:
        listener = Listener(
            ip=str(_field(doc, "socat.listener.ip") or _ip(doc, "destination.ip")),
            port=_whole(listener_port, "socat.listener.port"),
            name=_field(doc, "socat.listener.name"),
        )
    direction = _field(doc, "network.direction")
    outcome = _field(doc, "event.outcome")
    return ConnectionEvent(
        id=str(_field(doc, "event.id") or unrecorded_id(timestamp)),
        action=action,
        timestamp_ns=timestamp,
        source_ip=_ip(doc, "source.ip"),
        source_port=_port(doc, "source.port"),
        destination_ip=_ip(doc, "destination.ip"),
        destination_port=_port(doc, "destination.port"),
        direction=Direction(direction) if direction in ("ingress", "egress") else (
            Direction.EGRESS if action is Action.ATTEMPTED else Direction.INGRESS
        ),
        outcome=Outcome(outcome) if outcome in ("success", "failure", "unknown") else Outcome.SUCCESS,
        process=_parse_process(doc),
        listener=listener,
        session_id=_field(doc, "socat.session.id"),
        ktime_ns=_field(doc, "event.sequence"),
        duration_ns=_optional_whole(doc, "event.duration"),
        refused=_flag(_field(doc, "socat.refused"), "socat.refused") or action is Action.DENIED,
        source_partial=_flag(_field(doc, "socat.source_partial"), "socat.source_partial"),
        error=_field(doc, "socat.error"),
    )
