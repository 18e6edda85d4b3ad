"""Anomaly detectors: precision/recall on labelled synthetic streams, learning,
cooldown, baseline persistence, and live (observe/tick) == offline (analyze)."""

from __future__ import annotations

import dataclasses
import ipaddress

import orjson
import pytest

from monitor.replay.analyze import analyze
from monitor.config import section_from_flags
from monitor.decide import DecideConfig, Decider
from monitor.detect import Baseline, DetectConfig, Detector
from monitor.durations import parse_duration
from monitor.ecs import HostInfo, render
from monitor.errors import InputError
from monitor.events import Action, ConnectionEvent, Listener
from tests.synth import S, T0, Stream, generate

RULES = ("anomaly.new_source", "anomaly.source_rate", "anomaly.listener_rate", "anomaly.scan",
         "anomaly.refused_burst")


def run_live(events, config: DetectConfig, tick_s: float, baseline: Baseline | None = None, watch=()):
    """Feed events as the agent does: observe each, tick every tick_s of event time; `watch`:
    (port, ns) moments the agent starts watching a listener."""
    det = Detector(config, baseline)
    for port, at in watch:
        det.watch(port, at)
    alerts, fast = [], []
    step = int(tick_s * S)
    next_tick = None
    for ev in events:
        if next_tick is None:
            next_tick = ev.timestamp_ns + step
        while ev.timestamp_ns >= next_tick:
            alerts += det.tick(next_tick)
            next_tick += step
        got = det.observe(ev)
        fast += got
        alerts += got
    alerts += det.tick((next_tick or 0) + step)
    return det, alerts, fast


def signature(alerts):
    return sorted((a.rule_id, a.source_ip, a.listener.port if a.listener else None, a.timestamp_ns) for a in alerts)


def incident_key(alert) -> str:
    if alert.rule_id == "anomaly.listener_rate":
        return f"listener:{alert.listener.port}"
    if alert.rule_id == "anomaly.new_source":
        bits = 64 if ":" in alert.source_ip else 24
        return f"{alert.listener.port}:{ipaddress.ip_network(f'{alert.source_ip}/{bits}', strict=False)}"
    return alert.source_network or alert.source_ip


def score(stream: Stream, alerts) -> dict[str, tuple[float, float, int, int]]:
    """Per rule: (precision, recall, alerts, required incidents)."""
    out = {}
    for rule in RULES:
        incidents = [i for i in stream.incidents if i.rule == rule]
        raised = [a for a in alerts if a.rule_id == rule]
        hit: set[int] = set()
        true_alerts = 0
        for alert in raised:
            match = [k for k, inc in enumerate(incidents)
                     if inc.key == incident_key(alert) and inc.start_ns <= alert.timestamp_ns <= inc.end_ns]
            if match:
                true_alerts += 1
                hit.update(match)
        required = {k for k, inc in enumerate(incidents) if inc.required}
        precision = true_alerts / len(raised) if raised else 1.0
        recall = len(hit & required) / len(required) if required else 1.0
        out[rule] = (precision, recall, len(raised), len(required))
    return out


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """Three simulated hours, one learning, with injected incidents: file, offline and live alerts."""
    stream = generate(hours=3.0, learn_s=3600, sources=200, seed=7)
    path = tmp_path_factory.mktemp("detect") / "events.ndjson"
    stream.write_ndjson(path)
    config = DetectConfig()
    offline = analyze([path], config=config)
    events = stream.events()
    det, live, _fast = run_live(events, config, tick_s=5.0)
    return stream, path, offline, live, det


def test_precision_and_recall_per_detector(day):
    stream, _path, offline, _live, _det = day
    figures = score(stream, offline.alerts)
    print("\nrule                    precision  recall  alerts  incidents")
    for rule, (precision, recall, n_alerts, n_incidents) in figures.items():
        print(f"{rule:24}{precision:9.2f}{recall:8.2f}{n_alerts:8d}{n_incidents:11d}")
    for rule, (precision, recall, n_alerts, n_incidents) in figures.items():
        assert n_incidents > 0, rule
        assert precision >= 0.9, (rule, precision)
        assert recall >= 0.9, (rule, recall)


