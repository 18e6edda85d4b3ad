"""Live capture against real socat relays on loopback, with real BPF attached.

One `Capture` is loaded for the module (compiling the BPF program takes a
few seconds). Each test starts its own relays after it, makes a known set of
client connections (recording their source ports) and asserts the exact
events of those relays' processes: every connection, 4-tuple, pid/ppid,
session pairing, refusals, lifecycle. Other socat processes on the host
(other tests) are told apart by pid, and nothing but socat may appear.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from monitor.capture import Capture, CaptureConfig
from monitor.ebpf.progstats import StatsSwitch
from monitor.events import Action, ConnectionEvent, Direction, Outcome, PipelineError, ProcessEvent
from tests.lab import PYTHON, ROOT, free_port, require, socat_monitor, wait_listening

pytestmark = pytest.mark.integration
SOCAT = require("socat")


class Recorder:
    """Polls the capture and keeps every record for the tests to pick from."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.records: list = []

    def pump(self, seconds: float = 0.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.records.extend(self.capture.poll(50))
            if time.monotonic() >= deadline:
                return

    def family(self, root_pids: set[int]) -> list:
        """Records of the processes started as root_pids and their fork children (any depth)."""
        pids = set(root_pids)
        out = []
        for rec in self.records:
            proc = getattr(rec, "process", None)
            if proc is None:
                continue
            if proc.pid in pids or proc.ppid in pids:
                pids.add(proc.pid)
                out.append(rec)
        return out

    def wait_for(self, root_pids: set[int], predicate, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            recs = self.family(root_pids)
            if predicate(recs) or time.monotonic() > deadline:
                return recs


@pytest.fixture(scope="module")
def recorder():
    capture = Capture(CaptureConfig(byte_counts=True))
    rec = Recorder(capture)
    yield rec
    capture.close()


@pytest.fixture
def backend(procs):
    port = free_port()
    proc = procs.start([PYTHON, "-m", "tests.echo", str(port), "127.0.0.1"], cwd=ROOT)
    wait_listening(port)
    return port, proc


def relay(procs, listen: str, target: str, family: int = socket.AF_INET, netns: str | None = None):
    """Start `socat LISTEN TARGET` on a free port ({port} in `listen`); (process, port).

    Another test on the host may take a free port between our probe and socat's
    bind: then socat exits at once and we retry on another port (3 tries)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    for _ in range(3):
        port = free_port(family)
        proc = procs.start([SOCAT, listen.format(port=port), target], netns=netns)
        try:
            wait_listening(port, host=host, netns=netns)
            return proc, port
        except AssertionError:
            if proc.poll() is None:
                raise
            err = proc.stderr.read().decode(errors="replace").strip()
    raise AssertionError(f"socat {listen} did not start: {err}")


def connect(family: int, host: str, port: int, payload: bytes = b"ping") -> tuple[str, int, bytes]:
    """One client connection through the relay; returns our (ip, port) and what came back."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((host, port))
        me = s.getsockname()
        got = b""
        try:   # a refusing relay may already have closed: then nothing comes back
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(4096):
                got += chunk
        except (ConnectionResetError, BrokenPipeError, OSError):
            pass
    return me[0], me[1], got


def conns(recs: list, action: Action) -> list[ConnectionEvent]:
    return [r for r in recs if isinstance(r, ConnectionEvent) and r.action is action]


def by_session(recs: list) -> dict[str, list[ConnectionEvent]]:
    out: dict[str, list[ConnectionEvent]] = defaultdict(list)
    for r in recs:
        if isinstance(r, ConnectionEvent):
            out[r.session_id].append(r)
    return out


def test_fork_relays_ipv4_ipv6_exact(recorder, procs, backend):
    bport, bproc = backend
    relay4, p4 = relay(procs, "TCP-LISTEN:{port},fork,reuseaddr", f"TCP:127.0.0.1:{bport}")
    # connect-timeout= makes the child's connect non-blocking (EINPROGRESS, then the state change)
    relay6, p6 = relay(procs, "TCP6-LISTEN:{port},fork,reuseaddr", f"TCP:127.0.0.1:{bport},connect-timeout=3",
                       socket.AF_INET6)
    roots = {relay4.pid, relay6.pid}

    made = []  # (listener port, client ip, client port)
    for _ in range(3):
        ip, port, got = connect(socket.AF_INET, "127.0.0.1", p4)
        assert got == b"ping"
        made.append((p4, ip, port))
        ip, port, got = connect(socket.AF_INET6, "::1", p6)
        assert got == b"ping"
        made.append((p6, ip, port))
    ip, port, got = connect(socket.AF_INET, "127.0.0.1", p6)   # IPv4 client on the dual-stack listener
    assert got == b"ping"
    made.append((p6, ip, port))
    n = len(made)

    recs = recorder.wait_for(roots, lambda r: len(conns(r, Action.CLOSED)) >= 2 * n, timeout=10)

    # nothing but socat, and no event from the python backend or client
    assert all(r.process.comm == "socat" for r in recorder.records if getattr(r, "process", None))
    assert all(r.process.pid != bproc.pid for r in recs)

    started = [r for r in recs if isinstance(r, ProcessEvent) and r.action is Action.PROCESS_STARTED]
    assert {(r.process.pid, r.process.args) for r in started} == {
        (relay4.pid, (SOCAT, f"TCP-LISTEN:{p4},fork,reuseaddr", f"TCP:127.0.0.1:{bport}")),
        (relay6.pid, (SOCAT, f"TCP6-LISTEN:{p6},fork,reuseaddr", f"TCP:127.0.0.1:{bport},connect-timeout=3")),
    }
    assert all(r.process.executable == SOCAT for r in started)

    accepted = conns(recs, Action.ACCEPTED)
    relay_of = {p4: relay4.pid, p6: relay6.pid}
    assert sorted((a.destination_port, a.source_ip, a.source_port) for a in accepted) == sorted(made)
    for a in accepted:
        assert a.process.pid == relay_of[a.destination_port]
        assert a.direction is Direction.INGRESS and a.outcome is Outcome.SUCCESS
        assert a.destination_ip == ("127.0.0.1" if a.source_ip == "127.0.0.1" else "::1")
        assert a.listener.port == a.destination_port
        assert a.session_id

    sessions = by_session(recs)
    assert len(sessions) == n
    for a in accepted:
        session = sessions[a.session_id]
        assert sorted(e.action.value for e in session) == sorted(
            [Action.ACCEPTED.value, Action.ATTEMPTED.value, Action.CLOSED.value, Action.CLOSED.value]), session
        (attempt,) = conns(session, Action.ATTEMPTED)
        assert attempt.direction is Direction.EGRESS and attempt.outcome is Outcome.SUCCESS
        assert (attempt.destination_ip, attempt.destination_port) == ("127.0.0.1", bport)
        assert attempt.source_ip == "127.0.0.1" and attempt.source_port > 0
        assert attempt.process.ppid == a.process.pid != attempt.process.pid
        assert attempt.process.args == a.process.args           # the child is complete without /proc
        assert attempt.listener == a.listener                   # egress carries the relay's listener
        closes = {c.direction: c for c in conns(session, Action.CLOSED)}
        assert (closes[Direction.INGRESS].source_ip, closes[Direction.INGRESS].source_port) == (a.source_ip, a.source_port)
        assert (closes[Direction.EGRESS].source_port, closes[Direction.EGRESS].destination_port) == (
            attempt.source_port, bport)
        for c in closes.values():
            assert c.duration_ns and 0 < c.duration_ns < 10 * 10**9
            assert (c.bytes_in, c.bytes_out) == (4, 4), (c, a)   # b"ping" each way, counted at read()/write()
            assert c.timestamp_ns >= a.timestamp_ns
        assert a.ktime_ns < attempt.ktime_ns
    assert abs(accepted[0].timestamp_ns - time.time_ns()) < 60 * 10**9   # wall clock, not ktime

    procs.stop(relay4)
    procs.stop(relay6)
    recs = recorder.wait_for(roots, lambda r: len([e for e in r if e.action is Action.PROCESS_ENDED]) >= 2)
    ended = {r.process.pid: r for r in recs if isinstance(r, ProcessEvent) and r.action is Action.PROCESS_ENDED}
    assert set(ended) == roots                       # clean exits of fork children are not reported
    assert all(e.exit_code == 128 + 15 for e in ended.values())   # socat exits 143 on SIGTERM
    assert recorder.capture.stats.kernel_lost == 0
    assert not [r for r in recorder.records if isinstance(r, PipelineError)]


def test_range_refusal_is_denied(recorder, procs, backend):
    bport, _ = backend
    proc, port = relay(procs, "TCP-LISTEN:{port},fork,reuseaddr,range=10.255.255.1/32", f"TCP:127.0.0.1:{bport}")
    made = sorted(connect(socket.AF_INET, "127.0.0.1", port)[:2] for _ in range(2))
    recs = recorder.wait_for({proc.pid}, lambda r: len(conns(r, Action.DENIED)) >= 2)
    conn_recs = [r for r in recs if isinstance(r, ConnectionEvent)]
    assert sorted(r.action.value for r in conn_recs) == sorted([Action.ACCEPTED.value, Action.DENIED.value] * 2)
    denied = conns(recs, Action.DENIED)
    assert sorted((d.source_ip, d.source_port) for d in denied) == made
    for d in denied:
        assert d.refused and d.outcome is Outcome.FAILURE and d.process.pid == proc.pid
        (a,) = [a for a in conns(recs, Action.ACCEPTED) if a.session_id == d.session_id]
        assert a.source_port == d.source_port and a.ktime_ns < d.ktime_ns


def test_short_lived_children_are_complete(recorder, procs):
    dead = free_port()            # nothing listens there: the child's connect is refused
    proc, port = relay(procs, "TCP-LISTEN:{port},fork,reuseaddr", f"TCP:127.0.0.1:{dead}")
    relay_exec, port_exec = relay(procs, "TCP-LISTEN:{port},fork,reuseaddr", "EXEC:true")
    _, cport, got = connect(socket.AF_INET, "127.0.0.1", port)
    _, eport, _ = connect(socket.AF_INET, "127.0.0.1", port_exec)
    assert got == b""

    def done(r):
        return (any(e.action is Action.PROCESS_ENDED and e.process.ppid == proc.pid for e in r)
                and len(conns(r, Action.CLOSED)) >= 2 and conns(r, Action.ATTEMPTED))

    recs = recorder.wait_for({proc.pid, relay_exec.pid}, done)
    (attempt,) = conns(recs, Action.ATTEMPTED)
    assert attempt.outcome is Outcome.FAILURE and attempt.error == "ECONNREFUSED"
    assert attempt.destination_port == dead
    assert attempt.process.ppid == proc.pid and attempt.process.args[1].startswith("TCP-LISTEN")
    (accept,) = [a for a in conns(recs, Action.ACCEPTED) if a.source_port == cport]
    assert attempt.session_id == accept.session_id
    # (the EXEC:true child may end with 1 too: writing to `true` races with its exit)
    (ended,) = [e for e in recs if isinstance(e, ProcessEvent) and e.action is Action.PROCESS_ENDED
                and e.process.ppid == proc.pid]
    assert ended.process.pid == attempt.process.pid and ended.exit_code == 1   # socat child fails: exit 1
    assert ended.process.executable == SOCAT and ended.process.ppid == proc.pid

    (eaccept,) = [a for a in conns(recs, Action.ACCEPTED) if a.source_port == eport]
    eclose = [c for c in conns(recs, Action.CLOSED) if c.session_id == eaccept.session_id]
    assert len(eclose) == 1 and eclose[0].process.ppid == relay_exec.pid
    assert eclose[0].process.args == (SOCAT, f"TCP-LISTEN:{port_exec},fork,reuseaddr", "EXEC:true")
    assert all(r.process.comm == "socat" for r in recs)   # `true` itself is not watched


def test_listeners_lists_socat_sockets(recorder, procs):
    proc, port = relay(procs, "TCP-LISTEN:{port},reuseaddr,bind=127.0.0.1", "STDOUT")
    found = [(lst.ip, lst.port, lst.pid) for lst in recorder.capture.listeners()]
    assert ("127.0.0.1", port, proc.pid) in found


def test_doctor_passes_here():
    done = socat_monitor("doctor", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"ok": true' in done.stdout


def test_doctor_reports_missing_socat_with_fix():
    done = socat_monitor("doctor", env={"PATH": "/nonexistent"})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "FAIL socat: socat not found in PATH" in done.stdout
    assert "fix: apt-get install -y socat" in done.stdout


def test_doctor_reports_missing_headers_and_tracefs():
    from monitor.doctor import DoctorEnv, run_checks

    report = run_checks(DoctorEnv(modules="/nonexistent/modules", tracing="/nonexistent/tracing",
                                  debugfs="/nonexistent/debug"))
    failed = {c.name: c for c in report.checks if c.status == "fail"}
    warned = {c.name: c for c in report.checks if c.status == "warn"}
    assert not report.ok and set(failed) == {"kernel headers"}
    assert "ln -sfn" in failed["kernel headers"].fix
    assert warned["tracepoints"].fix == "mount -t tracefs none /nonexistent/tracing"   # the agent mounts it


def test_doctor_under_ip_netns_exec_warns_about_tracefs_and_passes(netns):
    """`ip netns exec` remounts /sys without tracefs/debugfs: not fatal (the agent mounts them at start)."""
    ns = netns.add("doc")
    done = netns.run(ns, str(Path(PYTHON).parent / "socat-monitor"), "doctor", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("WARN tracepoints: not verified")))
    assert lines[at + 1].strip() == "fix: mount -t tracefs none /sys/kernel/tracing"
    assert "WARN mount debugfs" in done.stdout and "fix: mount -t debugfs none /sys/kernel/debug" in done.stdout
    assert "FAIL" not in done.stdout


NETNS_AGENT = """
import json, socket, subprocess, sys, time
from monitor.capture import Capture, CaptureConfig
from monitor.events import Action
capture = Capture(CaptureConfig())
port = int(sys.argv[1])
relay = subprocess.Popen([sys.argv[2], f"TCP-LISTEN:{port},reuseaddr,fork", "EXEC:cat"])
try:
    for _ in range(100):   # wait until the relay listens (seen through /proc, no probe connection)
        if port in [lst.port for lst in capture.listeners() if lst.pid == relay.pid]:
            break
        time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", port)) as s:
        me = s.getsockname()[1]
        s.sendall(b"x")
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not seen:
        seen = [e.source_port for e in capture.poll(100)
                if getattr(e, "action", None) is Action.ACCEPTED and e.process.pid == relay.pid]
    print(json.dumps({"client_port": me, "accepted": seen}))
finally:
    relay.terminate()
    relay.wait(5)
    capture.close()
"""


def test_capture_under_ip_netns_exec(netns):
    """`ip netns exec` gives a mount namespace without tracefs: Capture mounts it and works."""
    ns = netns.add("cap")
    done = netns.run(ns, PYTHON, "-c", NETNS_AGENT, str(free_port()), SOCAT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["accepted"] == [out["client_port"]]


def test_single_process_relay_to_ipv6_backend(recorder, procs):
    """No fork: accept and connect in one process; an IPv6 backend; not a refusal."""
    bport = free_port(socket.AF_INET6)
    procs.start([PYTHON, "-m", "tests.echo", str(bport), "::1"], cwd=ROOT)
    wait_listening(bport, host="::1")
    proc, port = relay(procs, "TCP-LISTEN:{port},reuseaddr", f"TCP6:[::1]:{bport}")
    ip, cport, got = connect(socket.AF_INET, "127.0.0.1", port)
    assert got == b"ping"
    recs = recorder.wait_for({proc.pid}, lambda r: len(conns(r, Action.CLOSED)) >= 2)
    (acc,) = conns(recs, Action.ACCEPTED)
    (att,) = conns(recs, Action.ATTEMPTED)
    assert (acc.source_ip, acc.source_port) == (ip, cport)
    assert att.process.pid == acc.process.pid == proc.pid
    assert (att.destination_ip, att.destination_port, att.source_ip) == ("::1", bport, "::1")
    assert att.session_id == acc.session_id
    assert not conns(recs, Action.DENIED)
    assert sorted(c.direction.value for c in conns(recs, Action.CLOSED)) == ["egress", "ingress"]


def test_program_runs_are_counted_per_tracepoint_while_bpf_stats_are_on(recorder, procs, backend):
    bport, _ = backend
    proc, port = relay(procs, "TCP-LISTEN:{port},fork,reuseaddr", f"TCP:127.0.0.1:{bport}")
    with StatsSwitch():
        before = {run.tracepoint: run for run in recorder.capture.program_runs()}
        connect(socket.AF_INET, "127.0.0.1", port)
        recorder.wait_for({proc.pid}, lambda r: len(conns(r, Action.CLOSED)) >= 2)
        after = {run.tracepoint: run for run in recorder.capture.program_runs()}
    assert {"sys_exit_accept", "sched_process_fork", "inet_sock_set_state", "sys_enter_read"} <= set(after)
    for name in ("sys_exit_accept", "sched_process_fork", "sys_enter_connect", "sys_exit_connect"):
        assert after[name].count > before[name].count and after[name].ns > before[name].ns, name
    assert all(run.count >= 0 and run.ns >= 0 for run in after.values())


# A watched process (named by prctl) that gets a SIGCHLD (a handled one, as socat's), then ends as `how`
# says once it reads a line: `exit` (exit_group, status 3), `thread-exit` (its only thread's SYS_exit: no
# exit_group, no fatal signal) or `wait` (until a SIGKILL ends it).
ENDER = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(15, b"end-probe", 0, 0, 0)
signal.signal(signal.SIGCHLD, lambda *_: None)
print("ready", flush=True)
sys.stdin.readline()
if os.fork() == 0:
    os._exit(0)
os.wait()
how = sys.argv[1]
if how == "exit":
    sys.exit(3)
if how == "thread-exit":
    libc.syscall(60, 0)
signal.pause()
"""


@pytest.mark.parametrize("how", ["exit", "thread-exit", "wait"])
def test_process_end_is_its_exit_status_or_fatal_signal_never_a_sigchld(procs, how):
    """Both places the kernel side keeps how a process ends: its fork entry (started while the
    programs ran) and `exits` (started before)."""
    def start():
        proc = procs.start([PYTHON, "-c", ENDER, how], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"ready\n"
        return proc

    older = start()
    with Capture(CaptureConfig(comms=("end-probe",))) as capture:
        newer = start()
        ended: dict[int, ProcessEvent] = {}
        for proc in (older, newer):
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            if how == "wait":
                time.sleep(0.5)   # its SIGCHLD first
                proc.kill()
            proc.wait(5)
        deadline = time.monotonic() + 5
        while len(ended) < 2 and time.monotonic() < deadline:
            for rec in capture.poll(50):
                if isinstance(rec, ProcessEvent) and rec.action is Action.PROCESS_ENDED:
                    ended[rec.process.pid] = rec
    expected = {"exit": (3, None), "thread-exit": (None, None), "wait": (None, signal.SIGKILL)}[how]
    assert {pid: (e.exit_code, e.signal) for pid, e in ended.items()} == {older.pid: expected, newer.pid: expected}


def test_stats_and_poll_after_close():
    capture = Capture(CaptureConfig(comms=("socat", "nc"), ringbuf_pages=64))
    capture.close()
    capture.close()
    assert capture.poll(0) == []
    assert capture.stats.kernel_lost == 0


def test_killed_process_reports_its_signal(recorder, procs):
    proc, port = relay(procs, "TCP-LISTEN:{port},reuseaddr", "STDOUT")
    procs.stop(proc, sig=signal.SIGKILL)
    recs = recorder.wait_for({proc.pid}, lambda r: any(e.action is Action.PROCESS_ENDED for e in r))
    (ended,) = [e for e in recs if e.action is Action.PROCESS_ENDED]
    assert ended.signal == signal.SIGKILL and ended.exit_code is None


def test_relay_started_before_capture_in_another_netns(netns, procs):
    """Listeners bound before the agent started, in another namespace, are seeded from /proc:
    accepts carry their listener and destination, IPv4 and IPv6, none incomplete."""
    ns = netns.add("pre")
    proc4, port4 = relay(procs, "TCP-LISTEN:{port},reuseaddr,fork,bind=127.0.0.1", "EXEC:cat", netns=ns)
    proc6, port6 = relay(procs, "TCP6-LISTEN:{port},reuseaddr,fork", "EXEC:cat", socket.AF_INET6, netns=ns)
    capture = Capture(CaptureConfig())
    try:
        found = [(lst.ip, lst.port, lst.pid) for lst in capture.listeners()]
        assert ("127.0.0.1", port4, proc4.pid) in found and ("::", port6, proc6.pid) in found
        made = {}
        for host, port in (("127.0.0.1", port4), ("::1", port6)):
            client = netns.run(ns, PYTHON, "-c", "import socket; s = socket.create_connection((%r, %d)); "
                               "print(s.getsockname()[1]); s.close()" % (host, port))
            made[port] = (host, int(client.stdout))
        rec = Recorder(capture)
        recs = rec.wait_for({proc4.pid, proc6.pid}, lambda r: len(conns(r, Action.ACCEPTED)) >= 2)
        got = {a.destination_port: a for a in conns(recs, Action.ACCEPTED)}
        assert set(got) == {port4, port6}
        for port, (host, cport) in made.items():
            acc = got[port]
            assert (acc.source_ip, acc.source_port, acc.destination_ip) == (host, cport, host)
            assert (acc.listener.ip, acc.listener.port) == (host, port)
        assert capture.stats.incomplete == 0
    finally:
        capture.close()


@pytest.mark.parametrize("listen, family, host", [
    ("TCP-LISTEN:{port},reuseaddr,fork,bind=127.0.0.1", socket.AF_INET, "127.0.0.1"),
    ("TCP6-LISTEN:{port},reuseaddr,fork", socket.AF_INET6, "::1"),   # wildcard: local address from /proc
])
def test_accept_whose_handshake_was_not_seen_is_counted_and_completed(procs, backend, listen, family, host):
    """Connections queued while the agent was not attached: the kernel side sees the accept but
    not the handshake (so only 8 bytes of an IPv6 peer). The listener, destination and full peer
    come from /proc (the listener for the relay child's connect too); the accept is counted."""
    bport, _ = backend
    proc, port = relay(procs, listen, f"TCP:127.0.0.1:{bport}", family)
    os.kill(proc.pid, signal.SIGSTOP)
    with socket.create_connection((host, port), timeout=5) as client:
        cport = client.getsockname()[1]   # handshake done by the kernel, waiting in the backlog
        capture = Capture(CaptureConfig())
        try:
            os.kill(proc.pid, signal.SIGCONT)
            client.sendall(b"x")
            assert client.recv(1) == b"x"
            recs = Recorder(capture).wait_for({proc.pid}, lambda r: conns(r, Action.ACCEPTED) and conns(
                r, Action.ATTEMPTED))
            (acc,) = conns(recs, Action.ACCEPTED)
            assert (acc.source_ip, acc.source_port) == (host, cport)
            assert (acc.destination_ip, acc.destination_port) == (host, port)
            assert (acc.listener.ip, acc.listener.port) == (host, port)
            (att,) = conns(recs, Action.ATTEMPTED)
            assert att.process.ppid == proc.pid and att.destination_port == bport
            assert att.listener.port == port and att.session_id == acc.session_id
            assert capture.stats.incomplete == 1
        finally:
            capture.close()


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_accepts_gone_before_their_drain_are_completed_from_the_attach_or_marked_partial(procs, backend):
    """IPv4 clients of a dual-stack relay queued before the capture attached, all reset before socat
    accepts them (as a port scanner's): the kernel side sees none of their address. The one open when
    the capture attached gets its whole source from the connections pinned then; the one reset before
    keeps `::` and is marked `source_partial`."""
    bport, _ = backend
    proc, port = relay(procs, "TCP6-LISTEN:{port},reuseaddr,fork,ipv6only=0", f"TCP:127.0.0.1:{bport}",
                       socket.AF_INET6)
    os.kill(proc.pid, signal.SIGSTOP)
    early, late = (socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2))
    ports = {"early": early.getsockname()[1], "late": late.getsockname()[1]}
    _reset(early)
    capture = Capture(CaptureConfig())
    try:
        _reset(late)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGCONT)
        recs = Recorder(capture).wait_for({proc.pid}, lambda r: len(conns(r, Action.ACCEPTED)) >= 2)
        got = {acc.source_port: (acc.source_ip, acc.source_partial) for acc in conns(recs, Action.ACCEPTED)}
        assert got == {ports["late"]: ("127.0.0.1", False), ports["early"]: ("::", True)}
        stats = capture.stats
        assert stats.incomplete >= 2 and stats.partial_sources >= 1 and stats.pinned >= 1   # other relays of the host too
    finally:
        capture.close()


OTHER_USER_AGENT = """
import json, socket, sys, time
from monitor.capture import Capture, CaptureConfig
from monitor.events import Action, PipelineError
relay, port = int(sys.argv[1]), int(sys.argv[2])
capture = Capture(CaptureConfig())
try:
    errors = [r for r in capture.poll(0) if isinstance(r, PipelineError)]
    listeners = [(lst.port, lst.pid) for lst in capture.listeners()]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        me = s.getsockname()[1]
        s.sendall(b"x")
        s.recv(1)
    accepted = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not accepted:
        for e in capture.poll(100):
            if isinstance(e, PipelineError):
                errors.append(e)
            elif getattr(e, "action", None) is Action.ACCEPTED and e.process.pid == relay:
                accepted.append((e.source_port, e.destination_port, e.listener and e.listener.port))
    print(json.dumps({"errors": [(e.stage, e.count, e.message) for e in errors], "listeners": listeners,
                      "client_port": me, "accepted": accepted, "uninspectable": capture.stats.uninspectable}))
finally:
    capture.close()
"""


def test_relay_of_another_user_without_ptrace_is_reported_and_captured(procs):
    """Without CAP_SYS_PTRACE/CAP_DAC_READ_SEARCH another user's relay cannot have its fds read:
    a PipelineError names it, and its listener is inferred from the socket owner, so its
    connections are still captured with their listener."""
    setpriv, capsh = require("setpriv"), require("capsh")
    port = free_port()
    proc = procs.start([setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups",
                        SOCAT, f"TCP-LISTEN:{port},reuseaddr,fork,bind=127.0.0.1", "EXEC:cat"])
    wait_listening(port)
    done = subprocess.run([capsh, "--drop=cap_sys_ptrace,cap_dac_read_search", "--", "-c",
                           'exec "$0" -c "$1" "$2" "$3"', PYTHON, OTHER_USER_AGENT, str(proc.pid), str(port)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    capture_errors = [(count, message) for stage, count, message in out["errors"] if stage == "capture"]
    assert len(capture_errors) == 1, out
    count, message = capture_errors[0]
    named = [int(p) for p in message.split("pid", 1)[1].split("(")[0].strip("s ").split(", ")]
    assert proc.pid in named and count == len(named) == out["uninspectable"]
    assert "CAP_SYS_PTRACE" in message and str(port) in message
    assert "cannot read the sockets" in done.stderr   # logged too
    assert (port, proc.pid) in [tuple(x) for x in out["listeners"]]
    assert out["accepted"] == [[out["client_port"], port, port]]


def test_child_that_execs_another_program_still_closes(recorder, procs):
    """EXEC:...,nofork: the relay child becomes `cat` (not watched); the close is still reported."""
    proc, port = relay(procs, "TCP-LISTEN:{port},reuseaddr,fork", "EXEC:cat,nofork")
    _, cport, got = connect(socket.AF_INET, "127.0.0.1", port)
    assert got == b"ping"
    recs = recorder.wait_for({proc.pid}, lambda r: conns(r, Action.CLOSED))
    (acc,) = conns(recs, Action.ACCEPTED)
    (closed,) = conns(recs, Action.CLOSED)
    assert acc.source_port == closed.source_port == cport and closed.session_id == acc.session_id


def test_kernel_losses_are_counted_and_surfaced(procs):
    """A one-page ring buffer not polled while connections happen: what the kernel
    could not deliver is counted exactly and reported as a PipelineError."""
    capture = Capture(CaptureConfig(ringbuf_pages=1))
    try:
        proc, port = relay(procs, "TCP-LISTEN:{port},reuseaddr,fork", "EXEC:cat")
        for _ in range(60):
            connect(socket.AF_INET, "127.0.0.1", port)
        time.sleep(1.0)
        records = capture.poll(0)
        errors = [r for r in records if isinstance(r, PipelineError)]
        lost = capture.stats.kernel_lost
        assert lost > 0
        assert [(e.stage, e.count) for e in errors] == [("capture", lost)]
    finally:
        capture.close()


def _accepts_of(records: list, pid: int) -> list[ConnectionEvent]:
    return [r for r in conns(records, Action.ACCEPTED) if r.process.pid == pid]


def test_records_come_in_batches_under_load_and_at_once_after_a_quiet_spell(procs, tmp_path):
    """`capture.batch`: under load the ring buffer is read at most every batch (here 50 ms), several
    connections at a time; a lone accept after a quiet spell is read at once, not a batch later."""
    exe = Path(shutil.copy(SOCAT, tmp_path / "socat-batch"))   # its own name: other tests' relays stay out
    capture = Capture(CaptureConfig(comms=(exe.name,), batch_s=0.05))
    try:
        proc = procs.start([str(exe), f"TCP-LISTEN:{(port := free_port())},reuseaddr,fork", "EXEC:cat"])
        wait_listening(port)
        lags = []
        for _ in range(5):
            capture.poll(300)   # a quiet spell: nothing of ours comes
            connect(socket.AF_INET, "127.0.0.1", port)
            deadline = time.monotonic() + 2
            while not (got := _accepts_of(capture.poll(100), proc.pid)) and time.monotonic() < deadline:
                pass
            assert got, "a lone accept was not read within 2 s"
            lags.append((time.monotonic_ns() - got[0].ktime_ns) / 1e6)
        assert sorted(lags)[2] < 25, f"lone accepts read {sorted(lags)} ms after the kernel saw them"

        stop = threading.Event()
        load = threading.Thread(target=lambda: [connect(socket.AF_INET, "127.0.0.1", port)
                                                for _ in range(400) if not stop.is_set()])
        load.start()
        drains, accepts = [], 0
        deadline = time.monotonic() + 10
        while (load.is_alive() or accepts < 400) and time.monotonic() < deadline:
            got = _accepts_of(capture.poll(100), proc.pid)
            if got:
                drains.append(time.monotonic())
                accepts += len(got)
        stop.set()
        load.join(10)
        gaps = sorted(b - a for a, b in zip(drains, drains[1:]))
        assert accepts == 400
        assert gaps and gaps[len(gaps) // 2] >= 0.04, f"{len(drains)} drains for {accepts} accepts under load"
    finally:
        capture.close()
