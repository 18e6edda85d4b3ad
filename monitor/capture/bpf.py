"""Loading `bpf/capture.c` into the kernel, and its maps.

`KernelProbe` has the tracepoint programs compiled and attached (by bcc, in
a short-lived child: `monitor.ebpf.loader`), fills the comm filter and the listener-port
filter, reads the ring buffer (`monitor.ebpf.ring`) and the in-kernel loss counter.
Everything the host lacks becomes an `EnvironmentProblem` carrying the exact
command that fixes it.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Iterable
from pathlib import Path

from .. import BPF_DIR
from ..ebpf import loader
from ..ebpf.progstats import ProgramRun, attached_runs
from ..ebpf.ring import RingReader
from ..errors import EnvironmentProblem
from ..host.mounts import ensure_mounts


SOURCE = BPF_DIR / "capture.c"
WHERE = "capture"
ZERO = (0).to_bytes(4, "little")


class KernelProbe:
    """The loaded BPF object: attach, filters, ring buffer, loss counter."""

    def __init__(self, comms: tuple[str, ...], ringbuf_pages: int, byte_counts: bool = True,
                 source: Path = SOURCE, batch_ns: int = 0) -> None:
        if os.geteuid() != 0:
            raise EnvironmentProblem(WHERE, "capture needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)",
                                     "run as root: sudo socat-monitor ...")
        ensure_mounts(WHERE)
        cflags = [f"-DRINGBUF_PAGES={ringbuf_pages}", "-Wno-macro-redefined"] + ([] if byte_counts else ["-DNO_BYTES"])
        self.bpf = loader.load(WHERE, source, cflags, {"comms": list(comms)})
        self._maps = self.bpf.maps
        self._ring = RingReader(self._maps["events"].fd, ringbuf_pages * mmap.PAGESIZE, batch_ns)
        self._lost_total = 0
        self._closed = False
        self.ports_unwatched = 0   # listener ports the full `ports` map could not take
        self.read_ns = 0           # time spent draining the ring (not waiting for it)

    def watch_ports(self, ports: Iterable[int]) -> None:
        if self._closed:
            return
        table = self._maps["ports"]   # an array over every port: it cannot fill up
        for port in ports:
            table.update(port.to_bytes(4, "little"), b"\x01")

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
            self._lost_total = self._maps["lost"].sum_u64(ZERO)
        return self._lost_total

    def exec_missed(self) -> int:
        """Execs of watched processes whose argv the kernel side no longer had (0 once closed)."""
        return 0 if self._closed else self._maps["exec_missed"].sum_u64(ZERO)

    def program_runs(self) -> list[ProgramRun]:
        """Each attached program's run count and run time (counted while BPF statistics are on)."""
        return [] if self._closed else attached_runs(self.bpf.held)

    def close(self) -> None:
        if not self._closed:
            self.lost()
            self._closed = True
            self._ring.close()
            self.bpf.close()
