"""Building the agent's stages from its `Config`: policy, detector, enforcer,
egress rules and sinks. Used at start and by a reload."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..decide import Decider
from ..detect import Baseline, Detector
from ..ecs import HostInfo
from ..enforce import EgressRule, Enforcer
from ..enforce.nft import DropListener
from ..enforce.netns import netns_inode
from ..policy import Policy, PolicyEngine, load_policy
from .. import sinks as sink_kinds
from ..sinks import AlertFeed, ErrorCallback, Fanout, NdjsonSink, WebhookSink


def read_policy(path: str | None) -> Policy | None:
    return load_policy(path) if path else None


def engine(policy: Policy | None, config: Config, previous: PolicyEngine | None = None) -> PolicyEngine | None:
    """The policy engine of `policy`; a reload carries the open connections and counts of `previous` over."""
    if policy is None:
        return None
    new = PolicyEngine(policy, config.policy_engine)
    if previous is not None:
        new.carry_over(previous)
    return new


def make_decider(config: Config, enforcer: Enforcer | None) -> Decider:
    """The decider; relays outside the namespace enforcement acts in (`enforce.netns`, else ours) never block."""
    return Decider(config.decide, default_ttl_s=config.enforce.default_ttl_s,
                   block_rules=config.detect.block_rules, blocker=enforcer,
                   enforce_netns=netns_inode(config.enforce.netns))


def make_detector(config: Config, decider: Decider, baseline: Baseline | None = None) -> Detector:
    """A detector with `baseline`, or the one in the baseline file, or a fresh one; it reports repeats
    inside its cooldowns for the rules the decider may block on."""
    path = config.agent.baseline
    if baseline is None and path and Path(path).exists():
        baseline = Baseline.load(path)
    return Detector(config.detect, baseline, [r for r in config.detect.rules if decider.may_block(r)])


def make_enforcer(config: Config) -> Enforcer | None:
    return Enforcer(config.enforce) if config.enforce.enabled else None


def egress_rules(policy: Policy | None) -> list[EgressRule]:
    if policy is None:
        return []
    return [EgressRule.from_policy(lp) for lp in policy.listeners if lp.allow_backends and lp.action == "block"]


def drop_listeners(policy: Policy | None) -> list[DropListener]:
    """The policy's listeners whose disallowed sources the kernel drops before the handshake."""
    if policy is None:
        return []
    return [DropListener(lp.name, lp.port, lp.address, lp.allow_sources) for lp in policy.listeners if lp.drops]


def make_sinks(config: Config, host: HostInfo, on_error: ErrorCallback) -> Fanout:
    sinks = [NdjsonSink(config.ndjson, host, on_error=on_error)]
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
    return config.ndjson, config.elasticsearch, config.alert_feed, config.webhook
