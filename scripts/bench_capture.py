#!/usr/bin/env python3
"""Benchmark: socat fork-relay connection rate without and with live capture.

Side by side in one run, on loopback only: an asyncio echo backend, a
`socat TCP-LISTEN:P,fork,backlog=64 TCP:127.0.0.1:B` relay (a copy of
socat named `socat-benchNNNN`, this run's own name and the one name the
capture watches: other socat processes on the host, another run's too, stay
out of the figures), and an asyncio
client keeping `--concurrency` (<= 4) connections in flight, each sending one
byte and reading the echo until EOF. Phases alternate off, on, off, ...,
off: `off` has no BPF loaded, `on` has a separate consumer process running
the agent's per-record path: `Capture.poll`, the `Pipeline` (default config:
detector and decider, no policy), the live status, ECS rendering and the
NDJSON sink. Every phase is bounded by `--seconds`.

Prints the date and the host's load average (other work shares the cores:
only side-by-side ratios mean something), per phase the connection rate and
the relay's CPU time per connection (BPF programs run inside its syscalls,
so their cost lands there), and for `on` phases completeness: connections
the client completed vs ACCEPTED events captured for the relay's port,
kernel-side losses, records written. Then each on phase's rate ratio against
the two off phases around it (target >= 0.95 each), the relay's CPU ratio
(target <= x1.03), and the cost per connection: kernel (relay CPU with -
without) and the consumer's CPU (target <= 30 us) split into read (ring
drain, loss counters and the wakeup), decode, enrich (these three share the
poll's CPU by the time each took), pipeline, render and write (buffer and
the flusher thread). Beside them, the CPU budget: the host's busy CPU per
connection in the off phases, what a ratio of 0.95 leaves of it for
everything capture adds while every CPU is busy, and the ratio this run's
added CPU (kernel + consumer) predicts. `--agent` runs the agent itself
instead (`socat-monitor run` without enforcement, all its threads, its own
programs: `--no-bytes` and `--batch-ms` set its capture, `--source` and
`--control` are refused):
its whole CPU, split by thread (the capture thread, the main thread, the
others), the CPU of its child processes beside it (the columnar sink's
converter, one child for the closed NDJSON files of a busy spell), and no
figure of the kernel programs.
`--control` runs an idle consumer without BPF (the method's noise),
`--comm other` attaches programs that match nothing, `--no-bytes` compiles
out byte counting (the agent's default), `--batch-ms` sets the capture's
batching (`capture.batch`, default 5 ms). The exact
kernel figure: during on phases BPF run-time statistics are on (bpf(2)
BPF_ENABLE_STATS, for as long as the consumer runs: nothing stays on after a
crash or Ctrl-C) and the kernel counts each program's runs and run time;
printed per on phase with the programs' total per relay connection and its
share of the relay's CPU. Those totals count every process's runs (the
programs run for the whole host: the client and the backend too), so they
bound the relay's share from above. What the statistics cannot count, the
system-call slow path that attached syscall tracepoints put every task on,
is printed as a getppid loop's cost in on against off phases. `--source`
loads another checkout's bpf/capture.c (the same record layout) to compare
its kernel cost side by side. `--hot-loop N`
times the same per-record path over N made-up relay connections in a loop,
without BPF: the cost on warm caches, which other load distorts far less;
beside it, the floor: the same records only unpacked and encoded as small
flat objects.

Run as root: sudo .venv/bin/python scripts/bench_capture.py --no-bytes --rounds 3 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# The relay is socat run under its own name, so the capture sees it and not the socat processes
# other work on the host runs at the same time.
RELAY_COMM = f"socat-bench{os.getpid() % 10000}"   # this run's own: two benches at once stay apart
SOURCE_DEFAULT = ROOT / "bpf" / "capture.c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port}")


# ---- roles run as child processes ------------------------------------------

def run_backend(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read(64)
            writer.write(data)
            await writer.drain()
        except OSError:
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Stages:
    """CPU time the consumer spent in each stage of the agent's per-record path, in ns (thread CPU clock)."""

    def __init__(self) -> None:
        self.capture = self.pipeline = self.render = self.write = 0
        self.clock_calls = 0


