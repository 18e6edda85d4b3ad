"""The decision stage (pure logic; the blocker is a stand-in for the Enforcer)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from monitor.decide import DecideConfig, Decider
from monitor.decide.config import rule_settings
from monitor.decide.decider import REOFFENCE
from monitor.detect import DetectConfig, Detector
from monitor.ecs import HostInfo, render
from monitor.events import Action, Alert, BlockEvent, ConnectionEvent, Listener, ProcessInfo
from monitor.policy import EngineConfig, PolicyEngine, parse_policy
from monitor.replay.analyze import analyze
from monitor.rules import new_alert

S = 1_000_000_000
T0 = 1_700_000_000 * S
POLICY_TEXT = """
version: 1
listeners:
  - name: web
    port: 8443
    allow_sources: [192.0.2.0/24]
    action: block
  - name: db
    port: 5432
    allow_sources: [192.0.2.0/24]
"""
POLICY = parse_policy(POLICY_TEXT)


class FakeBlocker:
    """What the Enforcer answers, without a kernel: `refuse` plays never_block or a dry run."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.held: dict[str, int] = {}
        self.calls: list[tuple[str, float]] = []

    def block(self, target, *, ttl_s, rule_id, alert_id, now_ns) -> BlockEvent:
        self.calls.append((target, ttl_s))
        if self.refuse:
            return BlockEvent(Action.BLOCK_REFUSED, now_ns, target, ttl_s=ttl_s, rule_id=rule_id, reason="never_block")
        self.held[target] = now_ns + int(ttl_s * S)
        return BlockEvent(Action.BLOCKED, now_ns, target, ttl_s=ttl_s, rule_id=rule_id, alert_id=alert_id)

    def is_blocked(self, target, now_ns) -> bool:
        return self.held.get(target, 0) > now_ns

    def expire(self, now_ns):
        return []


def alert(rule="anomaly.source_rate", source="198.51.100.7", t=0.0, **kw) -> Alert:
    return new_alert(rule, description="d", timestamp_ns=T0 + int(t * S), source_ip=source, **kw)


def decider(blocker=None, block_rules=(), **settings) -> Decider:
    return Decider(DecideConfig(**settings), default_ttl_s=60, block_rules=block_rules, blocker=blocker)


def accept(source: str, port: int, t: float, sport: int, process: ProcessInfo | None = None) -> ConnectionEvent:
    return ConnectionEvent(Action.ACCEPTED, T0 + int(t * S), source, sport, "10.0.0.1", port,
                           listener=Listener("10.0.0.1", port), process=process)


# -- action -----------------------------------------------------------------------------------------

def test_the_policy_listener_action_is_honoured():
    d = decider()
    assert d.decision(alert("policy.source_denied", listener_action="block")).block
    assert not d.decision(alert("policy.source_denied", listener_action="alert")).block


def test_config_wins_over_listener_then_block_rules_then_catalogue():
    d = decider(rules={"policy.source_denied": {"action": "alert"}, "anomaly": {"action": "block"}})
    assert not d.decision(alert("policy.source_denied", listener_action="block")).block
    assert d.decision(alert("policy.rate_exceeded", listener_action="block")).block
    assert d.decision(alert("anomaly.scan")).block                          # the ruleset's setting
    assert not decider().decision(alert("anomaly.scan")).block              # the catalogue: alert
    assert decider(block_rules=("anomaly.scan",)).decision(alert("anomaly.scan")).block


def test_rules_without_a_single_offender_never_block():
    d = decider(rules={"anomaly": {"action": "block"}})
    assert not d.decision(alert("anomaly.listener_rate")).block
    assert not d.decision(alert("policy.backend_denied", source=None, listener_action="block")).block
    with pytest.raises(ValueError, match="anomaly.listener_rate: cannot block"):
        rule_settings({"anomaly.listener_rate": {"action": "block"}})
    with pytest.raises(ValueError, match="audit: cannot block"):
        rule_settings({"audit": {"action": "block"}})


@pytest.mark.parametrize("rules, message", [
    ({"policy.nope": {"action": "block"}}, "neither a rule id nor a ruleset"),
    ({"anomaly": {"action": "drop"}}, "action 'drop' is not one of alert, block"),
    ({"anomaly": {"scope": "/16"}}, "scope '/16' is not one of address, network"),
    ({"anomaly": {"ttl": "soon"}}, "anomaly: not a duration"),
    ({"anomaly": {"ttl": 0}}, "ttl must be positive"),
    ({"anomaly": {"when": "always"}}, "expected a mapping"),
])
def test_bad_rule_settings_name_the_rule(rules, message):
    with pytest.raises(ValueError, match=message):
        rule_settings(rules)


# -- target and TTL ---------------------------------------------------------------------------------

