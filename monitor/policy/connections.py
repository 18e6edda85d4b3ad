"""Per-source connection counting as the policy measures it: open connections and rate windows.

`OpenConnections` pairs a connection's start with its close by the 4-tuple
and counts what each group (listener, source) holds open. A close can be
lost: the kernel's connection table or ring buffer dropped it, or a file has
no close events at all. So an open connection is also forgotten, and counted
in `Forgotten`, when

- a new connection starts on its 4-tuple under another event id (the client
  reused the port, so the old connection has ended): `reused`;
- no event of it was seen for `idle_ns` of event time: `expired`;
- the table holds more than `max_open` (oldest first): `evicted`.

`RateWindow` holds the start times of one source's connections within a rate
period, and the recorded ids among them, so a repeated record of a connection
(the same `event.id`) is recognised as such and not counted twice.

`SessionClients` remembers the client of each relayed session for the
backend connects of its child, for as long as the client's connection is
open and a little after (see the class).

`SourceCounter` applies both to each connection start. `PolicyEngine` and
`policy suggest` both count with it, so a suggested policy measures traffic
exactly as it will be checked.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from ..events import Action, ConnectionEvent, has_recorded_id

FourTuple = tuple[str, int, str, int]


def open_key(ev: ConnectionEvent) -> FourTuple:
    """What pairs a connection's start with its close: the 4-tuple."""
    return (ev.source_ip, ev.source_port, ev.destination_ip, ev.destination_port)


@dataclass(slots=True)
class Forgotten:
    """Open connections forgotten without their close, by why."""

    expired: int = 0    # nothing seen of it for the idle timeout
    reused: int = 0     # a new connection started on its 4-tuple
    evicted: int = 0    # the table was full

    @property
    def total(self) -> int:
        return self.expired + self.reused + self.evicted


@dataclass(slots=True)
class OpenConnection:
    group: tuple[str, str]     # (listener, source)
    event_id: str              # the record that opened it
    last_ns: int               # event time of the last event seen of it


class OpenConnections:
    """Connections open now, by 4-tuple, counted per group (see the module docstring)."""

    def __init__(self, idle_ns: int, max_open: int) -> None:
        self.idle_ns = idle_ns          # 0: never expire
        self.max_open = max_open
        self.forgotten = Forgotten()
        self._open: OrderedDict[FourTuple, OpenConnection] = OrderedDict()
        self._count: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def get(self, key: FourTuple) -> OpenConnection | None:
        return self._open.get(key)

    def count(self, group: tuple[str, str]) -> int:
        return self._count.get(group, 0)

    def open(self, key: FourTuple, group: tuple[str, str], event_id: str, t_ns: int) -> int:
        """A connection started; what its group holds open now. A connection still open on the
        same 4-tuple has ended unseen (the port was reused) and is forgotten."""
        if key in self._open:
            self._forget(key)
            self.forgotten.reused += 1
        self._open[key] = OpenConnection(group, event_id, t_ns)
        count = self._count[group] = self._count.get(group, 0) + 1
        if len(self._open) > self.max_open:
            self._forget(next(iter(self._open)))
            self.forgotten.evicted += 1
        return count

    def close(self, key: FourTuple) -> None:
        if key in self._open:
            self._forget(key)

    def expire(self, now_ns: int) -> None:
        """Forget the connections of which nothing was seen for the idle timeout (oldest first)."""
        if not self.idle_ns:
            return
        horizon = now_ns - self.idle_ns
        while self._open:
            key, conn = next(iter(self._open.items()))
            if conn.last_ns > horizon:
                return
            self._forget(key)
            self.forgotten.expired += 1

    def _forget(self, key: FourTuple) -> None:
        conn = self._open.pop(key)
        left = self._count.get(conn.group, 1) - 1
        if left > 0:
            self._count[conn.group] = left
        else:
            self._count.pop(conn.group, None)


