"""Elastic Security detection rules that turn socat-monitor documents into signals.

Elastic Security only raises signals from its detection engine; documents
with `event.kind: alert` elsewhere show in the external-alerts view at best.
`rules()` builds custom query rules in the detection-engine format of
Kibana 7.9 (the import API `POST /api/detection_engine/rules/_import`,
which later 7.x and 8.x Kibanas also take): every socat-monitor alert becomes
a signal named after the alert's `rule.name`, with the severity from
`socat.severity` and the risk score from `event.risk_score`, and timed by
`event.ingested` so late-shipped alerts (a spool replay) are not missed.
`dashboards/socat-monitor-rules.ndjson` is `export_ndjson()`'s output; `socat-monitor
dashboards rules import` posts it to `IMPORT_PATH`.
"""

from __future__ import annotations

import json
from typing import Any

from .ecs import SEVERITY_SCORES

ALERTS_INDEX = "socat-monitor-alerts*"
EVENTS_INDEX = "socat-monitor-events*"
RULE_VERSION = 1
IMPORT_PATH = "/api/detection_engine/rules/_import"


def _rule(rule_id: str, name: str, description: str, index: str, query: str, severity: str,
          note: str) -> dict[str, Any]:
    return {
        "rule_id": rule_id,
        "name": name,
        "description": description,
        "type": "query",
        "language": "kuery",
        "index": [index],
        "query": query,
        "enabled": True,
        "interval": "5m",
        "from": "now-6m",
        "max_signals": 1000,
        "severity": severity,
        "risk_score": SEVERITY_SCORES[severity],
        "severity_mapping": [{"field": "socat.severity", "operator": "equals", "value": word, "severity": word}
                             for word in SEVERITY_SCORES],
        "risk_score_mapping": [{"field": "event.risk_score", "operator": "equals", "value": ""}],
        "rule_name_override": "rule.name",
        "timestamp_override": "event.ingested",
        "author": ["socat-monitor"],
        "license": "Apache-2.0",
        "tags": ["socat-monitor", "Network", "Linux"],
        "references": [],
        "false_positives": [],
        "threat": [],
        "note": note,
        "version": RULE_VERSION,
    }


def rules() -> list[dict[str, Any]]:
    return [
        _rule("5b1f8f3e-6f0c-4c83-9b7e-0a1c2d3e4f51", "socat-monitor alert",
              "Promotes every socat-monitor alert (policy, audit, anomaly, enforcement) to an Elastic "
              "Security signal, named after the socat-monitor rule that raised it.",
              ALERTS_INDEX, "event.kind:alert and event.module:socat", "medium",
              "The signal's `rule.id`, `rule.ruleset` and `socat.*` fields say what socat-monitor saw; "
              "`socat.trigger_event_ids` lists the connection events behind it (search them in "
              f"`{EVENTS_INDEX}` by `event.id`)."),
        _rule("5b1f8f3e-6f0c-4c83-9b7e-0a1c2d3e4f52", "socat-monitor block refused",
              "socat-monitor wanted to block an address in nftables and its safety rules refused "
              "(the address is protected, or the circuit breaker tripped): the source is still reachable.",
              EVENTS_INDEX, "event.dataset:socat.enforce and event.action:block_refused", "high",
              "`event.reason` says why the block was refused; `socat.block.alert_id` is the alert that asked."),
    ]


def export_ndjson() -> str:
    """The rules as the import API takes them: one JSON object per line."""
    return "".join(json.dumps(rule, sort_keys=True) + "\n" for rule in rules())
