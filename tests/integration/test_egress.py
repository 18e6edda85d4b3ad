"""Egress guard end to end: real socat relays, real cgroup_sock_addr programs.

The programs are attached to a child cgroup made by the test (not the root),
and only the test's own processes are moved into it. All traffic is on
loopback.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from monitor.enforce.egress import RULE, EgressGuard, EgressRule
from monitor.host.mounts import CGROUP2
from monitor.events import Outcome
from tests.lab import PYTHON, ROOT, Processes, free_port, require, wait_listening

pytestmark = pytest.mark.integration


@pytest.fixture
def cgroup(procs: Processes):
    path = Path(CGROUP2) / f"smt-egress-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    procs.stop_all()
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{path} still busy")


def _in(cgroup: Path):
    def enter() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    return enter


def _echo_through(port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"hello\n")
            return s.recv(16) == b"hello\n"
    except OSError:
        return False


def test_guard_refuses_disallowed_backend_only(procs: Processes, cgroup: Path) -> None:
    socat = require("socat")
    good_backend, bad_backend = free_port(), free_port()
    for port in (good_backend, bad_backend):
        procs.start([PYTHON, "-m", "tests.echo", str(port)], cwd=ROOT)
        wait_listening(port)
    guarded_ok, guarded_bad, unguarded = free_port(), free_port(), free_port()
    allowed = (("127.0.0.1", good_backend), ("::1", good_backend))
    guard = EgressGuard([EgressRule(guarded_ok, allowed), EgressRule(guarded_bad, allowed, name="api")],
                        cgroup=str(cgroup))
    try:
        relays = {}
        for listen, backend in ((guarded_ok, good_backend), (guarded_bad, bad_backend), (unguarded, bad_backend)):
            relays[listen] = procs.start([socat, f"TCP-LISTEN:{listen},fork,reuseaddr", f"TCP:127.0.0.1:{backend}"],
                                         preexec_fn=_in(cgroup))
            wait_listening(listen)
            guard.track(relays[listen].pid, listen)

        assert _echo_through(guarded_ok), "an allowed backend must keep working"
        assert not _echo_through(guarded_bad), "a disallowed backend must be refused"
        assert _echo_through(unguarded), "a listener without a block policy is not affected"

        # A non-socat process in the same cgroup dialling the same backend is not affected.
        plain = procs.start([PYTHON, "-c", f"import socket; socket.create_connection(('127.0.0.1', {bad_backend}), 2)"],
                            preexec_fn=_in(cgroup))
        assert plain.wait(5) == 0

        deadline = time.monotonic() + 3
        alerts = []
        while not alerts and time.monotonic() < deadline:
            alerts = guard.poll()
            time.sleep(0.05)
        assert len(alerts) == 1, alerts
        alert = alerts[0]
        assert alert.rule_id == RULE and alert.outcome is Outcome.FAILURE
        assert (alert.destination_ip, alert.destination_port) == ("127.0.0.1", bad_backend)
        assert alert.listener.port == guarded_bad and alert.listener.name == "api"
        assert alert.process.comm == "socat" and alert.process.pid != relays[guarded_bad].pid  # the forked child
        assert abs(alert.timestamp_ns - time.time_ns()) < 10 * 10**9
        assert guard.lost() == 0
    finally:
        guard.close()
    assert _echo_through(guarded_bad), "after close the programs are detached"
