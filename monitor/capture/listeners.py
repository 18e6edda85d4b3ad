"""Listening TCP sockets of watched processes, read from /proc.

`/proc/PID/net/tcp{,6}` gives the listening sockets of PID's network
namespace by inode (read once per namespace, so relays in other namespaces
are found too); `/proc/PID/fd` tells which process holds each. Used to seed
the kernel's port filter at start and to answer `Capture.listeners()`.
"""

from __future__ import annotations

import os
import socket
import struct

from ..events import Listener, normalize_ip

_TCP_LISTEN = "0A"


def _hex_address(text: str) -> tuple[str, int]:
    """`0100007F:1F90` -> ('127.0.0.1', 8080); IPv6 is four host-order words."""
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        words = struct.unpack("<4I", raw)
        ip = socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))
    return normalize_ip(ip), int(port_hex, 16)


def listening_sockets(proc: str = "/proc", pid: str | None = None) -> dict[int, tuple[str, int]]:
    """inode -> (ip, port) of every listening TCP socket in this (or PID's) network namespace."""
    out: dict[int, tuple[str, int]] = {}
    base = f"{proc}/{pid}/net" if pid else f"{proc}/net"
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{base}/{name}", encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    cols = line.split()
                    if len(cols) > 9 and cols[3] == _TCP_LISTEN:
                        out[int(cols[9])] = _hex_address(cols[1])
        except OSError:
            continue
    return out


def _comm(pid: str, proc: str) -> str | None:
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().rstrip("\n")
    except OSError:
        return None


def process_listeners(comms: tuple[str, ...], proc: str = "/proc") -> list[tuple[Listener, int]]:
    """(listener, pid) for each listening socket held by a process whose comm is in `comms`."""
    found: dict[tuple[str, int, int], None] = {}
    wanted = set(comms)
    by_netns: dict[str, dict[int, tuple[str, int]]] = {}
    for pid in os.listdir(proc):
        if not pid.isdigit() or _comm(pid, proc) not in wanted:
            continue
        try:
            netns = os.readlink(f"{proc}/{pid}/ns/net")
        except OSError:
            netns = ""
        if netns not in by_netns:
            by_netns[netns] = listening_sockets(proc, pid)
        sockets = by_netns[netns]
        if not sockets:
            continue
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                hit = sockets.get(int(target[8:-1]))
                if hit:
                    found[(hit[0], hit[1], int(pid))] = None
    return [(Listener(ip=ip, port=port), pid) for ip, port, pid in sorted(found)]
