"""Running work inside a named network namespace, one thread at a time.

`NetnsWorker` is a thread that enters the namespace once (setns applies to
the calling thread only) and runs the callables it is given there, each with
a deadline: a netlink write that hangs (as pyroute2 writes do without
CAP_NET_ADMIN) never hangs the caller. `None` means the caller's namespace.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

from ..errors import EnvironmentProblem, InputError
from ..host.identity import NETNS_DIR
from ..host.processes import has_capability

CLONE_NEWNET = 0x40000000
CAP_NET_ADMIN = 12

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise InputError("--netns", f"{name!r} is not a network namespace name")
    path = os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        raise InputError("--netns", f"network namespace {name!r} does not exist ({path} missing)")
    return path


def netns_inode(name: str | None) -> int:
    """The inode of namespace `name`, or of this process's own when None (what a relay's is compared with)."""
    return os.stat(netns_path(name) if name is not None else "/proc/self/ns/net").st_ino


def named_inode(name: str) -> int | None:
    """The inode of the namespace `ip netns` calls `name` (None when there is none by that name now)."""
    try:
        return netns_inode(name)
    except (InputError, OSError):
        return None


def enter_netns(name: str) -> None:
    """Move the calling thread into namespace `name` (it must exist: never created here)."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise EnvironmentProblem("netns", f"cannot enter network namespace {name!r}: {os.strerror(err)}",
                                     "run as root (CAP_SYS_ADMIN)")
    finally:
        os.close(fd)


def require_cap_net_admin(what: str) -> None:
    if not has_capability(CAP_NET_ADMIN):
        raise EnvironmentProblem(what, "this process lacks CAP_NET_ADMIN, so it cannot change nftables",
                                 "run as root or grant CAP_NET_ADMIN (e.g. systemd AmbientCapabilities=CAP_NET_ADMIN)")


class NetnsWorker:
    """A daemon thread living in one network namespace, running calls with a deadline."""

    def __init__(self, netns: str | None, name: str = "enforce-netns") -> None:
        if netns is not None:
            netns_path(netns)
        self.netns = netns
        self._jobs: queue.Queue = queue.Queue()
        self._ready: Future = Future()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self._ready.result(timeout=10)

    def _loop(self) -> None:
        try:
            if self.netns is not None:
                enter_netns(self.netns)
        except BaseException as exc:  # reported to the constructor
            self._ready.set_exception(exc)
            return
        self._ready.set_result(True)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def call(self, fn: Callable[[], Any], timeout: float, what: str) -> Any:
        fut: Future = Future()
        self._jobs.put((fn, fut))
        try:
            return fut.result(timeout=timeout)
        except FutureTimeout:
            fut.cancel()
            raise EnvironmentProblem(what, f"no answer from the kernel within {timeout:g}s",
                                     "check CAP_NET_ADMIN and that nftables is available") from None

    def close(self) -> None:
        self._jobs.put(None)
