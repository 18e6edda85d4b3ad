#!/usr/bin/env python3
"""Benchmark: socat fork-relay connection rate without and with live capture.

Side by side in one run, on loopback only: an asyncio echo backend, a
`socat TCP-LISTEN:P,fork,backlog=64 TCP:127.0.0.1:B` relay, and an asyncio
client keeping `--concurrency` (<= 4) connections in flight, each sending one
byte and reading the echo until EOF. Phases alternate off, on, off, ...,
off: `off` has no BPF loaded, `on` has a separate consumer process running
`Capture` and polling, as the agent would. Every phase is bounded by
`--seconds`; the ratio is mean(on rates) / mean(off rates).

Prints per phase the connection rate and the relay's CPU time per
connection (BPF programs run inside its syscalls, so their cost lands there;
a figure other load on the host distorts far less than rates), and for `on`
phases completeness: connections the client completed vs ACCEPTED events
captured for the relay's port, kernel-side losses and the consumer's CPU.
Then the rate ratio on/off (target >= 0.95) and the CPU-bound ratio
relay / (relay + consumer). `--control` runs an idle consumer without BPF
(the method's noise), `--comm other` attaches programs that match nothing,
`--no-bytes` compiles out byte counting.

Run as root: sudo .venv/bin/python scripts/bench_capture.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port}")


# ---- roles run as child processes ------------------------------------------

def run_backend(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(64)
            writer.write(data)
            await writer.drain()
        except OSError:
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def run_consumer(port: int, byte_counts: bool, control: bool, comm: str) -> None:
    """Load Capture, poll until SIGTERM, print a JSON summary of what was seen for `port`.

    `control`: load nothing, just idle (measures the method's own noise)."""
    from monitor.capture import Capture, CaptureConfig
    from monitor.events import Action, ConnectionEvent, PipelineError

    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    if control:
        print("ready", flush=True)
        while not stop:
            time.sleep(0.1)
        print(json.dumps({"accepted": 0, "events": 0, "pipeline_errors": 0, "kernel_lost": 0, "decode_errors": 0,
                          "consumer_cpu_s": 0.0}), flush=True)
        return
    capture = Capture(CaptureConfig(comms=(comm,), byte_counts=byte_counts))
    print("ready", flush=True)
    accepted = events = errors = 0
    cpu0 = time.process_time()
    while not stop:
        for rec in capture.poll(100):
            events += 1
            if isinstance(rec, PipelineError):
                errors += rec.count
            elif isinstance(rec, ConnectionEvent) and rec.action is Action.ACCEPTED and rec.destination_port == port:
                accepted += 1
    for rec in capture.poll(0):   # whatever is left
        events += 1
        if isinstance(rec, ConnectionEvent) and rec.action is Action.ACCEPTED and rec.destination_port == port:
            accepted += 1
    stats = capture.stats
    capture.close()
    print(json.dumps({"accepted": accepted, "events": events, "pipeline_errors": errors,
                      "kernel_lost": stats.kernel_lost, "decode_errors": stats.decode_errors,
                      "consumer_cpu_s": round(time.process_time() - cpu0, 2)}), flush=True)


# ---- the client -------------------------------------------------------------

async def client(port: int, seconds: float, concurrency: int) -> tuple[int, int, float]:
    done = failed = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while loop.time() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"x")
                await writer.drain()
                got = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                if got == b"x":
                    done += 1
                else:
                    failed += 1
            except (OSError, asyncio.TimeoutError):
                failed += 1

    start = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, failed, loop.time() - start


