"""Who may cause a block (issue 16): relays of unprivileged users, and of other network namespaces,
are alerted on but never change the enforced namespace's table; each namespace has its own journal.

The agent enforces in a test namespace (--netns), never in the host's table. The unprivileged
"relay" is a Python interpreter named socat, run as nobody inside its own user + network namespace
(`unshare -Urn`), where nobody can give itself any address it likes.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.test_enforce import BAD4, GOOD4, GOOD6, SERVER4, Lab
from tests.integration.test_enforce import lab as lab  # noqa: F401  (the fixture)
from tests.lab import PYTHON, ROOT, AgentProcess, Processes, free_port, require, socat_monitor, wait_for, wait_listening

pytestmark = pytest.mark.integration

NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]

# Listens on PORT, connects to itself COUNT times from ADDRESS (configured inside by the caller), then waits.
SELF_CONNECT = """
import socket, sys, time
port, source, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(16)
for _ in range(count):
    client = socket.socket()
    client.bind((source, 0))
    client.connect((source, port))
    conn, _ = server.accept()
    conn.close()
    client.close()
    time.sleep(0.3)
print("done", flush=True)
time.sleep(30)
"""


# An echo server on PORT (what tests.netprobe expects of a relay), one thread per client.
ECHO = """
import socket, sys, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(16)
def echo(conn):
    with conn:
        data = conn.recv(64)
        if data:
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""


# Moves itself into a user + network namespace of its own after its exec, then runs SELF_CONNECT there.
UNSHARE_THEN_SELF_CONNECT = """
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x40000000) == 0, os.strerror(ctypes.get_errno())   # CLONE_NEWUSER | CLONE_NEWNET
uid = sys.argv[4]
open("/proc/self/setgroups", "w").write("deny")
open("/proc/self/uid_map", "w").write(f"0 {uid} 1")
open("/proc/self/gid_map", "w").write(f"0 {uid} 1")
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", sys.argv[2] + "/32", "dev", "lo"], check=True)
exec(sys.argv[5])
"""


@pytest.fixture
def nobody_socat():
    """A Python interpreter named socat that the user nobody can run (the test's tmp_path is root-only)."""
    directory = tempfile.mkdtemp(prefix="smt-socat-")
    os.chmod(directory, 0o755)
    link = Path(directory) / "socat"
    link.symlink_to(os.path.realpath(PYTHON))
    yield str(link)
    link.unlink()
    os.rmdir(directory)


def _policy(tmp_path: Path, port: int) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nlisteners:\n  - name: lab-relay\n    port: {port}\n"
                      f"    allow_sources: [{GOOD4}, {GOOD6}]\n    action: block\n"
                      "defaults:\n  unknown_listener: ignore\n")
    return policy


def test_an_unprivileged_relay_in_its_own_namespaces_blocks_nothing(lab: Lab, procs: Processes, tmp_path: Path,
                                                                   nobody_socat: str) -> None:
    """nobody, in its own user + network namespace, runs "socat" on the port the policy declares
    `action: block` and connects to it from BAD4: the policy's entry (naming no namespace) means only
    the relays of the enforced namespace, so the agent alerts that a relay elsewhere listens on the
    declared port, and blocks nothing: BAD4 stays out of the enforced namespace's table (a connection
    of BAD4 to the real relay there would be an offence of its own, so the table is read instead)."""
    agent = AgentProcess(tmp_path, "--policy", str(_policy(tmp_path, lab.port)), "--netns", lab.server,
                         "--duration", "120")
    try:
        agent.wait_ready()
        inside = (f"ip link set lo up && ip addr add {BAD4}/32 dev lo && "
                  f'exec {nobody_socat} -c "$0" {lab.port} {BAD4} 5')
        forged = procs.start([require("setpriv"), *NOBODY, require("unshare"), "-Urn", "sh", "-c", inside,
                              SELF_CONNECT], stdout=subprocess.PIPE, text=True)
        assert forged.stdout.readline().strip() == "done", forged.stderr.read()

        def denied():
            return [d for d in agent.documents() if d["event"]["kind"] == "alert"
                    and d.get("source", {}).get("ip") == BAD4 and d["rule"]["id"] == "policy.unknown_listener"]
        [alert] = wait_for(denied, timeout=30)
        time.sleep(1.0)   # the repeats (deduplicated) are decided too: give them the time to reach the decider
        assert BAD4 not in lab.table(), "the forged source must not be blocked in the enforced namespace"
        assert lab.reach(GOOD4)
    finally:
        agent.stop()
    docs = agent.documents()
    assert not [d for d in docs if d["event"].get("action") in ("address_blocked", "block_refused")], docs
    assert alert["user"]["id"] == "65534" and alert["process"]["name"] == "socat"
    said = alert["rule"]["description"]
    assert "started by uid 65534" in said and "network namespace" in said, said
    assert "declares port" in said and "only for other relays (lab-relay)" in said, said
    assert alert["socat"]["netns"]["inode"] != os.stat(f"/run/netns/{lab.server}").st_ino


