"""Blocks that hold in the field: a quiet host, a flushed ruleset, a table that
is not ours, a refreshed block, drops that can be seen.

Same lab as test_enforce.py (a socat relay in a "server" namespace, clients
in a "clients" namespace); nftables changes only in the server namespace.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import pytest

from monitor.capture.capture import Capture, CaptureConfig
from monitor.ecs import HostInfo, render
from monitor.enforce import Enforcer
from monitor.enforce.nft import NftTable
from monitor.enforce.safety import parse_target
from monitor.errors import InputError
from monitor.events import Action, ConnectionEvent
from tests.integration.test_enforce import BAD4, BAD6, GOOD4, SERVER4, Lab, _started, lab  # noqa: F401 (fixture)
from tests.lab import PYTHON, AgentProcess, socat_monitor, wait_for

pytestmark = pytest.mark.integration

OFFENDERS = ("10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.14", "10.77.0.15")


def _element(lab: Lab, target: str):
    table = NftTable("socat_monitor", lab.server)
    try:
        return next((e for e in table.list_elements() if e.target == target), None)
    finally:
        table.close()


def test_lone_offender_on_a_quiet_host_is_blocked_at_once(lab: Lab) -> None:
    """The agent's reader loop (poll with a 100 ms timeout) and one offender at a time, nothing else."""
    for addr in OFFENDERS:
        lab.netns.run(lab.clients, "ip", "addr", "add", f"{addr}/24", "dev", _client_dev(lab))
    enforcer = _started(lab)
    capture = Capture(CaptureConfig())
    kernel_ms: dict[str, float] = {}   # first accept of each offender -> element committed
    stop = threading.Event()

    def reader() -> None:   # what Agent._capture_loop + Pipeline do with an offending accept
        while not stop.is_set():
            for ev in capture.poll(100):
                if isinstance(ev, ConnectionEvent) and ev.action is Action.ACCEPTED and ev.source_ip in OFFENDERS \
                        and ev.source_ip not in kernel_ms:
                    done = enforcer.block(ev.source_ip, ttl_s=60, rule_id="t", alert_id=None, now_ns=time.time_ns())
                    if done.action is Action.BLOCKED:
                        kernel_ms[ev.source_ip] = (time.monotonic_ns() - ev.ktime_ns) / 1e6

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    client_ms = []
    try:
        time.sleep(0.5)   # quiet
        for addr in OFFENDERS:
            out = lab.netns.run(lab.clients, PYTHON, "-m", "tests.netprobe", "offend", addr, SERVER4,
                                str(lab.port), "3", check=False)
            assert out.returncode == 0, out.stdout + out.stderr
            client_ms.append(float(out.stdout))
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(5)
        capture.close()
        enforcer.close()
    assert len(kernel_ms) == len(OFFENDERS), kernel_ms
    # Targets (bench, idle host): p99 < 5 ms and p95 < 20 ms. Generous here (other tests share 2 cores);
    # waiting for the poll timeout, as before, gave 50-100 ms.
    assert statistics.median(kernel_ms.values()) < 25, kernel_ms
    assert statistics.median(client_ms) < 45, client_ms


def _client_dev(lab: Lab) -> str:
    out = lab.netns.run(lab.clients, "ip", "-o", "addr", "show", "to", GOOD4).stdout
    return out.split()[1]


def test_flushed_ruleset_is_rebuilt_with_its_blocks(lab: Lab) -> None:
    enforcer = _started(lab)
    assert enforcer.block(BAD4, ttl_s=60, rule_id="t", alert_id=None, now_ns=time.time_ns()).action is Action.BLOCKED
    assert not lab.reach(BAD4, timeout=0.5)
    lab.netns.run(lab.server, "nft", "flush", "ruleset")
    flushed = time.monotonic()
    back = None
    while time.monotonic() - flushed < 4:
        if BAD4 in lab.netns.run(lab.server, "nft", "list", "ruleset").stdout:
            back = time.monotonic() - flushed
            break
        time.sleep(0.05)
    assert back is not None and back < 2.0, back
    element = _element(lab, BAD4)
    assert element is not None and 50 < element.expires_s <= 60, element
    assert not lab.reach(BAD4, timeout=0.5)
    errors = enforcer.drain_errors()
    assert [e.stage for e in errors] == ["enforce"] and "removed by someone else" in errors[0].message, errors
    # Flushed again, and a block comes before the watchdog looks: rebuilt at once, with both.
    lab.netns.run(lab.server, "nft", "flush", "ruleset")
    assert enforcer.block(BAD6, ttl_s=60, rule_id="t", alert_id=None, now_ns=time.time_ns()).action is Action.BLOCKED
    listing = lab.table()
    assert BAD4 in listing and BAD6 in listing
    assert enforcer.rebuilds == 2
    # Changed (not removed): our drop rules deleted by hand.
    lab.netns.run(lab.server, "nft", "flush", "chain", "inet", "socat_monitor", "input")
    time.sleep(1.5)
    assert not lab.reach(BAD4, timeout=0.5) and enforcer.rebuilds == 3
    enforcer.close()