def clock_cost_ns() -> float:
    """What one read of the thread CPU clock costs here (a system call on this VM)."""
    start = time.thread_time_ns()
    for _ in range(1000):
        time.thread_time_ns()
    return (time.thread_time_ns() - start) / 1001


def thread_cpu_s(name: str) -> float:
    """CPU time of this process's thread called `name` (0 if there is none)."""
    for thread in threading.enumerate():
        if thread.name == name and thread.native_id is not None:
            with open(f"/proc/self/task/{thread.native_id}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def run_consumer(port: int, byte_counts: bool, control: bool, comm: str, batch_ms: float | None,
                 source: Path) -> None:
    """Run the agent's per-record path until SIGTERM; print a JSON summary of what was seen for `port`.

    The path is the agent's: `Capture.poll` (ring drain, decode, enrich), the `Pipeline` with the default
    config (detector and decider, no policy), the live status, ECS rendering and the NDJSON sink (to a
    temporary directory). `control`: load nothing, just idle (measures the method's own noise). BPF
    run-time statistics are on while it runs: the summary has each program's run count and run time."""
    from monitor.agent.heap import cap_arenas, settle_heap
    from monitor.agent.wiring import make_decider, make_detector
    from monitor.capture import Capture, CaptureConfig
    from monitor.config import Config
    from monitor.ebpf.progstats import StatsSwitch
    from monitor.ecs import HostInfo, encode
    from monitor.events import Action, ConnectionEvent, PipelineError, now_ns
    from monitor.pipeline import Pipeline
    from monitor.sinks.ndjson import NdjsonConfig, NdjsonSink, stream_of
    from monitor.status import LiveStatus

    cap_arenas()   # as the agent does, before any thread starts
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    if control:
        print("ready", flush=True)
        while not stop:
            time.sleep(0.1)
        print(json.dumps({"accepted": 0, "events": 0, "written": 0, "pipeline_errors": 0, "kernel_lost": 0,
                          "decode_errors": 0, "consumer_cpu_s": 0.0, "programs": []}), flush=True)
        return
    config = Config()
    decider = make_decider(config, None)
    pipeline = Pipeline(detector=make_detector(config, decider), decider=decider)
    status = LiveStatus(open_idle_s=config.policy_engine.open_idle_timeout_s)
    host = HostInfo.detect()
    out_dir = tempfile.mkdtemp(prefix="bench-capture-")
    sink = NdjsonSink(NdjsonConfig(directory=Path(out_dir)), host)
    capture = Capture(CaptureConfig(comms=(comm,), byte_counts=byte_counts, **batch_setting(batch_ms)),
                      source=source)
    settle_heap()   # as the agent does once started
    bpf_stats = StatsSwitch()   # counted from here: the load's own runs are not
    print("ready", flush=True)
    accepted = events = errors = polls = 0
    stages = Stages()
    next_tick = time.monotonic() + config.agent.tick_interval_s
    clock = time.thread_time_ns
    cpu0, sink_cpu0 = time.process_time(), thread_cpu_s("sink-ndjson")

    def poll(timeout_ms: int) -> list:
        t0 = clock()
        batch = capture.poll(timeout_ms)
        stages.capture += clock() - t0
        stages.clock_calls += 2
        return batch

    def consume(batch: list, tick: bool = False) -> None:
        nonlocal accepted, events, errors
        t0 = clock()
        records = pipeline.tick(now_ns()) if tick else []
        for rec in batch:
            records.extend(pipeline.process(rec))
        status.observe_all(records)
        t1 = clock()
        lines = [(stream_of(rec), encode(rec, host)) for rec in records]
        t2 = clock()
        sink.append_all(lines)
        stages.pipeline += t1 - t0
        stages.render += t2 - t1
        stages.write += clock() - t2
        stages.clock_calls += 4
        for rec in records:
            events += 1
            if rec.__class__ is PipelineError:
                errors += rec.count
            elif rec.__class__ is ConnectionEvent and rec.action is Action.ACCEPTED and rec.destination_port == port:
                accepted += 1

    while not stop:
        consume(poll(100))
        polls += 1
        if time.monotonic() >= next_tick:
            next_tick = time.monotonic() + config.agent.tick_interval_s
            consume([], tick=True)
    consume(poll(0))   # whatever is left
    sink.flush()
    cpu = time.process_time() - cpu0
    sink_cpu = thread_cpu_s("sink-ndjson") - sink_cpu0
    stats = capture.stats
    programs = [[run.tracepoint, run.count, run.ns] for run in capture.program_runs()]
    bpf_stats.close()
    capture.close()
    # the poll's CPU (wakeup included) divided between its stages by the time each took
    timed = max(stats.read_ns + stats.decode_ns + stats.enrich_ns, 1)
    share = {name: stages.capture * ns / timed
             for name, ns in (("read", stats.read_ns), ("decode", stats.decode_ns), ("enrich", stats.enrich_ns))}
    sink.close()
    written = sink.stats.written
    shutil.rmtree(out_dir, ignore_errors=True)
    print(json.dumps({"accepted": accepted, "events": events, "written": written, "pipeline_errors": errors,
                      "kernel_lost": stats.kernel_lost,
                      "decode_errors": stats.decode_errors, "consumer_cpu_s": round(cpu, 3), "polls": polls,
                      "read_s": share["read"] / 1e9,
                      "decode_s": share["decode"] / 1e9, "enrich_s": share["enrich"] / 1e9,
                      "clocks_s": stages.clock_calls * clock_cost_ns() / 1e9,
                      "pipeline_s": stages.pipeline / 1e9, "render_s": stages.render / 1e9,
                      "write_s": stages.write / 1e9 + sink_cpu, "programs": programs}), flush=True)


