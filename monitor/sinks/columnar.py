"""The columnar sink: a Parquet segment of each NDJSON events file once it is closed.

When the NDJSON sink rotates `events-<start>-<n>.ndjson`, this sink writes
`events-<start>-<n>.parquet` beside it (`monitor.replay.columnar`: the
connection events, zstd, flat ECS-named columns) for `analyze` and for
analysts' DuckDB or pandas queries. It converts closed files rather than
writing a second copy of each event as it comes:

- the NDJSON file stays the one source of truth, so a crash or kill loses
  nothing NDJSON keeps: a segment is written to `.NAME.tmp`, fsync'd and
  renamed, so it is whole or absent; a leftover `.tmp` is deleted and every
  closed file without a segment is converted at the next start;
- the agent's per-event path does no extra work, and the conversion runs in a
  child process at nice 10 (`python -m monitor.replay.columnar --serve`), so
  its DuckDB scan never adds to the agent's memory; the child converts file
  after file and ends once idle for `LINGER_S` (starting one costs about 0.8
  s of CPU for its imports, about as much as converting a 64 MiB file, and a
  relay at full rate fills one every few seconds);
- a segment holds exactly what `analyze` reads from its twin, so alerts from
  either are the same.

The files of the directory are looked at every `CHECK_EVERY_S` (and at
`flush()`): every `events-*.ndjson` but the current one (the target of the
`events.ndjson` symlink) without a segment at least as new gets one. A file
that cannot be converted is reported once, in one line naming it, and
tried again only when it changes; the other files go on. Retention is the
NDJSON sink's: a segment goes when its twin is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..children import python_child
from ..events import Record
from ..replay.periods import is_ndjson, segment_of, twin_of
from ..settings import setting
from .base import ErrorCallback, ErrorReporter, SinkStats

CHECK_EVERY_S = 2.0
LINGER_S = 30.0   # a converter child idle this long ends (its memory goes back; the next file starts another)


@dataclass(slots=True)
class ColumnarConfig:
    enabled: bool = True
    compression_level: int = setting(3, minimum=1, maximum=22)          # zstd level of the segments
    convert_timeout_s: float = setting(600.0, above=0)                  # a conversion running longer is stopped


@dataclass(slots=True)
class Converted:
    """What the sink made and removed since start."""

    segments: int = 0
    failed: int = 0         # conversions that failed (their events stay in the NDJSON file)
    retired: int = 0
    children: int = 0       # converter children started


class ColumnarSink:
    """Parquet segments of the closed NDJSON events files of `directory`."""

    def __init__(self, config: ColumnarConfig, directory: Path, on_error: ErrorCallback | None = None):
        self.config = config
        self.directory = Path(directory)
        self.converted = Converted()
        self._errors = ErrorReporter("sinks.columnar", on_error)
        self._stats = SinkStats()
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[int, int]] = {}     # file name -> (size, mtime_ns) it failed at
        self._child: subprocess.Popen | None = None
        self._child_errors: IO[bytes] | None = None   # the child's stderr, read when it dies
        self._idle_since = 0.0
        self._errors_from = 0   # where in `_child_errors` the current file's messages start
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink-columnar", daemon=True)
        self._thread.start()

    def write(self, record: Record) -> None:
        """Nothing: segments are made from the NDJSON files once closed."""

    def write_all(self, records: list[Record]) -> None:
        """Nothing, in one call for a batch."""

    def flush(self) -> None:
        """Look for closed files now (the conversion itself runs in the sink's thread)."""
        self._wake.set()

    def close(self) -> None:
        """Stop the thread; a conversion under way is stopped (its file is converted at the next start)."""
        self._stop.set()
        self._wake.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        self._thread.join(timeout=10)
        self._end_child()
        self._errors.emit_due(force=True)

    @property
    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(**self._stats.as_dict())

    def _run(self) -> None:
        self.remove_leftovers()
        while not self._stop.is_set():
            self.convert_closed()
            self.prune()
            if self._child is not None and time.monotonic() - self._idle_since > LINGER_S:
                self._end_child()
            self._errors.emit_due()
            self._wake.wait(CHECK_EVERY_S)
            self._wake.clear()

    def remove_leftovers(self) -> None:
        """Delete the `.tmp` segments a crash or kill left half-written."""
        for tmp in self.directory.glob(".events-*.parquet.tmp"):
            try:
                tmp.unlink()
            except OSError as exc:
                self._errors.add(f"cannot delete {tmp}: {exc.strerror or exc}")

    def pending(self) -> list[Path]:
        """Closed events files without an up-to-date segment, oldest name first."""
        current = self._current()
        found = []
        for path in sorted(self.directory.glob("events-*")):
            if not is_ndjson(path) or path.name == current:
                continue
            try:
                info = path.stat()
                segment = segment_of(path).stat().st_mtime_ns if segment_of(path).exists() else None
            except OSError:
                continue
            if segment is not None and segment >= info.st_mtime_ns:
                continue
            if self._failed.get(path.name) == (info.st_size, info.st_mtime_ns):
                continue
            found.append(path)
        return found

    def _current(self) -> str | None:
        try:
            return os.readlink(self.directory / "events.ndjson")
        except OSError:
            return None

    def convert_closed(self) -> None:
        for path in self.pending():
            if self._stop.is_set():
                return
            self.convert(path)

    def convert(self, path: Path) -> None:
        """Write `path`'s segment in the child; a failure is reported in one line naming the file."""
        try:
            info = path.stat()
        except OSError as exc:
            self._failure(path, None, f"{path}: cannot convert: {exc.strerror or exc}")
            return
        try:
            reply = self._ask(path)
        except subprocess.TimeoutExpired:
            self._end_child(kill=True)
            self._failure(path, info, f"{path}: conversion stopped after {self.config.convert_timeout_s:g}s")
            return
        except (OSError, ValueError) as exc:   # ValueError: the child ended, or answered what is not JSON
            message = self._child_death(path) or f"{path}: cannot convert: {getattr(exc, 'strerror', None) or exc}"
            self._end_child(kill=True)
            if not self._stop.is_set():
                self._failure(path, info, message)
            return
        finally:
            self._idle_since = time.monotonic()
        if "error" in reply:
            self._failure(path, info, str(reply["error"]))
            return
        self._failed.pop(path.name, None)
        with self._lock:
            self._stats.written += int(reply["connections"])
        self.converted.segments += 1

    def _ask(self, path: Path) -> dict:
        """The child's answer for `path` (a child started if none runs); ValueError if it ended instead."""
        child = self._running_child()
        self._errors_from = self._child_errors.seek(0, os.SEEK_END)   # what the child says of this file only
        child.stdin.write(json.dumps(str(path.absolute())) + "\n")
        child.stdin.flush()
        answer = select.poll()
        answer.register(child.stdout, select.POLLIN)
        if not answer.poll(self.config.convert_timeout_s * 1000):
            raise subprocess.TimeoutExpired(child.args, self.config.convert_timeout_s)
        line = child.stdout.readline()
        if not line:
            raise ValueError("the conversion child ended")
        reply = json.loads(line)
        if not isinstance(reply, dict) or not (isinstance(reply.get("error"), str)
                                               or isinstance(reply.get("connections"), int)):
            raise ValueError(f"unexpected answer from the conversion child: {line.strip()[:200]}")
        return reply

    def _running_child(self) -> subprocess.Popen:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._end_child()
        self._child_errors = tempfile.TemporaryFile()
        self._child = python_child(
            ["-m", "monitor.replay.columnar", "--serve", str(self.config.compression_level)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._child_errors, text=True)
        self.converted.children += 1
        if self._stop.is_set():             # close() came after its check of the child
            self._child.terminate()
        return self._child

    def _child_death(self, path: Path) -> str | None:
        """The last line the child wrote to stderr, if it ended (a crash's traceback names its cause)."""
        child, errors = self._child, self._child_errors
        if child is None or errors is None:
            return None
        try:
            child.wait(timeout=2)   # its output ends a moment before the process does
        except subprocess.TimeoutExpired:
            return None
        errors.seek(self._errors_from)
        lines = errors.read().decode(errors="replace").strip().splitlines()
        return f"{path}: conversion child exited {child.returncode}" + (f": {lines[-1]}" if lines else "")

    def _end_child(self, kill: bool = False) -> None:
        """End the child: at once (`kill`), or by closing its input and waiting a little."""
        child, self._child = self._child, None
        if child is not None:
            try:
                if kill:
                    child.kill()
                else:
                    child.stdin.close()
                child.wait(timeout=5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                child.kill()
                child.wait()
            for pipe in (child.stdin, child.stdout):
                with contextlib.suppress(OSError):   # a dead child's stdin: what is buffered cannot go
                    pipe.close()
        if self._child_errors is not None:
            self._child_errors.close()
            self._child_errors = None

    def _failure(self, path: Path, info: os.stat_result | None, message: str) -> None:
        if info is not None:
            self._failed[path.name] = (info.st_size, info.st_mtime_ns)
        self.converted.failed += 1
        self._errors.add(message)

    def prune(self) -> None:
        """Delete the segments whose NDJSON twin retention (or anyone) deleted."""
        for segment in self.directory.glob("events-*.parquet"):
            if twin_of(segment) is not None:
                continue
            try:
                segment.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._errors.add(f"retention cannot delete {segment}: {exc.strerror or exc}")
                continue
            self.converted.retired += 1
