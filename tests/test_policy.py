"""Policy files (through the real CLI), the runtime engine and policy suggestion."""

from __future__ import annotations

import json
import textwrap

import orjson
import pytest

from monitor.config import load_config
from monitor.decide import DecideConfig, Decider
from monitor.ecs import HostInfo, render
from monitor.errors import InputError
from monitor.events import Action, ConnectionEvent, Direction, Listener, Outcome, Severity, unrecorded_id
from monitor.policy import EngineConfig, PolicyEngine, load_policy, parse_command_line, parse_policy, policy_reference
from monitor.policy.connections import CLOSED_SESSIONS, OpenConnections
from monitor.policy.model import POLICY_SCHEMA
from monitor.policy.suggest import aggregate_sources, suggest_policy
from monitor.yamlfile import InputErrors
from tests.lab import socat_monitor

S = 1_000_000_000
T0 = 1_700_000_000 * S

GOOD = """\
version: 1
listeners:
  - name: web-relay
    port: 8443                 # the socat listener's local port (required)
    address: 0.0.0.0           # optional: local address it must bind to
    allow_sources: [192.0.2.0/24, "2001:db8::/32", 198.51.100.7]
    allow_backends: ["10.0.0.5:443"]   # where its children may connect
    max_rate_per_source: 30/minute     # declared rate limit (N/second|minute|hour)
    max_concurrent_per_source: 10
    action: alert              # alert | block
defaults:
  unknown_listener: alert      # a socat listener not named in the policy
"""

