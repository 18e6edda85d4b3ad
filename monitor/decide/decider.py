"""`Decider`: alerts in, decided alerts and block events out.

For each alert, the action comes from the first of: `decide.rules` for the
rule id, then for its ruleset; the policy listener's `action` (alerts of the
policy engine carry it); `detect.block_rules`; the catalogue's default. A
rule that names no single offender, or an alert without a source, never
blocks. The target is the source address (the /64 a rule counted as one
IPv6 source, `Alert.source_network`), or its network (`scope: network`,
/24 or /64). The TTL is the rule's, else `decide.ttl`, else
`enforce.default_ttl`.

Trust: an alert caused by a relay the agent may not act for is alerted on but
never blocked (`Alert.block_skipped` says why): a relay in another network
namespace than the one enforced in (its blocks would land in the wrong
table), and, unless the policy listener sets `trust_unprivileged`, a relay
started by a non-root user (the uid it was exec'd as: a root relay that drops
to `su=nobody` stays root's) or living in a user namespace a non-root user owns
(any local user can start a process named socat and connect to it from an
address of their choosing). An alert whose relay is unknown is judged as before.

Escalation: a source blocked again within `repeat_window` after its previous
block ended (or while an operator had removed it) gets `repeat_factor` times
the previous TTL, up to `max_ttl`. A block refreshed while it holds keeps its
TTL level.

Re-offence: a `deduplicated` alert (a repeat the producer held back) is not
written, but when its source is not blocked now it is blocked again at once.
"Blocked now" is the decider's own record of what it decided (event time),
confirmed with the enforcer (`BlockState.is_blocked`) when one is attached,
so a block an operator removed (`blocks remove`) counts as gone. A block the
enforcer refused or only simulated (dry run) is not retried on every repeat.

Without an enforcer (offline `analyze`, `--no-enforce`) the decisions are the
same; they are only not carried out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from ..addresses import network_of
from ..events import Action, Alert, BlockEvent, ProcessInfo, Record
from ..rules import RULES
from .config import DecideConfig, RuleSetting, rule_settings

NS = 1_000_000_000
REOFFENCE = "re-offence while not blocked (alert deduplicated)"


class BlockState(Protocol):
    def is_blocked(self, target: str, now_ns: int) -> bool: ...


class Blocker(BlockState, Protocol):
    def block(self, target: str, *, ttl_s: float | None, rule_id: str | None,
              alert_id: str | None, now_ns: int) -> BlockEvent: ...
    def expire(self, now_ns: int) -> list[BlockEvent]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one alert: block `target` for `ttl_s` (before escalation), or only alert
    (`skipped`: why a block the action asked for is not made)."""

    block: bool
    target: str | None = None
    ttl_s: float | None = None
    skipped: str | None = None


_ALERT_ONLY = Decision(False)


@dataclass(slots=True)
class _Record:
    """The last block decided for a target."""

    level: int           # escalations so far (0: a first block)
    expires_ns: int      # when it ends, in event time
    enforced: bool       # the enforcer holds it (False: refused, dry run)


def distrust(process: ProcessInfo | None, enforce_netns: int | None, trust_unprivileged: bool) -> str | None:
    """Why the relay `process` may not cause a block in the namespace `enforce_netns` (None: it may)."""
    if process is None:
        return None
    relay = f"relay pid {process.pid}"
    if enforce_netns is not None and process.netns is not None and process.netns != enforce_netns:
        return (f"{relay} is in network namespace net:[{process.netns}], not net:[{enforce_netns}] "
                "where this agent enforces")
    started = process.started_uid if process.started_uid is not None else process.uid
    if trust_unprivileged:
        if started and enforce_netns is not None and process.netns is None:
            return f"{relay} was started by uid {started} and its network namespace is unknown (gone)"
        return None
    unless = "and its policy listener does not set trust_unprivileged"
    if started not in (None, 0):
        return f"{relay} was started by uid {started}, not root, {unless}"
    if process.userns_owner not in (None, 0):
        return f"{relay} lives in a user namespace owned by uid {process.userns_owner}, not root, {unless}"
    return None


