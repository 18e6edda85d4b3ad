"""The kernel filesystems BPF needs: where they are mounted (tracefs, debugfs,
the cgroup2 tree the egress guard attaches to), which are mounted, and
mounting tracefs and debugfs where they are missing (e.g. under
`ip netns exec`, which gives a fresh /sys)."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterable

from ..errors import EnvironmentProblem

log = logging.getLogger(__name__)

TRACING = "/sys/kernel/tracing"
DEBUGFS = "/sys/kernel/debug"
CGROUP2 = "/sys/fs/cgroup/unified"     # cgroup2 on a hybrid (v1 + v2) host
CGROUP2_ONLY = "/sys/fs/cgroup"        # cgroup2 on a unified host (systemd's default, Debian 12)
MOUNTS_TABLE = "/proc/self/mounts"
TRACING_MOUNTS = ((TRACING, "tracefs"), (DEBUGFS, "debugfs"))


def mounted(table: str = MOUNTS_TABLE) -> dict[str, str]:
    """mount point -> fs type (empty when the table cannot be read)."""
    out: dict[str, str] = {}
    try:
        with open(table, encoding="utf-8") as fh:
            for line in fh:
                cols = line.split()
                if len(cols) >= 3:
                    out[cols[1]] = cols[2]
    except OSError:
        pass
    return out


def cgroup2_root(table: str = MOUNTS_TABLE) -> str | None:
    """Where the cgroup2 tree is mounted: the hybrid place, else the unified one, else any; None if nowhere."""
    found = [point for point, fstype in mounted(table).items() if fstype == "cgroup2"]
    for preferred in (CGROUP2, CGROUP2_ONLY):
        if preferred in found:
            return preferred
    return found[0] if found else None


def ensure_mounts(where: str, mounts: Iterable[tuple[str, str]] = TRACING_MOUNTS) -> None:
    """Mount tracefs/debugfs where missing; EnvironmentProblem (naming `where`) when that fails."""
    for path, fstype in mounts:
        if os.path.ismount(path):
            continue
        fix = f"mount -t {fstype} none {path}"
        if not os.path.isdir(path):
            raise EnvironmentProblem(where, f"{path} does not exist: is this a Linux host with {fstype}?", fix)
        done = subprocess.run(["mount", "-t", fstype, "none", path], capture_output=True, check=False)
        if done.returncode != 0 or not os.path.ismount(path):
            raise EnvironmentProblem(where, f"{fstype} is not mounted at {path} and mounting it failed", fix)
        log.info("mounted %s at %s", fstype, path)