def batch_setting(batch_ms: float | None) -> dict:
    """`capture.batch` as CaptureConfig keywords: the agent's default unless `--batch-ms` was given."""
    return {} if batch_ms is None else {"batch_s": batch_ms / 1000}


def accepted_in(directory: str, port: int) -> int:
    """ACCEPTED documents for listener `port` in the agent's NDJSON events files."""
    count = 0
    for path in Path(directory).glob("events-*.ndjson"):
        with open(path, "rb") as fh:
            for line in fh:
                doc = json.loads(line)
                count += (doc["event"]["action"] == "connection_accepted"
                          and doc.get("destination", {}).get("port") == port)
    return count


def run_agent_consumer(port: int, comm: str, batch_ms: float | None, byte_counts: bool) -> None:
    """Run the agent itself (what `socat-monitor run` runs: its threads, queue, sinks) watching `comm`,
    until SIGTERM; print the same JSON summary, its CPU counted from the moment it was started."""
    import threading

    from monitor.agent import Agent, RunOptions
    from monitor.config import ConfigSource

    state = tempfile.mkdtemp(prefix="bench-capture-agent-")
    capture = {"comms": (comm,), "byte_counts": byte_counts} | batch_setting(batch_ms)
    source = ConfigSource(None, dict(
        agent={"output": state, "state_dir": state, "metrics": "", "control_socket": f"{state}/control.sock"},
        ndjson={"directory": state}, capture=capture, enforce={"enabled": False}))
    agent = Agent(source.load(), RunOptions(source=source))
    agent.install_signal_handlers()
    started, stopped = {}, {}

    def announce() -> None:
        """Say ready once the reader runs; at SIGTERM, the reader's CPU (it ends soon after)."""
        while agent.reader is None or not agent.reader.thread.is_alive():
            time.sleep(0.01)
        started.update(cpu=time.process_time(), main=thread_cpu_s("MainThread"), children=children_cpu_s())
        print("ready", flush=True)
        agent.stop_event.wait()
        stopped["capture"] = thread_cpu_s("capture")

    threading.Thread(target=announce, daemon=True).start()
    summary = agent.run()
    cpu = time.process_time() - started["cpu"]
    main = thread_cpu_s("MainThread") - started["main"]
    children = children_cpu_s() - started["children"]
    stats = agent.sinks.stats_by_sink()["NdjsonSink"]
    accepted = accepted_in(state, port)
    shutil.rmtree(state, ignore_errors=True)
    handed = stats.written + stats.failed + stats.dropped + stats.pending   # every record the agent wrote out
    print(json.dumps({"accepted": accepted, "events": handed, "written": stats.written, "pipeline_errors": 0,
                      "kernel_lost": summary.kernel_lost, "decode_errors": 0, "consumer_cpu_s": round(cpu, 3),
                      "capture_s": stopped.get("capture", 0.0), "main_s": main, "children_s": children,
                      "programs": []}), flush=True)   # no kernel figure in this mode: the default one has it


