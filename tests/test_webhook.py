"""The webhook sink against a real HTTP server on 127.0.0.1 (http.server in the test):
alerts and blocks arrive once per id however often the sender has to retry."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from monitor.config import load_config
from monitor.ecs import HostInfo
from monitor.errors import InputError
from monitor.events import Action, BlockEvent, PipelineError
from monitor.sinks import WebhookConfig, WebhookSink
from tests import sample_records as S
from tests.lab import free_port

HOST = HostInfo(name="hook-host", id="6" * 32)


class Receiver(http.server.BaseHTTPRequestHandler):
    """Keeps each alert once by its Idempotency-Key (409 for a repeat); `plan` scripts the next answers:
    an HTTP status, or "drop" (store it, then close without answering: a lost answer)."""

    store: dict[str, dict] = {}
    requests: list[str] = []
    plan: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers["Idempotency-Key"]
        assert key == body["event"]["id"] == self.headers["X-Socat-Monitor-Event-Id"]
        self.requests.append(key)
        step = self.plan.pop(0) if self.plan else 200
        if step == "drop":
            self.store.setdefault(key, body)
            self.close_connection = True
            self.connection.close()
            return
        if step == 200 and key in self.store:
            step = 409
        if step == 200:
            self.store[key] = body
        self.send_response(step)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(port: int = 0) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def receiver():
    Receiver.store, Receiver.requests, Receiver.plan = {}, [], []
    server = _serve()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()
    server.server_close()


def _config(url: str, tmp_path, **kw) -> WebhookConfig:
    return WebhookConfig(url=url, spool_dir=tmp_path / "spool", backoff_max_s=0.3, **kw)


def _alerts(n: int) -> list:
    return [S.alert() for _ in range(n)]


def test_alerts_and_blocks_are_posted_once_other_records_not(receiver, tmp_path):
    sink = WebhookSink(_config(receiver, tmp_path, authorization="Bearer t0k"), HOST)
    block = BlockEvent(action=Action.BLOCKED, timestamp_ns=time.time_ns(), target="198.51.100.9", ttl_s=60.0)
    records = [*_alerts(3), block, S.connection(1), S.closed(1)]
    for record in records:
        sink.write(record)
    assert sink.flush(10), sink.stats
    sink.close()
    assert set(Receiver.store) == {r.id for r in records[:4]} and len(Receiver.requests) == 4
    assert Receiver.store[block.id]["event"]["action"] == "address_blocked"
    assert sink.stats.written == 4 and sink.stats.pending == 0


def test_retries_until_answered_and_a_lost_answer_doubles_nothing(receiver, tmp_path):
    errors: list[PipelineError] = []
    Receiver.plan = [503, 429, "drop", 200]
    sink = WebhookSink(_config(receiver, tmp_path), HOST, on_error=errors.append)
    alerts = _alerts(5)
    for alert in alerts:
        sink.write(alert)
    assert sink.flush(20), sink.stats
    sink.close()
    assert set(Receiver.store) == {a.id for a in alerts}
    first = alerts[0].id
    assert Receiver.requests[:4] == [first] * 4     # 503, 429, answer lost, then 409: it had it
    stats = sink.stats
    assert stats.retried == 3 and stats.duplicates == 1 and stats.written == 4 and stats.dead_lettered == 0
    assert any("HTTP 503" in e.message for e in errors)


def test_receiver_down_then_up_and_agent_restarted_delivers_everything_once(tmp_path):
    Receiver.store, Receiver.requests, Receiver.plan = {}, [], []
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    sink = WebhookSink(_config(url, tmp_path, close_timeout_s=0.3), HOST)
    alerts = _alerts(20)
    started = time.monotonic()
    for alert in alerts:
        sink.write(alert)
    assert time.monotonic() - started < 1.0, "write() waited on the unreachable receiver"
    sink.close()
    assert sink.stats.pending == 20 and sink.stats.written == 0
    server = _serve(port)
    try:
        sink = WebhookSink(_config(url, tmp_path), HOST)
        assert sink.stats.pending == 20
        assert sink.flush(20), sink.stats
        sink.close()
    finally:
        server.shutdown()
        server.server_close()
    assert set(Receiver.store) == {a.id for a in alerts}
    assert sorted(Receiver.requests) == sorted(a.id for a in alerts)


def test_a_refused_alert_goes_to_the_dead_letter_file(receiver, tmp_path):
    Receiver.plan = [400]
    sink = WebhookSink(_config(receiver, tmp_path), HOST)
    refused, kept = _alerts(2)
    sink.write(refused)
    sink.write(kept)
    assert sink.flush(10)
    sink.close()
    (dead,) = [json.loads(x) for x in (tmp_path / "spool" / "dead-letter.ndjson").read_text().splitlines()]
    assert dead["status"] == 400 and dead["id"] == refused.id and dead["document"]["event"]["id"] == refused.id
    assert set(Receiver.store) == {kept.id} and sink.stats.dead_lettered == 1


def test_webhook_section_of_the_config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"state_dir: {tmp_path}\nwebhook:\n  url: https://soar.example/hook\n  request_timeout: 5s\n")
    config = load_config(path)
    assert config.webhook.url == "https://soar.example/hook" and config.webhook.request_timeout_s == 5.0
    path.write_text("webhook:\n  url: soar.example\n")
    with pytest.raises(InputError, match=r"config.yaml:2: webhook.url: .soar.example. must start with http"):
        load_config(path)
