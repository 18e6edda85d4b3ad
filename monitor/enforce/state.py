"""The block state file: which blocks should be active, and until when.

It lets a restarted agent (or a rebuilt table) re-apply blocks that have
not expired yet. Every change is appended under a lock and synced to disk,
so the agent and `socat-monitor blocks` can both record changes without
losing each other's; the agent compacts it at start. A line that cannot be
read (torn by a crash mid-write, or damaged) never stops the agent: it is
moved to `<file>.bad` with its line number and counted in `bad_lines`, and
the other blocks are restored. Times are wall-clock nanoseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence, Union

from ..files import open_append


@dataclass(frozen=True, slots=True)
class ActiveBlock:
    """A block that should be in the kernel until `expires_ns` (wall clock)."""

    target: str
    expires_ns: int
    ttl_s: float
    created_ns: int
    rule_id: str | None = None
    alert_id: str | None = None

    def remaining_s(self, now_ns: int) -> float:
        return max((self.expires_ns - now_ns) / 1e9, 0.0)


Change = Union[ActiveBlock, str]   # one journal entry: a block added (or refreshed), or the target of one removed


def _apply(entry: dict, blocks: dict[str, ActiveBlock]) -> None:
    """One journal entry applied to the blocks it builds up; ValueError/TypeError when it is not one."""
    if "add" in entry:
        block = ActiveBlock(**entry["add"])
        blocks[block.target] = block
    elif "remove" in entry:
        blocks.pop(entry["remove"], None)
    else:
        raise ValueError("neither 'add' nor 'remove'")


class StateFile:
    """A journal of JSON lines (`{"add": {...}}` / `{"remove": "target"}`), appended
    under a lock (O(1) per block), compacted to the live entries on `replace`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock_fh = None
        self._append_fh = None
        self.bad_lines = 0   # unreadable lines set aside (since start)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fh is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._lock_fh = open(self.path + ".lock", "a+")
        fcntl.flock(self._lock_fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)

    def _read(self) -> dict[str, ActiveBlock]:
        out: dict[str, ActiveBlock] = {}
        bad: list[str] = []
        try:
            fh = open(self.path, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return out
        with fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    _apply(json.loads(line), out)
                except (ValueError, TypeError, AttributeError) as exc:
                    bad.append(f"{lineno}\t{exc}\t{line.rstrip()}\n")
        if bad:
            self._set_aside(bad)
        return out

    def _set_aside(self, lines: list[str]) -> None:
        """Keep unreadable lines for a look in `<file>.bad` (the agent's compaction at start drops them)."""
        with open_append(f"{self.path}.bad") as fh:
            fh.write("".join(lines).encode())
        self.bad_lines += len(lines)

    def _append(self, entries: list[dict]) -> None:
        """Append to the journal, reopening it if it was compacted (replaced) since."""
        fh = self._append_fh
        if fh is None or not os.path.exists(self.path) or os.fstat(fh.fileno()).st_ino != os.stat(self.path).st_ino:
            if fh is not None:
                fh.close()
            fh = self._append_fh = open(self.path, "a", encoding="utf-8")
        fh.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries))
        fh.flush()
        os.fdatasync(fh.fileno())   # a block the kernel holds is on disk before the agent goes on

    def close(self) -> None:
        for fh in (self._append_fh, self._lock_fh):
            if fh is not None:
                fh.close()
        self._append_fh = self._lock_fh = None

    def load(self, now_ns: int) -> list[ActiveBlock]:
        """Blocks still active at `now_ns` (expired ones are left out)."""
        with self._locked():
            return [b for b in self._read().values() if b.expires_ns > now_ns]

    def replace(self, blocks: list[ActiveBlock]) -> None:
        """Compact: the file becomes exactly these blocks (atomic rename)."""
        with self._locked():
            tmp = f"{self.path}.tmp.{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write("".join(json.dumps({"add": asdict(b)}, separators=(",", ":")) + "\n" for b in blocks))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def record(self, changes: Sequence[Change]) -> None:
        """Append changes in their order, synced: a block added (or refreshed), or a target (its block removed)."""
        with self._locked():
            self._append([{"add": asdict(c)} if isinstance(c, ActiveBlock) else {"remove": c} for c in changes])
