"""The detector engine: each anomaly rule, written once, over columnar rows.

`BatchEngine.process(rows)` takes connection rows in arrival order (a file
chunk offline; live, what `Detector` observed since it last flushed) and
runs every rule over them: it counts every key's events in its sliding
window with numpy (count of the key's rows whose time slot lies in
`[slot - K + 1, slot]`, up to and including the row) and raises an alert at
the first row whose count reaches the rule's threshold, once per rule and key
per cooldown. `run` (through `Detector`) and `analyze` execute this same code;
the live detector only decides when to run it early.

Each row is judged in two phases:

1. the rules that need no baseline (scan's distinct listeners,
   refused_burst), and the rate rules on rows whose listener still learns
   (their floor is the threshold). A key reaching its threshold is *flagged*
   (`Baseline.taint`): what was learned of it is forgotten and nothing more is.
2. learning from the unflagged rows that stayed below the floor, then the
   rate rules on the rows of listeners that have learned (their learned peak
   times the factor, never below the floor).

Between batches it keeps a compressed context: the rows of the longest
window (summed per key and slot), so a window spanning two batches counts
exactly what one big batch would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..events import Alert
from ..rules import repeat_alert
from .baseline import Baseline
from .config import DetectConfig, rate_threshold
from .groups import distinct_ports, first_of_pairs, group_max, group_min, group_sum, ports_lookup, sorted_groups
from .rows import IpTable, Rows
from .rules import LISTENER_RATE, NEW_SOURCE, REFUSED_BURST, SCAN, SOURCE_RATE, build_alert, describe_rate

_COLS = ("t", "slot", "lst", "src", "key", "dst", "start", "refused", "short", "w", "new", "row", "learn", "first")
_NEVER = np.iinfo(np.int64).max
_LOW32 = 0xFFFFFFFF


@dataclass
class _Frame:
    """Context rows followed by the new rows of one batch."""

    t: np.ndarray
    slot: np.ndarray
    lst: np.ndarray
    src: np.ndarray     # address code
    key: np.ndarray     # source key code (the address, or its IPv6 /64)
    dst: np.ndarray
    start: np.ndarray
    refused: np.ndarray
    short: np.ndarray
    w: np.ndarray       # weight: 1, or the number of context rows summed into this one
    new: np.ndarray     # bool: a row of this batch (context rows raise nothing)
    row: np.ndarray     # index in the batch, -1 for context
    learn: np.ndarray   # bool: its listener is still learning (its floor is the threshold)
    first: np.ndarray   # bool: in the first learning period (per-source short-session peaks)

    @classmethod
    def empty(cls) -> "_Frame":
        i = np.empty(0, dtype=np.int64)
        b = np.empty(0, dtype=bool)
        return cls(i, i, i, i, i, i, b, b, b, i, b, i, b, b)

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def concat(cls, a: "_Frame", b: "_Frame") -> "_Frame":
        return cls(*(np.concatenate([getattr(a, c), getattr(b, c)]) for c in _COLS))


@dataclass
class _Counts:
    """Sliding-window counts, in key-sorted order."""

    index: np.ndarray   # frame index of each counted row
    group: np.ndarray   # dense key id
    count: np.ndarray   # the window count at that row
    low: np.ndarray     # sorted position where its window starts
    keys: np.ndarray    # group id -> key value


@dataclass
class _Candidates:
    """Rows whose count reached their threshold, for one rule (parallel arrays)."""

    key: np.ndarray        # cooldown key
    index: np.ndarray      # frame index
    count: np.ndarray
    threshold: np.ndarray
    learned: np.ndarray
    kind: np.ndarray       # scan: 0 distinct listeners, 1 short sessions

    @classmethod
    def of(cls, key, index, count, threshold, learned, kind: int = 0) -> "_Candidates":
        n = len(index)
        return cls(np.asarray(key, dtype=np.int64), np.asarray(index, dtype=np.int64),
                   np.asarray(count, dtype=np.int64), _each(threshold, n), _each(learned, n),
                   np.full(n, kind, dtype=np.int8))

    @classmethod
    def join(cls, parts: list["_Candidates"]) -> "_Candidates":
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.empty(0)
                     for f in ("key", "index", "count", "threshold", "learned", "kind")))


def _each(value, n: int) -> np.ndarray:
    """A float per candidate: `value` itself when it is an array of them, else `n` copies of it."""
    array = np.asarray(value, dtype=np.float64)
    return array if array.ndim else np.full(n, array)


def window_counts(frame: _Frame, mask: np.ndarray, key: np.ndarray, slots: int) -> _Counts:
    """One sort by key (stable, so each key's rows stay in frame order); groups numbered by first appearance."""
    index = np.flatnonzero(mask)
    keyed = key[index]
    order, sorted_group, starts = sorted_groups(keyed)
    index = index[order]
    rank = np.empty(len(starts), dtype=np.int64)
    rank[np.argsort(index[starts], kind="stable")] = np.arange(len(starts), dtype=np.int64)
    keys = np.empty(len(starts), dtype=keyed.dtype)
    keys[rank] = keyed[order[starts]]
    slot = frame.slot[index]
    rel = slot - (slot.min() if len(slot) else 0)
    composite = (sorted_group << 32) | rel
    low = np.searchsorted(composite, composite - (slots - 1), side="left")
    cumulative = np.concatenate([[0], np.cumsum(frame.w[index])])
    count = cumulative[1:] - cumulative[low]
    return _Counts(index, rank[sorted_group], count, low, keys)


def _pairs(frame: _Frame, index: np.ndarray) -> np.ndarray:
    """(source key, listener) of the rows at `index` as one int64 that sorts by key, then listener."""
    return (frame.key[index] << 16) | frame.lst[index]


def _source_counts(frame: _Frame, slots: int) -> _Counts:
    """anomaly.source_rate's window counts: start rows sorted by (source key, listener), which the scan
    rule's distinct listeners reuse; keyed `listener << 32 | source key` as the cooldowns are."""
    c = window_counts(frame, frame.start, _pairs(frame, np.arange(len(frame))), slots)
    c.keys = ((c.keys & 0xFFFF) << 32) | (c.keys >> 16)
    return c


def cooldown_source(rule: str, key: int) -> int:
    """The address code a cooldown key holds (-1: none)."""
    if rule == LISTENER_RATE:
        return -1
    return key & _LOW32 if rule == SOURCE_RATE else key


def remap_cooldown_key(rule: str, key: int, remap: np.ndarray) -> int:
    """A cooldown key after the address table was compacted (`IpTable.compact`)."""
    if rule == LISTENER_RATE:
        return key
    if rule == SOURCE_RATE:
        return ((key >> 32) << 32) | int(remap[key & _LOW32])
    return int(remap[key])


def keep_peaks(table: dict, keys: np.ndarray, counts: np.ndarray, name_of: Callable[[int], Any]) -> None:
    """Learn peaks: `table[name_of(key)]` becomes the highest count seen for the key, if higher."""
    if len(keys) == 0:
        return
    known = table.get
    distinct, peaks = group_max(keys, counts)
    for key, peak in zip(distinct.tolist(), peaks.tolist()):
        name = name_of(key)
        if peak > known(name, -1):
            table[name] = peak


class BatchEngine:
    """The anomaly rules with their carried context and cooldowns."""

    def __init__(self, config: DetectConfig, baseline: Baseline, ips: IpTable, rules, repeats=()) -> None:
        self.config = config
        self.baseline = baseline
        self.ips = ips
        self.rules = frozenset(rules)
        self.repeats = frozenset(repeats)     # rules whose crossings inside the cooldown come back as repeats
        self.cooldowns: dict[tuple, int] = {}
        self.watermark: int | None = None
        self.late_events = 0
        self._res = config.resolution_ns
        self._cd = int(round(config.cooldown_s * 1e9))
        self._k_source = config.slots(config.source_rate_window_s)
        self._k_listener = config.slots(config.listener_rate_window_s)
        self._k_scan = config.slots(config.scan_window_s)
        self._k_refused = config.slots(config.refused_window_s)
        windows = {SOURCE_RATE: self._k_source, LISTENER_RATE: self._k_listener, SCAN: self._k_scan,
                   REFUSED_BURST: self._k_refused}
        self._k_context = max([windows[r] for r in self.rules if r in windows] or [1])
        self._context = _Frame.empty()
        self._known: dict[int, np.ndarray] = {}     # listener -> prefix code -> known seen there (a cache)
        self._known_generation = baseline.generation

    # ---- thresholds (the engine's rules and the live trigger read these) -----------------

    def source_rate_threshold(self, listener: int, key: str, learning: bool, peek: bool = False) -> tuple[float, float]:
        """(threshold, learned peak) of a source on a listener: the floor while the listener learns.
        `peek` (the live trigger): fixes nothing in the baseline, whose learning rows may still be buffered."""
        cfg = self.config
        if learning:
            return float(cfg.source_rate_min), 0.0
        learned = self.baseline.source_rate_baseline(listener, key, cfg.peer_quantile, peek)
        return rate_threshold(cfg.source_rate_min, cfg.source_rate_factor, learned), learned

    def listener_rate_threshold(self, listener: int, learning: bool) -> tuple[float, float]:
        cfg = self.config
        learned = 0.0 if learning else float(self.baseline.listener_rate.get(listener, 0))
        return rate_threshold(cfg.listener_rate_min, cfg.listener_rate_factor, learned), learned

    def short_threshold(self, key: str) -> tuple[float, float]:
        """A learning period shorter than the scan window saw part of a window: its peak is scaled up to one."""
        cfg = self.config
        scale = max(1.0, cfg.scan_window_s / cfg.learning_period_s) if cfg.learning_period_s > 0 else 1.0
        learned = float(self.baseline.source_short.get(key, 0)) * scale
        return rate_threshold(cfg.scan_short_min, cfg.scan_short_factor, learned), learned

    def cooling(self, rule: str, key: int, t_ns: int) -> bool:
        """Whether an alert of `rule` for `key` at `t_ns` would be held back by the cooldown."""
        last = self.cooldowns.get((rule, key))
        return last is not None and t_ns < last + self._cd

    def taint(self, ip: str, t_ns: int) -> None:
        """A source flagged outside the detectors (a policy alert): not learned from `t_ns` on."""
        code = self.ips.key_codes[self.ips.code(ip)]
        self.baseline.taint(self.ips.ips[code], t_ns)

    # ---- driving -------------------------------------------------------------------------

    def process(self, rows: Rows) -> list[Alert]:
        """Learn from and detect in one batch; alerts in event-time order."""
        if len(rows) == 0:
            return []
        t = rows.t if self.watermark is None else np.maximum(rows.t, self.watermark)
        t = np.maximum.accumulate(t)
        self.late_events += int(np.count_nonzero(t != rows.t))
        self.watermark = int(t[-1])
        base = self.baseline
        base.start_learning(int(t[0]), self.config)
        learn = self._listeners_learning(rows.lst, t)
        first = t < base.learning_end_ns if not base.complete else np.zeros(len(t), dtype=bool)
        n = len(rows)
        part = _Frame(
            t=t, slot=t // self._res, lst=rows.lst, src=rows.src, key=self.ips.source_keys(rows.src), dst=rows.dst,
            start=rows.start, refused=rows.refused, short=rows.short, w=np.ones(n, dtype=np.int64),
            new=np.ones(n, dtype=bool), row=np.arange(n, dtype=np.int64), learn=learn, first=first,
        )
        alerts = self._run(_Frame.concat(self._context, part), rows)
        if not base.complete and int(t[-1]) >= base.learning_end_ns:
            base.finish_learning(self.config)
        self._forget_cooldowns()
        return alerts

    def _listeners_learning(self, lst: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Per row: is its listener still in its own learning period (from its watch start)?"""
        return t < self._learning_ends(lst)

    def _learning_ends(self, lst: np.ndarray) -> np.ndarray:
        """Per row: when its listener's learning period ends."""
        return ports_lookup(lst, lambda port: self.baseline.start_listener(port, self.config))

    def _run(self, frame: _Frame, rows: Rows) -> list[Alert]:
        rules = self.rules
        base = self.baseline
        found: dict[str, list[_Candidates]] = {rule: [] for rule in sorted(rules)}    # one order in every process
        source = _source_counts(frame, self._k_source) if SOURCE_RATE in rules else None
        listener = window_counts(frame, frame.start, frame.lst, self._k_listener) if LISTENER_RATE in rules else None
        short = window_counts(frame, frame.short, frame.key, self._k_scan) if SCAN in rules else None
        # phase 1: no baseline needed
        if SCAN in rules:
            found[SCAN].append(self._scan_listeners(frame, None if source is None else source.index))
        if REFUSED_BURST in rules:
            found[REFUSED_BURST].append(self._refused(frame))
        if source is not None:
            found[SOURCE_RATE].append(self._source_rate(frame, source, learning=True))
        if listener is not None:
            found[LISTENER_RATE].append(self._listener_rate(frame, listener, learning=True))
        self._taint(frame, found)
        # phase 2: learn from what was not flagged, then judge against it
        since = self._taint_times(frame)
        self._learn(frame, source, listener, short, since)
        alerts: list[Alert] = []
        if NEW_SOURCE in rules:
            alerts += self._new_source(frame, rows, frame.t >= since)
        if source is not None:
            found[SOURCE_RATE].append(self._source_rate(frame, source, learning=False))
        if listener is not None:
            found[LISTENER_RATE].append(self._listener_rate(frame, listener, learning=False))
        if SCAN in rules:
            found[SCAN].append(self._short(frame, short))
        self._taint(frame, found)
        for rule, parts in found.items():
            alerts += self._raise(rule, _Candidates.join(parts), frame, rows)
        self._context = self._compress(frame)
        if base.over(self.config.max_tracked):
            base.prune(self.config.max_tracked)
        alerts.sort(key=lambda al: al.timestamp_ns)
        return alerts

    def _compress(self, frame: _Frame) -> _Frame:
        """The rows the next batch's windows can reach, summed per (slot, listener, source, kind)."""
        if len(frame) == 0:
            return frame
        keep = np.flatnonzero(frame.slot >= frame.slot[-1] - self._k_context + 1)
        slot, lst, src = frame.slot[keep], frame.lst[keep], frame.src[keep]
        kind = (frame.start[keep].astype(np.int64) | (frame.refused[keep].astype(np.int64) << 1)
                | (frame.short[keep].astype(np.int64) << 2))
        order = np.lexsort((kind, src, lst, slot))
        slot, lst, src, kind, w = slot[order], lst[order], src[order], kind[order], frame.w[keep][order]
        key = frame.key[keep][order]
        change = np.ones(len(order), dtype=bool)
        change[1:] = (slot[1:] != slot[:-1]) | (lst[1:] != lst[:-1]) | (src[1:] != src[:-1]) | (kind[1:] != kind[:-1])
        first = np.flatnonzero(change)
        n = len(first)
        slot, kind = slot[first], kind[first]
        return _Frame(
            t=slot * self._res, slot=slot, lst=lst[first], src=src[first], key=key[first],
            dst=np.full(n, -1, dtype=np.int64),
            start=(kind & 1).astype(bool), refused=(kind & 2).astype(bool), short=(kind & 4).astype(bool),
            w=np.add.reduceat(w, first) if n else w[:0], new=np.zeros(n, dtype=bool),
            row=np.full(n, -1, dtype=np.int64), learn=np.zeros(n, dtype=bool), first=np.zeros(n, dtype=bool),
        )

    def codes_in_use(self) -> np.ndarray:
        """Address codes the engine still refers to (context and cooldowns)."""
        keys = [self._context.src, self._context.key, self._context.dst]
        keys.append(np.array([cooldown_source(rule, key) for rule, key in self.cooldowns], dtype=np.int64))
        return np.concatenate(keys)

    def remap(self, ips: IpTable, remap: np.ndarray) -> None:
        """Switch to a compacted address table."""
        self.ips = ips
        self._known = {}
        ctx = self._context
        ctx.src = remap[ctx.src]
        ctx.key = remap[ctx.key]
        ctx.dst = np.where(ctx.dst >= 0, remap[np.maximum(ctx.dst, 0)], -1)
        self.cooldowns = {(rule, remap_cooldown_key(rule, key, remap)): t for (rule, key), t in self.cooldowns.items()}

    def _forget_cooldowns(self) -> None:
        if self.watermark is not None and len(self.cooldowns) > 1024:
            horizon = self.watermark - self._cd
            self.cooldowns = {k: v for k, v in self.cooldowns.items() if v > horizon}

    # ---- flagging and learning -----------------------------------------------------------

    def _taint(self, frame: _Frame, found: dict[str, list[_Candidates]]) -> None:
        """Every source key that reached a threshold is flagged from its first crossing on (the earliest
        over all rules, whatever order they are iterated in; keys flagged in ascending code order)."""
        codes, times = [], []
        for rule, parts in found.items():
            if rule == LISTENER_RATE:
                continue
            for part in parts:
                codes.append(part.key & _LOW32 if rule == SOURCE_RATE else part.key)
                times.append(frame.t[part.index])
        if not codes:
            return
        for code, t in zip(*(a.tolist() for a in group_min(np.concatenate(codes), np.concatenate(times)))):
            self.baseline.taint(self.ips.ips[code], t)

    def _taint_times(self, frame: _Frame) -> np.ndarray:
        """Per row: since when its source is flagged (`_NEVER`: it is not)."""
        tainted = self.baseline.tainted
        if not tainted:
            return np.full(len(frame), _NEVER, dtype=np.int64)
        since = np.full(len(self.ips), _NEVER, dtype=np.int64)
        codes = self.ips.code_of
        for key, t in tainted.items():
            code = codes(key)
            if code is not None:
                since[code] = t
        return since[frame.key]

    def _learn(self, frame: _Frame, source: _Counts | None, listener: _Counts | None, short: _Counts | None,
               since: np.ndarray) -> None:
        """Peaks of the rows that stayed below the floor, while their listener (or the first period) learns.

        A source flagged before a learning period ended has no peak of its own in it (`Baseline.taint`
        forgot the earlier ones, so the result does not depend on where batches begin); its rows from
        the moment it was flagged count in no listener's peak and add no seen prefix."""
        cfg, base, ips = self.config, self.baseline, self.ips.ips
        if source is not None:
            clean = frame.new & frame.learn & (since >= self._learning_ends(frame.lst))
            mask = clean[source.index] & (source.count < cfg.source_rate_min)
            keep_peaks(base.source_rate, source.group[mask], source.count[mask],
                       lambda g: (int(source.keys[g]) >> 32, ips[int(source.keys[g]) & _LOW32]))
        if short is not None:
            clean = frame.new & frame.first & (since >= (base.learning_end_ns or 0))
            mask = clean[short.index]      # no floor while it learns: short sessions alone are no flood
            keep_peaks(base.source_short, frame.key[short.index[mask]], short.count[mask], lambda code: ips[code])
        before = frame.t < since
        if listener is not None and (frame.new & frame.learn).any():
            own = listener if before.all() else window_counts(frame, frame.start & before, frame.lst, self._k_listener)
            mask = (frame.new & frame.learn)[own.index] & (own.count < cfg.listener_rate_min)
            keep_peaks(base.listener_rate, own.group[mask], own.count[mask], lambda g: int(own.keys[g]))
        seen = frame.new & before & frame.start & frame.learn
        if seen.any():
            known = base.source_last_ns
            for code, t in zip(*group_max(frame.key[seen], frame.t[seen])):
                known[ips[code]] = max(known.get(ips[code], 0), int(t))

    # ---- alerting ------------------------------------------------------------------------

    def _select(self, rule: str, keys: list, t: np.ndarray) -> list[int]:
        """Positions (into parallel candidate arrays sorted by key then time) that alert:
        the first candidate of each key, then the first at least one cooldown later."""
        chosen: list[int] = []
        if len(t) == 0:
            return chosen
        key_array = np.asarray(keys)
        bounds = [0] + (np.flatnonzero(key_array[1:] != key_array[:-1]) + 1).tolist() + [len(keys)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            times = t[lo:hi]
            cooldown_key = (rule, keys[lo])
            last = self.cooldowns.get(cooldown_key)
            i = 0 if last is None else int(np.searchsorted(times, last + self._cd, side="left"))
            while i < len(times):
                chosen.append(lo + i)
                last = int(times[i])
                i = max(i + 1, int(np.searchsorted(times, last + self._cd, side="left")))
            if last is not None:
                self.cooldowns[cooldown_key] = last
        return chosen

    def _raise(self, rule: str, cand: _Candidates, frame: _Frame, rows: Rows) -> list[Alert]:
        """The alerts (and, for rules that may block, the repeats the cooldown holds back) of a rule's candidates."""
        if len(cand.index) == 0:
            return []
        order = np.lexsort((cand.index, frame.t[cand.index], cand.key))
        keys = cand.key[order].tolist()
        index = cand.index[order]
        times = frame.t[index]
        chosen = self._select(rule, keys, times)
        out: list[Alert] = []
        if rule in self.repeats and len(chosen) < len(keys):
            alerted = set(chosen)
            out += [repeat_alert(rule, int(times[p]), trigger_event_ids=self._triggers(frame, rows, int(index[p])),
                                 **self._source_fields(frame, int(index[p])))
                    for p in range(len(keys)) if p not in alerted]
        build = {SOURCE_RATE: self._source_rate_alert, LISTENER_RATE: self._listener_rate_alert,
                 SCAN: self._scan_alert, REFUSED_BURST: self._refused_alert}[rule]
        for p in chosen:
            k = order[p]
            out.append(build(frame, rows, int(index[p]), int(cand.count[k]), float(cand.threshold[k]),
                             float(cand.learned[k]), int(cand.kind[k]), keys[p]))
        return out

    def _source_fields(self, frame: _Frame, i: int) -> dict[str, Any]:
        """Who an alert names: the address of its row, and the /64 counted as the source."""
        key = int(frame.key[i])
        network = self.ips.ips[key] if self.ips.is_network(key) else None
        return {"source_ip": self.ips.ips[int(frame.src[i])], "source_network": network}

    def _who(self, frame: _Frame, i: int) -> str:
        return self.ips.ips[int(frame.key[i])]

    def _dst(self, frame: _Frame, i: int) -> str:
        code = int(frame.dst[i])
        return self.ips.ips[code] if code >= 0 else ""

    def _trigger(self, frame: _Frame, rows: Rows, i: int) -> str | None:
        return rows.event_id(int(frame.row[i]))

    def _triggers(self, frame: _Frame, rows: Rows, i: int) -> tuple[str, ...]:
        """A repeat's trigger (the live detector finds its relay by it)."""
        found = self._trigger(frame, rows, i)
        return (found,) if found else ()

    # ---- the rules -------------------------------------------------------------------------

    def _source_rate(self, frame: _Frame, c: _Counts, learning: bool) -> _Candidates:
        """anomaly.source_rate: connections of one source on one listener in the window."""
        rows = frame.new[c.index] & (frame.learn[c.index] == learning) & (c.count >= self.config.source_rate_min)
        ips = self.ips.ips
        return self._reaching(c, np.flatnonzero(rows),
                              lambda k: self.source_rate_threshold(k >> 32, ips[k & _LOW32], learning))

    def _reaching(self, c: _Counts, cand: np.ndarray, limit_of: Callable[[int], tuple[float, float]],
                  kind: int = 0) -> _Candidates:
        """The rows of `cand` whose count reaches their key's threshold (`limit_of(key)`: threshold, learned)."""
        if len(cand) == 0:
            return _Candidates.of([], [], [], [], [], kind)
        groups = np.unique(c.group[cand])
        limits = [limit_of(int(c.keys[g])) for g in groups]
        threshold = np.zeros(len(c.keys), dtype=np.float64)
        learned = np.zeros(len(c.keys), dtype=np.float64)
        threshold[groups] = [limit for limit, _ in limits]
        learned[groups] = [peak for _, peak in limits]
        cand = cand[c.count[cand] >= threshold[c.group[cand]]]
        g = c.group[cand]
        return _Candidates.of(c.keys[g], c.index[cand], c.count[cand], threshold[g], learned[g], kind)

    def _source_rate_alert(self, frame, rows, i, count, threshold, learned, _kind, key) -> Alert:
        lst = key >> 32
        return build_alert(
            SOURCE_RATE, int(frame.t[i]),
            describe_rate(f"{self._who(frame, i)} on listener {lst}", count, self.config.source_rate_window_s,
                          threshold, learned),
            listener_port=lst, listener_ip=self._dst(frame, i), observed=count, threshold=threshold,
            baseline=learned, window_s=self.config.source_rate_window_s, trigger_id=self._trigger(frame, rows, i),
            **self._source_fields(frame, i),
        )

    def _listener_rate(self, frame: _Frame, c: _Counts, learning: bool) -> _Candidates:
        """anomaly.listener_rate: all connections of one listener in the window."""
        rows = frame.new[c.index] & (frame.learn[c.index] == learning) & (c.count >= self.config.listener_rate_min)
        return self._reaching(c, np.flatnonzero(rows), lambda k: self.listener_rate_threshold(k, learning))

    def _listener_rate_alert(self, frame, rows, i, count, threshold, learned, _kind, key) -> Alert:
        floor = frame.slot[i] - self._k_listener + 1
        window = np.flatnonzero(frame.start[: i + 1] & (frame.lst[: i + 1] == key) & (frame.slot[: i + 1] >= floor))
        top = self._top_sources(frame.key[window], frame.w[window])
        return build_alert(
            LISTENER_RATE, int(frame.t[i]),
            describe_rate(f"listener {key}", count, self.config.listener_rate_window_s, threshold, learned)
            + f"; top sources {', '.join(top)}",
            source_ip=None, listener_port=key, listener_ip=self._dst(frame, i), observed=count,
            threshold=threshold, baseline=learned, window_s=self.config.listener_rate_window_s,
            trigger_id=self._trigger(frame, rows, i), top_sources=top,
        )

    def _scan_listeners(self, frame: _Frame, by_pair: np.ndarray | None) -> _Candidates:
        """anomaly.scan: distinct listeners one source touches in the window (no baseline)."""
        least = self.config.scan_min_listeners
        index, count = self._distinct_listeners(frame, by_pair, least)
        over = frame.new[index] & (count >= least)
        index, count = index[over], count[over]
        return _Candidates.of(frame.key[index], index, count, float(least), 0.0, kind=0)

    def _short(self, frame: _Frame, c: _Counts) -> _Candidates:
        """anomaly.scan: connections closed within scan_short_s, per source, against the peak it learned in
        the first learning period (nothing before it ends: a busy client's short requests are no scan)."""
        rows = frame.new[c.index] & ~frame.first[c.index] & (c.count >= self.config.scan_short_min)
        ips = self.ips.ips
        return self._reaching(c, np.flatnonzero(rows), lambda k: self.short_threshold(ips[k]), kind=1)

    def _scan_alert(self, frame, rows, i, count, threshold, learned, kind, _key) -> Alert:
        cfg = self.config
        who = self._who(frame, i)
        if kind == 0:
            text = f"{who} touched {count} listeners within {cfg.scan_window_s:g}s (threshold {threshold:g})"
        else:
            text = (f"{who}: {count} connections closed within {cfg.scan_short_s:g}s of opening in "
                    f"{cfg.scan_window_s:g}s (threshold {threshold:g}, learned peak {learned:g})")
        return build_alert(
            SCAN, int(frame.t[i]), text, listener_port=int(frame.lst[i]), listener_ip=self._dst(frame, i),
            observed=count, threshold=threshold, baseline=learned, window_s=cfg.scan_window_s,
            trigger_id=self._trigger(frame, rows, i), **self._source_fields(frame, i),
        )

    def _refused(self, frame: _Frame) -> _Candidates:
        """anomaly.refused_burst: connections socat refused, per source (no baseline)."""
        c = window_counts(frame, frame.refused, frame.key, self._k_refused)
        cand = np.flatnonzero(frame.new[c.index] & (c.count >= self.config.refused_min))
        return _Candidates.of(c.keys[c.group[cand]], c.index[cand], c.count[cand], float(self.config.refused_min), 0.0)

    def _refused_alert(self, frame, rows, i, count, threshold, _learned, _kind, _key) -> Alert:
        cfg = self.config
        return build_alert(
            REFUSED_BURST, int(frame.t[i]),
            f"{self._who(frame, i)}: {count} connections refused by socat in {cfg.refused_window_s:g}s "
            f"(threshold {cfg.refused_min})",
            listener_port=int(frame.lst[i]), listener_ip=self._dst(frame, i), observed=count,
            threshold=threshold, baseline=0.0, window_s=cfg.refused_window_s,
            trigger_id=self._trigger(frame, rows, i), **self._source_fields(frame, i),
        )

    def _top_sources(self, src: np.ndarray, w: np.ndarray) -> tuple[str, ...]:
        ranked = sorted(((-int(n), self.ips.ips[int(code)]) for code, n in zip(*group_sum(src, w))))
        return tuple(ip for _n, ip in ranked[: self.config.top_sources])

    def _distinct_listeners(self, frame: _Frame, by_pair: np.ndarray | None,
                            least: int) -> tuple[np.ndarray, np.ndarray]:
        """At every row where a source starts touching a listener it had not touched
        within the scan window: (frame index, distinct listeners it touches now), for the sources
        that touch at least `least` listeners in the frame (the others cannot reach it).
        `by_pair`: the start rows already sorted (stable) by source key, then listener."""
        k = self._k_scan
        index = by_pair
        if index is None:
            index = np.flatnonzero(frame.start)
            index = index[np.argsort(_pairs(frame, index), kind="stable")]
        if len(index) == 0:
            return index, index
        pair = _pairs(frame, index)
        same = np.concatenate([[False], pair[1:] == pair[:-1]])
        if least > 1:
            key = frame.key[index]
            first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
            touched = np.add.reduceat(~same, first)
            wide = np.repeat(touched >= least, np.diff(np.append(first, len(index))))
            index, pair, same = index[wide], pair[wide], same[wide]
            if len(index) == 0:
                return index, index
        slot = frame.slot[index]
        gap = np.concatenate([[0], slot[1:] - slot[:-1]])
        seg_start = ~same | (gap >= k)
        starts = np.flatnonzero(seg_start)
        ends = np.concatenate([starts[1:], [len(index)]]) - 1
        src = frame.key[index]
        n = len(starts)
        ev_src = np.concatenate([src[starts], src[starts]])
        ev_slot = np.concatenate([slot[starts], slot[ends] + k])
        ev_prio = np.concatenate([np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)])
        ev_ord = np.concatenate([index[starts], np.zeros(n, dtype=np.int64)])
        delta = np.concatenate([np.ones(n, dtype=np.int64), -np.ones(n, dtype=np.int64)])
        order = np.lexsort((ev_ord, ev_prio, ev_slot, ev_src))
        active = np.cumsum(delta[order])
        plus = ev_prio[order] == 1
        return ev_ord[order][plus], active[plus]

    def _new_source(self, frame: _Frame, rows: Rows, tainted: np.ndarray) -> list[Alert]:
        """anomaly.new_source: a prefix never seen on the listener while it learned (a flagged source's are not learned)."""
        index = np.flatnonzero(frame.new & frame.start & ~(frame.learn & tainted))
        if len(index) == 0:
            return []
        prefix_of = self.ips.prefixes
        base = self.baseline
        if base.generation != self._known_generation:
            self._known, self._known_generation = {}, base.generation
        lst_of = frame.lst[index]
        pcode = self.ips.prefix_array()[frame.src[index]]
        unknown = np.ones(len(index), dtype=bool)
        for lst in distinct_ports(lst_of):
            known = self._known.get(int(lst))
            if known is not None:
                at = np.flatnonzero(lst_of == lst)
                codes = pcode[at]
                inside = codes < len(known)
                unknown[at[inside]] = ~known[codes[inside]]
        pick = np.flatnonzero(unknown)
        pick = pick[first_of_pairs(lst_of[pick], pcode[pick])]   # the first row of each (listener, prefix)
        out: list[Alert] = []
        for lst, code, src, i in zip(lst_of[pick], pcode[pick], frame.src[index[pick]], index[pick]):
            prefix = prefix_of[src]
            added = base.add_seen(int(lst), prefix, int(frame.t[i]))
            self._remember_seen(int(lst), int(code))
            if not added or frame.learn[i]:
                continue
            ip = self.ips.ips[src]
            out.append(build_alert(
                NEW_SOURCE, int(frame.t[i]),
                f"{ip} ({prefix}) was never seen on listener {lst} during learning",
                source_ip=ip, listener_port=int(lst), listener_ip=self._dst(frame, i), observed=1.0,
                threshold=None, baseline=None, window_s=None, trigger_id=rows.event_id(int(frame.row[i])),
            ))
        return out

    def _remember_seen(self, lst: int, code: int) -> None:
        known = self._known.get(lst)
        if known is None or code >= len(known):
            grown = np.zeros(max(2 * code + 1, 1024), dtype=bool)
            if known is not None:
                grown[: len(known)] = known
            known = self._known[lst] = grown
        known[code] = True

