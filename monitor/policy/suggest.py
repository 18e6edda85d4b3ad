"""A starting policy learned from socat command lines and recorded events.

`suggest_policy(commands, events)` is pure. Listeners come from the command
lines (port, `bind=`, `range=`, the backend of the other address) and from
the events (every listener port a client reached). Observed sources are
aggregated: two or more hosts in one /24 (IPv6: /64) become that prefix,
a lone host stays a host. Backends are the addresses the listener's children
connected to. Rates and concurrency are measured exactly as `PolicyEngine`
measures them (sliding window per source, accepts minus closes) and written
with `headroom` (x2 by default, at least `min_rate` per minute), so the
suggestion, applied to the traffic it learned from, raises no alerts.
A relay of another network namespace than `home` (the one suggest runs in)
or in a container gets an entry of its own naming it (`netns`: its `ip
netns` name, else (or when the policy could not hold that name) net:[INODE];
`container`: its name, else its id's first 12 digits, else none), so two
relays on one port in two namespaces get one each.
Connections socat itself refused (`range=`, tcpwrap) are not learned as
allowed unless `include_refused` is set; the output says how many there were.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..events import Action, ConnectionEvent, Direction, ProcessInfo
from .audit import parse_range
from ..socat.grammar import SocatCommand
from .connections import SourceCounter
from .engine import NS, EngineConfig, listening_socket
from .model import CONTAINER_PATTERN, NETNS_PATTERN
from .selector import MIN_ID_PREFIX

RATE_PERIOD_S = 60.0
Key = tuple[int, str | None, str | None]   # port, netns, container of a learned listener


@dataclass
class _Learned:
    """Everything learned about one listener port."""

    port: int
    netns: str | None = None
    container: str | None = None
    name: str | None = None
    address: str | None = None
    sources: set[str] = field(default_factory=set)
    ranges: list = field(default_factory=list)
    backends: set[str] = field(default_factory=set)
    host_backends: set[str] = field(default_factory=set)
    max_rate: int = 0
    max_concurrent: int = 0
    refused: int = 0
    events: int = 0


def _backend_text(host: str, port: int | None) -> str:
    where = f"[{host}]" if ":" in host else host
    return f"{where}:{port}" if port is not None else host


def _identity(process: ProcessInfo | None, home: int | None) -> tuple[str | None, str | None]:
    """(netns, container) selector values of a relay: None where it is the home namespace or no container."""
    if process is None:
        return None, None
    netns = None
    if process.netns is not None and process.netns != home:
        netns = _valid(NETNS_PATTERN, process.netns_name) or f"net:[{process.netns}]"
    found = process.container
    container = None
    if found is not None:
        container = _valid(CONTAINER_PATTERN, found.name) or _valid(CONTAINER_PATTERN, found.id[:MIN_ID_PREFIX])
    return netns, container


def _valid(pattern: str, value: str | None) -> str | None:
    """`value` when the policy schema's `pattern` accepts it (a name the policy could not hold is not used)."""
    return value if value is not None and re.match(pattern, value) else None


def _learned(learned: dict[Key, _Learned], port: int, process: ProcessInfo | None, home: int | None) -> _Learned:
    key = (port, *_identity(process, home))
    return learned.setdefault(key, _Learned(*key))


def _from_command(cmd: SocatCommand, learned: dict[Key, _Learned]) -> None:
    for address in cmd.listeners():
        port = address.listen_port
        if port is None:
            continue
        entry = _learned(learned, port, None, None)
        entry.name = entry.name or f"{(address.kind or 'listener').split('-')[0]}-{port}"
        bind = address.bind_address
        if bind and entry.address is None:
            entry.address = bind
        declared = address.value("range")
        if declared:
            try:
                entry.ranges.append(parse_range(declared))
            except ValueError:
                pass
        for other in cmd.addresses:
            target = other.connect_target if other.position != address.position else None
            if target is None:
                continue
            host, backend_port = target
            host = "127.0.0.1" if host.lower() == "localhost" else host
            try:
                ipaddress.ip_address(host)
                entry.backends.add(_backend_text(host, backend_port))
            except ValueError:
                entry.host_backends.add(_backend_text(host, backend_port))


class _Meter:
    """Per-source rate and concurrency, counted the way PolicyEngine counts them (`SourceCounter`)."""

    def __init__(self) -> None:
        self.counter = SourceCounter(int(EngineConfig.open_idle_timeout_s * NS), EngineConfig.max_open)

    def start(self, ev: ConnectionEvent, entry: _Learned) -> None:
        self.counter.expire(ev.timestamp_ns)
        counted = self.counter.start(ev, (str((entry.port, entry.netns, entry.container)), ev.source_ip), None,
                                     int(RATE_PERIOD_S * NS))
        if counted is not None and counted.rate is not None:
            entry.max_rate = max(entry.max_rate, len(counted.rate.starts))
        if counted is not None and counted.open is not None:
            entry.max_concurrent = max(entry.max_concurrent, counted.open)

    def close(self, ev: ConnectionEvent) -> None:
        self.counter.expire(ev.timestamp_ns)
        self.counter.close(ev)


