"""The Elasticsearch index template: explicit ECS mappings of every field we write.

One composable template (`_index_template`, Elasticsearch 7.8+ and 8.x/9.x)
per alias (events, alerts), with the ingest pipeline that stamps
`event.ingested` as the index's final pipeline, and the ILM settings where
the server has ILM. `TEMPLATE_VERSION` goes up whenever
the mappings change; the sink never replaces a template with a higher
version. `FIELDS` is also what the Kibana dashboards are checked against.
"""

from __future__ import annotations

from typing import Any

from ..events import Action

TEMPLATE_VERSION = 2

KW = "keyword"
WILDCARD = "wildcard"
_F: dict[str, str] = {
    "@timestamp": "date",
    "message": "text",
    "ecs.version": KW,
    "event.id": KW, "event.kind": KW, "event.dataset": KW, "event.module": KW, "event.category": KW,
    "event.type": KW, "event.action": KW, "event.outcome": KW, "event.reason": KW,
    "event.sequence": "long", "event.duration": "long", "event.severity": "long", "event.risk_score": "float",
    "event.created": "date", "event.ingested": "date",
    "host.name": KW, "host.hostname": KW, "host.id": KW, "host.ip": "ip",
    "host.os.type": KW, "host.os.platform": KW, "host.os.name": KW, "host.os.version": KW,
    "host.os.family": KW, "host.os.kernel": KW, "host.os.full": KW,
    "agent.id": KW, "agent.name": KW, "agent.type": KW, "agent.version": KW,
    "observer.hostname": KW, "observer.type": KW, "observer.vendor": KW,
    "source.ip": "ip", "source.port": "long", "source.bytes": "long",
    "destination.ip": "ip", "destination.port": "long", "destination.bytes": "long",
    "network.transport": KW, "network.type": KW, "network.direction": KW, "network.community_id": KW,
    "related.ip": "ip",
    "process.pid": "long", "process.name": KW, "process.thread.id": "long", "process.parent.pid": "long",
    "process.executable": KW, "process.args": KW, "process.command_line": WILDCARD, "process.start": "date",
    "process.entity_id": KW, "process.group.id": KW, "process.exit_code": "long",
    "user.id": KW, "user.name": KW,
    "container.id": KW, "container.name": KW, "container.runtime": KW,
    "rule.id": KW, "rule.name": KW, "rule.description": KW, "rule.ruleset": KW, "rule.category": KW,
    "threat.framework": KW, "threat.tactic.id": KW, "threat.tactic.name": KW,
    "threat.technique.id": KW, "threat.technique.name": KW,
    "error.message": "text", "error.type": KW,
    "socat.listener.ip": "ip", "socat.listener.port": "long", "socat.listener.name": KW,
    "socat.netns.inode": "long", "socat.netns.name": KW, "socat.cgroup": KW,
    "socat.session.id": KW, "socat.refused": "boolean", "socat.error": KW, "socat.signal": "long",
    "socat.source_partial": "boolean",
    "socat.severity": KW, "socat.trigger_event_ids": KW, "socat.top_sources": KW, "socat.source_network": KW, "socat.suppressed": "long",
    "socat.detection.observed": "double", "socat.detection.baseline": "double",
    "socat.detection.threshold": "double", "socat.detection.score": "double", "socat.detection.window_s": "double",
    "socat.audit.token": KW, "socat.audit.fix": KW,
    "socat.block.target": KW, "socat.block.ttl_s": "double", "socat.block.alert_id": KW, "socat.block.skipped": KW,
    "socat.block.dropped_packets": "long", "socat.block.dropped_bytes": "long",
    "socat.drop.packets": "long", "socat.drop.dry_run": "boolean",
    "socat.pipeline.stage": KW, "socat.pipeline.lost": "long",
}
# heartbeat counters (`monitor.agent` samples; labelled ones as name.label): mapped, so the
# Kibana index pattern lists them; others (alerts_total.<rule>, sink_lost_events_total.<stage>)
# map as double dynamically
_METRICS = (
    "kernel_lost_events_total", "user_lost_events_total", "queue_depth", "blocks_active",
    "elasticsearch_spool_bytes", "elasticsearch_lag_seconds", "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    *(f"events_total.{action.value}" for action in Action),
)
FIELDS: dict[str, str] = {**_F, **{f"socat.metrics.{name}": "double" for name in _METRICS}}
DYNAMIC_OBJECTS = ("socat.metrics",)   # heartbeat counters: any name, always a number


def _mapping(dotted: str, kind: str, wildcard: bool) -> dict[str, Any]:
    if kind == WILDCARD:
        # ECS maps it `wildcard` (infix search); the OSS build lacks that type: keyword + text instead
        main = {"type": WILDCARD} if wildcard else {"type": KW, "ignore_above": 8191}
        return {**main, "fields": {"text": {"type": "text"}}}
    if kind == KW:
        return {"type": KW, "ignore_above": 2048 if dotted == "rule.description" else 1024}
    return {"type": kind}


def properties(wildcard: bool = True) -> dict[str, Any]:
    """Nested `properties` of the mapping, built from FIELDS."""
    root: dict[str, Any] = {}
    for dotted, kind in FIELDS.items():
        node = root
        parts = dotted.split(".") if dotted != "@timestamp" else [dotted]
        for part in parts[:-1]:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[parts[-1]] = _mapping(dotted, kind, wildcard)
    return root


def ingest_pipeline(version: int = TEMPLATE_VERSION) -> dict[str, Any]:
    """The body of `PUT _ingest/pipeline/<name>`: stamps `event.ingested` as the server indexes."""
    return {
        "description": "socat-monitor: event.ingested, the time the document reached Elasticsearch",
        "version": version,
        "processors": [{"set": {"field": "event.ingested", "value": "{{{_ingest.timestamp}}}"}}],
    }


def index_template(index_patterns: list[str], version: int = TEMPLATE_VERSION, *, wildcard: bool = True,
                   pipeline: str | None = None, ilm: tuple[str, str] | None = None) -> dict[str, Any]:
    """The body of `PUT _index_template/<name>`.

    `wildcard`: the server has the `wildcard` field type (7.9+, not the OSS
    build); `pipeline`: the ingest pipeline run as the index's final pipeline;
    `ilm`: (policy, rollover alias) when the server's ILM manages the indices.
    """
    settings: dict[str, Any] = {
        "index.number_of_shards": 1,
        "index.auto_expand_replicas": "0-1",
        "index.refresh_interval": "1s",
    }
    if pipeline:
        settings["index.final_pipeline"] = pipeline
    if ilm:
        settings["index.lifecycle.name"], settings["index.lifecycle.rollover_alias"] = ilm
    return {
        "index_patterns": index_patterns,
        "priority": 200,
        "version": version,
        "_meta": {"managed_by": "socat-monitor", "description": "ECS events and alerts of socat-monitor"},
        "template": {
            "settings": settings,
            "mappings": {
                "dynamic": True,
                "date_detection": False,
                "dynamic_templates": [
                    {"socat_metrics": {"path_match": "socat.metrics.*", "mapping": {"type": "double"}}},
                    {"strings_as_keyword": {"match_mapping_type": "string",
                                            "mapping": {"type": KW, "ignore_above": 1024}}},
                ],
                "properties": properties(wildcard),
            },
        },
    }
