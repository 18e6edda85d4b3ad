"""The Kibana dashboards: the committed NDJSON is what the generator makes,
parses as Kibana's saved-objects format, every reference resolves, every
field used is in the index template; and `dashboards import` sends what
Kibana's import API expects (to a small HTTP server on 127.0.0.1 standing
in for Kibana, which cannot be installed here)."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import fnmatch
import http.server
import json
import re
import ssl
import subprocess
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from monitor import dashboards
from monitor.sinks import ElasticsearchConfig
from monitor.sinks.template import FIELDS
from tests.lab import ROOT, free_port, socat_monitor

COMMITTED = ROOT / "dashboards" / "socat-monitor.ndjson"
JSON_STRINGS = ("visState", "uiStateJSON", "panelsJSON", "optionsJSON", "fields", "fieldFormatMap")


def _objects() -> list[dict]:
    return [json.loads(line) for line in COMMITTED.read_text().splitlines()]


def test_committed_ndjson_is_what_the_generator_makes():
    assert COMMITTED.read_text() == dashboards.export_ndjson(), \
        "dashboards/socat-monitor.ndjson is stale: run socat-monitor dashboards export -o dashboards/socat-monitor.ndjson"


def test_every_object_has_the_saved_object_shape():
    objects = _objects()
    assert len({(o["type"], o["id"]) for o in objects}) == len(objects)
    assert {o["type"] for o in objects} == {"index-pattern", "visualization", "search", "dashboard"}
    for obj in objects:
        assert set(obj) == {"id", "type", "attributes", "references", "migrationVersion"}, obj["id"]
        assert obj["attributes"]["title"]
        for key in JSON_STRINGS:
            if key in obj["attributes"]:
                json.loads(obj["attributes"][key])
        meta = obj["attributes"].get("kibanaSavedObjectMeta")
        if meta:
            json.loads(meta["searchSourceJSON"])


def test_every_reference_resolves():
    objects = _objects()
    known = {(o["type"], o["id"]) for o in objects}
    for obj in objects:
        names = [ref["name"] for ref in obj["references"]]
        assert len(names) == len(set(names)), obj["id"]
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in known, f"{obj['id']}: dangling reference {ref}"
        attrs = obj["attributes"]
        if "kibanaSavedObjectMeta" in attrs and obj["type"] != "dashboard":
            source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
            assert source["indexRefName"] in names
        if obj["type"] == "dashboard":
            panels = json.loads(attrs["panelsJSON"])
            assert panels and {p["panelRefName"] for p in panels} == set(names)
            for panel in panels:
                grid = panel["gridData"]
                assert grid["x"] + grid["w"] <= 48 and grid["i"] == panel["panelIndex"]


def _query_fields(query: str) -> set[str]:
    return set(re.findall(r"([A-Za-z@][\w.@]*)\s*:", query))


def test_every_field_used_is_in_the_index_template():
    used: set[str] = set()
    aggregated: set[str] = set()
    for obj in _objects():
        attrs = obj["attributes"]
        if "kibanaSavedObjectMeta" in attrs:
            source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
            used |= _query_fields(source["query"]["query"])
        if obj["type"] == "visualization":
            for agg in json.loads(attrs["visState"])["aggs"]:
                if "field" in agg["params"]:
                    aggregated.add(agg["params"]["field"])
        if obj["type"] == "search":
            used |= set(attrs["columns"]) | {field for field, _ in attrs["sort"]}
    assert aggregated and used
    missing = (used | aggregated) - set(FIELDS)
    assert not missing, f"fields used by dashboards but not in the index template: {sorted(missing)}"
    not_aggregatable = {f for f in aggregated if FIELDS[f] == "text"}
    assert not not_aggregatable


def test_index_pattern_covers_the_default_aliases_and_lists_template_fields():
    pattern = next(o for o in _objects() if o["type"] == "index-pattern")
    title = pattern["attributes"]["title"]
    config = ElasticsearchConfig()
    for alias in (config.events_index, config.alerts_index):
        assert fnmatch.fnmatch(config.first_index(alias), title)
    fields = {f["name"]: f for f in json.loads(pattern["attributes"]["fields"])}
    multi = {f"{name}.text" for name, kind in FIELDS.items() if kind == "wildcard"}
    assert set(fields) == set(FIELDS) | multi
    assert fields["source.ip"]["type"] == "ip" and fields["@timestamp"]["type"] == "date"
    assert {"socat.metrics.kernel_lost_events_total", "socat.metrics.events_total.connection_accepted",
            "event.ingested", "host.os.kernel", "agent.id"} <= set(fields)


class _FakeKibana(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
        parts = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                 for part in message.iter_parts()}
        self.received.append({"path": urlsplit(self.path).path, "query": parse_qs(urlsplit(self.path).query),
                              "xsrf": self.headers.get("kbn-xsrf"), "auth": self.headers.get("Authorization"),
                              "multipart": message.get_content_type(), "parts": parts})
        lines = parts.get("file", b"").decode().splitlines()
        count = "success_count" if "detection_engine" in self.path else "successCount"
        answer = {"success": True, count: len(lines)} if self.status == 200 else \
            {"statusCode": self.status, "error": "Bad Request", "message": "bad file"}
        data = json.dumps(answer).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serve(tls: ssl.SSLContext | None = None):
    _FakeKibana.received = []
    _FakeKibana.status = 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeKibana)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def kibana():
    with _serve() as served:
        yield served


@pytest.fixture
def tls_kibana(tmp_path):
    """The stand-in Kibana over https, with a self-signed certificate for 127.0.0.1 (its own CA)."""
    cert, key = tmp_path / "kibana.crt", tmp_path / "kibana.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with _serve(context) as (server, url):
        yield url, cert


def test_import_posts_the_objects_as_kibana_expects(kibana):
    _, url = kibana
    done = socat_monitor("dashboards", "import", "--kibana", url, "--space", "soc", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"success": True, "successCount": len(_objects())}
    (req,) = _FakeKibana.received
    assert req["path"] == "/s/soc/api/saved_objects/_import"
    assert req["query"] == {"overwrite": ["true"]}
    assert req["xsrf"] == "true" and req["multipart"] == "multipart/form-data"
    assert set(req["parts"]) == {"file"}
    assert req["parts"]["file"].decode() == COMMITTED.read_text()


def test_import_to_default_space_with_api_key(kibana):
    _, url = kibana
    done = socat_monitor("dashboards", "import", "--kibana", url + "/", "--api-key", "abc==")
    assert done.returncode == 0, done.stderr
    assert "imported 12 saved objects" in done.stdout
    (req,) = _FakeKibana.received
    assert req["path"] == "/api/saved_objects/_import" and req["auth"] == "ApiKey abc=="


def test_import_refused_or_unreachable_is_one_line_exit_3(kibana):
    _, url = kibana
    _FakeKibana.status = 400
    done = socat_monitor("dashboards", "import", "--kibana", url)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "HTTP 400" in done.stderr
    done = socat_monitor("dashboards", "import", "--kibana", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "cannot reach Kibana" in done.stderr


def test_export_writes_the_same_objects(tmp_path):
    out = tmp_path / "d.ndjson"
    done = socat_monitor("dashboards", "export", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text() == COMMITTED.read_text()
    assert socat_monitor("dashboards", "export").stdout == COMMITTED.read_text()


def test_import_over_https_verifies_with_the_ca_file_or_not_at_all(tls_kibana):
    url, cert = tls_kibana
    unverified = socat_monitor("dashboards", "import", "--kibana", url)
    assert unverified.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
    for flags in (["--ca-file", str(cert)], ["--insecure"]):
        done = socat_monitor("dashboards", "import", "--kibana", url, *flags, "--username", "soc",
                             "--password", "pw")
        assert done.returncode == 0, done.stderr
    assert [r["auth"] for r in _FakeKibana.received] == ["Basic c29jOnB3"] * 2
    both = socat_monitor("dashboards", "import", "--kibana", url, "--insecure", "--ca-file", str(cert))
    assert both.returncode == 2 and "not both" in both.stderr


def test_rules_import_posts_to_the_detection_engine(tls_kibana):
    url, cert = tls_kibana
    done = socat_monitor("dashboards", "rules", "import", "--kibana", url, "--ca-file", str(cert),
                         "--space", "soc", "--api-key", "k==")
    assert done.returncode == 0, done.stderr
    assert "imported 2 detection rules" in done.stdout
    (req,) = _FakeKibana.received
    assert req["path"] == "/s/soc/api/detection_engine/rules/_import" and req["query"] == {"overwrite": ["true"]}
    assert req["auth"] == "ApiKey k==" and req["xsrf"] == "true"
    assert req["parts"]["file"].decode() == (ROOT / "dashboards" / "socat-monitor-rules.ndjson").read_text()
