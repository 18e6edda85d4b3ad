"""Raw kernel records -> typed events: process facts, listener, session.

`ProcessTable` keeps what is known of each watched process, by pid, in a
bounded LRU: argv from the kernel's exec record, else /proc read once at a
new pid (executable, command line, start time, parent, network namespace and
the owner of its user namespace: `monitor.host.processes`; the namespace's
`ip netns` name, cgroup and container: `monitor.host.identity`, cached). The uid a process
was exec'd as is kept (`started_uid`): socat's `su=` drops the uid after the
exec, and a relay root started stays root's; a process first seen through
/proc counts as started by the uid it has then. The namespaces of a process a
non-root user started are read again at each of its events. A fork child of a
known process inherits its parent's facts without touching /proc (fork
keeps argv and executable), so a child that exits at once is still
complete. `Enricher` turns `RawEvent`s into `ConnectionEvent`/`ProcessEvent`
with wall-clock time converted from ktime through one fixed offset, and a
`session_id` shared by the accept in the relay and the connect in its child.
"""

from __future__ import annotations

import errno
import os
import pwd
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from ..events import (
    ACCEPTED,
    ATTEMPTED,
    CLOSED,
    DENIED,
    EGRESS,
    FAILURE,
    INGRESS,
    SUCCESS,
    Action,
    ConnectionEvent,
    Listener,
    ProcessEvent,
    ProcessInfo,
)
from ..host import identity, processes
from .decode import (
    EV_ACCEPT,
    EV_CLOSE,
    EV_CONNECT,
    EV_EXEC,
    F_EXITED,
    F_FAILED,
    F_INGRESS,
    F_REFUSED,
    RawEvent,
)

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def monotonic_offset_ns() -> int:
    """wall clock - CLOCK_MONOTONIC (bpf_ktime_get_ns), measured once, tightly."""
    best = None
    for _ in range(5):
        a = time.monotonic_ns()
        w = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) // 2)
    return best[1]


def errno_name(err: int) -> str | None:
    return errno.errorcode.get(err, str(err)) if err else None


@dataclass(slots=True)
class _Known:
    info: ProcessInfo
    from_exec: bool


class ProcessTable:
    """Facts about watched processes, by pid, bounded LRU."""

    def __init__(self, size: int, offset_ns: int, proc: str = processes.PROC) -> None:
        self.size = size
        self.offset_ns = offset_ns
        self.proc = proc
        self._known: OrderedDict[int, _Known] = OrderedDict()
        self._users: dict[int, str | None] = {}
        self._boot_ns: int | None = None
        self.identities = identity.Identities()
        self.proc_reads = 0

    def __len__(self) -> int:
        return len(self._known)

    def user_name(self, uid: int) -> str | None:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users[uid]

    def _put(self, pid: int, known: _Known) -> None:
        self._known[pid] = known
        self._known.move_to_end(pid)
        while len(self._known) > self.size:
            self._known.popitem(last=False)

    def forget(self, pid: int) -> None:
        self._known.pop(pid, None)

    def on_exec(self, raw: RawEvent) -> ProcessInfo:
        """A new program: argv from the kernel (from /proc when the kernel had none), the rest from /proc."""
        exe = processes.executable(raw.pid, self.proc)
        ppid = raw.ppid or self._status_ppid(raw.pid)
        info = self._identified(ProcessInfo(
            pid=raw.pid, comm=raw.comm, ppid=ppid, tid=raw.tid, uid=raw.uid, gid=raw.gid,
            user_name=self.user_name(raw.uid), executable=exe, args=raw.argv or self._args(raw.pid),
            start_ns=raw.ktime_ns + self.offset_ns, started_uid=raw.uid,
        ))
        self._put(raw.pid, _Known(info, True))
        return info

    def get(self, raw: RawEvent) -> ProcessInfo:
        """The process behind a record: cached, inherited from the parent, or read from /proc."""
        known = self._known.get(raw.pid)
        if known is None or (raw.ppid and known.info.ppid and known.info.ppid != raw.ppid):
            known = self._learn(raw)   # new pid, or a reused one (another parent)
        else:
            self._known.move_to_end(raw.pid)
        if known.info.started_uid:
            self._look_again(raw.pid, known)
        info = known.info
        if info.tid != raw.tid or info.uid != raw.uid or info.gid != raw.gid or (raw.ppid and info.ppid is None):
            info = replace(info, tid=raw.tid, uid=raw.uid, gid=raw.gid, user_name=self.user_name(raw.uid),
                           ppid=raw.ppid or info.ppid)
            known.info = info
        return info

    def _look_again(self, pid: int, known: _Known) -> None:
        """A process a non-root user started can move into namespaces of its own at any time (unshare):
        its namespaces are read again at each event (None when it is gone: unknown, so not trusted)."""
        netns, owner = processes.netns_inode(pid, self.proc), processes.userns_owner(pid, self.proc)
        if (netns, owner) != (known.info.netns, known.info.userns_owner):
            known.info = self._identified(known.info)

    def _identified(self, info: ProcessInfo) -> ProcessInfo:
        return self.identities.of(info, self.proc)

    def _learn(self, raw: RawEvent) -> _Known:
        parent = self._known.get(raw.ppid) if raw.ppid else None
        if parent is not None and parent.info.comm == raw.comm:
            info = self._forked(parent.info, raw)
        else:
            info = self._read_proc(raw)
        known = _Known(info, False)
        self._put(raw.pid, known)
        return known

    def _forked(self, parent: ProcessInfo, raw: RawEvent) -> ProcessInfo:
        """A fork child without exec: the parent's program, argv and namespaces, its own ids. Spelled out
        rather than `dataclasses.replace` (half the cost, once per relayed connection), positionally in the
        field order of `ProcessInfo` (keywords cost a third more); `tests/test_capture_decode.py` holds it
        to every field of `ProcessInfo`."""
        return ProcessInfo(
            raw.pid, parent.comm, raw.ppid, raw.tid, raw.uid, raw.gid, self.user_name(raw.uid), parent.executable,
            parent.args, None, parent.started_uid, parent.netns, parent.userns_owner, parent.netns_name,
            parent.cgroup, parent.container,
        )

    def _read_proc(self, raw: RawEvent) -> ProcessInfo:
        self.proc_reads += 1
        args = self._args(raw.pid)
        ppid = raw.ppid or self._status_ppid(raw.pid)
        return self._identified(ProcessInfo(
            pid=raw.pid, comm=raw.comm, ppid=ppid, tid=raw.tid, uid=raw.uid, gid=raw.gid,
            user_name=self.user_name(raw.uid), executable=processes.executable(raw.pid, self.proc), args=args,
            start_ns=self._start_ns(raw.pid), started_uid=raw.uid,
        ))

    def _args(self, pid: int) -> tuple[str, ...]:
        try:
            return processes.cmdline(pid, self.proc)
        except OSError:
            return ()

    def _status_ppid(self, pid: int) -> int | None:
        status = processes.status(pid, self.proc)
        return status.ppid if status is not None else None

    def _start_ns(self, pid: int) -> int | None:
        ticks = processes.start_ticks(pid, self.proc)
        # starttime is in clock ticks since boot (CLOCK_BOOTTIME ~ MONOTONIC without suspend)
        return None if ticks is None else ticks * 1_000_000_000 // CLK_TCK + self.offset_ns


