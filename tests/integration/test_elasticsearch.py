"""The Elasticsearch sink against a real Elasticsearch 7.9.2 (scripts/elasticsearch.sh).

Every test uses its own index, alias and template names, so tests do not
see each other's documents.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import time
import uuid

import orjson
import pytest
from elasticsearch.helpers import scan

from monitor.ecs import HostInfo
from monitor.events import PipelineError
from monitor.sinks import ElasticsearchConfig, ElasticsearchSink
from monitor.sinks.template import TEMPLATE_VERSION, index_template
from tests import sample_records as S
from tests.lab import PYTHON, ROOT, free_port

pytestmark = pytest.mark.integration

HOST = HostInfo(name="it-host", id="1" * 32)


def _config(server_url: str, tmp_path, prefix: str, **kw) -> ElasticsearchConfig:
    return ElasticsearchConfig(urls=[server_url], spool_dir=tmp_path / "spool", events_index=f"{prefix}-events",
                               alerts_index=f"{prefix}-alerts", template_name=prefix, **kw)


@pytest.fixture
def prefix(elasticsearch_server):
    name = f"it-{uuid.uuid4().hex[:8]}"
    yield name
    es = elasticsearch_server.client()
    es.indices.delete(index=f"{name}-*", ignore=[404])
    for template in (name, f"{name}-events", f"{name}-alerts"):
        es.transport.perform_request("DELETE", f"/_index_template/{template}", params={"ignore": 404})
    es.transport.perform_request("DELETE", f"/_ingest/pipeline/{name}", params={"ignore": 404})


def _ids(es, index: str) -> list[str]:
    es.indices.refresh(index=index)
    return [hit["_id"] for hit in scan(es, index=index, query={"_source": False}, size=5000)]


def test_documents_arrive_with_ecs_mappings(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path, prefix), HOST)
    records = S.every_kind() + [S.connection(i, source_ip=f"192.0.2.{i + 1}") for i in range(50)]
    for record in records:
        sink.write(record)
    assert sink.flush(30), sink.stats
    sink.close()
    assert sink.stats.written == len(records) and sink.stats.dead_lettered == 0

    events, alerts = f"{prefix}-events", f"{prefix}-alerts"
    es.indices.refresh(index=f"{prefix}-*")
    assert es.count(index=alerts)["count"] == 1
    assert es.count(index=events)["count"] == len(records) - 1

    mapping = es.indices.get_mapping(index=events)[f"{events}-000001"]["mappings"]["properties"]
    assert mapping["source"]["properties"]["ip"]["type"] == "ip"
    assert mapping["@timestamp"]["type"] == "date"
    assert mapping["event"]["properties"]["action"]["type"] == "keyword"

    in_cidr = es.count(index=events, body={"query": {"term": {"source.ip": "192.0.2.0/24"}}})["count"]
    expected = sum(1 for r in records if getattr(r, "source_ip", "").startswith("192.0.2."))
    assert in_cidr == expected >= 50
    v6 = es.count(index=events, body={"query": {"term": {"source.ip": "2001:db8::/32"}}})["count"]
    assert v6 == 1

    alert = es.search(index=alerts)["hits"]["hits"][0]
    assert alert["_id"] == alert["_source"]["event"]["id"]
    src = alert["_source"]
    assert src["event"]["kind"] == "alert" and src["rule"]["id"] == "anomaly.scan"
    assert src["threat"]["technique"]["id"] == ["T1046"] and src["event"]["risk_score"] == 73
    assert es.indices.get_alias(name=events)[f"{events}-000001"]["aliases"][events]["is_write_index"] is True


def test_outage_every_event_arrives_once(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path, prefix, backoff_max_s=1.0), HOST)
    ids = []

    def write(n: int) -> float:
        start = time.monotonic()
        for _ in range(n):
            event = S.connection(len(ids))
            ids.append(event.id)
            sink.write(event)
        return time.monotonic() - start

    write(300)
    assert sink.flush(30)
    elasticsearch_server.stop()
    try:
        elapsed = write(700)
        assert elapsed < 2.0, f"write() blocked while Elasticsearch was down: {elapsed:.2f}s for 700 events"
        time.sleep(1.5)
        stats = sink.stats
        assert stats.pending == 700 and stats.spool_bytes > 0 and stats.retried > 0
    finally:
        elasticsearch_server.start()
    assert sink.flush(60), sink.stats
    sink.close()
    got = _ids(es, f"{prefix}-events")
    assert len(got) == len(set(got)) == 1000
    assert set(got) == set(ids)


def _kill_writer_then_resume(server, spool, prefix: str, while_killed=lambda: None, until_killed=lambda: None) -> None:
    """es_writer spools 20000 events and is SIGKILLed (after `until_killed()` returns); `while_killed()`
    runs; a new es_writer writes 1000 more and delivers everything. Asserts the replay happened."""
    argv = [PYTHON, "-m", "tests.integration.es_writer", server.url, str(spool), prefix]
    writer = subprocess.Popen([*argv, "0", "20000"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert writer.stdout.readline().startswith("pending-at-start 0")
        assert writer.stdout.readline().strip() == "spooled"
        until_killed()
    finally:
        writer.kill()
        writer.wait(10)
    while_killed()
    resumed = subprocess.run([*argv, "20000", "1000", "--finish"], cwd=ROOT, capture_output=True, text=True,
                             timeout=240, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first_line, *_ = resumed.stdout.splitlines()
    left_over = int(first_line.split()[1])
    assert left_over > 0, "the writer was killed after shipping everything: the test did not exercise replay"
    assert "flushed True" in resumed.stdout


def test_agent_killed_while_spooling_loses_and_doubles_nothing(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    _kill_writer_then_resume(elasticsearch_server, tmp_path / "spool", prefix)
    got = _ids(es, f"{prefix}-events")
    assert len(got) == len(set(got)) == 21000
    assert set(got) == {f"{prefix}-{i:06d}" for i in range(21000)}


def test_mapping_conflict_goes_to_dead_letter(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    errors: list[PipelineError] = []
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path, prefix), HOST, on_error=errors.append)
    bad = S.alert(source_ip="not-an-ip")
    good = [S.alert(), S.connection(1), S.connection(2)]
    for record in [good[0], bad, *good[1:]]:
        sink.write(record)
    assert sink.flush(30)
    sink.close()
    assert sink.stats.dead_lettered == 1 and sink.stats.written == 3
    lines = (tmp_path / "spool" / "dead-letter.ndjson").read_bytes().splitlines()
    assert len(lines) == 1
    dead = orjson.loads(lines[0])
    assert dead["status"] == 400 and "mapper_parsing_exception" in dead["reason"]
    assert dead["document"]["event"]["id"] == bad.id and dead["index"] == f"{prefix}-alerts"
    assert any(e.stage == "sinks.elasticsearch" and "dead-letter" in e.message for e in errors)
    es.indices.refresh(index=f"{prefix}-*")
    assert es.count(index=f"{prefix}-alerts")["count"] == 1


def test_newer_template_is_kept_older_is_upgraded(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    patterns = [f"{prefix}-events-*"]
    name = f"{prefix}-events"

    def installed() -> int:
        found = es.transport.perform_request("GET", f"/_index_template/{name}")
        return found["index_templates"][0]["index_template"]["version"]

    es.transport.perform_request("PUT", f"/_index_template/{name}",
                                 body=index_template(patterns, version=999, wildcard=False))
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path / "a", prefix), HOST)
    sink.write(S.connection(1))
    assert sink.flush(30)
    sink.close()
    assert installed() == 999

    es.transport.perform_request("PUT", f"/_index_template/{name}",
                                 body=index_template(patterns, version=0, wildcard=False))
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path / "b", prefix), HOST)
    sink.write(S.connection(2))
    assert sink.flush(30)
    sink.close()
    assert installed() == TEMPLATE_VERSION


def test_unreachable_at_start_spools_and_replays_after_restart(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    dead_url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    sink = ElasticsearchSink(_config(dead_url, tmp_path, prefix, close_timeout_s=1.0), HOST)
    events = [S.connection(i) for i in range(100)]
    for event in events:
        sink.write(event)
    time.sleep(0.5)
    sink.close()
    assert time.monotonic() - started < 10
    assert sink.stats.pending == 100 and not sink.ready

    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path, prefix), HOST)
    assert sink.stats.pending == 100
    assert sink.flush(30)
    sink.close()
    assert sorted(_ids(es, f"{prefix}-events")) == sorted(e.id for e in events)


def test_live_capture_of_a_socat_relay_is_indexed(elasticsearch_server, tmp_path, prefix, procs):
    """Real BPF capture of a real socat relay, shipped through the sink and queried back."""
    from monitor.capture import Capture, CaptureConfig
    from monitor.events import Action
    from tests.lab import connect, start_echo

    es = elasticsearch_server.client()
    backend, port = free_port(), free_port()
    start_echo(procs, backend)
    with Capture(CaptureConfig()) as capture:
        relay = procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1", f"TCP:127.0.0.1:{backend}", port=port)
        clients = {connect(port, source=f"127.0.0.{n}") for n in range(2, 7)}
        records, pids = [], {relay.pid}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for rec in capture.poll(50):
                proc = getattr(rec, "process", None)
                if proc is not None and (proc.pid in pids or proc.ppid in pids):
                    pids.add(proc.pid)
                    records.append(rec)
            actions = [getattr(r, "action", None) for r in records]
            if actions.count(Action.ACCEPTED) >= 5 and actions.count(Action.ATTEMPTED) >= 5:
                break
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path, prefix), HOST)
    for record in records:
        sink.write(record)
    assert sink.flush(30)
    sink.close()

    events = f"{prefix}-events"
    es.indices.refresh(index=events)
    accepted = es.search(index=events, body={"size": 50, "query": {"bool": {"filter": [
        {"term": {"event.action": "connection_accepted"}}, {"term": {"source.ip": "127.0.0.0/8"}}]}}})
    got = {(h["_source"]["source"]["ip"], h["_source"]["source"]["port"]) for h in accepted["hits"]["hits"]}
    assert got == clients
    for hit in accepted["hits"]["hits"] + egress_hits(es, events, backend):
        doc = hit["_source"]
        flow = (doc["source"]["ip"], doc["source"]["port"], doc["destination"]["ip"], doc["destination"]["port"])
        assert doc["network"]["community_id"] == _spec_community_id(*flow), flow
        assert doc["event"]["ingested"] >= doc["event"]["created"] >= doc["@timestamp"][:19]
    sessions = {h["_source"]["socat"]["session"]["id"] for h in accepted["hits"]["hits"]}
    assert {h["_source"]["socat"]["session"]["id"] for h in egress_hits(es, events, backend)} == sessions


def egress_hits(es, index: str, backend: int) -> list[dict]:
    return es.search(index=index, body={"size": 50, "query": {"bool": {"filter": [
        {"term": {"event.action": "connection_attempted"}}, {"term": {"destination.port": backend}}]}}})["hits"]["hits"]


def _spec_community_id(saddr: str, sport: int, daddr: str, dport: int, proto: int = 6) -> str:
    """Community ID v1 written from the spec, independently of monitor.ecs: SHA-1 over seed (2 bytes),
    the lower endpoint's address, the other address, proto, a zero pad byte, then the two ports."""
    family = socket.AF_INET6 if ":" in saddr else socket.AF_INET
    a, b = (socket.inet_pton(family, saddr), sport), (socket.inet_pton(family, daddr), dport)
    lo, hi = (a, b) if a[0] < b[0] or (a[0] == b[0] and a[1] < b[1]) else (b, a)
    data = (b"\x00\x00" + lo[0] + hi[0] + bytes([proto, 0]) + lo[1].to_bytes(2, "big") + hi[1].to_bytes(2, "big"))
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def test_corrupt_spool_line_is_dead_lettered_and_the_rest_delivered(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    config = _config(elasticsearch_server.url, tmp_path, prefix)
    first = ElasticsearchSink(_config("http://127.0.0.1:1", tmp_path, prefix, close_timeout_s=0.5), HOST)
    events = [S.connection(i) for i in range(3)]
    first.write(events[0])
    first.close()
    segment = sorted((tmp_path / "spool").glob("segment-*.spool"))[0]
    with open(segment, "ab") as fh:
        fh.write(b"garbage without a tab\n")
    sink = ElasticsearchSink(config, HOST)
    for event in events[1:]:
        sink.write(event)
    assert sink.flush(30)
    sink.close()
    assert sink.stats.dead_lettered == 1 and sink.stats.written == 3
    (dead,) = [orjson.loads(x) for x in (tmp_path / "spool" / "dead-letter.ndjson").read_bytes().splitlines()]
    assert dead["reason"] == "corrupt spool line" and dead["document"] == "garbage without a tab"
    assert sorted(_ids(es, f"{prefix}-events")) == sorted(e.id for e in events)


def _behind(es, alias: str) -> dict[str, bool]:
    """Index -> is it the write index, for every index behind the alias."""
    found = es.indices.get_alias(name=alias)
    return {index: bool(body["aliases"][alias].get("is_write_index")) for index, body in found.items()}


def test_alias_rolls_over_while_events_flow_and_nothing_is_lost_or_doubled(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    config = _config(elasticsearch_server.url, tmp_path, prefix, batch_size=50,
                     rollover={"max_docs": 150, "check_interval": "200ms"})
    sink = ElasticsearchSink(config, HOST)
    ids = []
    deadline = time.monotonic() + 60
    while len(_behind(es, f"{prefix}-events") if sink.ready else ()) < 4 and time.monotonic() < deadline:
        for _ in range(50):
            event = S.connection(len(ids))
            ids.append(event.id)
            sink.write(event)
        time.sleep(0.1)
    assert sink.flush(30), sink.stats
    sink.close()
    behind = _behind(es, f"{prefix}-events")
    assert len(behind) >= 4, f"no rollover after {len(ids)} events: {behind}"
    assert sum(behind.values()) == 1 and behind[max(behind)] is True
    got = _ids(es, f"{prefix}-events")
    assert len(got) == len(set(got)) == len(ids) and set(got) == set(ids)
    for index, is_write in behind.items():
        assert is_write or es.count(index=index)["count"] > 0, f"{index} was rolled over empty"
    sample = es.search(index=f"{prefix}-events", body={"size": 1})["hits"]["hits"][0]["_source"]
    assert sample["event"]["ingested"]


def test_indices_past_the_retention_are_deleted(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    alias = f"{prefix}-events"
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path / "a", prefix), HOST)
    sink.write(S.connection(0))
    assert sink.flush(30)
    sink.close()
    for _ in range(2):
        es.indices.rollover(alias=alias)
    before = sorted(_behind(es, alias))
    assert len(before) == 3
    time.sleep(2.5)
    es.indices.rollover(alias=alias)     # the newest full index stopped receiving writes just now
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path / "b", prefix, retention_s=2.0,
                                     rollover={"max_docs": 1_000_000, "check_interval": "200ms"}), HOST)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and set(before[:2]) & set(_behind(es, alias)):
        time.sleep(0.2)
    sink.close()
    left = sorted(_behind(es, alias))
    assert left == [before[2], f"{alias}-000004"], left


