"""Test lab: real socat processes, free ports and network namespaces.

Everything here starts real processes and namespaces and cleans up exactly
what it started (processes by pid, namespaces by the name it chose).
Traffic stays on loopback or inside namespaces made here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
IN_CI = os.environ.get("CI") == "true"


def require(binary: str) -> str:
    """Path of a binary the test needs; a missing one fails the test (never skips)."""
    path = shutil.which(binary)
    if path is None:
        raise AssertionError(f"{binary} is not installed: run scripts/setup.sh")
    return path


_handed_out: set[int] = set()
_LISTEN_PORTS = (20000, 32767)   # below the kernel's ephemeral range: no client socket can take them meanwhile


def free_port(family: int = socket.AF_INET) -> int:
    """A port to listen on: free now, below the ephemeral range (so no outgoing
    connection grabs it before the listener binds), never handed out twice."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    for _ in range(200):
        port = random.randint(*_LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AssertionError(f"no free port in {_LISTEN_PORTS} after 200 tries")


def wait_listening(port: int, host: str = "127.0.0.1", timeout: float = 5.0, netns: str | None = None) -> None:
    """Wait until something listens on host:port (in a namespace: via `ss`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            (["ip", "netns", "exec", netns] if netns else []) + ["ss", "-Hltn", f"sport = :{port}"],
            capture_output=True, text=True, check=False,
        ).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout}s")


class Processes:
    """Starts processes and ends exactly those, by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], netns: str | None = None, **kw) -> subprocess.Popen:
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def socat(self, *addresses: str, port: int | None = None, netns: str | None = None,
              options: tuple[str, ...] = ()) -> subprocess.Popen:
        proc = self.start([require("socat"), *options, *addresses], netns=netns)
        if port is not None:
            host = "::1" if addresses and addresses[0].upper().startswith("TCP6") else "127.0.0.1"
            try:
                wait_listening(port, host=host, netns=netns)
            except AssertionError as exc:
                said = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else "(still running)"
                raise AssertionError(f"{exc}; socat {' '.join(addresses)}: exit {proc.poll()}: {said}") from None
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        if proc.poll() is None:
            # The whole session we started (socat's fork children included), by its pgid = our pid.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


_ns_counter = itertools.count()


class Namespaces:
    """Network namespaces made for one test, joined by veth pairs, removed after."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.tag = uuid.uuid4().hex[:6]

    def add(self, role: str) -> str:
        name = f"smt-{role}-{self.tag}-{next(_ns_counter)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    def run(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check)

    def link(self, ns_a: str, addrs_a: list[str], ns_b: str, addrs_b: list[str]) -> None:
        """A veth pair between two namespaces with the given CIDR addresses on each end
        (IPv6 ones `nodad`: usable at once; hundreds are fine, they go in one `ip -batch`)."""
        idx = next(_ns_counter)
        a, b = f"sma{self.tag}{idx}", f"smb{self.tag}{idx}"
        subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
        subprocess.run(["ip", "link", "set", a, "netns", ns_a], check=True)
        subprocess.run(["ip", "link", "set", b, "netns", ns_b], check=True)
        for ns, dev, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
            commands = [f"addr add {addr} dev {dev}{' nodad' if ':' in addr else ''}" for addr in addrs]
            subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands + [f"link set {dev} up"]) + "\n",
                           text=True, capture_output=True, check=True)

    def remove_all(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], check=False)
        self.names.clear()


def socat_monitor(*args: str, check: bool = False, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run the real CLI as a user would."""
    return subprocess.run(
        [str(Path(PYTHON).parent / "socat-monitor"), *args],
        capture_output=True, text=True, check=check, timeout=timeout, **kw,
    )


def read_documents(directory: Path) -> list[dict]:
    """Every ECS document the agent wrote in `directory` (symlinks skipped: they name a file read anyway)."""
    import gzip
    import json

    docs: list[dict] = []
    for path in sorted(Path(directory).glob("*.ndjson*")):
        if path.is_symlink():
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            docs.extend(json.loads(line) for line in fh if line.strip())
    return docs


class AgentProcess:
    """A real `socat-monitor run` in the background, stopped with SIGTERM."""

    def __init__(self, tmp: Path, *args: str, netns: str | None = None, env: dict | None = None) -> None:
        self.output = tmp / "out"
        self.socket = tmp / "control.sock"
        self.log = tmp / "agent.log"
        argv = [str(Path(PYTHON).parent / "socat-monitor"), "-v", "run", "--output", str(self.output),
                "--control-socket", str(self.socket), "--state-dir", str(tmp / "state"), *args]
        if "--metrics" not in args:
            argv += ["--metrics", "off"]
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        self.log_fh = open(self.log, "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log_fh, text=True,
                                     start_new_session=True, env=env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        raise AssertionError(f"agent not ready after {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        """SIGTERM, then its exit code and stdout; one still running after `timeout` is killed (a failure)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the agent did not stop within {timeout}s of SIGTERM (killed): "
                                 f"{self.log.read_text()[-2000:]}") from None
        self.log_fh.close()
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log_fh.close()

    def documents(self) -> list[dict]:
        return read_documents(self.output)

    def text_log(self) -> str:
        return self.log.read_text()


def start_echo(procs: "Processes", port: int, host: str = "127.0.0.1", netns: str | None = None) -> subprocess.Popen:
    """A python echo backend (not socat, so the agent must not report it)."""
    proc = procs.start([PYTHON, "-m", "tests.echo", str(port), host], netns=netns, cwd=str(ROOT))
    wait_listening(port, host=host, netns=netns)
    return proc


def connect(port: int, host: str = "127.0.0.1", source: str | None = None, payload: bytes = b"ping",
            timeout: float = 5.0) -> tuple[str, int]:
    """One client connection (optionally from a chosen loopback source); returns its (ip, port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        local = s.getsockname()[:2]
        if payload:
            s.sendall(payload)
            with contextlib.suppress(OSError):
                s.recv(len(payload))
        return local[0], local[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll until predicate() is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
