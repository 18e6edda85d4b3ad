"""`socat-monitor top` in a real pseudo-terminal, against a control socket
that answers `status` like the agent does."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.lab import PYTHON, AgentProcess, connect, free_port, socat_monitor, start_echo
from tests.test_liveview import SAMPLE

pytestmark = pytest.mark.integration
CLI = str(Path(PYTHON).parent / "socat-monitor")


class StatusServer:
    """Answers one JSON line per connection on a Unix socket, like the agent."""

    def __init__(self, path: Path, status: dict):
        self.path = str(path)
        self.status = status
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                self.queries.append(conn.recv(100).decode())
                conn.sendall(json.dumps(self.status).encode() + b"\n")

    def close(self) -> None:
        if not self.running:
            return
        self.running = False
        self.thread.join(5)
        self.sock.close()
        os.unlink(self.path)


class Terminal:
    """A program on a pseudo-terminal of a fixed size, and the screen it drew."""

    def __init__(self, argv: list[str], cols: int = 120, rows: int = 40):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.master = master
        self.output = b""

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:    # the program exited and closed the terminal
                return
            if not chunk:
                return
            self.output += chunk

    def screen(self) -> list[str]:
        """The last complete frame (cursor home ... clear to end), escapes removed."""
        frames = re.findall(r"\x1b\[H(.*?)\x1b\[J", self.output.decode(errors="replace"), re.S)
        frame = frames[-1] if frames else ""
        return [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in frame.split("\r\n")]

    def wait_for(self, text: str, seconds: float = 10) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.read(0.2)
            if text in "\n".join(self.screen()):
                return self.screen()
        raise AssertionError(f"{text!r} never appeared; last screen:\n" + "\n".join(self.screen()))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, seconds: float = 10) -> int:
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.1)
        self.read(0.2)
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        os.close(self.master)


@pytest.fixture
def server(tmp_path):
    srv = StatusServer(tmp_path / "control.sock", copy.deepcopy(SAMPLE))
    yield srv
    srv.close()


@pytest.fixture
def terminal():
    made: list[Terminal] = []

    def start(*args: str, cols: int = 120, rows: int = 40) -> Terminal:
        term = Terminal([CLI, "top", *args], cols=cols, rows=rows)
        made.append(term)
        return term

    yield start
    for term in made:
        term.close()


def test_top_draws_updates_and_quits_on_q(server, terminal):
    term = terminal("--socket", server.path, "--interval", "0.2", cols=120, rows=40)
    screen = term.wait_for("policy.source_denied")
    assert len(screen) == 40 and all(len(line) <= 120 for line in screen)
    text = "\n".join(screen)
    for expected in ("host vm", "web-relay", "0.0.0.0:8443", "198.51.100.7", "203.0.113.9", "ACTIVE BLOCKS"):
        assert expected in text
    server.status["recent_alerts"].append({"@timestamp": "2026-11-25T22:31:00Z", "rule_id": "anomaly.port_scan",
                                           "severity": "medium", "source_ip": "2001:db8:1::66",
                                           "listener_port": 8444, "description": "scan"})
    server.status["uptime_s"] = 14.5
    server.status["counters"]["events"]["connection_accepted"] = 30
    screen = term.wait_for("anomaly.port_scan")
    assert "conn/s 10.0" in "\n".join(screen)
    term.type(b"q")
    assert term.wait() == 0
    assert term.output.rstrip().endswith(b"\x1b[?1049l"), "the alternate screen was not left"
    assert all(query == "status\n" for query in server.queries) and len(server.queries) >= 2


def test_top_quits_on_ctrl_c(server, terminal):
    term = terminal("--socket", server.path, "--interval", "0.2")
    term.wait_for("web-relay")
    os.kill(term.proc.pid, signal.SIGINT)
    assert term.wait() == 0
    assert term.output.rstrip().endswith(b"\x1b[?1049l")


def test_top_keeps_running_when_the_agent_goes_away(server, terminal):
    term = terminal("--socket", server.path, "--interval", "0.2")
    term.wait_for("web-relay")
    server.close()
    screen = term.wait_for("no agent answers")
    assert "agent not answering, retrying" in screen[-1]
    assert term.proc.poll() is None
    term.type(b"q")
    assert term.wait() == 0


def test_top_once_fits_a_small_terminal(server, terminal):
    term = terminal("--socket", server.path, "--once", cols=60, rows=16)
    assert term.wait() == 0
    lines = term.output.decode().replace("\r\n", "\n").rstrip("\n").split("\n")
    assert 0 < len(lines) <= 16 and all(len(line) <= 60 for line in lines)
    assert "\x1b" not in term.output.decode()
    assert "LISTENERS" in lines[3] and "ACTIVE BLOCKS" in "\n".join(lines)


def test_top_json_once_passes_the_status_through(server):
    result = socat_monitor("top", "--socket", server.path, "--once", "--format", "json", timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == SAMPLE


def test_top_without_agent_is_one_line_exit_3(tmp_path):
    result = socat_monitor("top", "--socket", str(tmp_path / "none.sock"), "--once", timeout=30)
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no agent answers on the control socket" in result.stderr


def test_top_stale_socket_is_exit_3(tmp_path):
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    result = socat_monitor("top", "--socket", str(path), timeout=30)
    assert result.returncode == 3 and "Connection refused" in result.stderr


def test_top_bad_answer_is_exit_2(tmp_path):
    srv = StatusServer(tmp_path / "bad.sock", {"version": "0.1.0", "pid": "not-a-number"})
    try:
        result = socat_monitor("top", "--socket", srv.path, "--once", timeout=30)
    finally:
        srv.close()
    assert result.returncode == 2 and "pid: expected a number" in result.stderr


def test_top_against_a_real_agent(tmp_path, procs, terminal):
    port, backend = free_port(), free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nlisteners:\n  - name: top-relay\n"
                      f"    port: {port}\n    allow_sources: [127.0.0.1/32]\n    action: alert\n"
                      "defaults:\n  unknown_listener: ignore\n")
    agent = AgentProcess(tmp_path, "--policy", str(policy), "--no-enforce", "--duration", "60")
    try:
        agent.wait_ready()
        start_echo(procs, backend)
        procs.socat(f"TCP-LISTEN:{port},fork,reuseaddr,max-children=20", f"TCP:127.0.0.1:{backend}", port=port)
        for _ in range(5):
            connect(port, source="127.0.0.1")
        connect(port, source="127.0.0.9")
        term = terminal("--socket", str(agent.socket), "--interval", "0.3")
        screen = "\n".join(term.wait_for("policy.source_denied", seconds=15))
        assert "top-relay" in screen and f":{port}" in screen and "127.0.0.9" in screen
        term.type(b"q")
        assert term.wait() == 0
        raw = socat_monitor("top", "--socket", str(agent.socket), "--once", "--format", "json", timeout=30)
        assert raw.returncode == 0, raw.stderr
        status = json.loads(raw.stdout)
        assert status["counters"]["events"]["connection_accepted"] >= 6
        assert status["counters"]["alerts"].get("policy.source_denied", 0) >= 1
    finally:
        agent.stop()