def test_scopes_address_and_network():
    d = decider(rules={"anomaly.scan": {"action": "block", "scope": "network"}, "anomaly.source_rate": {"action": "block"}})
    assert d.decision(alert("anomaly.source_rate")).target == "198.51.100.7"
    assert d.decision(alert("anomaly.scan")).target == "198.51.100.0/24"
    assert d.decision(alert("anomaly.scan", source="2001:db8:1:2::9")).target == "2001:db8:1:2::/64"
    wide = decider(network_v4_prefix=16, network_v6_prefix=48, block_rules=("anomaly.new_source",))
    assert wide.decision(alert("anomaly.new_source")).target == "198.51.0.0/16"      # the catalogue: network
    assert wide.decision(alert("anomaly.new_source", source="2001:db8:1:2::9")).target == "2001:db8:1::/48"


def test_ttl_rule_then_ruleset_then_decide_then_enforce_default():
    rules = {"anomaly": {"action": "block", "ttl": "5m"}, "anomaly.scan": {"ttl": "1h"}}
    assert decider(rules=rules).decision(alert("anomaly.scan")).ttl_s == 3600
    assert decider(rules=rules).decision(alert("anomaly.source_rate")).ttl_s == 300
    assert decider(ttl_s=120, block_rules=("anomaly.scan",)).decision(alert("anomaly.scan")).ttl_s == 120
    assert decider(block_rules=("anomaly.scan",)).decision(alert("anomaly.scan")).ttl_s == 60


# -- escalation --------------------------------------------------------------------------------------

def _ttls(d: Decider, times: list[float]) -> list[float]:
    out = []
    for t in times:
        [decided] = [r for r in d.decide([alert(t=t)]) if isinstance(r, Alert)]
        out.append(decided.block_ttl_s)
    return out


def test_repeat_offenders_get_longer_ttls_up_to_the_cap():
    d = decider(block_rules=("anomaly.source_rate",), repeat_factor=4, max_ttl_s=1000, repeat_window_s=3600)
    # blocked at 0 for 60 s; again after it ended: x4, x16, then the cap
    assert _ttls(d, [0, 100, 400, 2000]) == [60, 240, 960, 1000]


def test_refresh_keeps_the_level_and_a_quiet_period_resets_it():
    d = decider(block_rules=("anomaly.source_rate",), repeat_factor=4, max_ttl_s=86400, repeat_window_s=600)
    assert _ttls(d, [0, 30, 100, 200]) == [60, 60, 240, 240]    # 30 and 200: refreshed while held
    assert _ttls(d, [200 + 240 + 601]) == [60]                   # more than repeat_window after it ended


def test_no_escalation_with_factor_one():
    d = decider(block_rules=("anomaly.source_rate",), repeat_factor=1)
    assert _ttls(d, [0, 100, 200]) == [60, 60, 60]


# -- re-offence --------------------------------------------------------------------------------------

def _run(d: Decider, engine: PolicyEngine, events) -> list:
    return [r for ev in events for r in d.decide(engine.check(ev))]


def test_reoffence_after_an_operator_removal_is_blocked_at_once_whatever_the_cooldown():
    blocker = FakeBlocker()
    d, engine = decider(blocker), PolicyEngine(POLICY, EngineConfig(dedup_window_s=60))
    first = _run(d, engine, [accept("203.0.113.9", 8443, 0, 40000)])
    assert [type(r) for r in first] == [Alert, BlockEvent] and first[1].action is Action.BLOCKED
    assert first[0].block_target == "203.0.113.9" and first[1].alert_id == first[0].id
    del blocker.held["203.0.113.9"]                      # `socat-monitor blocks remove 203.0.113.9`
    again = _run(d, engine, [accept("203.0.113.9", 8443, 5, 40001)])
    [event] = again                                       # the alert stays deduplicated; the block does not
    assert isinstance(event, BlockEvent) and event.action is Action.BLOCKED and event.reason == REOFFENCE
    assert blocker.calls[-1] == ("203.0.113.9", 240)      # blocked again within repeat_window: escalated
    assert _run(d, engine, [accept("203.0.113.9", 8443, 6, 40002)]) == []   # held now: nothing to do
    [later] = [r for r in _run(d, engine, [accept("203.0.113.9", 8443, 61, 40003)]) if isinstance(r, Alert)]
    assert later.suppressed == 2 and d.reoffences == 1


def test_an_alert_only_listener_never_blocks_its_repeats():
    d, engine = decider(FakeBlocker()), PolicyEngine(POLICY, EngineConfig(dedup_window_s=60))
    out = _run(d, engine, [accept("203.0.113.9", 5432, t, 40000 + t) for t in range(5)])
    assert [r.rule_id for r in out] == ["policy.source_denied"] and not out[0].block


