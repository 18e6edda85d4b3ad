"""Detector settings: the `DetectConfig` dataclass.

All windows and thresholds of the anomaly detectors live here, with defaults a
small relay can run with unchanged. `monitor.config` builds one from the YAML
`detect:` section, or from `analyze --set KEY=VALUE` flags, the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..settings import setting
from ..rules import CATALOGUE

RULES = tuple(rule.id for rule in CATALOGUE if rule.ruleset == "anomaly")


@dataclass(frozen=True)
class DetectConfig:
    """Windows (seconds), thresholds and learning settings of the detectors.

    Every rule counts events per key in a sliding window of event time (slots
    of `resolution_s`) and alerts on the event whose count reaches the threshold.
    A source is an IPv4 address, or an IPv6 /`source_v6_prefix` (one attacker
    rotating addresses inside its /64 is one source):

    - source_rate (per listener and source): `source_rate_min` (the floor) while
      the listener learns; after, `max(source_rate_min, source_rate_factor *
      max(own learned peak, peer_quantile of the listener's sources' peaks))`
    - listener_rate (per listener): `listener_rate_min` while it learns; after,
      `max(listener_rate_min, listener_rate_factor * learned peak)`
    - scan (per source): distinct listeners in `scan_window_s` reach
      `scan_min_listeners` (no baseline: from the first event), or, once the
      first learning period is over, connections closed within `scan_short_s`
      reach `max(scan_short_min, scan_short_factor * learned peak)`
    - refused_burst (per source): `refused_min` refusals in `refused_window_s` (no baseline)
    - new_source: a /`new_source_v4_prefix` (/`new_source_v6_prefix`) never seen on
      the listener while it learned

    A learned peak is the highest count the key reached in one window while
    learning, counting only what stayed below the floor and only sources never
    flagged (an anomaly alert, a policy alert): a flood or a ramp that reaches
    the floor is alerted on, not learned.

    Learning: each listener learns for `learning_period_s` of event time from
    the moment the agent started watching it (`Detector.watch`: the agent's
    start for relays already listening, the moment a new relay is seen
    listening), else from the watch start (the stream's first event, offline).
    A listener that stayed idle has learned "idle". The per-source short-session
    peaks are learned in the first learning period (from the watch start). The
    learning state is part of the baseline, so a restart resumes it.

    Counting: `rows.counted` (one definition, live and offline).
    """

    learning_period_s: float = 3600.0
    resolution_s: float = setting(0.1, above=0, live=False)   # time slot of all sliding windows
    cooldown_s: float = 300.0            # one alert per rule and key per cooldown
    max_tracked: int = setting(100_000, minimum=1)            # sources / prefixes kept in the baseline
    rules: tuple[str, ...] = setting(RULES, choices=RULES)    # enabled detectors
    block_rules: tuple[str, ...] = setting((), choices=RULES)  # alerts of these rules ask enforce to block
    top_sources: int = setting(5, minimum=1)

    source_rate_window_s: float = setting(10.0, at_least="resolution_s", live=False)
    source_rate_factor: float = 3.0
    source_rate_min: int = setting(30, minimum=1)            # the floor: threshold while learning, minimum after
    peer_quantile: float = setting(0.99, above=0, maximum=1)

    listener_rate_window_s: float = setting(10.0, at_least="resolution_s", live=False)
    listener_rate_factor: float = 3.0
    listener_rate_min: int = setting(300, minimum=1)         # the floor, as source_rate_min

    scan_window_s: float = setting(60.0, at_least="resolution_s", live=False)
    scan_min_listeners: int = setting(3, minimum=1)
    scan_short_s: float = setting(1.0, live=False)            # a connection closed within this is "short"
    scan_short_min: int = setting(30, minimum=1)
    scan_short_factor: float = 3.0

    refused_window_s: float = setting(60.0, at_least="resolution_s")
    refused_min: int = setting(10, minimum=1)

    new_source_v4_prefix: int = setting(24, minimum=0, maximum=32)
    new_source_v6_prefix: int = setting(64, minimum=0, maximum=128)
    source_v6_prefix: int = setting(64, minimum=1, maximum=128)   # rate and scan rules: an IPv6 source (128: per address)

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
