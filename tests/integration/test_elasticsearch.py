"""The Elasticsearch sink against a real Elasticsearch 7.9.2 (scripts/elasticsearch.sh).

Every test uses its own index, alias and template names, so tests do not
see each other's documents.
"""

from __future__ import annotations

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
    es.transport.perform_request("DELETE", f"/_index_template/{name}", params={"ignore": 404})


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


def test_agent_killed_while_spooling_loses_and_doubles_nothing(elasticsearch_server, tmp_path, prefix):
    es = elasticsearch_server.client()
    spool = tmp_path / "spool"
    argv = [PYTHON, "-m", "tests.integration.es_writer", elasticsearch_server.url, str(spool), prefix]
    writer = subprocess.Popen([*argv, "0", "20000"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert writer.stdout.readline().startswith("pending-at-start 0")
        assert writer.stdout.readline().strip() == "spooled"
    finally:
        writer.kill()
        writer.wait(10)
    resumed = subprocess.run([*argv, "20000", "1000", "--finish"], cwd=ROOT, capture_output=True, text=True,
                             timeout=180, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first_line, *_ = resumed.stdout.splitlines()
    left_over = int(first_line.split()[1])
    assert left_over > 0, "the writer was killed after shipping everything: the test did not exercise replay"
    assert "flushed True" in resumed.stdout
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
    patterns = [f"{prefix}-events-*", f"{prefix}-alerts-*"]

    def installed() -> int:
        found = es.transport.perform_request("GET", f"/_index_template/{prefix}")
        return found["index_templates"][0]["index_template"]["version"]

    es.transport.perform_request("PUT", f"/_index_template/{prefix}", body=index_template(patterns, version=999))
    sink = ElasticsearchSink(_config(elasticsearch_server.url, tmp_path / "a", prefix), HOST)
    sink.write(S.connection(1))
    assert sink.flush(30)
    sink.close()
    assert installed() == 999

    es.transport.perform_request("PUT", f"/_index_template/{prefix}", body=index_template(patterns, version=0))
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
    sessions = {h["_source"]["socat"]["session"]["id"] for h in accepted["hits"]["hits"]}
    egress = es.search(index=events, body={"size": 50, "query": {"bool": {"filter": [
        {"term": {"event.action": "connection_attempted"}}, {"term": {"destination.port": backend}}]}}})
    assert {h["_source"]["socat"]["session"]["id"] for h in egress["hits"]["hits"]} == sessions


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