def test_a_refused_block_is_not_retried_on_every_repeat():
    blocker = FakeBlocker(refuse=True)
    d, engine = decider(blocker), PolicyEngine(POLICY, EngineConfig(dedup_window_s=60))
    out = _run(d, engine, [accept("203.0.113.9", 8443, t, 40000 + t) for t in range(20)])
    assert [r.action for r in out if isinstance(r, BlockEvent)] == [Action.BLOCK_REFUSED]
    assert len(blocker.calls) == 1


def test_offline_decisions_equal_live_ones():
    events = [accept("203.0.113.9", 8443, t * 7.0, 40000 + t) for t in range(40)] + \
             [accept(f"198.51.100.{i}", 8443, 300 + i, 41000 + i) for i in range(5)]

    def decided(blocker):
        d, engine = decider(blocker, ttl_s=20), PolicyEngine(POLICY, EngineConfig(dedup_window_s=60))
        return [(a.rule_id, a.source_ip, a.timestamp_ns, a.block_target, a.block_ttl_s, a.suppressed)
                for a in _run(d, engine, events) if isinstance(a, Alert)], d.reoffences

    live, offline = decided(FakeBlocker()), decided(None)
    assert live == offline and live[1] > 0


# -- trust: which relays may cause a block --------------------------------------------------------

HERE = 4026531833                      # the network namespace enforced in
ROOT_RELAY = ProcessInfo(pid=10, comm="socat", uid=0, netns=HERE, userns_owner=0)
USER_RELAY = ProcessInfo(pid=11, comm="socat", uid=65534, netns=4026532175, userns_owner=65534)


def trusting(blocker=None) -> Decider:
    return Decider(DecideConfig(), default_ttl_s=60, blocker=blocker, enforce_netns=HERE)


@pytest.mark.parametrize("relay, why", [
    (ProcessInfo(pid=11, comm="socat", uid=1000, netns=HERE, userns_owner=0), "started by uid 1000, not root"),
    (ProcessInfo(pid=11, comm="socat", uid=0, netns=HERE, userns_owner=1000),
     "user namespace owned by uid 1000, not root"),
    (ProcessInfo(pid=11, comm="socat", uid=0, netns=4026532999, userns_owner=0),
     "network namespace net:[4026532999], not net:[4026531833]"),
    (USER_RELAY, "network namespace net:[4026532175]"),
])
def test_an_untrusted_relay_is_alerted_on_never_blocked_and_the_alert_says_why(relay, why):
    blocker = FakeBlocker()
    d, engine = trusting(blocker), PolicyEngine(POLICY, EngineConfig(dedup_window_s=60))
    out = _run(d, engine, [accept("203.0.113.9", 8443, t, 40000 + t, relay) for t in range(5)])
    [written] = out                                        # one alert; no block, not even on the repeats
    assert written.rule_id == "policy.source_denied" and not written.block and blocker.calls == []
    assert why in written.block_skipped
    assert render(written, HostInfo("h", "0" * 32))["socat"]["block"] == {"skipped": written.block_skipped}


def test_a_root_relay_in_the_enforced_namespace_blocks():
    out = _run(trusting(FakeBlocker()), PolicyEngine(POLICY, EngineConfig()),
               [accept("203.0.113.9", 8443, 0, 40000, ROOT_RELAY)])
    assert [type(r) for r in out] == [Alert, BlockEvent] and out[0].block and out[0].block_skipped is None


def test_a_relay_root_started_that_dropped_to_su_nobody_still_blocks():
    dropped = ProcessInfo(pid=13, comm="socat", uid=65534, started_uid=0, netns=HERE, userns_owner=0)
    out = _run(trusting(), PolicyEngine(POLICY, EngineConfig()), [accept("203.0.113.9", 8443, 0, 40000, dropped)])
    assert out[0].block
    forged = dataclasses.replace(dropped, started_uid=65534)
    out = _run(trusting(), PolicyEngine(POLICY, EngineConfig()), [accept("203.0.113.9", 8443, 0, 40000, forged)])
    assert not out[0].block and "started by uid 65534" in out[0].block_skipped


def test_trust_unprivileged_lets_a_non_root_relay_block_but_never_across_namespaces():
    policy = parse_policy(POLICY_TEXT.replace("    action: block\n", "    action: block\n    trust_unprivileged: true\n"))
    service_user = ProcessInfo(pid=12, comm="socat", uid=1000, netns=HERE, userns_owner=0)
    out = _run(trusting(), PolicyEngine(policy, EngineConfig()), [accept("203.0.113.9", 8443, 0, 40000, service_user)])
    assert out[0].block
    out = _run(trusting(), PolicyEngine(policy, EngineConfig()), [accept("203.0.113.9", 8443, 0, 40000, USER_RELAY)])
    assert not out[0].block and "network namespace" in out[0].block_skipped
    gone = dataclasses.replace(service_user, netns=None)    # exited before its namespace was read again
    out = _run(trusting(), PolicyEngine(policy, EngineConfig()), [accept("203.0.113.9", 8443, 0, 40000, gone)])
    assert not out[0].block and "network namespace is unknown" in out[0].block_skipped


