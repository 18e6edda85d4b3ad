"""Columnar connection rows: what the detectors count, live and offline.

`IpTable` interns addresses (normalised, with their /24 or /64 new-source
prefix and their source key) as integer codes, so windows are counted with
numpy over int arrays. A source key is what the rate and scan rules count as
one source: the address for IPv4, its /64 (`detect.source_v6_prefix`) for
IPv6, so an attacker rotating addresses inside one /64 is one source. `Rows`
is a batch of connection moments as parallel arrays; `counted` says which
counters a connection moment feeds, for one event (`classify`) and for a
column of them (`monitor.replay.analyze.to_rows`) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..addresses import network_of, normalize_ip
from ..events import ACCEPTED, CLOSED, DENIED, INGRESS, ConnectionEvent
from .config import DetectConfig


class IpTable:
    """Address <-> code, plus each address's new-source prefix and source key.

    A source key that is a network (an IPv6 /64) is interned in the same table,
    so every code the engine keeps (addresses and keys) is compacted alike."""

    def __init__(self, config: DetectConfig) -> None:
        self._config = config
        self._v4 = config.new_source_v4_prefix
        self._v6 = config.new_source_v6_prefix
        self._key_v6 = config.source_v6_prefix
        self._codes: dict[str, int] = {}
        self.ips: list[str] = []
        self.prefixes: list[str] = []
        self.prefix_codes: list[int] = []          # address code -> code of its prefix
        self.key_codes: list[int] = []             # address code -> code of its source key
        self._prefix_code: dict[str, int] = {}
        self._key_array = np.empty(0, dtype=np.int64)       # key_codes and prefix_codes as arrays
        self._prefix_array = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ips)

    def code(self, text: str) -> int:
        """The code of an address (any spelling); ValueError if it is not one."""
        found = self._codes.get(text)
        if found is not None:
            return found
        canonical = normalize_ip(text)
        found = self._codes.get(canonical)
        if found is None:
            found = self._intern(canonical)
            key = self._key(canonical)
            self.key_codes[found] = found if key == canonical else self._network(key)
        self._codes[text] = found
        return found

    def _intern(self, canonical: str) -> int:
        found = len(self.ips)
        self.ips.append(canonical)
        prefix = self._prefix(canonical.partition("/")[0])
        self.prefixes.append(prefix)
        self.prefix_codes.append(self._prefix_code.setdefault(prefix, len(self._prefix_code)))
        self.key_codes.append(found)
        self._codes[canonical] = found
        return found

    def _network(self, key: str) -> int:
        found = self._codes.get(key)
        return found if found is not None else self._intern(key)

    def code_of(self, text: str) -> int | None:
        """The code of an address or source key as this table spells it (None: not in the table)."""
        return self._codes.get(text)

    def is_network(self, code: int) -> bool:
        return "/" in self.ips[code]

    def compact(self, keep: np.ndarray) -> tuple["IpTable", np.ndarray]:
        """A table of only the codes in `keep`, and old code -> new code (-1: dropped)."""
        table = IpTable(self._config)
        remap = np.full(len(self.ips), -1, dtype=np.int64)
        for old in np.unique(keep[keep >= 0]):
            text = self.ips[old]
            remap[old] = table._network(text) if "/" in text else table.code(text)
        return table, remap

    def codes(self, texts) -> np.ndarray:
        get = self._codes.get
        found = [get(t, -1) for t in texts]          # the known ones without a method call each
        if -1 in found:
            found = [c if c >= 0 else self.code(t) for c, t in zip(found, texts)]
        return np.array(found, dtype=np.int64)

    def source_keys(self, codes: np.ndarray) -> np.ndarray:
        """The source key code of each address code."""
        if len(self._key_array) != len(self.key_codes):      # converted again only once the table has grown
            self._key_array = np.array(self.key_codes, dtype=np.int64)
        return self._key_array[codes]

    def prefix_array(self) -> np.ndarray:
        """Address code -> code of its new-source prefix."""
        if len(self._prefix_array) != len(self.prefix_codes):
            self._prefix_array = np.array(self.prefix_codes, dtype=np.int64)
        return self._prefix_array

    def _prefix(self, ip: str) -> str:
        return network_of(ip, self._v6 if ":" in ip else self._v4)

    def _key(self, ip: str) -> str:
        return network_of(ip, self._key_v6) if ":" in ip and self._key_v6 < 128 else ip


@dataclass
class Rows:
    """A batch of connection moments in arrival order (parallel arrays)."""

    t: np.ndarray          # int64 event time, ns
    lst: np.ndarray        # int64 listener port
    src: np.ndarray        # int64 IpTable code of the client
    dst: np.ndarray        # int64 IpTable code of the listener address
    start: np.ndarray      # bool: a connection start (accepted)
    refused: np.ndarray    # bool: socat refused it
    short: np.ndarray      # bool: a close within scan_short_s of its start
    event_id: Callable[[int], str | None]   # row index -> event id

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True, slots=True)
class Flags:
    start: bool
    refused: bool
    short: bool

    def __bool__(self) -> bool:
        return self.start or self.refused or self.short


def counted(ingress, accepted, denied, closed, refused, duration, short_ns: int):
    """Which counters connection moments feed: (start, refused, short), for one moment (bools and an
    int duration, -1 when unknown) or for columns of them (numpy arrays) alike.

    Capture reports a connection socat refuses as ACCEPTED, then DENIED (its
    close, `refused`): the ACCEPTED is its start (rate and scan rules), the
    DENIED only counts as a refusal (refused_burst), so each counts once.
    Egress connects feed none; a short session (scan) is a CLOSED only.
    """
    start = ingress & accepted
    refusal = ingress & (denied | refused)
    short = ingress & closed & (duration >= 0) & (duration < short_ns)
    return start, refusal, short


# the eight possible answers of `classify`, made once (it runs for every event)
_FLAGS = {(start, refused, short): Flags(start, refused, short)
          for start in (False, True) for refused in (False, True) for short in (False, True)}


NOTHING = _FLAGS[(False, False, False)]   # what `classify` answers for an event that feeds no counter


def classify(ev: ConnectionEvent, short_ns: int) -> Flags:
    """Which counters an event feeds (`counted`)."""
    action = ev.action
    duration = ev.duration_ns if ev.duration_ns is not None else -1
    return _FLAGS[counted(ev.direction is INGRESS, action is ACCEPTED, action is DENIED, action is CLOSED,
                          bool(ev.refused), duration, short_ns)]


def listener_port(ev: ConnectionEvent) -> int:
    return ev.listener.port if ev.listener is not None else ev.destination_port
