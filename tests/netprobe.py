"""A TCP client for enforcement tests, run inside a client namespace.

`python -m tests.netprobe once SRC DST PORT [TIMEOUT]`: connect from SRC,
echo one line; prints `ok` (exit 0) or `fail <reason>` (exit 1).
`python -m tests.netprobe hold SRC DST PORT SECONDS`: connect, echo once,
print `connected`, then wait for the server side to end the session; prints
`ended <how>` (exit 0) or `still open` after SECONDS (exit 1).
`python -m tests.netprobe offend SRC DST PORT SECONDS`: one connection (the
offence), then a new connection attempt every 2 ms until one gets no answer
(its SYN dropped); prints the milliseconds from the offending connect to the
start of that attempt (exit 0), or `never dropped` after SECONDS (exit 1).
"""

from __future__ import annotations

import socket
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


def main() -> int:
    mode, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
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
