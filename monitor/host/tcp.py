"""The kernel's TCP tables of a network namespace (`/proc/.../net/tcp` and
`tcp6`): their rows, the socket states the monitor looks for, and their
hex-encoded addresses."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..addresses import packed_text

LISTEN = "0A"
ESTABLISHED = "01"
# The states of a connection a process may hold after accept() or connect() returned (not
# listening, not half-open, not TIME_WAIT: in a flooded namespace most rows are TIME_WAIT).
OPEN = (ESTABLISHED, "04", "05", "08", "09", "0B")   # FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING


def rows(base: str, states: tuple[str, ...] | None = None) -> Iterator[list[str]]:
    """The split rows of `base`/tcp and `base`/tcp6 (a missing or unreadable table is skipped), only
    those in `states` when given.

    A row's state is its only two-digit hex column between spaces (addresses and timers are
    joined by colons, the other columns are longer or decimal), so `states` is tested on the line
    before it is split: a table of tens of thousands of TIME_WAIT rows costs little to skip."""
    marks = tuple(f" {state} " for state in states) if states is not None else None
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{base}/{name}", encoding="ascii") as fh:
                next(fh, None)
                if marks is None:
                    found = [line.split() for line in fh]
                elif len(marks) == 1:
                    mark = marks[0]
                    found = [line.split() for line in fh if mark in line]
                else:
                    found = [line.split() for line in fh if any(mark in line for mark in marks)]
        except OSError:
            continue
        yield from found


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
