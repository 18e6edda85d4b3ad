"""An agent started while dual-stack relays hold a backlog of IPv4 connections it never saw made.

Three socat relays (TCP6-LISTEN, ipv6only=0, fork) in a server namespace are
stopped (SIGSTOP) while a client in its own namespace queues connections to
each: their handshakes are done by the kernel and they wait in the accept
queues. Some are reset before the agent starts, some after it attached (as
`nmap -sT` resets: gone before the agent reads the accept), the rest stay open.
Then the relays go on and accept them all. For a dual-stack relay the kernel
side sees of such an accept only socat's 16-byte accept buffer: of an IPv4
client (::ffff:a.b.c.d) not one byte. The agent must write the ones open when it
attached with their whole IPv4 source, the ones reset before it started with
`socat.source_partial: true`, and never judge a made-up source: no alert may
name `::` or `::/64` (three listeners "touched" by it would be a scan).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab import PYTHON, ROOT, AgentProcess, Namespaces, Processes, free_port, require, start_echo, wait_for

pytestmark = pytest.mark.integration

RELAYS = 3
PER_GROUP = 2                                  # connections per relay in each group
GROUPS = ("open", "late", "early")             # stays open; reset after the agent attached; reset before it starts
SERVER, CLIENT = "192.0.2.1", "192.0.2.88"     # documentation range, only inside this test's namespaces
MADE_UP = ipaddress.ip_network("::/64")


def _queue(procs: Processes, client_ns: str, ports: list[int]) -> tuple[subprocess.Popen, dict[int, str]]:
    """The client holding the queued connections, and each connection's group by its local port."""
    count = PER_GROUP * len(GROUPS)
    queue = procs.start([PYTHON, "-m", "tests.netprobe", "queue", CLIENT, SERVER, ",".join(map(str, ports)),
                         str(count), "120"], netns=client_ns, cwd=ROOT, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
    line = queue.stdout.readline().split()
    assert len(line) == count * len(ports), f"the client must queue {count} connections per relay: {line}"
    group_of = {int(word.split(":")[1]): GROUPS[i % count // PER_GROUP] for i, word in enumerate(line)}
    return queue, group_of


def _reset(queue: subprocess.Popen, group_of: dict[int, str], group: str) -> None:
    indexes = [i for i, group_here in enumerate(group_of.values()) if group_here == group]
    queue.stdin.write(f"reset {' '.join(map(str, indexes))}\n")
    queue.stdin.flush()
    assert queue.stdout.readline().split() == ["reset", str(len(indexes))]


def _named(alert: dict) -> set:
    """The addresses and networks an alert names as its source."""
    socat = alert.get("socat", {})
    words = [alert.get("source", {}).get("ip"), socat.get("source_network"), socat.get("block", {}).get("target"),
             *socat.get("top_sources", [])]
    return {ipaddress.ip_network(word, strict=False) for word in words if word}


def test_a_backlog_queued_before_the_agent_keeps_its_ipv4_sources_or_is_marked_partial(
        netns: Namespaces, procs: Processes, tmp_path: Path) -> None:
    require("socat")
    server, client = netns.add("server"), netns.add("client")
    netns.link(server, [f"{SERVER}/24"], client, [f"{CLIENT}/24"])
    backend = free_port()
    start_echo(procs, backend, netns=server)
    ports = [free_port() for _ in range(RELAYS)]
    relays = [procs.socat(f"TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0,backlog=64", f"TCP:127.0.0.1:{backend}",
                          port=port, netns=server) for port in ports]
    for relay in relays:
        os.kill(relay.pid, signal.SIGSTOP)   # accepts nothing: connections wait in its accept queue
    queue, group_of = _queue(procs, client, ports)
    _reset(queue, group_of, "early")
    listeners = "".join(f"  - name: relay-{i}\n    port: {port}\n    allow_sources: [{CLIENT}]\n"
                        for i, port in enumerate(ports))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nlisteners:\n{listeners}defaults:\n  unknown_listener: ignore\n")
    agent = AgentProcess(tmp_path, "--policy", str(policy), "--netns", server, "--duration", "120")
    try:
        agent.wait_ready(timeout=120)
        wait_for(lambda: "agent started" in agent.text_log(), timeout=30)   # logged once the capture is attached
        _reset(queue, group_of, "late")
        time.sleep(0.5)                 # gone from the kernel's tables before any relay accepts them
        for relay in relays:
            os.kill(relay.pid, signal.SIGCONT)
        wait_for(lambda: len(_accepted(agent.documents(), ports)) >= len(group_of), timeout=30)
        time.sleep(2)                   # the detectors' ticks after the last accept
    finally:
        for relay in relays:
            if relay.poll() is None:
                os.kill(relay.pid, signal.SIGCONT)
        queue.stdin.close()
        agent.stop(timeout=60)
    docs = agent.documents()
    accepted = _accepted(docs, ports)
    by_group: dict[str, list[dict]] = {group: [] for group in GROUPS}
    for doc in accepted:
        by_group[group_of[doc["source"]["port"]]].append(doc)
    seen = {group: [(d["source"]["ip"], d["source"]["port"], d.get("socat", {}).get("source_partial"))
                    for d in found] for group, found in by_group.items()}
    assert all(len(found) == PER_GROUP * RELAYS for found in by_group.values()), f"every accept once: {seen}"
    for group in ("open", "late"):
        wrong = [s for s in seen[group] if s[0] != CLIENT or s[2] is not None]
        assert not wrong, f"{group}: open when the agent attached, so its whole IPv4 source is known: {seen}"
    wrong = [s for s in seen["early"] if s[0] == CLIENT or s[2] is not True]
    assert not wrong, f"early: gone before the agent started, so its source is unknown and marked: {seen}"
    made_up = [f"{a['rule']['id']}: {a['message']}" for a in docs if a["event"]["kind"] == "alert"
               and any(net.version == 6 and net.subnet_of(MADE_UP) for net in _named(a))]
    assert not made_up, f"an alert names a source the agent does not know: {made_up}"


def _accepted(docs: list[dict], ports: list[int]) -> list[dict]:
    return [d for d in docs if d["event"].get("action") == "connection_accepted"
            and d["destination"]["port"] in ports]
