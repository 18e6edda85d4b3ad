"""Pure logic of capture: record decoding, enrichment, session pairing, /proc parsing.

Records are packed with the same layout as `bpf/capture.c`; /proc is a
temporary directory, so no kernel is involved.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import time

import pytest

from monitor.capture import decode as d
from monitor.capture.enrich import Enricher, ProcessTable
from monitor.host.listeners import Socket, discover, namespace_sockets
from monitor.host.tcp import hex_address
from monitor.events import Action, Container, Direction, Outcome, ProcessInfo

OFFSET = 1_700_000_000_000_000_000


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed.ljust(16, b"\0")


def record(etype: int, *, family: int = d.AF_INET, flags: int = 0, pid: int = 100, tid: int | None = None,
           ppid: int = 0, uid: int = 0, gid: int = 0, ts: int = 5_000, cookie: int = 0, duration: int = 0,
           err: int = 0, sport: int = 0, dport: int = 0, saddr: str = "0.0.0.0", daddr: str = "0.0.0.0",
           lport: int = 0, lfamily: int = 0, laddr: str = "0.0.0.0", sig: int = 0, comm: str = "socat", bytes_in: int = 0, bytes_out: int = 0,
           argv: tuple[str, ...] = ()) -> bytes:
    head = d.HEADER.pack(etype, family, flags, pid, pid if tid is None else tid, ppid, uid, gid, ts, cookie,
                         duration, err, sport, dport, addr(saddr), addr(daddr), lport, lfamily, sig, addr(laddr),
                         comm.encode().ljust(16, b"\0"), bytes_in, bytes_out)
    if etype != d.EV_EXEC:
        return head
    slots = b"".join(a.encode()[:127].ljust(d.ARG_LEN, b"\0") for a in argv).ljust(d.MAX_ARGS * d.ARG_LEN, b"\0")
    return head + len(argv).to_bytes(4, "little") + b"\0" * 4 + slots


@pytest.fixture
def enricher(tmp_path):
    table = ProcessTable(size=8, offset_ns=OFFSET, proc=str(tmp_path))
    return Enricher(table, OFFSET, "boot")


def accept(**kw) -> bytes:
    base = dict(flags=d.F_INGRESS, pid=100, ppid=1, ts=10_000, cookie=10_000, sport=40000, dport=8080,
                saddr="127.0.0.1", daddr="127.0.0.2", lport=8080, lfamily=d.AF_INET, laddr="127.0.0.2")
    base.update(kw)
    return record(d.EV_ACCEPT, **base)


def exec_rec(pid: int = 100, argv=("socat", "TCP-LISTEN:8080,fork", "TCP:10.0.0.5:443")) -> bytes:
    return record(d.EV_EXEC, family=0, pid=pid, ppid=1, ts=1_000, argv=argv)


def test_decode_ipv4_accept():
    raw = d.decode(accept())
    assert (raw.type, raw.pid, raw.ppid, raw.comm) == (d.EV_ACCEPT, 100, 1, "socat")
    assert (raw.saddr, raw.sport, raw.daddr, raw.dport) == ("127.0.0.1", 40000, "127.0.0.2", 8080)
    assert (raw.laddr, raw.lport) == ("127.0.0.2", 8080)


def test_decode_ipv6_and_v4_mapped():
    raw = d.decode(accept(family=d.AF_INET6, saddr="2001:db8::7", daddr="::ffff:10.1.2.3", lfamily=d.AF_INET6,
                          laddr="::ffff:10.1.2.3"))
    assert raw.saddr == "2001:db8::7"
    assert raw.daddr == "10.1.2.3" and raw.laddr == "10.1.2.3"   # v4-mapped becomes IPv4


def test_decode_exec_argv_bounded():
    raw = d.decode(exec_rec(argv=("socat", "x" * 300, "TCP:1.2.3.4:5")))
    assert raw.argv == ("socat", "x" * 127, "TCP:1.2.3.4:5")   # 128-byte slots, NUL included


@pytest.mark.parametrize("data, message", [
    (b"\x01" * 10, "record of 10 bytes"),
    (record(9), "unknown record type 9"),
    (record(d.EV_ACCEPT, family=1), "address family 1"),
    (record(d.EV_EXEC, argv=("a",))[:200], "exec record of 200 bytes"),
])
def test_decode_rejects_malformed(data, message):
    with pytest.raises(d.DecodeError, match=message):
        d.decode(data)


def test_session_pairs_accept_and_child_connect_without_proc(enricher):
    started = enricher(d.decode(exec_rec()))
    assert started.action is Action.PROCESS_STARTED
    assert started.process.args == ("socat", "TCP-LISTEN:8080,fork", "TCP:10.0.0.5:443")
    assert started.timestamp_ns == OFFSET + 1_000

    acc = enricher(d.decode(accept()))
    conn = enricher(d.decode(record(d.EV_CONNECT, pid=101, ppid=100, ts=11_000, cookie=10_000, sport=50000,
                                    dport=443, saddr="10.0.0.1", daddr="10.0.0.5", lport=8080,
                                    lfamily=d.AF_INET, laddr="127.0.0.2")))
    assert acc.action is Action.ACCEPTED and acc.direction is Direction.INGRESS
    assert conn.action is Action.ATTEMPTED and conn.direction is Direction.EGRESS
    assert acc.session_id == conn.session_id == "boot-2710"
    assert conn.process.pid == 101 and conn.process.ppid == 100
    assert conn.process.args == acc.process.args                 # inherited: fork keeps argv
    assert conn.listener == acc.listener
    assert conn.client_ip == "10.0.0.5" and acc.client_ip == "127.0.0.1"
    assert enricher.processes.proc_reads == 0
    assert (acc.timestamp_ns, acc.ktime_ns) == (OFFSET + 10_000, 10_000)


def test_fork_child_keeps_every_fact_of_its_parent_but_its_own_ids(enricher):
    """The child is spelled out field by field (no `dataclasses.replace`, for speed): every field of
    `ProcessInfo` must be the parent's unless it is the child's own."""
    parent = ProcessInfo(pid=100, comm="socat", ppid=1, tid=100, uid=0, gid=0, user_name="root",
                         executable="/usr/bin/socat", args=("socat", "x"), start_ns=5, started_uid=0,
                         netns=4026531840, userns_owner=0, netns_name="lab", cgroup="/relay",
                         container=Container(id="ab12", name="web", runtime="docker"))
    raw = d.decode(record(d.EV_CONNECT, pid=101, tid=102, ppid=100, uid=3, gid=4))
    child = enricher.processes._forked(parent, raw)
    own = dict(pid=101, tid=102, ppid=100, uid=3, gid=4, user_name=enricher.processes.user_name(3), start_ns=None)
    assert child == dataclasses.replace(parent, **own)
    unset = [f.name for f in dataclasses.fields(ProcessInfo) if getattr(parent, f.name) == f.default]
    assert unset == [], "every field of the parent is set, so a field the child does not copy shows"


def test_refused_close_becomes_denied(enricher):
    enricher(d.decode(exec_rec()))
    ev = enricher(d.decode(record(d.EV_CLOSE, flags=d.F_INGRESS | d.F_REFUSED, duration=1234, sport=40000,
                                  dport=8080, saddr="127.0.0.1", daddr="127.0.0.2", cookie=10_000)))
    assert ev.action is Action.DENIED and ev.refused and ev.outcome is Outcome.FAILURE
    assert ev.duration_ns == 1234 and ev.session_id == "boot-2710"


def test_normal_close_and_failed_connect(enricher):
    enricher(d.decode(exec_rec()))
    closed = enricher(d.decode(record(d.EV_CLOSE, flags=d.F_INGRESS, duration=99, sport=1, dport=2,
                                      saddr="127.0.0.1", daddr="127.0.0.1")))
    assert closed.action is Action.CLOSED and not closed.refused and closed.duration_ns == 99
    failed = enricher(d.decode(record(d.EV_CONNECT, flags=d.F_FAILED, err=111, dport=443, daddr="10.0.0.5")))
    assert failed.outcome is Outcome.FAILURE and failed.error == "ECONNREFUSED"
    unknown = enricher(d.decode(record(d.EV_CONNECT, flags=d.F_FAILED, ts=7, dport=443, daddr="10.0.0.5")))
    assert unknown.outcome is Outcome.FAILURE and unknown.error is None


def test_duplicate_connect_report_is_dropped(enricher):
    rec = d.decode(record(d.EV_CONNECT, dport=443, daddr="10.0.0.5", ts=42))
    assert enricher(rec) is not None
    assert enricher(rec) is None
    assert enricher(d.decode(record(d.EV_CONNECT, dport=443, daddr="10.0.0.5", ts=43))) is not None


def test_exit_code_and_signal(enricher):
    enricher(d.decode(exec_rec()))
    ended = enricher(d.decode(record(d.EV_EXIT, family=0, flags=d.F_EXITED, err=1)))
    assert ended.action is Action.PROCESS_ENDED and ended.exit_code == 1 and ended.signal is None
    killed = enricher(d.decode(record(d.EV_EXIT, family=0, pid=200, sig=9)))
    assert killed.exit_code is None and killed.signal == 9


def test_unknown_process_read_from_proc_and_pid_reuse(enricher, tmp_path):
    proc = tmp_path / "300"
    proc.mkdir()
    (proc / "cmdline").write_bytes(b"socat\0TCP-LISTEN:1\0STDOUT\0")
    (proc / "status").write_text("Name:\tsocat\nPPid:\t42\n")
    os.symlink("/usr/bin/socat", proc / "exe")
    ev = enricher(d.decode(accept(pid=300, ppid=0)))
    assert ev.process.args == ("socat", "TCP-LISTEN:1", "STDOUT")
    assert ev.process.ppid == 42 and ev.process.executable == "/usr/bin/socat"
    assert ev.process.started_uid == ev.process.uid and ev.process.netns is None   # first seen now; no ns files
    assert enricher.processes.proc_reads == 1
    enricher(d.decode(accept(pid=300, ppid=0)))
    assert enricher.processes.proc_reads == 1                    # cached
    enricher(d.decode(accept(pid=300, ppid=77)))                 # same pid, another parent: reused pid
    assert enricher.processes.proc_reads == 2


def test_process_table_is_bounded(enricher):
    for pid in range(1000, 1050):
        enricher(d.decode(exec_rec(pid=pid)))
    assert len(enricher.processes) == 8


def test_proc_net_tcp_parsing(tmp_path):
    assert hex_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert hex_address("00000000000000000000000001000000:0050") == ("::1", 80)
    assert hex_address("0000000000000000FFFF00000100007F:0050") == ("127.0.0.1", 80)
    net = tmp_path / "net"
    net.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (net / "tcp").write_text(header +
                             "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 555 1\n"
                             "   1: 0100007F:1F91 0100007F:9999 01 00000000:00000000 00:00000000 00000000 0 0 556 1\n")
    (net / "tcp6").write_text(header)
    assert namespace_sockets(str(tmp_path)) == {555: Socket("127.0.0.1", 8080, 0)}
    pid = tmp_path / "321"
    (pid / "fd").mkdir(parents=True)
    os.symlink("../net", pid / "net")          # the process's namespace: /proc/PID/net
    (pid / "comm").write_text("socat\n")
    os.symlink("socket:[555]", pid / "fd" / "3")
    found = discover(("socat",), str(tmp_path)).listeners
    assert [(lst.ip, lst.port, p) for lst, p in found] == [("127.0.0.1", 8080, 321)]
    assert discover(("nginx",), str(tmp_path)).listeners == []


@pytest.mark.parametrize("config, message", [
    (dict(ringbuf_pages=100), "ringbuf_pages: must be a power of two"),
    (dict(comms=[]), "comms: expected at least one process name"),
    (dict(comms=["a-very-long-process-name"]), "comms: 'a-very-long-process-name': a process name (comm) is 1 to 15"),
    (dict(proc_cache_size=0), "proc_cache_size: expected a number >= 16"),
])
def test_bad_capture_config_names_the_key(config, message):
    from monitor.capture.capture import CaptureConfig
    from monitor.config import section_from_flags
    from monitor.errors import InputError

    with pytest.raises(InputError) as info:
        section_from_flags(CaptureConfig, config, "capture")
    assert info.value.where == "capture" and info.value.message.startswith(message), str(info.value)


def fake_ring(size: int, records: list[tuple[bytes, int]], start: int = 0):
    """A RingReader over plain memory laid out like the kernel's mapping (data area mapped twice)."""
    import mmap

    from monitor.ebpf.ring import RingReader

    page = mmap.PAGESIZE
    data = bytearray(size)
    pos = start
    for payload, bits in records:
        head = (len(payload) | bits).to_bytes(4, "little") + b"\0" * 4
        for i, b in enumerate(head + payload):
            data[(pos + i) % size] = b
        pos += (len(payload) + 15) & ~7
    reader = RingReader.__new__(RingReader)
    reader.size, reader.mask = size, size - 1
    reader._use(bytearray(start.to_bytes(8, "little")),
                bytearray(pos.to_bytes(8, "little").ljust(page, b"\0")) + data + data)
    return reader


