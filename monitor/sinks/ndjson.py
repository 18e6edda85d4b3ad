"""The NDJSON sink: ECS documents in local files, the embedded default.

Layout of the output directory (one sink per directory):

    events-<start>-<n>.ndjson   connections, processes, blocks, pipeline errors, heartbeats
    alerts-<start>-<n>.ndjson   alerts (event.kind "alert": policy, audit, anomaly)
    events.ndjson, alerts.ndjson  symlinks to the current file of each stream

`<start>` is the sink's start time (UTC, `20261125T221700Z`), `<n>` counts
rotations from 1. A file is rotated once it exceeds `rotate_bytes`; the
symlink is swapped atomically, so `tail -F events.ndjson` follows rotation.

Retention: closed files older than `retention_age_s`, then the oldest closed
files while the directory's files together pass `retention_bytes`, are
deleted (at start, after each rotation and every minute; 0 turns a bound
off). What was deleted is logged and counted in `NdjsonSink.retired`.

`write()` encodes the record (`ecs.encode`) and appends to an in-memory buffer (bounded by
`max_buffer_bytes`; beyond it the oldest lines are dropped and reported). A
flusher thread writes buffered lines every `flush_interval_s`, fsyncs on
rotation and close. A disk fault never crashes the agent: the failed lines
stay buffered and are retried, a partially written line is cut off, and the
fault is reported as a PipelineError.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path


from ..ecs import HostInfo, encode
from ..events import Alert, Record
from ..files import GROUP_READABLE, open_append_fd
from ..settings import setting
from .base import ErrorCallback, ErrorReporter, SinkStats

log = logging.getLogger(__name__)

STREAMS = ("events", "alerts")
PRUNE_EVERY_S = 60.0


@dataclass(slots=True)
class Retired:
    """Files retention deleted since start."""

    files: int = 0
    bytes: int = 0


@dataclass(slots=True)
class NdjsonConfig:
    directory: Path
    rotate_bytes: int = setting(64 * 1024 * 1024, minimum=1024)
    flush_interval_s: float = setting(0.2, minimum=0.01, maximum=1.0)
    max_buffer_bytes: int = 64 * 1024 * 1024
    retention_bytes: int = setting(4 * 1024 * 1024 * 1024, minimum=0)   # every NDJSON file together; 0: no bound
    retention_age_s: float = setting(30 * 86400.0, minimum=0)          # closed files older are deleted; 0: no bound

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)


def stream_of(record: Record) -> str:
    return "alerts" if isinstance(record, Alert) else "events"


def retention_victims(config: NdjsonConfig, current: set[str], now_s: float) -> tuple[list[tuple[Path, int]], int]:
    """(path, size) of the closed files retention deletes, oldest first, and the bytes kept."""
    files = []
    for stream in STREAMS:
        for path in config.directory.glob(f"{stream}-*.ndjson"):
            try:
                info = path.lstat()
            except OSError:
                continue
            files.append((info.st_mtime, path, info.st_size))
    files.sort()
    total = sum(size for _, _, size in files)
    doomed = []
    for mtime, path, size in files:
        if path.name in current:
            continue
        too_old = config.retention_age_s and now_s - mtime > config.retention_age_s
        too_big = config.retention_bytes and total > config.retention_bytes
        if not (too_old or too_big):
            continue
        doomed.append((path, size))
        total -= size
    return doomed, total


class RotatingFile:
    """One stream's current file: appends, rotates by size, keeps the symlink current."""

    def __init__(self, directory: Path, stream: str, start: str, rotate_bytes: int):
        self.directory = directory
        self.stream = stream
        self.start = start
        self.rotate_bytes = rotate_bytes
        self.number = 0
        self.fd: int | None = None
        self.size = 0

    @property
    def path(self) -> Path:
        return self.directory / f"{self.stream}-{self.start}-{self.number}.ndjson"

    def _open_next(self) -> None:
        self.number += 1
        self.fd = open_append_fd(self.path, GROUP_READABLE)
        self.size = os.fstat(self.fd).st_size
        link = self.directory / f"{self.stream}.ndjson"
        tmp = self.directory / f".{self.stream}.ndjson.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(self.path.name, tmp)
        os.replace(tmp, link)

    def write(self, data: bytes) -> None:
        """Append whole lines; on failure cut the file back to its last whole line and raise."""
        if self.fd is None:
            self._open_next()
        elif self.size and self.size + len(data) > self.rotate_bytes:
            self.close()
            self._open_next()
        assert self.fd is not None
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, view[done:])
        except OSError:
            if done:
                self._cut_back()
            raise
        self.size += len(data)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self.fd, self.size)
        except OSError:
            self.close(sync=False)

    def close(self, sync: bool = True) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)


