"""The real `socat-monitor analyze` on generated files: formats, gzip, bad lines,
foreign files, baselines and exit codes."""

from __future__ import annotations

import gzip
import json

import orjson
import pytest

from monitor.ecs import HostInfo, iso_timestamp, render
from monitor.events import Action, Alert, ConnectionEvent, Listener, ProcessEvent, ProcessInfo, Severity
from tests.lab import socat_monitor
from tests.synth import LATE_LISTENER, S, T0, generate, minimal_doc

LEARN = ["--learning-period", "10m"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("analyze")
    stream = generate(hours=0.6, learn_s=600, sources=50, seed=11)
    plain = base / "events.ndjson"
    stream.write_ndjson(plain)
    gz = base / "events.ndjson.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(plain.read_bytes())
    minimal = base / "other-tool.ndjson"
    with open(minimal, "wb") as fh:
        for ev in stream.events():
            fh.write(orjson.dumps(minimal_doc(ev)) + b"\n")
    quiet = base / "quiet.ndjson"
    generate(hours=0.5, learn_s=600, sources=20, seed=5, incidents=False, late_listener=False).write_ndjson(quiet)
    return {"plain": plain, "gz": gz, "minimal": minimal, "quiet": quiet, "dir": base}


def alerts_of(stdout: str) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


def sig(docs: list[dict]) -> list[tuple]:
    return sorted((d["rule"]["id"], d.get("source", {}).get("ip"), d["socat"]["listener"]["port"], d["@timestamp"])
                  for d in docs)


@pytest.fixture(scope="module")
def reference(files):
    out = socat_monitor("analyze", str(files["plain"]), *LEARN, "--format", "json")
    assert out.returncode == 1, out.stderr
    docs, summary = alerts_of(out.stdout)
    return docs, summary


def test_json_output_is_ecs_alert_documents(reference):
    docs, summary = reference
    assert docs and all(d["event"]["kind"] == "alert" and d["rule"]["ruleset"] == "anomaly" for d in docs)
    assert {d["rule"]["id"] for d in docs} == {"anomaly.new_source", "anomaly.source_rate", "anomaly.listener_rate",
                                              "anomaly.scan", "anomaly.refused_burst"}
    assert summary["alerts"] == len(docs) and summary["malformed"] == 0
    assert summary["learning"]["complete"] is True
    assert {s["port"] for s in summary["listeners"]} == {8080, 8443, 5432, LATE_LISTENER}
    learning = summary["learning"]["listeners"]     # offline, every listener is watched from the first event
    assert learning[str(LATE_LISTENER)] == learning["8080"]
    rate = next(d for d in docs if d["rule"]["id"] == "anomaly.source_rate")
    assert rate["socat"]["detection"]["observed"] >= rate["socat"]["detection"]["threshold"]


def test_table_output_and_gzip_input(files, reference):
    out = socat_monitor("analyze", str(files["gz"]), *LEARN)
    assert out.returncode == 1, out.stderr
    docs, _summary = reference
    assert f"{len(docs)} alert(s) from" in out.stdout
    for header in ("RULE", "LISTENER  CONNECTIONS", "SOURCE  "):
        assert header in out.stdout
    assert out.stdout.count("anomaly.") >= len(docs)


def test_malformed_lines_are_reported_with_numbers_and_not_fatal(files, reference, tmp_path):
    lines = files["plain"].read_bytes().splitlines()
    host = HostInfo("h", "0" * 32)
    bad = {5: b"{not json", 900: b'{"@timestamp": "yesterday", "event": {"action": "connection_accepted"}}',
           1500: b'{"event": {"dataset": "socat.connection", "action": "connection_accepted"}, '
                 b'"@timestamp": "2026-01-01T00:10:00Z", "source": {"ip": "1.2.3.4", "port": 99999}, '
                 b'"destination": {"ip": "127.0.0.1", "port": 8080}}',
           2000: b"[1, 2]"}
    others = {
        100: orjson.dumps(render(Alert("policy.source_denied", "n", "d", "policy", Severity.HIGH, T0,
                                       source_ip="10.0.0.1"), host)),
        200: orjson.dumps(render(ProcessEvent(Action.PROCESS_STARTED, T0, ProcessInfo(7, "socat")), host)),
    }
    out_lines = []
    for number, line in enumerate(lines, start=1):
        if len(out_lines) + 1 in bad:
            out_lines.append(bad[len(out_lines) + 1])
        if len(out_lines) + 1 in others:
            out_lines.append(others[len(out_lines) + 1])
        out_lines.append(line)
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_bytes(b"\n".join(out_lines) + b"\n")
    out = socat_monitor("analyze", str(mixed), *LEARN, "--format", "json")
    assert out.returncode == 1, out.stderr
    docs, summary = alerts_of(out.stdout)
    assert summary["malformed"] == 4 and summary["other_documents"] == 2
    for number in bad:
        assert f"{mixed}:{number}:" in out.stderr, out.stderr
    assert "port out of range" in out.stderr and "not JSON" in out.stderr and "@timestamp" in out.stderr
    assert sig(docs) == sig(reference[0])        # no good line lost


def test_files_from_another_tool_with_minimal_fields(files, reference):
    out = socat_monitor("analyze", str(files["minimal"]), *LEARN, "--format", "json")
    assert out.returncode == 1, out.stderr
    docs, summary = alerts_of(out.stdout)
    assert summary["connection_events"] == reference[1]["connection_events"]
    # without event.duration the short-session half of the scan rule has nothing to count, without
    # socat.refused only connection_denied marks refusals; every other alert is the same
    assert [s for s in sig(docs) if s[0] != "anomaly.scan"] == [s for s in sig(reference[0]) if s[0] != "anomaly.scan"]
    assert any(d["rule"]["id"] == "anomaly.scan" for d in docs)


def test_no_alerts_exits_zero(files):
    out = socat_monitor("analyze", str(files["quiet"]), *LEARN, "--format", "json")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    docs, summary = alerts_of(out.stdout)
    assert docs == [] and summary["connection_events"] > 1000


def test_still_learning_raises_only_what_needs_no_baseline(files):
    out = socat_monitor("analyze", str(files["plain"]), "--learning-period", "1h")
    assert "still learning" in out.stdout, out.stderr
    out = socat_monitor("analyze", str(files["plain"]), "--learning-period", "1h", "--format", "json")
    docs, summary = alerts_of(out.stdout)
    assert summary["learning"]["complete"] is False
    assert not [d for d in docs if d["rule"]["id"] == "anomaly.new_source"]
    assert all(d["socat"]["detection"]["threshold"] == 30 for d in docs if d["rule"]["id"] == "anomaly.source_rate")


def test_saved_baseline_is_used_by_the_next_run(files, tmp_path):
    saved = tmp_path / "baseline.json"
    out = socat_monitor("analyze", str(files["quiet"]), *LEARN, "--save-baseline", str(saved),
                        "--output", str(tmp_path / "first.txt"))
    assert out.returncode == 0, out.stderr
    assert json.loads(saved.read_text())["learning"]["complete"] is True
    again = socat_monitor("analyze", str(files["quiet"]), "--baseline", str(saved), "--format", "json")
    assert again.returncode == 0, again.stderr
    _docs, summary = alerts_of(again.stdout)
    assert summary["learning"]["complete"] is True


def test_input_errors_exit_two(files, tmp_path):
    missing = socat_monitor("analyze", str(tmp_path / "nope.ndjson"))
    assert missing.returncode == 2 and "nope.ndjson: no such file" in missing.stderr
    period = socat_monitor("analyze", str(files["quiet"]), "--learning-period", "soon")
    assert period.returncode == 2 and "--learning-period" in period.stderr
    corrupt = tmp_path / "b.json"
    corrupt.write_text("{")
    base = socat_monitor("analyze", str(files["quiet"]), "--baseline", str(corrupt))
    assert base.returncode == 2 and str(corrupt) in base.stderr
    setting = socat_monitor("analyze", str(files["quiet"]), "--set", "cooldown_s=fast")
    assert setting.returncode == 2 and "cooldown_s" in setting.stderr
    assert len(base.stderr.strip().splitlines()) == 1


def test_policy_checks_run_with_the_detectors(files, reference, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "defaults:\n"
        "  unknown_listener: ignore\n"
        "listeners:\n"
        "  - name: web\n"
        "    port: 8080\n"
        "    allow_sources: [10.1.0.0/16]\n"
    )
    out = socat_monitor("analyze", str(files["plain"]), *LEARN, "--policy", str(policy), "--format", "json")
    assert out.returncode == 1, out.stderr
    docs, summary = alerts_of(out.stdout)
    assert summary["policy_checked"] is True
    denied = [d for d in docs if d["rule"]["ruleset"] == "policy"]
    assert denied, "sources outside 10.1.0.0/16 reached port 8080 in the stream"
    assert all(d["socat"]["listener"]["port"] == 8080 and not d["source"]["ip"].startswith("10.1.") for d in denied)
    assert sig([d for d in docs if d["rule"]["ruleset"] == "anomaly"]) == sig(reference[0])
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nlisteners:\n  - name: x\n    port: not-a-port\n")
    broken = socat_monitor("analyze", str(files["plain"]), "--policy", str(bad))
    assert broken.returncode == 2 and str(bad) in broken.stderr


def test_rotated_files_in_any_order_replay_oldest_first(files, reference, tmp_path):
    lines = files["plain"].read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    older, newer = tmp_path / "b-older.ndjson.gz", tmp_path / "a-newer.ndjson"
    with gzip.open(older, "wb") as fh:
        fh.writelines(lines[:half])
    newer.write_bytes(b"".join(lines[half:]))
    out = socat_monitor("analyze", str(newer), str(older), *LEARN, "--format", "json")
    assert out.returncode == 1, out.stderr
    docs, summary = alerts_of(out.stdout)
    assert summary["files"] == [str(older), str(newer)] and summary["late_events"] == 0
    assert sig(docs) == sig(reference[0])


# -- declared rates over files with reused source ports ---------------------------------------------

RATE_POLICY = "version: 1\nlisteners:\n  - {name: relay, port: 8443, max_rate_per_source: 120/minute}\n"


def _burst(start_ns: int, count: int = 2400, per_s: int = 8, ip: str = "192.0.2.50") -> list[ConnectionEvent]:
    """A client opening `count` connections at `per_s`/s from source ports 30000 up (accepts only)."""
    return [ConnectionEvent(Action.ACCEPTED, start_ns + k * S // per_s, ip, 30000 + k, "127.0.0.1", 8443,
                            listener=Listener("127.0.0.1", 8443)) for k in range(count)]


def _rate_alerts(tmp_path, events, fmt: str) -> tuple[list[dict], dict]:
    host = HostInfo("h", "0" * 32)
    path = tmp_path / f"{fmt}.ndjson"
    render_doc = minimal_doc if fmt == "minimal" else (lambda ev: render(ev, host))
    path.write_bytes(b"".join(orjson.dumps(render_doc(ev)) + b"\n" for ev in events))
    policy = tmp_path / "policy.yaml"
    policy.write_text(RATE_POLICY)
    out = socat_monitor("analyze", str(path), "--policy", str(policy), "--format", "json")
    assert out.returncode == 1, out.stderr
    docs, summary = alerts_of(out.stdout)
    assert summary["policy"]["repeated_records"] == 0
    return [d for d in docs if d["rule"]["id"] == "policy.rate_exceeded"], summary["policy"]


@pytest.mark.parametrize("fmt", ["minimal", "agent"])
@pytest.mark.parametrize("second_at", [30 * 60, 4 * 3600], ids=["same-hour", "hours-later"])
def test_a_second_burst_from_reused_source_ports_is_flagged_as_the_first(tmp_path, fmt, second_at):
    """Issue 21: 2,400 connections at 8/s at 00:05, then again with the same source ports (files
    without close events, as other tools write them): both bursts exceed 120/minute alike."""
    first, second = T0 + 5 * 60 * S, T0 + second_at * S
    alerts, counts = _rate_alerts(tmp_path, _burst(first) + _burst(second), fmt)
    in_first = [a for a in alerts if a["@timestamp"] < iso_timestamp(second)]
    in_second = [a for a in alerts if a["@timestamp"] >= iso_timestamp(second)]
    assert len(in_first) == 5 and len(in_second) == 5    # one per 60 s dedup window over each 300 s burst
    assert [a["socat"]["detection"]["observed"] for a in in_second] == [121.0] * 5
    assert in_second[0]["@timestamp"] == iso_timestamp(second + 120 * S // 8)   # the 121st connection
    later = second_at > 3600 + 10 * 60        # the first burst's connections idle for over an hour: forgotten
    assert counts["open_forgotten"] == {"idle": 2400 if later else 0, "reused": 0 if later else 2400, "full": 0}


def test_every_line_of_a_file_without_event_ids_counts(tmp_path):
    """Whole-second times, eight accepts a second: the eight share their `line-<time>` id, yet each counts."""
    events = _burst(T0, count=200)
    for ev in events:
        ev.timestamp_ns -= ev.timestamp_ns % S
    [first, *_], _counts = _rate_alerts(tmp_path, events, "minimal")
    assert first["socat"]["detection"]["observed"] == 121.0 and first["@timestamp"] == iso_timestamp(T0 + 15 * S)


def test_table_reports_forgotten_open_connections_and_the_idle_flag(tmp_path):
    events = _burst(T0, count=10)
    for ev in events[5:]:
        ev.source_port = 30000                  # five more from the first one's port: it is reused five times
    events += _burst(T0 + 600 * S, count=1, ip="192.0.2.60")
    path = tmp_path / "reuse.ndjson"
    path.write_bytes(b"".join(orjson.dumps(minimal_doc(ev)) + b"\n" for ev in events))
    policy = tmp_path / "policy.yaml"
    policy.write_text(RATE_POLICY)
    out = socat_monitor("analyze", str(path), "--policy", str(policy), "--open-idle-timeout", "5m")
    assert out.returncode == 0, out.stderr
    assert ("policy: 10 open connection(s) forgotten without their close (5 idle, 5 whose 4-tuple was reused, "
            "0 over the table's size)") in out.stdout
    bad = socat_monitor("analyze", str(path), "--policy", str(policy), "--open-idle-timeout", "soon")
    assert bad.returncode == 2 and "--open-idle-timeout: not a duration" in bad.stderr


def test_config_gives_the_agents_decisions(files, reference, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("detect:\n  learning_period: 10m\n"
                      "decide:\n  rules:\n    anomaly.scan: {action: block, ttl: 1h}\n"
                      "    anomaly.new_source: {action: block}\n"
                      "enforce:\n  default_ttl: 2m\n")
    out = socat_monitor("analyze", str(files["plain"]), "--config", str(config), "--format", "json")
    assert out.returncode == 1, out.stderr
    docs, _ = alerts_of(out.stdout)
    assert sig(docs) == sig(reference[0])                     # the same alerts; only the decisions differ
    blocks = {d["rule"]["id"]: d["socat"]["block"] for d in docs if "block" in d["socat"]}
    assert set(blocks) == {"anomaly.scan", "anomaly.new_source"}
    assert blocks["anomaly.scan"]["ttl_s"] == 3600 and blocks["anomaly.new_source"]["target"].endswith("/24")
    assert not any("block" in d["socat"] for d in reference[0])
    bad = tmp_path / "bad.yaml"
    bad.write_text("decide:\n  rules:\n    anomaly.listener_rate: {action: block}\n")
    refused = socat_monitor("analyze", str(files["plain"]), "--config", str(bad))
    assert refused.returncode == 2 and f"{bad}:2" in refused.stderr and "cannot block" in refused.stderr