def children_cpu_s() -> float:
    """CPU time of this process's child processes that ended and were waited for (the columnar sink's
    conversions)."""
    times = os.times()
    return times.children_user + times.children_system


def relay_records(connections: int, relay_pid: int, first: int = 0) -> list[bytes]:
    """Ring-buffer records (the layout of `bpf/capture.c`) of a fork relay's connections on
    loopback, numbered from `first` (each its own child pid and ports, as live): the accept in the
    relay, the child's connect, both closes; one child in 50 exits with a status (a clean child's
    exit is not reported)."""
    from monitor.capture import decode as d

    lo = bytes([127, 0, 0, 1]).ljust(16, b"\0")
    comm = RELAY_COMM.encode().ljust(16, b"\0")

    def rec(etype: int, flags: int, pid: int, ppid: int, ts: int, cookie: int, sport: int, dport: int,
            family: int = d.AF_INET, err: int = 0) -> bytes:
        return d.HEADER.pack(etype, family, flags, pid, pid, ppid, 0, 0, ts, cookie, 100 if etype == d.EV_CLOSE else 0,
                             err, sport, dport, lo, lo, 9000, d.AF_INET, 0, lo, comm, 0, 0)

    out = []
    for i in range(first, first + connections):
        child, ts = 1_000_000 + i, 1_000_000 + i * 1000
        client, local = 20000 + i % 40000, 30000 + i % 30000
        out += [rec(d.EV_ACCEPT, d.F_INGRESS, relay_pid, 1, ts, ts, client, 9000),
                rec(d.EV_CONNECT, 0, child, relay_pid, ts + 100, ts, local, 9001),
                rec(d.EV_CLOSE, d.F_INGRESS, child, relay_pid, ts + 200, ts, client, 9000),
                rec(d.EV_CLOSE, 0, child, relay_pid, ts + 300, ts, local, 9001)]
        if i % 50 == 0:
            out.append(rec(d.EV_EXIT, d.F_EXITED, child, relay_pid, ts + 400, ts, 0, 0, family=0, err=1))
    return out


