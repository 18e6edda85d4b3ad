"""The agent's hand-off queue and audit worker, as pure parts (no kernel)."""

from __future__ import annotations

import threading
import time

from monitor.agent.auditing import AuditWorker
from monitor.agent.loops import Handoff
from monitor.events import Action, ProcessEvent, ProcessInfo, now_ns


def test_handoff_is_bounded_in_records_not_batches():
    handoff = Handoff(queue_size=100)
    handoff.offer([object()] * 60)
    handoff.offer([object()] * 60)        # would pass 100 records: dropped whole, counted
    handoff.offer([object()] * 40)
    assert handoff.held == 100 and handoff.lost == 60
    assert len(handoff.take(0)) == 60 and handoff.held == 40
    assert len(handoff.take(0.01)) == 40 and handoff.held == 0
    assert handoff.take(0) is None and handoff.take(0.01) is None
    handoff.offer([object()] * 100)
    handoff.offer([object()])
    assert handoff.held == 100 and handoff.new_losses() == 61 and handoff.new_losses() == 0


def test_handoff_wakes_a_waiting_taker_at_once():
    handoff = Handoff(queue_size=100)
    batch = [object()]
    threading.Timer(0.05, handoff.offer, [batch]).start()
    start = time.monotonic()
    assert handoff.take(10.0) is batch
    assert time.monotonic() - start < 5.0


def _exec(pid: int, args: tuple[str, ...], uid: int = 0) -> ProcessEvent:
    info = ProcessInfo(pid=pid, comm="socat", ppid=1, tid=pid, uid=uid, gid=0, user_name="root",
                       executable="/usr/bin/socat", args=args)
    return ProcessEvent(action=Action.PROCESS_STARTED, process=info, timestamp_ns=now_ns())


def test_audit_worker_audits_each_command_line_once_until_the_policy_changes():
    worker = AuditWorker(lambda: None)
    line = ("socat", "TCP-LISTEN:8080,fork", "EXEC:/bin/sh")
    for pid in (4_000_001, 4_000_002, 4_000_003):   # no such pids: audited from the kernel's argv
        assert worker.submit(_exec(pid, line)) == []
    worker.submit(_exec(4_000_004, line, uid=1000))    # another user: audited again
    deadline = time.monotonic() + 10
    alerts = []
    while time.monotonic() < deadline and len({a.process.pid for a in alerts}) < 2:
        alerts += worker.alerts()
        time.sleep(0.05)
    assert {a.process.pid for a in alerts} == {4_000_001, 4_000_004} and worker.repeats == 2
    assert any(a.rule_id == "audit.exec_address" for a in alerts)
    worker.forget()
    worker.submit(_exec(4_000_005, line))
    worker.close()
    assert {a.process.pid for a in worker.alerts()} == {4_000_005}
