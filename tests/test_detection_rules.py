"""The Elastic Security rules: the committed NDJSON is what the generator makes, every rule
passes a pinned copy of Kibana 7.9's import rule schema, and every field a rule reads is mapped."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from monitor import detection_rules
from monitor.ecs import SEVERITY_SCORES
from monitor.sinks.template import FIELDS
from tests.lab import ROOT

COMMITTED = ROOT / "dashboards" / "socat-monitor-rules.ndjson"
SEVERITY = {"type": "string", "enum": ["low", "medium", "high", "critical"]}
STRINGS = {"type": "array", "items": {"type": "string"}}

# Kibana 7.9 `importRulesSchema` (x-pack/plugins/security_solution/common/detection_engine/schemas/request),
# for query rules: the required fields, the types and enums of the optional ones we use, nothing else
RULE_SCHEMA_7_9 = {
    "type": "object",
    "required": ["rule_id", "name", "description", "risk_score", "severity", "type", "query", "language"],
    "additionalProperties": False,
    "properties": {
        "rule_id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "type": {"enum": ["query", "saved_query", "threshold", "machine_learning"]},
        "language": {"enum": ["kuery", "lucene"]},
        "query": {"type": "string"},
        "index": STRINGS,
        "enabled": {"type": "boolean"},
        "interval": {"type": "string", "pattern": r"^\d+[smhd]$"},
        "from": {"type": "string", "pattern": r"^now-\d+[smhd]$"},
        "max_signals": {"type": "integer", "minimum": 1},
        "severity": SEVERITY,
        "risk_score": {"type": "integer", "minimum": 0, "maximum": 100},
        "severity_mapping": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["field", "operator", "value", "severity"],
            "properties": {"field": {"type": "string"}, "operator": {"const": "equals"},
                           "value": {"type": "string"}, "severity": SEVERITY}}},
        "risk_score_mapping": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["field", "operator", "value"],
            "properties": {"field": {"type": "string"}, "operator": {"const": "equals"},
                           "value": {"type": "string"},
                           "risk_score": {"type": "integer", "minimum": 0, "maximum": 100}}}},
        "rule_name_override": {"type": "string"},
        "timestamp_override": {"type": "string"},
        "author": STRINGS,
        "license": {"type": "string"},
        "tags": STRINGS,
        "references": STRINGS,
        "false_positives": STRINGS,
        "threat": {"type": "array"},
        "note": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
    },
}


def _rules() -> list[dict]:
    return [json.loads(line) for line in COMMITTED.read_text().splitlines()]


def test_committed_rules_are_what_the_generator_makes():
    assert COMMITTED.read_text() == detection_rules.export_ndjson(), \
        "dashboards/socat-monitor-rules.ndjson is stale: run socat-monitor dashboards rules export -o it"


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["name"])
def test_rule_passes_the_7_9_import_schema(rule):
    jsonschema.validate(rule, RULE_SCHEMA_7_9)


def test_rule_ids_are_unique_and_stable():
    ids = [r["rule_id"] for r in _rules()]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids)


def test_every_field_a_rule_reads_is_mapped():
    for rule in _rules():
        used = set(re.findall(r"([a-z_@.]+):", rule["query"]))
        used |= {m["field"] for m in rule["severity_mapping"] + rule["risk_score_mapping"]}
        used |= {rule["rule_name_override"], rule["timestamp_override"]}
        assert used <= set(FIELDS), f"{rule['name']}: not in the index template: {sorted(used - set(FIELDS))}"


def test_alert_rule_maps_every_severity_word_to_itself_and_reads_our_alerts_index():
    (alerts,) = [r for r in _rules() if "event.kind:alert" in r["query"]]
    assert {(m["value"], m["severity"]) for m in alerts["severity_mapping"]} == {(w, w) for w in SEVERITY_SCORES}
    assert alerts["risk_score_mapping"] == [{"field": "event.risk_score", "operator": "equals", "value": ""}]
    assert alerts["rule_name_override"] == "rule.name" and alerts["index"] == ["socat-monitor-alerts*"]
