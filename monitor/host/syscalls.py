"""System call numbers the agent calls by hand (through libc's `syscall`), per machine.

bpf(2) has no libc wrapper: the capture's map access and the egress guard's
link creation call it by number, which differs between architectures.
"""

from __future__ import annotations

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