def hot_loop(connections: int, rounds: int) -> None:
    """The consumer's per-record path over made-up relay records, in a loop: its CPU cost without
    BPF, wakeups or other processes (what the live split costs on warm caches). Each round has
    connections of its own (child pids, ports), as live, so no round finds another's flows cached."""
    from monitor.agent.heap import cap_arenas, settle_heap
    from monitor.agent.wiring import make_decider, make_detector
    from monitor.capture.decode import decode
    from monitor.capture.enrich import Enricher, ProcessTable, monotonic_offset_ns
    from monitor.config import Config
    from monitor.ecs import HostInfo, encode
    from monitor.pipeline import Pipeline
    from monitor.status import LiveStatus

    cap_arenas()   # as the agent does
    host, offset = HostInfo.detect(), monotonic_offset_ns()
    every_round = [relay_records(connections, os.getpid(), n * connections) for n in range(rounds)]   # new ports
    settle_heap()   # as the agent (and the live consumer) does once started
    spent = dict.fromkeys(("decode", "enrich", "pipeline", "render"), 0.0)
    for raws in every_round:
        config = Config()
        decider = make_decider(config, None)
        pipeline = Pipeline(detector=make_detector(config, decider), decider=decider)
        status, enrich = LiveStatus(open_idle_s=60), Enricher(ProcessTable(4096, offset), offset, "bench")
        for start in range(0, len(raws), 8):   # drains of 8 records, as the live bench sees
            t0 = time.process_time()
            decoded = [decode(raw) for raw in raws[start:start + 8]]
            t1 = time.process_time()
            events = [e for e in map(enrich, decoded) if e is not None]
            t2 = time.process_time()
            records = [out for e in events for out in pipeline.process(e)]
            status.observe_all(records)
            t3 = time.process_time()
            for rec in records:
                encode(rec, host)
            t4 = time.process_time()
            for name, took in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[name] += took
    per = {name: took * 1e6 / (connections * rounds) for name, took in spent.items()}
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load_average()}")
    print(f"hot loop, {connections} connections x {rounds}: {sum(per.values()):.1f} us CPU per connection: "
          + ", ".join(f"{name} {value:.1f}" for name, value in per.items()))
    floor = min(floor_loop(every_round[0]) for _ in range(3)) * 1e6 / connections   # as much work for any rounds
    print(f"floor, the same records unpacked and each encoded as a flat 9-field object: {floor:.1f} us per "
          "connection (the least of 3 runs)")


def floor_loop(raws: list[bytes]) -> float:
    """CPU seconds to unpack `raws` and encode each as a small flat JSON object: what a consumer that
    does nothing else per record costs, beside the hot loop."""
    import orjson

    from monitor.capture.decode import HEADER

    unpack, dumps, lines = HEADER.unpack_from, orjson.dumps, []
    started = time.process_time()
    for raw in raws:
        f = unpack(raw)
        lines.append(dumps({"type": f[0], "pid": f[3], "ppid": f[5], "ts": f[8], "cookie": f[9], "sport": f[12],
                            "dport": f[13], "saddr": f[14].hex(), "daddr": f[15].hex()}))
    return time.process_time() - started


# ---- the client -------------------------------------------------------------

async def client(port: int, seconds: float, concurrency: int) -> tuple[int, int, float]:
    done = failed = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while loop.time() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"x")
                await writer.drain()
                got = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                if got == b"x":
                    done += 1
                else:
                    failed += 1
            except (OSError, asyncio.TimeoutError):
                failed += 1

    start = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, failed, loop.time() - start


def relay_cpu_s(pid: int) -> float:
    """CPU time of the relay and its reaped fork children (utime+stime+cutime+cstime).

    BPF programs run inside the traced syscalls, so their cost is charged here:
    a figure other load on the host does not distort the way it distorts rates."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def host_busy_s() -> float:
    """CPU seconds all the host's CPUs spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def syscall_ns(calls: int = 10_000, batches: int = 20) -> float:
    """What one cheap system call (getppid) costs this process, the fastest of a few batches, in ns.

    Attached syscall tracepoints put every task's system calls on the kernel's slow path, whichever
    call the programs are on: on phases against off phases show that cost, which bpf_stats does not count."""
    getppid, best = os.getppid, float("inf")
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(calls):
            getppid()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def phase(name: str, port: int, args, consumer: subprocess.Popen | None, relay_pid: int) -> dict:
    syscall = syscall_ns()
    cpu0, busy0 = relay_cpu_s(relay_pid), host_busy_s()
    done, failed, elapsed = asyncio.run(client(port, args.seconds, args.concurrency))
    busy = host_busy_s() - busy0
    time.sleep(0.3)   # let the last children be reaped
    cpu_us = (relay_cpu_s(relay_pid) - cpu0) * 1e6 / max(done, 1)
    out = {"phase": name, "connections": done, "failed": failed, "rate": done / elapsed, "relay_us": cpu_us,
           "syscall_ns": syscall, "host_us": busy * 1e6 / max(done, 1), "busy_cpus": busy / elapsed}
    if consumer is not None:
        time.sleep(1.0)   # let the last events arrive
        consumer.send_signal(signal.SIGTERM)
        line = consumer.communicate(timeout=30)[0].strip().splitlines()[-1]
        out.update(json.loads(line))
    return out


