#!/usr/bin/env python3
"""Benchmark of offline `analyze`, NDJSON and columnar side by side, and of the live detector.

Generates an NDJSON file in the agent's own ECS format (`--events` connection
events: real `ConnectionEvent`s, accepts and closes, rendered by
`monitor.ecs.render`) and its Parquet segment (`monitor.replay.columnar`, as
the agent's columnar sink writes it), then, each in a fresh process and
alternating, times `monitor.replay.analyze.analyze` on the NDJSON file and on
the segment, with the peak RSS of each, and the segment's reader alone.
It checks that both give the same alerts (rule, time, source, listener,
decision, event ids) and exits 1 if they do not. Then times the live
`Detector.observe` / `tick` path. The load average is printed beside every
figure: the machine may be shared.

    .venv/bin/python scripts/bench_analyze.py [--events 2000000] [--repeat 3] [--dir /tmp]

`--columnar-only` skips the NDJSON runs (minutes for 2 M events) and the
comparison with them, to time the columnar path alone, e.g. while changing it
(`--events 500000 --columnar-only`); `--profile N` prints the CPU time of
each stage of a columnar analyze (reader, detector rows, tallies, rule engine,
summaries) and the N costliest functions of one (cProfile, cumulative time).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
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
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

T0 = 1_767_225_600 * 10**9
LISTENERS = (8080, 8443, 5432)


def generate(path: Path, n: int, seed: int = 1) -> int:
    """n connection events (accepts and closes) from 5000 sources over ~6 hours on 3 listeners, with a
    few floods, each a real `ConnectionEvent` rendered by `monitor.ecs.render` as the agent writes it;
    bytes written."""
    from monitor.ecs import HostInfo, render
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


def child_analyze(path: str, columnar: bool) -> None:
    """Run in a fresh process: analyze one file, print figures and the alerts' digest as JSON."""
    from monitor.replay.analyze import analyze
    from monitor.detect import DetectConfig

    began = time.perf_counter()
    result = analyze([path], config=DetectConfig(), columnar=columnar)
    seconds = time.perf_counter() - began
    peak_mb = _peak_rss_mb()
    alerts = [dataclasses.replace(alert, id="") for alert in result.alerts]     # an alert's own id is random
    digest = hashlib.sha256(repr(alerts).encode()).hexdigest()
    print(json.dumps({"events": result.connection_events, "seconds": seconds, "alerts": len(result.alerts),
                      "digest": digest, "files": result.files, "malformed": result.malformed,
                      "peak_rss_mb": peak_mb}))


def child_profile(path: str, top: int) -> None:
    """Run in a fresh process: the CPU time of each stage of a columnar analyze (this thread's, best of 3,
    over the segment's chunks read first), then one analyze under cProfile, its `top` costliest functions."""
    import cProfile
    import pstats

    from monitor.replay.analyze import analyze
    from monitor.detect import DetectConfig

    best: dict[str, float] = {}
    for _ in range(3):
        for stage, seconds in _stages(Path(path)).items():
            best[stage] = min(best.get(stage, seconds), seconds)
    print("CPU seconds of this thread per stage (best of 3): "
          + ", ".join(f"{stage} {seconds:.3f}" for stage, seconds in best.items()))
    profile = cProfile.Profile()
    profile.runcall(analyze, [path], config=DetectConfig(), columnar=True)
    pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(top)


def _stages(path: Path) -> dict[str, float]:
    """analyze's columnar stages one after the other: reader, detector rows, tallies, rule engine, summaries."""
    from monitor.decide import DecideConfig, Decider
    from monitor.detect import Baseline, BatchEngine, DetectConfig, IpTable
    from monitor.enforce.enforcer import EnforceConfig
    from monitor.replay import analyze as stages
    from monitor.replay.columnar import segment_chunks
    from monitor.replay.reader import ReadStats

    config = DetectConfig()
    decider = Decider(DecideConfig(), default_ttl_s=EnforceConfig.default_ttl_s, block_rules=config.block_rules)
    ips = IpTable(config)
    engine = BatchEngine(config, Baseline.for_config(config), ips, config.rules,
                         [r for r in config.rules if decider.may_block(r)])
    short_ns = int(round(config.scan_short_s * 1e9))
    spent: dict[str, float] = {}

    def timed(stage: str, work):
        began = time.thread_time()
        result = work()
        spent[stage] = time.thread_time() - began
        return result
    chunks = timed("reader", lambda: list(segment_chunks(path, ReadStats())))
    rows = timed("rows", lambda: [stages.to_rows(chunk, ips, short_ns) for chunk in chunks])
    def tallied():
        tally = stages._Tally()
        for part in rows:
            tally.add(part)
        return tally.total()
    total = timed("tallies", tallied)
    alerts = timed("rule engine", lambda: [alert for part in rows for alert in engine.process(part)])
    timed("summaries", lambda: stages._summaries(total, alerts, ips, 20))
    return spent


def child_read(path: str) -> None:
    """Run in a fresh process: the segment's reader alone (the ceiling of the columnar path)."""
    from monitor.replay.columnar import segment_chunks
    from monitor.replay.reader import ReadStats

    began = time.perf_counter()
    rows = sum(len(chunk) for chunk in segment_chunks(Path(path), ReadStats()))
    print(json.dumps({"events": rows, "seconds": time.perf_counter() - began, "peak_rss_mb": _peak_rss_mb()}))