def test_other_seed_stays_precise(tmp_path):
    stream = generate(hours=2.0, learn_s=3600, sources=300, seed=23)
    alerts = []
    det = Detector(DetectConfig())
    for ev in stream.events():
        alerts += det.observe(ev)
    alerts += det.tick(int(stream.t[-1]) + S)
    figures = score(stream, alerts)
    print("\nseed 23:", {r: (round(p, 2), round(c, 2)) for r, (p, c, _a, _i) in figures.items()})
    for rule, (precision, recall, _a, _i) in figures.items():
        assert precision >= 0.9 and recall >= 0.9, (rule, precision, recall)


def test_live_equals_offline(day):
    _stream, _path, offline, live, det = day
    assert len(offline.alerts) > 30
    assert signature(live) == signature(offline.alerts)
    assert det.late_events == 0


def test_live_equals_offline_with_half_second_ticks(tmp_path):
    stream = generate(hours=0.4, learn_s=600, sources=60, seed=3)
    path = tmp_path / "short.ndjson"
    stream.write_ndjson(path)
    config = DetectConfig(learning_period_s=600)
    offline = analyze([path], config=config)
    _det, live, _fast = run_live(stream.events(), config, tick_s=0.5)
    assert {a.rule_id for a in offline.alerts} == set(RULES)
    assert signature(live) == signature(offline.alerts)


def test_address_table_compaction_does_not_change_alerts(day):
    stream, _path, _offline, live, _det = day
    det = Detector(DetectConfig())
    det.address_table_cap = 50      # compact at nearly every tick
    alerts = []
    step, next_tick = 5 * S, int(stream.t[0]) + 5 * S
    for ev in stream.events():
        while ev.timestamp_ns >= next_tick:
            alerts += det.tick(next_tick)
            next_tick += step
        alerts += det.observe(ev)
    alerts += det.tick(next_tick)
    assert signature(alerts) == signature(live)
    assert len(det._ips) < 400


def test_offline_chunking_does_not_change_alerts(day, monkeypatch):
    """Small read blocks (many chunks, windows spanning them) give the same alerts as big ones."""
    _stream, path, offline, _live, _det = day
    import monitor.replay.reader as replay

    monkeypatch.setattr(replay, "BLOCK_BYTES", 256 << 10)
    small = analyze([path], config=DetectConfig())
    assert signature(small.alerts) == signature(offline.alerts)


def test_while_learning_only_floors_and_scans_raise(day):
    """All three hours inside the learning period: no new source, rates judged against their floors
    only, scans and refused bursts as ever; every alert is an injected incident."""
    stream, path, _offline, _live, _det = day
    config = DetectConfig(learning_period_s=4 * 3600)
    result = analyze([path], config=config)
    assert not result.baseline.complete
    assert not [a for a in result.alerts if a.rule_id == "anomaly.new_source"]
    rates = [a for a in result.alerts if a.rule_id == "anomaly.source_rate"]
    assert rates and all(a.threshold == config.source_rate_min for a in rates)
    for rule, (precision, _recall, _n, _i) in score(stream, result.alerts).items():
        assert precision == 1.0, rule
    assert {a.rule_id for a in result.alerts} >= {"anomaly.scan", "anomaly.refused_burst", "anomaly.source_rate"}
    det = Detector(config)
    assert all(det.observe(ev) == [] for ev in stream.events()[:50_000])   # the first, benign, hour
    assert det.tick(int(stream.t[50_000])) == []
    assert det.learning


def _flood(ip: str, start_ns: int, seconds: float, per_s: int, port: int = 8080) -> list[ConnectionEvent]:
    n = int(seconds * per_s)
    return [ConnectionEvent(Action.ACCEPTED, start_ns + i * S // per_s, ip, 30000 + i % 30000, "127.0.0.1", port,
                            listener=Listener("127.0.0.1", port)) for i in range(n)]


def _quiet(start_ns: int, seconds: int, ips=("10.9.0.1", "10.9.0.2"), port: int = 8080) -> list[ConnectionEvent]:
    return [ConnectionEvent(Action.ACCEPTED, start_ns + k * S, ips[k % len(ips)], 40000 + k, "127.0.0.1", port,
                            listener=Listener("127.0.0.1", port)) for k in range(seconds)]