def start_consumer(port: int, args) -> subprocess.Popen:
    role = "agent" if args.agent else "consumer"
    proc = subprocess.Popen([sys.executable, __file__, "--role", role, "--port", str(port)]
                            + (["--no-bytes"] if args.no_bytes else []) + (["--control"] if args.control else [])
                            + ["--comm", args.comm, "--source", str(args.source)]
                            + ([] if args.batch_ms is None else ["--batch-ms", str(args.batch_ms)]),
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit("bench: the capture consumer did not start (see its error above)")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase (max 60)")
    ap.add_argument("--rounds", type=int, default=3, help="on phases, each between two off phases (max 5)")
    ap.add_argument("--concurrency", type=int, default=4, help="connections in flight (1-4)")
    ap.add_argument("--no-bytes", action="store_true", help="capture without byte counting (no read/write probes)")
    ap.add_argument("--control", action="store_true",
                    help="on phases run an idle consumer without BPF: the ratio then shows the method's noise")
    ap.add_argument("--comm", default=None,
                    help="process name the capture watches; another name measures programs whose filter matches nothing")
    ap.add_argument("--batch-ms", type=float, default=None,
                    help="the capture's batch setting (capture.batch) in ms; default: the agent's")
    ap.add_argument("--source", type=Path, default=SOURCE_DEFAULT,
                    help="the BPF C the capture loads (another checkout's bpf/capture.c compares its kernel cost)")
    ap.add_argument("--hot-loop", type=int, default=0, metavar="N",
                    help="instead: time the consumer's path over N made-up relay connections in a loop (no BPF, no root)")
    ap.add_argument("--agent", action="store_true",
                    help="on phases run the agent itself (`socat-monitor run`, no enforcement), not its per-record "
                         "path alone: its whole CPU per connection, with no split")
    ap.add_argument("--role", choices=["main", "backend", "consumer", "agent"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.comm = args.comm or RELAY_COMM
    if args.role == "backend":
        return run_backend(args.port)
    if args.role == "agent":
        return run_agent_consumer(args.port, args.comm, args.batch_ms, not args.no_bytes)
    if args.role == "consumer":
        return run_consumer(args.port, not args.no_bytes, args.control, args.comm, args.batch_ms, args.source)
    if args.hot_loop:
        return hot_loop(min(max(args.hot_loop, 100), 100_000), args.rounds)
    args.seconds = min(max(args.seconds, 1.0), 60.0)
    args.rounds = min(max(args.rounds, 1), 5)
    args.concurrency = min(max(args.concurrency, 1), 4)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (BPF)")
    if not args.source.is_file():
        raise SystemExit(f"bench: {args.source}: no such BPF source")
    if args.agent and (args.control or args.source.resolve() != SOURCE_DEFAULT):
        raise SystemExit("bench: --agent runs the agent with its own programs: --control and --source apply to "
                         "the per-record consumer only")
    socat = shutil.which("socat") or sys.exit("bench: socat is not installed")
    relay_dir = tempfile.mkdtemp(prefix="bench-capture-relay-")
    relay_exe = shutil.copy(socat, os.path.join(relay_dir, RELAY_COMM))

    started, load_before = time.time(), load_average()
    bport, rport = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, __file__, "--role", "backend", "--port", str(bport)])
    relay = None
    results = []
    try:
        wait_listening(bport)
        relay = subprocess.Popen([relay_exe, f"TCP-LISTEN:{rport},fork,reuseaddr,backlog=64",
                                  f"TCP:127.0.0.1:{bport}"], stderr=subprocess.DEVNULL)
        wait_listening(rport)
        asyncio.run(client(rport, 1.0, args.concurrency))   # warm up
        for _ in range(args.rounds):
            results.append(phase("off", rport, args, None, relay.pid))
            results.append(phase("on", rport, args, start_consumer(rport, args), relay.pid))
        results.append(phase("off", rport, args, None, relay.pid))   # offs bracket every on: drift cancels
    finally:
        for proc in (relay, backend):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        shutil.rmtree(relay_dir, ignore_errors=True)

    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, load average {load_before} at "
          f"start, {load_average()} at the end (other work on the host shares its cores)")
    report(results, args)


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as fh:
        return " ".join(fh.read().split()[:3])