class NdjsonSink:
    """ECS NDJSON files, events and alerts apart, flushed within `flush_interval_s`."""

    def __init__(self, config: NdjsonConfig, host: HostInfo, on_error: ErrorCallback | None = None):
        self.config = config
        self.host = host
        self._errors = ErrorReporter("sinks.ndjson", on_error)
        start = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._files = {s: RotatingFile(config.directory, s, start, config.rotate_bytes) for s in STREAMS}
        self._buffers: dict[str, collections.deque[bytes]] = {s: collections.deque() for s in STREAMS}
        self._buffered_bytes = 0
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._stats = SinkStats()
        self._oldest_ns: int | None = None
        self._stop = threading.Event()
        self._failing = False
        self.retired = Retired()
        self._next_prune = 0.0
        self._thread = threading.Thread(target=self._run, name="sink-ndjson", daemon=True)
        self._thread.start()

    def write(self, record: Record) -> None:
        self.write_all([record])

    def write_all(self, records: list[Record]) -> None:
        """Encode `records` and buffer their lines, in one taking of the lock; one that cannot be
        rendered is counted and reported, the others are written."""
        lines = []
        for record in records:
            try:
                lines.append((stream_of(record), encode(record, self.host)))
            except Exception as exc:
                with self._lock:
                    self._stats.failed += 1
                self._errors.add(f"cannot render {type(record).__name__}: {exc}")
        self.append_all(lines)

    def append(self, stream: str, line: bytes) -> None:
        """Buffer one encoded line (`encode`) of `stream` ("events" or "alerts")."""
        self.append_all([(stream, line)])

    def append_all(self, lines: list[tuple[str, bytes]]) -> None:
        """Buffer (stream, encoded line) pairs; beyond `max_buffer_bytes` the oldest lines go."""
        with self._lock:
            if self._oldest_ns is None and lines:
                self._oldest_ns = time.monotonic_ns()
            for stream, line in lines:
                buf = self._buffers[stream]
                buf.append(line)
                self._buffered_bytes += len(line)
                self._stats.pending += 1
                while self._buffered_bytes > self.config.max_buffer_bytes and buf:
                    self._buffered_bytes -= len(buf.popleft())
                    self._stats.pending -= 1
                    self._stats.dropped += 1
                    self._errors.add("output buffer full (disk too slow or failing): oldest lines dropped")

    def flush(self) -> None:
        """Write everything buffered now (the flusher does this every interval)."""
        with self._io_lock:
            for stream in STREAMS:
                self._drain(stream)

    def _drain(self, stream: str) -> None:
        with self._lock:
            buf = self._buffers[stream]
            if not buf:
                return
            lines = list(buf)
            buf.clear()
            self._buffered_bytes -= sum(map(len, lines))
        written = 0
        try:
            for count, data in self._chunks(stream, lines):
                self._files[stream].write(data)
                written += count
        except OSError as exc:
            rest = lines[written:]
            with self._lock:
                self._buffers[stream].extendleft(reversed(rest))
                self._buffered_bytes += sum(map(len, rest))
                self._count_written(written)
            if not self._failing:
                log.warning("ndjson sink: writing %s failed: %s", self._files[stream].directory, exc)
            self._failing = True
            self._errors.add(f"cannot write {self._files[stream].path}: {exc.strerror or exc}", len(rest))
            return
        self._failing = False
        with self._lock:
            self._count_written(written)

    def _count_written(self, count: int) -> None:
        self._stats.written += count
        self._stats.pending -= count
        self._oldest_ns = time.monotonic_ns() if self._stats.pending else None

    def _chunks(self, stream: str, lines: list[bytes]):
        """(line count, bytes) pieces that each fit the room left before rotation."""
        file = self._files[stream]
        room = file.rotate_bytes - file.size if file.fd is not None else file.rotate_bytes
        if sum(map(len, lines)) <= room:   # the common case: all of it fits, no loop over the lines
            yield len(lines), b"".join(lines)
            return
        chunk: list[bytes] = []
        for line in lines:
            if chunk and len(line) > room:
                yield len(chunk), b"".join(chunk)
                chunk, room = [], file.rotate_bytes
            chunk.append(line)
            room -= len(line)
        if chunk:
            yield len(chunk), b"".join(chunk)

    def _run(self) -> None:
        while not self._stop.wait(self.config.flush_interval_s):
            numbers = [f.number for f in self._files.values()]
            self.flush()
            if numbers != [f.number for f in self._files.values()] or time.monotonic() >= self._next_prune:
                self.prune()
            self._errors.emit_due()

    def prune(self) -> None:
        """Apply retention to the closed files of the directory (the open ones are never deleted)."""
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        with self._io_lock:
            current = {f.path.name for f in self._files.values() if f.fd is not None}
        doomed, kept_bytes = retention_victims(self.config, current, time.time())
        for path, size in doomed:
            try:
                path.unlink()
            except OSError as exc:
                self._errors.add(f"retention cannot delete {path}: {exc.strerror or exc}")
                continue
            self.retired.files += 1
            self.retired.bytes += size
        if doomed:
            log.info("ndjson retention: deleted %d file(s), %d bytes; %d bytes kept in %s",
                     len(doomed), sum(size for _, size in doomed), kept_bytes, self.config.directory)

    def close(self) -> None:
        """Flush, fsync and close the files; stop the flusher (bounded wait)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        with self._io_lock:
            for file in self._files.values():
                try:
                    file.close()
                except OSError as exc:
                    self._errors.add(f"cannot fsync {file.path}: {exc.strerror or exc}")
        with self._lock:
            lost = self._stats.pending
            if lost:
                self._stats.failed += lost
                self._stats.pending = 0
                self._errors.add("lines still unwritten at shutdown (disk failing)", lost)
        self._errors.emit_due(force=True)

    @property
    def stats(self) -> SinkStats:
        with self._lock:
            s = SinkStats(**self._stats.as_dict())
            if self._oldest_ns is not None:
                s.lag_s = (time.monotonic_ns() - self._oldest_ns) / 1e9
            return s

    @property
    def paths(self) -> dict[str, Path]:
        """The stable names to tail: `events.ndjson` and `alerts.ndjson`."""
        return {s: self.config.directory / f"{s}.ndjson" for s in STREAMS}