class RateWindow:
    """One source's connection starts within a rate period: (time, event id), oldest first.

    Holds at most `limit + 1` starts (enough to see the limit crossed); `limit`
    None keeps all (to measure the highest rate)."""

    __slots__ = ("limit", "period_ns", "starts", "_recorded")

    def __init__(self, limit: int | None, period_ns: int) -> None:
        self.limit = limit
        self.period_ns = period_ns
        self.starts: deque[tuple[int, str]] = deque()
        self._recorded: set[str] = set()

    def __contains__(self, event_id: str) -> bool:
        """Whether a start with this recorded id is in the window."""
        return event_id in self._recorded

    def add(self, t_ns: int, event_id: str, recorded: bool) -> int:
        """Count one start (`recorded`: its id identifies it); the starts in the window now."""
        self.starts.append((t_ns, event_id))
        if recorded:
            self._recorded.add(event_id)
        start = t_ns - self.period_ns
        limit = self.limit
        while self.starts and (self.starts[0][0] <= start or (limit is not None and len(self.starts) > limit + 1)):
            self._recorded.discard(self.starts.popleft()[1])
        return len(self.starts)

    @property
    def last_ns(self) -> int | None:
        return self.starts[-1][0] if self.starts else None

    def event_ids(self) -> tuple[str, ...]:
        return tuple(i for _, i in self.starts)


@dataclass(slots=True)
class Counted:
    """What one connection start counted."""

    rate: RateWindow | None      # its group's rate window, the start in it (None: no rate measured)
    open: int | None             # what its group holds open now (None: it opened nothing)


class SourceCounter:
    """Counts connection starts per group (listener, source): rate windows and open connections."""

    def __init__(self, idle_ns: int, max_open: int) -> None:
        self.open = OpenConnections(idle_ns, max_open)
        self.windows: dict[tuple[str, str], RateWindow] = {}
        self.repeated = 0

    def start(self, ev: ConnectionEvent, group: tuple[str, str], limit: int | None,
              period_ns: int | None) -> Counted | None:
        """Count an ACCEPTED or DENIED event (a rate window of `period_ns` holding `limit` + 1 starts,
        when a period is given); None for a repeated record of a start already counted.

        A DENIED (or refused ACCEPTED) on a 4-tuple held open is socat refusing the connection it
        accepted: its end, not a new start."""
        key = open_key(ev)
        held = self.open.get(key)
        window = self.windows.get(group)
        recorded = has_recorded_id(ev)
        if recorded and ((held is not None and held.event_id == ev.id) or (window is not None and ev.id in window)):
            self.repeated += 1
            return None
        opens = ev.action is Action.ACCEPTED and not ev.refused
        if not opens and held is not None:
            self.open.close(key)
            return Counted(None, None)
        if period_ns is not None:
            if window is None:
                window = self.windows[group] = RateWindow(limit, period_ns)
            window.add(ev.timestamp_ns, ev.id, recorded)
        return Counted(window if period_ns is not None else None,
                       self.open.open(key, group, ev.id, ev.timestamp_ns) if opens else None)

    def close(self, ev: ConnectionEvent) -> None:
        self.open.close(open_key(ev))

    def expire(self, now_ns: int) -> None:
        self.open.expire(now_ns)

    def drop_idle_windows(self, now_ns: int) -> None:
        """Drop the rate windows whose last start is older than their period."""
        for group in [g for g, w in self.windows.items() if w.last_ns is None or w.last_ns < now_ns - w.period_ns]:
            del self.windows[group]


class SessionClients:
    """The client of each session (the relay's accept and its child's backend connects share it).

    A session is held while its client's connection is open, at most `max_open` of them (oldest
    first), and the last `CLOSED_KEPT` closed ones after that: a client that resets its connection at
    once can be closed before the child dials the backend. Held only until the close, the table
    stays the size of what is open, not of every connection ever relayed."""

    CLOSED_KEPT = 4096

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        self._open: OrderedDict[str, str] = OrderedDict()
        self._closed: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open) + len(self._closed)

    def opened(self, session: str, client: str) -> None:
        self._open[session] = client
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)

    def closed(self, session: str) -> None:
        client = self._open.pop(session, None)
        if client is not None:
            self._closed[session] = client
            if len(self._closed) > self.CLOSED_KEPT:
                self._closed.popitem(last=False)

    def client(self, session: str) -> str | None:
        return self._open.get(session) or self._closed.get(session)
