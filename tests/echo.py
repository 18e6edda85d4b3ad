"""A tiny threaded TCP echo server used as a relay backend in tests.

Not a socat process on purpose: the agent must not report it.
Usage: python -m tests.echo PORT [HOST]
"""

import socketserver
import sys


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


def main() -> None:
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    if ":" in host:
        _Server.address_family = __import__("socket").AF_INET6
    with _Server((host, port), _Echo) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
