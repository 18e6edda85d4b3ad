"""Loading `bpf/capture.c` into the kernel with bcc, and its maps.

`KernelProbe` compiles and attaches the tracepoint programs, fills the comm
filter and the listener-port filter, reads the ring buffer (`ring`) and the
in-kernel loss counter. Everything the host lacks becomes an
`EnvironmentProblem` carrying the exact command that fixes it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Iterable
from pathlib import Path

from .. import BPF_DIR
from ..dependencies import fix_for
from ..errors import EnvironmentProblem
from ..host.mounts import ensure_mounts
from .ring import RingReader


SOURCE = BPF_DIR / "capture.c"
WHERE = "capture"

def _import_bcc():
    try:
        import bcc  # noqa: PLC0415 (bcc is heavy: import only when capturing)
    except ImportError as exc:
        raise EnvironmentProblem(WHERE, f"the bcc Python module is not importable ({exc})", fix_for("bcc")) from None
    return bcc


class KernelProbe:
    """The loaded BPF object: attach, filters, ring buffer, loss counter."""

    def __init__(self, comms: tuple[str, ...], ringbuf_pages: int, byte_counts: bool = True,
                 source: Path = SOURCE) -> None:
        if os.geteuid() != 0:
            raise EnvironmentProblem(WHERE, "capture needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)",
                                     "run as root: sudo socat-monitor ...")
        ensure_mounts(WHERE)
        if not Path(f"/lib/modules/{os.uname().release}/build").exists():
            raise EnvironmentProblem(
                WHERE, f"no kernel headers at /lib/modules/{os.uname().release}/build (bcc compiles against them)",
                "apt-get install -y linux-headers-amd64 and link them: scripts/setup.sh does it",
            )
        bcc = _import_bcc()
        try:
            text = source.read_text()
        except OSError as exc:
            raise EnvironmentProblem(WHERE, f"cannot read the BPF program {source}: {exc.strerror}",
                                     "reinstall socat-monitor") from None
        try:
            cflags = [f"-DRINGBUF_PAGES={ringbuf_pages}", "-Wno-macro-redefined"] + ([] if byte_counts else ["-DNO_BYTES"])
            self.bpf = bcc.BPF(text=text.encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception on compile/attach failures
            raise EnvironmentProblem(
                WHERE, f"loading {source.name} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                "run `socat-monitor doctor` to see which kernel feature or mount is missing",
            ) from None
        self._comm_type = self.bpf[b"comms"].Key
        self.set_comms(comms)
        self._lost = self.bpf[b"lost"]
        self._ring = RingReader(self.bpf[b"events"].get_fd(), ringbuf_pages * mmap.PAGESIZE)
        self._lost_total = 0
        self._closed = False
        self.ports_unwatched = 0   # listener ports the full `ports` map could not take
        self.read_ns = 0           # time spent draining the ring (not waiting for it)

    def set_comms(self, comms: Iterable[str]) -> None:
        table = self.bpf[b"comms"]
        table.clear()
        for name in comms:
            raw = name.encode()[:15]
            key = self._comm_type()
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            table[key] = ctypes.c_uint8(1)

    def watch_ports(self, ports: Iterable[int]) -> None:
        if self._closed:
            return
        table = self.bpf[b"ports"]   # an array over every port: it cannot fill up
        for port in ports:
            table[ctypes.c_int(port)] = ctypes.c_uint8(1)

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Records in the ring buffer, waiting up to timeout_ms for a wakeup.

        The kernel wakes us only every WAKEUP_EVERY records per CPU, so what
        arrived without a wakeup is read after the wait. Closed: nothing.
        """
        out: list[bytes] = []
        if self._closed:
            return out
        self._ring.wait(timeout_ms)   # batches: returns at once only if the kernel woke us
        started = time.perf_counter_ns()
        self._ring.drain(out)
        self.read_ns += time.perf_counter_ns() - started
        return out

    def lost(self) -> int:
        """Records the kernel could not deliver (the last value once closed)."""
        if not self._closed:
            self._lost_total = int(sum(self._lost[ctypes.c_int(0)]))
        return self._lost_total

    def exec_missed(self) -> int:
        """Execs of watched processes whose argv the kernel side no longer had (0 once closed)."""
        return 0 if self._closed else int(sum(self.bpf[b"exec_missed"][ctypes.c_int(0)]))

    def close(self) -> None:
        if not self._closed:
            self.lost()
            self._closed = True
            self._ring.close()
            self.bpf.cleanup()