def test_a_table_that_is_not_ours_is_refused(lab: Lab, tmp_path: Path) -> None:
    lab.netns.run(lab.server, "nft", "add", "table", "inet", "socat_monitor")
    lab.netns.run(lab.server, "nft", "add", "chain", "inet", "socat_monitor", "theirs")
    before = lab.table()
    with pytest.raises(InputError) as err:
        Enforcer(lab.config()).start([lab.port])
    assert err.value.where == "enforce.table" and "not made by socat-monitor" in err.value.message
    assert lab.table() == before, "a table that is not ours is left alone"
    config = tmp_path / "config.yaml"
    config.write_text(f"enforce:\n  table: socat_monitor\n  netns: {lab.server}\n")
    checked = socat_monitor("config", "check", str(config))
    assert checked.returncode == 2 and "not made by socat-monitor" in checked.stderr, checked.stderr
    listed = socat_monitor("blocks", "add", BAD4, "--netns", lab.server, "--state-file", lab.state_file)
    assert listed.returncode == 2 and "not made by socat-monitor" in listed.stderr, listed.stderr
    assert lab.table() == before
    lab.netns.run(lab.server, "nft", "delete", "table", "inet", "socat_monitor")
    assert socat_monitor("config", "check", str(config)).returncode == 0


def test_refreshed_block_gets_its_new_timeout_in_the_kernel(lab: Lab) -> None:
    enforcer = _started(lab)
    enforcer.block(BAD4, ttl_s=3, rule_id="t", alert_id=None, now_ns=time.time_ns())
    time.sleep(1.2)
    refreshed = enforcer.block(BAD4, ttl_s=40, rule_id="t", alert_id=None, now_ns=time.time_ns())
    assert refreshed.action is Action.BLOCKED and refreshed.reason == "refreshed"
    element = _element(lab, BAD4)
    assert element.timeout_s == 40 and element.expires_s > 35, element
    time.sleep(2.5)   # past the first TTL
    assert not lab.reach(BAD4, timeout=0.5), "the refreshed block must outlive its first TTL"
    # The delete-and-add batch (kernels that keep the old expiry) extends it too.
    table = NftTable("socat_monitor", lab.server)
    table.replace([(parse_target(BAD4), 90)])
    table.close()
    assert _element(lab, BAD4).expires_s > 85
    enforcer.close()


def test_drop_counters_rise_while_a_blocked_client_retries(lab: Lab) -> None:
    enforcer = _started(lab)
    enforcer.block(BAD4, ttl_s=60, rule_id="t", alert_id=None, now_ns=time.time_ns())
    for _ in range(3):
        assert not lab.reach(BAD4, timeout=0.3)
    element = _element(lab, BAD4)
    assert element.packets >= 3 and element.bytes >= 3 * 40, element

    def samples() -> dict:
        return {(s.name, s.labels): s.value for s in enforcer.samples() + enforcer.block_samples()}

    # the watchdog lists the counters every 5 s, off the block path
    wait_for(lambda: samples().get(("enforce_block_dropped_packets", (("target", BAD4),)), 0) >= 3, timeout=10)
    assert samples()[("enforce_dropped_packets_total", (("set", "block4"),))] >= 3
    periodic = enforcer.counter_events(time.time_ns())
    assert [(e.action, e.target) for e in periodic] == [(Action.BLOCK_COUNTERS, BAD4)]
    doc = render(periodic[0], HostInfo.detect())
    assert doc["event"]["kind"] == "metric" and doc["socat"]["block"]["dropped_packets"] >= 3
    assert enforcer.counter_events(time.time_ns()) == [], "reported again only when it dropped more"
    assert lab.reach(GOOD4)
    listed = socat_monitor("blocks", "list", "--netns", lab.server, "--format", "json")
    rows = {r["target"]: r for r in json.loads(listed.stdout)}
    assert rows[BAD4]["dropped_packets"] >= 3 and rows[BAD4]["dropped_bytes"] >= 120
    text = socat_monitor("blocks", "list", "--netns", lab.server).stdout
    assert "dropped" in text and "block4" in text
    enforcer.close()


def test_agent_survives_a_flushed_ruleset_and_keeps_blocking(lab: Lab, tmp_path: Path) -> None:
    """The real agent (policy `action: block`, enforcing in the server namespace) through `nft flush ruleset`."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nlisteners:\n  - name: relay\n    port: {lab.port}\n"
                      f"    allow_sources: [{GOOD4}/32, fd77::2/128]\n    action: block\n")
    agent = AgentProcess(tmp_path, "--policy", str(policy), "--netns", lab.server, "--duration", "90")
    try:
        agent.wait_ready()
        lab.reach(BAD4)   # the offence
        wait_for(lambda: BAD4 in lab.table(), timeout=5)
        assert not lab.reach(BAD4, timeout=0.5)
        lab.netns.run(lab.server, "nft", "flush", "ruleset")
        flushed = time.monotonic()
        wait_for(lambda: BAD4 in lab.netns.run(lab.server, "nft", "list", "ruleset").stdout, timeout=4)
        assert time.monotonic() - flushed < 2.0
        assert agent.proc.poll() is None, agent.text_log()[-2000:]
        lab.reach(BAD6)   # a new offender after the rebuild is blocked too
        wait_for(lambda: BAD6 in lab.table(), timeout=5)
        assert not lab.reach(BAD6, timeout=0.5) and lab.reach(GOOD4)
    finally:
        code, _ = agent.stop()
    assert code == 1, agent.text_log()[-2000:]   # alerts raised; neither 3 nor 70
    errors = [d for d in agent.documents() if d["event"]["kind"] == "pipeline_error"
              and d["socat"]["pipeline"]["stage"] == "enforce"]
    assert errors and "rebuilt with 1 active blocks" in errors[0]["message"], errors
