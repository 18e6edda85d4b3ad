#!/usr/bin/env python3
"""Benchmark of offline `analyze` and of the live detector.

Generates NDJSON files in the agent's own ECS format (1M and 2M connection
events: real `ConnectionEvent`s, accepts and closes, rendered by
`monitor.ecs.render`; plus a 2M-event file with only the minimal fields another
tool would write), then, each in a fresh process, times `monitor.replay.analyze.analyze` and
records its peak RSS, next to its reader alone (the DuckDB scan: the ceiling)
and pyarrow's JSON reader alone (the reader it replaced, and the one that
still reads a file from its first bad line on). Then times the live
`Detector.observe` / `tick` path.

    .venv/bin/python scripts/bench_analyze.py [--events 2000000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BENCH_TREE", str(ROOT)))      # --against: another tree's monitor package

import numpy as np  # noqa: E402
import orjson  # noqa: E402

T0 = 1_767_225_600 * 10**9
LISTENERS = (8080, 8443, 5432)


def generate(path: Path, n: int, minimal: bool = False, seed: int = 1) -> int:
    """n connection events (accepts and closes) from 5000 sources over ~6 hours on 3 listeners, with a
    few floods, each a real `ConnectionEvent` rendered by `monitor.ecs.render` as the agent writes it
    (or, `minimal`, only the fields another tool would have); bytes written."""
    from monitor.ecs import HostInfo, iso_timestamp, render
    from monitor.events import Action, ConnectionEvent, Listener, ProcessInfo

    rng = np.random.default_rng(seed)
    host = HostInfo("bench-host", "f" * 32)
    proc = ProcessInfo(pid=4242, comm="socat", ppid=1, uid=0, user_name="root", executable="/usr/bin/socat",
                       args=("socat", "TCP-LISTEN:8080,fork,reuseaddr", "TCP:127.0.0.1:9000"))
    conns = n // 2
    span_s = 6 * 3600
    start = np.sort(T0 + rng.uniform(0, span_s * 1e9, conns).astype(np.int64)) // 1000 * 1000
    source = rng.zipf(1.3, conns) % 5000
    for k in range(5):                      # floods: one source, 1500 connections in ~10 s
        at = int(conns * (0.3 + 0.1 * k))
        source[at: at + 1500] = 7000 + k
    duration = (rng.lognormal(np.log(2.0), 1.0, conns) * 1e9).astype(np.int64) // 1000 * 1000
    t = np.concatenate([start, start + duration])
    kind = np.concatenate([np.zeros(conns, dtype=np.int8), np.ones(conns, dtype=np.int8)])
    conn = np.concatenate([np.arange(conns), np.arange(conns)])
    order = np.argsort(t, kind="stable")
    ips = [f"10.{(s >> 8) & 255}.{s & 255}.{1 + s % 200}" for s in range(8000)]
    ports = rng.integers(1024, 65535, conns)
    listener = np.array(LISTENERS)[source % 3]
    written = 0
    with open(path, "wb", buffering=16 << 20) as fh:
        step = 50_000
        for lo in range(0, len(order), step):
            out = []
            for i in order[lo: lo + step]:
                c = int(conn[i])
                lst = int(listener[c])
                ev = ConnectionEvent(
                    Action.CLOSED if kind[i] else Action.ACCEPTED, int(t[i]), ips[source[c]], int(ports[c]),
                    "127.0.0.1", lst, listener=Listener("127.0.0.1", lst), session_id=f"s{c}", process=proc,
                    duration_ns=int(duration[c]) if kind[i] else None, ktime_ns=int(t[i]) - T0, id=f"e{i}")
                if minimal:
                    doc = {"@timestamp": iso_timestamp(ev.timestamp_ns), "event": {"action": ev.action.value},
                           "source": {"ip": ev.source_ip, "port": ev.source_port},
                           "destination": {"ip": ev.destination_ip, "port": ev.destination_port}}
                else:
                    doc = render(ev, host)
                out.append(orjson.dumps(doc))
            block = b"\n".join(out) + b"\n"
            written += len(block)
            fh.write(block)
    return written


def _peak_rss_mb() -> float:
    """VmHWM of this process image (ru_maxrss would include the parent's peak from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_analyze(path: str) -> None:
    """Run in a fresh process: analyze one file, print figures as JSON."""
    from monitor.replay.analyze import analyze
    from monitor.detect import DetectConfig

    began = time.perf_counter()
    result = analyze([path], config=DetectConfig())
    seconds = time.perf_counter() - began
    peak_mb = _peak_rss_mb()
    print(json.dumps({"events": result.connection_events, "seconds": seconds, "alerts": len(result.alerts),
                      "malformed": result.malformed, "peak_rss_mb": peak_mb}))


def child_arrow(path: str) -> None:
    """Run in a fresh process: the same blocks through pyarrow's JSON reader alone (the reader's ceiling)."""
    import pyarrow as pa
    import pyarrow.json as pj

    from monitor.replay.fields import SCHEMA
    from monitor.replay.reader import BLOCK_BYTES, PARSE_BLOCK, _blocks

    began = time.perf_counter()
    rows = 0
    with open(path, "rb") as fh:
        for _first, _count, block in _blocks(fh, BLOCK_BYTES):
            rows += pj.read_json(pa.BufferReader(pa.py_buffer(block)),
                                 read_options=pj.ReadOptions(block_size=PARSE_BLOCK, use_threads=True),
                                 parse_options=pj.ParseOptions(explicit_schema=SCHEMA,
                                                               unexpected_field_behavior="ignore")).num_rows
    print(json.dumps({"events": rows, "seconds": time.perf_counter() - began}))


def child_scan(path: str) -> None:
    """Run in a fresh process: the DuckDB scan alone, as `analyze` reads (its ceiling)."""
    from monitor.replay.fields import SCHEMA
    from monitor.replay.scan import FileScan

    began = time.perf_counter()
    rows = sum(table.num_rows for table in FileScan(Path(path), SCHEMA, compressed=False).tables())
    print(json.dumps({"events": rows, "seconds": time.perf_counter() - began}))


def run_child(kind: str, path: Path, tree: Path = ROOT) -> dict:
    """A measurement in a fresh process, with the `monitor` package of `tree` (this checkout by default)."""
    env = dict(os.environ, BENCH_TREE=str(tree))
    out = subprocess.run([sys.executable, __file__, f"--child-{kind}", str(path)], capture_output=True, text=True,
                         check=True, timeout=1800, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_live(n: int) -> dict:
    from monitor.detect import DetectConfig, Detector
    from monitor.events import Action, ConnectionEvent, Listener

    rng = np.random.default_rng(2)
    t = np.sort(T0 + rng.uniform(0, 3600e9, n).astype(np.int64))
    src = rng.zipf(1.3, n) % 2000
    events = [ConnectionEvent(Action.ACCEPTED, int(t[i]), f"10.0.{src[i] >> 8}.{src[i] & 255}", 40000,
                              "127.0.0.1", LISTENERS[src[i] % 3], listener=Listener("127.0.0.1", LISTENERS[src[i] % 3]))
              for i in range(n)]
    det = Detector(DetectConfig(learning_period_s=600))
    tick_every = int(0.5e9)
    next_tick = int(t[0]) + tick_every
    observe_s = tick_s = 0.0
    ticks = 0
    for ev in events:
        if ev.timestamp_ns >= next_tick:
            began = time.perf_counter()
            det.tick(next_tick)
            tick_s += time.perf_counter() - began
            ticks += 1
            next_tick += tick_every * max(1, (ev.timestamp_ns - next_tick) // tick_every + 1)
        began = time.perf_counter()
        det.observe(ev)
        observe_s += time.perf_counter() - began
    return {"events": n, "observe_per_s": n / observe_s, "ticks": ticks, "tick_ms": 1000 * tick_s / max(ticks, 1),
            "events_per_tick": n / max(ticks, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--dir", default=None, help="where to write the generated files (removed afterwards)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each measurement, alternating; the best is printed (the machine may be shared)")
    parser.add_argument("--against", type=Path, default=None,
                        help="a source tree with another version's monitor package (e.g. from "
                             "`git archive <rev> monitor | tar -x -C DIR`), timed side by side with this one")
    parser.add_argument("--child-analyze")
    parser.add_argument("--child-arrow")
    parser.add_argument("--child-scan")
    args = parser.parse_args()
    if args.child_analyze:
        return child_analyze(args.child_analyze)
    if args.child_arrow:
        return child_arrow(args.child_arrow)
    if args.child_scan:
        return child_scan(args.child_scan)
    work = Path(tempfile.mkdtemp(prefix="bench-analyze-", dir=args.dir))
    try:
        print(f"bench_analyze: {os.cpu_count()} CPUs, files in {work}")
        sizes = sorted({args.events // 2, args.events})
        files = {}
        for n in sizes:
            path = work / f"agent-{n}.ndjson"
            began = time.perf_counter()
            size = generate(path, n)
            files[n] = path
            print(f"generated {n:>9,} agent-format events: {size / 1e6:7.0f} MB "
                  f"({size / n:.0f} B/event) in {time.perf_counter() - began:.0f}s")
        minimal = work / f"minimal-{args.events}.ndjson"
        size = generate(minimal, args.events, minimal=True)
        print(f"generated {args.events:>9,} minimal events:      {size / 1e6:7.0f} MB ({size / args.events:.0f} B/event)")
        print()
        print(f"best of {max(1, args.repeat)} alternating runs each; load average now "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'file':22}{'events':>11}{'analyze ev/s':>14}{'scan-only ev/s':>16}{'ratio':>7}"
              f"{'pyarrow-only ev/s':>19}{'x pyarrow':>10}{'MB/s':>7}{'peak RSS MB':>13}{'alerts':>8}"
              + (f"{'--against ev/s':>16}" if args.against else ""))
        for label, path in [(f"agent {n:,}", files[n]) for n in sizes] + [(f"minimal {args.events:,}", minimal)]:
            runs: dict[str, list[dict]] = {"scan": [], "arrow": [], "analyze": [], "against": []}
            for _ in range(max(1, args.repeat)):
                for kind in ("scan", "arrow", "analyze"):
                    runs[kind].append(run_child(kind, path))
                if args.against:
                    runs["against"].append(run_child("analyze", path, args.against))
            rate = {kind: max(r["events"] / r["seconds"] for r in found) for kind, found in runs.items() if found}
            result = min(runs["analyze"], key=lambda r: r["seconds"])
            peak = max(r["peak_rss_mb"] for r in runs["analyze"])
            mbps = path.stat().st_size / 1e6 / result["seconds"]
            against = f"{rate['against']:>16,.0f}" if args.against else ""
            print(f"{label:22}{result['events']:>11,}{rate['analyze']:>14,.0f}{rate['scan']:>16,.0f}"
                  f"{rate['analyze'] / rate['scan']:>7.2f}{rate['arrow']:>19,.0f}{rate['analyze'] / rate['arrow']:>10.2f}"
                  f"{mbps:>7.0f}{peak:>13.0f}{result['alerts']:>8}" + against)
        print()
        live = bench_live(200_000)
        print(f"live Detector.observe: {live['observe_per_s']:,.0f} events/s; tick every 0.5 s of event time: "
              f"{live['tick_ms']:.1f} ms per tick ({live['events_per_tick']:.0f} events per tick, {live['ticks']} ticks)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
