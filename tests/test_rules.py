"""The rule catalogue: every rule id the code raises is declared once, and every
reader (ECS, alert feed, dashboards, README, producers) agrees with it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from monitor import dashboards
from monitor.detect.config import RULES as DETECT_RULES
from monitor.ecs import HostInfo, render
from monitor.events import BlockEvent, Action, Listener, Severity
from monitor.policy.audit import FINDINGS
from monitor.rules import ACTIONS, CATALOGUE, RULES, RULESETS, SCOPES, markdown_table, new_alert
from monitor.sinks.alertfeed import syslog_message

ROOT = Path(__file__).resolve().parent.parent
RULE_ID = re.compile(r"^(policy|anomaly|audit|enforce)\.[a-z_]+$")
NOT_RULES = {"enforce.default_ttl_s", "enforce.kill_established", "enforce.max_blocks_per_minute",
             "enforce.scope", "enforce.table", "enforce.never_block"}   # config keys, in messages and reload
HOST = HostInfo("h", "0" * 32)


def _literals() -> dict[str, set[str]]:
    """Every string literal in the product that is spelled like a rule id, with the files using it."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "monitor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and RULE_ID.match(node.value):
                found.setdefault(node.value, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_rule_id_in_the_code_is_in_the_catalogue():
    unknown = {rule: files for rule, files in _literals().items() if rule not in RULES and rule not in NOT_RULES}
    assert not unknown, f"rule ids raised but not declared in monitor/rules.py: {unknown}"


def test_rule_names_are_spelled_only_in_the_catalogue():
    names = {r.name for r in CATALOGUE}
    elsewhere = [(node.value, str(path.relative_to(ROOT))) for path in (ROOT / "monitor").rglob("*.py")
                 if path.name != "rules.py" for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Constant) and node.value in names]
    assert not elsewhere, f"rule names written outside monitor/rules.py: {elsewhere}"


def test_ids_and_names_are_unique_and_entries_complete():
    assert len({r.id for r in CATALOGUE}) == len(CATALOGUE)
    assert len({r.name for r in CATALOGUE}) == len(CATALOGUE)
    for rule in CATALOGUE:
        assert rule.id.split(".")[0] == rule.ruleset and rule.ruleset in RULESETS
        assert isinstance(rule.severity, Severity) and rule.action in ACTIONS and rule.scope in SCOPES
        if rule.technique is not None:
            assert re.fullmatch(r"T\d{4}", rule.technique.id) and re.fullmatch(r"TA\d{4}", rule.technique.tactic_id)
        assert rule.can_block or rule.action == "alert"


def test_producers_take_their_rules_from_the_catalogue():
    assert set(DETECT_RULES) == {r.id for r in CATALOGUE if r.ruleset == "anomaly"}
    assert FINDINGS == {r.id: r.name for r in CATALOGUE if r.ruleset == "audit"}
    alert = new_alert("policy.backend_denied", description="d", timestamp_ns=1)
    assert (alert.rule_name, alert.ruleset, alert.severity) == ("Backend not allowed by policy", "policy", Severity.HIGH)
    assert new_alert("audit.exec_address", description="d", timestamp_ns=1,
                     severity=Severity.CRITICAL).severity is Severity.CRITICAL


def test_ecs_and_alert_feed_read_the_technique():
    alert = new_alert("anomaly.scan", description="d", timestamp_ns=1_700_000_000 * 10**9, source_ip="192.0.2.1",
                      listener=Listener("10.0.0.1", 80))
    doc = render(alert, HOST)
    assert doc["threat"]["technique"] == {"id": ["T1046"], "name": ["Network Service Discovery"]}
    assert b'technique="T1046"' in syslog_message(alert, doc, HOST, 4)
    assert "threat" not in render(new_alert("anomaly.new_source", description="d", timestamp_ns=1), HOST)
    block = BlockEvent(Action.BLOCKED, 1, "192.0.2.1", ttl_s=60, rule_id="anomaly.scan")
    assert render(block, HOST)["rule"] == {"id": "anomaly.scan", "name": "Scan", "ruleset": "anomaly"}


def test_dashboards_show_the_catalogue():
    [table] = [o for o in dashboards.saved_objects() if o["id"] == dashboards._id("rules")]
    assert json.loads(table["attributes"]["visState"])["params"]["markdown"] == markdown_table()


def test_readme_rule_table_is_the_catalogue():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, \
        "README.md's rule table is stale: paste `python -c 'from monitor.rules import markdown_table as t; print(t())'`"
