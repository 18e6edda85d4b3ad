"""A pinned extract of the ECS field reference for the `ecs.version` we declare (8.11.0).

Only the fields socat-monitor writes: name -> ECS type, and the allowed
values of the categorisation fields (`event.kind`, `event.category` with
the `event.type` values expected for each, `event.outcome`). Copied by hand
from the ECS 8.11 field reference; change it only together with
`monitor.ecs.ECS_VERSION`.
"""

ECS_VERSION = "8.11.0"

KW, LONG, DATE, IP = "keyword", "long", "date", "ip"
FIELDS = {
    "@timestamp": DATE,
    "message": "match_only_text",
    "ecs.version": KW,
    "agent.id": KW, "agent.name": KW, "agent.type": KW, "agent.version": KW,
    "destination.bytes": LONG, "destination.ip": IP, "destination.port": LONG,
    "error.message": "match_only_text", "error.type": KW,
    "event.action": KW, "event.category": KW, "event.created": DATE, "event.dataset": KW, "event.duration": LONG,
    "event.id": KW, "event.ingested": DATE, "event.kind": KW, "event.module": KW, "event.outcome": KW,
    "event.reason": KW, "event.risk_score": "float", "event.sequence": LONG, "event.severity": LONG,
    "event.type": KW,
    "host.hostname": KW, "host.id": KW, "host.ip": IP, "host.name": KW,
    "host.os.family": KW, "host.os.full": KW, "host.os.kernel": KW, "host.os.name": KW, "host.os.platform": KW,
    "host.os.type": KW, "host.os.version": KW,
    "network.community_id": KW, "network.direction": KW, "network.transport": KW, "network.type": KW,
    "observer.hostname": KW, "observer.type": KW, "observer.vendor": KW,
    "process.args": KW, "process.command_line": "wildcard", "process.entity_id": KW, "process.executable": KW,
    "process.exit_code": LONG, "process.group.id": KW, "process.name": KW, "process.parent.pid": LONG,
    "process.pid": LONG, "process.start": DATE, "process.thread.id": LONG,
    "related.ip": IP,
    "rule.category": KW, "rule.description": KW, "rule.id": KW, "rule.name": KW, "rule.ruleset": KW,
    "source.bytes": LONG, "source.ip": IP, "source.port": LONG,
    "threat.framework": KW, "threat.tactic.id": KW, "threat.tactic.name": KW, "threat.technique.id": KW,
    "threat.technique.name": KW,
    "user.id": KW, "user.name": KW,
    "container.id": KW, "container.name": KW, "container.runtime": KW,
}

EVENT_KIND = {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error", "signal"}
EVENT_OUTCOME = {"failure", "success", "unknown"}
# event.category -> the event.type values ECS expects with it
EVENT_CATEGORY_TYPES = {
    "api": {"access", "admin", "allowed", "change", "creation", "deletion", "denied", "end", "info", "start",
            "user"},
    "authentication": {"start", "end", "info"},
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "database": {"access", "change", "info", "error"},
    "driver": {"change", "end", "info", "start"},
    "email": {"info"},
    "file": {"access", "change", "creation", "deletion", "info"},
    "host": {"access", "change", "end", "info", "start"},
    "iam": {"admin", "change", "creation", "deletion", "group", "info", "user"},
    "intrusion_detection": {"allowed", "denied", "info"},
    "library": {"start"},
    "malware": {"info"},
    "network": {"access", "allowed", "connection", "denied", "end", "info", "protocol", "start"},
    "package": {"access", "change", "deletion", "info", "installation", "start"},
    "process": {"access", "change", "end", "info", "start"},
    "registry": {"access", "change", "creation", "deletion"},
    "session": {"start", "end", "info"},
    "threat": {"indicator"},
    "vulnerability": {"info"},
    "web": {"access", "error", "info"},
}
# what the index template may use instead of the ECS type, on the servers we support
TEMPLATE_EQUIVALENT = {"match_only_text": "text"}    # match_only_text needs 7.14+
