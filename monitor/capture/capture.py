"""The live capture source the agent polls: `Capture`.

Loads the kernel side (`bpf.KernelProbe`), decodes every ring-buffer record
(`decode`), enriches it (`enrich`) and hands back typed events in kernel
order. Kernel-side losses and undecodable records are counted, surfaced as
`PipelineError(stage="capture")` and logged once per occurrence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..ebpf.progstats import ProgramRun
from ..events import VALUES, Action, ConnectionEvent, Listener, PipelineError, ProcessEvent, now_ns
from ..host.listeners import OpenConnections, discover
from ..host.processes import boot_id
from .bpf import SOURCE, KernelProbe
from .decode import DecodeError, RawEvent, decode
from .enrich import Enricher, ProcessTable, monotonic_offset_ns
from ..settings import setting

log = logging.getLogger(__name__)

CaptureRecord = ConnectionEvent | ProcessEvent | PipelineError
LOSS_CHECK_NS = 100_000_000   # the kernel's loss counters are read this often (a map read is a system call)


def check_power_of_two(pages: int) -> None:
    if pages <= 0 or pages & (pages - 1):
        raise ValueError("must be a power of two (64, 128, 256, ...)")


def check_comms(comms: list[str]) -> None:
    """Process names as the kernel keeps them: 1 to 15 bytes, at least one."""
    if not comms:
        raise ValueError("expected at least one process name")
    for comm in comms:
        if not comm or len(comm.encode()) > 15:
            raise ValueError(f"{comm!r}: a process name (comm) is 1 to 15 bytes")


@dataclass
class CaptureConfig:
    """What to capture.

    `comms`: process names (comm, 15 chars max) to watch. `ringbuf_pages`:
    ring buffer size in 4 KiB pages, a power of two (256 = 1 MiB, about 7,000
    connection events). `proc_cache_size`: processes kept in the /proc cache.
    `byte_counts`: count bytes per connection. Off by default: it runs a
    program on every read/write syscall of the host (`scripts/bench_capture.py`
    without `--no-bytes` measures its cost); on, close events carry
    `source.bytes`/`destination.bytes`. `batch_s`: under load, the least time
    between two reads of the ring buffer, so records come in batches and cost
    less CPU each; it is the most it adds to a block's latency, and only under
    load (a record after a quiet spell is read at once). 0 reads at each wakeup.
    """

    comms: tuple[str, ...] = setting(("socat",), check=check_comms, live=False)
    ringbuf_pages: int = setting(256, check=check_power_of_two, live=False)
    proc_cache_size: int = setting(4096, minimum=16, live=False)
    byte_counts: bool = setting(False, live=False)
    batch_s: float = setting(0.005, minimum=0, maximum=0.05, live=False)


@dataclass
class CaptureStats:
    """Counters since start."""

    events: dict[str, int] = field(default_factory=dict)   # by event.action value
    records: int = 0             # ring-buffer records received
    kernel_lost: int = 0         # records the kernel could not put in the ring buffer
    decode_errors: int = 0
    enrich_errors: int = 0
    duplicates: int = 0          # second reports of one connect, dropped
    proc_reads: int = 0          # /proc reads at new pids
    processes_cached: int = 0
    incomplete: int = 0          # accepts whose handshake the kernel side missed (listener filled from /proc)
    pinned: int = 0              # connections to the listeners open when the capture attached (kept to complete those)
    partial_sources: int = 0     # of the incomplete accepts, those whose source stayed known in part (64 bits, or none of a v4 client)
    uninspectable: int = 0       # watched processes whose /proc/PID/fd the agent cannot read
    read_ns: int = 0             # time spent draining the ring buffer (not waiting for it)
    decode_ns: int = 0           # ... decoding records
    enrich_ns: int = 0           # ... turning them into typed events


class Capture:
    """Live socat connection capture through BPF tracepoints."""

    def __init__(self, config: CaptureConfig, known_ports: Iterable[int] | None = None,
                 source: Path = SOURCE) -> None:
        """`known_ports`: listener ports the caller found just before (else they are looked up here);
        `source`: the BPF C to load (another checkout's, to compare what its programs cost)."""
        self.config = config
        known = set(known_ports) if known_ports is not None else \
            {lst.port for lst, _ in discover(tuple(config.comms)).listeners}
        self._kernel = KernelProbe(tuple(config.comms), config.ringbuf_pages, config.byte_counts, source,
                                   batch_ns=int(config.batch_s * 1e9))
        self._kernel.watch_ports(known)   # at once: a handshake before the port filter knows its port is missed
        offset = monotonic_offset_ns()
        self._processes = ProcessTable(config.proc_cache_size, offset)
        self._enrich = Enricher(self._processes, offset, boot_id(), config.byte_counts)
        self._by_action: Counter[str] = Counter()
        self._records = 0
        self._decode_errors = 0
        self._enrich_errors = 0
        self._duplicates = 0
        self._lost_seen = 0
        self._exec_missed_seen = 0
        self._incomplete = 0
        self._partial_sources = 0
        self._read_ns = self._decode_ns = self._enrich_ns = 0
        self._next_loss_check = 0
        self._by_pid: dict[int, list[Listener]] = {}
        self._blind: dict[int, str] = {}          # uninspectable relay pid -> reason, as last seen
        self._rescanned: set[int] = set()         # pids rescanned for an incomplete accept
        self._unplaced: list[ConnectionEvent] = []  # this drain's accepts no known listener could place
        self._open = OpenConnections()             # completes those accepts, one /proc read per drain
        self._pending: list[PipelineError] = []   # reported by the next poll()
        self._lock = threading.Lock()             # listeners() may run in another thread than poll()
        self.attached_with = self.listeners()   # again: relays that started while the programs were compiled
        self._pinned = self._open.pin({lst.pid for lst in self.attached_with},
                                      {lst.port for lst in self.attached_with})

    def listeners(self) -> list[Listener]:
        """Listening sockets held by watched processes now (with the holder's pid).

        Also seeds the kernel's port filter with them (relays started before
        the agent, in any network namespace) and notes, loudly, relays whose
        sockets cannot be inspected (see `listeners.discover`)."""
        found = discover(tuple(self.config.comms))
        out = [Listener(ip=lst.ip, port=lst.port, pid=pid) for lst, pid in found.listeners]
        self._kernel.watch_ports({lst.port for lst in out})
        by_pid: dict[int, list[Listener]] = {}
        for lst in out:
            by_pid.setdefault(lst.pid, []).append(lst)
        with self._lock:
            self._by_pid = by_pid
            new = {pid: why for pid, why in found.uninspectable.items() if pid not in self._blind}
            self._blind = found.uninspectable
            if new:
                self._report_blind(new, found.inferred)
        return out

    def _report_blind(self, blind: dict[int, str], inferred: set[tuple[str, int, int]]) -> None:
        pids = sorted(blind)
        guessed = sorted({port for _, port, pid in inferred if pid in blind})
        message = (f"cannot read the sockets of socat pid{'s' if len(pids) > 1 else ''} "
                   f"{', '.join(map(str, pids))} ({blind[pids[0]]}): give the agent CAP_SYS_PTRACE and "
                   f"CAP_DAC_READ_SEARCH; " + (f"their listeners are inferred from socket owners: ports "
                                               f"{', '.join(map(str, guessed))}" if guessed else
                                               "their connections may be incomplete"))
        log.warning("capture: %s", message)
        self._pending.append(PipelineError(stage="capture", message=message, timestamp_ns=now_ns(),
                                           count=len(pids)))

    def _complete(self, event: ConnectionEvent) -> None:
        """Fill the listener of an event the kernel side could not tie to one, from /proc's listeners; and
        the whole source of an accept whose handshake it missed, from the open connections."""
        proc = event.process
        incomplete = event.action is Action.ACCEPTED
        if incomplete:
            self._incomplete += 1
            if proc.pid not in self._by_pid and proc.pid not in self._rescanned and len(self._rescanned) < 4096:
                self._rescanned.add(proc.pid)   # a relay that started listening unseen: look once
                self.listeners()
        held = self._by_pid.get(proc.pid) or (self._by_pid.get(proc.ppid) if proc.ppid else None)
        if not held or len({lst.port for lst in held}) != 1:
            if incomplete:
                self._unplaced.append(event)
                self._mark_partial(event)
            return
        lst = held[0]
        event.listener = Listener(ip=lst.ip, port=lst.port)
        if incomplete:
            event.destination_port = lst.port
            if lst.ip not in ("0.0.0.0", "::"):
                event.destination_ip = lst.ip
            seen = self._open.accepted_addresses(proc.pid, proc.netns, lst.port, event.source_ip,
                                                 event.source_port)
            if seen is None:
                self._mark_partial(event)
                return   # gone before this drain, and not open when the capture attached
            event.destination_ip, event.source_ip = seen   # the local address and the whole (IPv6) peer
            event.listener = Listener(ip=seen[0] if lst.ip in ("0.0.0.0", "::") else lst.ip, port=lst.port)

    def _mark_partial(self, event: ConnectionEvent) -> None:
        """An IPv6 source of which the kernel side saw 8 bytes (none of an IPv4 client of a dual-stack
        relay) is written as such, never taken for an address."""
        if ":" in event.source_ip:
            event.source_partial = True
            self._partial_sources += 1

    def _decode(self, raw: list[bytes], out: list[CaptureRecord]) -> list[RawEvent]:
        """The records of one ring drain, decoded; an undecodable one becomes a PipelineError in `out`."""
        decoded: list[RawEvent] = []
        append = decoded.append
        for data in raw:
            try:
                append(decode(data))
            except DecodeError as exc:
                self._decode_errors += 1
                log.warning("capture: undecodable ring-buffer record: %s", exc)
                out.append(PipelineError(stage="capture", message=f"undecodable record: {exc}",
                                         timestamp_ns=now_ns()))
        return decoded

    def _enrich_all(self, decoded: list[RawEvent], out: list[CaptureRecord]) -> None:
        append = out.append
        enrich = self._enrich
        for record in decoded:
            try:
                event = enrich(record)
            except (OSError, ValueError) as exc:
                self._enrich_errors += 1
                log.warning("capture: cannot enrich a record of pid %d: %s", record.pid, exc)
                append(PipelineError(stage="enrich", message=f"pid {record.pid}: {exc}", timestamp_ns=now_ns()))
                continue
            if event is None:
                self._duplicates += 1
                continue
            if event.__class__ is ConnectionEvent and event.listener is None:
                self._complete(event)
            self._by_action[VALUES[event.action]] += 1
            append(event)
        if self._unplaced:
            self._report_unplaced()

    def _report_unplaced(self) -> None:
        """One line per drain for the accepts no known listener could place (a flood would log one per accept)."""
        first, count = self._unplaced[0], len(self._unplaced)
        log.warning("capture: %d accept%s without %s handshake and no known listener (the first by pid %d from %s:%d)",
                    count, "s" if count > 1 else "", "their" if count > 1 else "its",
                    first.process.pid, first.source_ip, first.source_port)
        self._unplaced = []

    def poll(self, timeout_ms: int) -> list[CaptureRecord]:
        """Wait up to timeout_ms for records; return them decoded and enriched, in kernel order, and
        (every LOSS_CHECK_NS, and at every poll(0)) a PipelineError for what the kernel lost meanwhile."""
        raw = self._kernel.poll(timeout_ms)
        started = time.perf_counter_ns()
        out: list[CaptureRecord] = []
        if self._pending:
            with self._lock:
                out.extend(self._pending)
                self._pending = []
        decoded = self._decode(raw, out)
        self._open.forget()
        enriching = time.perf_counter_ns()
        self._enrich_all(decoded, out)
        self._decode_ns += enriching - started
        enriched = time.perf_counter_ns()
        self._enrich_ns += enriched - enriching
        self._records += len(raw)
        if timeout_ms <= 0 or enriched >= self._next_loss_check:   # a poll(0) (the last one) always looks
            self._next_loss_check = enriched + LOSS_CHECK_NS
            self._check_losses(out)
            self._read_ns += time.perf_counter_ns() - enriched
        return out

    def _check_losses(self, out: list[CaptureRecord]) -> None:
        """Kernel-side losses and execs without argv since the last poll, as PipelineErrors in `out`."""
        append = out.append
        lost = self._kernel.lost()
        if lost > self._lost_seen:
            grew = lost - self._lost_seen
            self._lost_seen = lost
            log.warning("capture: the kernel dropped %d events (no ring-buffer space; %d in total)", grew, lost)
            append(PipelineError(stage="capture", timestamp_ns=now_ns(), count=grew,
                                 message=f"ring buffer: {grew} kernel events lost, no space could be reserved "
                                         f"(normally a full ring: the agent fell behind; capture.ringbuf_pages sets "
                                         f"its size; {lost} since start)"))
        missed = self._kernel.exec_missed()
        if missed > self._exec_missed_seen:
            grew, self._exec_missed_seen = missed - self._exec_missed_seen, missed
            append(PipelineError(stage="capture", timestamp_ns=now_ns(), count=grew,
                                 message=f"{grew} exec(s) of watched processes arrived without their kernel argv "
                                         "(the kernel table evicted it under a flood of execs): "
                                         "their command lines were read from /proc"))

    @property
    def stats(self) -> CaptureStats:
        return CaptureStats(
            events=dict(self._by_action), records=self._records, kernel_lost=self._kernel.lost(),
            decode_errors=self._decode_errors, enrich_errors=self._enrich_errors, duplicates=self._duplicates,
            proc_reads=self._processes.proc_reads, processes_cached=len(self._processes),
            incomplete=self._incomplete, pinned=self._pinned, partial_sources=self._partial_sources,
            uninspectable=len(self._blind),
            read_ns=self._kernel.read_ns + self._read_ns, decode_ns=self._decode_ns, enrich_ns=self._enrich_ns,
        )

    def program_runs(self) -> list[ProgramRun]:
        """What each kernel program cost so far (see `monitor.ebpf.progstats`)."""
        return self._kernel.program_runs()

    def close(self) -> None:
        self._kernel.close()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
