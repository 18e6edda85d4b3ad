#!/usr/bin/env python3
"""Benchmark of `action: drop` under a flood, inside network namespaces it creates and removes.

A real socat relay (`fork`, `-d -d` log) in a "server" namespace with a drop
listener that allows one client address; in a "clients" namespace one
allowed client connects, echoes and closes in a loop while flooders send
connects (one SYN each: non-blocking, closed before the 1 s retransmission)
from disallowed addresses as fast as one process can. Phases of the same
run, side by side, `--rounds` times: no flood; the flood stopped as it
leaves the clients' namespace (a control: only the flooder's own CPU
competes with the client, on the same host); the flood reaching the drop
rule. Then once the flood with the drop rule removed (what a `block`-style
reaction or socat's `range=` would face). For each phase it prints the allowed client's connections per
second, the SYNs the flood sent and the rule's counter, the forks and the
accepts socat logged for the flood's sources.

Usage (root): .venv/bin/python scripts/bench_drop.py [--seconds 5] [--flooders 4] [--rounds 3]
Traffic stays inside the namespaces; nftables changes only there.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_enforce import PORT, SERVER, Lab, wait_listening  # noqa: E402
from monitor.enforce import EnforceConfig, Enforcer  # noqa: E402
from monitor.enforce.nft import DropListener  # noqa: E402

ALLOWED = r"""
import socket, sys, time
src, dst, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
done = failed = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(); s.settimeout(2); s.bind((src, 0))
    try:
        s.connect((dst, port)); s.sendall(b"x"); done += s.recv(1) == b"x"
    except OSError:
        failed += 1
    s.close()
print(done, failed)
"""

FLOOD = r"""
import collections, socket, sys, time
dst, port, seconds, srcs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
sent = 0
held = collections.deque()
end = time.monotonic() + seconds
while time.monotonic() < end:
    for src in srcs:
        s = socket.socket(); s.setblocking(False); s.bind((src, 0))
        s.connect_ex((dst, port))
        held.append((time.monotonic(), s))
        sent += 1
    while held and time.monotonic() - held[0][0] > 0.3:   # closed before the 1 s SYN retransmission: one SYN each
        held.popleft()[1].close()