def test_fast_path_flags_a_flood_within_a_second():
    config = DetectConfig(learning_period_s=5)
    det = Detector(config)
    for ev in _quiet(T0, 10):
        assert det.observe(ev) == []
        det.tick(ev.timestamp_ns)
    assert not det.learning
    start = T0 + 20 * S
    raised = []
    for ev in _flood("10.9.0.1", start, 2.0, 100):
        raised += [a for a in det.observe(ev) if a.rule_id == "anomaly.source_rate"]   # no tick: the fast path
    assert len(raised) == 1
    assert raised[0].timestamp_ns - start < 1 * S
    assert raised[0].source_ip == "10.9.0.1" and raised[0].listener.port == 8080
    assert raised[0].observed >= raised[0].threshold == config.source_rate_min


def test_cooldown_dedups_per_source_and_rule():
    config = DetectConfig(learning_period_s=5, cooldown_s=300)
    det = Detector(config)
    for ev in _quiet(T0, 10):
        det.observe(ev)
    flood = _flood("10.9.0.1", T0 + 20 * S, 400, 20) + _flood("10.9.0.2", T0 + 30 * S, 10, 50)
    flood.sort(key=lambda e: e.timestamp_ns)
    alerts = [a for ev in flood for a in det.observe(ev) if a.rule_id == "anomaly.source_rate"]
    times = [a.timestamp_ns for a in alerts if a.source_ip == "10.9.0.1"]
    assert len(times) == 2 and times[1] - times[0] >= 300 * S
    assert [a.source_ip for a in alerts].count("10.9.0.2") == 1
    no_cooldown = Detector(dataclasses.replace(config, cooldown_s=0))
    for ev in _quiet(T0, 10):
        no_cooldown.observe(ev)
    many = [a for ev in flood[:500] for a in no_cooldown.observe(ev) if a.rule_id == "anomaly.source_rate"]
    assert len(many) > 100


def test_baseline_survives_a_restart(tmp_path, day):
    stream, _path, _offline, _live, _det = day
    events = stream.events()
    config = DetectConfig()
    cut = next(i for i, ev in enumerate(events) if ev.timestamp_ns >= T0 + 3700 * S)
    first, _a1, _f1 = run_live(events[:cut], config, tick_s=60.0)
    assert first.baseline().complete
    saved = tmp_path / "state" / "baseline.json"
    first.baseline().save(saved)
    assert not list(saved.parent.glob(".baseline.json.*")), "temporary file left behind"
    loaded = Baseline.load(saved)
    assert loaded.to_json() == first.baseline().to_json()
    restarted, after, _f2 = run_live(events[cut:], config, tick_s=60.0, baseline=loaded)
    assert not restarted.learning
    within_hour = events[cut].timestamp_ns + 3000 * S
    assert any(a.timestamp_ns < within_hour for a in after)
    _fresh, forgot, _f3 = run_live(events[cut:], config, tick_s=60.0)
    assert not any(a.timestamp_ns < within_hour for a in forgot       # one that forgot learns again first
                   if a.rule_id == "anomaly.new_source")
    continuous = [a for a in day[3] if a.timestamp_ns >= events[cut].timestamp_ns + 60 * S]
    assert signature([a for a in after if a.timestamp_ns >= events[cut].timestamp_ns + 60 * S]) == signature(continuous)


def test_baseline_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=str(bad)):
        Baseline.load(bad)
    bad.write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not a socat-monitor baseline"):
        Baseline.load(bad)
    base = Baseline.for_config(DetectConfig())
    base.save(bad)
    with pytest.raises(InputError, match=f"{bad}: baseline was learned with other windows"):
        Detector(DetectConfig(source_rate_window_s=30), Baseline.load(bad))


