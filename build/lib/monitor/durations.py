"""Durations as the operator writes them (`20s`, `15m`, `1h`, `2d`, `500ms`, or a
bare number of seconds), in the config file, `--set`, `--learning-period`
and `blocks add --ttl` alike."""

from __future__ import annotations

import math
import re

from .errors import InputError

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"   # also the config schema's
_DURATION = re.compile(DURATION_PATTERN)


def parse_duration(value: str | int | float, where: str = "duration", *, positive: bool = False) -> float:
    """Seconds from `20s`, `15m`, `1h`, `2d`, `500ms` or a bare number of seconds.

    Raises InputError naming `where` on anything else (negative, empty, unknown
    unit; zero too when `positive`).
    """
    if isinstance(value, bool):
        raise InputError(where, f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise InputError(where, f"not a duration: {value!r} (expected e.g. 20s, 15m, 1h, 2d, 500ms)")
        seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(where, f"duration must be zero or positive: {value!r}")
    if positive and seconds == 0:
        raise InputError(where, f"duration must be positive: {value!r}")
    return seconds
