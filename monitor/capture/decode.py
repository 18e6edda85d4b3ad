"""Raw ring-buffer records of `bpf/capture.c` -> `RawEvent`, cheaply.

The layout here mirrors `struct event` / `struct exec_event` in the C file;
`decode` is pure (bytes in, record out) so it is unit-tested without a kernel.
Addresses become canonical text (v4-mapped IPv6 becomes IPv4) through a
small bounded cache: a relay sees the same few addresses over and over.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..addresses import packed_text

EV_ACCEPT, EV_CONNECT, EV_CLOSE, EV_EXEC, EV_EXIT = 1, 2, 3, 4, 5
F_INGRESS, F_REFUSED, F_PARTIAL, F_EXITED, F_FAILED = 1, 2, 4, 8, 16
AF_INET, AF_INET6 = 2, 10
MAX_ARGS, ARG_LEN = 20, 128

HEADER = struct.Struct("<BBBxIIIIIQQQiHH16s16sHHI16s16sQQ")
EXEC_TAIL = struct.Struct("<I")  # argc (then 4 bytes of padding before argv)
EXEC_ARGV_OFFSET = HEADER.size + 8
EXEC_SIZE = EXEC_ARGV_OFFSET + MAX_ARGS * ARG_LEN
assert HEADER.size == 144, HEADER.size

# canonical text by raw field, one cache per family (no key tuple to build per address)
_ADDR_CACHE: dict[int, dict[bytes, str]] = {AF_INET: {}, AF_INET6: {}}
_ADDR_CACHE_MAX = 4096


class DecodeError(ValueError):
    """A record that does not have the layout of `bpf/capture.c`."""


@dataclass(slots=True)
class RawEvent:
    """One kernel record, fields decoded but not yet enriched."""

    type: int
    family: int
    flags: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    ktime_ns: int
    cookie: int
    duration_ns: int
    err: int
    sport: int
    dport: int
    saddr: str
    daddr: str
    lport: int
    laddr: str | None
    sig: int
    comm: str
    bytes_in: int = 0
    bytes_out: int = 0
    argv: tuple[str, ...] = ()


def address(family: int, raw: bytes) -> str:
    """Canonical text of a 16-byte address field (v4 in its first 4 bytes) of family AF_INET or AF_INET6."""
    cache = _ADDR_CACHE[family]
    text = cache.get(raw)
    if text is None:
        text = packed_text(raw[:4] if family == AF_INET else raw)
        if len(cache) >= _ADDR_CACHE_MAX:
            cache.clear()
        cache[raw] = text
    return text


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


_COMMS: dict[bytes, str] = {}


def _comm(raw: bytes) -> str:
    text = _COMMS.get(raw)
    if text is None:
        if len(_COMMS) >= 1024:
            _COMMS.clear()
        text = _COMMS[raw] = _cstr(raw)
    return text


_CONN_TYPES = frozenset((EV_ACCEPT, EV_CONNECT, EV_CLOSE))


def decode(data: bytes) -> RawEvent:
    """One ring-buffer record -> RawEvent; DecodeError if it is malformed. A connection record's
    addresses and the comm are looked up in their caches here (a call each only to fill one)."""
    if len(data) < HEADER.size:
        raise DecodeError(f"record of {len(data)} bytes, expected at least {HEADER.size}")
    (etype, family, flags, pid, tid, ppid, uid, gid, ktime, cookie, duration, err,
     sport, dport, saddr, daddr, lport, lfamily, sig, laddr, comm, bytes_in, bytes_out) = HEADER.unpack_from(data)
    argv: tuple[str, ...] = ()
    if etype in _CONN_TYPES:   # most records
        texts = _ADDR_CACHE.get(family)
        if texts is None:
            raise DecodeError(f"connection record with address family {family}")
        saddr = texts.get(saddr) or address(family, saddr)
        daddr = texts.get(daddr) or address(family, daddr)
    elif etype == EV_EXEC:
        if len(data) < EXEC_SIZE:
            raise DecodeError(f"exec record of {len(data)} bytes, expected {EXEC_SIZE}")
        (argc,) = EXEC_TAIL.unpack_from(data, HEADER.size)
        argc = min(argc, MAX_ARGS)
        argv = tuple(
            _cstr(data[EXEC_ARGV_OFFSET + i * ARG_LEN: EXEC_ARGV_OFFSET + (i + 1) * ARG_LEN]) for i in range(argc)
        )
        saddr = daddr = ""
    elif etype == EV_EXIT:
        saddr = daddr = ""
    else:
        raise DecodeError(f"unknown record type {etype}")
    listening = None
    if lport:
        texts = _ADDR_CACHE.get(lfamily)
        if texts is not None:
            listening = texts.get(laddr) or address(lfamily, laddr)
    # positional: this runs for every record
    return RawEvent(etype, family, flags, pid, tid, ppid, uid, gid, ktime, cookie, duration, err, sport, dport,
                    saddr, daddr, lport, listening, sig, _COMMS.get(comm) or _comm(comm), bytes_in, bytes_out, argv)
