"""The block state file: which blocks should be active, and until when.

It lets a restarted agent (or a rebuilt table) re-apply blocks that have
not expired yet. Every change is appended under a lock, so the agent and
`socat-monitor blocks` can both record changes without losing each other's;
the agent compacts it at start. Times are wall-clock nanoseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from typing import Iterator

from ..errors import InputError

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


class StateFile:
    """A journal of JSON lines (`{"add": {...}}` / `{"remove": "target"}`), appended
    under a lock (O(1) per block), compacted to the live entries on `replace`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock_fh = None
        self._append_fh = None

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
        try:
            fh = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return out
        with fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    if "add" in entry:
                        block = ActiveBlock(**entry["add"])
                        out[block.target] = block
                    elif "remove" in entry:
                        out.pop(entry["remove"], None)
                    else:
                        raise ValueError("neither 'add' nor 'remove'")
                except (ValueError, TypeError) as exc:
                    raise InputError(f"{self.path}:{lineno}", f"bad block state entry ({exc})") from None
        return out

    def _append(self, entries: list[dict]) -> None:
        """Append to the journal, reopening it if it was compacted (replaced) since."""
        fh = self._append_fh
        if fh is None or not os.path.exists(self.path) or os.fstat(fh.fileno()).st_ino != os.stat(self.path).st_ino:
            if fh is not None:
                fh.close()
            fh = self._append_fh = open(self.path, "a", encoding="utf-8")
        fh.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries))
        fh.flush()

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

    def upsert(self, blocks: list[ActiveBlock]) -> None:
        with self._locked():
            self._append([{"add": asdict(b)} for b in blocks])

    def remove(self, targets: list[str]) -> None:
        with self._locked():
            self._append([{"remove": t} for t in targets])
