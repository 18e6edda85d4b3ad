"""The Elasticsearch index template: explicit ECS mappings of every field we write.

One composable template (`_index_template`, Elasticsearch 7.8+ and 8.x/9.x)
covers the events and alerts indices. `TEMPLATE_VERSION` goes up whenever
the mappings change; the sink never replaces a template with a higher
version. `FIELDS` is also what the Kibana dashboards are checked against.
"""

from __future__ import annotations

from typing import Any

TEMPLATE_VERSION = 1

KW = "keyword"
_F: dict[str, str] = {
    "@timestamp": "date",
    "message": "text",
    "ecs.version": KW,
    "event.id": KW, "event.kind": KW, "event.dataset": KW, "event.module": KW, "event.category": KW,
    "event.type": KW, "event.action": KW, "event.outcome": KW, "event.reason": KW,
    "event.sequence": "long", "event.duration": "long", "event.severity": "long", "event.risk_score": "float",
    "host.name": KW, "host.id": KW, "host.ip": "ip",
    "agent.name": KW, "agent.type": KW, "agent.version": KW,
    "observer.hostname": KW, "observer.type": KW, "observer.vendor": KW,
    "source.ip": "ip", "source.port": "long", "source.bytes": "long",
    "destination.ip": "ip", "destination.port": "long", "destination.bytes": "long",
    "network.transport": KW, "network.type": KW, "network.direction": KW, "network.community_id": KW,
    "related.ip": "ip",
    "process.pid": "long", "process.name": KW, "process.thread.id": "long", "process.parent.pid": "long",
    "process.executable": KW, "process.args": KW, "process.command_line": KW, "process.start": "date",
    "process.entity_id": KW, "process.group.id": KW, "process.exit_code": "long",
    "user.id": KW, "user.name": KW,
    "rule.id": KW, "rule.name": KW, "rule.description": KW, "rule.ruleset": KW, "rule.category": KW,
    "threat.framework": KW, "threat.tactic.id": KW, "threat.tactic.name": KW,
    "threat.technique.id": KW, "threat.technique.name": KW,
    "error.message": "text", "error.type": KW,
    "socat.listener.ip": "ip", "socat.listener.port": "long", "socat.listener.name": KW,
    "socat.session.id": KW, "socat.refused": "boolean", "socat.error": KW, "socat.signal": "long",
    "socat.severity": KW, "socat.trigger_event_ids": KW, "socat.top_sources": KW, "socat.suppressed": "long",
    "socat.detection.observed": "double", "socat.detection.baseline": "double",
    "socat.detection.threshold": "double", "socat.detection.score": "double", "socat.detection.window_s": "double",
    "socat.audit.token": KW, "socat.audit.fix": KW,
    "socat.block.target": KW, "socat.block.ttl_s": "double", "socat.block.alert_id": KW,
    "socat.pipeline.stage": KW, "socat.pipeline.lost": "long",
}
FIELDS: dict[str, str] = dict(_F)
DYNAMIC_OBJECTS = ("socat.metrics",)   # heartbeat counters: any name, always a number


def _mapping(dotted: str, kind: str) -> dict[str, Any]:
    if kind == KW:
        return {"type": KW, "ignore_above": 2048 if dotted in ("process.command_line", "rule.description") else 1024}
    return {"type": kind}


def properties() -> dict[str, Any]:
    """Nested `properties` of the mapping, built from FIELDS."""
    root: dict[str, Any] = {}
    for dotted, kind in FIELDS.items():
        node = root
        parts = dotted.split(".") if dotted != "@timestamp" else [dotted]
        for part in parts[:-1]:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[parts[-1]] = _mapping(dotted, kind)
    return root


def index_template(index_patterns: list[str], version: int = TEMPLATE_VERSION) -> dict[str, Any]:
    """The body of `PUT _index_template/<name>`."""
    return {
        "index_patterns": index_patterns,
        "priority": 200,
        "version": version,
        "_meta": {"managed_by": "socat-monitor", "description": "ECS events and alerts of socat-monitor"},
        "template": {
            "settings": {
                "index.number_of_shards": 1,
                "index.auto_expand_replicas": "0-1",
                "index.refresh_interval": "1s",
            },
            "mappings": {
                "dynamic": True,
                "date_detection": False,
                "dynamic_templates": [
                    {"socat_metrics": {"path_match": "socat.metrics.*", "mapping": {"type": "double"}}},
                    {"strings_as_keyword": {"match_mapping_type": "string",
                                            "mapping": {"type": KW, "ignore_above": 1024}}},
                ],
                "properties": properties(),
            },
        },
    }