def test_anomaly_alerts_carry_their_relay_so_an_untrusted_flood_blocks_nothing():
    blocker = FakeBlocker()
    d = Decider(DecideConfig(), default_ttl_s=60, block_rules=("anomaly.source_rate",), blocker=blocker,
                enforce_netns=HERE)
    det = Detector(DetectConfig(learning_period_s=5, cooldown_s=300, rules=("anomaly.source_rate",)),
                   repeats=["anomaly.source_rate"])
    out = [r for ev in _detector_stream() for r in d.decide(det.observe(dataclasses.replace(ev, process=USER_RELAY)))]
    assert [a.rule_id for a in out] == ["anomaly.source_rate"] and blocker.calls == []
    assert "started by uid 65534" in out[0].block_skipped or "network namespace" in out[0].block_skipped


# -- detectors: repeats inside the cooldown ---------------------------------------------------------

def _flood(ip: str, start_s: float, seconds: float, per_s: int, port: int = 8080) -> list[ConnectionEvent]:
    return [ConnectionEvent(Action.ACCEPTED, T0 + int(start_s * S) + i * S // per_s, ip, 30000 + i % 30000,
                            "127.0.0.1", port, listener=Listener("127.0.0.1", port)) for i in range(int(seconds * per_s))]


def _detector_stream() -> list[ConnectionEvent]:
    quiet = [ConnectionEvent(Action.ACCEPTED, T0 + k * S, f"10.9.0.{1 + k % 2}", 40000 + k, "127.0.0.1", 8080,
                             listener=Listener("127.0.0.1", 8080)) for k in range(10)]
    return quiet + _flood("192.0.2.77", 20, 3, 100) + _flood("192.0.2.77", 200, 3, 100)


def test_a_detector_reports_repeats_only_for_rules_that_may_block():
    config = DetectConfig(learning_period_s=5, cooldown_s=300)
    d = decider(FakeBlocker(), block_rules=("anomaly.source_rate",))
    assert d.may_block("anomaly.source_rate") and not d.may_block("anomaly.scan")
    assert not d.may_block("anomaly.listener_rate") and d.may_block("policy.source_denied")
    quiet = Detector(config)
    assert not any(a.deduplicated for ev in _detector_stream() for a in quiet.observe(ev))


def test_a_source_rate_offender_is_blocked_again_after_removal_whatever_the_cooldown():
    config = DetectConfig(learning_period_s=5, cooldown_s=300, rules=("anomaly.source_rate",))
    blocker = FakeBlocker()
    d = decider(blocker, block_rules=("anomaly.source_rate",), ttl_s=600)   # still blocked at 200 s ...
    det = Detector(config, repeats=["anomaly.source_rate"])
    out: list = []
    events = _detector_stream()
    second = next(i for i, ev in enumerate(events) if ev.timestamp_ns >= T0 + 200 * S)
    for ev in events[:second]:
        out += d.decide(det.observe(ev))
    del blocker.held["192.0.2.77"]                          # removed by the operator before the second flood
    for ev in events[second:]:
        out += d.decide(det.observe(ev))
    alerts = [r for r in out if isinstance(r, Alert)]
    blocks = [r for r in out if isinstance(r, BlockEvent)]
    assert [a.rule_id for a in alerts] == ["anomaly.source_rate"]        # the second flood is in the cooldown
    assert [b.reason for b in blocks] == [None, REOFFENCE]                # ... but for the operator
    assert [b.ttl_s for b in blocks] == [600, 2400]
    assert blocks[1].timestamp_ns < T0 + 201 * S                         # at once, on its first crossing


def test_detector_repeats_are_decided_alike_live_and_offline(tmp_path):
    config = DetectConfig(learning_period_s=5, cooldown_s=300, rules=("anomaly.source_rate",),
                          block_rules=("anomaly.source_rate",))
    events = _detector_stream()
    live_decider = decider(block_rules=config.block_rules, ttl_s=30)
    det = Detector(config, repeats=["anomaly.source_rate"])
    live = [a for ev in events for a in live_decider.decide(det.observe(ev))]
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"".join(orjson.dumps(render(ev, HostInfo("h", "0" * 32))) + b"\n" for ev in events))
    offline_decider = decider(block_rules=config.block_rules, ttl_s=30)
    offline = analyze([path], config=config, decider=offline_decider).alerts
    assert [(a.rule_id, a.source_ip, a.timestamp_ns, a.block_target, a.block_ttl_s) for a in live] == \
        [(a.rule_id, a.source_ip, a.timestamp_ns, a.block_target, a.block_ttl_s) for a in offline]
    assert live_decider.reoffences == offline_decider.reoffences == 1
