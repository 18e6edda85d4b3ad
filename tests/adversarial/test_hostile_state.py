"""Damaged state on disk: the agent repairs or sets it aside, counts it, and keeps shipping."""

from __future__ import annotations

import dataclasses
import http.client
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from monitor.ecs import HostInfo
from monitor.sinks import ElasticsearchConfig, ElasticsearchSink
from tests import sample_records as S

HOST = HostInfo(name="adv-host", id="2" * 32)


@pytest.mark.parametrize("ack", ["1 -7", "not numbers", "99999 0", "1 3"])
def test_corrupt_spool_ack_is_set_aside_and_shipping_resumes(elasticsearch_server, tmp_path, ack):
    prefix = f"adv-{uuid.uuid4().hex[:8]}"
    config = ElasticsearchConfig(urls=["http://127.0.0.1:9"], spool_dir=tmp_path / "spool",
                                 events_index=f"{prefix}-events", alerts_index=f"{prefix}-alerts",
                                 template_name=prefix, close_timeout_s=1.0)
    down = ElasticsearchSink(config, HOST)   # nobody listens on :9: everything stays spooled
    records = [S.connection(i) for i in range(20)]
    for record in records:
        down.write(record)
    down.close()
    (tmp_path / "spool" / "acked").write_text(ack)

    errors = []
    config.urls = [elasticsearch_server.url]
    up = ElasticsearchSink(config, HOST, on_error=errors.append)
    try:
        assert up.flush(30), up.stats
        es = elasticsearch_server.client()
        es.indices.refresh(index=f"{prefix}-events")
        assert es.count(index=f"{prefix}-events")["count"] == len(records)
        assert any("ack file was corrupt" in e.message for e in errors)
        assert (tmp_path / "spool" / "acked.corrupt").read_text() == ack
    finally:
        up.close()
        es = elasticsearch_server.client()
        es.indices.delete(index=f"{prefix}-*", ignore=[404])
        es.transport.perform_request("DELETE", f"/_index_template/{prefix}", params={"ignore": 404})


class SizeLimitedProxy:
    """A reverse proxy in front of the real Elasticsearch that refuses bodies over `limit` bytes with
    413, as nginx's client_max_body_size does: what a SOC's ingest path often has."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if len(body) > limit:
                    proxy.refused += 1
                    self.send_response(413)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self.refused = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_document_too_big_for_the_ingest_path_is_dead_lettered_alone(elasticsearch_server, tmp_path):
    """A proxy refuses requests over 64 KiB (413). One 100 KB alert among 300 events: the batch is
    split until the big alert stands alone; it goes to the dead-letter file, and every event arrives."""
    prefix = f"adv-{uuid.uuid4().hex[:8]}"
    proxy = SizeLimitedProxy(elasticsearch_server.port, 64 * 1024)
    config = ElasticsearchConfig(urls=[proxy.url], spool_dir=tmp_path / "spool", events_index=f"{prefix}-events",
                                 alerts_index=f"{prefix}-alerts", template_name=prefix, close_timeout_s=5.0)
    sink = ElasticsearchSink(config, HOST)
    records = [S.connection(i) for i in range(300)]
    huge = dataclasses.replace(S.alert(), description="x" * 100_000)
    for record in records[:150] + [huge] + records[150:]:
        sink.write(record)
    try:
        assert sink.flush(60), sink.stats
        es = elasticsearch_server.client()
        es.indices.refresh(index=f"{prefix}-*")
        assert es.count(index=f"{prefix}-events")["count"] == 300
        assert sink.stats.dead_lettered == 1 and proxy.refused >= 2
        dead = [orjson.loads(line) for line in config.dead_letter_path.read_bytes().splitlines()]
        assert [d["status"] for d in dead] == [413] and "request refused whole" in dead[0]["reason"]
    finally:
        sink.close()
        proxy.close()
        es = elasticsearch_server.client()
        es.indices.delete(index=f"{prefix}-*", ignore=[404])
        es.transport.perform_request("DELETE", f"/_index_template/{prefix}", params={"ignore": 404})
