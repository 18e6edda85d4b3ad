"""In-kernel egress guard: socat relays may dial only their allowed backends.

Has `bpf/egress.c` compiled and loaded by bcc in a short-lived child
(`monitor.ebpf.loader`: the agent never maps bcc), which attaches its
fork/exit tracepoints and hands back the fds. The agent attaches the
connect4/connect6 programs to a cgroup2 directory (the root of the host's
cgroup2 tree by default: /sys/fs/cgroup/unified on a hybrid host,
/sys/fs/cgroup on a unified one) through BPF links (`monitor.ebpf.links`),
which run beside anybody else's programs and are detached by the kernel when
their last fd closes: when the agent stops or dies, so programs never stack
up across restarts. It fills the maps with bpf(2) (`monitor.ebpf.maps`):
which listeners are guarded, which backends each may reach, and which
processes belong to which listener (`track` the relay parent; the kernel
propagates it to forked children). Refused connects get EPERM before a
packet leaves, are read from the `denials` ring buffer (`monitor.ebpf.ring`)
and come back from `poll` as `policy.backend_denied` alerts.
Everything not tracked, or tracked for an unguarded listener, is allowed.
Relay processes the full table could not take are counted and come back
from `drain_errors` as a `PipelineError`.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import time
from dataclasses import dataclass
from typing import Sequence

from .. import BPF_DIR
from ..addresses import packed_text, parse_target
from ..ebpf import loader
from ..ebpf.links import ATTACH_INET4_CONNECT, ATTACH_INET6_CONNECT, PROG_CGROUP_SOCK_ADDR, link_create
from ..ebpf.ring import RingReader
from ..errors import EnvironmentProblem
from ..events import Alert, Listener, Outcome, PipelineError, ProcessInfo
from ..host import processes
from ..host.mounts import CGROUP2, cgroup2_root, ensure_mounts
from ..rules import new_alert

log = logging.getLogger(__name__)

SOURCE = BPF_DIR / "egress.c"
WHERE = "egress"
RULE = "policy.backend_denied"
DENIAL_PAGES = 8   # the `denials` ring buffer, in pages (egress.c takes it as a macro)
PROGRAMS = (loader.Program("egress_connect4", PROG_CGROUP_SOCK_ADDR, ATTACH_INET4_CONNECT),
            loader.Program("egress_connect6", PROG_CGROUP_SOCK_ADDR, ATTACH_INET6_CONNECT))
ZERO, ONE = (0).to_bytes(4, "little"), b"\x01"


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


class EgressGuard:
    def __init__(self, rules: Sequence[EgressRule], cgroup: str | None = None) -> None:
        cgroup = cgroup or cgroup2_root()
        if cgroup is None:
            raise EnvironmentProblem(WHERE, "no cgroup2 tree is mounted: the egress guard attaches there",
                                     f"mount -t cgroup2 none {CGROUP2}")
        if not os.path.isfile(os.path.join(cgroup, "cgroup.procs")):
            raise EnvironmentProblem(WHERE, f"{cgroup} is not a cgroup2 directory",
                                     f"mount -t cgroup2 none {CGROUP2}")
        ensure_mounts(WHERE)
        self._rules = {r.listener_port: r for r in rules}
        self._untracked = 0          # relay processes user space could not put in the full table
        self._full_reported = 0
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        self._links: list[int] = []
        self._cgroup_fd: int | None = None
        self._ring: RingReader | None = None
        self.bpf = loader.load(WHERE, SOURCE, [f"-DDENIAL_PAGES={DENIAL_PAGES}"], {}, PROGRAMS)
        self._maps = self.bpf.maps
        try:
            self._ring = RingReader(self._maps["denials"].fd, DENIAL_PAGES * mmap.PAGESIZE)
            self._fill(rules)
        except OSError as exc:
            self.close()
            raise EnvironmentProblem(WHERE, f"cannot fill the egress guard's maps: {exc}", loader.RECOMPILE_FIX) from None
        try:
            self._cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
            for program in PROGRAMS:
                self._links.append(link_create(self.bpf.programs[program.name], self._cgroup_fd, program.attach_type))
        except OSError as exc:
            self.close()
            raise EnvironmentProblem(WHERE, f"cannot attach connect programs to {cgroup}: {exc}",
                                     "a kernel with cgroup_sock_addr BPF support, run as root") from None

    def _fill(self, rules: Sequence[EgressRule]) -> None:
        """The maps hold exactly `rules`: the new entries first, then the stale ones go (a reload never
        leaves a guarded listener without its allowed backends)."""
        guarded = {rule.listener_port.to_bytes(2, "little") for rule in rules}
        allowed = {bytes(key) for rule in rules for key in rule_keys(rule)}
        for name, keys in (("allowed", allowed), ("guarded", guarded)):
            table = self._maps[name]
            for key in keys:
                table.update(key, ONE)
        for name, keys in (("guarded", guarded), ("allowed", allowed)):
            table = self._maps[name]
            for key in [k for k in table.keys() if k not in keys]:
                table.delete(key)

    def set_rules(self, rules: Sequence[EgressRule]) -> None:
        """Replace the rules (a policy reload); tracked processes stay tracked."""
        self._rules = {r.listener_port: r for r in rules}
        self._fill(rules)

    def track(self, pid: int, listener_port: int) -> None:
        """A relay parent was seen for that listener: it and its current and future children are scoped."""
        pids = self._maps["relay_pids"]
        for p in [pid, *processes.children(pid)]:
            try:
                pids.update(p.to_bytes(4, "little"), listener_port.to_bytes(2, "little"))
            except OSError as exc:   # E2BIG when the table is full
                self._untracked += 1
                log.warning("egress: pid %d of listener :%d not guarded: %s", p, listener_port, exc)

    def _alert(self, record: bytes) -> Alert:
        d = _Denial.from_buffer_copy(record[:ctypes.sizeof(_Denial)])
        raw = bytes(d.addr)
        ip = packed_text(raw[:4] if d.family == 4 else raw)
        rule = self._rules.get(d.listener)
        allowed = ", ".join(f"{t}:{p}" if p else t for t, p in rule.allowed) if rule else "?"
        return new_alert(
            RULE,
            description=f"socat relay (pid {d.pid}) of listener :{d.listener} tried to connect to "
                        f"{ip}:{d.port}; refused in the kernel (allowed: {allowed})",
            timestamp_ns=self._offset_ns + d.ktime_ns,
            listener=Listener(rule.listener_ip or "0.0.0.0", d.listener, rule.name) if rule else None,
            process=ProcessInfo(pid=d.pid, comm=processes.comm(d.pid) or "socat"),
            destination_ip=ip, destination_port=d.port, outcome=Outcome.FAILURE)

    def poll(self) -> list[Alert]:
        """Denials the kernel reported since the last call (never blocks; closed: none)."""
        records: list[bytes] = []
        if self._ring is not None:
            self._ring.drain(records)
        return [self._alert(record) for record in records]

    def lost(self) -> int:
        """Denials the ring buffer could not take (refused anyway, not reported)."""
        return self._maps["lost"].sum_u64(ZERO)

    def unguarded(self) -> int:
        """Relay processes left unguarded because the process table was full (kernel and user space)."""
        return self._maps["full"].sum_u64(ZERO) + self._untracked

    def tracked(self) -> int:
        """Processes and threads in the relay table now."""
        return sum(1 for _ in self._maps["relay_pids"].keys())

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
        if self._cgroup_fd is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self.bpf.close()
