"""Detector settings: the `DetectConfig` dataclass and the `parse_duration` helper.

All windows and thresholds of the anomaly detectors live here, with defaults a
small relay can run with unchanged. `monitor.config` builds one from the YAML
`detect:` section, or from `analyze --set KEY=VALUE` flags, the same way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from ..errors import InputError
from ..rules import CATALOGUE

RULES = tuple(rule.id for rule in CATALOGUE if rule.ruleset == "anomaly")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"   # also the config schema's
_DURATION = re.compile(DURATION_PATTERN)


def parse_duration(value: str | int | float, where: str = "duration") -> float:
    """Seconds from `20s`, `15m`, `1h`, `2d`, `500ms` or a bare number of seconds.

    Raises InputError naming `where` on anything else (negative, empty, unknown unit).
    """
    if isinstance(value, bool):
        raise InputError(where, f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise InputError(where, f"not a duration: {value!r} (expected e.g. 20s, 15m, 1h, 2d, 500ms)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(where, f"duration must be zero or positive: {value!r}")
    return seconds


@dataclass(frozen=True)
class DetectConfig:
    """Windows (seconds), thresholds and learning settings of the detectors.

    Every rule counts events per key in a sliding window of event time (slots
    of `resolution_s`) and alerts on the event whose count reaches the threshold:

    - source_rate (per listener and source): `max(source_rate_min, source_rate_factor
      * max(own learned peak, peer_quantile of the listener's sources' peaks))`
    - listener_rate (per listener): `max(listener_rate_min, listener_rate_factor * learned peak)`
    - scan (per source): distinct listeners in `scan_window_s` reach
      `max(scan_min_listeners, learned peak + 1)`, or connections closed within
      `scan_short_s` reach `max(scan_short_min, scan_short_factor * learned peak)`
    - refused_burst (per source): `refused_min` refusals in `refused_window_s`
    - new_source: a /`new_source_v4_prefix` (/`new_source_v6_prefix`) never seen on the listener

    A learned peak is the highest count the key reached in one window during learning.

    Learning: each listener learns for `learning_period_s` of event time from its
    own first event (a relay started in the afternoon learns from then on, instead
    of flagging every client as new): its prefixes seen (new_source), its sources'
    peaks and its peer peak (source_rate), its own peak (listener_rate). Nothing
    on a listener is raised while it learns. The per-source scan peaks are learned
    in the first learning period (from the first event at all); refused_burst and
    scan raise nothing before it is over. The learning state is part of the
    baseline, so a restart resumes it.

    Counting: capture reports a connection socat refuses as ACCEPTED, then DENIED
    (`refused=True`). The ACCEPTED counts once in source_rate, listener_rate and
    scan's distinct listeners; the DENIED counts only in refused_burst. Short
    sessions (scan) are CLOSED events only: a refused connection is no scan probe.
    """

    learning_period_s: float = 3600.0
    resolution_s: float = 0.1            # time slot of all sliding windows
    cooldown_s: float = 300.0            # one alert per rule and key per cooldown
    max_tracked: int = 100_000           # sources / prefixes kept in the baseline
    rules: tuple[str, ...] = RULES       # enabled detectors
    block_rules: tuple[str, ...] = ()    # the decision stage blocks on these rules (monitor.decide)
    top_sources: int = 5

    source_rate_window_s: float = 10.0
    source_rate_factor: float = 3.0
    source_rate_min: int = 20
    peer_quantile: float = 0.99

    listener_rate_window_s: float = 10.0
    listener_rate_factor: float = 3.0
    listener_rate_min: int = 100

    scan_window_s: float = 60.0
    scan_min_listeners: int = 3
    scan_short_s: float = 1.0            # a connection closed within this is "short"
    scan_short_min: int = 30
    scan_short_factor: float = 3.0

    refused_window_s: float = 60.0
    refused_min: int = 10

    new_source_v4_prefix: int = 24
    new_source_v6_prefix: int = 64

    _durations = ("learning_period_s", "resolution_s", "cooldown_s", "source_rate_window_s",
                  "listener_rate_window_s", "scan_window_s", "scan_short_s", "refused_window_s")

    def __post_init__(self) -> None:
        """ValueError naming the setting when a value is out of range."""
        for name in ("rules", "block_rules"):
            for rule in getattr(self, name):
                if rule not in RULES:
                    raise ValueError(f"{name}: unknown rule {rule!r} (known: {', '.join(RULES)})")
        if self.resolution_s <= 0:
            raise ValueError("resolution_s: must be positive")
        for name in self._durations:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be zero or positive")
        for name in ("source_rate_window_s", "listener_rate_window_s", "scan_window_s", "refused_window_s"):
            if getattr(self, name) < self.resolution_s:
                raise ValueError(f"{name}: must be at least resolution_s ({self.resolution_s})")
        for name in ("max_tracked", "source_rate_min", "listener_rate_min", "scan_min_listeners",
                     "scan_short_min", "refused_min", "top_sources"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if not 0.0 < self.peer_quantile <= 1.0:
            raise ValueError("peer_quantile: must be in (0, 1]")
        if not 0 <= self.new_source_v4_prefix <= 32:
            raise ValueError("new_source_v4_prefix: must be 0..32")
        if not 0 <= self.new_source_v6_prefix <= 128:
            raise ValueError("new_source_v6_prefix: must be 0..128")

    def with_learning_period(self, seconds: float) -> "DetectConfig":
        return dataclasses.replace(self, learning_period_s=seconds)

    def slots(self, window_s: float) -> int:
        """A window's length in time slots."""
        return max(1, int(round(window_s / self.resolution_s)))

    @property
    def resolution_ns(self) -> int:
        return int(round(self.resolution_s * 1e9))

    @property
    def learning_period_ns(self) -> int:
        return int(round(self.learning_period_s * 1e9))

    def windows(self) -> dict[str, float]:
        """The settings a learned baseline depends on (stored with it)."""
        return {
            "resolution_s": self.resolution_s,
            "source_rate_window_s": self.source_rate_window_s,
            "listener_rate_window_s": self.listener_rate_window_s,
            "scan_window_s": self.scan_window_s,
            "scan_short_s": self.scan_short_s,
        }


def rate_threshold(minimum: float, factor: float, baseline: float) -> float:
    """The one threshold formula of every rate rule, live and offline."""
    return max(float(minimum), factor * baseline)
