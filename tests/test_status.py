"""The agent's live status: open connections per listener do not drift when closes are lost."""

from __future__ import annotations

import dataclasses

from monitor.events import Action, ConnectionEvent, Direction, Listener, PipelineError, ProcessEvent, ProcessInfo
from monitor.status import Counters, LiveStatus

T0 = 1_767_225_600 * 10**9
S = 10**9


def _event(action: Action, t_s: float, sport: int) -> ConnectionEvent:
    return ConnectionEvent(action, T0 + int(t_s * S), "192.0.2.7", sport, "127.0.0.1", 8443,
                           listener=Listener("127.0.0.1", 8443))


def _active(status: LiveStatus) -> int:
    [listener] = status.snapshot(version="t", pid=1, host="h", counters=Counters(), blocks=(),
                                 last_reload=None).listeners
    return listener.active


def test_open_connections_count_accepts_minus_closes():
    status = LiveStatus()
    for sport in (40000, 40001, 40002):
        status.observe(_event(Action.ACCEPTED, 0, sport))
    status.observe(_event(Action.CLOSED, 1, 40001))
    status.observe(_event(Action.DENIED, 1, 40002))
    status.observe(_event(Action.CLOSED, 2, 40009))          # a close of a connection never seen opening
    assert _active(status) == 1


def test_lost_closes_do_not_make_open_connections_drift():
    status = LiveStatus(open_idle_s=60)
    for k in range(100):                                     # the same client port again and again
        status.observe(_event(Action.ACCEPTED, k * 0.1, 40000))
    assert _active(status) == 1 and status.open.forgotten.reused == 99
    for k in range(5):
        status.observe(_event(Action.ACCEPTED, 20, 41000 + k))
    status.observe(_event(Action.ACCEPTED, 100, 42000))       # the six above idle for over 60 s
    assert _active(status) == 1 and status.open.forgotten.expired == 6


def test_a_batch_counts_as_its_records_one_by_one():
    """`observe_all` (the agent's, once per batch) leaves the status `observe` of each record leaves."""
    records = [_event(Action.ACCEPTED, 0, 40000), _event(Action.ACCEPTED, 0, 40001),
               dataclasses.replace(_event(Action.ATTEMPTED, 0, 50000), direction=Direction.EGRESS),
               _event(Action.CLOSED, 1, 40000),
               PipelineError(stage="capture", message="lost", timestamp_ns=T0, count=3),
               ProcessEvent(Action.PROCESS_ENDED, T0, ProcessInfo(pid=7, comm="socat"))]
    one, batch = LiveStatus(clock=lambda: 5.0), LiveStatus(clock=lambda: 5.0)
    for record in records:
        one.observe(record)
    batch.observe_all(records)
    assert batch.totals() == one.totals() == (
        {"connection_accepted": 2, "connection_attempted": 1, "connection_closed": 1, "process_ended": 1}, {},
        {"capture": 3})
    assert _active(batch) == _active(one) == 1