def test_baseline_size_is_capped():
    config = DetectConfig(learning_period_s=60, max_tracked=50)
    det = Detector(config)
    for k in range(400):
        det.observe(ConnectionEvent(Action.ACCEPTED, T0 + k * S // 10, f"10.{k // 250}.{k % 250}.1", 1000 + k,
                                    "127.0.0.1", 8080))
    det.tick(T0 + 60 * S)
    size = det.baseline().size()
    assert size["sources"] <= 50 and size["prefixes"] <= 50
    for k in range(400):      # after learning, new prefixes are remembered too, within bounds
        det.observe(ConnectionEvent(Action.ACCEPTED, T0 + 61 * S + k * S, f"10.{100 + k // 250}.{k % 250}.1",
                                    1000 + k, "127.0.0.1", 8080))
        det.tick(T0 + 61 * S + k * S)
    assert det.baseline().size()["prefixes"] <= 100
    det.baseline().prune(50)
    assert len(det.baseline().to_json()) < 20_000


def test_block_rules_ask_for_blocks_with_the_right_target():
    config = DetectConfig(learning_period_s=5, block_rules=("anomaly.source_rate", "anomaly.new_source"))
    det = Detector(config)
    for ev in _quiet(T0, 10):
        det.observe(ev)
    alerts = [a for ev in _flood("192.0.2.77", T0 + 20 * S, 1, 100) for a in det.observe(ev)]
    alerts += [a for ev in _flood("2001:db8:1:2::9", T0 + 30 * S, 0.1, 10) for a in det.observe(ev)]
    assert not any(a.block for a in alerts)          # the detector only describes; the decision stage blocks
    alerts = Decider(DecideConfig(), default_ttl_s=600, block_rules=config.block_rules).decide(alerts)
    by_rule = {(a.rule_id, a.source_ip): a for a in alerts}
    assert by_rule[("anomaly.source_rate", "192.0.2.77")].block_target == "192.0.2.77"
    assert by_rule[("anomaly.new_source", "192.0.2.77")].block_target == "192.0.2.0/24"
    assert by_rule[("anomaly.new_source", "2001:db8:1:2::9")].block_target == "2001:db8:1:2::/64"
    assert all(a.block for a in alerts)
    plain = Detector(DetectConfig(learning_period_s=5))
    for ev in _quiet(T0, 10):
        plain.observe(ev)
    flood = [a for ev in _flood("192.0.2.77", T0 + 20 * S, 1, 100) for a in plain.observe(ev)]
    assert flood and not any(a.block for a in Decider(DecideConfig(), default_ttl_s=600).decide(flood))


def test_alert_renders_to_ecs(day):
    _stream, _path, offline, _live, _det = day
    wide = next(a for a in offline.alerts if a.rule_id == "anomaly.listener_rate")
    doc = render(wide, HostInfo("h", "0" * 32))
    assert doc["event"]["kind"] == "alert" and doc["rule"]["ruleset"] == "anomaly"
    assert doc["rule"]["id"] == "anomaly.listener_rate"
    assert set(doc["socat"]["detection"]) == {"observed", "baseline", "threshold", "score", "window_s"}
    assert len(doc["socat"]["top_sources"]) == 5
    assert doc["socat"]["listener"]["port"] == wide.listener.port
    assert doc["threat"]["technique"]["id"] == ["T1498"]


def test_parse_duration():
    assert parse_duration("20s") == 20 and parse_duration("15m") == 900 and parse_duration("1h") == 3600
    assert parse_duration("500ms") == 0.5 and parse_duration("2d") == 172800 and parse_duration(90) == 90
    for bad in ("", "5x", "-1s", "1h30", True):
        with pytest.raises(InputError, match="where"):
            parse_duration(bad, "where")


def test_settings_from_flags_are_checked_as_the_config_file_is():
    config = section_from_flags(DetectConfig, {"learning_period_s": "15m", "source_rate_min": 50,
                                               "cooldown": "10m", "block_rules": ["anomaly.scan"]}, "--set")
    assert config.learning_period_s == 900 and config.source_rate_min == 50 and config.cooldown_s == 600
    assert config.block_rules == ("anomaly.scan",)
    assert section_from_flags(DetectConfig, {"new_source_v4_prefix": 24.0}, "--set").new_source_v4_prefix == 24
    assert type(section_from_flags(DetectConfig, {"top_sources": 5.0}, "--set").top_sources) is int
    for bad, message in [({"block_rules": ["anomaly.nope"]}, "--set: block_rules[0]: expected one of anomaly.new_source"),
                         ({"sourc_rate_min": 1}, "--set: sourc_rate_min: unknown key: did you mean 'source_rate_min'"),
                         ({"source_rate_min": "many"}, "--set: source_rate_min: expected"),
                         ({"source_rate_window": "0.01s"}, "--set: source_rate_window: must be at least")]:
        with pytest.raises(InputError) as caught:
            section_from_flags(DetectConfig, bad, "--set")
        assert str(caught.value).startswith(message), str(caught.value)


