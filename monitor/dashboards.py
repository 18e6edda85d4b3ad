"""Kibana dashboards of socat-monitor, generated as saved objects.

`saved_objects()` builds the index pattern (over the events and alerts
aliases, fields taken from the index template), the visualizations, the
rule catalogue as a markdown table (`monitor.rules`), a saved search and two
dashboards, in the saved-objects format of Kibana 7.9 (legacy visualizations
with `references`, which every later 7.x and 8.x Kibana imports and
migrates). `dashboards/socat-monitor.ndjson` in the repository is
`export_ndjson()`'s output; `import_to_kibana()` posts it to Kibana's
`_import` API.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from .rules import RULESETS, markdown_table
from .sinks.template import FIELDS

INDEX_PATTERN_ID = "socat-monitor"
INDEX_PATTERN_TITLE = "socat-monitor-*"
KIBANA_VERSION = "7.9.3"
IMPORT_PATH = "/api/saved_objects/_import"
_SEARCH_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"

_KIBANA_TYPE = {"keyword": "string", "wildcard": "string", "text": "string", "ip": "ip", "date": "date", "boolean": "boolean",
                "long": "number", "float": "number", "double": "number"}


def _id(name: str) -> str:
    """Stable ids, so re-importing overwrites instead of duplicating."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"socat-monitor/{name}"))


def _index_pattern() -> dict[str, Any]:
    fields = [
        {"name": name, "type": _KIBANA_TYPE[kind], "esTypes": [kind], "count": 0, "scripted": False,
         "searchable": True, "aggregatable": kind != "text", "readFromDocValues": kind != "text"}
        for name, kind in sorted(FIELDS.items())
    ]
    fields += [  # the text multi-field beside each wildcard field (template._mapping)
        {"name": f"{name}.text", "type": "string", "esTypes": ["text"], "count": 0, "scripted": False,
         "searchable": True, "aggregatable": False, "readFromDocValues": False, "subType": {"multi": {"parent": name}}}
        for name, kind in sorted(FIELDS.items()) if kind == "wildcard"
    ]
    return {
        "id": INDEX_PATTERN_ID,
        "type": "index-pattern",
        "migrationVersion": {},
        "references": [],
        "attributes": {"title": INDEX_PATTERN_TITLE, "timeFieldName": "@timestamp",
                       "fields": json.dumps(fields), "fieldFormatMap": "{}"},
    }


def _search_source(query: str) -> str:
    return json.dumps({"query": {"query": query, "language": "kuery"}, "filter": [], "indexRefName": _SEARCH_REF})


def _count() -> dict[str, Any]:
    return {"id": "1", "enabled": True, "type": "count", "schema": "metric", "params": {}}


def _terms(agg_id: str, field: str, size: int, schema: str, label: str) -> dict[str, Any]:
    return {"id": agg_id, "enabled": True, "type": "terms", "schema": schema,
            "params": {"field": field, "size": size, "order": "desc", "orderBy": "1", "customLabel": label,
                       "otherBucket": False, "missingBucket": False}}


def _date_histogram() -> dict[str, Any]:
    return {"id": "2", "enabled": True, "type": "date_histogram", "schema": "segment",
            "params": {"field": "@timestamp", "interval": "auto", "min_doc_count": 1, "extended_bounds": {}}}