def test_replay_after_a_rollover_doubles_nothing(elasticsearch_server, tmp_path, prefix):
    """Killed mid-shipping, the alias rolled over before the restart: the replayed batches would
    `create` into the new write index, where no 409 stops a duplicate; the sink checks first."""
    es = elasticsearch_server.client()
    alias = f"{prefix}-events"

    def some_delivered() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if es.indices.exists_alias(name=alias):
                es.indices.refresh(index=alias)
                if es.count(index=alias)["count"] >= 1000:
                    return
            time.sleep(0.05)

    _kill_writer_then_resume(elasticsearch_server, tmp_path / "spool", prefix, until_killed=some_delivered,
                             while_killed=lambda: es.indices.rollover(alias=alias))
    assert len(_behind(es, alias)) == 2
    got = _ids(es, alias)
    assert len(got) == len(set(got)) == 21000


def test_real_agent_ships_flows_with_the_spec_community_id_and_alerts_to_a_webhook(elasticsearch_server, tmp_path,
                                                                                     prefix, procs):
    """`socat-monitor run` with a real socat relay on loopback: its connections reach Elasticsearch
    with the Community ID the spec gives their 4-tuple, and its policy alert reaches both the alerts
    alias and a webhook receiver (http.server on 127.0.0.1), once."""
    from tests.lab import AgentProcess, connect, start_echo, wait_for
    from tests.test_webhook import Receiver, _serve

    es = elasticsearch_server.client()
    port, backend = free_port(), free_port()
    Receiver.store, Receiver.requests, Receiver.plan = {}, [], []
    hook = _serve()
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nlisteners:\n  - name: es-relay\n    port: {port}\n"
                      "    allow_sources: [127.0.0.1/32]\n    action: alert\n"
                      "defaults:\n  unknown_listener: ignore\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"elasticsearch:\n  urls: [{elasticsearch_server.url}]\n  events_index: {prefix}-events\n"
                      f"  alerts_index: {prefix}-alerts\n  template_name: {prefix}\n  batch_interval: 200ms\n"
                      f"webhook:\n  url: http://127.0.0.1:{hook.server_address[1]}/alerts\n")
    agent = AgentProcess(tmp_path, "--config", str(config), "--policy", str(policy), "--no-enforce",
                         "--duration", "120")
    try:
        agent.wait_ready()
        start_echo(procs, backend)
        procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr,range=127.0.0.0/8,max-children=20",
                    f"TCP:127.0.0.1:{backend}", port=port)
        clients = {connect(port, source="127.0.0.1"), connect(port, source="127.0.0.9")}
        wait_for(lambda: Receiver.store, timeout=20)
    finally:
        agent.stop()
        hook.shutdown()
        hook.server_close()
    es.indices.refresh(index=f"{prefix}-*")
    accepted = es.search(index=f"{prefix}-events", body={"size": 50, "query": {"bool": {"filter": [
        {"term": {"event.action": "connection_accepted"}}, {"term": {"destination.port": port}}]}}})["hits"]["hits"]
    assert {(h["_source"]["source"]["ip"], h["_source"]["source"]["port"]) for h in accepted} == clients
    for hit in accepted:
        doc = hit["_source"]
        flow = (doc["source"]["ip"], doc["source"]["port"], doc["destination"]["ip"], doc["destination"]["port"])
        assert doc["network"]["community_id"] == _spec_community_id(*flow), flow
        assert doc["event"]["ingested"] and doc["agent"]["id"] and doc["host"]["os"]["kernel"]
    alerts = es.search(index=f"{prefix}-alerts", body={"query": {"term": {"source.ip": "127.0.0.9"}}})["hits"]["hits"]
    assert alerts and {a["_id"] for a in alerts} <= set(Receiver.store)
    assert len(Receiver.requests) == len(set(Receiver.requests))
    assert alerts[0]["_source"]["event"]["risk_score"] in (21, 47, 73, 99)