time.sleep(0.3)
print(sent)
"""
ACCEPT = re.compile(r"accepting connection from AF=\d+ \[?([0-9a-f.:]+?)\]?:\d+ ")


CONTROL = """table inet bench_control {{
  chain out {{ type filter hook output priority filter; policy accept;
    ip saddr {{ {sources} }} tcp dport {port} drop
  }}
}}
"""
KINDS = {"quiet": "no flood", "control": "flood, stopped at the clients", "drop": "flood, drop rule",
         "open": "flood, no drop rule"}


@dataclass
class Phase:
    kind: str                         # a key of KINDS
    round: int
    seconds: float
    allowed_per_s: float
    allowed_failed: int
    flood_sent: int = 0
    flood_per_s: float = 0.0
    rule_counted: int | None = None   # None: no drop rule in force
    forks: int = 0                    # children socat forked, the allowed client's included
    flood_accepts: int = 0

    @property
    def flood_forks(self) -> int:
        """Children beyond one per allowed connection."""
        return self.forks - round(self.allowed_per_s * self.seconds)


def counted(enforcer: Enforcer) -> int:
    """SYNs the drop rules counted so far (the agent's read each second, done once here)."""
    enforcer.drop_events(time.time_ns())
    return sum(t.packets for t in enforcer.drop_totals())


def run_phase(lab: Lab, enforcer: Enforcer, log: Path, kind: str, round_: int, allowed: str, flooders: list[str],
              seconds: float) -> Phase:
    """One phase; `control`: the flood's SYNs are dropped as they leave the clients' namespace, so only the
    flooder's own CPU competes with the allowed client (the baseline of what the flood costs the relay's host)."""
    flooders = [] if kind == "quiet" else flooders
    if kind == "control":
        subprocess.run(["ip", "netns", "exec", lab.clients, "nft", "-f", "-"], check=True, text=True,
                       input=CONTROL.format(sources=", ".join(flooders), port=PORT))
    log_at = log.stat().st_size
    before = counted(enforcer)
    client = lab.start([sys.executable, "-c", ALLOWED, allowed, SERVER, str(PORT), str(seconds)], lab.clients,
                       stdout=subprocess.PIPE, text=True)
    flooder = lab.start([sys.executable, "-c", FLOOD, SERVER, str(PORT), str(seconds), *flooders], lab.clients,
                        stdout=subprocess.PIPE, text=True) if flooders else None
    done, failed = map(int, client.communicate(timeout=seconds + 30)[0].split())
    sent = int(flooder.communicate(timeout=seconds + 30)[0]) if flooder else 0
    time.sleep(0.5)   # the relay logs its last children
    if kind == "control":
        subprocess.run(["ip", "netns", "exec", lab.clients, "nft", "delete", "table", "inet", "bench_control"],
                       check=True)
    text = log.read_bytes()[log_at:].decode(errors="replace")
    return Phase(kind, round_, seconds, done / seconds, failed, sent, sent / seconds,
                 None if kind == "open" else counted(enforcer) - before, text.count("forked off child process"),
                 sum(1 for m in ACCEPT.finditer(text) if m.group(1) in set(flooders)))


def print_phases(phases: list[Phase]) -> None:
    print(f"{'phase':<34} {'allowed conn/s':>14} {'failed':>6} {'flood SYNs':>10} {'SYN/s':>8} "
          f"{'rule counted':>12} {'relay forks':>11} {'for the flood':>13} {'flood accepts':>13}")
    for p in phases:
        rule = "-" if p.rule_counted is None else str(p.rule_counted)
        print(f"{KINDS[p.kind] + (f' ({p.round})' if p.round else ''):<34} {p.allowed_per_s:>14.1f} {p.allowed_failed:>6} {p.flood_sent:>10} "
              f"{p.flood_per_s:>8.0f} {rule:>12} {p.forks:>11} {p.flood_forks:>13} {p.flood_accepts:>13}")
    rates = {kind: [p.allowed_per_s for p in phases if p.kind == kind] for kind in KINDS}
    for under, base in (("drop", "quiet"), ("drop", "control")):
        if rates[under] and rates[base] and all(rates[base]):
            ratios = [u / b for u, b in zip(rates[under], rates[base])]
            print(f"allowed conn/s, {KINDS[under]} / {KINDS[base]}: {sum(ratios) / len(ratios):.2f} "
                  f"(by round: {' '.join(f'{r:.2f}' for r in ratios)})")
    matched = all(p.rule_counted == p.flood_sent for p in phases if p.kind == "drop")
    print(f"drop counts equal the SYNs the flood sent: {'yes' if matched else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--flooders", type=int, default=4, help="disallowed source addresses of the flood")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of phases without and with the flood")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (namespaces, nftables)")
    lab = Lab(1 + args.flooders)
    allowed, flooders = lab.addrs[0], lab.addrs[1:]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "socat.log"
        log.touch()
        try:
            lab.start(["socat", "-d", "-d", "-lf", str(log), f"TCP-LISTEN:{PORT},fork,reuseaddr,backlog=1024",
                       "PIPE"], lab.server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_listening(lab.server, PORT)
            enforcer = Enforcer(EnforceConfig(netns=lab.server, state_file=f"{tmp}/blocks.json"))
            listener = DropListener("bench", PORT, None, (ipaddress.ip_network(f"{allowed}/32"),))
            enforcer.start([PORT], [listener])
            phases = [run_phase(lab, enforcer, log, kind, round_, allowed, flooders, args.seconds)
                      for round_ in range(1, args.rounds + 1) for kind in ("quiet", "control", "drop")]
            enforcer.set_drops([])
            phases.append(run_phase(lab, enforcer, log, "open", 0, allowed, flooders, args.seconds))
            enforcer.close()
        finally:
            lab.close()
    print(f"drop listener under a flood: {args.flooders} disallowed sources, one allowed client, "
          f"{args.seconds:g} s per phase, {os.cpu_count()} CPUs")
    print_phases(phases)


if __name__ == "__main__":
    main()
