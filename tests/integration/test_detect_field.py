"""Issue 14 as a user meets it: a real port scanner and a real HTTP load tool against idle socat relays.

A server namespace holds ten socat relays (dual-stack, fork) to one HTTP backend
(tests.httpd), idle but for relay 0, where a benign client trickles two requests
a second throughout. Each client role has a namespace and a veth of its own: the
scanner runs `nmap -sT` over the ten relay ports, the flooder runs `ab` (thousands
of requests) through relay 5, and an IPv6 attacker rotates its source through a
hundred addresses of one /64 (tests.netprobe rotate). The agent runs with
`--policy` declaring the ten listeners and `--learning-period 20s`; it enforces
only in the server namespace and writes NDJSON in tmp_path.

Flagged means an anomaly alert of the scan rule (the scanner) or the source rate
rule (the flooder) naming the source: its address, or its /64 for the rotating
attacker. The alert must be made (event.created: what a SOC sees) within 2 s of
the attack's start, or of the agent starting to watch when the attack was
already under way; no alert may ever name the benign client. A failure lists
every alert with both its @timestamp (the event time of the connection that
crossed the rule) and event.created.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitor.ecs import iso_timestamp, parse_timestamp
from tests.lab import PYTHON, ROOT, AgentProcess, Namespaces, Processes, free_port, require, wait_listening

pytestmark = pytest.mark.integration

LEARNING_S = 20
FLAG_WITHIN_S = 2.0
RELAYS = 10
FLOODED = 5                                          # the relay ab goes through (idle before)
# Documentation ranges, only ever inside this test's namespaces: (the server's end, the client's end) per role.
BENIGN = ("192.0.2.1", "192.0.2.141")
SCANNER = ("198.51.100.1", "198.51.100.143")
FLOODER = ("203.0.113.1", "203.0.113.147")
ROTATOR_SERVER, ROTATOR_NET = "2001:db8:14::1", "2001:db8:14::/64"
ROTATOR_SCAN, ROTATOR_FLOOD = "2001:db8:14::1:0", "2001:db8:14::2:0"   # first of 10 and of 100 addresses
ROTATOR_FLOOD_ADDRESSES, ROTATOR_FLOOD_CONNECTIONS = 100, 800   # 8 each: no address alone reaches a rate floor


@dataclass
class Field:
    netns: Namespaces
    procs: Processes
    tmp: Path
    server: str
    clients: dict[str, str]          # role -> namespace
    ports: list[int]

    def agent(self) -> AgentProcess:
        listeners = "".join(f"  - name: relay-{i}\n    port: {port}\n" for i, port in enumerate(self.ports))
        policy = self.tmp / "policy.yaml"
        policy.write_text(f"version: 1\nlisteners:\n{listeners}defaults:\n  unknown_listener: ignore\n")
        return AgentProcess(self.tmp, "--policy", str(policy), "--learning-period", f"{LEARNING_S}s",
                            "--netns", self.server, "--duration", "150")

    def trickle(self) -> subprocess.Popen:
        """The benign client: two requests a second to relay 0 until stopped (150 s at most)."""
        return self.procs.start([PYTHON, "-m", "tests.netprobe", "trickle", BENIGN[1], BENIGN[0], str(self.ports[0]),
                                 "150", "2"], netns=self.clients["benign"], cwd=ROOT, stdout=subprocess.PIPE, text=True)

    def nmap(self) -> list[str]:
        return [require("nmap"), "-sT", "-Pn", "-n", "-T4", "--max-retries", "1", "-oG", "-",
                "-p", ",".join(map(str, self.ports)), SCANNER[0]]

    def ab(self, seconds: int, requests: int) -> list[str]:
        # -t before -n: -t alone implies 50000 requests, -n after it sets the bound
        return [require("ab"), "-q", "-r", "-c", "10", "-s", "5", "-t", str(seconds), "-n", str(requests),
                f"http://{FLOODER[0]}:{self.ports[FLOODED]}/"]

    def run(self, role: str, argv: list[str], timeout: float) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.clients[role], *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{argv[0]} exit {done.returncode}: {done.stdout[-1000:]} {done.stderr[-1000:]}"
        return done.stdout

    def scan(self) -> None:
        out = self.run("scanner", self.nmap(), 60)
        assert out.count("/open/") == RELAYS, f"nmap must find the {RELAYS} relays open: {out}"

    def flood(self) -> None:
        out = self.run("flooder", self.ab(60, 3000), 90)
        done = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
        assert done >= 2000, f"ab must get thousands of answers through the relay: {out}"

    def rotate(self, base: str, count: int, ports: list[int], connections: int) -> None:
        out = self.run("rotator", [PYTHON, "-m", "tests.netprobe", "rotate", base, str(count), ROTATOR_SERVER,
                                   ",".join(map(str, ports)), str(connections)], 90)
        assert out.strip() == f"ok {connections} failed 0", out


@pytest.fixture
def field(netns: Namespaces, procs: Processes, tmp_path: Path) -> Field:
    require("socat"), require("nft"), require("nmap"), require("ab")
    server = netns.add("server")
    clients = {role: netns.add(role) for role in ("benign", "scanner", "flooder", "rotator")}
    for role, (server_end, client_end) in (("benign", BENIGN), ("scanner", SCANNER), ("flooder", FLOODER)):
        netns.link(server, [f"{server_end}/24"], clients[role], [f"{client_end}/24"])
    rotating = [f"{ipaddress.ip_address(ROTATOR_SCAN) + i}/64" for i in range(RELAYS)]
    rotating += [f"{ipaddress.ip_address(ROTATOR_FLOOD) + i}/64" for i in range(ROTATOR_FLOOD_ADDRESSES)]
    netns.link(server, [f"{ROTATOR_SERVER}/64"], clients["rotator"], rotating)
    backend = free_port()
    procs.start([PYTHON, "-m", "tests.httpd", str(backend)], netns=server, cwd=ROOT)
    wait_listening(backend, netns=server)
    ports = [free_port() for _ in range(RELAYS)]
    for port in ports:
        procs.socat(f"TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0", f"TCP:127.0.0.1:{backend}", port=port,
                    netns=server)
    return Field(netns, procs, tmp_path, server, clients, ports)


# ---- what the agent wrote -----------------------------------------------------------------

def _named(alert: dict) -> set:
    """The addresses and networks an alert names as its source: source.ip, socat.source_network,
    the block target, the top sources, and any written in its message."""
    socat = alert.get("socat", {})
    words = [alert.get("source", {}).get("ip"), socat.get("source_network"), socat.get("block", {}).get("target"),
             *socat.get("top_sources", []), *re.split(r"[\s,()\[\]]+", alert.get("message", ""))]
    named = set()
    for word in filter(None, words):
        try:
            named.add(ipaddress.ip_network(word.rstrip(":;."), strict=False))
        except ValueError:
            continue
    return named


def _alerts(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["event"]["kind"] == "alert"]


def _flagging(docs: list[dict], rule: str, source: str) -> list[dict]:
    """The alerts of `rule` naming `source` (an address, or a network named as such), earliest first."""
    wanted = ipaddress.ip_network(source)
    found = [a for a in _alerts(docs) if a["rule"]["id"] == rule and wanted in _named(a)]
    return sorted(found, key=lambda a: _seconds(a["@timestamp"]))


def _seconds(stamp: str) -> float:
    return parse_timestamp(stamp) / 1e9


def _first_seen(docs: list[dict], source: str) -> float | None:
    """When the first connection from `source` (an address or a network) that the agent saw was accepted."""
    network = ipaddress.ip_network(source)
    stamps = [_seconds(d["@timestamp"]) for d in docs if d["event"].get("action") == "connection_accepted"
              and ipaddress.ip_address(d["source"]["ip"]) in network]
    return min(stamps, default=None)


def _seen_text(docs: list[dict], source: str, started: float) -> str:
    seen = _first_seen(docs, source)
    return (f"(its attack counted from {iso_timestamp(int(started * 1e9))}, its first connection seen "
            f"{'never' if seen is None else iso_timestamp(int(seen * 1e9))})")


def attacking_when_watched(docs: list[dict], source: str, watching: float) -> float:
    """Where the attack of `source` starts for an agent that began watching at `watching` while it was
    under way: its first connection the agent saw (the scanner's next nmap run), else `watching`."""
    seen = _first_seen(docs, source)
    return watching if seen is None else max(seen, watching)


def not_flagged(docs: list[dict], rule: str, source: str, started: float) -> str | None:
    """What is wrong, if `source` was not flagged by `rule` within FLAG_WITHIN_S of `started`: the
    moment the agent made the alert (event.created: what a SOC sees, later than the event time of the
    connection that crossed the rule when the agent lags behind a flood) counts; @timestamp is shown beside it."""
    found = _flagging(docs, rule, source)
    seen = _seen_text(docs, source, started)
    if not found:
        return f"no {rule} alert names {source} {seen}"
    lag, made = (_seconds(stamp) - started for stamp in (found[0]["@timestamp"], found[0]["event"]["created"]))
    if made > FLAG_WITHIN_S:
        return (f"{source} flagged by {rule} {made:.2f}s after its attack started (the event that crossed the rule "
                f"at {lag:.2f}s), over {FLAG_WITHIN_S}s {seen}")
    return None


def benign_flagged(docs: list[dict], address: str, trickle: subprocess.Popen, procs: Processes,
                   answered: int = 2 * LEARNING_S) -> str | None:
    """What is wrong, if the benign client got fewer than `answered` answers, had a request fail, or
    any alert names it."""
    procs.stop(trickle)
    said = trickle.stdout.read().split()
    if said[:1] != ["ok"] or int(said[1]) < answered or int(said[3]) > 0:
        return f"the benign client {address} must have kept getting answers: it says {' '.join(said)!r}"
    benign = ipaddress.ip_address(address)
    wrong = [a["rule"]["id"] + ": " + a["message"] for a in _alerts(docs) if any(benign in n for n in _named(a))]
    return f"the benign client {address} was flagged: {wrong}" if wrong else None


def assert_verdicts(docs: list[dict], *problems: str | None) -> None:
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems) + "\nthe alerts (audit ones left out):\n" + _summary(docs)


