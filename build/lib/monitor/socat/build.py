"""Which socat a verdict is for: a binary's path, version, `-V` features and `-hhh` keywords.

Address types and options depend on how socat was built (READLINE exists only
with `WITH_READLINE`), so "socat refuses to start" is a verdict about one
binary. `binary_build(path)` asks that binary (`-V`, `-hhh`); `process_build(pid)`
asks the running process's own executable (/proc/PID/exe);
`path_build()` the socat on PATH. A binary is run only when root or the
caller owns it and nobody else may write it, and a process's only when it
shares our mount namespace (the agent runs as root and must not execute
whatever a process named "socat", or a container, brought along);
otherwise, or when there is no binary, the verdict uses `tables.BUILTIN`
and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from .tables import BUILTIN, BUILTIN_VERSION, Keywords, parse_help

_RUN_TIMEOUT_S = 10
_ASKED_MAX = 32
# file identity (device, inode, mtime, size) -> its build: each binary is run once, not once per process
_ASKED: dict[tuple[int, int, int, int], SocatBuild] = {}


@dataclass(frozen=True, slots=True)
class SocatBuild:
    """One socat's keyword tables and features; `path` None = the built-in table (`note` says why)."""

    keywords: Keywords
    version: str
    path: str | None = None
    features: Mapping[str, bool] = field(default_factory=dict)   # WITH_READLINE -> False (#undef), ...
    note: str = ""

    @property
    def label(self) -> str:
        """Which socat a verdict is for, e.g. 'socat 1.7.4.4 (/usr/bin/socat)'."""
        if self.path is not None:
            return f"socat {self.version} ({self.path})"
        return f"socat {self.version} (built-in table" + (f": {self.note})" if self.note else ")")

    def lacks(self, feature: str | None) -> bool:
        """True when this binary says it was built without feature (`#undef WITH_...` in -V)."""
        return feature is not None and self.features.get(feature) is False


def builtin_build(note: str = "") -> SocatBuild:
    return SocatBuild(keywords=BUILTIN, version=BUILTIN_VERSION, note=note)


def parse_version(text: str) -> tuple[str | None, dict[str, bool]]:
    """The version and the WITH_... features in the text `socat -V` prints."""
    match = re.search(r"socat version (\S+)", text)
    features = {name: value != "0" for name, value in re.findall(r"#define (WITH_\w+) (\S+)", text)}
    features.update({name: False for name in re.findall(r"#undef (WITH_\w+)", text)})
    return (match.group(1) if match else None), features


def _run(path: str, flag: str) -> str:
    return subprocess.run([path, flag], capture_output=True, text=True, timeout=_RUN_TIMEOUT_S, check=False,
                          stdin=subprocess.DEVNULL, env={}).stdout


def _untrusted(st: os.stat_result) -> str | None:
    """Why a binary must not be run by this process, or None."""
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not root or the auditing user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def _ask(run_path: str, shown: str) -> SocatBuild:
    """The build a binary describes with its own -V and -hhh."""
    try:
        version, features = parse_version(_run(run_path, "-V"))
        table = parse_help(_run(run_path, "-hhh")) if version else None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return builtin_build(f"{shown} could not be run: {exc}")
    if version is None or table is None or not table.address_types:
        return builtin_build(f"{shown} printed no socat version or keyword table")
    return SocatBuild(keywords=table, version=version, path=shown, features=features)


def binary_build(path: str, shown: str | None = None) -> SocatBuild:
    """The build of the socat binary at path (named `shown` in verdicts); raises OSError if it is missing."""
    st = os.stat(path)
    shown = shown or path
    why = _untrusted(st)
    if why is not None:
        return builtin_build(f"{shown} not run: {why}")
    identity = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)   # a replaced binary is asked again
    if identity not in _ASKED:
        if len(_ASKED) >= _ASKED_MAX:
            _ASKED.clear()
        _ASKED[identity] = _ask(path, shown)
    return _ASKED[identity]


def process_build(pid: int) -> SocatBuild:
    """The build of a running process's own executable; the built-in table when it cannot be read."""
    exe = f"/proc/{pid}/exe"
    try:
        shown = os.readlink(exe)
        if os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
            # a container's own root owns its files: running them here would run its code with our rights
            return builtin_build(f"{shown} of pid {pid} not run: it is in another mount namespace")
        return binary_build(exe, shown)
    except OSError as exc:
        return builtin_build(f"executable of pid {pid} unreadable: {exc.strerror or exc}")


def path_build(name: str = "socat") -> SocatBuild:
    """The build of the socat found on PATH; the built-in table when there is none."""
    found = shutil.which(name)
    if found is None:
        return builtin_build(f"no {name} on PATH")
    return binary_build(found)
