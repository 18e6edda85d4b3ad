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
import sys
import termios
import time
import tty
from collections.abc import Iterator

import click

from ..control import DEFAULT_SOCKET, request
from ..errors import MonitorError
from ..liveview import render
from ..status import Status, parse_status


def fetch_status(path: str, timeout: float = 2.0) -> tuple[Status, dict]:
    """The agent's status, parsed and raw; EnvironmentProblem when none answers."""
    data = request(path, "status", timeout)
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
    sources, recent alerts and active blocks. Press q or Ctrl-C to quit.

    Without a terminal (output piped) it prints one frame, as with --once.
    Exit status 3 when no agent answers on the socket."""
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
