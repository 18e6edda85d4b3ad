"""The vectorised detector engine: sliding-window counts over columnar rows.

`BatchEngine.process(rows)` takes connection rows in arrival order (a file
chunk offline, the last micro-batch live), counts every key's events in its
sliding window with numpy (count of the key's rows whose time slot lies in
`[slot - K + 1, slot]`, up to and including the row), learns peaks while the
row's listener is learning (each listener has its own learning period, from
its first row) and, afterwards, raises an alert at the first row whose count
reaches the threshold, once per rule and key per cooldown. The
live fast path (`detector.py`) applies the very same crossing rule per event,
so both raise the same alerts.

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
from .groups import factorize, first_of_pairs, group_max, group_sum
from .rows import IpTable, Rows
from .rules import LISTENER_RATE, NEW_SOURCE, REFUSED_BURST, SCAN, SOURCE_RATE, build_alert, describe_rate

_COLS = ("t", "slot", "lst", "src", "dst", "start", "refused", "short", "w", "new", "row", "learn")


@dataclass
class _Frame:
    """Context rows followed by the new rows of one batch."""

    t: np.ndarray
    slot: np.ndarray
    lst: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    start: np.ndarray
    refused: np.ndarray
    short: np.ndarray
    w: np.ndarray       # weight: 1, or the number of context rows summed into this one
    new: np.ndarray     # bool: a row of this batch (context rows raise nothing)
    row: np.ndarray     # index in the batch, -1 for context
    learn: np.ndarray   # bool: its listener is still learning (raises nothing, feeds the baseline)

    @classmethod
    def empty(cls) -> "_Frame":
        i = np.empty(0, dtype=np.int64)
        b = np.empty(0, dtype=bool)
        return cls(i, i, i, i, i, b, b, b, i, b, i, b)

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


def window_counts(frame: _Frame, mask: np.ndarray, key: np.ndarray, slots: int) -> _Counts:
    index = np.flatnonzero(mask)
    group, keys = factorize(key[index])
    order = np.argsort(group, kind="stable")
    index, group = index[order], group[order].astype(np.int64)
    slot = frame.slot[index]
    rel = slot - (slot.min() if len(slot) else 0)
    composite = (group << 32) | rel
    low = np.searchsorted(composite, composite - (slots - 1), side="left")
    cumulative = np.concatenate([[0], np.cumsum(frame.w[index])])
    count = cumulative[1:] - cumulative[low]
    return _Counts(index, group, count, low, np.asarray(keys))


def cooldown_source(rule: str, key: int) -> int:
    """The address code a cooldown key holds (-1: none)."""
    if rule == LISTENER_RATE:
        return -1
    return key & 0xFFFFFFFF if rule == SOURCE_RATE else key


def remap_cooldown_key(rule: str, key: int, remap: np.ndarray) -> int:
    """A cooldown key after the address table was compacted (`IpTable.compact`)."""
    if rule == LISTENER_RATE:
        return key
    if rule == SOURCE_RATE:
        return ((key >> 32) << 32) | int(remap[key & 0xFFFFFFFF])
    return int(remap[key])


def keep_peaks(table: dict, keys: np.ndarray, counts: np.ndarray, name_of: Callable[[int], Any]) -> None:
    """Learn peaks: `table[name_of(key)]` becomes the highest count seen for the key, if higher."""
    if len(keys) == 0:
        return
    for key, peak in zip(*group_max(keys, counts)):
        name = name_of(int(key))
        table[name] = max(table.get(name, 0), int(peak))


class BatchEngine:
    """Vectorised detectors with their carried context and cooldowns."""

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
        split = 0 if base.complete else int(np.searchsorted(t, base.learning_end_ns, side="left"))
        alerts: list[Alert] = []
        if split > 0:
            self._run(rows, t, learn, 0, split, learning=True)
        if split < len(rows):
            if not base.complete:
                base.finish_learning(self.config)
            alerts = self._run(rows, t, learn, split, len(rows), learning=False)
        self._forget_cooldowns()
        return alerts

    def _listeners_learning(self, lst: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Per row: is its listener still in its own learning period (started at its first row)?"""
        ports, first = np.unique(lst, return_index=True)
        ends = np.array([self.baseline.start_listener(int(port), int(t[i]), self.config)
                         for port, i in zip(ports, first)], dtype=np.int64)
        return t < ends[np.searchsorted(ports, lst)]

    def _run(self, rows: Rows, t: np.ndarray, learn: np.ndarray, a: int, b: int, learning: bool) -> list[Alert]:
        """Rows a..b; `learning`: the first learning period (per-source peaks), `learn`: per listener."""
        part = _Frame(
            t=t[a:b], slot=t[a:b] // self._res, lst=rows.lst[a:b], src=rows.src[a:b], dst=rows.dst[a:b],
            start=rows.start[a:b], refused=rows.refused[a:b], short=rows.short[a:b],
            w=np.ones(b - a, dtype=np.int64), new=np.ones(b - a, dtype=bool), row=np.arange(a, b, dtype=np.int64),
            learn=learn[a:b],
        )
        frame = _Frame.concat(self._context, part)
        found: list[Alert] = []
        self._learn_last_seen(frame)
        if NEW_SOURCE in self.rules:
            found += self._new_source(frame, rows)
        if SOURCE_RATE in self.rules:
            found += self._source_rate(frame, rows)
        if REFUSED_BURST in self.rules and not learning:
            found += self._refused(frame, rows)
        if LISTENER_RATE in self.rules:
            found += self._listener_rate(frame, rows)
        if SCAN in self.rules:
            found += self._scan(frame, rows, learning)
        self._context = self._compress(frame)
        if self.baseline.over(self.config.max_tracked):
            self.baseline.prune(self.config.max_tracked)
        found.sort(key=lambda al: al.timestamp_ns)
        return found

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
        change = np.ones(len(order), dtype=bool)
        change[1:] = (slot[1:] != slot[:-1]) | (lst[1:] != lst[:-1]) | (src[1:] != src[:-1]) | (kind[1:] != kind[:-1])
        first = np.flatnonzero(change)
        n = len(first)
        slot, kind = slot[first], kind[first]
        return _Frame(
            t=slot * self._res, slot=slot, lst=lst[first], src=src[first], dst=np.full(n, -1, dtype=np.int64),
            start=(kind & 1).astype(bool), refused=(kind & 2).astype(bool), short=(kind & 4).astype(bool),
            w=np.add.reduceat(w, first) if n else w[:0], new=np.zeros(n, dtype=bool),
            row=np.full(n, -1, dtype=np.int64), learn=np.zeros(n, dtype=bool),
        )

    def codes_in_use(self) -> np.ndarray:
        """Address codes the engine still refers to (context and cooldowns)."""
        keys = [self._context.src, self._context.dst]
        keys.append(np.array([cooldown_source(rule, key) for rule, key in self.cooldowns], dtype=np.int64))
        return np.concatenate(keys)

    def remap(self, ips: IpTable, remap: np.ndarray) -> None:
        """Switch to a compacted address table."""
        self.ips = ips
        self._known = {}
        ctx = self._context
        ctx.src = remap[ctx.src]
        ctx.dst = np.where(ctx.dst >= 0, remap[np.maximum(ctx.dst, 0)], -1)
        self.cooldowns = {(rule, remap_cooldown_key(rule, key, remap)): t for (rule, key), t in self.cooldowns.items()}

    def _forget_cooldowns(self) -> None:
        if self.watermark is not None and len(self.cooldowns) > 1024:
            horizon = self.watermark - self._cd
            self.cooldowns = {k: v for k, v in self.cooldowns.items() if v > horizon}

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

    def _repeats(self, rule: str, chosen: list[int], n: int, t_of: Callable[[int], int],
                 ip_of: Callable[[int], str]) -> list[Alert]:
        """The candidates `_select` held back (cooldown), as repeats for the decision stage, if asked for."""
        if rule not in self.repeats or len(chosen) == n:
            return []
        alerted = set(chosen)
        return [repeat_alert(rule, t_of(p), ip_of(p)) for p in range(n) if p not in alerted]

    # ---- rules ---------------------------------------------------------------------------

    def _learn_last_seen(self, frame: _Frame) -> None:
        mask = frame.new & frame.start & frame.learn
        if not mask.any():
            return
        seen = self.baseline.source_last_ns
        ips = self.ips.ips
        for code, t in zip(*group_max(frame.src[mask], frame.t[mask])):
            seen[ips[code]] = max(seen.get(ips[code], 0), int(t))

    def _new_source(self, frame: _Frame, rows: Rows) -> list[Alert]:
        index = np.flatnonzero(frame.new & frame.start)
        if len(index) == 0:
            return []
        prefix_of = self.ips.prefixes
        base = self.baseline
        if base.generation != self._known_generation:
            self._known, self._known_generation = {}, base.generation
        lst_of = frame.lst[index]
        pcode = np.asarray(self.ips.prefix_codes, dtype=np.int64)[frame.src[index]]
        unknown = np.ones(len(index), dtype=bool)
        for lst in np.unique(lst_of):
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

    def _dst(self, frame: _Frame, i: int) -> str:
        code = int(frame.dst[i])
        return self.ips.ips[code] if code >= 0 else ""

    def _source_rate(self, frame: _Frame, rows: Rows) -> list[Alert]:
        key = (frame.lst << 32) | frame.src
        c = window_counts(frame, frame.start, key, self._k_source)
        new = frame.new[c.index]
        learn = new & frame.learn[c.index]
        base = self.baseline
        ips = self.ips.ips
        keep_peaks(base.source_rate, c.group[learn], c.count[learn],
                   lambda g: (int(c.keys[g]) >> 32, ips[int(c.keys[g]) & 0xFFFFFFFF]))
        cand = np.flatnonzero(new & ~learn & (c.count >= self.config.source_rate_min))
        if len(cand) == 0:
            return []
        thresholds: dict[int, tuple[float, float]] = {}
        by_group = np.zeros(len(c.keys), dtype=np.float64)
        for g in np.unique(c.group[cand]):
            k = int(c.keys[g])
            learned = base.source_rate_baseline(k >> 32, ips[k & 0xFFFFFFFF], self.config.peer_quantile)
            thresholds[int(g)] = (rate_threshold(self.config.source_rate_min, self.config.source_rate_factor, learned), learned)
            by_group[g] = thresholds[int(g)][0]
        cand = cand[c.count[cand] >= by_group[c.group[cand]]]
        keys = c.keys[c.group[cand]].astype(np.int64).tolist()
        chosen = self._select(SOURCE_RATE, keys, frame.t[c.index[cand]])
        out = self._repeats(SOURCE_RATE, chosen, len(keys), lambda p: int(frame.t[c.index[cand[p]]]),
                            lambda p: ips[keys[p] & 0xFFFFFFFF])
        for p in chosen:
            pos = cand[p]
            i = int(c.index[pos])
            threshold, learned = thresholds[int(c.group[pos])]
            ip, lst = ips[keys[p] & 0xFFFFFFFF], keys[p] >> 32
            count = int(c.count[pos])
            out.append(build_alert(
                SOURCE_RATE, int(frame.t[i]),
                describe_rate(f"{ip} on listener {lst}", count, self.config.source_rate_window_s, threshold, learned),
                source_ip=ip, listener_port=lst, listener_ip=self._dst(frame, i), observed=count,
                threshold=threshold, baseline=learned, window_s=self.config.source_rate_window_s,
                trigger_id=rows.event_id(int(frame.row[i])),
            ))
        return out

    def _refused(self, frame: _Frame, rows: Rows) -> list[Alert]:
        c = window_counts(frame, frame.refused, frame.src, self._k_refused)
        cand = np.flatnonzero(frame.new[c.index] & ~frame.learn[c.index] & (c.count >= self.config.refused_min))
        keys = c.keys[c.group[cand]].astype(np.int64).tolist()
        chosen = self._select(REFUSED_BURST, keys, frame.t[c.index[cand]])
        out = self._repeats(REFUSED_BURST, chosen, len(keys), lambda p: int(frame.t[c.index[cand[p]]]),
                            lambda p: self.ips.ips[keys[p]])
        for p in chosen:
            pos = cand[p]
            i = int(c.index[pos])
            ip = self.ips.ips[keys[p]]
            count = int(c.count[pos])
            out.append(build_alert(
                REFUSED_BURST, int(frame.t[i]),
                f"{ip}: {count} connections refused by socat in {self.config.refused_window_s:g}s "
                f"(threshold {self.config.refused_min})",
                source_ip=ip, listener_port=int(frame.lst[i]), listener_ip=self._dst(frame, i), observed=count,
                threshold=float(self.config.refused_min), baseline=0.0, window_s=self.config.refused_window_s,
                trigger_id=rows.event_id(int(frame.row[i])),
            ))
        return out

    def _listener_rate(self, frame: _Frame, rows: Rows) -> list[Alert]:
        c = window_counts(frame, frame.start, frame.lst, self._k_listener)
        new = frame.new[c.index]
        learn = new & frame.learn[c.index]
        base = self.baseline
        keep_peaks(base.listener_rate, c.group[learn], c.count[learn], lambda g: int(c.keys[g]))
        cand = np.flatnonzero(new & ~learn & (c.count >= self.config.listener_rate_min))
        if len(cand) == 0:
            return []
        learned = {int(g): float(base.listener_rate.get(int(c.keys[g]), 0)) for g in np.unique(c.group[cand])}
        thr_of = {g: rate_threshold(self.config.listener_rate_min, self.config.listener_rate_factor, v)
                  for g, v in learned.items()}
        by_group = np.zeros(len(c.keys), dtype=np.float64)
        for g, threshold in thr_of.items():
            by_group[g] = threshold
        cand = cand[c.count[cand] >= by_group[c.group[cand]]]
        keys = c.keys[c.group[cand]].astype(np.int64).tolist()
        out = []
        for p in self._select(LISTENER_RATE, keys, frame.t[c.index[cand]]):
            pos = cand[p]
            i = int(c.index[pos])
            g = int(c.group[pos])
            count = int(c.count[pos])
            window = c.index[c.low[pos]: pos + 1]
            top = self._top_sources(frame.src[window], frame.w[window])
            out.append(build_alert(
                LISTENER_RATE, int(frame.t[i]),
                describe_rate(f"listener {keys[p]}", count, self.config.listener_rate_window_s, thr_of[g], learned[g])
                + f"; top sources {', '.join(top)}",
                source_ip=None, listener_port=keys[p], listener_ip=self._dst(frame, i), observed=count,
                threshold=thr_of[g], baseline=learned[g], window_s=self.config.listener_rate_window_s,
                trigger_id=rows.event_id(int(frame.row[i])), top_sources=top,
            ))
        return out

    def _top_sources(self, src: np.ndarray, w: np.ndarray) -> tuple[str, ...]:
        ranked = sorted(((-int(n), self.ips.ips[int(code)]) for code, n in zip(*group_sum(src, w))))
        return tuple(ip for _n, ip in ranked[: self.config.top_sources])

    def _distinct_listeners(self, frame: _Frame) -> tuple[np.ndarray, np.ndarray]:
        """At every row where a source starts touching a listener it had not touched
        within the scan window: (frame index, distinct listeners it touches now)."""
        k = self._k_scan
        index = np.flatnonzero(frame.start)
        if len(index) == 0:
            return index, index
        pair = (frame.src[index] << 16) | frame.lst[index]
        order = np.argsort(pair, kind="stable")
        index, pair = index[order], pair[order]
        slot = frame.slot[index]
        same = np.concatenate([[False], pair[1:] == pair[:-1]])
        gap = np.concatenate([[0], slot[1:] - slot[:-1]])
        seg_start = ~same | (gap >= k)
        starts = np.flatnonzero(seg_start)
        ends = np.concatenate([starts[1:], [len(index)]]) - 1
        src = frame.src[index]
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

    def _scan_candidates(self, frame: _Frame, index: np.ndarray, count: np.ndarray, learned_of: dict[str, int],
                         threshold_of: Callable[[float], float], kind: str) -> list[tuple]:
        """Rows whose count reaches their source's threshold (computed once per source)."""
        if len(index) == 0:
            return []
        sources, which = np.unique(frame.src[index], return_inverse=True)
        learned = np.array([float(learned_of.get(self.ips.ips[int(code)], 0)) for code in sources])
        threshold = np.array([threshold_of(value) for value in learned])
        hit = np.flatnonzero(count >= threshold[which])
        return [(int(frame.src[index[k]]), int(frame.t[index[k]]), int(index[k]), int(count[k]),
                 float(threshold[which[k]]), float(learned[which[k]]), kind) for k in hit]

    def _scan(self, frame: _Frame, rows: Rows, learning: bool) -> list[Alert]:
        cfg, base, ips = self.config, self.baseline, self.ips.ips
        d_index, d_count = self._distinct_listeners(frame)
        d_new = frame.new[d_index]
        s = window_counts(frame, frame.short, frame.src, self._k_scan)
        s_new = frame.new[s.index]
        if learning:
            keep_peaks(base.source_distinct, frame.src[d_index[d_new]], d_count[d_new], lambda code: ips[code])
            keep_peaks(base.source_short, frame.src[s.index[s_new]], s.count[s_new], lambda code: ips[code])
            return []
        cands: list[tuple[int, int, int, int, float, float, str]] = []   # (src, t, frame index, count, thr, base, kind)
        over = d_new & ~frame.learn[d_index] & (d_count >= cfg.scan_min_listeners)
        cands += self._scan_candidates(frame, d_index[over], d_count[over], base.source_distinct,
                                       lambda learned: float(max(cfg.scan_min_listeners, learned + 1)), "listeners")
        over = s_new & ~frame.learn[s.index] & (s.count >= cfg.scan_short_min)
        cands += self._scan_candidates(frame, s.index[over], s.count[over], base.source_short,
                                       lambda learned: rate_threshold(cfg.scan_short_min, cfg.scan_short_factor,
                                                                      learned), "short")
        cands.sort(key=lambda c: (c[0], c[1], c[2]))
        chosen = self._select(SCAN, [c[0] for c in cands], np.array([c[1] for c in cands], dtype=np.int64))
        out = self._repeats(SCAN, chosen, len(cands), lambda p: cands[p][1], lambda p: ips[cands[p][0]])
        for p in chosen:
            code, t, i, count, thr, learned, kind = cands[p]
            ip = ips[code]
            if kind == "listeners":
                text = (f"{ip} touched {count} listeners within {cfg.scan_window_s:g}s "
                        f"(threshold {thr:g}, learned peak {learned:g})")
            else:
                text = (f"{ip}: {count} connections closed within {cfg.scan_short_s:g}s of opening in "
                        f"{cfg.scan_window_s:g}s (threshold {thr:g}, learned peak {learned:g})")
            out.append(build_alert(
                SCAN, t, text, source_ip=ip, listener_port=int(frame.lst[i]), listener_ip=self._dst(frame, i),
                observed=count, threshold=thr, baseline=learned, window_s=cfg.scan_window_s,
                trigger_id=rows.event_id(int(frame.row[i])),
            ))
        return out
