"""The kernel's TCP tables of a network namespace (`/proc/.../net/tcp` and
`tcp6`): their rows, the socket states the monitor looks for, and their
hex-encoded addresses."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..addresses import packed_text

LISTEN = "0A"
ESTABLISHED = "01"


def rows(base: str) -> Iterator[list[str]]:
    """The split rows of `base`/tcp and `base`/tcp6 (a missing or unreadable table is skipped)."""
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{base}/{name}", encoding="ascii") as fh:
                next(fh, None)
                found = [line.split() for line in fh]
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
