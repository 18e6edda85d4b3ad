"""The whole agent, as a user runs it: `socat-monitor run` against real socat
relays on loopback, checked through the files it writes, its control socket
and its metrics endpoint."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.lab import AgentProcess, Namespaces, connect, free_port, require, socat_monitor, start_echo, wait_for


def _policy(path: Path, port: int, allow: str, action: str = "alert", netns: str | None = None) -> Path:
    path.write_text(
        "version: 1\n"
        "listeners:\n"
        "  - name: test-relay\n"
        f"    port: {port}\n"
        + (f"    netns: {netns}\n" if netns else "") +
        f"    allow_sources: [{allow}]\n"
        f"    action: {action}\n"
        "defaults:\n"
        "  unknown_listener: ignore\n"
    )
    return path


def _alerts(docs: list[dict], rule: str) -> list[dict]:
    return [d for d in docs if d["event"]["kind"] == "alert" and d["rule"]["id"] == rule]


def _accepts(docs: list[dict], port: int) -> list[dict]:
    return [d for d in docs if d["event"].get("action") == "connection_accepted"
            and d["destination"]["port"] == port]


def _relay(procs, tmp_path):
    port, backend = free_port(), free_port()
    start_echo(procs, backend)
    procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr,backlog=64,range=127.0.0.0/8,max-children=50",
                f"TCP:127.0.0.1:{backend}", port=port)
    return port


def test_denied_source_raises_policy_alert_within_one_second(tmp_path, procs):
    port = free_port()
    policy = _policy(tmp_path / "policy.yaml", port, "127.0.0.1/32")
    agent = AgentProcess(tmp_path, "--policy", str(policy), "--no-enforce", "--duration", "60")
    try:
        agent.wait_ready()
        backend = free_port()
        start_echo(procs, backend)
        procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr,range=127.0.0.0/8,max-children=50",
                    f"TCP:127.0.0.1:{backend}", port=port)
        connect(port, source="127.0.0.1")
        started = time.monotonic()
        _, client_port = connect(port, source="127.0.0.9")
        alert = wait_for(lambda: [a for a in _alerts(agent.documents(), "policy.source_denied")
                                  if a["source"]["ip"] == "127.0.0.9"], timeout=5)[0]
        seen_after = time.monotonic() - started
    finally:
        code, _ = agent.stop()
    docs = agent.documents()
    accept = [d for d in _accepts(docs, port) if d["source"]["port"] == client_port][0]
    assert seen_after < 1.5, f"alert reached the file {seen_after:.2f}s after the connection"
    lag_ms = (_ns(alert["@timestamp"]) - _ns(accept["@timestamp"])) / 1e6
    assert 0 <= lag_ms < 1000, lag_ms
    assert accept["event"]["id"] in alert["socat"]["trigger_event_ids"]
    assert alert["socat"]["listener"]["name"] == "test-relay"
    assert not [a for a in _alerts(docs, "policy.source_denied") if a["source"]["ip"] == "127.0.0.1"]
    assert code == 1  # alerts were raised


def _ns(stamp: str) -> int:
    from monitor.ecs import parse_timestamp

    return parse_timestamp(stamp)


def test_reload_good_and_bad_policy_under_traffic(tmp_path, procs):
    port = free_port()
    policy = _policy(tmp_path / "policy.yaml", port, "127.0.0.1/32")
    config = tmp_path / "config.yaml"
    config.write_text(f"policy: {policy}\nmetrics: null\n")
    agent = AgentProcess(tmp_path, "--config", str(config), "--no-enforce", "--duration", "60")
    made: list[int] = []
    try:
        agent.wait_ready()
        backend = free_port()
        start_echo(procs, backend)
        procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr,max-children=50", f"TCP:127.0.0.1:{backend}", port=port)
        made += [connect(port, source="127.0.0.5")[1] for _ in range(20)]
        wait_for(lambda: _alerts(agent.documents(), "policy.source_denied"))

        policy.write_text("version: 1\nlisteners:\n  - name: test-relay\n    port: not-a-port\n")
        bad = socat_monitor("reload", "--socket", str(agent.socket))
        made += [connect(port, source="127.0.0.5")[1] for _ in range(20)]
        assert bad.returncode == 1, bad.stderr
        assert "policy.yaml:4" in bad.stderr and "port" in bad.stderr

        _policy(policy, port, "127.0.0.0/24")
        good = socat_monitor("reload", "--socket", str(agent.socket))
        assert good.returncode == 0, good.stderr
        reloaded_at = len(made)
        made += [connect(port, source="127.0.0.5")[1] for _ in range(20)]
        agent.proc.send_signal(signal.SIGHUP)  # the signal path reloads too
        made += [connect(port, source="127.0.0.5")[1] for _ in range(20)]
        time.sleep(1.0)
    finally:
        agent.stop()
    docs = agent.documents()
    seen = {d["source"]["port"] for d in _accepts(docs, port)}
    assert set(made) <= seen, f"{len(set(made) - seen)} connections missing across reloads"
    denied_ports = {_trigger_port(docs, a) for a in _alerts(docs, "policy.source_denied")}
    assert not denied_ports & set(made[reloaded_at:]), "the good policy did not take effect"
    assert "reload rejected" in agent.text_log()


def _denied(agent: AgentProcess, source: str) -> list[dict]:
    return [a for a in _alerts(agent.documents(), "policy.source_denied") if a["source"]["ip"] == source]


def _last_reload(agent: AgentProcess) -> dict:
    status = socat_monitor("top", "--once", "--format", "json", "--socket", str(agent.socket), timeout=30)
    return json.loads(status.stdout)["last_reload"]


def _allowed_in(netns: Namespaces, ns: str) -> str:
    return netns.run(ns, "nft", "list", "set", "inet", "socat_monitor", "allow4").stdout


def test_reload_keeps_the_command_line_policy_and_applies_live_settings(tmp_path, procs, netns):
    """`run --config C --policy P`, then reload: P stays in force (it used to become none while the
    reload said ok), never_block reaches the kernel, detect changes apply, a restart-only change is
    refused by name, and a bad file changes nothing. Enforcement acts only in a namespace of this test."""
    require("nft")
    ns = netns.add("reload")
    port = free_port()
    host = f"net:[{os.stat('/proc/self/ns/net').st_ino}]"    # the relay runs here, the agent enforces in ns
    policy = _policy(tmp_path / "policy.yaml", port, "127.0.0.1/32", netns=host)
    config = tmp_path / "config.yaml"
    config.write_text("metrics: null\nenforce:\n  never_block: []\n")
    agent = AgentProcess(tmp_path, "--config", str(config), "--policy", str(policy), "--netns", ns,
                         "--duration", "120")
    try:
        agent.wait_ready()
        backend = free_port()
        start_echo(procs, backend)
        procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr,max-children=50", f"TCP:127.0.0.1:{backend}", port=port)
        connect(port, source="127.0.0.7")
        wait_for(lambda: _denied(agent, "127.0.0.7"))

        config.write_text("metrics: null\nenforce:\n  never_block: [192.0.2.0/24]\n"
                          "detect:\n  source_rate_min: 7\ncapture:\n  ringbuf_pages: 512\n")
        answer = socat_monitor("reload", "--socket", str(agent.socket), "--format", "json")
        reply = json.loads(answer.stdout)
        assert reply["policy"] == str(policy), reply
        assert reply["changed"] == ["enforce.never_block", "detect.source_rate_min"], reply
        assert len(reply["rejected"]) == 1 and reply["rejected"][0].startswith("capture.ringbuf_pages: 256 -> 512")
        assert "needs a restart" in reply["rejected"][0]
        assert answer.returncode == 1 and reply["ok"] is False
        assert "192.0.2.0/24" in _allowed_in(netns, ns)
        connect(port, source="127.0.0.8")                     # the policy from the command line is still in force
        wait_for(lambda: _denied(agent, "127.0.0.8"))

        feed = tmp_path / "feed.jsonl"
        config.write_text("metrics: null\nenforce:\n  never_block: [192.0.2.0/24, 198.51.100.0/24]\n"
                          f"detect:\n  source_rate_min: 7\nalert_feed:\n  path: {feed}\n")
        agent.proc.send_signal(signal.SIGHUP)                 # the signal path applies the same
        last = wait_for(lambda: (seen := _last_reload(agent))["changed"] != reply["changed"] and seen, timeout=30)
        assert last["changed"] == ["enforce.never_block", "alert_feed"], last
        assert last["ok"] is True and last["policy"] == str(policy)
        assert "198.51.100.0/24" in _allowed_in(netns, ns)
        connect(port, source="127.0.0.10")                    # a sink added by the reload gets the alert
        wait_for(lambda: feed.exists() and "127.0.0.10" in feed.read_text())

        config.write_text("metrics: null\nenforce:\n  never_block: []\n  scope: everywhere\n")
        bad = socat_monitor("reload", "--socket", str(agent.socket))
        assert bad.returncode == 1
        assert f"{config}:4: enforce.scope" in bad.stderr and "nothing changed" in bad.stderr
        assert "198.51.100.0/24" in _allowed_in(netns, ns)    # refused as a whole: never_block kept
        connect(port, source="127.0.0.9")
        wait_for(lambda: _denied(agent, "127.0.0.9"))
    finally:
        agent.stop()
    assert "reload rejected" in agent.text_log()


def _trigger_port(docs: list[dict], alert: dict) -> int | None:
    ids = set(alert["socat"].get("trigger_event_ids", []))
    for d in docs:
        if d["event"]["id"] in ids and "source" in d:
            return d["source"].get("port")
    return None


def test_metrics_match_events_written_and_heartbeat_appears(tmp_path, procs):
    metrics_port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text("heartbeat_interval: 1s\n")
    agent = AgentProcess(tmp_path, "--config", str(config), "--no-enforce", "--duration", "60",
                         "--metrics", f"127.0.0.1:{metrics_port}")
    try:
        agent.wait_ready()
        port = _relay(procs, tmp_path)
        for _ in range(25):
            connect(port)
        wait_for(lambda: len(_accepts(agent.documents(), port)) >= 25)
        text, docs = _quiet_snapshot(agent, metrics_port)
        status = json.loads(socat_monitor("top", "--once", "--format", "json", "--socket", str(agent.socket)).stdout)
    finally:
        agent.stop()
    written = {}
    for d in docs:
        if d["event"]["kind"] == "event":
            written[d["event"]["action"]] = written.get(d["event"]["action"], 0) + 1
    scraped = _metric_values(text, "socat_monitor_events_total", "action")
    for action in ("connection_accepted", "connection_attempted", "connection_closed"):
        assert scraped.get(action) == written.get(action), (action, scraped, written)
    assert "socat_monitor_kernel_lost_events_total 0.0" in text
    assert "socat_monitor_process_resident_memory_bytes" in text
    beats = [d for d in docs if d["event"]["kind"] == "metric"]
    assert beats and "kernel_lost_events_total" in beats[-1]["socat"]["metrics"]
    assert any(listener["port"] == port for listener in status["listeners"])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _quiet_snapshot(agent: AgentProcess, metrics_port: int) -> tuple[str, list[dict]]:
    """Metrics and files at a moment when no event arrived in between (other
    socat processes on the host may be busy): the two must then agree exactly."""
    for _ in range(20):
        before = _scrape(metrics_port)
        time.sleep(1.2)   # longer than the NDJSON flush interval
        docs = agent.documents()
        after = _scrape(metrics_port)
        counts = [_metric_values(t, "socat_monitor_events_total", "action") for t in (before, after)]
        if counts[0] == counts[1]:
            return after, docs
    raise AssertionError("the agent never went quiet for a second")


def _metric_values(text: str, name: str, label: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            for part in labels.split(","):
                key, _, val = part.partition("=")
                if key == label:
                    values[val.strip('"')] = float(value)
    return values


def test_sigterm_flushes_every_event(tmp_path, procs):
    agent = AgentProcess(tmp_path, "--no-enforce", "--duration", "120")   # SIGTERM comes long before
    try:
        agent.wait_ready()
        port = _relay(procs, tmp_path)
        clients = {connect(port)[1] for _ in range(30)}
    finally:
        code, summary = agent.stop()
    assert code in (0, 1), agent.text_log()[-2000:]  # 1: the root relay was audited
    seen = {d["source"]["port"] for d in _accepts(agent.documents(), port)}
    assert clients <= seen
    assert "connections seen:" in agent.text_log() + summary


def test_flood_raises_source_rate_within_one_second_and_normal_traffic_nothing(tmp_path, procs):
    agent = AgentProcess(tmp_path, "--no-enforce", "--learning-period", "4s", "--duration", "60")
    try:
        agent.wait_ready()
        port = _relay(procs, tmp_path)
        learn_until = time.monotonic() + 5.0
        while time.monotonic() < learn_until:      # normal traffic: ~2 connections/s
            connect(port, source="127.0.0.1")
            time.sleep(0.5)
        for _ in range(6):                          # normal traffic after learning
            connect(port, source="127.0.0.1")
            time.sleep(0.5)
        flood_started = time.time_ns()
        with ThreadPoolExecutor(4) as pool:         # the flood: one source, 4 at a time, as fast as it goes
            list(pool.map(lambda _: connect(port, source="127.0.0.7", payload=b""), range(300)))
        rate = wait_for(lambda: [a for a in _alerts(agent.documents(), "anomaly.source_rate")
                                 if a["source"]["ip"] == "127.0.0.7"], timeout=5)[0]
    finally:
        agent.stop()
    docs = agent.documents()
    first_flood_accept = min(_ns(d["@timestamp"]) for d in _accepts(docs, port) if d["source"]["ip"] == "127.0.0.7")
    assert first_flood_accept >= flood_started - 10**9
    assert (_ns(rate["@timestamp"]) - first_flood_accept) < 10**9, "flood flagged more than 1 s after it started"
    normal = [d for d in docs if d["event"]["kind"] == "alert" and d["rule"]["ruleset"] == "anomaly"
              and d.get("source", {}).get("ip") == "127.0.0.1"
              and d["socat"].get("listener", {}).get("port") == port]
    assert not normal, normal