def test_a_relay_of_a_non_root_user_in_the_enforced_namespace_blocks_only_when_trusted(
        lab: Lab, procs: Processes, tmp_path: Path, nobody_socat: str) -> None:
    """nobody runs "socat" in the enforced namespace itself, on a second declared `action: block`
    port, and a disallowed client connects from the clients namespace: not blocked (it runs as a
    non-root user); with `trust_unprivileged: true` on the listener, blocked."""
    port = lab.port + 1 if lab.port < 65000 else lab.port - 1
    for trusted in (False, True):
        work = tmp_path / ("trusted" if trusted else "untrusted")
        work.mkdir()
        policy = _policy(work, port)
        if trusted:
            policy.write_text(policy.read_text().replace("    action: block\n",
                                                         "    action: block\n    trust_unprivileged: true\n"))
        agent = AgentProcess(work, "--policy", str(policy), "--netns", lab.server, "--duration", "120")
        try:
            agent.wait_ready()
            relay = procs.start(["ip", "netns", "exec", lab.server, require("setpriv"), *NOBODY, nobody_socat,
                                 "-c", ECHO, str(port)], cwd=tempfile.gettempdir())
            probe = Lab(lab.server, lab.clients, port, lab.netns, lab.state_file)
            wait_for(lambda: probe.reach(GOOD4), timeout=20, interval=0.2)
            assert probe.reach(BAD4), "the offender's first connection gets through: it is what raises the alert"
            if trusted:
                wait_for(lambda: not probe.reach(BAD4, timeout=0.3), timeout=15, interval=0.1)
            else:
                [alert] = wait_for(lambda: [d for d in agent.documents() if d["event"]["kind"] == "alert"
                                            and d.get("source", {}).get("ip") == BAD4], timeout=30)
                time.sleep(1.0)
                assert probe.reach(BAD4) and BAD4 not in lab.table()
                assert "started by uid 65534, not root" in alert["socat"]["block"]["skipped"]
        finally:
            agent.stop()
            procs.stop(relay)


def test_a_journal_made_in_one_namespace_is_never_restored_into_another(lab: Lab, netns, tmp_path: Path) -> None:
    """A block made (and journalled) in another namespace, with the same state directory, and the same
    journal left as the host's: an agent enforcing in the lab's namespace restores neither."""
    other, state = netns.add("other"), tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {state}\n")
    added = socat_monitor("blocks", "add", BAD4, "--ttl", "10m", "--netns", other, "--config", str(config))
    assert added.returncode == 0, added.stderr
    journal = state / f"blocks-{other}.json"
    assert BAD4 in journal.read_text()
    (state / "blocks-host.json").write_text(journal.read_text())
    agent = AgentProcess(tmp_path, "--netns", lab.server, "--duration", "60")
    try:
        agent.wait_ready()
        assert BAD4 not in lab.table() and lab.reach(BAD4)
    finally:
        agent.stop()
    assert not [d for d in agent.documents() if d.get("socat", {}).get("block", {}).get("target") == BAD4]
    assert BAD4 in netns.run(other, "nft", "list", "table", "inet", "socat_monitor").stdout, "kept where it was made"
    assert BAD4 in journal.read_text() and not (state / f"blocks-{lab.server}.json").read_text().strip()


def test_a_root_relay_that_drops_to_su_nobody_still_blocks(lab: Lab, procs: Processes, tmp_path: Path) -> None:
    """What the audit recommends (`su=nobody`) keeps enforcement: the relay was started by root (socat
    1.7 still accepts as root and drops in the child; the decider judges the uid it was exec'd as anyway)."""
    port = lab.port + 2 if lab.port < 65000 else lab.port - 2
    agent = AgentProcess(tmp_path, "--policy", str(_policy(tmp_path, port)), "--netns", lab.server, "--duration", "120")
    try:
        agent.wait_ready()
        procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr,su=nobody", "EXEC:cat", netns=lab.server)
        probe = Lab(lab.server, lab.clients, port, lab.netns, lab.state_file)
        wait_for(lambda: probe.reach(GOOD4), timeout=20, interval=0.2)
        assert probe.reach(BAD4), "the offender's first connection gets through: it is what raises the alert"
        wait_for(lambda: not probe.reach(BAD4, timeout=0.3), timeout=15, interval=0.1)
    finally:
        agent.stop()
    [alert] = [d for d in agent.documents() if d["event"]["kind"] == "alert" and d["rule"]["id"] == "policy.source_denied"]
    assert alert["socat"]["block"]["target"] == BAD4 and alert["process"]["name"] == "socat"