def run_child(kind: str, path: Path) -> dict:
    """A measurement in a fresh process, with the 1-minute load average when it started."""
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, f"--child-{kind}", str(path)], capture_output=True, text=True,
                         check=True, timeout=1800)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), load=load)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--dir", default=None, help="where to write the generated files (removed afterwards)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each measurement, alternating; each is printed, then the range")
    parser.add_argument("--columnar-only", action="store_true",
                        help="time the columnar path alone (no NDJSON runs, no comparison of their alerts)")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="then the CPU time of each stage of a columnar analyze, and its N costliest functions")
    parser.add_argument("--child-ndjson")
    parser.add_argument("--child-columnar")
    parser.add_argument("--child-read")
    parser.add_argument("--child-profile")
    args = parser.parse_args()
    if args.child_ndjson:
        return child_analyze(args.child_ndjson, columnar=False)
    if args.child_columnar:
        return child_analyze(args.child_columnar, columnar=True)
    if args.child_read:
        return child_read(args.child_read)
    if args.child_profile:
        return child_profile(args.child_profile, args.profile)
    from monitor.replay.columnar import write_segment
    from monitor.replay.periods import segment_of

    work = Path(tempfile.mkdtemp(prefix="bench-analyze-", dir=args.dir))
    try:
        print(f"bench_analyze: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
              f"load average {_load()}, files in {work}")
        ndjson = work / "events-20260101T000000Z-1.ndjson"
        began = time.perf_counter()
        size = generate(ndjson, args.events)
        print(f"generated {args.events:,} agent-format events: {size / 1e6:,.0f} MB ({size / args.events:.0f} B/event) "
              f"in {time.perf_counter() - began:.0f}s")
        began = time.perf_counter()
        write_segment(ndjson)
        segment = segment_of(ndjson)
        print(f"segment: {segment.stat().st_size / 1e6:,.1f} MB ({segment.stat().st_size / args.events:.1f} B/event), "
              f"written in {time.perf_counter() - began:.1f}s (load average {_load()})")
        print()
        print(f"{'run':>4}{'NDJSON ev/s':>14}{'peak MB':>9}{'columnar ev/s':>15}{'peak MB':>9}"
              f"{'x':>6}{'segment read ev/s':>19}{'alerts':>8}{'load':>6}")
        kinds = ("columnar", "read") if args.columnar_only else ("ndjson", "columnar", "read")
        runs: list[dict[str, dict]] = []
        for number in range(1, max(1, args.repeat) + 1):
            run = {kind: run_child(kind, segment if kind != "ndjson" else ndjson) for kind in kinds}
            runs.append(run)
            rate = {kind: r["events"] / r["seconds"] for kind, r in run.items()}
            ndjson_rate, ndjson_peak = rate.get("ndjson", float("nan")), run.get("ndjson", {}).get("peak_rss_mb", 0)
            print(f"{number:>4}{ndjson_rate:>14,.0f}{ndjson_peak:>9.0f}"
                  f"{rate['columnar']:>15,.0f}{run['columnar']['peak_rss_mb']:>9.0f}"
                  f"{rate['columnar'] / ndjson_rate:>6.1f}{rate['read']:>19,.0f}{run['columnar']['alerts']:>8}"
                  f"{max(r['load'] for r in run.values()):>6.1f}")
        print()
        for kind, label in (("ndjson", "NDJSON analyze"), ("columnar", "columnar analyze"), ("read", "segment read")):
            if kind not in kinds:
                continue
            rates = [r[kind]["events"] / r[kind]["seconds"] for r in runs]
            peaks = [r[kind]["peak_rss_mb"] for r in runs]
            print(f"{label:18} {min(rates):>12,.0f} - {max(rates):>10,.0f} events/s, peak RSS "
                  f"{min(peaks):.0f}-{max(peaks):.0f} MB")
        loads = [r[kind]["load"] for r in runs for kind in r]
        print(f"load average during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
        mismatch = _mismatch(runs, args.events, kinds)
        if args.columnar_only:
            print(f"alerts the same in every columnar run: {'no: ' + mismatch if mismatch else 'yes'} "
                  f"({runs[0]['columnar']['alerts']} alerts; not compared with NDJSON)")
        else:
            print(f"alerts identical NDJSON / columnar: {'no: ' + mismatch if mismatch else 'yes'} "
                  f"({runs[0]['ndjson']['alerts']} alerts, {runs[0]['ndjson']['events']:,} events each)")
        if args.profile:
            print()
            subprocess.run([sys.executable, __file__, "--child-profile", str(segment), "--profile", str(args.profile)],
                           check=True, timeout=1800)
        print()
        live = bench_live(200_000)
        print(f"live Detector.observe: {live['observe_per_s']:,.0f} events/s; tick every 0.5 s of event time: "
              f"{live['tick_ms']:.1f} ms per tick ({live['events_per_tick']:.0f} events per tick, "
              f"{live['ticks']} ticks) (load average {_load()})")
        return 1 if mismatch else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def _mismatch(runs: list[dict[str, dict]], events: int, kinds: tuple[str, ...]) -> str:
    """What differs between the NDJSON and the columnar runs, or between the runs (empty when nothing does)."""
    first = runs[0][kinds[0]]
    for run in runs:
        for kind in kinds:
            if kind == "read":
                continue
            if run[kind]["events"] != events:
                return f"{kind} read {run[kind]['events']:,} events of {events:,}"
            if (run[kind]["digest"], run[kind]["alerts"]) != (first["digest"], first["alerts"]):
                return f"{kind} raised {run[kind]['alerts']} alerts (digest {run[kind]['digest'][:12]}), " \
                       f"{kinds[0]} {first['alerts']} (digest {first['digest'][:12]})"
        if not run["columnar"]["files"][0].endswith(".parquet"):
            return f"the columnar run read {run['columnar']['files']}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
