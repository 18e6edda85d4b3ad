"""System call numbers the agent calls by hand (through libc's `syscall`), per machine.

bpf(2) has no libc wrapper: `bpf()` calls it by number, which differs
between architectures (the capture's map access, program statistics and the
egress guard's link creation).
"""

from __future__ import annotations

import ctypes
import os
import platform

from ..errors import EnvironmentProblem

SYS_BPF = {"x86_64": 321, "aarch64": 280}      # bpf(2)'s syscall number per machine


def sys_bpf() -> int:
    """bpf(2)'s syscall number here; EnvironmentProblem on a machine the agent knows no number for."""
    machine = platform.machine()
    if machine not in SYS_BPF:
        raise EnvironmentProblem("bpf", f"this machine is {machine or 'unknown'}: socat-monitor calls bpf(2) only "
                                        f"on {' and '.join(SYS_BPF)}")
    return SYS_BPF[machine]


_libc = ctypes.CDLL(None, use_errno=True)


def bpf(command: int, attr: ctypes.Array | ctypes.Structure, what: str) -> int:
    """One bpf(2) call on `attr` (a `union bpf_attr`): its result (an fd, or 0); OSError naming `what`."""
    result = _libc.syscall(sys_bpf(), command, ctypes.byref(attr), ctypes.sizeof(attr))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result