class Decider:
    """Decisions for one agent (or one offline analysis)."""

    def __init__(self, config: DecideConfig, *, default_ttl_s: float, block_rules: Iterable[str] = (),
                 blocker: Blocker | None = None, enforce_netns: int | None = None) -> None:
        """`enforce_netns`: the inode of the network namespace blocks land in (None: offline, not checked)."""
        self.blocker = blocker
        self.enforce_netns = enforce_netns
        self._history: dict[str, _Record] = {}
        self.reoffences = 0
        self.reconfigure(config, default_ttl_s=default_ttl_s, block_rules=block_rules)

    def reconfigure(self, config: DecideConfig, *, default_ttl_s: float, block_rules: Iterable[str] = ()) -> None:
        """New settings (a reload); the block history stays, so repeat offenders keep escalating."""
        self.config = config
        self.default_ttl_s = float(default_ttl_s)
        self.block_rules = frozenset(block_rules)
        self._settings = rule_settings(config.rules)

    def decision(self, alert: Alert) -> Decision:
        """The action, target and base TTL for an alert (pure: the history plays no part)."""
        entry = RULES.get(alert.rule_id)
        if entry is None or not entry.can_block or not alert.source_ip:
            return _ALERT_ONLY
        own = self._settings.get(entry.id, RuleSetting())
        group = self._settings.get(entry.ruleset, RuleSetting())
        action = own.action or group.action or alert.listener_action \
            or ("block" if entry.id in self.block_rules else entry.action)
        if action != "block":
            return _ALERT_ONLY
        skipped = distrust(alert.process, self.enforce_netns, alert.listener_trusts_unprivileged)
        if skipped:
            return Decision(False, skipped=skipped)
        scope = own.scope or group.scope or entry.scope
        ttl = own.ttl_s or group.ttl_s or self.config.ttl_s or self.default_ttl_s
        return Decision(True, self._target(alert.source_network or alert.source_ip, scope), ttl)

    def may_block(self, rule_id: str) -> bool:
        """Whether some alert of `rule_id` may be decided to block (its producer then reports repeats)."""
        entry = RULES[rule_id]
        own = self._settings.get(entry.id, RuleSetting())
        group = self._settings.get(entry.ruleset, RuleSetting())
        action = own.action or group.action
        if not entry.can_block or action == "alert":
            return False
        return action == "block" or entry.follows_listener or entry.id in self.block_rules or entry.action == "block"

    def decide(self, alerts: Iterable[Alert]) -> list[Record]:
        """The alerts to write (decided), each followed by the block event it caused."""
        out: list[Record] = []
        for alert in alerts:
            decision = self.decision(alert)
            if alert.deduplicated:
                if decision.block and not self._holds(decision.target, alert.timestamp_ns):
                    self.reoffences += 1
                    out.extend(self._block(alert, decision, alert_id=None, reason=REOFFENCE))
                continue
            out.append(alert)
            alert.block_skipped = decision.skipped
            if decision.block:
                out.extend(self._block(alert, decision, alert_id=alert.id, reason=None))
        return out

    def _target(self, source: str, scope: str) -> str:
        """The source (an address, or the IPv6 /64 a rule counted as one source), or its network."""
        if scope != "network":
            return source
        address, _, counted = source.partition("/")
        bits = self.config.network_v6_prefix if ":" in address else self.config.network_v4_prefix
        if counted and int(counted) <= bits:
            return source
        return network_of(address, bits)

    def _holds(self, target: str, now_ns: int) -> bool:
        """Whether `target` is blocked now: decided and not expired, and (when enforced) still in the kernel."""
        last = self._history.get(target)
        if last is None or last.expires_ns <= now_ns:
            return False
        if not last.enforced or self.blocker is None:
            return True
        return self.blocker.is_blocked(target, now_ns)

    def _ttl(self, target: str, base_s: float, now_ns: int) -> tuple[float, int]:
        """(TTL, escalation level) of a block of `target` decided at `now_ns`."""
        last = self._history.get(target)
        if last is None:
            level = 0
        elif self._holds(target, now_ns):
            level = last.level
        elif now_ns - last.expires_ns < self.config.repeat_window_s * NS:
            level = last.level + 1
        else:
            level = 0
        if level == 0:
            return base_s, 0
        return max(base_s, min(base_s * self.config.repeat_factor ** level, self.config.max_ttl_s)), level

    def _block(self, alert: Alert, decision: Decision, *, alert_id: str | None,
               reason: str | None) -> list[BlockEvent]:
        now = alert.timestamp_ns
        target = decision.target
        ttl, level = self._ttl(target, decision.ttl_s, now)
        if not alert.deduplicated:
            alert.block, alert.block_target, alert.block_ttl_s = True, target, ttl
        events: list[BlockEvent] = []
        enforced = True
        if self.blocker is not None:
            event = self.blocker.block(target, ttl_s=ttl, rule_id=alert.rule_id, alert_id=alert_id, now_ns=now)
            if reason and event.reason is None:
                event.reason = reason
            enforced = event.action is Action.BLOCKED
            events.append(event)
        self._remember(target, _Record(level, now + int(ttl * NS), enforced), now)
        return events

    def _remember(self, target: str, record: _Record, now_ns: int) -> None:
        self._history.pop(target, None)
        self._history[target] = record
        if len(self._history) > self.config.max_tracked:
            horizon = now_ns - int(self.config.repeat_window_s * NS)
            self._history = {t: r for t, r in self._history.items() if r.expires_ns > horizon}
            while len(self._history) > self.config.max_tracked:
                del self._history[next(iter(self._history))]
