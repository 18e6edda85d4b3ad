"""Ending sessions already open from a blocked source (a drop rule only stops
new ones): SOCK_DESTROY through `ss -K`, or deleting the conntrack entries.

Run on the namespace's worker thread: a child process inherits the
namespace of the thread that forks it.
"""

from __future__ import annotations

import subprocess
from typing import Iterable

from ..addresses import Network, is_host, target_text

MODES = ("none", "conntrack", "destroy")


def kill_command(mode: str, net: Network, ports: Iterable[int]) -> list[str]:
    if mode == "destroy":
        port_list = sorted(set(ports))
        argv = ["ss", "-K", "-n", "dst", target_text(net) if is_host(net) else str(net)]
        if port_list:
            argv += ["(", " or ".join(f"sport = :{p}" for p in port_list), ")"]
        return argv
    if mode == "conntrack":
        family = "ipv6" if net.version == 6 else "ipv4"
        return ["conntrack", "-D", "-f", family, "-s", str(net)]
    raise ValueError(f"kill_established mode {mode!r} has no command")


def end_sessions(mode: str, net: Network, ports: Iterable[int], timeout_s: float = 3.0) -> str | None:
    """End open sessions of `net`; returns an error text, or None when done."""
    if mode == "none":
        return None
    argv = kill_command(mode, net, ports)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]} failed: {exc}"
    # conntrack -D exits 1 when nothing matched: not an error
    if done.returncode != 0 and not (mode == "conntrack" and "0 flow entries" in done.stderr):
        return f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:200]}"
    return None
