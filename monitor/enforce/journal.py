"""The block journal's writer: the enforcer's changes appended and synced off the thread that blocks.

A block is in force once the kernel acknowledges its element; the journal
only lets a restart re-apply it. Written on the blocking thread, the
journal's lock, append and fdatasync were most of a block's cost (1-2 ms)
and, when the disk is busy with other files' writeback, held single blocks
up for 50-270 ms. Here one thread takes the changes in the order they were
queued, appends every change waiting in one write and syncs once (a group
commit), so a block costs its netlink transaction only.

What a crash leaves, for a block whose element the kernel acknowledged:
- the agent dies before the writer appended its line: the kernel still
  holds the element, and the restart's reconcile (`Enforcer.start`) keeps
  every block element of the kernel with its remaining timeout and writes it
  to the compacted journal (its rule and alert ids are not known then);
- the agent dies after the append, before or during the sync: the line is
  in the page cache, so the file read at restart has it;
- the host itself goes down (power, kernel panic) before the sync ends: the
  kernel's element is gone with it and the journal may lack the line, as
  when the sync ran on the blocking thread; the window is the time the
  change waits here plus the sync (1-2 ms on a quiet disk).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Sequence

from .state import Change, StateFile

CLOSE_WAIT_S = 10.0   # how long closing waits for changes still queued (a disk that hangs must not hang the exit)


class JournalWriter:
    """Appends the changes queued by `record` to a `StateFile`, in order, group-committed."""

    def __init__(self, state: StateFile, on_error: Callable[[OSError], None]) -> None:
        self._state = state
        self._on_error = on_error
        self._queue: queue.SimpleQueue[Sequence[Change] | None] = queue.SimpleQueue()
        self._done = threading.Condition()
        self._queued = 0    # changes handed to `record`
        self._written = 0   # of those, appended and synced (or failed and reported)
        self._thread: threading.Thread | None = None

    def record(self, changes: Sequence[Change]) -> None:
        """Queue changes for the journal (cheap: the caller never waits for the disk)."""
        if not changes:
            return
        with self._done:
            self._queued += len(changes)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="enforce-journal", daemon=True)
                self._thread.start()
        self._queue.put(changes)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every change queued so far is on disk; False if that took longer than `timeout_s`."""
        with self._done:
            target = self._queued
            return self._done.wait_for(lambda: self._written >= target, timeout_s)

    def close(self) -> bool:
        """Write what is queued (waiting `CLOSE_WAIT_S` at most) and end the thread; False if some was not."""
        with self._done:
            thread = self._thread
        if thread is None:
            return True
        written = self.flush(CLOSE_WAIT_S)
        self._queue.put(None)
        thread.join(1.0 if written else 0.0)
        with self._done:
            if not thread.is_alive():
                self._thread = None   # a change recorded after this starts a new one
        return written

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = list(first), False
            while not stop:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    group.extend(more)
            self._write(group)
            if stop:
                return

    def _write(self, group: list[Change]) -> None:
        try:
            self._state.record(group)
        except OSError as exc:
            self._on_error(exc)
        except Exception as exc:   # noqa: BLE001 - the writer must outlive any fault, or every flush would hang
            self._on_error(OSError(f"{type(exc).__name__}: {exc}"))
        finally:
            with self._done:
                self._written += len(group)
                self._done.notify_all()
