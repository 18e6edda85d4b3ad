"""The runtime audit of exec'd socat processes, off the main thread.

A process named socat chooses its own argv, and auditing one costs /proc
reads and parsing: done on the main thread, a flood of hostile execs would
stall every connection event behind it. `AuditWorker` takes exec events in a
bounded queue (a full queue drops the exec, counted in `dropped`), audits
each on its own thread, and hands the alerts back through a queue that the
main loop drains. Findings are deduplicated per executable, user and argv:
a relay restarted with the same command line is not reported again until
the policy changes (`forget`); such repeats are counted in `repeats`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from typing import Callable

from ..errors import InputError
from ..events import Alert, ProcessEvent
from ..policy import Policy, audit_command, audit_process, finding_to_alert, parse_command_line

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
REMEMBERED = 4096   # distinct (executable, uid, argv) already audited


def audit_exec(event: ProcessEvent, policy: Policy | None) -> list[Alert]:
    """Alerts for one exec: from /proc while the process lives, else from the argv the kernel saw."""
    process = event.process
    try:
        findings = audit_process(process.pid, policy)
    except (InputError, OSError):   # gone, or unreadable: audit what the kernel copied at exec
        try:
            findings = audit_command(parse_command_line(process.args), pid=process.pid, uid=process.uid,
                                     policy=policy)
        except InputError as exc:
            log.warning("audit of pid %d: %s", process.pid, exc)
            return []
    return [finding_to_alert(f, event.timestamp_ns, process) for f in findings]


class AuditWorker:
    """Audits exec events on one thread; `submit` never blocks, `alerts` never waits."""

    def __init__(self, policy: Callable[[], Policy | None]) -> None:
        self._policy = policy
        self._todo: queue.Queue[ProcessEvent | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._done: queue.Queue[list[Alert]] = queue.Queue()
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self._lock = threading.Lock()
        self.dropped = 0
        self.repeats = 0
        self._dropped_reported = 0
        self.thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self.thread.start()

    def submit(self, event: ProcessEvent) -> list[Alert]:
        """Queue an exec for audit; its alerts come later from `alerts()` (returns none now)."""
        key = (event.process.executable, event.process.uid, event.process.args)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                self.repeats += 1
                return []
            self._seen[key] = None
            if len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
        try:
            self._todo.put_nowait(event)
        except queue.Full:   # not audited: not remembered either, so its next exec is audited
            self.dropped += 1
            with self._lock:
                self._seen.pop(key, None)
        return []

    def alerts(self) -> list[Alert]:
        out: list[Alert] = []
        while True:
            try:
                out.extend(self._done.get_nowait())
            except queue.Empty:
                return out

    def new_drops(self) -> int:
        """Execs dropped since the last call."""
        new, self._dropped_reported = self.dropped - self._dropped_reported, self.dropped
        return new

    def forget(self) -> None:
        """A new policy: command lines seen before are audited again."""
        with self._lock:
            self._seen.clear()

    def close(self, timeout_s: float = 5.0) -> None:
        """Audit what is queued, then stop (bounded wait)."""
        self._todo.put(None)
        self.thread.join(timeout_s)

    def _run(self) -> None:
        while (event := self._todo.get()) is not None:
            try:
                self._done.put(audit_exec(event, self._policy()))
            except Exception:   # a bug in one audit must not end the auditing
                log.exception("audit of pid %d failed", event.process.pid)
