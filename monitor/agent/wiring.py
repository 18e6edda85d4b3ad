"""Building the agent's stages from its `Config`: policy, detector, enforcer,
egress rules and sinks. Used at start and by a reload."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..decide import Decider
from ..detect import Baseline, Detector
from ..ecs import HostInfo
from ..events import Listener, ProcessInfo
from ..enforce import EgressRule
from ..enforce.netns import netns_inode
from ..policy import Policy, PolicyEngine, load_policy
from .scopes import Enforcers, enforced_namespaces
from .. import sinks as sink_kinds
from ..sinks import AlertFeed, ColumnarSink, ErrorCallback, Fanout, NdjsonSink, WebhookSink


def read_policy(path: str | None) -> Policy | None:
    return load_policy(path) if path else None


def home(config: Config) -> frozenset[int]:
    """The inodes of the namespaces enforced in: the relays there are the ones policy entries naming no
    identity mean, and the only ones whose offences may block."""
    return frozenset(netns_inode(netns) for netns in enforced_namespaces(config.enforce))


def engine(policy: Policy | None, config: Config, previous: PolicyEngine | None = None) -> PolicyEngine | None:
    """The policy engine of `policy`; a reload carries the open connections and counts of `previous` over."""
    if policy is None:
        return None
    new = PolicyEngine(policy, config.policy_engine, home(config))
    if previous is not None:
        new.carry_over(previous)
    return new


def make_decider(config: Config, enforcers: Enforcers | None) -> Decider:
    """The decider; a relay's blocks land in its own namespace's table, and relays outside the namespaces
    enforced in (`enforce.netns` / `enforce.namespaces`, else ours) never block."""
    settings = dict(default_ttl_s=config.enforce.default_ttl_s, block_rules=config.detect.block_rules)
    if enforcers is not None:
        return Decider(config.decide, blockers=enforcers.by_inode(), **settings)
    return Decider(config.decide, enforce_netns=netns_inode(enforced_namespaces(config.enforce)[0]), **settings)


def make_detector(config: Config, decider: Decider, baseline: Baseline | None = None) -> Detector:
    """A detector with `baseline`, or the one in the baseline file, or a fresh one; it reports repeats
    inside its cooldowns for the rules the decider may block on."""
    path = config.agent.baseline
    if baseline is None and path and Path(path).exists():
        baseline = Baseline.load(path)
    return Detector(config.detect, baseline, [r for r in config.detect.rules if decider.may_block(r)])


def make_enforcer(config: Config) -> Enforcers | None:
    return Enforcers(config.enforce) if config.enforce.enabled else None


def egress_rules(policy: Policy | None) -> list[EgressRule]:
    """The kernel's backend rules: one per port (the guard keys them by port), from the first entry of the
    port with `allow_backends` and `action: block`; `guards` says which relays it may be applied to."""
    if policy is None:
        return []
    first: dict[int, EgressRule] = {}
    for lp in policy.listeners:
        if lp.allow_backends and lp.action == "block":
            first.setdefault(lp.port, EgressRule.from_policy(lp))
    return list(first.values())


def guards(policy: Policy | None, listener: Listener, relay: ProcessInfo, home: frozenset[int]) -> bool:
    """Whether the egress rule of `listener`'s port is the one of the entry that means `relay`: a relay
    another entry means (another namespace, container, user) is never held to that entry's backends."""
    if policy is None:
        return False
    entry = policy.listener(listener.port, listener.ip, relay, home)
    return entry is not None and any(rule.name == entry.name for rule in egress_rules(policy))


def make_sinks(config: Config, host: HostInfo, on_error: ErrorCallback) -> Fanout:
    sinks = [NdjsonSink(config.ndjson, host, on_error=on_error)]
    if config.columnar.enabled:
        sinks.append(ColumnarSink(config.columnar, config.ndjson.directory, on_error=on_error))
    if config.elasticsearch is not None and config.elasticsearch.urls:
        # looked up only here: the sink's module and client load only for an agent that ships there
        sinks.append(sink_kinds.ElasticsearchSink(config.elasticsearch, host, on_error=on_error))
    if config.alert_feed is not None:
        sinks.append(AlertFeed(config.alert_feed, host, on_error=on_error))
    if config.webhook is not None:
        sinks.append(WebhookSink(config.webhook, host, on_error=on_error))
    return Fanout(sinks, on_error)


def sink_settings(config: Config) -> tuple:
    """What the sinks are built from: a change in any of it rebuilds them."""
    return config.ndjson, config.columnar, config.elasticsearch, config.alert_feed, config.webhook
