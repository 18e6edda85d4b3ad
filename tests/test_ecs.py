"""ECS rendering: the Community ID against the spec's published values; every field, type and
categorisation value against a pinned copy of the ECS reference; severity; identity and times."""

from __future__ import annotations

import dataclasses
import time

import orjson
import pytest

from monitor.ecs import ECS_VERSION, HostInfo, HostOs, community_id, encode, iso_timestamp, render, set_severity
from monitor.events import Action, BlockEvent, Container, DropEvent, Listener
from monitor.policy.engine import dropped_alert
from monitor.sinks.template import FIELDS
from tests import ecs_reference as ecs_ref
from tests import sample_records as S

# corelight/community-id-spec baseline (seed 0 unless given), both directions of each flow
SPEC_VALUES = [
    (6, "128.232.110.120", 34855, "66.35.250.204", 80, 0, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (17, "192.168.1.52", 54585, "8.8.8.8", 53, 0, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", 63943, "2607:f8b0:400c:c03::1a", 25, 0,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    (132, "192.168.170.8", 7, "192.168.170.56", 7, 0, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (6, "1.2.3.4", 1122, "5.6.7.8", 3344, 0, "1:wCb3OG7yAFWelaUydu0D+125CLM="),
    (17, "1.2.3.4", 1122, "5.6.7.8", 3344, 0, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="),
    (6, "1.2.3.4", 1122, "5.6.7.8", 3344, 1, "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="),
    (17, "1.2.3.4", 1122, "5.6.7.8", 3344, 1, "1:OShq+iKDAMVouh/4bMxB9Sz4amw="),
]


@pytest.mark.parametrize("proto,saddr,sport,daddr,dport,seed,expected", SPEC_VALUES)
def test_community_id_matches_the_spec_in_both_directions(proto, saddr, sport, daddr, dport, seed, expected):
    assert community_id(saddr, sport, daddr, dport, proto, seed) == expected
    assert community_id(daddr, dport, saddr, sport, proto, seed) == expected


def test_community_id_orders_by_address_before_port():
    """Same address both ends: the smaller port goes first, whichever side it is on."""
    assert community_id("127.0.0.1", 40000, "127.0.0.1", 80) == community_id("127.0.0.1", 80, "127.0.0.1", 40000)


# -- every field against the pinned ECS reference ---------------------------------

HOST = HostInfo(name="ecs-host", id="4" * 32, ip=("192.0.2.10", "2001:db8::10"),
                os=HostOs(name="Debian GNU/Linux", version="12", family="debian", kernel="6.1.0", full="Debian 12"))


def _records() -> list:
    return [*S.every_kind(),
            BlockEvent(action=Action.UNBLOCKED, timestamp_ns=1, target="198.51.100.7", reason="expired"),
            BlockEvent(action=Action.BLOCK_REFUSED, timestamp_ns=1, target="127.0.0.1", reason="loopback"),
            BlockEvent(action=Action.BLOCK_DRY_RUN, timestamp_ns=1, target="198.51.100.8"),
            DropEvent(action=Action.CONNECTION_DROPPED, timestamp_ns=1, source_ip="198.51.100.9",
                      listener=Listener("::", 8443, "web"), dropped_packets=1, source_port=40123),
            DropEvent(action=Action.DROP_COUNTERS, timestamp_ns=1, source_ip="198.51.100.9",
                      listener=Listener("::", 8443, "web"), dropped_packets=7, netns="lab-a")]


def _leaves(doc: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_declared_ecs_version_is_the_pinned_reference():
    assert ECS_VERSION == ecs_ref.ECS_VERSION


def test_every_rendered_field_is_ecs_or_under_socat():
    for record in _records():
        doc = render(record, HOST)
        foreign = {f for f in _leaves(doc) if f not in ecs_ref.FIELDS and not f.startswith("socat.")}
        assert not foreign, f"{type(record).__name__}: not in ECS {ECS_VERSION}: {sorted(foreign)}"


def test_every_mapped_field_has_the_ecs_type():
    wrong = {}
    for name, kind in FIELDS.items():
        if name.startswith("socat."):
            continue
        assert name in ecs_ref.FIELDS, f"template maps {name}, which ECS {ECS_VERSION} does not have"
        ecs_type = ecs_ref.FIELDS[name]
        if kind not in (ecs_type, ecs_ref.TEMPLATE_EQUIVALENT.get(ecs_type)):
            wrong[name] = (kind, ecs_type)
    assert not wrong, f"template type differs from ECS (ours, ECS): {wrong}"


def test_categorisation_values_are_the_allowed_ones():
    for record in _records():
        event = render(record, HOST)["event"]
        where = f"{type(record).__name__} {event.get('action')}"
        assert event["kind"] in ecs_ref.EVENT_KIND, where
        assert event.get("outcome", "success") in ecs_ref.EVENT_OUTCOME, where
        categories = event.get("category", [])
        assert all(c in ecs_ref.EVENT_CATEGORY_TYPES for c in categories), where
        for event_type in event.get("type", []):
            assert any(event_type in ecs_ref.EVENT_CATEGORY_TYPES[c] for c in categories), \
                f"{where}: event.type {event_type} is not expected with categories {categories}"


def test_blocks_are_configuration_changes():
    types = {r.action: render(r, HOST)["event"] for r in _records() if isinstance(r, BlockEvent)}
    assert types[Action.BLOCKED]["category"] == ["configuration"] and types[Action.BLOCKED]["type"] == ["creation"]
    assert types[Action.UNBLOCKED]["type"] == ["deletion"]
    assert types[Action.BLOCK_REFUSED]["outcome"] == "failure"


@pytest.mark.parametrize("word,score", [("low", 21), ("medium", 47), ("high", 73), ("critical", 99)])
def test_severity_word_becomes_elastic_scores(word, score):
    doc = {"event": {}}
    set_severity(doc, word)
    assert doc == {"event": {"severity": score, "risk_score": float(score)}, "socat": {"severity": word}}


def test_unknown_severity_word_is_refused():
    with pytest.raises(ValueError, match="unknown severity 'severe'"):
        set_severity({"event": {}}, "severe")


def test_alert_carries_severity_score_and_word():
    doc = render(S.alert(), HOST)
    assert (doc["event"]["severity"], doc["event"]["risk_score"], doc["socat"]["severity"]) == (73, 73.0, "high")


def test_identity_and_times():
    before = iso_timestamp(time.time_ns())
    doc = render(S.connection(1), HOST)
    other = render(S.connection(1), HostInfo(name="other", id="5" * 32))
    assert doc["process"]["entity_id"] != other["process"]["entity_id"]
    assert doc["event"]["created"] >= before
    assert doc["host"]["ip"] == ["192.0.2.10", "2001:db8::10"] and doc["host"]["os"]["kernel"] == "6.1.0"
    assert doc["agent"]["id"] == HOST.agent_id != other["agent"]["id"]


def test_host_detection_reads_this_machine():
    host = HostInfo.detect()
    assert host.id and host.os.kernel and all(not ip.startswith("127.") for ip in host.ip)


def test_a_dropped_source_is_a_denied_connection_and_its_alert_a_failure():
    ev = DropEvent(action=Action.CONNECTION_DROPPED, timestamp_ns=1, source_ip="198.51.100.9",
                   listener=Listener("10.0.0.1", 8443, "web"), dropped_packets=1, source_port=40123)
    doc = render(ev, HOST)
    assert doc["event"]["type"] == ["connection", "denied"] and doc["event"]["outcome"] == "failure"
    assert (doc["source"]["ip"], doc["destination"]["port"], doc["socat"]["listener"]["name"],
            doc["socat"]["drop"]["packets"]) == ("198.51.100.9", 8443, "web", 1)
    assert doc["source"]["port"] == 40123, "the port of the first dropped SYN"
    assert "netns" not in doc["socat"], "dropped in the agent's own namespace"
    ev.netns = "lab-a"
    assert render(ev, HOST)["socat"]["netns"] == {"name": "lab-a"}, "the namespace whose rule dropped it"
    alert = render(dropped_alert(ev), HOST)
    assert alert["rule"]["id"] == "policy.source_denied" and alert["event"]["outcome"] == "failure"
    assert alert["source"]["ip"] == "198.51.100.9"


def _without_created(doc: dict) -> dict:
    doc["event"].pop("created")
    return doc


def test_encoded_line_is_the_rendered_document_for_every_record():
    """`encode` builds connection lines from reused pieces: the same document as `render`, one line."""
    contained = dataclasses.replace(S.connection(9).process, netns=4026531840, netns_name="lab", cgroup="/docker/ab12",
                                    container=Container(id="ab12" * 16, name="web", runtime="docker"))
    in_container = dataclasses.replace(S.connection(9), process=contained)
    for record in _records() + [S.closed(7), S.egress(8), in_container]:
        line = encode(record, HOST)
        assert line.endswith(b"}\n") and line.count(b"\n") == 1
        assert _without_created(orjson.loads(line)) == _without_created(render(record, HOST)), type(record)


def test_encoded_pieces_follow_a_changed_process_and_host():
    """A new ProcessInfo (another uid after su=, say) or another host is encoded anew, never reused."""
    first = S.connection(1)
    su = dataclasses.replace(first.process, uid=65534, user_name="nobody")
    second = dataclasses.replace(S.connection(2), process=su)
    other_host = dataclasses.replace(HOST, name="other")
    assert orjson.loads(encode(first, HOST))["user"]["id"] == "1000"
    assert orjson.loads(encode(second, HOST))["user"] == {"id": "65534", "name": "nobody"}
    assert orjson.loads(encode(second, other_host))["host"]["name"] == "other"
    assert orjson.loads(encode(second, HOST))["host"]["name"] == HOST.name
