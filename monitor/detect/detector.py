"""The live detector: `Detector.observe` per event, `Detector.tick` per micro-batch.

`observe` is the fast path (O(1) per event): per-key slot windows for
`anomaly.source_rate` and `anomaly.refused_burst`, and the seen-prefix set for
`anomaly.new_source`, so a flood is flagged on the event that crosses the
threshold. `tick` hands the events observed since the last tick to the
vectorised `BatchEngine` for `anomaly.listener_rate` and `anomaly.scan`. Each
listener learns for its own learning period from its first event (see
`DetectConfig`) and raises nothing before it has; the
crossing rules are those of `batch.py`: offline `analyze` runs the engine
for all rules and raises the same alerts.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..events import Alert, ConnectionEvent
from ..rules import repeat_alert
from .baseline import Baseline
from .batch import BatchEngine, cooldown_source, remap_cooldown_key
from .config import DetectConfig, rate_threshold
from .rows import IpTable, Rows, classify, listener_port
from .rules import LISTENER_RATE, NEW_SOURCE, REFUSED_BURST, SCAN, SOURCE_RATE, build_alert, describe_rate


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
        self._repeats = frozenset(repeats)
        self._engine = BatchEngine(config, self._base, self._ips,
                                   {r for r in (LISTENER_RATE, SCAN) if r in self._rules}, self._repeats)
        self._res = config.resolution_ns
        self._cd = int(round(config.cooldown_s * 1e9))
        self._short_ns = int(round(config.scan_short_s * 1e9))
        self._k_source = config.slots(config.source_rate_window_s)
        self._k_refused = config.slots(config.refused_window_s)
        self._rate: dict[tuple[int, int], SlotWindow] = {}
        self._refused: dict[int, SlotWindow] = {}
        self._cooldowns: dict[tuple, int] = {}
        self._buffer: list[tuple[int, int, int, int, bool, bool, bool]] = []
        self._buffer_ids: list[str] = []
        self._watermark: int | None = None
        self.late_events = 0
        self.observed = 0
        self.address_table_cap = 4 * config.max_tracked   # compact the address table beyond this

    def baseline(self) -> Baseline:
        return self._base

    @property
    def learning(self) -> bool:
        return not self._base.complete

    def observe(self, event: ConnectionEvent) -> list[Alert]:
        """The fast path: alerts this event raises now (source rate, refused burst, new source)."""
        flags = classify(event, self._short_ns)
        if not flags:
            return []
        self.observed += 1
        t = event.timestamp_ns
        if self._watermark is not None and t < self._watermark:
            t = self._watermark
            self.late_events += 1
        self._watermark = t
        base = self._base
        alerts: list[Alert] = []
        if not base.complete:
            base.start_learning(t, self.config)
            if t >= base.learning_end_ns:
                alerts += self._flush()
                base.finish_learning(self.config)
        slot = t // self._res
        lst = listener_port(event)
        learning = t < base.start_listener(lst, t, self.config)     # this listener's own learning period
        src = self._ips.code(event.source_ip)
        dst = self._ips.code(event.destination_ip)
        own: list[Alert] = []
        if flags.start:
            if learning:
                ip = self._ips.ips[src]
                base.source_last_ns[ip] = max(base.source_last_ns.get(ip, 0), t)
            if NEW_SOURCE in self._rules:
                own += self._new_source(event, t, lst, src, learning)
            if SOURCE_RATE in self._rules:
                own += self._source_rate(event, t, slot, lst, src, learning)
        if flags.refused and REFUSED_BURST in self._rules:
            own += self._refused_burst(event, t, slot, lst, src, learning or not base.complete)
        for alert in own:
            alert.process = event.process   # the relay: whether it may cause a block is decided by it
        self._buffer.append((t, lst, src, dst, flags.start, flags.refused, flags.short))
        self._buffer_ids.append(event.id)
        return alerts + own

    def tick(self, now_ns: int) -> list[Alert]:
        """Micro-batch work on what was observed since the last tick (listener rate, scan)."""
        base = self._base
        alerts = self._flush()
        if not base.complete and base.learning_end_ns is not None and now_ns >= base.learning_end_ns \
                and (self._watermark is None or self._watermark < base.learning_end_ns):
            base.finish_learning(self.config)
        self._forget(now_ns)
        return alerts

    def _flush(self) -> list[Alert]:
        if not self._buffer:
            return []
        cols = list(zip(*self._buffer))
        ids = self._buffer_ids
        rows = Rows(
            t=np.array(cols[0], dtype=np.int64), lst=np.array(cols[1], dtype=np.int64),
            src=np.array(cols[2], dtype=np.int64), dst=np.array(cols[3], dtype=np.int64),
            start=np.array(cols[4], dtype=bool), refused=np.array(cols[5], dtype=bool),
            short=np.array(cols[6], dtype=bool), event_id=lambda i: ids[i],
        )
        self._buffer = []
        self._buffer_ids = []
        return self._engine.process(rows)

    def _forget(self, now_ns: int) -> None:
        """Drop windows that have emptied and cooldowns that have expired."""
        slot = max(now_ns, self._watermark or 0) // self._res
        self._rate = {k: w for k, w in self._rate.items() if w.last_slot > slot - self._k_source}
        self._refused = {k: w for k, w in self._refused.items() if w.last_slot > slot - self._k_refused}
        horizon = max(now_ns, self._watermark or 0) - self._cd
        self._cooldowns = {k: v for k, v in self._cooldowns.items() if v > horizon}
        if self._base.over(self.config.max_tracked):
            self._base.prune(self.config.max_tracked)
        if len(self._ips) > self.address_table_cap:
            self._compact_ips()

    def _compact_ips(self) -> None:
        """Forget the addresses no window, cooldown or context refers to any more."""
        in_use = [self._engine.codes_in_use(),
                  np.array([src for _lst, src in self._rate] + list(self._refused), dtype=np.int64),
                  np.array([cooldown_source(rule, key) for rule, key in self._cooldowns], dtype=np.int64)]
        table, remap = self._ips.compact(np.concatenate(in_use))
        self._rate = {(lst, int(remap[src])): w for (lst, src), w in self._rate.items()}
        self._refused = {int(remap[src]): w for src, w in self._refused.items()}
        self._cooldowns = {(rule, remap_cooldown_key(rule, key, remap)): t for (rule, key), t in self._cooldowns.items()}
        self._engine.remap(table, remap)
        self._ips = table

    def _cooled(self, key: tuple, t: int) -> bool:
        last = self._cooldowns.get(key)
        if last is not None and t < last + self._cd:
            return False
        self._cooldowns[key] = t
        return True

    def _repeat(self, rule: str, t: int, ip: str) -> list[Alert]:
        return [repeat_alert(rule, t, ip)] if rule in self._repeats else []

    def _new_source(self, event: ConnectionEvent, t: int, lst: int, src: int, learning: bool) -> list[Alert]:
        prefix = self._ips.prefixes[src]
        if not self._base.add_seen(lst, prefix, t) or learning:
            return []
        ip = self._ips.ips[src]
        return [build_alert(
            NEW_SOURCE, t, f"{ip} ({prefix}) was never seen on listener {lst} during learning",
            source_ip=ip, listener_port=lst, listener_ip=event.destination_ip, observed=1.0, threshold=None,
            baseline=None, window_s=None, trigger_id=event.id,
        )]

    def _source_rate(self, event: ConnectionEvent, t: int, slot: int, lst: int, src: int,
                     learning: bool) -> list[Alert]:
        window = self._rate.get((lst, src))
        if window is None:
            window = self._rate[(lst, src)] = SlotWindow(self._k_source)
        count = window.add(slot)
        ip = self._ips.ips[src]
        if learning:
            rates = self._base.source_rate
            if count > rates.get((lst, ip), 0):
                rates[(lst, ip)] = count
            return []
        if count < self.config.source_rate_min:
            return []
        learned = self._base.source_rate_baseline(lst, ip, self.config.peer_quantile)
        threshold = rate_threshold(self.config.source_rate_min, self.config.source_rate_factor, learned)
        if count < threshold:
            return []
        if not self._cooled((SOURCE_RATE, (lst << 32) | src), t):
            return self._repeat(SOURCE_RATE, t, ip)
        return [build_alert(
            SOURCE_RATE, t,
            describe_rate(f"{ip} on listener {lst}", count, self.config.source_rate_window_s, threshold, learned),
            source_ip=ip, listener_port=lst, listener_ip=event.destination_ip, observed=count,
            threshold=threshold, baseline=learned, window_s=self.config.source_rate_window_s, trigger_id=event.id,
        )]

    def _refused_burst(self, event: ConnectionEvent, t: int, slot: int, lst: int, src: int,
                       learning: bool) -> list[Alert]:
        window = self._refused.get(src)
        if window is None:
            window = self._refused[src] = SlotWindow(self._k_refused)
        count = window.add(slot)
        if learning or count < self.config.refused_min:
            return []
        ip = self._ips.ips[src]
        if not self._cooled((REFUSED_BURST, src), t):
            return self._repeat(REFUSED_BURST, t, ip)
        return [build_alert(
            REFUSED_BURST, t,
            f"{ip}: {count} connections refused by socat in {self.config.refused_window_s:g}s "
            f"(threshold {self.config.refused_min})",
            source_ip=ip, listener_port=lst, listener_ip=event.destination_ip, observed=count,
            threshold=float(self.config.refused_min), baseline=0.0, window_s=self.config.refused_window_s,
            trigger_id=event.id,
        )]
