"""Processes as /proc shows them: command line, environment, status, executable,
start time, children and the running socat processes.

Each reader takes the /proc root (`proc`, tests pass a fake tree) and
returns None (or nothing) for a process that is gone or unreadable, except
`read_process`, which the audit calls for one named pid and so raises.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

PROC = "/proc"
MAX_CMDLINE_BYTES = 8192       # a command line copied into events is cut here (the kernel side keeps 20 x 128)
AUDIT_CMDLINE_BYTES = 65536    # the audit reads this much (socat.grammar refuses more), so padding hides nothing
MAX_ENVIRON_BYTES = 65536
TRUNCATED = "[...cut]"
NS_GET_OWNER_UID = 0xB704      # ioctl on a user namespace file: the uid that created it (<linux/nsfs.h>)


@dataclass(frozen=True, slots=True)
class Status:
    """The fields of /proc/PID/status the monitor uses."""

    name: str
    ppid: int | None
    uid: int | None          # effective uid
    cap_eff: int             # effective capability set, as a bit mask


@dataclass(frozen=True, slots=True)
class ProcessFacts:
    """What /proc says about one process."""

    pid: int
    ppid: int
    uid: int
    comm: str
    argv: tuple[str, ...]
    environ: dict[str, str]
    executable: str | None


def read_text(path: str) -> str | None:
    """A /proc file's text, None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def parse_status(text: str) -> Status:
    """/proc/PID/status text as a `Status` (a missing field is None, or 0 for the capabilities)."""
    fields = dict(line.partition(":")[::2] for line in text.splitlines())
    ppid, uid = fields.get("PPid", "").split(), fields.get("Uid", "").split()
    return Status(name=fields.get("Name", "").strip(), ppid=int(ppid[0]) if ppid else None,
                  uid=int(uid[1]) if len(uid) > 1 else None, cap_eff=int(fields.get("CapEff", "0").strip(), 16))


def status(pid: int | str | None = None, proc: str = PROC) -> Status | None:
    """PID's status (this process's when None); None when it is gone or unreadable."""
    text = read_text(f"{proc}/{pid if pid is not None else 'self'}/status")
    return parse_status(text) if text is not None else None


def has_capability(bit: int) -> bool:
    """This process's effective set holds capability `bit` (read from /proc: no syscall that can hang)."""
    own = status()
    return own is not None and bool(own.cap_eff >> bit & 1)


def comm(pid: int | str, proc: str = PROC) -> str | None:
    text = read_text(f"{proc}/{pid}/comm")
    return text.rstrip("\n") if text is not None else None


def _split_nul(raw: bytes) -> list[str]:
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0")]


def cmdline(pid: int | str, proc: str = PROC, limit: int = MAX_CMDLINE_BYTES) -> tuple[str, ...]:
    """PID's argv, at most `limit` bytes of it (the cut argument ends in TRUNCATED); OSError if unreadable.

    A process chooses its own argv (and can rewrite it after exec): unbounded, it
    would be copied into every event of that process."""
    with open(f"{proc}/{pid}/cmdline", "rb") as fh:
        raw = fh.read(limit + 1)
    if len(raw) <= limit:
        return tuple(_split_nul(raw)[:-1])
    args = _split_nul(raw[:limit])
    return (*args[:-1], args[-1] + TRUNCATED)


def environ(pid: int | str, proc: str = PROC) -> dict[str, str]:
    """PID's environment (its first MAX_ENVIRON_BYTES); raises OSError when it cannot be read."""
    with open(f"{proc}/{pid}/environ", "rb") as fh:
        pairs = [entry.partition("=") for entry in _split_nul(fh.read(MAX_ENVIRON_BYTES)) if entry]
    return {key: value for key, _, value in pairs}


def executable(pid: int | str, proc: str = PROC) -> str | None:
    try:
        return os.readlink(f"{proc}/{pid}/exe")
    except OSError:
        return None


def netns_inode(pid: int | str, proc: str = PROC) -> int | None:
    """The inode of PID's network namespace (what `ip netns identify` compares), None when unreadable."""
    try:
        return os.stat(f"{proc}/{pid}/ns/net").st_ino
    except OSError:
        return None


def userns_owner(pid: int | str, proc: str = PROC) -> int | None:
    """The uid that owns PID's user namespace, as this process sees it (0 for the initial one, and
    for one root made); None when unreadable."""
    try:
        fd = os.open(f"{proc}/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return struct.unpack("I", fcntl.ioctl(fd, NS_GET_OWNER_UID, bytes(4)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat_fields(pid: int | str, proc: str) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 on), None when unreadable."""
    text = read_text(f"{proc}/{pid}/stat")
    return text.rsplit(")", 1)[1].split() if text and ")" in text else None


def start_ticks(pid: int | str, proc: str = PROC) -> int | None:
    """PID's start time in clock ticks since boot."""
    fields = _stat_fields(pid, proc)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def pids(proc: str = PROC) -> list[int]:
    return [int(entry) for entry in os.listdir(proc) if entry.isdigit()]


def pids_named(comms: Iterable[str], proc: str = PROC) -> list[int]:
    """The processes whose comm is one of `comms`."""
    wanted = set(comms)
    return [pid for pid in pids(proc) if comm(pid, proc) in wanted]


def children(pid: int, proc: str = PROC) -> list[int]:
    """The processes whose parent is `pid`, now."""
    out = []
    for other in pids(proc):
        fields = _stat_fields(other, proc)
        if fields and int(fields[1]) == pid:
            out.append(other)
    return out


def read_process(pid: int, proc: str = PROC) -> ProcessFacts:
    """argv (as much as the audit reads), environment, uid and parent of a process; raises
    FileNotFoundError if it is gone."""
    argv = cmdline(pid, proc, AUDIT_CMDLINE_BYTES + 1)
    env = environ(pid, proc)
    with open(f"{proc}/{pid}/status", encoding="utf-8", errors="replace") as fh:
        facts = parse_status(fh.read())
    return ProcessFacts(pid=pid, ppid=facts.ppid or 0, uid=facts.uid or 0, comm=facts.name, argv=argv,
                        environ=env, executable=executable(pid, proc))


def socat_processes(proc: str = PROC) -> list[ProcessFacts]:
    """Every socat process now, without the fork children of another socat (same argv as their parent)."""
    found: dict[int, ProcessFacts] = {}
    for pid in pids_named(("socat",), proc):
        try:
            found[pid] = read_process(pid, proc)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return [facts for facts in found.values()
            if not (facts.ppid in found and found[facts.ppid].argv == facts.argv)]


def boot_id() -> str:
    """The first 12 hex digits of this boot's id ("0" when unknown)."""
    text = read_text(f"{PROC}/sys/kernel/random/boot_id")
    return text.strip().replace("-", "")[:12] if text else "0"


def resident_bytes() -> int:
    """This process's resident memory."""
    with open(f"{PROC}/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
