"""The agent's control socket: `status` and `reload` for `top` and operators.

A Unix stream socket; a client sends one line (`status` or `reload`) and
reads one JSON line back. Only root (or whoever may open the socket path)
can talk to it: the socket is created mode 0600.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable

from .errors import EnvironmentProblem

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/socat-monitor/control.sock"
Handler = Callable[[], dict[str, Any]]


class ControlServer:
    """Answers `status` and `reload` on a Unix socket from a daemon thread."""

    def __init__(self, path: str, status: Handler, reload: Handler) -> None:
        self.path = Path(path)
        self.handlers = {"status": status, "reload": reload}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            command = conn.recv(256).decode("ascii", "replace").strip()
            handler = self.handlers.get(command)
            reply = handler() if handler else {"ok": False, "error": f"unknown command {command!r}"}
            conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
        except Exception as exc:  # a broken client must never stop the agent
            log.warning("control socket: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2.0)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: str, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a running agent; EnvironmentProblem when none answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise EnvironmentProblem(path, f"no agent answers on the control socket ({exc.strerror or exc})",
                                 "start one with: socat-monitor run") from None
    try:
        return json.loads(data)
    except ValueError:
        raise EnvironmentProblem(path, "the agent sent an unreadable answer") from None