def _from_events(events: Iterable[ConnectionEvent], learned: dict[Key, _Learned], include_refused: bool,
                 home: int | None) -> int:
    meter = _Meter()
    count = 0
    for ev in events:
        count += 1
        if ev.direction is Direction.EGRESS:
            if ev.action is Action.ATTEMPTED and ev.listener is not None:
                entry = _learned(learned, ev.listener.port, ev.process, home)
                entry.backends.add(_backend_text(ev.destination_ip, ev.destination_port))
            continue
        port, _ = listening_socket(ev)
        if ev.action is Action.CLOSED:
            meter.close(ev)
            continue
        if ev.action not in (Action.ACCEPTED, Action.DENIED):
            continue
        entry = _learned(learned, port, ev.process, home)
        entry.events += 1
        refused = ev.refused or ev.action is Action.DENIED
        if refused and not include_refused:
            entry.refused += 1
        else:
            entry.sources.add(ev.source_ip)
        meter.start(ev, entry)
    return count


def aggregate_sources(sources: Iterable[str], v4_prefix: int = 24, v6_prefix: int = 64,
                      extra: Iterable = ()) -> list[str]:
    """Hosts to prefixes: 2+ hosts sharing a /v4_prefix (/v6_prefix) become it; lone hosts stay hosts.

    `extra` networks (from range=) are merged in; the result is collapsed and sorted."""
    groups: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, set] = defaultdict(set)
    for text in sources:
        address = ipaddress.ip_address(text)
        prefix = v4_prefix if address.version == 4 else v6_prefix
        groups[ipaddress.ip_network(f"{address}/{prefix}", strict=False)].add(address)
    networks = list(extra)
    for net, hosts in groups.items():
        if len(hosts) > 1:
            networks.append(net)
        else:
            networks.extend(ipaddress.ip_network(h) for h in hosts)
    out = []
    for version in (4, 6):
        for net in ipaddress.collapse_addresses(n for n in networks if n.version == version):
            out.append(str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net))
    return out


def _scaled(observed: int, headroom: float, floor: int) -> int:
    return max(math.ceil(observed * headroom), observed, floor)


def _render(entry: _Learned, headroom: float, min_rate: int, v4_prefix: int, v6_prefix: int) -> list[str]:
    lines = [f"  - name: {entry.name or f'listener-{entry.port}'}", f"    port: {entry.port}"]
    for key, value in (("netns", entry.netns), ("container", entry.container)):
        if value:
            lines.append(f"    {key}: {json.dumps(value)}")
    if entry.address:
        lines.append(f"    address: {json.dumps(entry.address)}")
    networks = aggregate_sources(entry.sources, v4_prefix, v6_prefix, extra=entry.ranges)
    if networks:
        note = f"  # observed {len(entry.sources)} source(s)" if entry.sources else "  # from range="
        lines.append(f"    allow_sources: [{', '.join(json.dumps(s) for s in networks)}]{note}")
    elif entry.events:
        lines.append("    # allow_sources: no accepted source seen; add the clients that may connect")
    if entry.refused:
        lines.append(f"    # {entry.refused} connection(s) refused by socat were not learned as allowed")
    if entry.backends:
        lines.append(f"    allow_backends: [{', '.join(json.dumps(b) for b in sorted(entry.backends))}]")
    for host in sorted(entry.host_backends):
        lines.append(f"    # backend {host} is a host name: add its address to allow_backends")
    if entry.max_rate:
        rate = _scaled(entry.max_rate, headroom, min_rate)
        lines.append(f"    max_rate_per_source: {rate}/minute  # observed at most {entry.max_rate} per minute")
    if entry.max_concurrent:
        limit = _scaled(entry.max_concurrent, headroom, 2)
        lines.append(f"    max_concurrent_per_source: {limit}  # observed at most {entry.max_concurrent} at once")
    lines.append("    action: alert")
    return lines


def _order(entry: _Learned) -> tuple[int, str, str]:
    return entry.port, entry.netns or "", entry.container or ""


def suggest_policy(commands: Sequence[SocatCommand], events: Iterable[ConnectionEvent], *,
                   headroom: float = 2.0, min_rate: int = 10, v4_prefix: int = 24, v6_prefix: int = 64,
                   include_refused: bool = False, home: int | None = None) -> str:
    """Policy YAML text learned from command lines and events; it passes `policy check`. `home`: the inode
    of the namespace the agent will enforce in (its relays' entries name no namespace)."""
    if headroom < 1.0:
        raise ValueError("headroom must be >= 1 (the suggestion must cover what was observed)")
    learned: dict[Key, _Learned] = {}
    for cmd in commands:
        _from_command(cmd, learned)
    seen = _from_events(events, learned, include_refused, home)
    names: set[str] = set()
    for entry in sorted(learned.values(), key=_order):
        base = entry.name or "-".join(part for part in (f"listener-{entry.port}", entry.netns, entry.container)
                                      if part and not part.startswith("net:"))
        entry.name = base
        suffix = 2
        while entry.name in names:
            entry.name = f"{base}-{suffix}"
            suffix += 1
        names.add(entry.name)
    out = [
        "# socat-monitor policy suggested from "
        f"{len(commands)} socat command line(s) and {seen} recorded event(s).",
        "# Review every entry before use: it allows what was seen, not what should be.",
        "version: 1",
        "listeners:" if learned else "listeners: []",
    ]
    for entry in sorted(learned.values(), key=_order):
        out.extend(_render(entry, headroom, min_rate, v4_prefix, v6_prefix))
    out += ["defaults:", "  unknown_listener: alert"]
    return "\n".join(out) + "\n"
