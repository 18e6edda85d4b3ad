"""In-kernel egress guard: socat relays may dial only their allowed backends.

Loads `bpf/egress.c` with bcc, attaches its connect4/connect6 programs to a
cgroup2 directory (the root of the host's cgroup2 tree by default: /sys/fs/cgroup/unified on a
hybrid host, /sys/fs/cgroup on a unified one) through
BPF links, which run beside anybody else's programs and are detached by the
kernel when their last fd closes: when the agent stops or dies, so programs
never stack up across restarts. It fills the maps: which listeners are guarded, which backends each may reach, and which
processes belong to which listener (`track` the relay parent; the kernel
propagates it to forked children). Refused connects get EPERM before a
packet leaves and come back from `poll` as `policy.backend_denied` alerts.
Everything not tracked, or tracked for an unguarded listener, is allowed.
Relay processes the full table could not take are counted and come back
from `drain_errors` as a `PipelineError`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from typing import Sequence

from .. import BPF_DIR
from ..addresses import packed_text, parse_target
from ..host.syscalls import sys_bpf
from ..errors import EnvironmentProblem
from ..events import Alert, Listener, Outcome, PipelineError, ProcessInfo
from ..host import processes
from ..host.mounts import CGROUP2, cgroup2_root, ensure_mounts
from ..rules import new_alert

log = logging.getLogger(__name__)

SOURCE = BPF_DIR / "egress.c"
BPF_LINK_CREATE = 28
ATTACH_INET4_CONNECT = 10
ATTACH_INET6_CONNECT = 11
PROG_CGROUP_SOCK_ADDR = 18
RULE = "policy.backend_denied"


@dataclass(frozen=True, slots=True)
class EgressRule:
    """Listener `listener_port` may connect only to `allowed` (address or CIDR, port or None = any)."""

    listener_port: int
    allowed: tuple[tuple[str, int | None], ...]
    listener_ip: str | None = None
    name: str | None = None

    @classmethod
    def from_policy(cls, listener) -> "EgressRule":
        """From a `monitor.policy` ListenerPolicy (port, address, name, allow_backends of Backend)."""
        return cls(listener_port=listener.port,
                   allowed=tuple((str(b.network), b.port) for b in listener.allow_backends or ()),
                   listener_ip=listener.address, name=listener.name)


class _RuleKey(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("prefixlen", ctypes.c_uint32), ("listener", ctypes.c_uint16), ("port", ctypes.c_uint16),
                ("family", ctypes.c_uint8), ("addr", ctypes.c_uint8 * 16)]


class _Denial(ctypes.Structure):
    _fields_ = [("ktime_ns", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("listener", ctypes.c_uint16),
                ("port", ctypes.c_uint16), ("family", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3),
                ("addr", ctypes.c_uint8 * 16)]


def rule_keys(rule: EgressRule) -> list[_RuleKey]:
    """LPM keys for one rule (pure: also what the unit tests check)."""
    keys = []
    for i, (target, port) in enumerate(rule.allowed):
        net = parse_target(target, f"listener {rule.listener_port}: allow_backends[{i}]")
        key = _RuleKey()
        key.prefixlen = 40 + net.prefixlen
        key.listener = rule.listener_port
        key.port = port or 0
        key.family = net.version
        packed = net.network_address.packed
        ctypes.memmove(key.addr, packed, len(packed))
        keys.append(key)
    return keys


_libc = ctypes.CDLL(None, use_errno=True)


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """bpf(BPF_LINK_CREATE): attach a program to a cgroup through a link; the link's fd."""
    attr = (ctypes.c_uint32 * 12)(prog_fd, target_fd, attach_type, 0)
    fd = _libc.syscall(sys_bpf(), BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


class EgressGuard:
    def __init__(self, rules: Sequence[EgressRule], cgroup: str | None = None) -> None:
        cgroup = cgroup or cgroup2_root()
        if cgroup is None:
            raise EnvironmentProblem("egress", "no cgroup2 tree is mounted: the egress guard attaches there",
                                     f"mount -t cgroup2 none {CGROUP2}")
        try:
            import bcc
        except ImportError:
            raise EnvironmentProblem("egress", "bcc is not importable", "run scripts/setup.sh (python3-bpfcc)") from None
        if not os.path.isfile(os.path.join(cgroup, "cgroup.procs")):
            raise EnvironmentProblem("egress", f"{cgroup} is not a cgroup2 directory",
                                     f"mount -t cgroup2 none {CGROUP2}")
        ensure_mounts("egress")
        self._rules = {r.listener_port: r for r in rules}
        self._pending: list[Alert] = []
        self._links: list[int] = []
        self._untracked = 0          # relay processes user space could not put in the full table
        self._full_reported = 0
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        try:
            self.bpf = bcc.BPF(src_file=str(SOURCE).encode())
        except Exception as exc:
            raise EnvironmentProblem("egress", f"cannot load {SOURCE.name}: {exc}",
                                     "run `socat-monitor doctor` to see which kernel feature is missing") from None
        _libc.malloc_trim(0)   # what the compiler freed goes back to the system (about 26 MiB)
        self._fill(rules)
        self._cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, attach in ((b"egress_connect4", ATTACH_INET4_CONNECT), (b"egress_connect6", ATTACH_INET6_CONNECT)):
                fn = self.bpf.load_func(name, PROG_CGROUP_SOCK_ADDR, attach_type=attach)
                self._links.append(link_create(fn.fd, self._cgroup_fd, attach))
        except Exception as exc:
            self.close()
            raise EnvironmentProblem("egress", f"cannot attach connect programs to {cgroup}: {exc}",
                                     "a kernel with cgroup_sock_addr BPF support, run as root") from None
        self.bpf[b"denials"].open_ring_buffer(self._on_denial)

    def _fill(self, rules: Sequence[EgressRule]) -> None:
        guarded, allowed = self.bpf[b"guarded"], self.bpf[b"allowed"]
        guarded.clear()
        allowed.clear()
        for rule in rules:
            guarded[guarded.Key(rule.listener_port)] = guarded.Leaf(1)
            for key in rule_keys(rule):
                allowed[allowed.Key.from_buffer_copy(bytes(key))] = allowed.Leaf(1)

    def set_rules(self, rules: Sequence[EgressRule]) -> None:
        """Replace the rules (a policy reload); tracked processes stay tracked."""
        self._rules = {r.listener_port: r for r in rules}
        self._fill(rules)

    def track(self, pid: int, listener_port: int) -> None:
        """A relay parent was seen for that listener: it and its current and future children are scoped."""
        pids = self.bpf[b"relay_pids"]
        for p in [pid, *processes.children(pid)]:
            try:
                pids[pids.Key(p)] = pids.Leaf(listener_port)
            except Exception as exc:   # bcc: "Could not update table" when it is full
                self._untracked += 1
                log.warning("egress: pid %d of listener :%d not guarded: %s", p, listener_port, exc)

    def _on_denial(self, ctx, data, size) -> None:
        d = ctypes.cast(data, ctypes.POINTER(_Denial)).contents
        raw = bytes(d.addr)
        ip = packed_text(raw[:4] if d.family == 4 else raw)
        rule = self._rules.get(d.listener)
        allowed = ", ".join(f"{t}:{p}" if p else t for t, p in rule.allowed) if rule else "?"
        self._pending.append(new_alert(
            RULE,
            description=f"socat relay (pid {d.pid}) of listener :{d.listener} tried to connect to "
                        f"{ip}:{d.port}; refused in the kernel (allowed: {allowed})",
            timestamp_ns=self._offset_ns + d.ktime_ns,
            listener=Listener(rule.listener_ip or "0.0.0.0", d.listener, rule.name) if rule else None,
            process=ProcessInfo(pid=d.pid, comm=processes.comm(d.pid) or "socat"),
            destination_ip=ip, destination_port=d.port, outcome=Outcome.FAILURE))

    def poll(self) -> list[Alert]:
        """Denials the kernel reported since the last call (never blocks)."""
        self.bpf.ring_buffer_consume()
        out, self._pending = self._pending, []
        return out

    def lost(self) -> int:
        """Denials the ring buffer could not take (refused anyway, not reported)."""
        return sum(v.value for v in self.bpf[b"lost"].values())

    def unguarded(self) -> int:
        """Relay processes left unguarded because the process table was full (kernel and user space)."""
        return sum(v.value for v in self.bpf[b"full"].values()) + self._untracked

    def tracked(self) -> int:
        """Processes and threads in the relay table now."""
        return len(self.bpf[b"relay_pids"])

    def drain_errors(self) -> list[PipelineError]:
        """A PipelineError when more relay processes went unguarded since the last call."""
        total = self.unguarded()
        grew, self._full_reported = total - self._full_reported, total
        if grew <= 0:
            return []
        message = (f"egress guard: relay process table full, {grew} new relay processes run unguarded "
                   f"({total} since start)")
        log.error("%s", message)
        return [PipelineError("egress", message, time.time_ns(), count=grew)]

    def close(self) -> None:
        for fd in self._links:   # closing the link detaches its program
            os.close(fd)
        self._links.clear()
        if getattr(self, "_cgroup_fd", None) is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None
        self.bpf.cleanup()
