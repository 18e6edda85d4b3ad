"""The agent's two loops.

The capture thread (`CaptureReader`) only polls the ring buffer and offers
batches to the bounded `Handoff` queue: when it is full the batch is counted
as lost in user space and reported, never dropped silently. Its errors go to
the main thread through the agent's error queue. The main thread
(`main_loop`) processes each batch as it comes and runs the periodic tasks
when they are due, until stopped or past its deadline.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..capture import Capture
from ..events import PipelineError, Record, now_ns

log = logging.getLogger(__name__)

class Handoff:
    """The queue from the capture thread to the main thread, bounded in records (`queue_size`), not
    in batches (a ring drain can hold thousands), and the count of what it dropped; one lock guards
    the batches and the counts (the offer wakes a waiting taker under it)."""

    def __init__(self, queue_size: int) -> None:
        self.capacity = queue_size
        self.held = 0          # records queued now
        self.lost = 0
        self._reported = 0
        self._batches: collections.deque[list[Record]] = collections.deque()
        self._ready = threading.Condition(threading.Lock())

    def offer(self, batch: list[Record]) -> None:
        with self._ready:
            if self.held + len(batch) > self.capacity:
                self.lost += len(batch)
                return
            self.held += len(batch)
            self._batches.append(batch)
            self._ready.notify()

    def take(self, timeout: float) -> list[Record] | None:
        """The oldest batch queued, waiting up to `timeout` s for one (None when none came)."""
        with self._ready:
            if not self._batches:
                if timeout <= 0 or not self._ready.wait(timeout) or not self._batches:
                    return None
            batch = self._batches.popleft()
            self.held -= len(batch)
        return batch

    def new_losses(self) -> int:
        """Records lost since the last call."""
        lost, self._reported = self.lost - self._reported, self.lost
        return lost


class CaptureReader:
    """The capture thread."""

    def __init__(self, capture: Capture, handoff: Handoff, errors: queue.Queue[PipelineError],
                 stop: threading.Event) -> None:
        self.capture = capture
        self.handoff = handoff
        self.errors = errors
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                batch = self.capture.poll(100)
            except Exception as exc:  # never let the reader die silently
                log.error("capture: %s", exc)
                self.errors.put(PipelineError("capture", f"poll failed: {exc}", now_ns()))
                time.sleep(0.1)
                continue
            if batch:
                self.handoff.offer(batch)


@dataclass
class Periodic:
    """A task of the main loop; `every` is read each time, so a reload can change it."""

    every: Callable[[], float]
    run: Callable[[], object]   # what it returns is not used
    due: float = 0.0


def main_loop(handoff: Handoff, process: Callable[[list[Record]], None], tasks: list[Periodic],
              after_each: Callable[[], None], stop: threading.Event, duration_s: float | None) -> None:
    """Process batches and run due tasks until `stop` is set or `duration_s` has passed."""
    start = time.monotonic()
    deadline = None if duration_s is None else start + duration_s
    for task in tasks:
        task.due = start + task.every()
    next_due = min(task.due for task in tasks)
    while not stop.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        batch = handoff.take(next_due - now)
        if batch is not None:
            process(batch)
        now = time.monotonic()
        if now >= next_due:
            for task in tasks:
                if now >= task.due:
                    task.due = now + task.every()
                    task.run()
            next_due = min(task.due for task in tasks)
        after_each()