STAGES = ("read", "decode", "enrich", "pipeline", "render", "write")


def report_programs(on: list[dict], off: list[dict]) -> None:
    """Per on phase, what the kernel counted for each program (bpf_stats: runs per relay connection and
    mean ns per run), their total per relay connection and its share of the relay's CPU; then the
    syscall slow path the attached tracepoints put every task on (getppid on vs off)."""
    if not any(r["programs"] for r in on):
        return
    names = sorted({p[0] for r in on for p in r["programs"]})
    figures = [{name: (count, ns) for name, count, ns in r["programs"]} for r in on]
    print("kernel programs (bpf_stats, every process of the host), per on phase: runs per relay connection x mean ns")
    for name in names:
        cells = []
        for r, fig in zip(on, figures):
            count, ns = fig.get(name, (0, 0))
            cells.append(f"{count / max(r['connections'], 1):6.2f} x {ns / max(count, 1):5.0f} ns")
        print(f"  {name:22} " + "   ".join(cells))
    totals = [sum(ns for _, ns in fig.values()) / 1e3 / max(r["connections"], 1) for r, fig in zip(on, figures)]
    shares = [r["relay_us"] / max(r["relay_us"] - total, 1e-9) for r, total in zip(on, totals)]
    print(f"kernel programs per relay connection: {', '.join(f'{t:.2f} us' for t in totals)}; as a share of the "
          f"relay's CPU (relay CPU / (relay CPU - programs)): {', '.join(f'x{x:.4f}' for x in shares)} "
          f"(target <= x1.03; the noisy ratio above for comparison)")
    slow_on = [r["syscall_ns"] for r in on]
    slow_off = [r["syscall_ns"] for r in off]
    print(f"syscall slow path (attached syscall tracepoints, not in bpf_stats): getppid "
          f"{', '.join(f'{x:.0f}' for x in slow_on)} ns with the programs, {', '.join(f'{x:.0f}' for x in slow_off)} "
          f"ns without: +{min(slow_on) - min(slow_off):.0f} ns per system call of every task (fastest against fastest)")


def budget(off: list[dict], kernel: float, consumer: float) -> str:
    """What a rate ratio of 0.95 leaves capture: while the relay, its client and its backend keep every CPU
    of the host busy, each us capture adds per connection is taken from them."""
    host = sum(r["host_us"] for r in off) / len(off)
    busy = sum(r["busy_cpus"] for r in off) / len(off)
    added = kernel + consumer
    return (f"CPU budget: without capture the host's CPUs were {busy:.2f} of {os.cpu_count()} busy, {host:.0f} us per "
            f"connection; with all of them busy, a rate ratio of 0.95 leaves {host * (1 / 0.95 - 1):.0f} us per "
            f"connection for everything capture adds; this run added {added:.1f} us (kernel {kernel:.1f} + "
            f"consumer {consumer:.1f}), which predicts a ratio of {host / (host + added):.3f}")