def test_a_trusted_unprivileged_relay_that_moves_to_namespaces_of_its_own_blocks_nothing(
        lab: Lab, procs: Processes, tmp_path: Path, nobody_socat: str) -> None:
    """trust_unprivileged on the listener; nobody's "socat" is exec'd in the enforced namespace, then
    unshares a user + network namespace of its own and forges connections from BAD4 there: its
    namespaces are read again at each event, so the entry (meaning the enforced namespace's relays) no
    longer judges it: an alert says a relay elsewhere listens on the declared port, nothing is blocked."""
    policy = _policy(tmp_path, lab.port)
    policy.write_text(policy.read_text().replace("    action: block\n", "    action: block\n    trust_unprivileged: true\n"))
    agent = AgentProcess(tmp_path, "--policy", str(policy), "--netns", lab.server, "--duration", "120")
    try:
        agent.wait_ready()
        forged = procs.start(["ip", "netns", "exec", lab.server, require("setpriv"), *NOBODY, nobody_socat, "-c",
                              UNSHARE_THEN_SELF_CONNECT, str(lab.port), BAD4, "5", "65534", SELF_CONNECT],
                             stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
        assert forged.stdout.readline().strip() == "done", forged.stderr.read()
        [alert] = wait_for(lambda: [d for d in agent.documents() if d["event"]["kind"] == "alert"
                                    and d.get("source", {}).get("ip") == BAD4], timeout=30)
        time.sleep(1.0)
        assert BAD4 not in lab.table()
    finally:
        agent.stop()
    assert alert["rule"]["id"] == "policy.unknown_listener" and "network namespace" in alert["rule"]["description"]


OTHER4 = "10.77.0.4"   # allowed by the first namespace's entry, not by the second's


def _site(netns, procs: Processes, port: int) -> Lab:
    """A server namespace with a socat relay on `port` (to an echo backend) and a clients namespace."""
    server, clients = netns.add("site"), netns.add("siteclients")
    netns.link(server, [f"{SERVER4}/24"], clients, [f"{GOOD4}/24", f"{BAD4}/24", f"{OTHER4}/24"])
    backend = free_port()
    procs.start([PYTHON, "-m", "tests.echo", str(backend)], netns=server, cwd=ROOT)
    wait_listening(backend, netns=server)
    procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr", f"TCP:127.0.0.1:{backend}", netns=server)
    wait_listening(port, netns=server)
    site = Lab(server, clients, port, netns, "")
    assert site.reach(GOOD4) and site.reach(BAD4) and site.reach(OTHER4)
    return site


def test_two_namespaces_each_relay_judged_by_its_own_entry_and_blocked_only_in_its_own_table(
        netns, procs: Processes, tmp_path: Path) -> None:
    """One agent enforces in two namespaces (--netns twice), each with a relay on the same port and an
    entry of its own (`netns:`): a source only the first entry refuses is blocked in the first table only,
    one only the second refuses in the second only; each journal holds its own; a restart enforcing in the
    first alone restores only the first's block, and the second's table is left as it was."""
    require("nft")
    port = free_port()
    a, b = _site(netns, procs, port), _site(netns, procs, port)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nlisteners:\n"
        f"  - {{name: relay-a, port: {port}, netns: {a.server}, allow_sources: [{GOOD4}, {OTHER4}], action: block}}\n"
        f"  - {{name: relay-b, port: {port}, netns: {b.server}, allow_sources: [{GOOD4}, {BAD4}], action: block}}\n"
        "defaults:\n  unknown_listener: alert\n")
    agent = AgentProcess(tmp_path, "--policy", str(policy), "--netns", a.server, "--netns", b.server,
                         "--duration", "120")
    try:
        agent.wait_ready()
        assert a.reach(BAD4) and b.reach(OTHER4), "each offender's first connection gets through"
        assert a.reach(OTHER4) and b.reach(BAD4), "allowed by the entry of its own namespace"
        wait_for(lambda: not a.reach(BAD4, timeout=0.3), timeout=20, interval=0.2)
        wait_for(lambda: not b.reach(OTHER4, timeout=0.3), timeout=20, interval=0.2)
        assert a.reach(OTHER4) and b.reach(BAD4) and a.reach(GOOD4) and b.reach(GOOD4)
        assert BAD4 in a.table() and OTHER4 not in a.table()
        assert OTHER4 in b.table() and BAD4 not in b.table()
    finally:
        agent.stop()
    alerts = {(d["source"]["ip"], d["socat"]["listener"]["name"]) for d in agent.documents()
              if d["event"]["kind"] == "alert" and d["rule"]["id"] == "policy.source_denied"
              and d["socat"]["listener"]["port"] == port}
    assert alerts == {(BAD4, "relay-a"), (OTHER4, "relay-b")}, alerts
    accepted = [d for d in agent.documents() if d["event"].get("action") == "connection_accepted"
                and d["socat"]["listener"]["port"] == port and d["process"]["name"] == "socat"]
    assert {d["socat"]["netns"]["name"] for d in accepted} == {a.server, b.server}
    state = tmp_path / "state"
    assert BAD4 in (state / f"blocks-{a.server}.json").read_text()
    assert OTHER4 in (state / f"blocks-{b.server}.json").read_text()
    assert BAD4 not in (state / f"blocks-{b.server}.json").read_text()

    netns.run(a.server, "nft", "delete", "table", "inet", "socat_monitor")
    again = AgentProcess(tmp_path, "--netns", a.server, "--duration", "60")
    try:
        again.wait_ready()
        wait_for(lambda: BAD4 in a.table(), timeout=20, interval=0.2)
        assert OTHER4 not in a.table() and a.reach(OTHER4)
    finally:
        again.stop()
    assert OTHER4 in b.table() and BAD4 not in b.table(), "a namespace not enforced in is left as it was"
