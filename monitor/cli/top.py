"""`socat-monitor top`: a full-screen live view of a running agent.

Asks the agent's control socket for `status` every interval and draws
`monitor.liveview.render` with plain ANSI escapes (alternate screen, cursor
home, clear to end of line). `q` or Ctrl-C quits; `--once` prints one frame;
`--format json` prints the status answers as JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import sys
import termios
import time
import tty
from collections.abc import Iterator

import click

from ..errors import EnvironmentProblem, InputError, MonitorError
from ..liveview import Status, parse_status, render

DEFAULT_SOCKET = "/run/socat-monitor/control.sock"
ANSWER_LIMIT = 4 * 1024 * 1024


def query_agent(path: str, command: str, timeout: float = 2.0) -> dict:
    """Send one command line to the agent's control socket; its one JSON answer."""
    fix = "start the agent (socat-monitor run, or systemctl start socat-monitor) or pass --socket"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(command.encode() + b"\n")
            answer = _read_line(sock)
    except FileNotFoundError:
        raise EnvironmentProblem(path, "no agent control socket here", fix) from None
    except ConnectionRefusedError:
        raise EnvironmentProblem(path, "no agent answers on this socket (stale socket file)", fix) from None
    except PermissionError:
        raise EnvironmentProblem(path, "permission denied on the control socket", "run as root") from None
    except TimeoutError:
        raise EnvironmentProblem(path, f"the agent did not answer within {timeout:g}s", None) from None
    except OSError as exc:
        raise EnvironmentProblem(path, f"cannot talk to the agent: {exc.strerror or exc}", fix) from None
    try:
        data = json.loads(answer)
    except ValueError:
        raise InputError(path, f"the agent's answer to {command!r} is not JSON: {answer[:80]!r}") from None
    if not isinstance(data, dict):
        raise InputError(path, f"the agent's answer to {command!r} is not a JSON object")
    return data


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < ANSWER_LIMIT:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks).strip()


def fetch_status(path: str, timeout: float = 2.0) -> tuple[Status, dict]:
    data = query_agent(path, "status", timeout)
    return parse_status(data, where=f"{path}: status"), data


def _frame(lines: list[str]) -> str:
    return "\x1b[H" + "\r\n".join(line + "\x1b[K" for line in lines) + "\x1b[J"


@contextlib.contextmanager
def _screen() -> Iterator[None]:
    """Alternate screen, hidden cursor and single-key input; restored on any exit."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        tty.setcbreak(fd)
    sys.stdout.write("\x1b[?1049h\x1b[?25l")
    sys.stdout.flush()
    try:
        yield
    finally:
        sys.stdout.write("\x1b[?25h\x1b[?1049l")
        sys.stdout.flush()
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(seconds: float) -> bool:
    """Sleep up to `seconds`; True when the user pressed q."""
    if not os.isatty(sys.stdin.fileno()):
        time.sleep(seconds)
        return False
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready:
            key = os.read(sys.stdin.fileno(), 1)
            if key in (b"q", b"Q", b""):
                return True
    return False


def live(path: str, interval: float) -> None:
    """The full-screen loop: redraw every interval until q or Ctrl-C."""
    status, _ = fetch_status(path)   # fail before taking over the screen
    previous: Status | None = None
    problem = ""
    with _screen(), contextlib.suppress(KeyboardInterrupt):
        while True:
            size = shutil.get_terminal_size()
            lines = render(status, size.columns, size.lines, previous=previous, interval_s=interval)
            if problem:
                lines[-1] = f"q quit · {problem}"[:size.columns]
            sys.stdout.write(_frame(lines))
            sys.stdout.flush()
            if _wait_for_quit(interval):
                return
            try:
                previous, (status, _) = status, fetch_status(path)
                problem = ""
            except MonitorError as exc:
                problem = f"agent not answering, retrying: {exc.message}"


@click.command(name="top")
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True,
              help="The agent's control socket.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame (or one JSON status) and exit.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: the agent's status answers as JSON lines instead of a screen.")
def command(socket_path: str, interval: float, once: bool, fmt: str) -> None:
    """Live view of a running agent: listeners, connections per second, top
    sources, recent alerts and active blocks. Press q or Ctrl-C to quit."""
    if fmt == "json":
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                _, data = fetch_status(socket_path)
                click.echo(json.dumps(data, sort_keys=True))
                if once:
                    return
                time.sleep(interval)
    if once or not sys.stdout.isatty():
        status, _ = fetch_status(socket_path)
        size = shutil.get_terminal_size()
        click.echo("\n".join(line.rstrip() for line in render(status, size.columns, size.lines)).rstrip())
        return
    live(socket_path, interval)
