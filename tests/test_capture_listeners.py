"""Listener discovery and process facts over a fake /proc: namespaces, holders, uninspectable relays."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from monitor.host import listeners, processes, tcp
from monitor.host.listeners import OpenConnections, discover
from monitor.host.processes import parse_status

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def tcp_line(n: int, addr: str, uid: int, inode: int, state: str = "0A") -> str:
    return f"   {n}: {addr} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000 {uid} 0 {inode} 1\n"


def make_proc(tmp_path, processes: dict[int, dict], namespaces: dict[str, list[str]]):
    """processes: pid -> {comm, ppid, uid, netns, fds: [inode]}; namespaces: name -> /proc/net/tcp lines."""
    for name, lines in namespaces.items():
        net = tmp_path / f"net-{name}"
        net.mkdir()
        (net / "tcp").write_text(HEADER + "".join(lines))
        (net / "tcp6").write_text(HEADER)
    for pid, p in processes.items():
        base = tmp_path / str(pid)
        (base / "fd").mkdir(parents=True)
        (base / "ns").mkdir()
        os.symlink(f"../net-{p['netns']}", base / "net")
        os.symlink(f"net:[{p['netns']}]", base / "ns" / "net")
        (base / "comm").write_text(p["comm"] + "\n")
        (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in p.get("args", (p["comm"],))) + b"\0")
        (base / "status").write_text(f"Name:\t{p['comm']}\nPPid:\t{p['ppid']}\nUid:\t{p['uid']}\t{p['uid']}\t{p['uid']}\t{p['uid']}\n")
        for fd, inode in enumerate(p.get("fds", ()), start=3):
            os.symlink(f"socket:[{inode}]", base / "fd" / str(fd))
    return str(tmp_path)


@pytest.fixture
def host(tmp_path):
    return make_proc(tmp_path, {
        100: dict(comm="socat", ppid=1, uid=0, netns="a", fds=[501]),          # root relay, ns a
        200: dict(comm="socat", ppid=1, uid=65534, netns="a", fds=[502],       # nobody's relay, ns a
                  args=("socat", "-d", "tcp-l:8081,fork", "TCP:10.0.0.1:80")),
        201: dict(comm="socat", ppid=200, uid=65534, netns="a", fds=[502]),    # its fork child
        300: dict(comm="socat", ppid=1, uid=0, netns="b", fds=[601]),          # root relay, ns b, same port
        400: dict(comm="nginx", ppid=1, uid=65534, netns="a", fds=[503]),
    }, {
        "a": [tcp_line(0, "0100007F:1F90", 0, 501), tcp_line(1, "00000000:1F91", 65534, 502),
              tcp_line(2, "00000000:0050", 65534, 503), tcp_line(3, "0100007F:1F92", 0, 504, state="01")],
        "b": [tcp_line(0, "0100007F:1F90", 0, 601)],
    })


def test_every_namespace_and_holder(host):
    found = discover(("socat",), host)
    assert [(lst.ip, lst.port, pid) for lst, pid in found.listeners] == [
        ("0.0.0.0", 8081, 200), ("0.0.0.0", 8081, 201), ("127.0.0.1", 8080, 100), ("127.0.0.1", 8080, 300)]
    assert found.uninspectable == {} and found.inferred == set()


def test_a_fork_child_that_ends_during_the_scan_does_not_hide_its_namespace(host, monkeypatch):
    """Under a flood pids wrap, so a short-lived fork child can be the first pid of a namespace: once it
    has ended its tables cannot be read (or only the IPv4 one), and the namespace is then read through
    the next process."""
    read = listeners.namespace_sockets

    def child_ends_first(proc, pid=None):
        return None if pid == "201" else read(proc, pid)   # ended between the listing and its table read
    monkeypatch.setattr(processes, "pids_named", lambda comms, proc: [201, 100, 200, 300])
    monkeypatch.setattr(listeners, "namespace_sockets", child_ends_first)
    found = discover(("socat",), host)
    assert [(lst.ip, lst.port, pid) for lst, pid in found.listeners] == [
        ("0.0.0.0", 8081, 200), ("127.0.0.1", 8080, 100), ("127.0.0.1", 8080, 300)]


def test_uninspectable_relay_is_reported_and_its_listener_inferred_by_owner(host, monkeypatch):
    monkeypatch.setattr(listeners.os, "readlink", _denied_for("/200/", "/201/"))   # another user's fds
    found = discover(("socat",), host)
    assert list(found.uninspectable) == [200]               # the fork child is covered by its parent
    assert "Permission denied" in found.uninspectable[200]
    # nobody's listening sockets in its namespace on the ports its command line listens on (not nginx's 80)
    assert found.inferred == {("0.0.0.0", 8081, 200)}
    assert ("127.0.0.1", 8080, 100) in [(lst.ip, lst.port, pid) for lst, pid in found.listeners]
    assert not [pid for _, pid in found.listeners if pid == 201]


def test_without_a_listen_port_in_the_command_line_every_socket_of_the_owner_is_a_candidate(host, monkeypatch):
    Path(host, "200", "cmdline").write_bytes(b"socat\0-\0-\0")
    monkeypatch.setattr(listeners.os, "readlink", _denied_for("/200/", "/201/"))
    assert discover(("socat",), host).inferred == {("0.0.0.0", 8081, 200), ("0.0.0.0", 80, 200)}


def _denied_for(*parts):
    """os.readlink failing as without CAP_SYS_PTRACE for /proc/PID/fd/* of the given pids."""
    real = os.readlink

    def readlink(path):
        if "/fd/" in path and any(p in path for p in parts):
            raise PermissionError(13, "Permission denied")
        return real(path)
    return readlink


def test_accepted_addresses_complete_a_truncated_ipv6_peer(tmp_path):
    net = tmp_path / "7" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(HEADER + tcp_line(0, "0100007F:1F90", 0, 1)
                             + "   1: 0200007F:1F90 0500007F:D431 01 0 0 0 0 0 0 0 2 1\n")
    # fd77::1 port 8081 <- fd77::2 port 40000 (four host-order words); and a v4-mapped client on port 40001
    (net / "tcp6").write_text(HEADER
                              + "   0: 000077FD000000000000000001000000:1F91 000077FD000000000000000002000000:9C40 01 0 0 0 0 0 0 0 3 1\n"
                              + "   1: 0000000000000000FFFF00000100007F:1F91 0000000000000000FFFF00000900007F:9C41 01 0 0 0 0 0 0 0 4 1\n")
    open_now = OpenConnections(str(tmp_path))
    assert open_now.accepted_addresses(7, None, 8080, "127.0.0.5", 54321) == ("127.0.0.2", "127.0.0.5")
    assert open_now.accepted_addresses(7, None, 8081, "fd77::", 40000) == ("fd77::1", "fd77::2")   # 8 bytes known
    assert open_now.accepted_addresses(7, None, 8081, "::", 40001) == ("127.0.0.1", "127.0.0.9")
    assert open_now.accepted_addresses(7, None, 8081, "fd78::", 40000) is None     # another peer
    assert open_now.accepted_addresses(8, None, 8080, "127.0.0.5", 54321) is None  # gone


def test_open_connections_read_once_per_namespace_until_forgotten(tmp_path):
    """A flood of incomplete accepts costs one table read per ring drain: later connections show after forget()."""
    net = tmp_path / "7" / "net"
    net.mkdir(parents=True)
    (net / "tcp6").write_text(HEADER)
    (net / "tcp").write_text(HEADER + "   1: 0200007F:1F90 0500007F:D431 01 0 0 0 0 0 0 0 2 1\n")
    open_now = OpenConnections(str(tmp_path))
    assert open_now.accepted_addresses(7, 4026531840, 8080, "127.0.0.5", 54321) == ("127.0.0.2", "127.0.0.5")
    (net / "tcp").write_text(HEADER + "   1: 0200007F:1F90 0600007F:D432 01 0 0 0 0 0 0 0 2 1\n")
    assert open_now.accepted_addresses(7, 4026531840, 8080, "127.0.0.6", 54322) is None   # this drain's snapshot
    open_now.forget()
    assert open_now.accepted_addresses(7, 4026531840, 8080, "127.0.0.6", 54322) == ("127.0.0.2", "127.0.0.6")


def test_connections_pinned_at_attach_complete_accepts_gone_by_their_drain(tmp_path):
    """The accept queue when the capture attached: a connection reset before its accept was read (a port
    scanner's) is completed from the pin; each pinned row once; only the listener ports are kept."""
    net = tmp_path / "7" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(HEADER)
    # a v4-mapped client of the dual-stack listener 8081 (port 40001), and a connection of another port (8090)
    queued = "   1: 0000000000000000FFFF00000100007F:1F91 0000000000000000FFFF00000900007F:9C41 01 0 0 0 0 0 0 0 4 1\n"
    other = "   2: 0000000000000000FFFF00000100007F:1F9A 0000000000000000FFFF00000900007F:9C42 01 0 0 0 0 0 0 0 5 1\n"
    (net / "tcp6").write_text(HEADER + queued + other)
    clock = [100.0]
    open_now = OpenConnections(str(tmp_path), clock=lambda: clock[0])
    assert open_now.pin([7], {8081}) == 1
    (net / "tcp6").write_text(HEADER)                   # reset before the relay accepted it
    assert open_now.accepted_addresses(7, None, 8081, "::", 40001) == ("127.0.0.1", "127.0.0.9")
    assert open_now.accepted_addresses(7, None, 8081, "::", 40001) is None   # used once
    assert open_now.accepted_addresses(7, None, 8090, "::", 40002) is None   # not a listener's: not pinned


def test_the_pin_is_dropped_after_a_minute(tmp_path):
    net = tmp_path / "7" / "net"
    net.mkdir(parents=True)
    (net / "tcp6").write_text(HEADER)
    (net / "tcp").write_text(HEADER + "   1: 0200007F:1F90 0500007F:D431 01 0 0 0 0 0 0 0 2 1\n")
    clock = [100.0]
    open_now = OpenConnections(str(tmp_path), clock=lambda: clock[0])
    assert open_now.pin([7, 7], {8080}) == 1                    # one read per namespace
    (net / "tcp").write_text(HEADER)
    clock[0] += OpenConnections.PIN_S
    open_now.forget()
    assert open_now.accepted_addresses(7, None, 8080, "127.0.0.5", 54321) is None


@pytest.mark.parametrize("argv, ports", [
    (("socat", "-d", "-d", "TCP-LISTEN:8080,fork,reuseaddr", "TCP:127.0.0.1:80"), {8080}),
    (("/usr/bin/socat", "tcp6-l:80", "-"), {80}),
    (("socat", "OPENSSL-LISTEN:443,cert=/c.pem", "TCP4-LISTEN:444"), {443, 444}),
    (("socat", "ssl-l:8443", "TCP:127.0.0.1:80"), {8443}),
    (("socat", "UDP-LISTEN:53,fork", "UDP:127.0.0.1:5353"), set()),     # no TCP listening socket
    (("socat", "-", "TCP:127.0.0.1:80"), set()),
    (("socat", "TCP-LISTEN:8080"), set()),                                # socat refuses it: no inference
    ((), set()),
])
def test_listen_ports_come_from_the_socat_grammar(argv, ports):
    assert listeners.command_line_ports(argv) == ports


def test_process_facts_from_a_fake_proc(host):
    assert sorted(processes.pids_named(("socat",), host)) == [100, 200, 201, 300]
    assert processes.cmdline(200, host) == ("socat", "-d", "tcp-l:8081,fork", "TCP:10.0.0.1:80")
    status = processes.status(201, host)
    assert (status.name, status.ppid, status.uid) == ("socat", 200, 65534)
    assert processes.status(999, host) is None and processes.comm(999, host) is None
    facts = {f.pid: f for f in _socat_processes_with_an_environment(host)}
    assert sorted(facts) == [100, 200, 300]          # 201 is a fork child of 200 with the same argv
    assert facts[200].uid == 65534 and facts[200].environ == {"A": "1", "B": "x=y"}


def _socat_processes_with_an_environment(host):
    for pid in (100, 200, 201, 300):
        Path(host, str(pid), "environ").write_bytes(b"A=1\0B=x=y\0")
    Path(host, "201", "cmdline").write_bytes(Path(host, "200", "cmdline").read_bytes())
    return processes.socat_processes(host)


def test_parse_status_reads_the_effective_uid_and_capabilities():
    status = parse_status("Name:\tsocat\nPPid:\t1\nUid:\t1000\t0\t0\t0\nCapEff:\t0000000000001000\n")
    assert (status.name, status.ppid, status.uid, status.cap_eff >> 12 & 1) == ("socat", 1, 0, 1)


def test_namespace_facts_of_a_process(host):
    """This process's network namespace and the owner of its user namespace (root, the initial one);
    a fake /proc tree has no namespace files: unknown, not an error."""
    assert processes.netns_inode("self") == os.stat("/proc/self/ns/net").st_ino
    assert processes.userns_owner("self") == 0
    assert processes.netns_inode(200, host) is None and processes.userns_owner(200, host) is None


def test_table_rows_are_filtered_by_state_before_they_are_split(tmp_path):
    """In a flooded namespace most rows are TIME_WAIT: the readers keep only the states they ask for,
    whatever the row's width (a 5-digit slot number) and its other columns."""
    rows = [
        "    0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 501 1 ffff 100 0 0 10 0\n",
        "    1: 0100007F:1F90 0500007F:D431 01 00000000:00000000 02:0000000A 00000000     6        0 502 1 ffff 20 4 30 10 -1\n",
        "12345: 0100007F:1F90 0600007F:D432 06 00000000:00000000 03:00000FA0 00000000     0        0 0 3 ffff\n",
        "12346: 0100007F:1F90 0700007F:D433 08 00000000:00000000 00:00000000 00000000     0        0 503 1 ffff 20 4 1 10 -1\n",
    ]
    (tmp_path / "tcp").write_text(HEADER + "".join(rows))
    states = lambda wanted: [cols[3] for cols in tcp.rows(str(tmp_path), wanted)]   # noqa: E731
    assert states(None) == ["0A", "01", "06", "08"]
    assert states((tcp.LISTEN,)) == ["0A"]
    assert states(tcp.OPEN) == ["01", "08"]
    assert states((tcp.ESTABLISHED,)) == ["01"]


def test_listening_rows_come_first_in_this_kernel_and_the_read_stops_after_them(tmp_path):
    """The kernel lists a table's listening sockets before its connections, whatever their order of
    creation: the listener read stops at the first other row, and misses no listener for it."""
    first = socket.create_server(("127.0.0.1", 0))
    clients = [socket.create_connection(first.getsockname(), timeout=5) for _ in range(20)]
    late = socket.create_server(("127.0.0.1", 0))   # created after the connections
    try:
        ports = {tcp.hex_address(cols[1])[1] for cols in tcp.listening("/proc/self/net")}
        assert {first.getsockname()[1], late.getsockname()[1]} <= ports
        states = [line.split()[3] for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]]
        assert tcp.ESTABLISHED in states
        assert states.index(tcp.ESTABLISHED) > max(i for i, state in enumerate(states) if state == tcp.LISTEN)
    finally:
        for sock in [first, late, *clients]:
            sock.close()
    rows = ["    0: 0100007F:1F90 00000000:0000 0A 0 0 0 0 0 501 1\n",
            "    1: 0100007F:1F90 0500007F:D431 06 0 0 0 0 0 0 1\n",
            "    2: 0100007F:1F91 00000000:0000 0A 0 0 0 0 0 502 1\n"]   # not a kernel's order: never read
    (tmp_path / "tcp").write_text(HEADER + "".join(rows))
    assert [cols[9] for cols in tcp.listening(str(tmp_path))] == ["501"]


def test_a_table_read_through_a_process_that_ended_is_no_table(tmp_path):
    """The IPv4 table read, the process gone before its IPv6 one: a strict read says so rather than hand
    over half a namespace (this kernel has IPv6 tables, so a missing one means the process ended)."""
    (tmp_path / "tcp").write_text(HEADER + "    0: 0100007F:1F90 00000000:0000 0A 0 0 0 0 0 0 0 501 1\n")
    assert [cols[3] for cols in tcp.rows(str(tmp_path))] == ["0A"]
    with pytest.raises(OSError):
        list(tcp.rows(str(tmp_path), strict=True))
    assert listeners.namespace_sockets(str(tmp_path.parent), tmp_path.name) is None
