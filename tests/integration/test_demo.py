"""The demo lab end to end: `scripts/demo.sh` builds its namespaces, runs the
real agent on them, and its report shows connections, alerts and a block."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.lab import ROOT, require

pytestmark = pytest.mark.integration
DEMO = str(ROOT / "scripts" / "demo.sh")


def lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("smdemo-")}


def test_demo_shows_connections_alerts_and_a_block(tmp_path):
    require("socat"), require("nft")
    before = lab_namespaces()
    out = tmp_path / "demo"
    result = subprocess.run(["bash", DEMO, "--learning-period", "10", "--output", str(out)],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "demo-report.json").read_text())
    assert report["ok"] and report["lab_ok"]
    assert report["connections_seen"] > 0
    assert sum(report["alerts"].values()) > 0 and "policy.source_denied" in report["alerts"]
    assert "203.0.113.66" in report["sources_blocked"]
    assert report["lab"]["attacker-blocked"]["blocked_after_probes"] is not None
    assert report["lines"]["events*.ndjson"] > 0 and report["lines"]["alerts*.ndjson"] > 0
    for text in ("connections seen:", "alerts raised:", "sources blocked:", "203.0.113.66 is now dropped",
                 "RECENT ALERTS", str(out)):
        assert text in result.stdout, text
    assert lab_namespaces() == before, "the demo left namespaces behind"


def test_demo_lab_cleans_up_on_ctrl_c(tmp_path):
    before = lab_namespaces()
    proc = subprocess.Popen(["bash", DEMO, "--no-agent", "--learning-period", "30", "--output", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 30
    while len(lab_namespaces() - before) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(lab_namespaces() - before) == 3, "the lab never came up"
    time.sleep(2)   # good clients running
    os.killpg(proc.pid, signal.SIGINT)    # what Ctrl-C sends to the foreground process group
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, output
    assert "interrupted, cleaning up" in output
    assert lab_namespaces() == before
    assert (tmp_path / "lab" / "good-v4.json").exists()


def test_demo_lab_traffic_behaves_as_designed(tmp_path):
    result = subprocess.run(["bash", DEMO, "--no-agent", "--learning-period", "5", "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lab = json.loads((tmp_path / "demo-report.json").read_text())["lab"]
    assert lab["good-v4"]["ok"] >= 3 and lab["good-v6"]["ok"] >= 3 and lab["good-admin"]["ok"] >= 1
    assert set(lab["good-v4"]) & {"closed", "reset", "timeout", "refused"} == set()
    assert lab["attacker-v6"]["closed"] == 3, "socat's range= should accept then close"
    assert lab["attacker-v4"]["ok"] == 3, "without the agent nothing blocks"
    assert lab["scan"]["refused"] >= 50 and lab["flood"]["ok"] > 0
