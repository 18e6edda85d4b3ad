"""The kernel's TCP tables of a network namespace (`/proc/.../net/tcp` and
`tcp6`): their rows, the socket states the monitor looks for, and their
hex-encoded addresses."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator

from ..addresses import packed_text

LISTEN = "0A"
ESTABLISHED = "01"
# The states of a connection a process may hold after accept() or connect() returned (not
# listening, not half-open, not TIME_WAIT: in a flooded namespace most rows are TIME_WAIT).
OPEN = (ESTABLISHED, "04", "05", "08", "09", "0B")   # FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING


def rows(base: str, states: tuple[str, ...] | None = None, strict: bool = False) -> Iterator[list[str]]:
    """The split rows of `base`/tcp and `base`/tcp6, only those in `states` when given.

    A missing or unreadable table is skipped; with `strict`, one this kernel has raises OSError
    instead: the process behind `base` ended (or is ending) meanwhile, and a table read through it
    may have only its IPv4 half.

    A row's state is its only two-digit hex column between spaces (addresses and timers are
    joined by colons, the other columns are longer or decimal), so `states` is tested on the line
    before it is split: a table of tens of thousands of TIME_WAIT rows costs little to skip."""
    marks = tuple(f" {state} " for state in states) if states is not None else None
    return _tables(base, lambda path: _read(path, marks), strict)


def listening(base: str, strict: bool = False) -> Iterator[list[str]]:
    """The split LISTEN rows of `base`/tcp and `base`/tcp6 (`strict` as for `rows`).

    The kernel lists a table's listening sockets first (its listening hash, then the
    established one), so the read stops at the first other row: a namespace with tens of
    thousands of connections in TIME_WAIT costs a few lines, not megabytes of text."""
    return _tables(base, _read_listening, strict)


def _tables(base: str, read: Callable[[str], list[list[str]]], strict: bool) -> Iterator[list[str]]:
    """The rows `read` takes from `base`/tcp, then `base`/tcp6 (see `rows` for `strict`)."""
    for name in ("tcp", "tcp6"):
        try:
            found = read(f"{base}/{name}")
        except OSError:
            if strict and os.path.exists(f"/proc/self/net/{name}"):
                raise
            continue
        yield from found


def _read_listening(path: str) -> list[list[str]]:
    out = []
    with open(path, encoding="ascii") as fh:
        next(fh, None)
        for line in fh:
            cols = line.split()
            if len(cols) < 4 or cols[3] != LISTEN:
                break
            out.append(cols)
    return out


def _read(path: str, marks: tuple[str, ...] | None) -> list[list[str]]:
    with open(path, encoding="ascii") as fh:
        next(fh, None)
        if marks is None:
            return [line.split() for line in fh]
        if len(marks) == 1:
            mark = marks[0]
            return [line.split() for line in fh if mark in line]
        return [line.split() for line in fh if any(mark in line for mark in marks)]


def hex_raw(text: str) -> tuple[bytes, int]:
    """`0100007F:1F90` -> (b'\\x7f\\0\\0\\x01', 8080): network-order address bytes and port."""
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    if len(raw) == 4:
        return raw[::-1], int(port_hex, 16)
    return struct.pack(">4I", *struct.unpack("<4I", raw)), int(port_hex, 16)   # four host-order words


def hex_address(text: str) -> tuple[str, int]:
    """`0100007F:1F90` -> ('127.0.0.1', 8080); v4-mapped IPv6 becomes IPv4."""
    raw, port = hex_raw(text)
    return packed_text(raw), port