def _visualization(name: str, title: str, vis_type: str, params: dict[str, Any], aggs: list[dict[str, Any]],
                   query: str, description: str) -> dict[str, Any]:
    state = {"title": title, "type": vis_type, "params": params, "aggs": aggs}
    return {
        "id": _id(name),
        "type": "visualization",
        "migrationVersion": {},
        "references": [{"name": _SEARCH_REF, "type": "index-pattern", "id": INDEX_PATTERN_ID}],
        "attributes": {"title": title, "description": description, "version": 1, "uiStateJSON": "{}",
                       "visState": json.dumps(state),
                       "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(query)}},
    }


def _table(name: str, title: str, rows: list[tuple[str, str]], query: str, description: str,
           size: int = 20) -> dict[str, Any]:
    aggs = [_count()] + [_terms(str(i + 2), field, size, "bucket", label) for i, (field, label) in enumerate(rows)]
    params = {"perPage": 20, "showPartialRows": False, "showMetricsAtAllLevels": False, "showTotal": False,
              "totalFunc": "sum", "percentageCol": ""}
    return _visualization(name, title, "table", params, aggs, query, description)


def _histogram(name: str, title: str, split_field: str, split_label: str, query: str,
               description: str) -> dict[str, Any]:
    params = {
        "type": "histogram", "addTooltip": True, "addLegend": True, "legendPosition": "right",
        "times": [], "addTimeMarker": False,
        "categoryAxes": [{"id": "CategoryAxis-1", "type": "category", "position": "bottom", "show": True,
                          "scale": {"type": "linear"}, "labels": {"show": True, "truncate": 100}, "title": {}}],
        "valueAxes": [{"id": "ValueAxis-1", "name": "LeftAxis-1", "type": "value", "position": "left",
                       "show": True, "scale": {"type": "linear", "mode": "normal"},
                       "labels": {"show": True, "rotate": 0, "filter": False, "truncate": 100},
                       "title": {"text": "Count"}}],
        "seriesParams": [{"show": True, "type": "histogram", "mode": "stacked", "data": {"label": "Count", "id": "1"},
                          "valueAxis": "ValueAxis-1", "drawLinesBetweenPoints": True, "showCircles": True}],
    }
    aggs = [_count(), _date_histogram(), _terms("3", split_field, 10, "group", split_label)]
    return _visualization(name, title, "histogram", params, aggs, query, description)


def _markdown(name: str, title: str, text: str, description: str) -> dict[str, Any]:
    state = {"title": title, "type": "markdown", "aggs": [],
             "params": {"fontSize": 10, "openLinksInNewTab": False, "markdown": text}}
    return {
        "id": _id(name),
        "type": "visualization",
        "migrationVersion": {},
        "references": [],
        "attributes": {"title": title, "description": description, "version": 1, "uiStateJSON": "{}",
                       "visState": json.dumps(state)},
    }


def _saved_search(name: str, title: str, columns: list[str], query: str, sort: list[list[str]]) -> dict[str, Any]:
    return {
        "id": _id(name),
        "type": "search",
        "migrationVersion": {},
        "references": [{"name": _SEARCH_REF, "type": "index-pattern", "id": INDEX_PATTERN_ID}],
        "attributes": {"title": title, "description": "", "hits": 0, "version": 1, "columns": columns,
                       "sort": sort, "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source(query)}},
    }


def _dashboard(name: str, title: str, description: str, panels: list[tuple[dict[str, Any], int, int]]) -> dict[str, Any]:
    """`panels`: (saved object, width, height) laid out left to right on a 48-column grid."""
    entries, references = [], []
    x = y = row_h = 0
    for n, (obj, w, h) in enumerate(panels):
        if x + w > 48:
            x, y, row_h = 0, y + row_h, 0
        ref = f"panel_{n}"
        entries.append({"version": KIBANA_VERSION, "panelIndex": str(n + 1), "embeddableConfig": {},
                        "gridData": {"x": x, "y": y, "w": w, "h": h, "i": str(n + 1)}, "panelRefName": ref})
        references.append({"name": ref, "type": obj["type"], "id": obj["id"]})
        x, row_h = x + w, max(row_h, h)
    return {
        "id": _id(name),
        "type": "dashboard",
        "migrationVersion": {},
        "references": references,
        "attributes": {
            "title": title, "description": description, "hits": 0, "version": 1, "timeRestore": False,
            "panelsJSON": json.dumps(entries),
            "optionsJSON": json.dumps({"hidePanelTitles": False, "useMargins": True}),
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(
                {"query": {"query": "", "language": "kuery"}, "filter": []})},
        },
    }


ACCEPTED = "event.dataset:socat.connection and event.action:connection_accepted"


def saved_objects() -> list[dict[str, Any]]:
    """Every saved object, referenced ones before those that reference them."""
    per_listener = _histogram(
        "connections-per-listener", "socat-monitor: connections over time per listener",
        "socat.listener.name", "Listener", ACCEPTED, "Accepted client connections, stacked by listener.")
    top_sources = _table(
        "top-sources", "socat-monitor: top sources", [("source.ip", "Client"), ("socat.listener.name", "Listener")],
        ACCEPTED, "Clients with the most accepted connections.")
    denied = _table(
        "denied-blocked", "socat-monitor: denied and blocked sources",
        [("source.ip", "Source"), ("event.action", "What happened")],
        "event.action:(connection_denied or address_blocked)",
        "Sources socat refused and addresses the agent blocked in nftables.")
    alerts_by_rule = _histogram(
        "alerts-by-rule", "socat-monitor: alerts by rule", "rule.id", "Rule", "event.kind:alert",
        f"Alerts over time, by rule ({', '.join(RULESETS)}).")
    rules = _markdown("rules", "socat-monitor: rules", markdown_table(),
                      "Every rule id, its severity, ATT&CK technique and default action (the rule catalogue).")
    alerts_table = _table(
        "alerts-table", "socat-monitor: alerts by rule and source",
        [("rule.name", "Rule"), ("socat.severity", "Severity"), ("source.ip", "Source")], "event.kind:alert",
        "Which rules fired for which sources.")
    client_relay = _table(
        "client-relay", "socat-monitor: client -> relay",
        [("source.ip", "Client"), ("socat.listener.name", "Relay"), ("socat.listener.port", "Relay port")],
        "network.direction:ingress and event.action:connection_accepted", "Who reaches which relay.")
    relay_backend = _table(
        "relay-backend", "socat-monitor: relay -> backend",
        [("socat.listener.name", "Relay"), ("destination.ip", "Backend"), ("destination.port", "Backend port")],
        "network.direction:egress and event.action:connection_attempted", "Where each relay connects to.")
    sessions = _saved_search(
        "session-pairs", "socat-monitor: session pairs (client -> relay -> backend)",
        ["socat.session.id", "network.direction", "source.ip", "socat.listener.name", "destination.ip",
         "destination.port", "event.action"],
        "socat.session.id:* and event.dataset:socat.connection", [["socat.session.id", "desc"]])
    overview = _dashboard(
        "overview", "socat-monitor: overview", "Connections, sources, denials, blocks and alerts of socat relays.",
        [(per_listener, 48, 14), (top_sources, 24, 15), (denied, 24, 15), (alerts_by_rule, 24, 15),
         (alerts_table, 24, 15), (rules, 48, 24)])
    relay_sessions = _dashboard(
        "sessions", "socat-monitor: sessions", "Who talks through which relay to which backend.",
        [(client_relay, 24, 15), (relay_backend, 24, 15), (sessions, 48, 20)])
    return [_index_pattern(), per_listener, top_sources, denied, alerts_by_rule, alerts_table, rules, client_relay,
            relay_backend, sessions, overview, relay_sessions]


def export_ndjson() -> str:
    """The saved objects as Kibana's import format: one JSON object per line."""
    return "".join(json.dumps(obj, sort_keys=True) + "\n" for obj in saved_objects())
