"""The live detector: `Detector.observe` per event, `Detector.tick` per micro-batch.

Every rule is judged by the one engine `analyze` runs (`batch.py`): the
detector buffers the rows it observes and hands them to `BatchEngine` at
each `tick`, or at once when `observe` sees an event that reaches a
threshold. That trigger is the fast path (O(1) per event, no pandas): per
key slot windows and the seen prefixes, compared with the engine's own
thresholds, so a flood, a scan or a new source is flagged on the event that
crosses, not at the next tick. A trigger that misses only delays an alert to
the tick; what is raised, and when (its event's time), is the engine's.

`watch(port, t)` starts a listener's learning period when the agent starts
watching it (see `DetectConfig`).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..events import INGRESS, Alert, ConnectionEvent
from .baseline import Baseline
from .batch import BatchEngine
from .config import DetectConfig
from .rows import NOTHING, IpTable, Rows, classify, listener_port
from .rules import LISTENER_RATE, NEW_SOURCE, REFUSED_BURST, SCAN, SOURCE_RATE


REPEAT_RUN_NS = 1_000_000_000


class SlotWindow:
    """Count of events in the last `slots` time slots: a deque of [slot, count]."""

    __slots__ = ("slots", "total", "last_slot", "_buckets")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.total = 0
        self.last_slot = -1
        self._buckets: deque[list[int]] = deque()

    def add(self, slot: int) -> int:
        """Count one event at `slot` (never earlier than the last); the count in the window."""
        floor = slot - self.slots + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < floor:
            self.total -= buckets.popleft()[1]
        if buckets and buckets[-1][0] == slot:
            buckets[-1][1] += 1
        else:
            buckets.append([slot, 1])
        self.total += 1
        self.last_slot = slot
        return self.total


def _window(table: dict, key, slots: int) -> SlotWindow:
    window = table.get(key)
    if window is None:
        window = table[key] = SlotWindow(slots)
    return window


class Detector:
    """Anomaly detection over the live connection stream (event time)."""

    def __init__(self, config: DetectConfig, baseline: Baseline | None = None, repeats=()) -> None:
        """`repeats`: rules whose crossings inside the cooldown come back as `repeat_alert`s
        (for the decision stage: the rules it may block on)."""
        self.config = config
        self._base = baseline if baseline is not None else Baseline.for_config(config)
        self._base.check_config(config, "baseline")
        self._ips = IpTable(config)
        self._rules = frozenset(config.rules)
        self._engine = BatchEngine(config, self._base, self._ips, self._rules, repeats)
        self._repeats = frozenset(repeats)
        self._repeat_runs: dict[tuple[str, int], int] = {}        # (rule, key) -> last run for a repeat
        self._res = config.resolution_ns
        self._short_ns = int(round(config.scan_short_s * 1e9))
        self._k = {SOURCE_RATE: config.slots(config.source_rate_window_s),
                   LISTENER_RATE: config.slots(config.listener_rate_window_s),
                   SCAN: config.slots(config.scan_window_s), REFUSED_BURST: config.slots(config.refused_window_s)}
        self._rate: dict[tuple[int, int], SlotWindow] = {}       # (listener, source key) -> starts
        self._listener: dict[int, SlotWindow] = {}                # listener -> starts
        self._short: dict[int, SlotWindow] = {}                   # source key -> short sessions
        self._refused: dict[int, SlotWindow] = {}                 # source key -> refusals
        self._touched: dict[int, dict[int, int]] = {}             # source key -> listener -> last slot
        self._buffer: list[tuple[int, int, int, int, bool, bool, bool]] = []
        self._events: list[ConnectionEvent] = []
        self._watermark: int | None = None
        self._pruned_slot = 0
        self.observed = 0
        self.address_table_cap = 4 * config.max_tracked   # compact the address table beyond this

    def baseline(self) -> Baseline:
        return self._base

    @property
    def learning(self) -> bool:
        return not self._base.complete

    @property
    def late_events(self) -> int:
        return self._engine.late_events

    def watch(self, port: int, t_ns: int) -> None:
        """The agent watches listener `port` from `t_ns` (its start, or a relay seen listening): it learns from then."""
        self._base.watch(port, t_ns, self.config)

    def observe(self, event: ConnectionEvent, flagged: bool = False) -> list[Alert]:
        """Buffer the event for the engine; the alerts it raises now, if it reaches a threshold.
        `flagged`: the policy alerted on it, so its source is not learned from."""
        if event.direction is not INGRESS:   # egress feeds no counter (`counted`): half the events
            return []
        flags = classify(event, self._short_ns)
        if flags is NOTHING:   # not `not flags`: Flags.__bool__ is a Python call
            return []
        self.observed += 1
        t = event.timestamp_ns
        if self._watermark is not None and t < self._watermark:
            t = self._watermark
        self._watermark = t
        self._base.start_learning(t, self.config)
        ips = self._ips
        src = ips.code(event.source_ip)
        key = ips.key_codes[src]
        if flagged:
            self._base.taint(ips.ips[key], t)
        lst = listener_port(event)
        self._buffer.append((event.timestamp_ns, lst, src, ips.code(event.destination_ip),
                             flags.start, flags.refused, flags.short))
        self._events.append(event)
        if self._crosses(t, lst, src, key, flags):
            return self._flush()
        return []

    def tick(self, now_ns: int) -> list[Alert]:
        """Micro-batch work: the engine judges what was observed since the last flush."""
        alerts = self._flush()
        base = self._base
        if not base.complete and base.learning_end_ns is not None and now_ns >= base.learning_end_ns:
            base.finish_learning(self.config)
        self._forget(now_ns)
        return alerts

    # ---- the trigger ---------------------------------------------------------------------

    def _crosses(self, t: int, lst: int, src: int, key: int, flags) -> bool:
        """Whether this event reaches some rule's threshold (then the engine judges it now)."""
        slot = t // self._res
        rules, engine, base = self._rules, self._engine, self._base
        name = self._ips.ips[key]
        hit = False
        if flags.start:
            span = base.listener_learning.get(lst)
            learning = t < (span[1] if span is not None else base.start_listener(lst, self.config))
            if SOURCE_RATE in rules:
                count = _window(self._rate, (lst, key), self._k[SOURCE_RATE]).add(slot)
                if count >= self.config.source_rate_min:
                    hit |= count >= engine.source_rate_threshold(lst, name, learning, peek=True)[0] \
                        and self._due(SOURCE_RATE, (lst << 32) | key, t)
            if LISTENER_RATE in rules:
                count = _window(self._listener, lst, self._k[LISTENER_RATE]).add(slot)
                if count >= self.config.listener_rate_min:
                    hit |= count >= engine.listener_rate_threshold(lst, learning)[0] and self._due(LISTENER_RATE, lst, t)
            if SCAN in rules:
                touched = self._touched.setdefault(key, {})
                touched[lst] = slot
                if len(touched) >= self.config.scan_min_listeners:
                    recent = sum(1 for last in touched.values() if last > slot - self._k[SCAN])
                    hit |= recent >= self.config.scan_min_listeners and self._due(SCAN, key, t)
            if NEW_SOURCE in rules and not learning:
                hit |= self._ips.prefixes[src] not in base.seen.get(lst, ())
        if flags.short and SCAN in rules:
            count = _window(self._short, key, self._k[SCAN]).add(slot)
            hit |= count >= engine.short_threshold(name)[0] and t >= base.learning_end_ns and self._due(SCAN, key, t)
        if flags.refused and REFUSED_BURST in rules:
            count = _window(self._refused, key, self._k[REFUSED_BURST]).add(slot)
            hit |= count >= self.config.refused_min and self._due(REFUSED_BURST, key, t)
        return hit

    def _due(self, rule: str, key: int, t: int) -> bool:
        """A crossing worth running the engine for now: an alert, or (for a rule the decision stage may
        block on) a repeat inside the cooldown, at most one run per key and second (the first repeat
        re-blocks a source no longer blocked at once; while it stays blocked its traffic stops)."""
        if not self._engine.cooling(rule, key, t):
            return True
        if rule not in self._repeats:
            return False
        last = self._repeat_runs.get((rule, key))
        if last is not None and t - last < REPEAT_RUN_NS:
            return False
        self._repeat_runs[(rule, key)] = t
        return True

    # ---- the engine ----------------------------------------------------------------------

    def _flush(self) -> list[Alert]:
        if not self._buffer:
            return []
        cols = list(zip(*self._buffer))
        events = self._events
        rows = Rows(
            t=np.array(cols[0], dtype=np.int64), lst=np.array(cols[1], dtype=np.int64),
            src=np.array(cols[2], dtype=np.int64), dst=np.array(cols[3], dtype=np.int64),
            start=np.array(cols[4], dtype=bool), refused=np.array(cols[5], dtype=bool),
            short=np.array(cols[6], dtype=bool), event_id=lambda i: events[i].id,
        )
        self._buffer = []
        self._events = []
        alerts = self._engine.process(rows)
        if alerts:
            by_id = {event.id: event for event in events}
            for alert in alerts:   # the relay: whether it may cause a block is decided by it
                if alert.trigger_event_ids and alert.trigger_event_ids[0] in by_id:
                    alert.process = by_id[alert.trigger_event_ids[0]].process
        return alerts

    def _forget(self, now_ns: int) -> None:
        """Drop trigger windows that have emptied; compact the address table when it grew too big."""
        slot = max(now_ns, self._watermark or 0) // self._res
        k = self._k
        if slot - self._pruned_slot >= k[SOURCE_RATE]:   # empty windows go every source window, not every tick
            self._pruned_slot = slot
            self._prune_windows(slot)
        if self._base.over(self.config.max_tracked):
            self._base.prune(self.config.max_tracked)
        if len(self._ips) > self.address_table_cap:
            self._compact_ips()

    def _prune_windows(self, slot: int) -> None:
        k = self._k
        self._rate = {key: w for key, w in self._rate.items() if w.last_slot > slot - k[SOURCE_RATE]}
        self._listener = {key: w for key, w in self._listener.items() if w.last_slot > slot - k[LISTENER_RATE]}
        self._short = {key: w for key, w in self._short.items() if w.last_slot > slot - k[SCAN]}
        self._refused = {key: w for key, w in self._refused.items() if w.last_slot > slot - k[REFUSED_BURST]}
        self._touched = {key: {lst: s for lst, s in seen.items() if s > slot - k[SCAN]}
                         for key, seen in self._touched.items() if max(seen.values()) > slot - k[SCAN]}
        self._repeat_runs = {key: last for key, last in self._repeat_runs.items()
                             if last > slot * self._res - REPEAT_RUN_NS}

    def _compact_ips(self) -> None:
        """Forget the addresses no window, cooldown or context refers to any more."""
        in_use = [self._engine.codes_in_use(),
                  np.array([key for _lst, key in self._rate] + list(self._short) + list(self._refused)
                           + list(self._touched), dtype=np.int64)]
        table, remap = self._ips.compact(np.concatenate(in_use))
        self._rate = {(lst, int(remap[key])): w for (lst, key), w in self._rate.items()}
        self._short = {int(remap[key]): w for key, w in self._short.items()}
        self._refused = {int(remap[key]): w for key, w in self._refused.items()}
        self._touched = {int(remap[key]): seen for key, seen in self._touched.items()}
        self._repeat_runs = {}
        self._engine.remap(table, remap)
        self._ips = table
