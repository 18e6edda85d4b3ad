"""A TCP client for enforcement and detection tests, run inside a client namespace.

`python -m tests.netprobe once SRC DST PORT [TIMEOUT]`: connect from SRC,
echo one line; prints `ok` (exit 0) or `fail <reason>` (exit 1).
`python -m tests.netprobe hold SRC DST PORT SECONDS`: connect, echo once,
print `connected`, then wait for the server side to end the session; prints
`ended <how>` (exit 0) or `still open` after SECONDS (exit 1).
`python -m tests.netprobe offend SRC DST PORT SECONDS`: one connection (the
offence), then a new connection attempt every 2 ms until one gets no answer
(its SYN dropped); prints the milliseconds from the offending connect to the
start of that attempt (exit 0), or `never dropped` after SECONDS (exit 1).

Against an HTTP backend (tests.httpd), one GET per connection:
`python -m tests.netprobe trickle SRC DST PORT SECONDS [PER_SECOND]`: a benign
client, PER_SECOND (default 2) requests a second for SECONDS, or until SIGTERM;
prints `ok N failed M` (exit 0 when none failed).
`python -m tests.netprobe rotate BASE COUNT DST PORTS CONNECTIONS`: connection k
comes from address BASE + (k mod COUNT) and goes to port k mod len(PORTS) of the
comma-separated PORTS (an attacker rotating addresses); prints `ok N failed M`.

`python -m tests.netprobe queue SRC DST PORTS COUNT SECONDS`: COUNT connections
to each of the comma-separated PORTS (of a relay that does not accept yet: they
wait in its accept queue), printed in order on one line as `PORT:LOCALPORT ...`;
then each stdin line `reset I J ...` resets those connections (SO_LINGER 0) and
prints `reset N`. At the end of stdin, or after SECONDS, the rest are reset too.
"""

from __future__ import annotations

import ipaddress
import select
import signal
import socket
import struct
import sys
import time


def _connect(src: str, dst: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((src, 0))
    sock.connect((dst, port))
    sock.sendall(b"ping\n")
    if sock.recv(16) != b"ping\n":
        raise OSError("no echo")
    return sock


def _offend(src: str, dst: str, port: int, limit: float) -> int:
    started = time.monotonic()
    _connect(src, dst, port, 1.0).close()
    while time.monotonic() - started < limit:
        attempt = time.monotonic()
        try:
            _connect(src, dst, port, 0.25).close()
        except socket.timeout:
            print(f"{(attempt - started) * 1000:.1f}", flush=True)
            return 0
        except OSError:
            pass
        time.sleep(0.002)
    print("never dropped", flush=True)
    return 1


def _get(src: str, dst: str, port: int, timeout: float) -> bool:
    """One HTTP request from `src`; True when it is answered 200."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.bind((src, 0))
            sock.connect((dst, port))
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False


def _tally(results: list[bool]) -> int:
    failed = results.count(False)
    print(f"ok {len(results) - failed} failed {failed}", flush=True)
    return 1 if failed else 0


def _stop_on_sigterm(signum, frame) -> None:
    raise SystemExit


def _trickle(src: str, dst: str, port: int, seconds: float, per_second: float) -> int:
    results: list[bool] = []
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = time.monotonic()
    try:
        for k in range(int(seconds * per_second)):
            time.sleep(max(0.0, started + k / per_second - time.monotonic()))
            results.append(_get(src, dst, port, 3.0))
    except SystemExit:
        pass
    return _tally(results)


def _rotate(base: str, count: int, dst: str, ports: list[int], connections: int) -> int:
    first = ipaddress.ip_address(base)
    sources = [str(first + i) for i in range(count)]
    return _tally([_get(sources[k % count], dst, ports[k % len(ports)], 2.0) for k in range(connections)])


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _queue(src: str, dst: str, ports: list[int], count: int, seconds: float) -> int:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    held: list[socket.socket] = []
    for port in ports:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(5.0)
            sock.bind((src, 0))
            sock.connect((dst, port))
            held.append(sock)
    print(" ".join(f"{sock.getpeername()[1]}:{sock.getsockname()[1]}" for sock in held), flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not select.select([sys.stdin], [], [], 0.2)[0]:
            continue
        words = sys.stdin.readline().split()
        if words[:1] != ["reset"]:
            break
        for index in words[1:]:
            _reset(held[int(index)])
        print(f"reset {len(words) - 1}", flush=True)
    for sock in held:
        if sock.fileno() >= 0:
            _reset(sock)
    return 0


def main() -> int:
    mode = sys.argv[1]
    if mode == "queue":
        src, dst, ports, count, seconds = sys.argv[2:7]
        return _queue(src, dst, [int(p) for p in ports.split(",")], int(count), float(seconds))
    if mode == "rotate":
        base, count, dst, ports, connections = sys.argv[2:7]
        return _rotate(base, int(count), dst, [int(p) for p in ports.split(",")], int(connections))
    src, dst, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "trickle":
        return _trickle(src, dst, port, float(sys.argv[5]), float(sys.argv[6]) if len(sys.argv) > 6 else 2.0)
    limit = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    if mode == "offend":
        return _offend(src, dst, port, limit)
    try:
        sock = _connect(src, dst, port, 1.0 if mode == "hold" else limit)
    except OSError as exc:
        print(f"fail {type(exc).__name__} {exc}", flush=True)
        return 1
    if mode == "once":
        sock.close()
        print("ok", flush=True)
        return 0
    print("connected", flush=True)
    deadline = time.monotonic() + limit
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(16)
        except socket.timeout:
            continue
        except OSError as exc:
            print(f"ended {type(exc).__name__}", flush=True)
            return 0
        if not data:
            print("ended eof", flush=True)
            return 0
    print("still open", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
