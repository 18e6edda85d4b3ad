"""`action: drop` in the kernel: a listener's allowlist enforced before the handshake.

Uses test_enforce's lab (a real socat relay in a "server" namespace, clients
on a veth); the Enforcer acts only in the server namespace.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from monitor.control import request
from monitor.enforce import Enforcer
from monitor.enforce import nft
from monitor.enforce.nft import DropListener
from monitor.events import Action
from monitor.status import parse_status
from tests.lab import PYTHON, ROOT, AgentProcess, Processes, free_port, wait_for, wait_listening
from tests.integration.test_enforce import BAD4, BAD6, GOOD4, GOOD6, NET_CLIENT, SERVER4, SERVER6, Lab, lab  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


def _listener(lab: Lab, *sources: str) -> DropListener:
    return DropListener("web", lab.port, None, tuple(ipaddress.ip_network(s) for s in sources))


def test_disallowed_sources_get_no_syn_ack_and_a_reload_lets_them_in(lab: Lab) -> None:
    enforcer = Enforcer(lab.config())
    enforcer.start([lab.port], [_listener(lab, f"{GOOD4}/32", f"{GOOD6}/128")])
    assert not lab.reach(BAD4, timeout=0.5), "the first connect from a disallowed v4 source must time out"
    assert not lab.reach(BAD6, timeout=0.5), "the same for IPv6"
    assert lab.reach(GOOD4) and lab.reach(GOOD6)
    first = {e.source_ip: e for e in enforcer.drop_events(time.time_ns())}
    assert set(first) == {BAD4, BAD6}
    assert all(e.action is Action.CONNECTION_DROPPED and e.dropped_packets >= 1 and e.listener.name == "web"
               and e.listener.port == lab.port for e in first.values())
    assert all(e.source_port and e.source_port >= 1024 for e in first.values()), "the first dropped SYN's port"
    assert lab.config().netns and all(e.netns == lab.config().netns for e in first.values()), \
        "each drop says the namespace whose rule dropped it"
    assert enforcer.drop_events(time.time_ns()) == [], "nothing new dropped: nothing reported"
    assert not lab.reach(BAD4, timeout=0.5)
    [again] = enforcer.drop_events(time.time_ns())
    assert again.action is Action.DROP_COUNTERS and again.source_ip == BAD4
    assert again.dropped_packets > first[BAD4].dropped_packets, "later drops are counted, one update per read"
    [total] = enforcer.drop_totals()
    assert (total.listener, total.sources, total.netns) == ("web", 2, lab.config().netns)
    assert total.packets >= again.dropped_packets + 1, \
        "the rules' named counters (v4 + v6) count every SYN they dropped"
    enforcer.set_drops([_listener(lab, f"{GOOD4}/32", f"{GOOD6}/128", f"{BAD4}/32")])
    assert lab.reach(BAD4), "a reload adding the address lets it connect at once"
    assert not lab.reach(BAD6, timeout=0.5)
    enforcer.set_drops([])
    assert lab.reach(BAD6) and "drop web" not in lab.table()
    enforcer.close()


def test_empty_list_drops_everyone_but_the_host_itself(lab: Lab) -> None:
    enforcer = Enforcer(lab.config())
    enforcer.start([lab.port], [DropListener("nobody", lab.port, "::", ())])
    assert not lab.reach(GOOD4, timeout=0.5) and not lab.reach(GOOD6, timeout=0.5)
    for address in ("127.0.0.1", "::1", SERVER4, SERVER6):
        out = lab.netns.run(lab.server, PYTHON, "-c", "import socket, sys; socket.create_connection((sys.argv[1], "
                            "int(sys.argv[2])), 2).close(); print('ok')", address, str(lab.port), check=False)
        assert out.stdout.strip() == "ok", f"the host's own connects to {address} (loopback clients, the relay's " \
                                           "backends connecting back) arrive on lo and are never dropped"
    assert {e.source_ip for e in enforcer.drop_events(time.time_ns())} == {GOOD4, GOOD6}, \
        "only the outside clients were dropped"
    enforcer.close()


def test_sources_beyond_a_full_dropped_map_are_dropped_and_counted(lab: Lab, monkeypatch) -> None:
    monkeypatch.setattr(nft, "DROPPED_SIZE", 1)
    enforcer = Enforcer(lab.config())
    enforcer.start([lab.port], [_listener(lab, f"{GOOD4}/32")])
    assert not lab.reach(BAD4, timeout=0.5), "remembered in the map"
    assert not lab.reach(NET_CLIENT, timeout=0.5), "the map is full: the second rule drops it all the same"
    assert lab.reach(GOOD4)
    assert [e.source_ip for e in enforcer.drop_events(time.time_ns())] == [BAD4]
    [total] = enforcer.drop_totals()
    assert (total.packets, total.sources) == (2, 1), "counted, not remembered"
    enforcer.close()


def test_the_table_check_rebuilds_the_drop_rule(lab: Lab) -> None:
    enforcer = Enforcer(lab.config())
    enforcer.start([lab.port], [_listener(lab, f"{GOOD4}/32")])
    lab.netns.run(lab.server, "nft", "flush", "ruleset")
    assert lab.reach(BAD4) or enforcer.rebuilds, "gone (unless the watchdog already rebuilt it, under load)"
    wait_for(lambda: enforcer.heal() or enforcer.rebuilds, timeout=5)
    assert enforcer.rebuilds == 1
    assert not lab.reach(BAD4, timeout=0.5) and lab.reach(GOOD4)
    enforcer.close()


def test_agent_reports_each_dropped_source_within_2s_and_a_reload_lets_it_in(lab: Lab, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    text = (f"version: 1\nlisteners:\n  - name: lab-relay\n    port: {lab.port}\n"
            "    allow_sources: [{sources}]\n    action: drop\ndefaults:\n  unknown_listener: ignore\n")
    policy.write_text(text.format(sources=f"{GOOD4}, {GOOD6}"))
    metrics = free_port()
    agent = AgentProcess(tmp_path, "--policy", str(policy), "--netns", lab.server, "--duration", "120",
                         "--metrics", f"127.0.0.1:{metrics}")
    try:
        agent.wait_ready()
        assert lab.reach(GOOD4) and lab.reach(GOOD6)
        first_drop_ns = time.time_ns()
        assert not lab.reach(BAD4, timeout=0.5), "the very first connect from a disallowed source gets no SYN-ACK"
        assert not lab.reach(BAD6, timeout=0.5)
        assert lab.reach(GOOD4), "allowed clients connect normally meanwhile"
        time.sleep(2.5)
        [row] = parse_status(request(str(agent.socket), "status")).drops
        assert (row.listener, row.port, row.sources, row.dry_run) == ("lab-relay", lab.port, 2, False)
        assert row.packets >= 2, "the status counts the dropped SYNs"
        exported = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert f'socat_monitor_enforce_listener_dropped_packets_total{{listener="lab-relay"}} {row.packets:.1f}' \
               in exported, exported
        assert 'socat_monitor_enforce_listener_dropped_sources{listener="lab-relay"} 2.0' in exported, exported
        policy.write_text(text.format(sources=f"{GOOD4}, {GOOD6}, {BAD4}"))
        os.kill(agent.proc.pid, signal.SIGHUP)
        wait_for(lambda: lab.reach(BAD4, timeout=0.3), timeout=10, interval=0.1)
        assert not lab.reach(BAD6, timeout=0.5) and lab.reach(GOOD6)
    finally:
        agent.stop()
    docs = agent.documents()
    dropped = {d["source"]["ip"]: d for d in docs if d["event"].get("action") == "connection_dropped"}
    assert set(dropped) == {BAD4, BAD6}, dropped
    for doc in dropped.values():
        assert doc["destination"]["port"] == lab.port and doc["socat"]["listener"]["name"] == "lab-relay"
        assert doc["socat"]["drop"]["packets"] >= 1
        assert _ns(doc["@timestamp"]) - first_drop_ns < 3e9, "reported within 2 s of the drop (+ the 0.5 s connect)"
    alerts = [d for d in docs if d["event"]["kind"] == "alert" and d["rule"]["id"] == "policy.source_denied"]
    assert {a["source"]["ip"] for a in alerts} >= {BAD4, BAD6}
    assert all(a["event"]["outcome"] == "failure" for a in alerts)
    accepted = [d for d in docs if d["event"].get("action") == "connection_accepted"
                and d["source"]["ip"] == BAD6]
    assert accepted == [], "socat never accepted the dropped source"


def _ns(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1e9)


def test_dry_run_counts_what_it_would_drop_and_lets_it_in(lab: Lab) -> None:
    enforcer = Enforcer(lab.config(dry_run=True))
    enforcer.start([lab.port], [_listener(lab, f"{GOOD4}/32")])
    assert lab.reach(BAD4), "--dry-run drops nothing"
    rule = [line for line in lab.table().splitlines() if "drop web" in line]
    assert rule and all(" drop comment" not in line and 'counter name "listener_drops0_' in line for line in rule), rule
    [would] = enforcer.drop_events(time.time_ns())
    assert (would.action, would.source_ip, would.dry_run) == (Action.CONNECTION_DROPPED, BAD4, True)
    [total] = enforcer.drop_totals()
    assert total.dry_run and total.sources == 1 and total.packets >= 1
    enforcer.close()


def test_a_dry_run_reload_that_adds_the_first_drop_listener_counts_only(lab: Lab, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    head = "version: 1\ndefaults:\n  unknown_listener: ignore\nlisteners:\n"
    policy.write_text(head + f"  - name: other\n    port: {free_port()}\n    action: alert\n")
    agent = AgentProcess(tmp_path, "--policy", str(policy), "--netns", lab.server, "--dry-run", "--duration", "120")
    try:
        agent.wait_ready()
        assert "drop lab-relay" not in lab.netns.run(lab.server, "nft", "list", "ruleset").stdout
        policy.write_text(head + f"  - name: lab-relay\n    port: {lab.port}\n    allow_sources: [{GOOD4}]\n"
                          "    action: drop\n")
        os.kill(agent.proc.pid, signal.SIGHUP)
        wait_for(lambda: "drop lab-relay" in lab.netns.run(lab.server, "nft", "list", "ruleset").stdout, timeout=10)
        assert lab.reach(BAD4), "--dry-run: the new rule counts, never drops"
        wait_for(lambda: [d for d in agent.documents() if d["event"].get("action") == "connection_dropped"],
                 timeout=10)
    finally:
        agent.stop()
    docs = agent.documents()
    [would] = [d for d in docs if d["event"].get("action") == "connection_dropped"]
    assert would["source"]["ip"] == BAD4 and would["socat"]["drop"]["dry_run"] is True and would["source"]["port"]
    [alert] = [d for d in docs if d["event"]["kind"] == "alert" and d["rule"]["id"] == "policy.source_denied"
               and d.get("socat", {}).get("listener", {}).get("name") == "lab-relay"
               and "would have dropped" in d["message"]]
    assert alert["source"]["ip"] == BAD4


def test_a_relay_that_listens_after_the_agent_started_is_covered(lab: Lab, procs: Processes) -> None:
    late, backend = free_port(), free_port()
    enforcer = Enforcer(lab.config())
    mapped = ipaddress.ip_network(f"::ffff:{GOOD4}/128")   # an IPv4-mapped entry allows the IPv4 client
    enforcer.start([lab.port], [DropListener("late", late, None, (mapped,))])
    procs.start([PYTHON, "-m", "tests.echo", str(backend)], netns=lab.server, cwd=ROOT)
    wait_listening(backend, netns=lab.server)
    procs.socat(f"TCP6-LISTEN:{late},fork,reuseaddr,ipv6only=0", f"TCP:127.0.0.1:{backend}", netns=lab.server)
    wait_listening(late, netns=lab.server)
    probe = Lab(lab.server, lab.clients, late, lab.netns, lab.state_file)
    assert probe.reach(GOOD4)
    assert not probe.reach(BAD4, timeout=0.5), "an IPv4 client of a dual-stack (IPv4-mapped) listener is dropped"
    assert not probe.reach(BAD6, timeout=0.5)
    enforcer.close()


FLOOD = """
import socket, sys, time
src, dst, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
socks = []
for _ in range(n):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.setblocking(False)
    s.connect_ex((dst, port))
    socks.append(s)