class Enricher:
    """RawEvent -> ConnectionEvent | ProcessEvent."""

    def __init__(self, processes: ProcessTable, offset_ns: int, session_prefix: str, byte_counts: bool = True) -> None:
        self.processes = processes
        self.byte_counts = byte_counts
        self.offset_ns = offset_ns
        self.prefix = session_prefix
        self._listeners: dict[tuple[str | None, int], Listener] = {}
        self._sessions: dict[int, str] = {}
        # the last 1024 connects and closes, oldest first: an OrderedDict, whose oldest goes in O(1) (a dict
        # whose first entries were deleted scans past them to find the next: hundreds of slots at each record)
        self._recent_connects: OrderedDict[tuple[int, int, int, int], None] = OrderedDict()

    def session_id(self, cookie: int) -> str | None:
        """The session of a connection's cookie: formatted once for its four records."""
        if not cookie:
            return None
        session = self._sessions.get(cookie)
        if session is None:
            if len(self._sessions) >= 4096:
                self._sessions.clear()
            session = self._sessions[cookie] = f"{self.prefix}-{cookie:x}"
        return session

    def _listener(self, ip: str | None, port: int) -> Listener | None:
        if not port:
            return None
        key = (ip, port)
        lst = self._listeners.get(key)
        if lst is None:
            if len(self._listeners) > 4096:
                self._listeners.clear()
            lst = self._listeners[key] = Listener(ip=ip or "0.0.0.0", port=port)
        return lst

    def duplicate(self, raw: RawEvent) -> bool:
        """True for the second report of one connect or close (kernel-side races report twice)."""
        key = (raw.type, raw.pid, raw.ktime_ns, raw.sport)
        if key in self._recent_connects:
            return True
        recent = self._recent_connects
        recent[key] = None
        if len(recent) > 1024:
            recent.popitem(last=False)
        return False

    def __call__(self, raw: RawEvent) -> ConnectionEvent | ProcessEvent | None:
        """The typed event of a record; None for a duplicate report."""
        if (raw.type == EV_CONNECT or raw.type == EV_CLOSE) and self.duplicate(raw):
            return None
        ts = raw.ktime_ns + self.offset_ns
        if raw.type == EV_EXEC:
            return ProcessEvent(action=Action.PROCESS_STARTED, timestamp_ns=ts,
                                process=self.processes.on_exec(raw), ktime_ns=raw.ktime_ns)
        proc = self.processes.get(raw)
        if raw.type > EV_CLOSE:  # EV_EXIT
            self.processes.forget(raw.pid)
            exited = bool(raw.flags & F_EXITED)
            return ProcessEvent(action=Action.PROCESS_ENDED, timestamp_ns=ts, process=proc,
                                exit_code=raw.err if exited else None,
                                signal=None if exited or not raw.sig else raw.sig, ktime_ns=raw.ktime_ns)
        flags = raw.flags
        etype = raw.type
        if etype == EV_ACCEPT:
            action = ACCEPTED
        elif etype == EV_CONNECT:
            action = ATTEMPTED
        elif flags & F_REFUSED:
            action = DENIED
        else:
            action = CLOSED
        failed = bool(flags & F_FAILED)
        closing = etype == EV_CLOSE
        counted = closing and self.byte_counts
        # the listener and the session from their caches, a call only to fill one
        listener = self._listeners.get((raw.laddr, raw.lport)) or self._listener(raw.laddr, raw.lport)
        session = self._sessions.get(raw.cookie) or self.session_id(raw.cookie)
        # positional, in the field order of ConnectionEvent: this runs for every record (keywords cost 2x)
        return ConnectionEvent(
            action, ts, raw.saddr, raw.sport, raw.daddr, raw.dport,
            INGRESS if flags & F_INGRESS else EGRESS,
            FAILURE if failed or action is DENIED else SUCCESS,
            proc, listener, session, raw.ktime_ns,
            raw.duration_ns if closing else None, raw.bytes_in if counted else None,
            raw.bytes_out if counted else None, errno_name(raw.err) if failed else None, action is DENIED,
        )
