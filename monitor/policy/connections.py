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

An open connection started with a session id (the relay's accept; its
child's backend connects share the id) also answers who the session's
client is. Once the connection is forgotten, for whatever reason, the last
`CLOSED_SESSIONS` sessions still answer: a client that resets at once can be
closed before the child dials. So what is held is the size of what is open,
not of every connection relayed, and a lost close costs no more than the
connection it leaves open.

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


CLOSED_SESSIONS = 4096   # sessions whose client is still known after their connection was forgotten


@dataclass(slots=True)
class OpenConnection:
    group: tuple[str, str]     # (listener, source)
    event_id: str              # the record that opened it
    last_ns: int               # event time of the last event seen of it
    session: str | None = None


class OpenConnections:
    """Connections open now, by 4-tuple, counted per group (see the module docstring)."""

    def __init__(self, idle_ns: int, max_open: int) -> None:
        self.idle_ns = idle_ns          # 0: never expire
        self.max_open = max_open
        self.forgotten = Forgotten()
        self._open: OrderedDict[FourTuple, OpenConnection] = OrderedDict()
        self._count: dict[tuple[str, str], int] = {}
        self._sessions: dict[str, OpenConnection] = {}
        self._closed_sessions: OrderedDict[str, str] = OrderedDict()   # session -> client, oldest first

    def __len__(self) -> int:
        return len(self._open)

    def get(self, key: FourTuple) -> OpenConnection | None:
        return self._open.get(key)

    def count(self, group: tuple[str, str]) -> int:
        return self._count.get(group, 0)

    def client(self, session: str) -> str | None:
        """The source of the connection that started `session`: open, or among the last forgotten."""
        conn = self._sessions.get(session)
        return conn.group[1] if conn is not None else self._closed_sessions.get(session)

    @property
    def sessions_held(self) -> int:
        return len(self._sessions) + len(self._closed_sessions)

    def open(self, key: FourTuple, group: tuple[str, str], event_id: str, t_ns: int,
             session: str | None = None) -> int:
        """A connection started; what its group holds open now. A connection still open on the
        same 4-tuple has ended unseen (the port was reused) and is forgotten."""
        if key in self._open:
            self._forget(key)
            self.forgotten.reused += 1
        conn = self._open[key] = OpenConnection(group, event_id, t_ns, session)
        if session:
            self._sessions[session] = conn
        count = self._count[group] = self._count.get(group, 0) + 1
        while len(self._open) > self.max_open:
            self._forget(next(iter(self._open)))
            self.forgotten.evicted += 1
        return count

    def close(self, key: FourTuple, keep_session: bool = True) -> None:
        """The connection ended; its session is kept among the last forgotten unless `keep_session` is
        False (socat refused it: its child dials nothing)."""
        if key in self._open:
            self._forget(key, keep_session)

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

    def _forget(self, key: FourTuple, keep_session: bool = True) -> None:
        conn = self._open.pop(key)
        left = self._count.get(conn.group, 1) - 1
        if left > 0:
            self._count[conn.group] = left
        else:
            self._count.pop(conn.group, None)
        if conn.session and self._sessions.get(conn.session) is conn:
            del self._sessions[conn.session]
            if keep_session:
                self._keep_session(conn.session, conn.group[1])

    def _keep_session(self, session: str, client: str) -> None:
        closed = self._closed_sessions
        closed[session] = client
        while len(closed) > CLOSED_SESSIONS:
            closed.popitem(last=False)


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
            self.open.close(key, keep_session=False)
            return Counted(None, None)
        if period_ns is not None:
            if window is None:
                window = self.windows[group] = RateWindow(limit, period_ns)
            window.add(ev.timestamp_ns, ev.id, recorded)
        return Counted(window if period_ns is not None else None,
                       self.open.open(key, group, ev.id, ev.timestamp_ns, ev.session_id) if opens else None)

    def close(self, ev: ConnectionEvent) -> None:
        self.open.close(open_key(ev))

    def expire(self, now_ns: int) -> None:
        self.open.expire(now_ns)

    def drop_idle_windows(self, now_ns: int) -> None:
        """Drop the rate windows whose last start is older than their period."""
        for group in [g for g, w in self.windows.items() if w.last_ns is None or w.last_ns < now_ns - w.period_ns]:
            del self.windows[group]
