"""Attacks on idle relays, from the first minute, against poisoned baselines and from a rotating
IPv6 /64: precision and recall per rule on labelled synthetic streams (`tests.synth.attack_stream`),
offline (`analyze`) and live (`Detector` with the agent's watch start) alike."""

from __future__ import annotations

import pytest

from monitor.decide import DecideConfig, Decider
from monitor.detect import DetectConfig
from monitor.replay.analyze import analyze
from tests.synth import BENIGN, FLOODER, IDLE_LISTENERS, ROTATING, S, SCANNER, T0, attack_stream
from tests.test_detect import run_live, score, signature

CONFIG = DetectConfig(learning_period_s=300)
WATCH = [(port, T0) for port in IDLE_LISTENERS]

# rule -> (precision, recall) each scenario must reach; README "Attacks" shows the same figures
EXPECTED = {
    "idle": {"anomaly.new_source": (1.0, 1.0), "anomaly.source_rate": (1.0, 1.0), "anomaly.scan": (1.0, 1.0),
             "anomaly.listener_rate": (1.0, 1.0), "anomaly.refused_burst": (1.0, 1.0)},
    "early": {"anomaly.new_source": (1.0, 1.0), "anomaly.source_rate": (1.0, 1.0), "anomaly.scan": (1.0, 1.0),
              "anomaly.listener_rate": (1.0, 1.0), "anomaly.refused_burst": (1.0, 1.0)},
    "poison": {"anomaly.new_source": (1.0, 1.0), "anomaly.source_rate": (1.0, 1.0), "anomaly.scan": (1.0, 1.0),
               "anomaly.listener_rate": (1.0, 1.0), "anomaly.refused_burst": (1.0, 1.0)},
    "rotate": {"anomaly.new_source": (1.0, 1.0), "anomaly.source_rate": (1.0, 1.0), "anomaly.scan": (1.0, 1.0),
               "anomaly.listener_rate": (1.0, 1.0), "anomaly.refused_burst": (1.0, 1.0)},
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def scenario(request, tmp_path_factory):
    stream = attack_stream(request.param)
    path = tmp_path_factory.mktemp("attack") / f"{request.param}.ndjson"
    stream.write_ndjson(path)
    offline = analyze([path], config=CONFIG).alerts
    _det, live, fast = run_live(stream.events(), CONFIG, tick_s=0.5, watch=WATCH)
    return request.param, stream, offline, live, fast


def test_precision_and_recall(scenario):
    name, stream, offline, _live, _fast = scenario
    figures = score(stream, offline)
    print(f"\n{name}: " + ", ".join(f"{rule} {p:.2f}/{r:.2f} ({n} alerts, {i} required)"
                                    for rule, (p, r, n, i) in figures.items()))
    for rule, (precision, recall, _n, _i) in figures.items():
        assert (precision, recall) >= EXPECTED[name][rule], (name, rule, precision, recall)


def test_live_equals_offline(scenario):
    _name, _stream, offline, live, _fast = scenario
    assert signature(live) == signature(offline)


def test_benign_source_never_flagged(scenario):
    _name, _stream, offline, _live, _fast = scenario
    assert not [a for a in offline if a.source_ip == BENIGN or BENIGN in a.top_sources[:1]]


def test_attackers_flagged_within_two_seconds_by_the_fast_path(scenario):
    """The fast path raises the scan and the flood on the event that crosses, without a tick."""
    name, stream, _offline, _live, fast = scenario
    if name == "poison":
        return
    for incident in stream.incidents:
        if incident.required and incident.rule in ("anomaly.scan", "anomaly.source_rate"):
            hits = [a for a in fast if a.rule_id == incident.rule
                    and (a.source_network or a.source_ip) == incident.key and a.timestamp_ns >= incident.start_ns]
            assert hits and hits[0].timestamp_ns - incident.start_ns < 2 * S, (name, incident)


def test_poisoned_baseline_lifts_no_threshold_beyond_the_factor(scenario):
    """An attacker ramping from the start of learning: the one that reaches the floor while learning
    is flagged then and learned not at all; the one that stays under it can lift its own threshold
    to at most factor x floor, and is flagged when it climbs past that."""
    name, _stream, offline, _live, _fast = scenario
    if name != "poison":
        return
    rates = {}
    for alert in offline:
        if alert.rule_id == "anomaly.source_rate":
            rates.setdefault(alert.source_ip, []).append(alert)
    fast, slow = rates["192.0.2.50"], rates["192.0.2.60"]
    assert fast[0].timestamp_ns < T0 + 300 * S and fast[0].threshold == CONFIG.source_rate_min
    assert slow[0].timestamp_ns >= T0 + 300 * S
    assert slow[0].threshold <= CONFIG.source_rate_factor * CONFIG.source_rate_min
    assert all(a.threshold <= CONFIG.source_rate_factor * CONFIG.source_rate_min for a in fast[1:])


def test_rotating_ipv6_is_one_source_and_its_64_is_blocked(scenario):
    name, _stream, offline, _live, _fast = scenario
    if name != "rotate":
        return
    counted = [a for a in offline if a.rule_id in ("anomaly.source_rate", "anomaly.scan")]
    assert counted and all(a.source_network == ROTATING for a in counted)
    assert all(ROTATING in a.description for a in counted)
    decider = Decider(DecideConfig(), default_ttl_s=600, block_rules=("anomaly.source_rate", "anomaly.scan"))
    decided = decider.decide(counted)
    assert {a.block_target for a in decided} == {ROTATING}


def test_scenario_names_are_the_attackers():
    idle = attack_stream("idle")
    assert {i.key for i in idle.incidents if i.required and i.rule != "anomaly.new_source"} == {SCANNER, FLOODER}


def test_a_source_the_policy_flagged_is_not_learned():
    """`run` passes the policy's verdict (`observe(flagged=True)`), `analyze` its policy alerts: neither
    learns from such a source, so its later flood is judged against its peers, not itself."""
    from monitor.detect import Detector
    from monitor.events import Action, ConnectionEvent, Listener
    from monitor.pipeline import Pipeline

    det = Detector(DetectConfig(learning_period_s=60))
    pipeline = Pipeline(detector=det, decider=Decider(DecideConfig(), default_ttl_s=600))
    pipeline.watch([8080], T0)
    for k in range(100):
        for ip, flagged in (("10.0.0.1", False), ("10.0.0.66", True)):
            event = ConnectionEvent(Action.ACCEPTED, T0 + k * S // 2, ip, 40000 + k, "127.0.0.1", 8080,
                                    listener=Listener("127.0.0.1", 8080))
            assert det.observe(event, flagged=flagged) == []
    det.tick(T0 + 61 * S)
    learned = det.baseline().source_rate
    assert learned.get((8080, "10.0.0.1")) == 20 and (8080, "10.0.0.66") not in learned
    assert det.baseline().listener_learning[8080] == (T0, T0 + 60 * S)


def test_a_short_learning_period_does_not_make_a_busy_client_a_scanner():
    """`--learning-period 20s` saw a third of a scan window: a client's short requests at 2/s (120 a
    minute) are judged against its peak scaled to the window, not against 3 x 40."""
    from monitor.detect import Detector
    from monitor.events import Action, ConnectionEvent, Listener

    config = DetectConfig(learning_period_s=20)
    det = Detector(config)
    det.watch(8001, T0)
    alerts = []
    for k in range(2 * 180):
        t = T0 + k * S // 2
        for action, at, duration in ((Action.ACCEPTED, t, None), (Action.CLOSED, t + S // 20, S // 20)):
            alerts += det.observe(ConnectionEvent(action, at, BENIGN, 40000 + k, "127.0.0.1", 8001,
                                                  listener=Listener("127.0.0.1", 8001), duration_ns=duration))
        if k % 10 == 0:
            alerts += det.tick(t)
    assert alerts == []
