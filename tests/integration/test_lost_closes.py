"""Lost close events, for real: a running agent whose kernel connection table loses entries.

The capture reports a close when a tracked socket reaches TCP_CLOSE, looked up
in the BPF `conns` map (an LRU of 65,536 sockets). The test deletes the
relay's entries from the running agent's own map, found through the agent's
file descriptors, as an LRU eviction under load would: their closes are
then never reported. Clients close with a reset (SO_LINGER 0), so the same
source ports can connect again at once, as a client whose ephemeral ports
wrapped does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import struct
import time
from pathlib import Path

from tests.lab import AgentProcess, free_port, socat_monitor, start_echo, wait_for

RATE_LIMIT = 20            # per minute, on the rate relay
CONCURRENCY_LIMIT = 5      # on the concurrency relay
IDLE_S = 20                # policy_engine.open_idle_timeout


def _bcc():
    from bcc import libbcc

    lib = libbcc.lib
    lib.bpf_map_get_fd_by_id.restype = ctypes.c_int
    lib.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
    lib.bpf_obj_get_info_by_fd.restype = ctypes.c_int
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    return lib


def _map_ids(pid: int) -> list[int]:
    """Ids of the BPF maps process `pid` holds open."""
    ids = []
    for entry in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            for line in entry.read_text().splitlines():
                if line.startswith("map_id:"):
                    ids.append(int(line.split()[1]))
    return sorted(set(ids))


def _map_fd(lib, map_id: int, name: bytes) -> int | None:
    """An fd of map `map_id` if it is called `name`."""
    fd = lib.bpf_map_get_fd_by_id(map_id)
    if fd < 0:
        return None
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(len(info))
    if lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) == 0:
        key_size = struct.unpack_from("I", info.raw, 8)[0]
        if info.raw[24:40].split(b"\0")[0] == name and key_size == 8:   # bpf_map_info.name
            return fd
    os.close(fd)
    return None


def drop_tracked_sockets(agent_pid: int) -> int:
    """Delete every entry of the agent's `conns` map (sockets it tracks); how many."""
    lib = _bcc()
    fds = [fd for fd in (_map_fd(lib, i, b"conns") for i in _map_ids(agent_pid)) if fd is not None]
    assert len(fds) == 1, f"agent {agent_pid} holds {len(fds)} maps called conns"
    fd = fds[0]
    try:
        keys, key, found = [], ctypes.c_uint64(), ctypes.c_uint64()
        at = None
        while lib.bpf_get_next_key(fd, at, ctypes.byref(found)) == 0:
            keys.append(found.value)
            key.value = found.value
            at = ctypes.byref(key)
        for value in keys:
            lib.bpf_delete_elem(fd, ctypes.byref(ctypes.c_uint64(value)))
        return len(keys)
    finally:
        os.close(fd)


def _hold(port: int, source: str, source_ports: list[int]) -> list[socket.socket]:
    """Connections held open from the given source ports; they end with a reset (no TIME_WAIT)."""
    held = []
    for sport in source_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.settimeout(5)
        s.bind((source, sport))
        s.connect(("127.0.0.1", port))
        held.append(s)
    return held


def _reset(held: list[socket.socket]) -> None:
    for s in held:
        s.close()


def _ingress(docs: list[dict], action: str, port: int, source_ports: list[int]) -> list[dict]:
    return [d for d in docs if d["event"].get("action") == action and d["destination"]["port"] == port
            and d["source"]["port"] in source_ports and d.get("network", {}).get("direction") == "ingress"]


def _alerts(docs: list[dict], rule: str, port: int) -> list[dict]:
    return [d for d in docs if d["event"]["kind"] == "alert" and d["rule"]["id"] == rule
            and d["socat"]["listener"]["port"] == port]


def _burst_without_closes(agent: AgentProcess, port: int, source: str, source_ports: list[int], seen: int) -> None:
    """Connect from every source port, wait until the agent reported the accepts (`seen` in all from
    these ports), drop the agent's socket table, then reset them all: their closes are lost."""
    held = _hold(port, source, source_ports)
    try:
        wait_for(lambda: len(_ingress(agent.documents(), "connection_accepted", port, source_ports)) >= seen,
                 timeout=15)
        assert drop_tracked_sockets(agent.proc.pid) >= len(source_ports)
    finally:
        _reset(held)


def _relay(procs, port: int, backend: int) -> None:
    procs.socat(f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=64,max-children=100",
                f"TCP:127.0.0.1:{backend}", port=port)


