"""Attaching a loaded program to a cgroup through a BPF link (bpf(2) BPF_LINK_CREATE).

A link runs beside anybody else's programs on the same hook, and the kernel
detaches it when its last fd closes: when the agent stops or dies, so
programs never stack up across restarts.
"""

from __future__ import annotations

import ctypes

from ..host.syscalls import bpf

BPF_LINK_CREATE = 28
PROG_CGROUP_SOCK_ADDR = 18
ATTACH_INET4_CONNECT = 10
ATTACH_INET6_CONNECT = 11


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach `prog_fd` to the cgroup directory `target_fd` at `attach_type`; the link's fd."""
    attr = (ctypes.c_uint32 * 12)(prog_fd, target_fd, attach_type, 0)
    return bpf(BPF_LINK_CREATE, attr, "BPF link")
