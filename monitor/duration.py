"""Durations as people write them: `500ms`, `20s`, `15m`, `1h`, `7d`, or seconds.

`parse_duration` is the one parser (config file, flags, the detectors);
`DURATION_PATTERN` is the same grammar as the config schema's pattern.
"""

from __future__ import annotations

import math
import re

from .errors import InputError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
DURATION = re.compile(DURATION_PATTERN)


def parse_duration(value: str | int | float, where: str = "duration") -> float:
    """Seconds from `20s`, `15m`, `1h`, `2d`, `500ms` or a bare number of seconds.

    Raises InputError naming `where` on anything else (negative, empty, unknown unit).
    """
    if isinstance(value, bool):
        raise InputError(where, f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = DURATION.match(str(value))
        if not match:
            raise InputError(where, f"not a duration: {value!r} (expected e.g. 20s, 15m, 1h, 2d, 500ms)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(where, f"duration must be zero or positive: {value!r}")
    return seconds