def test_ring_reader_drains_in_order_skipping_discarded_and_stops_at_busy():
    from monitor.ebpf.ring import BUSY, DISCARD

    reader = fake_ring(4096, [(b"one", 0), (b"dropped", DISCARD), (b"three!!!", 0), (b"later", BUSY)])
    out: list[bytes] = []
    assert reader.drain(out) == 2
    assert out == [b"one", b"three!!!"]
    # the consumer position stops at the busy record: 8+3 -> 16, 8+7 -> 16, 8+8 -> 16
    assert int.from_bytes(reader._consumer[:8], "little") == 48


def test_ring_reader_reads_a_record_that_wraps():
    reader = fake_ring(4096, [(b"x" * 40, 0), (b"tail", 0)], start=4096 - 24)
    out: list[bytes] = []
    assert reader.drain(out) == 2 and out == [b"x" * 40, b"tail"]


def test_ring_reader_stores_the_consumer_position_whole():
    """The kernel reads the consumer position while the reader stores it, so it must only ever see
    the old value or the new one (a store byte by byte showed it 0: a ring it took for full, and the
    records it then dropped). A second process watches the position while this one drains."""
    import mmap

    from monitor.ebpf.ring import RingReader

    size, old = 4096, 0x0102_0304_0506_0700   # every byte non-zero but the lowest
    new = old + 16                             # past one record of 8 bytes
    data = bytearray(size)
    data[old & (size - 1)] = 8                 # its header: length 8, published
    consumer = mmap.mmap(-1, mmap.PAGESIZE)    # shared with the child after fork
    reader = RingReader.__new__(RingReader)
    reader.size, reader.mask = size, size - 1
    reader._use(consumer, bytearray(new.to_bytes(8, "little").ljust(mmap.PAGESIZE, b"\0")) + data + data)
    reader._cons_pos[0] = old
    seen, told = os.pipe()
    child = os.fork()
    if child == 0:   # the watcher: counts its reads, the changes it saw and values that are neither position
        status = 1
        try:
            position, reads, changes, torn, last = memoryview(consumer).cast("Q"), 0, 0, 0, old
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                for _ in range(1000):
                    now = position[0]
                    changes += now != last
                    torn += now != old and now != new
                    last = now
                reads += 1000
            os.write(told, f"{reads} {changes} {torn}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(told)
    drains, read = 0, 0
    out: list[bytes] = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for _ in range(100):
            reader._cons_pos[0] = old
            read += reader.drain(out)
        drains += 100
        assert out[-1] == bytes(8)
        out.clear()
    _, status = os.waitpid(child, 0)
    answer = os.read(seen, 64)
    os.close(seen)
    assert status == 0 and answer, f"the watcher failed (wait status {status})"
    reads, changes, torn = map(int, answer.split())
    assert read == drains > 10_000 and changes > 1_000, (drains, read, reads, changes)   # they did overlap
    assert torn == 0, f"the watcher saw {torn} of {reads} reads neither {old:#x} nor {new:#x}"


def test_duplicate_reports_are_remembered_for_the_last_1024_connects_and_closes(enricher):
    """The window is the last 1024 connects and closes, oldest out first."""
    first = d.decode(record(d.EV_CONNECT, ts=1, sport=1))
    assert not enricher.duplicate(first)
    for ts in range(2, 1025):   # 1023 others: the first is still in the window
        assert not enricher.duplicate(d.decode(record(d.EV_CONNECT, ts=ts, sport=1)))
    assert enricher.duplicate(first)
    enricher.duplicate(d.decode(record(d.EV_CONNECT, ts=1025, sport=1)))   # the 1025th: the first is out
    assert not enricher.duplicate(first)
