"""A tiny threaded HTTP server used as a relay backend where clients speak HTTP (ab, tests.netprobe).

Answers every GET with `200 ok`, one request per connection, and logs nothing
(thousands of requests would fill the pipe the test reads stderr from).
Not a socat process on purpose: the agent must not report it.
Usage: python -m tests.httpd PORT [HOST]
"""

import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"ok\n"


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args) -> None:   # noqa: A002 (the base class's signature)
        return


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


def main() -> None:
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    if ":" in host:
        _Server.address_family = socket.AF_INET6
    with _Server((host, port), _Ok) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
