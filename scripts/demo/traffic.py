#!/usr/bin/env python3
"""Bounded client traffic for the demo lab: well-behaved clients, a
disallowed source, a port scan and a flood.

Runs inside the lab's clients namespace (`ip netns exec smdemo-clients-...`)
and refuses any target outside the documentation ranges the lab uses, so it
can never send traffic anywhere else. Every mode is bounded in count and in
time. Prints one JSON line: what the client saw (ok / refused / timeout /
closed without echo / reset).

  traffic.py steady --source 198.51.100.10 --target 198.51.100.1 --port 8443 --count 30 --rate 2
  traffic.py flood  --source 198.51.100.99 --target 198.51.100.1 --port 8443 --count 400 --seconds 8
  traffic.py scan   --source 203.0.113.67  --target 198.51.100.1 --ports 8400-8460
  traffic.py probe  --source 203.0.113.66  --target 198.51.100.1 --port 8443
  traffic.py steady --source 2001:db8:3::1 --sources 5000 --target 2001:db8:1::1 --port 8443 --count 600 --rate 10
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ipaddress
import json
import signal
import socket
import sys
import threading
import time

LAB_RANGES = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                                 "2001:db8::/32")]
MAX_COUNT = 200_000
MAX_SECONDS = 7200


def lab_address(text: str) -> str:
    addr = ipaddress.ip_address(text)
    if not any(addr in net for net in LAB_RANGES):
        raise argparse.ArgumentTypeError(f"{text} is outside the lab's documentation ranges")
    return str(addr)


def source_for(args: argparse.Namespace, i: int) -> str:
    """The i-th connection's source: --source, or with --sources N one of N addresses counting up from it
    (with --one-per-64, one in each of N consecutive IPv6 /64s: N clients, not one rotating its address)."""
    if args.sources <= 1:
        return args.source
    step = 1 << 64 if args.one_per_64 else 1
    return str(ipaddress.ip_address(args.source) + (i % args.sources) * step)


def connect_once(source: str, target: str, port: int, timeout: float, payload: bytes | None) -> str:
    """One connection; its outcome as a word."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        try:
            sock.connect((target, port))
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, socket.timeout):
            return "timeout"
        except OSError:
            return "error"
        if payload is None:
            return "ok"
        try:
            sock.sendall(payload)
            data = b""
            while len(data) < len(payload):
                chunk = sock.recv(len(payload) - len(data))
                if not chunk:
                    return "closed"   # accepted then closed: socat's range= refusal
                data += chunk
        except (TimeoutError, socket.timeout):
            return "timeout"
        except ConnectionResetError:
            return "reset"
        except OSError:
            return "error"
        return "ok" if data == payload else "closed"


class Stop(Exception):
    """SIGTERM/SIGINT: stop early and still report what was seen."""


def run(args: argparse.Namespace, tally: dict[str, int]) -> None:
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()
    payload = f"hello from {args.source}\n".encode()

    def one(port: int, data: bytes | None, i: int = 0) -> None:
        outcome = connect_once(source_for(args, i), args.target, port, args.timeout, data)
        with lock:
            tally[outcome] = tally.get(outcome, 0) + 1

    def over() -> bool:
        return time.monotonic() >= deadline or tally.get("stopped", 0) > 0

    if args.mode in ("steady", "probe"):
        count = 1 if args.mode == "probe" else args.count
        for i in range(count):
            if over():
                break
            one(args.port, payload, i)
            if i + 1 < count:
                time.sleep(1.0 / args.rate)
    elif args.mode == "scan":
        first, last = args.ports
        for port in range(first, last + 1):
            if over():
                break
            one(port, None)
    else:  # flood: as fast as `concurrency` workers go, until count or seconds
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            futures = [pool.submit(lambda: None if over() else one(args.port, payload))
                       for _ in range(args.count)]
            concurrent.futures.wait(futures)


def port_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    low, high = int(first), int(last or first)
    if not 0 < low <= high < 65536 or high - low > 1000:
        raise argparse.ArgumentTypeError(f"bad port range {text!r} (at most 1000 ports)")
    return low, high


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["steady", "flood", "scan", "probe"])
    parser.add_argument("--source", type=lab_address, required=True)
    parser.add_argument("--target", type=lab_address, required=True)
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--ports", type=port_range, default=(8400, 8460))
    parser.add_argument("--sources", type=int, default=1,
                        help="rotate over this many source addresses counting up from --source (steady)")
    parser.add_argument("--one-per-64", action="store_true",
                        help="with --sources: each source in its own IPv6 /64 (the detectors count a /64 as one source)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0, help="connections per second (steady)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel connections (flood)")
    parser.add_argument("--seconds", type=float, default=60.0, help="hard time limit")
    parser.add_argument("--timeout", type=float, default=1.0, help="per-connection timeout")
    args = parser.parse_args()
    last = source_for(args, max(args.sources, 1) - 1)
    if lab_address(last) != last or not 0 < args.sources <= 65536:
        parser.error("--sources must be 1..65536 and stay inside the lab ranges")
    if not 0 < args.count <= MAX_COUNT or not 0 < args.seconds <= MAX_SECONDS or args.rate <= 0:
        parser.error(f"--count must be 1..{MAX_COUNT}, --seconds 0..{MAX_SECONDS}, --rate > 0")
    started = time.monotonic()
    tally: dict[str, int] = {}

    def stop(signum: int, frame: object) -> None:
        tally["stopped"] = 1
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        run(args, tally)
    except Stop:
        pass
    print(json.dumps({"mode": args.mode, "source": args.source, "target": args.target,
                      "seconds": round(time.monotonic() - started, 2), **tally}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
