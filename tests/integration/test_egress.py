"""Egress guard end to end: real socat relays, real cgroup_sock_addr programs.

The programs are attached to a child cgroup made by the test (not the root),
and only the test's own processes are moved into it. All traffic is on
loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
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


THREADS = r"""
import sys, threading, time
print("ready", flush=True)
sys.stdin.readline()
workers = [threading.Thread(target=time.sleep, args=(0.01,)) for _ in range(30)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("done", flush=True)
sys.stdin.readline()
"""


def test_exited_threads_and_children_leave_the_relay_table(procs: Processes, cgroup: Path) -> None:
    backend, listen = free_port(), free_port()
    procs.start([PYTHON, "-m", "tests.echo", str(backend)], cwd=ROOT)
    wait_listening(backend)
    guard = EgressGuard([EgressRule(listen, (("127.0.0.1", backend),))], cgroup=str(cgroup))
    try:
        relay = procs.start([require("socat"), f"TCP-LISTEN:{listen},fork,reuseaddr", f"TCP:127.0.0.1:{backend}"],
                            preexec_fn=_in(cgroup))
        wait_listening(listen)
        guard.track(relay.pid, listen)
        threaded = procs.start([PYTHON, "-c", THREADS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert threaded.stdout.readline().strip() == "ready"
        guard.track(threaded.pid, listen)
        assert guard.tracked() == 2
        for _ in range(10):
            assert _echo_through(listen)   # each connection: a forked child that exits
        threaded.stdin.write("go\n")
        threaded.stdin.flush()
        assert threaded.stdout.readline().strip() == "done"   # 30 threads started and exited
        deadline = time.monotonic() + 3
        while guard.tracked() > 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert guard.tracked() == 2, "every exited child and thread must leave the table"
        assert guard.unguarded() == 0 and guard.drain_errors() == []
    finally:
        guard.close()


GUARD = r"""
import sys
from monitor.enforce.egress import EgressGuard, EgressRule
listen, allowed, relay, cgroup = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
guard = EgressGuard([EgressRule(listen, (("127.0.0.1", allowed),))], cgroup=cgroup)
guard.track(relay, listen)
print("guarding", flush=True)
sys.stdin.readline()
"""


def test_programs_leave_with_the_agent_even_when_it_is_killed(procs: Processes, cgroup: Path) -> None:
    good, bad, listen = free_port(), free_port(), free_port()
    for port in (good, bad):
        procs.start([PYTHON, "-m", "tests.echo", str(port)], cwd=ROOT)
        wait_listening(port)
    relay = procs.start([require("socat"), f"TCP-LISTEN:{listen},fork,reuseaddr", f"TCP:127.0.0.1:{bad}"],
                        preexec_fn=_in(cgroup))
    wait_listening(listen)
    for _ in range(2):   # a restart must not stack a second set of programs on the first
        agent = procs.start([PYTHON, "-c", GUARD, str(listen), str(good), str(relay.pid), str(cgroup)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert agent.stdout.readline().strip() == "guarding", agent.stderr.read()
        assert not _echo_through(listen), "guarded: the disallowed backend is refused"
        assert len(_attached_programs(cgroup)) == 2   # connect4 and connect6, once each
        procs.stop(agent, signal.SIGKILL)
        assert _echo_through(listen), "the agent died: its links closed, the relay is unguarded (fails open)"
    assert not _attached_programs(cgroup)


def _attached_programs(cgroup: Path) -> list[int]:
    """Program ids attached to the cgroup's connect hooks (BPF_PROG_QUERY)."""
    import ctypes

    from monitor.host.syscalls import sys_bpf
    from monitor.enforce.egress import ATTACH_INET4_CONNECT, ATTACH_INET6_CONNECT

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    ids: list[int] = []
    try:
        for attach in (ATTACH_INET4_CONNECT, ATTACH_INET6_CONNECT):
            out = (ctypes.c_uint32 * 64)()
            # query: target_fd, attach_type, query_flags, attach_flags, prog_ids (u64 pointer), prog_cnt
            attr = (ctypes.c_uint32 * 16)(fd, attach, 0, 0, 0, 0, 64)
            ctypes.memmove(ctypes.byref(attr, 16), ctypes.byref(ctypes.c_uint64(ctypes.addressof(out))), 8)
            assert libc.syscall(sys_bpf(), 16, ctypes.byref(attr), ctypes.sizeof(attr)) == 0, ctypes.get_errno()
            ids += list(out[:attr[6]])
    finally:
        os.close(fd)
    return ids


def test_a_reload_replaces_the_allowed_backends(procs: Processes, cgroup: Path) -> None:
    first, second, listen, other = free_port(), free_port(), free_port(), free_port()
    for port in (first, second):
        procs.start([PYTHON, "-m", "tests.echo", str(port)], cwd=ROOT)
        wait_listening(port)
    guard = EgressGuard([EgressRule(listen, (("127.0.0.1", first),)), EgressRule(other, (("127.0.0.0/8", None),))],
                        cgroup=str(cgroup))
    try:
        relay = procs.start([require("socat"), f"TCP-LISTEN:{listen},fork,reuseaddr", f"TCP:127.0.0.1:{second}"],
                            preexec_fn=_in(cgroup))
        wait_listening(listen)
        guard.track(relay.pid, listen)
        assert not _echo_through(listen), "the second backend is not allowed yet"
        guard.set_rules([EgressRule(listen, (("127.0.0.1", second),))])
        assert _echo_through(listen), "after the reload the second backend is allowed"
        guard.set_rules([EgressRule(listen, (("127.0.0.1", first),))])
        assert not _echo_through(listen), "the reload removed it again"
        guard.set_rules([])
        assert _echo_through(listen), "no rule for the listener: unguarded"
    finally:
        guard.close()


AGENT_MODULES = r"""
import json, sys
from monitor.enforce.egress import EgressGuard, EgressRule
guard = EgressGuard([EgressRule(int(sys.argv[1]), (("127.0.0.1", None),))], cgroup=sys.argv[2])
rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
print(json.dumps({"bcc": "bcc" in sys.modules, "rss_kib": rss, "links": len(guard._links)}))
guard.close()
"""


def test_the_guard_compiles_in_a_child_and_the_agent_never_imports_bcc(cgroup: Path) -> None:
    done = subprocess.run([PYTHON, "-c", AGENT_MODULES, str(free_port()), str(cgroup)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert loaded["bcc"] is False and loaded["links"] == 2
    assert loaded["rss_kib"] < 100 * 1024, "bcc and LLVM (about 120 MiB after a compile) are not in the process"