def relay_cpu_s(pid: int) -> float:
    """CPU time of the relay and its reaped fork children (utime+stime+cutime+cstime).

    BPF programs run inside the traced syscalls, so their cost is charged here:
    a figure other load on the host does not distort the way it distorts rates."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def phase(name: str, port: int, args, consumer: subprocess.Popen | None, relay_pid: int) -> dict:
    cpu0 = relay_cpu_s(relay_pid)
    done, failed, elapsed = asyncio.run(client(port, args.seconds, args.concurrency))
    time.sleep(0.3)   # let the last children be reaped
    cpu_us = (relay_cpu_s(relay_pid) - cpu0) * 1e6 / max(done, 1)
    out = {"phase": name, "connections": done, "failed": failed, "rate": done / elapsed, "relay_us": cpu_us}
    if consumer is not None:
        time.sleep(1.0)   # let the last events arrive
        consumer.send_signal(signal.SIGTERM)
        line = consumer.communicate(timeout=30)[0].strip().splitlines()[-1]
        out.update(json.loads(line))
    return out


def start_consumer(port: int, args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--role", "consumer", "--port", str(port)]
                            + (["--no-bytes"] if args.no_bytes else []) + (["--control"] if args.control else [])
                            + ["--comm", args.comm],
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit("bench: the capture consumer did not start (see its error above)")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase (max 60)")
    ap.add_argument("--rounds", type=int, default=3, help="on phases, each between two off phases (max 5)")
    ap.add_argument("--concurrency", type=int, default=4, help="connections in flight (1-4)")
    ap.add_argument("--no-bytes", action="store_true", help="capture without byte counting (no read/write probes)")
    ap.add_argument("--control", action="store_true",
                    help="on phases run an idle consumer without BPF: the ratio then shows the method's noise")
    ap.add_argument("--comm", default="socat",
                    help="process name the capture watches; another name measures programs whose filter matches nothing")
    ap.add_argument("--role", choices=["main", "backend", "consumer"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "backend":
        return run_backend(args.port)
    if args.role == "consumer":
        return run_consumer(args.port, not args.no_bytes, args.control, args.comm)
    args.seconds = min(max(args.seconds, 1.0), 60.0)
    args.rounds = min(max(args.rounds, 1), 5)
    args.concurrency = min(max(args.concurrency, 1), 4)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (BPF)")
    socat = shutil.which("socat") or sys.exit("bench: socat is not installed")

    bport, rport = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, __file__, "--role", "backend", "--port", str(bport)])
    relay = None
    results = []
    try:
        wait_listening(bport)
        relay = subprocess.Popen([socat, f"TCP-LISTEN:{rport},fork,reuseaddr,backlog=64",
                                  f"TCP:127.0.0.1:{bport}"], stderr=subprocess.DEVNULL)
        wait_listening(rport)
        asyncio.run(client(rport, 1.0, args.concurrency))   # warm up
        for _ in range(args.rounds):
            results.append(phase("off", rport, args, None, relay.pid))
            results.append(phase("on", rport, args, start_consumer(rport, args), relay.pid))
        results.append(phase("off", rport, args, None, relay.pid))   # offs bracket every on: drift cancels
    finally:
        for proc in (relay, backend):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)

    print(f"{'phase':5} {'conns':>7} {'failed':>6} {'conn/s':>8} {'relay_us/conn':>13} {'accepted':>8} {'lost':>5} "
          f"{'events':>7} {'consumer_cpu_s':>14}")
    for r in results:
        print(f"{r['phase']:5} {r['connections']:7d} {r['failed']:6d} {r['rate']:8.0f} {r['relay_us']:13.0f} "
              f"{r.get('accepted', ''):>8} {r.get('kernel_lost', ''):>5} {r.get('events', ''):>7} "
              f"{r.get('consumer_cpu_s', ''):>14}")
    off = [r for r in results if r["phase"] == "off"]
    on = [r for r in results if r["phase"] == "on"]
    ratio = (sum(r["rate"] for r in on) / len(on)) / (sum(r["rate"] for r in off) / len(off))
    made = sum(r["connections"] + r["failed"] for r in on)
    seen = sum(r["accepted"] for r in on)
    lost = sum(r["kernel_lost"] + r["decode_errors"] for r in on)
    print(f"rate ratio with capture / without: {ratio:.3f} (target >= 0.95)")
    cpu_off = sum(r["relay_us"] for r in off) / len(off)
    cpu_on = sum(r["relay_us"] for r in on) / len(on)
    conns_on = sum(r["connections"] for r in on)
    consumer_us = sum(r.get("consumer_cpu_s", 0.0) for r in on) * 1e6 / max(conns_on, 1)
    print(f"relay CPU per connection (kernel programs included): {cpu_off:.0f} us without capture, "
          f"{cpu_on:.0f} us with (x{cpu_on / cpu_off:.3f}); consumer {consumer_us:.0f} us per connection")
    print(f"CPU-bound rate ratio (relay alone / relay + consumer): {cpu_off / (cpu_on + consumer_us):.3f}")
    if args.control:
        print("control run: no capture was loaded; the ratio above is the measurement noise")
        return
    if args.comm != "socat":
        print(f"capture watched {args.comm!r}, not socat: the ratio above is the cost of attached, idle programs")
        return
    print(f"completeness with capture: {seen} accepted events for {made} client connections "
          f"({seen / made:.4f}), kernel lost {lost}")


if __name__ == "__main__":
    main()
