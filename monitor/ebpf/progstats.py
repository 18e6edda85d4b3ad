"""What the kernel says each attached BPF program cost: run count and run time (bpf_stats).

The kernel counts `run_cnt` and `run_time_ns` per program only while BPF
statistics are on. `StatsSwitch` turns them on with bpf(2) BPF_ENABLE_STATS:
the kernel keeps them on while that fd is open and turns them off when it
closes, also when the process dies, so nothing is left on after a crash or a
Ctrl-C (the `kernel.bpf_stats_enabled` sysctl would be). `attached_runs`
reads the figures of the programs a `LoadedObject` holds, each named by the
tracepoint it is attached to (BPF_TASK_FD_QUERY on the attachment's fd: the
kernel's own program names are cut at 15 characters, which leaves every
bcc tracepoint program `tracepoint__sys`).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ..host.syscalls import bpf
from .maps import OBJ_GET_INFO_BY_FD

TASK_FD_QUERY, ENABLE_STATS = 20, 32
STATS_RUN_TIME = 0
PROG_INFO_SIZE = 224               # struct bpf_prog_info up to run_cnt and beyond
PROG_ID, RUN_TIME_NS, RUN_CNT = 4, 192, 200   # their offsets in it
PROGRAM, PERF_EVENT = "anon_inode:bpf-prog", "anon_inode:[perf_event]"


@dataclass(frozen=True, slots=True)
class ProgramRun:
    """One attached program: its tracepoint, how often it ran and for how long in all, since it was loaded
    (counted only while statistics were on)."""

    tracepoint: str
    count: int
    ns: int


class StatsSwitch:
    """BPF run-time statistics on while this is open (BPF_ENABLE_STATS: the kernel's own refcount)."""

    def __init__(self) -> None:
        self._fd = bpf(ENABLE_STATS, (ctypes.c_uint32 * 2)(STATS_RUN_TIME, 0), "turning BPF statistics on")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "StatsSwitch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def program_figures(fd: int) -> tuple[int, int, int]:
    """(id, run count, run time in ns) of the program `fd`, from its `struct bpf_prog_info`."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    attr = (ctypes.c_uint32 * 4)(fd, PROG_INFO_SIZE, 0, 0)
    struct.pack_into("<Q", attr, 8, ctypes.addressof(info))
    bpf(OBJ_GET_INFO_BY_FD, attr, f"bpf program fd {fd}")
    (prog_id,) = struct.unpack_from("<I", info.raw, PROG_ID)
    run_ns, runs = struct.unpack_from("<QQ", info.raw, RUN_TIME_NS)
    return prog_id, runs, run_ns


def attachment(fd: int) -> tuple[int, str]:
    """(program id, tracepoint name) of this process's perf event `fd` that runs a BPF program."""
    name = ctypes.create_string_buffer(256)
    attr = (ctypes.c_uint64 * 6)()
    struct.pack_into("<IIIIQ", attr, 0, os.getpid(), fd, 0, len(name), ctypes.addressof(name))
    bpf(TASK_FD_QUERY, attr, f"perf event fd {fd}")
    (prog_id,) = struct.unpack_from("<I", attr, 24)
    return prog_id, name.value.decode(errors="replace")


def attached_runs(fds: Iterable[int]) -> list[ProgramRun]:
    """The figures of every program among `fds` that one of the perf events among `fds` attaches, by
    tracepoint name (a program attached twice is named by both, joined with `+`)."""
    kinds = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in fds}
    names: dict[int, list[str]] = {}
    for fd, kind in kinds.items():
        if kind == PERF_EVENT:
            prog_id, tracepoint = attachment(fd)
            names.setdefault(prog_id, []).append(tracepoint)
    runs = []
    for fd, kind in kinds.items():
        if kind == PROGRAM:
            prog_id, count, ns = program_figures(fd)
            if prog_id in names:
                runs.append(ProgramRun("+".join(sorted(names[prog_id])), count, ns))
    return sorted(runs, key=lambda run: run.tracepoint)
