"""Benchmark of the policy stage: PolicyEngine.check throughput and the static audit.

Usage: .venv/bin/python scripts/bench_policy.py [--events N]
Prints events/s for a realistic mix (allowed clients, denied sources, floods,
closes, backend connects) with and without a policy that declares limits, the
engine's state sizes after the run, and command lines audited per second.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from monitor.events import Action, ConnectionEvent, Direction, Listener
from monitor.policy import PolicyEngine, audit_command, parse_command_line, parse_policy

POLICY = """\
version: 1
listeners:
  - name: web
    port: 8443
    allow_sources: [10.0.0.0/16, 192.0.2.0/24, "2001:db8::/32"]
    allow_backends: ["10.1.0.5:443", "10.1.0.6:443"]
    max_rate_per_source: 30/minute
    max_concurrent_per_source: 10
    action: block
  - name: api
    port: 9000
    allow_sources: [10.0.0.0/8]
"""

COMMANDS = [
    "socat -d -d TCP-LISTEN:8443,fork,max-children=50,range=10.0.0.0/16,su=nobody TCP:10.1.0.5:443",
    "socat -s OPENSSL-LISTEN:443,cert=/etc/c.pem,verify=0,rnage=10.0.0.0/8,fork EXEC:'/bin/sh -c \"cat,x:y\"'",
    "socat UDP6-LISTEN:53,bind=[::1],fork SYSTEM:'echo hi'!!OPEN:/tmp/out,creat,append",
]


def make_events(n: int, seed: int = 7) -> list[ConnectionEvent]:
    rng = random.Random(seed)
    events: list[ConnectionEvent] = []
    open_conns: list[ConnectionEvent] = []
    t = 1_700_000_000 * 10**9
    for i in range(n):
        t += rng.randint(10_000, 2_000_000)      # 0.01-2 ms apart
        roll = rng.random()
        if open_conns and roll < 0.4:
            ev = open_conns.pop(rng.randrange(len(open_conns)))
            events.append(ConnectionEvent(Action.CLOSED, t, ev.source_ip, ev.source_port, ev.destination_ip,
                                          ev.destination_port, listener=ev.listener))
            continue
        if roll < 0.55:
            events.append(ConnectionEvent(Action.ATTEMPTED, t, "10.1.0.1", 40000 + i % 20000,
                                          rng.choice(["10.1.0.5", "10.1.0.7"]), 443, direction=Direction.EGRESS,
                                          listener=Listener("0.0.0.0", 8443)))
            continue
        if roll < 0.6:
            source = f"203.0.113.{rng.randrange(256)}"          # denied
        elif roll < 0.65:
            source = "198.51.100.9"                              # a flood from one host
        else:
            source = f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"
        port = 8443 if rng.random() < 0.8 else rng.choice([9000, 7000])
        ev = ConnectionEvent(Action.ACCEPTED, t, source, 1024 + i % 60000, "10.1.0.1", port,
                             listener=Listener("0.0.0.0", port))
        events.append(ev)
        open_conns.append(ev)
    return events


def bench_engine(events: list[ConnectionEvent]) -> None:
    policy = parse_policy(POLICY)
    engine = PolicyEngine(policy)
    began = time.perf_counter()
    alerts = sum(len(engine.check(ev)) for ev in events)
    elapsed = time.perf_counter() - began
    tracemalloc.start()
    measured = PolicyEngine(policy)
    for ev in events:
        measured.check(ev)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    began = time.perf_counter()
    empty = PolicyEngine(parse_policy("version: 1\nlisteners: []\ndefaults: {unknown_listener: ignore}\n"))
    for ev in events:
        empty.check(ev)
    baseline = time.perf_counter() - began
    print(f"engine: {len(events)} events in {elapsed:.2f}s = {len(events) / elapsed:,.0f} events/s "
          f"({elapsed / len(events) * 1e6:.1f} us/event), {alerts} alerts, {engine.suppressed} suppressed")
    print(f"engine without declared listeners: {len(events) / baseline:,.0f} events/s "
          f"(policy checks cost x{elapsed / baseline:.2f})")
    print(f"engine state: open={engine.open_connections} rate_windows={len(engine._counter.windows)} "
          f"dedup={len(engine._last_alert)}"
          f" engine memory peak (tracemalloc, separate pass)={peak / 1e6:.1f} MB")


def bench_audit(rounds: int = 2000) -> None:
    began = time.perf_counter()
    findings = 0
    for i in range(rounds):
        findings += len(audit_command(parse_command_line(COMMANDS[i % len(COMMANDS)]), uid=0,
                                      environ={"LD_PRELOAD": "x"}))
    elapsed = time.perf_counter() - began
    print(f"audit: {rounds} command lines in {elapsed:.2f}s = {rounds / elapsed:,.0f} per second "
          f"({findings / rounds:.1f} findings each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    args = parser.parse_args()
    events = make_events(args.events)
    bench_engine(events)
    bench_audit()


if __name__ == "__main__":
    main()