def test_only_enabled_rules_raise(day):
    _stream, path, offline, _live, _det = day
    only = analyze([path], config=DetectConfig(rules=("anomaly.scan", "anomaly.refused_burst")))
    assert {a.rule_id for a in only.alerts} == {"anomaly.scan", "anomaly.refused_burst"}
    assert signature(only.alerts) == signature(
        [a for a in offline.alerts if a.rule_id in ("anomaly.scan", "anomaly.refused_burst")])


def test_v4_mapped_clients_are_one_source(tmp_path):
    config = DetectConfig(learning_period_s=5)
    events = _quiet(T0, 10) + [dataclasses.replace(ev, source_ip="::ffff:10.9.0.1" if k % 2 else "10.9.0.1")
                               for k, ev in enumerate(_flood("10.9.0.1", T0 + 20 * S, 1, 40))]
    path = tmp_path / "mapped.ndjson"
    host = HostInfo("h", "0" * 32)
    path.write_bytes(b"".join(orjson.dumps(render(ev, host)) + b"\n" for ev in events))
    result = analyze([path], config=config)
    rate = [a for a in result.alerts if a.rule_id == "anomaly.source_rate"]
    assert [a.source_ip for a in rate] == ["10.9.0.1"] and rate[0].observed == config.source_rate_min
    _det, live, _fast = run_live(events, config, tick_s=0.5)
    assert signature(live) == signature(result.alerts)


def _accepts(ips, port: int, start_ns: int, step_ns: int) -> list[ConnectionEvent]:
    return [ConnectionEvent(Action.ACCEPTED, start_ns + k * step_ns, ip, 41000 + k, "127.0.0.1", port,
                            listener=Listener("127.0.0.1", port), id=f"a{port}-{start_ns}-{k}")
            for k, ip in enumerate(ips)]


def _offline(tmp_path, events, config: DetectConfig, name: str = "events.ndjson"):
    path = tmp_path / name
    host = HostInfo("h", "0" * 32)
    path.write_bytes(b"".join(orjson.dumps(render(ev, host)) + b"\n" for ev in events))
    return analyze([path], config=config).alerts


def test_a_listener_started_after_learning_learns_on_its_own(tmp_path):
    """A relay the agent starts watching after the learning period: its clients are no new sources
    while it learns; afterwards new prefixes and floods on it are flagged against what it learned.
    A restart in the middle of its learning resumes it."""
    config = DetectConfig(learning_period_s=60)
    late = T0 + 300 * S
    clients = [f"10.{50 + k}.0.1" for k in range(30)]
    events = _quiet(T0, 120)
    events += _accepts(clients, 9090, late, S)                              # 30 unseen /24s in its first 30 s
    events += _accepts(clients, 9090, late + 35 * S, S)                     # still learning (until late + 60 s)
    events += _accepts(["192.0.2.9", clients[4]], 9090, late + 100 * S, S)  # after: one new /24, one known
    events += _flood(clients[0], late + 120 * S, 1.0, 40, port=9090)
    events.sort(key=lambda e: e.timestamp_ns)
    watch = [(8080, T0), (9090, late)]
    det, live, _fast = run_live(events, config, tick_s=0.5, watch=watch)
    on_late = [a for a in live if a.listener.port == 9090]
    assert not [a for a in on_late if a.timestamp_ns < late + 60 * S]
    assert [(a.rule_id, a.source_ip) for a in on_late if a.rule_id == "anomaly.new_source"] == [
        ("anomaly.new_source", "192.0.2.9")]
    rate = [a for a in on_late if a.rule_id == "anomaly.source_rate"]
    assert [a.source_ip for a in rate] == [clients[0]] and rate[0].baseline == 1.0   # what it learned
    assert det.baseline().listener_learning[9090] == (late, late + 60 * S)
    cut = next(i for i, ev in enumerate(events) if ev.timestamp_ns >= late + 40 * S)
    first, before, _f = run_live(events[:cut], config, tick_s=0.5, watch=watch)
    saved = tmp_path / "baseline.json"
    first.baseline().save(saved)
    _again, after, _f = run_live(events[cut:], config, tick_s=0.5, baseline=Baseline.load(saved))
    assert signature(before + after) == signature(live)
    replayed = _offline(tmp_path, events, config)     # no watch start recorded: 9090 learned "idle" from T0
    assert {a.source_ip for a in replayed if a.rule_id == "anomaly.new_source"} == set(clients) | {"192.0.2.9"}