# (file text, expected "LINE: key.path" fragment, expected message fragment)
BROKEN = [
    ("version: 2\nlisteners: []\n", ":1: version", "expected 1, got 2"),
    ("listeners: []\n", ":1: (top level)", "missing required key 'version'"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 70000\n", ":4: listeners[0].port", "1-65535, got 70000"),
    ("version: 1\nlisteners:\n  - name: a\n    port: '80'\n", ":4: listeners[0].port", "got '80'"),
    ("version: 1\nlisteners:\n  - name: a\n", ":3: listeners[0]", "missing required key 'port'"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    prot: 81\n", ":5: listeners[0].prot",
     "did you mean 'port'"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    allow_sources: [10.0.0.1/8]\n",
     ":5: listeners[0].allow_sources[0]", "did you mean 10.0.0.0/8"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    allow_sources:\n      - 10.0.0.0/8\n      - bogus\n",
     ":7: listeners[0].allow_sources[1]", "not an IP address or CIDR"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    allow_backends: [\"db.internal:443\"]\n",
     ":5: listeners[0].allow_backends[0]", "host name"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    allow_backends: [\"[::1]:99999\"]\n",
     ":5: listeners[0].allow_backends[0]", "port must be 1-65535"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    max_rate_per_source: 30/fortnight\n",
     ":5: listeners[0].max_rate_per_source", "a rate like 30/minute"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    max_rate_per_source: 0/minute\n",
     ":5: listeners[0].max_rate_per_source", "at least 1"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    max_concurrent_per_source: 0\n",
     ":5: listeners[0].max_concurrent_per_source", "whole number >= 1"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    action: deny\n", ":5: listeners[0].action",
     "one of alert, block, drop"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    address: 10.0.0.300\n", ":5: listeners[0].address",
     "does not appear to be an IPv4 or IPv6 address"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n  - name: a\n    port: 81\n", ":5: listeners[1].name",
     "duplicate listener name"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n  - name: b\n    port: 80\n", ":6: listeners[1].port",
     "already declared"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\n    port: 81\n", ":5: listeners[0].port", "duplicate key"),
    ("version: 1\nlisteners:\n  - name: a\n    port: 80\ndefaults:\n  unknown_listener: block\n",
     ":6: defaults.unknown_listener", "one of alert, ignore"),
    ("version: 1\nlisteners:\n  - name: a\n   port: 80\n", ":4", "not valid YAML"),
    ("version: 1\nlisteners: [\n", ":3", "not valid YAML"),
    ("- just\n- a list\n", ":1: (top level)", "expected a mapping"),
    ("", ":1", "empty policy file"),
]


@pytest.fixture(scope="module")
def broken_results(tmp_path_factory):
    """Every broken file checked by the real CLI, one process each."""
    root = tmp_path_factory.mktemp("broken")
    results = []
    for index, (text, _, _) in enumerate(BROKEN):
        path = root / f"policy{index}.yaml"
        path.write_text(text)
        results.append((path, socat_monitor("policy", "check", str(path))))
    return results


@pytest.mark.parametrize("index", range(len(BROKEN)))
def test_broken_policy_names_file_line_and_key(broken_results, index):
    path, result = broken_results[index]
    _, where, what = BROKEN[index]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{path}{where}"), first
    assert what in result.stderr


def test_all_problems_of_a_file_are_listed(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("version: 1\nlisteners:\n  - name: a\n    port: 0\n    action: deny\n  - port: 9\n")
    result = socat_monitor("policy", "check", str(path), "--format", "json")
    assert result.returncode == 2
    errors = json.loads(result.stdout)["errors"]
    assert [e["where"] for e in errors] == [f"{path}:4", f"{path}:5", f"{path}:6"]


def test_good_policy_passes_the_cli(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = socat_monitor("policy", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "ok (1 listener(s))" in result.stdout


def test_missing_file_is_input_error():
    result = socat_monitor("policy", "check", "/nonexistent/policy.yaml")
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


def test_model_of_the_documented_example(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    policy = load_policy(path)
    web = policy.listener(8443)
    assert web.name == "web-relay" and web.max_rate_per_source.count == 30
    assert web.max_rate_per_source.period_s == 60 and web.max_concurrent_per_source == 10
    assert [str(n) for n in web.allow_sources] == ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]
    assert policy.listener(9999) is None


def test_load_error_is_one_input_error_with_all_problems():
    with pytest.raises(InputErrors) as err:
        parse_policy("version: 3\nlisteners: 5\n", "x.yaml")
    assert isinstance(err.value, InputError)
    assert str(err.value).startswith("x.yaml:1: version: expected 1, got 3 (and 1 more problem)")


def test_reference_covers_every_key():
    text = policy_reference()
    keys = list(POLICY_SCHEMA["properties"]["listeners"]["items"]["properties"])
    for key in keys:
        assert f"`listeners[].{key}`" in text
    assert "`defaults.unknown_listener` | alert" in text
    result = socat_monitor("policy", "reference", "--format", "schema")
    assert json.loads(result.stdout)["title"] == "socat-monitor policy"


# -- engine ----------------------------------------------------------------------------------------

ENGINE_POLICY = parse_policy(textwrap.dedent("""\
    version: 1
    listeners:
      - name: web
        port: 8443
        allow_sources: [192.0.2.0/24, "2001:db8::/32"]
        allow_backends: ["10.0.0.5:443", "[2001:db8::5]:443"]
        max_rate_per_source: 3/second
        max_concurrent_per_source: 2
        action: block
      - name: open
        port: 9000
    defaults:
      unknown_listener: alert
    """))


def accept(source: str, port: int, t: float, sport: int = 40000, action: Action = Action.ACCEPTED,
           refused: bool = False, session: str | None = None) -> ConnectionEvent:
    """A client connection to listener `port` at T0 + t seconds."""
    return ConnectionEvent(action=action, timestamp_ns=T0 + int(t * S), source_ip=source, source_port=sport,
                           destination_ip="10.9.9.9", destination_port=port,
                           listener=Listener("0.0.0.0", port), refused=refused, session_id=session)


def close(ev: ConnectionEvent, t: float) -> ConnectionEvent:
    return ConnectionEvent(action=Action.CLOSED, timestamp_ns=T0 + int(t * S), source_ip=ev.source_ip,
                           source_port=ev.source_port, destination_ip=ev.destination_ip,
                           destination_port=ev.destination_port, listener=ev.listener, session_id=ev.session_id)


def egress(backend: str, port: int, t: float, session: str | None = None) -> ConnectionEvent:
    return ConnectionEvent(action=Action.ATTEMPTED, timestamp_ns=T0 + int(t * S), source_ip="10.9.9.9",
                           source_port=50000, destination_ip=backend, destination_port=port,
                           direction=Direction.EGRESS, listener=Listener("0.0.0.0", 8443), session_id=session)


def run(engine: PolicyEngine, events) -> list:
    """The alerts written (deduplicated repeats are for the decision stage only)."""
    return [alert for ev in events for alert in engine.check(ev) if not alert.deduplicated]


def decided(alerts) -> list:
    return Decider(DecideConfig(), default_ttl_s=600).decide(alerts)


def test_allowed_traffic_raises_nothing():
    engine = PolicyEngine(ENGINE_POLICY)
    events = [accept("192.0.2.7", 8443, 0.0), accept("2001:db8::1", 8443, 0.1, 40001),
              egress("10.0.0.5", 443, 0.2), egress("2001:db8::5", 443, 0.3), accept("203.0.113.9", 9000, 0.4)]
    assert run(engine, events) == []


def test_source_denied_with_block():
    engine = PolicyEngine(ENGINE_POLICY)
    ev = accept("203.0.113.9", 8443, 0.0)
    [alert] = engine.check(ev)
    assert alert.rule_id == "policy.source_denied" and alert.ruleset == "policy"
    assert alert.source_ip == "203.0.113.9" and alert.severity is Severity.HIGH
    assert alert.listener.name == "web" and alert.listener.port == 8443
    assert alert.trigger_event_ids == (ev.id,) and alert.timestamp_ns == ev.timestamp_ns
    assert alert.listener_action == "block" and not alert.block and alert.outcome is Outcome.SUCCESS
    assert decided([alert]) == [alert] and alert.block and alert.block_target == "203.0.113.9"


def test_v4_mapped_source_is_matched_as_ipv4():
    engine = PolicyEngine(ENGINE_POLICY)
    assert engine.check(accept("::ffff:192.0.2.7", 8443, 0.0)) == []


def test_refused_connection_is_denied_with_failure_outcome():
    engine = PolicyEngine(ENGINE_POLICY)
    [alert] = engine.check(accept("203.0.113.9", 8443, 0.0, action=Action.DENIED, refused=True))
    assert alert.rule_id == "policy.source_denied" and alert.outcome is Outcome.FAILURE


def test_dedup_one_alert_per_source_per_rule_per_window():
    engine = PolicyEngine(ENGINE_POLICY, EngineConfig(dedup_window_s=10))
    events = [accept("203.0.113.9", 8443, t, 40000 + i) for i, t in enumerate([0, 1, 5, 9.9])]
    alerts = run(engine, [x for ev in events for x in (ev, close(ev, (ev.timestamp_ns - T0) / S + 0.01))])
    assert [a.rule_id for a in alerts] == ["policy.source_denied"] and engine.suppressed == 3
    [again] = engine.check(accept("203.0.113.9", 8443, 10.0, 41000))
    assert not again.deduplicated and again.suppressed == 3
    assert len(engine.check(accept("203.0.113.10", 8443, 10.1, 41001))) == 1


def test_dedup_window_zero_alerts_every_time():
    engine = PolicyEngine(ENGINE_POLICY, EngineConfig(dedup_window_s=0))
    alerts = run(engine, [accept("203.0.113.9", 8443, t, 40000 + t) for t in range(3)])
    assert [a.rule_id for a in alerts if a.rule_id == "policy.source_denied"] == ["policy.source_denied"] * 3


def test_backend_denied_blames_the_session_client():
    engine = PolicyEngine(ENGINE_POLICY)
    assert engine.check(accept("192.0.2.7", 8443, 0.0, session="s1")) == []
    [alert] = decided(engine.check(egress("10.0.0.6", 443, 0.1, session="s1")))
    assert alert.rule_id == "policy.backend_denied" and alert.source_ip == "192.0.2.7"
    assert alert.block_target == "192.0.2.7" and "10.0.0.6:443" in alert.description
    [other_port] = decided(engine.check(egress("10.0.0.5", 8080, 0.2)))
    assert other_port.source_ip is None and not other_port.block


def test_backend_denied_blames_a_client_that_closed_first():
    """A client that resets at once can be closed before the relay's child dials the backend."""
    engine = PolicyEngine(ENGINE_POLICY)
    ev = accept("192.0.2.7", 8443, 0.0, session="s1")
    assert run(engine, [ev, close(ev, 0.01)]) == []
    [alert] = decided(engine.check(egress("10.0.0.6", 443, 0.02, session="s1")))
    assert alert.source_ip == "192.0.2.7" and alert.block_target == "192.0.2.7"


def test_session_clients_are_held_while_open_and_for_the_last_closed():
    """What a day of relayed connections leaves: the sessions open now and the last CLOSED_SESSIONS
    closed ones, not one entry per connection ever relayed (the agent's memory grew with them)."""
    engine = PolicyEngine(ENGINE_POLICY)
    for i in range(CLOSED_SESSIONS + 1000):
        ev = accept("192.0.2.7", 8443, i * 0.001, 20000 + i % 40000, session=f"s{i}")
        run(engine, [ev, close(ev, i * 0.001 + 0.0005)])
    run(engine, [accept("192.0.2.8", 8443, 10.0, session="open")])
    table = engine._counter.open
    assert table.sessions_held == CLOSED_SESSIONS + 1
    assert table.client("s0") is None and table.client(f"s{CLOSED_SESSIONS + 999}") == "192.0.2.7"
    assert table.client("open") == "192.0.2.8"


def test_a_session_whose_close_was_lost_goes_with_its_connection():
    """Lost closes: the session is forgotten with the connection (evicted, expired, 4-tuple reused)
    and kept among the last closed, never held on its own."""
    table = OpenConnections(idle_ns=10 * S, max_open=2)
    for i in range(3):
        table.open(("192.0.2.7", 40000 + i, "10.9.9.9", 8443), ("relay", "192.0.2.7"), f"e{i}", i * S, f"s{i}")
    assert table.forgotten.evicted == 1 and table.sessions_held == 3 and table.client("s0") == "192.0.2.7"
    table.expire(20 * S)
    assert len(table) == 0 and table.sessions_held == 3 and table.client("s2") == "192.0.2.7"


def test_a_refused_connection_leaves_no_session():
    engine = PolicyEngine(ENGINE_POLICY)
    run(engine, [accept("192.0.2.7", 8443, 0.0, session="s1"),
                 accept("192.0.2.7", 8443, 0.001, action=Action.DENIED, refused=True, session="s1")])
    assert engine._counter.open.client("s1") is None and engine._counter.open.sessions_held == 0


def test_a_reload_keeps_the_clients_of_open_sessions():
    before = PolicyEngine(ENGINE_POLICY)
    before.check(accept("192.0.2.7", 8443, 0.0, session="s1"))
    after = PolicyEngine(ENGINE_POLICY)
    after.carry_over(before)
    [alert] = decided(after.check(egress("10.0.0.6", 443, 0.1, session="s1")))
    assert alert.source_ip == "192.0.2.7"


def test_open_connections_shrink_to_a_lowered_max_open():
    table = OpenConnections(idle_ns=0, max_open=5)
    for i in range(5):
        table.open(("192.0.2.7", 40000 + i, "10.9.9.9", 8443), ("relay", "192.0.2.7"), f"e{i}", i * S)
    table.max_open = 2
    table.open(("192.0.2.7", 41000, "10.9.9.9", 8443), ("relay", "192.0.2.7"), "e9", 9 * S)
    assert len(table) == 2 and table.count(("relay", "192.0.2.7")) == 2


def test_rate_exceeded_in_event_time():
    engine = PolicyEngine(ENGINE_POLICY)
    events = [accept("192.0.2.7", 8443, t, 40000 + i) for i, t in enumerate([0.0, 0.3, 0.6, 1.5, 1.7])]
    closes = [close(ev, ev.timestamp_ns / S - T0 / S + 0.01) for ev in events]
    alerts = run(engine, [x for pair in zip(events, closes) for x in pair])
    assert alerts == []   # never more than 3 within one second
    burst = [accept("192.0.2.8", 8443, 5 + i * 0.1, 42000 + i) for i in range(4)]
    alerts = run(engine, [x for ev in burst for x in (ev, close(ev, (ev.timestamp_ns - T0) / S + 0.01))])
    [alert] = alerts
    assert alert.rule_id == "policy.rate_exceeded" and alert.observed == 4 and alert.threshold == 3
    assert alert.window_s == 1.0 and alert.trigger_event_ids == tuple(ev.id for ev in burst)


def test_concurrency_counts_closes():
    engine = PolicyEngine(ENGINE_POLICY)
    a, b, c, d = (accept("192.0.2.7", 8443, t, 40000 + i) for i, t in enumerate([0, 2, 4, 6]))
    assert run(engine, [a, b, close(a, 3), c]) == []   # at most 2 open
    [alert] = engine.check(d)                           # b, c, d open
    assert alert.rule_id == "policy.concurrency_exceeded" and alert.observed == 3 and alert.threshold == 2


def test_refused_connections_do_not_hold_slots():
    engine = PolicyEngine(ENGINE_POLICY)
    events = [accept("192.0.2.7", 8443, t, 40000 + t, action=Action.DENIED, refused=True) for t in range(3)]
    assert run(engine, events) == []


def test_accept_then_deny_of_one_connection_counts_once():
    engine = PolicyEngine(ENGINE_POLICY)
    events = []
    for i in range(3):
        ev = accept("192.0.2.7", 8443, 2 * i, 40000 + i)
        events += [ev, accept("192.0.2.7", 8443, 2 * i + 0.001, 40000 + i, action=Action.DENIED, refused=True)]
    assert run(engine, events) == []


def test_unknown_listener():
    engine = PolicyEngine(ENGINE_POLICY)
    alerts = run(engine, [accept("192.0.2.7", 7777, 0),
                          accept("192.0.2.8", 7777, 1)])
    [alert] = alerts                  # one per listener per window, whatever the source
    assert alert.rule_id == "policy.unknown_listener" and alert.listener.port == 7777
    assert alert.listener.name is None and decided([alert]) == [alert] and not alert.block
    quiet = PolicyEngine(parse_policy("version: 1\nlisteners: []\ndefaults: {unknown_listener: ignore}\n"))
    assert quiet.check(accept("192.0.2.7", 7777, 0)) == []


def test_listener_name_and_replay_is_deterministic():
    events = [accept("203.0.113.9", 8443, i * 0.05, 40000 + i) for i in range(50)]
    first = [(a.rule_id, a.timestamp_ns, a.trigger_event_ids) for a in run(PolicyEngine(ENGINE_POLICY), events)]
    second = [(a.rule_id, a.timestamp_ns, a.trigger_event_ids) for a in run(PolicyEngine(ENGINE_POLICY), events)]
    assert first == second and len(first) == 3   # source_denied, rate_exceeded, concurrency_exceeded
    assert PolicyEngine(ENGINE_POLICY).listener_name(8443) == "web"


def test_open_connections_are_bounded():
    engine = PolicyEngine(parse_policy("version: 1\nlisteners:\n  - {name: a, port: 80}\n"), EngineConfig(max_open=100))
    run(engine, [accept(f"192.0.2.{i % 200}", 80, i * 0.001, 1000 + i) for i in range(1000)])
    assert engine.open_connections == 100 and engine.forgotten.evicted == 900


def test_every_accepted_connection_counts_toward_the_rate_whatever_its_4_tuple():
    """A client reusing its ports (closes lost, or never recorded) is counted like any other."""
    engine = PolicyEngine(ENGINE_POLICY)
    same_port = [accept("192.0.2.7", 8443, 0.1 * k, 40000) for k in range(4)]
    [alert] = run(engine, same_port)
    assert alert.rule_id == "policy.rate_exceeded" and alert.observed == 4
    assert alert.trigger_event_ids == tuple(ev.id for ev in same_port)
    assert engine.forgotten.reused == 3 and engine.open_connections == 1    # a reused 4-tuple: the old one ended


def test_a_repeated_record_of_one_connection_counts_once():
    engine = PolicyEngine(ENGINE_POLICY)
    ev = accept("192.0.2.7", 8443, 0.0)
    assert run(engine, [ev] * 5) == []                              # open: recognised by its id
    assert run(engine, [close(ev, 0.1), ev, ev]) == []              # closed, still in the rate window
    counts = engine.counts()
    assert counts.repeated == 6 and counts.open == 0 and counts.forgotten.total == 0


def test_lines_without_an_event_id_each_count():
    """Other tools' files have no event.id: every line gets `line-<time>`, which is no identity, so
    eight accepts in one second (one id between them) are eight connections."""
    engine = PolicyEngine(ENGINE_POLICY)
    events = [accept("192.0.2.7", 8443, 0.0, 40000 + k) for k in range(4)]
    for ev in events:
        ev.id = unrecorded_id(ev.timestamp_ns)
    [alert] = [a for a in run(engine, events) if a.rule_id == "policy.rate_exceeded"]
    assert alert.observed == 4 and engine.counts().repeated == 0


def test_open_connections_whose_close_was_lost_expire_when_idle():
    """Two connections whose closes were lost stop counting toward concurrency after the idle time."""
    lost = [accept("192.0.2.7", 8443, 0.0, 40000), accept("192.0.2.7", 8443, 0.5, 40001)]
    later = [accept("192.0.2.7", 8443, 100.0 + k, 41000 + k) for k in range(2)]
    engine = PolicyEngine(ENGINE_POLICY, EngineConfig(open_idle_timeout_s=60))
    assert run(engine, lost + later) == []
    assert engine.forgotten.expired == 2 and engine.open_connections == 2
    never = PolicyEngine(ENGINE_POLICY, EngineConfig(open_idle_timeout_s=0))
    [alert] = run(never, lost + later)                             # 0: never forgotten, so the count drifts
    assert alert.rule_id == "policy.concurrency_exceeded" and alert.observed == 3


def test_concurrency_does_not_drift_with_lost_closes():
    """A day of short connections every 30 s, one close in ten lost: the count an innocent source is
    held to never exceeds what it really holds plus the lost ones of the last idle time (2 min)."""
    engine = PolicyEngine(ENGINE_POLICY, EngineConfig(open_idle_timeout_s=120))
    alerts = []
    for k in range(3000):
        ev = accept("192.0.2.7", 8443, 30.0 * k, 30000 + k % 20000)
        alerts += engine.check(ev)
        if k % 10:
            alerts += engine.check(close(ev, 30.0 * k + 1))
        assert engine.open_connections <= 1
    assert alerts == [] and engine.forgotten.expired == 300


def test_the_engine_keeps_open_connections_across_a_reload():
    first = PolicyEngine(ENGINE_POLICY)
    run(first, [accept("192.0.2.7", 8443, 0.0, 40000), accept("192.0.2.7", 8443, 0.1, 40001)])
    second = PolicyEngine(ENGINE_POLICY)
    second.carry_over(first)
    [alert] = second.check(accept("192.0.2.7", 8443, 5.0, 40002))
    assert alert.rule_id == "policy.concurrency_exceeded" and second.open_connections == 3


def test_engine_settings_are_checked_at_load(tmp_path):
    path = tmp_path / "config.yaml"
    for text, problem in (("policy_engine:\n  open_idle_timeout: -1\n", "policy_engine.open_idle_timeout"),
                          ("policy_engine:\n  max_open: 0\n", "policy_engine.max_open: expected a number >= 1")):
        path.write_text(text)
        with pytest.raises(InputError, match=problem):
            load_config(path)


# -- suggest ---------------------------------------------------------------------------------------

def traffic() -> list[ConnectionEvent]:
    """40 connections from two hosts of one /24, each closed three accepts later, plus a second listener."""
    events, accepted = [], []
    for i in range(40):
        ev = accept(f"192.0.2.{10 + i % 2}", 8443, i * 0.5, 40000 + i, session=f"s{i}")
        accepted.append(ev)
        events += [ev, egress("10.0.0.5", 443, i * 0.5 + 0.01, session=f"s{i}")]
        if i >= 3:
            events.append(close(accepted[i - 3], i * 0.5 + 0.02))
    events.append(accept("2001:db8::7", 9000, 30, 41000))
    events.append(accept("203.0.113.50", 9000, 31, 41001, action=Action.DENIED, refused=True))
    return events


def test_aggregate_sources():
    assert aggregate_sources(["192.0.2.1", "192.0.2.200", "198.51.100.7", "2001:db8::1", "2001:db8::2",
                              "2001:db8:1::1"]) == ["192.0.2.0/24", "198.51.100.7", "2001:db8::/64", "2001:db8:1::1"]


def test_suggest_round_trip_raises_no_alerts():
    events = traffic()
    cmd = parse_command_line(["socat", "TCP-LISTEN:8443,bind=127.0.0.1,fork,range=192.0.2.0/25", "TCP:10.0.0.5:443"])
    text = suggest_policy([cmd], events)
    policy = parse_policy(text, "suggested.yaml")
    web, other = policy.listeners
    assert (web.name, web.port, web.address) == ("tcp-8443", 8443, "127.0.0.1")
    assert [str(n) for n in web.allow_sources] == ["192.0.2.0/24"]
    assert [b.text for b in web.allow_backends] == ["10.0.0.5:443"]
    assert web.max_rate_per_source.count >= 10 and web.max_concurrent_per_source >= 2
    assert (other.name, [str(n) for n in other.allow_sources]) == ("listener-9000", ["2001:db8::7/128"])
    assert "1 connection(s) refused by socat" in text
    engine = PolicyEngine(policy, EngineConfig(dedup_window_s=0))
    alerts = [a for ev in events if not ev.refused for a in engine.check(ev)]
    assert alerts == []


def test_suggest_headroom_is_tight_enough_to_catch_more():
    events = traffic()
    policy = parse_policy(suggest_policy([], events, headroom=1.0, min_rate=1))
    web = policy.listener(8443)
    assert web.max_concurrent_per_source == 2    # per source: two of the four open connections
    assert web.max_rate_per_source.count == 20   # each source: 20 connections in 20 s
    engine = PolicyEngine(policy)
    assert run(engine, [ev for ev in events if not ev.refused]) == []
    flood = [accept("192.0.2.10", 8443, 100 + i * 0.01, 50000 + i) for i in range(21)]
    rules = {a.rule_id for a in run(engine, flood)}
    assert rules == {"policy.rate_exceeded", "policy.concurrency_exceeded"}


def test_suggest_measures_rates_as_the_engine_counts_them():
    """Accepts only, one source port reused: every connection counts (no 4-tuple 'first sight')."""
    events = [accept("192.0.2.7", 8443, 0.5 * k, 40000) for k in range(30)]
    policy = parse_policy(suggest_policy([], events, headroom=1.0, min_rate=1))
    assert policy.listener(8443).max_rate_per_source.count == 30
    assert run(PolicyEngine(policy), events) == []


def test_suggest_cli_from_recorded_events(tmp_path):
    host = HostInfo(name="test", id="0" * 32)
    recorded = tmp_path / "events.ndjson"
    with recorded.open("wb") as fh:
        for ev in traffic():
            fh.write(orjson.dumps(render(ev, host)) + b"\n")
    out = tmp_path / "suggested.yaml"
    result = socat_monitor("policy", "suggest", "--no-processes", "--events", str(recorded), "-o", str(out))
    assert result.returncode == 0, result.stderr
    check = socat_monitor("policy", "check", str(out))
    assert check.returncode == 0, check.stderr + out.read_text()
    policy = load_policy(out)
    assert {lp.port for lp in policy.listeners} == {8443, 9000}
    assert [str(n) for n in policy.listener(8443).allow_sources] == ["192.0.2.0/24"]


def test_drop_needs_allow_sources_to_enforce_anything(tmp_path):
    path = tmp_path / "drop.yaml"
    path.write_text("version: 1\nlisteners:\n  - name: web\n    port: 8443\n    action: drop\n"
                    "  - name: none\n    port: 8444\n    action: drop\n    allow_sources: []\n")
    policy = load_policy(path)
    assert [(lp.name, lp.drops, lp.allow_sources) for lp in policy.listeners] == [("web", False, None),
                                                                                 ("none", True, ())]
    result = socat_monitor("policy", "check", str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    [note] = json.loads(result.stdout)["notes"]
    assert "'web'" in note and "drop has nothing to enforce" in note