def report(results: list[dict], args) -> None:
    """The phase table, the ratio of each on phase to the off phases around it, completeness, CPU split."""
    print(f"{'phase':5} {'conns':>7} {'failed':>6} {'conn/s':>8} {'relay_us/conn':>13} {'accepted':>8} {'lost':>5} "
          f"{'events':>7} {'written':>7} {'consumer_us/conn':>16}")
    for r in results:
        consumer = f"{r['consumer_cpu_s'] * 1e6 / max(r['connections'], 1):.1f}" if "consumer_cpu_s" in r else ""
        print(f"{r['phase']:5} {r['connections']:7d} {r['failed']:6d} {r['rate']:8.0f} {r['relay_us']:13.0f} "
              f"{r.get('accepted', ''):>8} {r.get('kernel_lost', ''):>5} {r.get('events', ''):>7} "
              f"{r.get('written', ''):>7} {consumer:>16}")
    off = [r for r in results if r["phase"] == "off"]
    on = [r for r in results if r["phase"] == "on"]
    ratios = [r["rate"] / ((before["rate"] + after["rate"]) / 2) for before, r, after in zip(off, on, off[1:])]
    cpu_ratios = [r["relay_us"] / ((before["relay_us"] + after["relay_us"]) / 2)
                  for before, r, after in zip(off, on, off[1:])]
    print(f"rate ratio with capture / without, each on phase against the off phases around it: "
          f"{', '.join(f'{x:.3f}' for x in ratios)} (range {min(ratios):.3f}-{max(ratios):.3f}; target >= 0.95 each)")
    print(f"relay CPU per connection with / without (kernel programs): "
          f"{', '.join(f'x{x:.3f}' for x in cpu_ratios)} (target <= x1.03)")
    report_programs(on, off)
    if args.control:
        print("control run: no capture was loaded; the ratios above are the measurement noise")
        return
    if args.comm != RELAY_COMM:
        print(f"capture watched {args.comm!r}, not the relay: the ratios above are the cost of attached, idle programs")
        return
    conns = sum(r["connections"] for r in on)
    made = sum(r["connections"] + r["failed"] for r in on)
    seen = sum(r["accepted"] for r in on)
    lost = sum(r["kernel_lost"] + r["decode_errors"] for r in on)
    unwritten = sum(r["events"] - r["written"] for r in on)
    print(f"completeness with capture: {seen} accepted events for {made} client connections "
          f"({seen / made:.4f}), kernel lost {lost}, "
          f"records not written {unwritten}")
    cpu_off = sum(r["relay_us"] for r in off) / len(off)
    kernel = sum(r["relay_us"] * r["connections"] for r in on) / conns - cpu_off
    consumer = sum(r["consumer_cpu_s"] for r in on) * 1e6 / conns
    print(budget(off, kernel, consumer))
    if args.agent:
        split = {name: sum(r[f"{name}_s"] for r in on) * 1e6 / conns for name in ("capture", "main", "children")}
        print(f"per connection ({sum(r['events'] for r in on) / conns:.1f} records): kernel {kernel:.1f} us "
              f"(relay CPU with - without); the agent's CPU {consumer:.1f} us (target <= 30), all its threads: "
              f"capture thread {split['capture']:.1f}, main thread {split['main']:.1f}, the others "
              f"{consumer - split['capture'] - split['main']:.1f}; beside it, its child processes (the columnar "
              f"sink's conversions of closed files) {split['children']:.1f} us")
        return
    split = {name: sum(r[f"{name}_s"] for r in on) * 1e6 / conns for name in STAGES}
    clocks = sum(r["clocks_s"] for r in on) * 1e6 / conns
    print(f"per connection ({sum(r['events'] for r in on) / conns:.1f} records): kernel {kernel:.1f} us "
          f"(relay CPU with - without); consumer CPU {consumer:.1f} us (target <= 30), of which "
          + ", ".join(f"{name} {split[name]:.1f}" for name in STAGES)
          + f", CPU clock reads of this bench {clocks:.1f}, other (loop, wakeups) {consumer - sum(split.values()) - clocks:.1f}; "
          f"{sum(r['events'] for r in on) / max(sum(r['polls'] for r in on), 1):.1f} records per poll")


if __name__ == "__main__":
    main()
