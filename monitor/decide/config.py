"""The `decide:` section: per rule (or ruleset) action, scope and TTL, and escalation.

```yaml
decide:
  ttl: 10m                 # a first block's TTL (default: enforce.default_ttl)
  repeat_window: 24h       # blocked again within this after the last block ended: escalate
  repeat_factor: 4         # each escalation multiplies the TTL (1: no escalation)
  max_ttl: 24h             # escalated TTLs stop here
  rules:
    anomaly: {action: block}                       # a whole ruleset
    anomaly.new_source: {scope: network, ttl: 1h}  # one rule (wins over its ruleset)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..durations import parse_duration
from ..errors import InputError
from ..rules import ACTIONS, RULES, RULESETS, SCOPES
from ..settings import setting


@dataclass(frozen=True, slots=True)
class RuleSetting:
    """What `decide.rules.<rule id or ruleset>` says; None leaves it to the next source."""

    action: str | None = None
    scope: str | None = None
    ttl_s: float | None = None


_KEYS = {"action", "scope", "ttl", "ttl_s"}


def rule_settings(rules: dict[str, Any]) -> dict[str, RuleSetting]:
    """The `rules` mapping checked and typed; ValueError `rules: KEY: problem`."""
    out: dict[str, RuleSetting] = {}
    for key, raw in (rules or {}).items():
        if key not in RULES and key not in RULESETS:
            raise ValueError(f"{key!r} is neither a rule id nor a ruleset ({', '.join(RULESETS)})")
        if not isinstance(raw, dict) or not raw or set(raw) - _KEYS:
            raise ValueError(f"{key}: expected a mapping of {', '.join(sorted(_KEYS - {'ttl_s'}))}, got {raw!r}")
        out[key] = _setting(key, raw)
    return out


def _setting(key: str, raw: dict[str, Any]) -> RuleSetting:
    action, scope = raw.get("action"), raw.get("scope")
    if action is not None and action not in ACTIONS:
        raise ValueError(f"{key}: action {action!r} is not one of {', '.join(ACTIONS)}")
    if action == "block" and not any(r.can_block for r in RULES.values() if key in (r.id, r.ruleset)):
        raise ValueError(f"{key}: cannot block: it names no single offender")
    if scope is not None and scope not in SCOPES:
        raise ValueError(f"{key}: scope {scope!r} is not one of {', '.join(SCOPES)}")
    ttl = raw.get("ttl", raw.get("ttl_s"))
    if ttl is not None:
        try:
            ttl = parse_duration(ttl, "ttl")
        except InputError as exc:
            raise ValueError(f"{key}: {exc.message}") from None
        if ttl <= 0:
            raise ValueError(f"{key}: ttl must be positive")
    return RuleSetting(action=action, scope=scope, ttl_s=ttl)


@dataclass(frozen=True)
class DecideConfig:
    ttl_s: float | None = setting(None, above=0)          # a first block's TTL; None: enforce.default_ttl
    repeat_window_s: float = 86400.0     # a source blocked again within this after its last block ended escalates
    repeat_factor: float = setting(4.0, minimum=1)        # TTL multiplier per escalation (1: none)
    max_ttl_s: float = setting(86400.0, above=0)          # cap of escalated TTLs
    network_v4_prefix: int = setting(24, minimum=0, maximum=32)    # scope network: the source's /24 ...
    network_v6_prefix: int = setting(64, minimum=0, maximum=128)   # ... or /64
    max_tracked: int = setting(100_000, minimum=1)        # sources whose block history is remembered
    rules: dict[str, Any] = setting(default_factory=dict, check=rule_settings)   # rule id or ruleset -> settings