def test_lost_closes_neither_hide_a_flood_nor_make_concurrency_drift(tmp_path, procs):
    rate_port, conc_port, backend = free_port(), free_port(), free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nlisteners:\n"
        f"  - {{name: rated, port: {rate_port}, max_rate_per_source: {RATE_LIMIT}/minute}}\n"
        f"  - {{name: bounded, port: {conc_port}, max_concurrent_per_source: {CONCURRENCY_LIMIT}}}\n"
        "defaults: {unknown_listener: ignore}\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"policy: {policy}\nheartbeat_interval: 1s\n"
                      f"policy_engine: {{open_idle_timeout: {IDLE_S}s, dedup_window: 5s}}\n")
    agent = AgentProcess(tmp_path, "--config", str(config), "--no-enforce", "--duration", "150")
    try:
        agent.wait_ready()
        start_echo(procs, backend)
        _relay(procs, rate_port, backend)
        _relay(procs, conc_port, backend)
        ports = [free_port() for _ in range(RATE_LIMIT + 5)]

        # a flood from 25 source ports whose closes are lost, then the same again from the same ports
        _burst_without_closes(agent, rate_port, "127.0.0.1", ports, seen=len(ports))
        first = wait_for(lambda: _alerts(agent.documents(), "policy.rate_exceeded", rate_port), timeout=10)
        time.sleep(6)                               # past the 5 s dedup window, within the idle time
        second_at = time.time_ns()
        _burst_without_closes(agent, rate_port, "127.0.0.1", ports, seen=2 * len(ports))
        rate = wait_for(lambda: [a for a in _alerts(agent.documents(), "policy.rate_exceeded", rate_port)
                                 if _ns(a["@timestamp"]) >= second_at], timeout=10)

        # as many connections as allowed, closes lost: after the idle time they no longer count
        bounded = [free_port() for _ in range(2 * CONCURRENCY_LIMIT + 1)]
        _burst_without_closes(agent, conc_port, "127.0.0.3", bounded[:CONCURRENCY_LIMIT], seen=CONCURRENCY_LIMIT)
        time.sleep(IDLE_S + 1)
        held = _hold(conc_port, "127.0.0.3", bounded[CONCURRENCY_LIMIT: 2 * CONCURRENCY_LIMIT])
        try:
            wait_for(lambda: len(_ingress(agent.documents(), "connection_accepted", conc_port, bounded))
                     >= 2 * CONCURRENCY_LIMIT, timeout=15)
            time.sleep(1.5)
            drifted = _alerts(agent.documents(), "policy.concurrency_exceeded", conc_port)
            held += _hold(conc_port, "127.0.0.3", bounded[-1:])     # one more than allowed: still flagged
            exceeded = wait_for(lambda: _alerts(agent.documents(), "policy.concurrency_exceeded", conc_port),
                                timeout=10)
            live = json.loads(socat_monitor("top", "--once", "--format", "json", "--socket", str(agent.socket)).stdout)
            active = next(lst["active"] for lst in live["listeners"] if lst["port"] == conc_port)
        finally:
            _reset(held)
        heartbeat = wait_for(lambda: [d for d in agent.documents() if d["event"]["kind"] == "metric"
                                      and d["socat"]["metrics"].get("policy_open_forgotten_total.idle", 0)
                                      >= CONCURRENCY_LIMIT + len(ports)], timeout=10)[-1]
        top = socat_monitor("top", "--once", "--format", "json", "--socket", str(agent.socket))
        assert top.returncode == 0, top.stderr
        status = json.loads(top.stdout)["counters"]["policy"]
    finally:
        agent.stop()
    docs = agent.documents()
    assert not _ingress(docs, "connection_closed", rate_port, ports), "closes were not lost: the test proves nothing"
    assert not _ingress(docs, "connection_closed", conc_port, bounded[:CONCURRENCY_LIMIT])
    assert first[0]["socat"]["detection"]["observed"] == RATE_LIMIT + 1
    assert rate[0]["socat"]["detection"]["observed"] == RATE_LIMIT + 1    # the second flood, counted afresh
    assert drifted == [], "connections whose closes were lost still counted after the idle time"
    assert exceeded[0]["socat"]["detection"]["observed"] == CONCURRENCY_LIMIT + 1
    assert active == CONCURRENCY_LIMIT + 1               # top's open connections do not drift either
    metrics = heartbeat["socat"]["metrics"]
    assert metrics["policy_open_forgotten_total.reused"] == len(ports)     # the second flood's ports
    assert status["open_forgotten"]["idle"] >= CONCURRENCY_LIMIT + len(ports)
    assert status["open_forgotten"]["reused"] == len(ports)
    assert "open connection(s) forgotten without their close" in agent.text_log()


def _ns(stamp: str) -> int:
    from monitor.ecs import parse_timestamp

    return parse_timestamp(stamp)