def _summary(docs: list[dict], limit: int = 60) -> str:
    """The alerts but the audit's, a line each, first made first."""
    lines = [f"  @timestamp {a['@timestamp']} (made {a['event']['created']}) {a['rule']['id']}: {a['message']}"
             for a in sorted(_alerts(docs), key=lambda a: a["@timestamp"]) if a["rule"]["ruleset"] != "audit"]
    return "\n".join(lines[:limit] + ([f"  ... {len(lines) - limit} more"] if len(lines) > limit else [])) or "  (none)"


def _wait_flagged(agent: AgentProcess, wanted: list[tuple[str, str]], timeout: float) -> None:
    """Until each (rule, source) is flagged, or `timeout` has passed (the verdicts then say what is missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(_flagging(agent.documents(), *w) for w in wanted):
        time.sleep(0.2)


# ---- the tests ------------------------------------------------------------------------------

def test_a_scan_then_a_flood_after_learning_are_each_flagged_within_2s_the_benign_client_never(field: Field) -> None:
    trickle = field.trickle()
    agent = field.agent()
    try:
        agent.wait_ready()
        time.sleep(LEARNING_S + 2)
        scan_started = time.time()
        field.scan()
        flood_started = time.time()
        field.flood()
        _wait_flagged(agent, [("anomaly.scan", SCANNER[1]), ("anomaly.source_rate", FLOODER[1])], 5)
    finally:
        agent.stop()
    docs = agent.documents()
    assert_verdicts(docs, not_flagged(docs, "anomaly.scan", SCANNER[1], scan_started),
                    not_flagged(docs, "anomaly.source_rate", FLOODER[1], flood_started),
                    benign_flagged(docs, BENIGN[1], trickle, field.procs))


def test_an_agent_started_during_the_attack_flags_it_within_2s_of_watching(field: Field) -> None:
    """Every relay but relay 0 is first seen under attack: nmap scans (one after the other, 0.2 s
    apart) and an ab flood are under way when the agent starts, and go on for 8 s after it watches.
    Each attack counts from its first connection the agent could see: the moment it began watching
    for the flood, the next nmap run for the scanner (which must come within 2 s)."""
    trickle = field.trickle()
    scans = field.procs.start(["bash", "-c", 'for i in $(seq 150); do "$@" >/dev/null; sleep 0.2; done',
                               "scans", *field.nmap()], netns=field.clients["scanner"])
    flood = field.procs.start(field.ab(120, 200_000), netns=field.clients["flooder"])
    time.sleep(3)
    assert scans.poll() is None and flood.poll() is None, "the attack must be under way before the agent starts"
    agent = field.agent()
    try:
        agent.wait_ready(timeout=120)
        watching = agent.socket.stat().st_mtime   # capture is attached before the control socket is made
        _wait_flagged(agent, [("anomaly.scan", SCANNER[1]), ("anomaly.source_rate", FLOODER[1])], 8)
        assert flood.poll() is None, "the flood must still be under way"
    finally:
        field.procs.stop(scans)
        field.procs.stop(flood)
        agent.stop(timeout=90)   # it may drain a backlog the flood left
    docs = agent.documents()
    scan_started, flood_started = (attacking_when_watched(docs, who, watching) for who in (SCANNER[1], FLOODER[1]))
    assert scan_started - watching < FLAG_WITHIN_S, "the test's own scans must go on while the agent watches"
    assert_verdicts(docs, not_flagged(docs, "anomaly.scan", SCANNER[1], scan_started),
                    not_flagged(docs, "anomaly.source_rate", FLOODER[1], flood_started),
                    benign_flagged(docs, BENIGN[1], trickle, field.procs, answered=2 * 3))   # 2/s, 3 s before the agent


def test_an_ipv6_attacker_rotating_addresses_in_one_64_is_flagged_as_the_64(field: Field) -> None:
    """A scan of the ten relays, each port from another address, then 800 requests through relay 5
    from a hundred addresses (8 each, under every per-address floor): both are flagged, naming the /64."""
    trickle = field.trickle()
    agent = field.agent()
    try:
        agent.wait_ready()
        time.sleep(LEARNING_S + 2)
        scan_started = time.time()
        field.rotate(ROTATOR_SCAN, RELAYS, field.ports, RELAYS)
        flood_started = time.time()
        field.rotate(ROTATOR_FLOOD, ROTATOR_FLOOD_ADDRESSES, [field.ports[FLOODED]], ROTATOR_FLOOD_CONNECTIONS)
        _wait_flagged(agent, [("anomaly.scan", ROTATOR_NET), ("anomaly.source_rate", ROTATOR_NET)], 5)
    finally:
        agent.stop()
    docs = agent.documents()
    assert_verdicts(docs, not_flagged(docs, "anomaly.scan", ROTATOR_NET, scan_started),
                    not_flagged(docs, "anomaly.source_rate", ROTATOR_NET, flood_started),
                    benign_flagged(docs, BENIGN[1], trickle, field.procs))