time.sleep(0.3)   # under the 1 s SYN retransmission: one SYN each
for s in socks:
    s.close()
"""


def test_a_flood_from_disallowed_sources_forks_nothing_and_is_counted_exactly(lab: Lab, procs: Processes,
                                                                             tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "relay.log"
    procs.socat(f"TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0,backlog=1024", "PIPE", netns=lab.server,
                options=("-d", "-d", "-lf", str(log)))
    wait_listening(port, netns=lab.server)
    relay = Lab(lab.server, lab.clients, port, lab.netns, lab.state_file)
    enforcer = Enforcer(lab.config())
    enforcer.start([port], [DropListener("flooded", port, None, tuple(ipaddress.ip_network(a) for a in (GOOD4, GOOD6)))])
    assert relay.reach(GOOD4), "before"
    sent = 500
    floods = [procs.start([PYTHON, "-c", FLOOD, src, dst, str(port), str(sent)], netns=lab.clients)
              for src, dst in ((BAD4, SERVER4), (BAD6, SERVER6))]
    assert relay.reach(GOOD4) and relay.reach(GOOD6), "during"
    for flood in floods:
        assert flood.wait(30) == 0, flood.stderr.read()
    assert relay.reach(GOOD6), "after"
    counts = {e.source_ip: e.dropped_packets for e in enforcer.drop_events(time.time_ns())}
    assert counts == {BAD4: sent, BAD6: sent}, "one drop counted per SYN the flood sent"
    [total] = enforcer.drop_totals()
    assert (total.packets, total.sources) == (2 * sent, 2)
    enforcer.close()
    text = wait_for(lambda: log.read_text() if log.read_text().count("forked off child") >= 4 else None, timeout=5)
    accepted = [line for line in text.splitlines() if "accepting connection from" in line]
    assert len(accepted) == 4 and not any(BAD4 in line or BAD6 in line for line in accepted), accepted
    assert text.count("forked off child") == 4, "the relay forked for the four allowed connects only"
