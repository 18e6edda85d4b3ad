"""Listening TCP sockets of watched processes, read from /proc.

`/proc/PID/net/tcp{,6}` gives the listening sockets of PID's network
namespace by inode, with their owner uid (read once per namespace, so
relays in other namespaces are found too); `/proc/PID/fd` tells which
process holds each. Used to seed the kernel's port filter, to complete
accepts whose handshake the kernel side did not see, and to answer
`Capture.listeners()`.

A process whose fd table cannot be read (another user's relay, the agent
without CAP_SYS_PTRACE/CAP_DAC_READ_SEARCH) is reported in
`Discovery.uninspectable`; its listeners are then inferred from the
namespace's listening sockets owned by its uid that no inspectable process
holds, narrowed to the TCP ports its command line listens on (parsed by
`monitor.socat.grammar`; all readable without those capabilities), listed in
`Discovery.inferred`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..addresses import V4_MAPPED_PREFIX, packed, packed_text
from ..errors import InputError
from ..events import Listener
from ..socat.grammar import parse_command_line
from . import processes, tcp


@dataclass(frozen=True, slots=True)
class Socket:
    """One listening socket of a namespace."""

    ip: str
    port: int
    uid: int


@dataclass
class Discovery:
    """What one scan of /proc found."""

    listeners: list[tuple[Listener, int]] = field(default_factory=list)   # (listener, holder pid), sorted
    uninspectable: dict[int, str] = field(default_factory=dict)           # relay pid -> why its fds are unreadable
    inferred: set[tuple[str, int, int]] = field(default_factory=set)      # (ip, port, pid) found by owner uid only


def namespace_sockets(proc: str = processes.PROC, pid: str | None = None) -> dict[int, Socket] | None:
    """inode -> Socket of every listening TCP socket in this (or PID's) network namespace; None when
    PID ended while its tables were read."""
    out: dict[int, Socket] = {}
    try:
        for cols in tcp.listening(f"{proc}/{pid}/net" if pid else f"{proc}/net", strict=True):
            if len(cols) > 9:
                ip, port = tcp.hex_address(cols[1])
                out[int(cols[9])] = Socket(ip, port, int(cols[7]))
    except OSError:
        return None
    return out


def command_line_ports(argv: tuple[str, ...]) -> set[int]:
    """TCP ports a socat command line listens on (`TCP-LISTEN:8080,fork`, `TCP6-L:80`, `OPENSSL-LISTEN:443`)."""
    try:
        addresses = parse_command_line(argv).listeners() if argv else ()
    except InputError:
        return set()
    return {a.listen_port for a in addresses if "TCP" in a.groups and a.listen_port is not None}


def _command_line_ports(pid: str, proc: str) -> set[int]:
    try:
        return command_line_ports(processes.cmdline(pid, proc))
    except OSError:
        return set()


def _socket_inodes(pid: str, proc: str) -> tuple[list[int], str | None]:
    """Inodes of PID's sockets, and why its fd table could not be read (None if it could)."""
    try:
        fds = os.listdir(f"{proc}/{pid}/fd")
    except FileNotFoundError:
        return [], None          # exited meanwhile
    except OSError as exc:
        return [], f"/proc/{pid}/fd: {exc.strerror}"
    inodes: list[int] = []
    denied = None
    for fd in fds:
        try:
            target = os.readlink(f"{proc}/{pid}/fd/{fd}")
        except PermissionError as exc:
            denied = f"/proc/{pid}/fd/{fd}: {exc.strerror}"
            continue
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[8:-1]))
    if denied and not inodes:
        return [], denied
    return inodes, None


def discover(comms: tuple[str, ...], proc: str = processes.PROC) -> Discovery:
    """Listening sockets of the processes whose comm is in `comms`, and those whose fds are unreadable."""
    pids = [str(pid) for pid in processes.pids_named(comms, proc)]
    by_netns: dict[str, dict[int, Socket]] = {}
    netns_of: dict[str, str] = {}
    found: dict[tuple[str, int, int], None] = {}
    claimed: set[tuple[str, int]] = set()
    blind: list[tuple[str, str]] = []
    for pid in pids:
        try:
            netns = os.readlink(f"{proc}/{pid}/ns/net")
        except OSError:
            netns = f"pid:{pid}"   # unreadable link: this process's own view
        netns_of[pid] = netns
        sockets = by_netns.get(netns)
        if sockets is None:
            sockets = namespace_sockets(proc, pid)
            if sockets is None:
                continue   # a fork child that ended meanwhile: the namespace is read through another process
            by_netns[netns] = sockets
        inodes, why = _socket_inodes(pid, proc)
        if why is not None:
            blind.append((pid, why))
            continue
        for inode in inodes:
            hit = sockets.get(inode)
            if hit:
                found[(hit.ip, hit.port, int(pid))] = None
                claimed.add((netns, inode))
    out = Discovery()
    watched = set(pids)
    for pid, why in blind:
        status = processes.status(pid, proc)
        ppid, uid = (status.ppid, status.uid) if status is not None else (None, None)
        if ppid is not None and str(ppid) in watched:
            continue   # a fork child of a relay: its parent is reported
        out.uninspectable[int(pid)] = why
        netns = netns_of[pid]
        ports = _command_line_ports(pid, proc)
        for inode, sock in by_netns.get(netns, {}).items():
            if (uid is not None and sock.uid == uid and (netns, inode) not in claimed
                    and (not ports or sock.port in ports)):
                found[(sock.ip, sock.port, int(pid))] = None
                out.inferred.add((sock.ip, sock.port, int(pid)))
    out.listeners = [(Listener(ip=ip, port=port), pid) for ip, port, pid in sorted(found)]
    return out