def _refused(ip: str, port: int, start_ns: int, n: int, step_ns: int) -> list[ConnectionEvent]:
    """n connections socat refuses, as capture reports them: ACCEPTED, then DENIED (refused=True)."""
    out = []
    for k in range(n):
        t = start_ns + k * step_ns
        out.append(ConnectionEvent(Action.ACCEPTED, t, ip, 42000 + k, "127.0.0.1", port,
                                   listener=Listener("127.0.0.1", port), id=f"r{k}a"))
        out.append(ConnectionEvent(Action.DENIED, t + S // 1000, ip, 42000 + k, "127.0.0.1", port,
                                   listener=Listener("127.0.0.1", port), duration_ns=S // 1000, refused=True,
                                   id=f"r{k}d"))
    return out


def test_a_refused_connection_counts_once(tmp_path):
    """ACCEPTED + DENIED of one refused connection: one connection for the rate rules, one refusal."""
    config = DetectConfig(learning_period_s=5, source_rate_min=20, listener_rate_min=26)
    start = T0 + 20 * S
    events = _quiet(T0, 10) + _refused("10.9.0.7", 8080, start, 25, S // 10)
    for alerts in (run_live(events, config, tick_s=0.5)[1], _offline(tmp_path, events, config)):
        by_rule = {}
        for alert in alerts:
            by_rule.setdefault(alert.rule_id, []).append(alert)
        rate = by_rule["anomaly.source_rate"]
        assert len(rate) == 1 and rate[0].observed == 20
        assert rate[0].timestamp_ns == start + 19 * S // 10        # the 20th ACCEPTED, not the 10th DENIED
        assert "anomaly.listener_rate" not in by_rule                # 25 connections < 26
        burst = by_rule["anomaly.refused_burst"]
        assert len(burst) == 1 and burst[0].observed == 10
        assert burst[0].timestamp_ns == start + 9 * S // 10 + S // 1000


@pytest.mark.parametrize("second_at_s", [30 * 60, 4 * 3600], ids=["same-hour", "hours-later"])
def test_reused_source_ports_do_not_hide_a_second_flood(tmp_path, second_at_s):
    """The detectors count every accept (no 'first sight' of a 4-tuple, issue 21): a flood repeated
    from the same source ports, with no close events, is flagged again, live and offline alike."""
    config = DetectConfig(learning_period_s=60)
    floods = (T0 + 300 * S, T0 + second_at_s * S)
    events = _quiet(T0, 120)
    for start in floods:
        events += [ConnectionEvent(Action.ACCEPTED, start + k * S // 8, "10.9.0.9", 30000 + k, "127.0.0.1", 8080,
                                   listener=Listener("127.0.0.1", 8080), id=f"f{start}-{k}") for k in range(2400)]
    live = run_live(events, config, tick_s=0.5)[1]
    assert signature(live) == signature(_offline(tmp_path, events, config))
    rate = [a.timestamp_ns for a in live if a.rule_id == "anomaly.source_rate" and a.source_ip == "10.9.0.9"]
    assert [t - floods[0] for t in rate if t < floods[1]] == [t - floods[1] for t in rate if t >= floods[1]]
    assert rate and rate[0] - floods[0] < 10 * S
