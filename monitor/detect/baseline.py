"""The learned state of the detectors: `Baseline`, persisted as compact JSON.

Each listener learns for its own learning period from the moment the agent
started watching it (`watch`; a listener never watched explicitly learns
from the watch start, `learning_start_ns`): its sources' peak connection
counts per window, its own peak, and the source prefixes seen on it; once
that period is over its peer peak (a quantile over its sources) is computed
(`source_rate_baseline`). The first learning period (from the watch start)
also learns each source's peak of short sessions; `finish_learning` ends it
and caps the size (`max_tracked`, least recently seen out). Sources flagged
(`taint`) are forgotten and never learned again. It is saved atomically so a
restarted agent does not learn again.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from ..errors import InputError
from .config import DetectConfig

FORMAT = "socat-monitor-baseline"
VERSION = 1


@dataclass
class Baseline:
    windows: dict[str, float] = field(default_factory=dict)
    learning_start_ns: int | None = None
    learning_end_ns: int | None = None
    complete: bool = False
    source_rate: dict[tuple[int, str], int] = field(default_factory=dict)   # (listener, ip) -> peak
    source_distinct: dict[str, int] = field(default_factory=dict)           # ip -> peak distinct listeners
    source_short: dict[str, int] = field(default_factory=dict)              # ip -> peak short sessions
    source_last_ns: dict[str, int] = field(default_factory=dict)            # ip -> last seen while learning
    listener_rate: dict[int, int] = field(default_factory=dict)             # listener -> peak
    peer_rate: dict[int, float] = field(default_factory=dict)               # listener -> peer peak
    seen: dict[int, dict[str, int]] = field(default_factory=dict)           # listener -> prefix -> first ns
    listener_learning: dict[int, tuple[int, int]] = field(default_factory=dict)   # listener -> (start, end) ns
    listener_done: set[int] = field(default_factory=set)                    # listeners whose peer peak is set
    tainted: dict[str, int] = field(default_factory=dict)                   # source key -> flagged since (ns)
    path: str | None = field(default=None, compare=False)                   # the file it was loaded from
    generation: int = field(default=0, compare=False)                       # counts prunes (for caches)

    @classmethod
    def for_config(cls, config: DetectConfig) -> "Baseline":
        return cls(windows=config.windows())

    def check_config(self, config: DetectConfig, where: str) -> None:
        """A baseline learned with other windows cannot be compared with these."""
        if self.windows and self.windows != config.windows():
            changed = sorted(k for k in config.windows() if self.windows.get(k) != config.windows()[k])
            raise InputError(self.path or where, f"baseline was learned with other windows ({', '.join(changed)}); "
                             "delete it to learn again")
        self.windows = config.windows()

    def start_learning(self, first_ns: int, config: DetectConfig) -> None:
        if self.learning_start_ns is None:
            self.learning_start_ns = first_ns
            self.learning_end_ns = first_ns + config.learning_period_ns

    def finish_learning(self, config: DetectConfig) -> None:
        """End the first learning period (per-source peaks): cap the size."""
        self.prune(config.max_tracked)
        self.complete = True

    def watch(self, listener: int, start_ns: int, config: DetectConfig) -> None:
        """The agent watches `listener` from `start_ns`: its learning period starts then (once)."""
        self.start_learning(start_ns, config)
        if listener not in self.listener_learning:
            self.listener_learning[listener] = (start_ns, start_ns + config.learning_period_ns)

    def start_listener(self, listener: int, config: DetectConfig) -> int:
        """A listener never watched explicitly learns from the watch start; the end of its learning, ns."""
        span = self.listener_learning.get(listener)
        if span is None:
            start = self.learning_start_ns
            span = self.listener_learning[listener] = (start, start + config.learning_period_ns)
        return span[1]

    def taint(self, key: str, t_ns: int) -> bool:
        """A flagged source (key): forget what was learned of it where learning is still going on (what
        a finished period learned stays fixed), learn nothing of it from now. True if new."""
        if key in self.tainted:
            return False
        self.tainted[key] = t_ns
        if self.learning_end_ns is None or t_ns < self.learning_end_ns:
            self.source_short.pop(key, None)
        for entry in [k for k in self.source_rate if k[1] == key]:   # a baseline learned before stays fixed
            span = self.listener_learning.get(entry[0])
            if span is None or t_ns < span[1]:
                del self.source_rate[entry]
        return True

    def listener_learning_end(self, listener: int) -> int | None:
        span = self.listener_learning.get(listener)
        return None if span is None else span[1]

    def source_rate_baseline(self, listener: int, ip: str, peer_quantile: float, peek: bool = False) -> float:
        """A source's learned peak on a listener that has finished learning: its own, or its peers'.
        The peer peak is fixed at the first call (`peek`: computed, not fixed)."""
        peer = self.peer_rate.get(listener, 0.0)
        if listener not in self.listener_done:
            peaks = [peak for (lst, _ip), peak in self.source_rate.items() if lst == listener]
            peer = float(np.quantile(np.asarray(peaks, dtype=np.float64), peer_quantile)) if peaks else 0.0
            if not peek:
                if peaks:
                    self.peer_rate[listener] = peer
                self.listener_done.add(listener)
        return float(max(self.source_rate.get((listener, ip), 0), peer))

    def add_seen(self, listener: int, prefix: str, t_ns: int) -> bool:
        """Record a prefix on a listener; True if it was new."""
        known = self.seen.setdefault(listener, {})
        if prefix in known:
            return False
        known[prefix] = t_ns
        return True

    def over(self, cap: int) -> bool:
        """More than twice the cap kept: time to prune (pruning in bulk keeps it cheap)."""
        return len(self.source_last_ns) > 2 * cap or sum(len(p) for p in self.seen.values()) > 2 * cap

    def prune(self, cap: int) -> None:
        """Keep at most `cap` sources (most recently seen) and `cap` prefixes (oldest out)."""
        if len(self.source_last_ns) > cap:
            keep = set(sorted(self.source_last_ns, key=lambda ip: (-self.source_last_ns[ip], ip))[:cap])
            self.source_last_ns = {ip: t for ip, t in self.source_last_ns.items() if ip in keep}
            self.source_rate = {k: v for k, v in self.source_rate.items() if k[1] in keep}
            self.source_distinct = {k: v for k, v in self.source_distinct.items() if k in keep}
            self.source_short = {k: v for k, v in self.source_short.items() if k in keep}
        if len(self.tainted) > cap:
            self.tainted = dict(sorted(self.tainted.items(), key=lambda kv: -kv[1])[:cap])
        total = sum(len(p) for p in self.seen.values())
        if total > cap:
            self.generation += 1
            ranked = sorted((t, listener, prefix) for listener, p in self.seen.items() for prefix, t in p.items())
            for _t, listener, prefix in ranked[: total - cap]:
                del self.seen[listener][prefix]

    def size(self) -> dict[str, int]:
        return {"sources": len(self.source_last_ns), "prefixes": sum(len(p) for p in self.seen.values()),
                "listeners": len(set(self.listener_rate) | set(self.seen))}

    def to_json(self) -> bytes:
        sources: dict[str, dict] = {}
        for ip, last in self.source_last_ns.items():
            sources[ip] = {"last_ns": last}
        for (listener, ip), peak in self.source_rate.items():
            sources.setdefault(ip, {}).setdefault("rate", {})[str(listener)] = peak
        for ip, peak in self.source_distinct.items():
            sources.setdefault(ip, {})["distinct"] = peak
        for ip, peak in self.source_short.items():
            sources.setdefault(ip, {})["short"] = peak
        listeners: dict[str, dict] = {}
        for listener, peak in self.listener_rate.items():
            listeners.setdefault(str(listener), {})["rate_peak"] = peak
        for listener, peer in self.peer_rate.items():
            listeners.setdefault(str(listener), {})["peer_rate"] = peer
        for listener, prefixes in self.seen.items():
            listeners.setdefault(str(listener), {})["seen"] = prefixes
        for listener, (start, end) in self.listener_learning.items():
            listeners.setdefault(str(listener), {})["learning"] = {
                "start_ns": start, "end_ns": end, "complete": listener in self.listener_done}
        return orjson.dumps({
            "format": FORMAT,
            "version": VERSION,
            "windows": self.windows,
            "learning": {"start_ns": self.learning_start_ns, "end_ns": self.learning_end_ns,
                         "complete": self.complete},
            "listeners": listeners,
            "sources": sources,
            "tainted": self.tainted,
        })

    def save(self, path: str | os.PathLike) -> None:
        """Atomic: a temporary file in the same directory, fsynced, renamed over."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Baseline":
        """Read a saved baseline; InputError naming the file if it is not one."""
        where = str(path)
        try:
            data = orjson.loads(Path(path).read_bytes())
        except OSError as exc:
            raise InputError(where, f"cannot read baseline: {exc.strerror or exc}") from None
        except orjson.JSONDecodeError as exc:
            raise InputError(where, f"corrupt baseline (not JSON: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(where, f"not a socat-monitor baseline (format is not {FORMAT!r})")
        if data.get("version") != VERSION:
            raise InputError(where, f"unsupported baseline version {data.get('version')!r}")
        try:
            base = cls._from_dict(data)
            base.path = where
            return base
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(where, f"corrupt baseline ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_dict(cls, data: dict) -> "Baseline":
        learning = data["learning"]
        base = cls(
            windows={str(k): float(v) for k, v in data["windows"].items()},
            learning_start_ns=_opt_int(learning["start_ns"]),
            learning_end_ns=_opt_int(learning["end_ns"]),
            complete=bool(learning["complete"]),
        )
        for port_text, entry in data["listeners"].items():
            port = int(port_text)
            if "rate_peak" in entry:
                base.listener_rate[port] = int(entry["rate_peak"])
            if "peer_rate" in entry:
                peer = float(entry["peer_rate"])
                if not math.isfinite(peer):
                    raise ValueError(f"listener {port}: peer_rate not finite")
                base.peer_rate[port] = peer
            if "seen" in entry:
                base.seen[port] = {str(p): int(t) for p, t in entry["seen"].items()}
            if "learning" in entry:
                span = entry["learning"]
                base.listener_learning[port] = (int(span["start_ns"]), int(span["end_ns"]))
                if span["complete"]:
                    base.listener_done.add(port)
            elif base.learning_start_ns is not None and base.learning_end_ns is not None:
                # a baseline saved before listeners learned on their own: they learned in the first period
                base.listener_learning[port] = (base.learning_start_ns, base.learning_end_ns)
                if base.complete:
                    base.listener_done.add(port)
        for ip, entry in data["sources"].items():
            if "last_ns" in entry:
                base.source_last_ns[ip] = int(entry["last_ns"])
            for port_text, peak in entry.get("rate", {}).items():
                base.source_rate[(int(port_text), ip)] = int(peak)
            if "distinct" in entry:
                base.source_distinct[ip] = int(entry["distinct"])
            if "short" in entry:
                base.source_short[ip] = int(entry["short"])
        base.tainted = {str(key): int(t) for key, t in data.get("tainted", {}).items()}
        return base


def _opt_int(value) -> int | None:
    return None if value is None else int(value)
