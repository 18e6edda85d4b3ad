"""Columnar connection rows: what the detectors count, live and offline.

`IpTable` interns addresses (normalised, with their /24 or /64 prefix) as
integer codes, so windows are counted with numpy over int arrays. `Rows` is
a batch of connection moments as parallel arrays; `classify` says which
counters a `ConnectionEvent` feeds, the same way the offline reader does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..addresses import network_of, normalize_ip
from ..events import Action, ConnectionEvent, Direction
from .config import DetectConfig


class IpTable:
    """Address <-> code, plus each address's new-source prefix."""

    def __init__(self, config: DetectConfig) -> None:
        self._config = config
        self._v4 = config.new_source_v4_prefix
        self._v6 = config.new_source_v6_prefix
        self._codes: dict[str, int] = {}
        self.ips: list[str] = []
        self.prefixes: list[str] = []
        self.prefix_codes: list[int] = []          # address code -> code of its prefix
        self._prefix_code: dict[str, int] = {}

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
            found = len(self.ips)
            self.ips.append(canonical)
            prefix = self._prefix(canonical)
            self.prefixes.append(prefix)
            self.prefix_codes.append(self._prefix_code.setdefault(prefix, len(self._prefix_code)))
            self._codes[canonical] = found
        self._codes[text] = found
        return found

    def compact(self, keep: np.ndarray) -> tuple["IpTable", np.ndarray]:
        """A table of only the codes in `keep`, and old code -> new code (-1: dropped)."""
        table = IpTable(self._config)
        remap = np.full(len(self.ips), -1, dtype=np.int64)
        for old in np.unique(keep[keep >= 0]):
            remap[old] = table.code(self.ips[old])
        return table, remap

    def codes(self, texts) -> np.ndarray:
        get = self._codes.get
        found = [get(t) for t in texts]          # the known ones without a method call each
        return np.fromiter((c if c is not None else self.code(t) for c, t in zip(found, texts)),
                           dtype=np.int64, count=len(texts))

    def _prefix(self, ip: str) -> str:
        return network_of(ip, self._v6 if ":" in ip else self._v4)


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


def classify(ev: ConnectionEvent, short_ns: int) -> Flags:
    """Which counters an event feeds; egress connects feed none.

    Capture reports a connection socat refuses as ACCEPTED, then DENIED (its
    close, `refused=True`): the ACCEPTED is its start (rate and scan rules),
    the DENIED only counts as a refusal (refused_burst), so each counts once.
    """
    if ev.direction is not Direction.INGRESS:
        return Flags(False, False, False)
    start = ev.action is Action.ACCEPTED
    refused = ev.action is Action.DENIED or ev.refused
    short = ev.action is Action.CLOSED and ev.duration_ns is not None and ev.duration_ns < short_ns
    return Flags(start, refused, short)


def listener_port(ev: ConnectionEvent) -> int:
    return ev.listener.port if ev.listener is not None else ev.destination_port
