"""Starting the agent's own Python children (the BPF loader, the columnar conversion) safely.

The agent runs as root, often started from a user's working directory
(`sudo socat-monitor run` in /tmp or a home). A plain `python -c`/`-m` child
puts that directory first on `sys.path`, so a `bcc.py` or a `monitor/` there
would run as root. `python_child` starts `sys.executable -P` (no working or
script directory on the path) in `/`, with `PYTHONPATH` naming this
package's root only and the caller's `PYTHONPATH`, `PYTHONSTARTUP` and
`PYTHONHOME` dropped. Paths handed to a child must be absolute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
DROPPED = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")


def child_environment() -> dict[str, str]:
    """The agent's environment without the caller's Python search settings, the package root its path."""
    env = {name: value for name, value in os.environ.items() if name not in DROPPED}
    env["PYTHONPATH"] = PACKAGE_ROOT
    return env


def python_child(args: list[str], **popen) -> subprocess.Popen:
    """`python -P ARGS` started in `/` with `child_environment()`; `popen` as `subprocess.Popen` takes it."""
    return subprocess.Popen([sys.executable, "-P", *args], cwd="/", env=child_environment(), **popen)