class OpenConnections:
    """The open TCP connections of relays' namespaces, by (local port, peer port), read from /proc at most
    once per namespace between two `forget()` calls (the capture forgets at each ring drain). An accept
    whose handshake the kernel side did not see is completed from here; in a flood of them (the agent
    started under attack) one table read then serves a whole drain, not one read per accept.

    `pin()` keeps, once, the connections to the listener ports at the moment the capture attached: those
    whose handshake it could not see (waiting in the accept queue). One that is gone by the drain of its
    accept (a port scanner resets at once) is still completed from there. The pinned table is consulted
    first, each row used once, and dropped when empty or PIN_S after it was taken."""

    PIN_S = 60.0

    def __init__(self, proc: str = processes.PROC, clock: Callable[[], float] = time.monotonic) -> None:
        self._proc = proc
        self._clock = clock
        self._tables: dict[object, dict[tuple[int, int], list[tuple[str, str]]]] = {}
        self._pinned: dict[object, dict[tuple[int, int], list[tuple[str, str]]]] = {}
        self._pinned_until = 0.0

    def pin(self, pids: Iterable[int], ports: set[int]) -> int:
        """Keep the open connections to `ports` in the namespaces of `pids` as they are now (one read per
        namespace); how many were kept."""
        self._pinned = {}
        for pid in pids:
            key = _namespace_key(pid, processes.netns_inode(pid, self._proc))
            if key not in self._pinned:
                table = self._read(pid)
                if table is not None:   # else it ended meanwhile: read through another process
                    self._pinned[key] = {ports_: rows for ports_, rows in table.items() if ports_[0] in ports}
        self._pinned = {key: table for key, table in self._pinned.items() if table}
        self._pinned_until = self._clock() + self.PIN_S
        return sum(len(rows) for table in self._pinned.values() for rows in table.values())

    def forget(self) -> None:
        self._tables.clear()
        if self._pinned and self._clock() >= self._pinned_until:
            self._pinned = {}

    def accepted_addresses(self, pid: int, netns: int | None, lport: int, peer_ip: str,
                           peer_port: int) -> tuple[str, str] | None:
        """(local ip, full peer ip) of the open connection peer_port -> lport in PID's namespace (inode
        `netns`, None: unknown): pinned at attach, else open now.

        The kernel side then knows the whole IPv4 peer but only the first 8 bytes of an IPv6 one
        (socat's accept buffer is 16 bytes) and not the local address. None when the connection is
        gone or ambiguous.
        """
        try:
            want = packed(peer_ip)
        except ValueError:
            return None
        key = _namespace_key(pid, netns)
        pinned = self._pinned.get(key)
        if pinned is not None:
            found = _matching(pinned.get((lport, peer_port), ()), want)
            if len(found) == 1:
                self._unpin(key, (lport, peer_port), found[0][0])
                return found[0][1]
        found = _matching(self._table(pid, netns).get((lport, peer_port), ()), want)
        addresses = {seen for _, seen in found}
        return addresses.pop() if len(addresses) == 1 else None

    def _unpin(self, key: object, ports: tuple[int, int], row: tuple[str, str]) -> None:
        """A pinned connection's accept was completed: it is not asked for again."""
        table = self._pinned[key]
        table[ports].remove(row)
        if not table[ports]:
            del table[ports]
        if not table:
            del self._pinned[key]

    def _table(self, pid: int, netns: int | None) -> dict[tuple[int, int], list[tuple[str, str]]]:
        """(local port, peer port) -> the hex (local, peer) addresses of PID's namespace's connections;
        only ports are parsed here, addresses only for the rows an accept asks about."""
        key = _namespace_key(pid, netns)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self._read(pid) or {}
        return table

    def _read(self, pid: int) -> dict[tuple[int, int], list[tuple[str, str]]] | None:
        """The table read through PID (None: it ended meanwhile)."""
        table: dict[tuple[int, int], list[tuple[str, str]]] = {}
        try:
            for cols in tcp.rows(f"{self._proc}/{pid}/net", tcp.OPEN, strict=True):
                if len(cols) >= 4 and cols[3] in tcp.OPEN:
                    ports = (int(cols[1][-4:], 16), int(cols[2][-4:], 16))
                    table.setdefault(ports, []).append((cols[1], cols[2]))
        except OSError:
            return None
        return table


def _namespace_key(pid: int, netns: int | None) -> object:
    return ("netns", netns) if netns is not None else ("pid", pid)


def _matching(rows: Iterable[tuple[str, str]], want: bytes) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """(row, (local ip, peer ip)) of the hex rows whose peer is `want` (as the kernel side saw it)."""
    found = []
    for row in rows:
        remote = tcp.hex_raw(row[1])[0]
        if _same_peer(remote, want):
            found.append((row, (packed_text(tcp.hex_raw(row[0])[0]), packed_text(remote))))
    return found


def _same_peer(remote: bytes, want: bytes) -> bool:
    """Whether `remote` (from /proc) is the peer `want` the kernel side saw (8 bytes of an IPv6 one)."""
    return remote == want or (len(want) == 16 and len(remote) == 16 and remote[:8] == want[:8]) or (
        len(want) == 4 and remote == V4_MAPPED_PREFIX + want)

