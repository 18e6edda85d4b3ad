"""Index lifecycle of the events and alerts aliases: rollover conditions and retention.

Documents are written through rollover aliases (`<alias>-000001`, then
`-000002` ...). Where the server has ILM (the default distribution) an ILM
policy built from the same settings rolls and deletes; on the OSS build
(no ILM) the sink itself asks `_rollover` with these conditions now and then
and deletes the indices that stopped receiving writes more than `retention`
ago. The decisions here are pure; the sink does the I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..durations import parse_duration

_SIZE = re.compile(r"^\d+(b|kb|mb|gb|tb|pb)$")
_INDEX_NUMBER = re.compile(r"-(\d{6})$")


def check_rollover(value: Any) -> None:
    """The config's `elasticsearch.rollover` mapping: ValueError naming the key that is wrong."""
    if isinstance(value, dict):
        try:
            RolloverConfig.from_yaml(value)
        except ValueError as exc:   # the schema names the section already
            raise ValueError(str(exc).removeprefix("elasticsearch.rollover.")) from None
    elif value is not None and not isinstance(value, RolloverConfig):
        raise ValueError("expected a mapping of max_docs, max_age, max_size, check_interval (or null)")


@dataclass(frozen=True, slots=True)
class RolloverConfig:
    """`elasticsearch.rollover`: roll the write index over once any condition is met."""

    max_docs: int | None = None
    max_age_s: float | None = 7 * 86400.0
    max_size: str | None = "50gb"
    check_interval_s: float = 60.0         # how often the sink asks (OSS build only)

    @classmethod
    def from_yaml(cls, data: dict[str, Any] | None) -> "RolloverConfig":
        """From the `rollover:` mapping; ValueError names the key."""
        if data is None:
            return cls()
        known = {"max_docs", "max_age", "max_age_s", "max_size", "check_interval", "check_interval_s"}
        for key in data:
            if key not in known:
                raise ValueError(f"elasticsearch.rollover.{key}: unknown key (expected max_docs, max_age, "
                                 f"max_size, check_interval)")
        values: dict[str, Any] = {}
        for key in ("max_age", "check_interval"):
            for given in (key, key + "_s"):
                if data.get(given) is not None:
                    values[key + "_s"] = parse_duration(data[given], f"elasticsearch.rollover.{given}")
        if "max_docs" in data:
            values["max_docs"] = data["max_docs"]
        if "max_size" in data:
            values["max_size"] = data["max_size"]
        return cls(**values)

    def __post_init__(self) -> None:
        if self.max_docs is not None and (isinstance(self.max_docs, bool) or not isinstance(self.max_docs, int)
                                          or self.max_docs < 1):
            raise ValueError(f"elasticsearch.rollover.max_docs: a positive whole number, got {self.max_docs!r}")
        if self.max_size is not None and not _SIZE.match(str(self.max_size).lower()):
            raise ValueError(f"elasticsearch.rollover.max_size: expected a size like 50gb or 500mb, "
                             f"got {self.max_size!r}")
        if self.check_interval_s <= 0:
            raise ValueError("elasticsearch.rollover.check_interval: must be positive")
        if self.max_docs is None and self.max_age_s is None and self.max_size is None:
            raise ValueError("elasticsearch.rollover: give at least one of max_docs, max_age, max_size")

    def conditions(self) -> dict[str, Any]:
        """The `conditions` of a `_rollover` request (and of an ILM rollover action)."""
        out: dict[str, Any] = {}
        if self.max_docs is not None:
            out["max_docs"] = self.max_docs
        if self.max_age_s is not None:
            out["max_age"] = f"{int(self.max_age_s)}s"
        if self.max_size is not None:
            out["max_size"] = str(self.max_size).lower()
        return out


def ilm_policy(rollover: RolloverConfig, retention_s: float | None) -> dict[str, Any]:
    """The body of `PUT _ilm/policy/<name>`: roll over as configured, delete after the retention."""
    phases: dict[str, Any] = {"hot": {"min_age": "0ms", "actions": {"rollover": rollover.conditions()}}}
    if retention_s is not None:
        phases["delete"] = {"min_age": f"{int(retention_s)}s", "actions": {"delete": {}}}
    return {"policy": {"_meta": {"managed_by": "socat-monitor"}, "phases": phases}}


def expired(alias: str, created_ms: dict[str, int], retention_s: float, now_ms: int) -> list[str]:
    """Indices of the alias to delete: those whose successor was created more than `retention_s` ago.

    An index stops receiving writes when the next one is created by the
    rollover, so that is when its age starts; the write index (the newest)
    is never deleted. Only `<alias>-NNNNNN` indices are considered.
    """
    numbered = sorted((int(m.group(1)), name) for name in created_ms
                      if name.startswith(alias + "-") and (m := _INDEX_NUMBER.search(name))
                      and len(name) == len(alias) + 7)
    out = []
    for (_, name), (_, successor) in zip(numbered, numbered[1:]):
        if now_ms - created_ms[successor] > retention_s * 1000:
            out.append(name)
    return out
