"""A durable disk spool: lines not yet acknowledged by the server, on disk.

Segment files `segment-<n>.spool` hold one line per document; the file
`acked` holds `<segment> <byte offset>` of the first unacknowledged line,
replaced atomically after every acknowledged batch. After a restart
(even a SIGKILL) the spool resumes from there: lines sent but not yet
recorded as acked are sent again, which `op_type: create` makes harmless.

The spool is bounded (`max_bytes`): when it is over, whole oldest segments
are deleted and the number of lines lost is returned to the caller, who
reports it. `append()` is one `write(2)` to the page cache (it survives a
crash of the process); `sync()` fsyncs the segment and the ack file.

An `acked` file that does not name a line start of a segment on disk (torn,
edited, negative) is moved aside as `acked.corrupt` and the spool resumes
from the start of its oldest segment: documents may be sent twice (the
server's `create` drops the second copy), none is skipped. `repaired_ack`
says it happened, for the sink to report.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import open_append_fd

_SEGMENT = re.compile(r"^segment-(\d{10})\.spool$")


@dataclass(slots=True)
class SpoolBatch:
    segment: int
    start: int
    end: int
    lines: list[bytes]    # without the newline


def _line_start(data: bytes, offset: int) -> bool:
    return offset == 0 or (0 < offset <= len(data) and data[offset - 1:offset] == b"\n")


class DiskSpool:
    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 2 or 4096))
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[int, int] = {}      # segment -> bytes
        self._lines: dict[int, int] = {}      # segment -> lines not yet acked
        self.recovered_partial = 0
        self.repaired_ack = False
        self._ack_seg, self._ack_off = self._read_ack()
        self._load()
        self._write_seg = max(self._sizes, default=self._ack_seg - 1) + 1
        self._write_seg = max(self._write_seg, 1)
        self._fd = self._open_segment(self._write_seg)
        if self._ack_seg not in self._sizes:
            self._ack_seg, self._ack_off = min(self._sizes), 0
        self._total = sum(self._sizes.values())
        self._pending = sum(self._lines.values())
        self._skip_finished()
        self._read_seg, self._read_off = self._ack_seg, self._ack_off   # next line to hand out

    # -- paths and startup --------------------------------------------------

    def _path(self, seg: int) -> Path:
        return self.directory / f"segment-{seg:010d}.spool"

    def _read_ack(self) -> tuple[int, int]:
        path = self.directory / "acked"
        try:
            seg, off = path.read_text().split()
            return int(seg), int(off)
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, UnicodeDecodeError):
            self._quarantine_ack()
            return 0, 0

    def _load(self) -> None:
        segments = sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT.match(p.name)))
        if segments and self._ack_seg > segments[-1]:   # names a segment never written: trust none of it
            self._quarantine_ack()
            self._ack_seg = segments[0]
        for seg in segments:
            path = self._path(seg)
            if seg < self._ack_seg:
                path.unlink(missing_ok=True)
                continue
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                # a line cut by a crash mid-write: drop the fragment
                data = data[: data.rfind(b"\n") + 1]
                os.truncate(path, len(data))
                self.recovered_partial += 1
            if seg == self._ack_seg and not _line_start(data, self._ack_off):
                self._quarantine_ack()
            start = self._ack_off if seg == self._ack_seg else 0
            self._sizes[seg] = len(data)
            self._lines[seg] = data.count(b"\n", start)

    def _quarantine_ack(self) -> None:
        """The ack names no line start: keep the file for a look, resume from the segment's start."""
        os.replace(self.directory / "acked", self.directory / "acked.corrupt")
        self._ack_off = 0
        self.repaired_ack = True

    def _open_segment(self, seg: int) -> int:
        fd = open_append_fd(self._path(seg))
        self._sizes.setdefault(seg, 0)
        self._lines.setdefault(seg, 0)
        return fd

    # -- writer side --------------------------------------------------------

    def append(self, line: bytes) -> int:
        """Append one line (ending in a newline); returns lines dropped to stay in bounds."""
        with self._lock:
            if self._sizes[self._write_seg] >= self.segment_bytes:
                os.close(self._fd)
                self._write_seg += 1
                self._fd = self._open_segment(self._write_seg)
            view, done = memoryview(line), 0
            try:
                while done < len(line):
                    done += os.write(self._fd, view[done:])
            except OSError:
                if done:   # never leave a fragment the next line would be glued to
                    os.ftruncate(self._fd, self._sizes[self._write_seg])
                raise
            self._sizes[self._write_seg] += len(line)
            self._lines[self._write_seg] += 1
            self._pending += 1
            self._total += len(line)
            return self._enforce_bound() if self._total > self.max_bytes else 0

    def _enforce_bound(self) -> int:
        dropped = 0
        while self._total > self.max_bytes and len(self._sizes) > 1:
            oldest = min(self._sizes)
            lost = self._lines.pop(oldest)
            dropped += lost
            self._pending -= lost
            self._total -= self._sizes.pop(oldest)
            self._path(oldest).unlink(missing_ok=True)
            if self._ack_seg <= oldest:
                self._ack_seg, self._ack_off = min(self._sizes), 0
        return dropped

    # -- reader side --------------------------------------------------------

    def read_batch(self, max_items: int, max_bytes: int) -> SpoolBatch | None:
        """The next lines not yet handed out; None when there are none (yet).

        Batches are handed out in order and must be acked in that order;
        `rewind()` hands out everything unacknowledged again.
        """
        while True:
            with self._lock:
                if self._read_seg not in self._sizes:       # dropped to stay in bounds
                    self._read_seg, self._read_off = self._ack_seg, self._ack_off
                seg, off = self._read_seg, self._read_off
                if off >= self._sizes[seg]:
                    if seg >= self._write_seg:
                        return None
                    self._read_seg, self._read_off = min(s for s in self._sizes if s > seg), 0
                    continue
            try:
                data, cut = self._read_lines(seg, off, max_bytes)
            except FileNotFoundError:
                continue
            if cut < 0:
                return None
            lines = data[:cut].split(b"\n")[:max_items]
            end = off + sum(len(x) + 1 for x in lines)
            with self._lock:
                if (self._read_seg, self._read_off) == (seg, off):
                    self._read_off = end
            return SpoolBatch(seg, off, end, lines)

    def rewind(self) -> None:
        """Hand out again from the first unacknowledged line."""
        with self._lock:
            self._read_seg, self._read_off = self._ack_seg, self._ack_off

    def _read_lines(self, seg: int, off: int, max_bytes: int) -> tuple[bytes, int]:
        """Bytes from `off` holding at least one whole line if there is one; index of the last newline."""
        with open(self._path(seg), "rb") as fh:
            want = max_bytes
            while True:
                fh.seek(off)
                data = fh.read(want)
                cut = data.rfind(b"\n")
                if cut >= 0 or len(data) < want:
                    return data, cut
                want *= 2

    def _finish_segment(self, seg: int) -> None:
        self._total -= self._sizes.pop(seg)
        self._pending -= self._lines.pop(seg, 0)
        self._path(seg).unlink(missing_ok=True)
        self._ack_seg, self._ack_off = min(self._sizes), 0

    def ack(self, batch: SpoolBatch) -> None:
        """Mark a batch delivered: the oldest batch handed out and not yet acked."""
        with self._lock:
            self._skip_finished()
            if batch.segment != self._ack_seg or batch.start != self._ack_off:
                return   # its segment was dropped to stay in bounds meanwhile
            self._ack_off = batch.end
            self._lines[batch.segment] -= len(batch.lines)
            self._pending -= len(batch.lines)
            self._skip_finished()
            self._write_ack()

    def _skip_finished(self) -> None:
        """Delete fully acknowledged segments the writer has left; the ack moves to the next."""
        while self._ack_off >= self._sizes[self._ack_seg] and self._ack_seg < self._write_seg:
            self._finish_segment(self._ack_seg)

    def _write_ack(self) -> None:
        tmp = self.directory / "acked.tmp"
        tmp.write_text(f"{self._ack_seg} {self._ack_off}\n")
        os.replace(tmp, self.directory / "acked")

    # -- state --------------------------------------------------------------

    @property
    def read_position(self) -> tuple[int, int]:
        """(segment, offset) of the next line to hand out: everything before was handed out."""
        with self._lock:
            return self._read_seg, self._read_off

    @property
    def end_position(self) -> tuple[int, int]:
        """(segment, offset) just past the last line appended."""
        with self._lock:
            return self._write_seg, self._sizes[self._write_seg]

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return self._total - self._ack_off

    def sync(self) -> None:
        """fsync the segment being written, the ack file and the directory."""
        with self._lock:
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for path in (self.directory / "acked", self.directory):
            if path.exists():
                dfd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)

    def wait_empty(self, acked: threading.Condition, wake: threading.Event, timeout_s: float) -> bool:
        """Wait (bounded) until every line is acknowledged: `acked` is notified by the shipper after
        each ack, `wake` is set to hurry it. False on timeout."""
        deadline = time.monotonic() + timeout_s
        wake.set()
        with acked:
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                acked.wait(min(left, 0.1))
                wake.set()
        return True

    def close(self) -> None:
        self.sync()
        with self._lock:
            os.close(self._fd)
