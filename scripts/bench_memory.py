#!/usr/bin/env python3
"""Benchmark: where the agent's memory goes.

Four parts, each measured in fresh processes, on loopback only:

1. imports: a bare interpreter, then each heavy library alone (RSS, PSS and
   its anonymous and file-backed parts, from /proc/PID/smaps_rollup), and
   everything the agent imports (`monitor.agent`, with the heavy libraries
   that pulls in);
2. the capture programs: compiled in the process with bcc (import, compile,
   after `malloc_trim`), against the agent's way, a short-lived loader child
   (the agent's RSS after the load, and the child's peak);
3. the running agent, `--runs` times: `socat-monitor run` on an echo relay
   (socat on 127.0.0.1) with `--connections` connections, enforcing in a
   network namespace the bench makes and removes; its RSS/PSS once started
   and at the end, and the kernel memory of its BPF maps and programs
   (`memlock` in /proc/PID/fdinfo: charged to the kernel, not in RSS);
   `--egress` gives it a policy whose listener (the relay) has
   `allow_backends` and `action: block`, so the egress guard is loaded too;
4. the Python heap of the same agent, by tracemalloc (a separate run: the
   tracing itself costs memory), by top-level package.

Run as root: sudo .venv/bin/python scripts/bench_memory.py [--runs 3] [--egress] [--format json]
`--tree DIR` measures another checkout's `monitor` package (the tree before a change) with this venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TREE = ROOT          # whose `monitor` package is measured (--tree)
CLI = "from monitor.cli import main; main()"
HEAVY = ("numpy", "pyarrow", "pandas", "duckdb", "elasticsearch", "pyroute2", "nftables", "prometheus_client",
         "orjson", "yaml", "jsonschema", "bcc")
MIB = 1024 * 1024
HEAP_WAIT_S = 300    # tracing every allocation makes that run much slower

ROLLUP = """
def rollup(pid="self"):
    fields = {"Rss": "rss", "Pss": "pss", "Pss_Anon": "anon", "Pss_File": "file"}
    out = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        key, _, rest = line.partition(":")
        if key in fields:
            out[fields[key]] = int(rest.split()[0]) * 1024
    return out
"""

IMPORT = ROLLUP + """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
heavy = [m for m in HEAVY if m in sys.modules]
print(json.dumps({"memory": rollup(), "heavy": heavy}))
"""

COMPILE_IN_PROCESS = ROLLUP + """
import json
import monitor.agent
from monitor.agent import heap
steps = {"monitor.agent": rollup()}
import bcc
steps["+ import bcc"] = rollup()
from monitor.capture.bpf import SOURCE
b = bcc.BPF(text=SOURCE.read_text().encode(), cflags=["-DRINGBUF_PAGES=256", "-Wno-macro-redefined", "-DNO_BYTES"])
steps["+ compile and load capture.c"] = rollup()
heap.trim()
steps["+ malloc_trim(0)"] = rollup()
b.cleanup()
print(json.dumps(steps))
"""

COMPILE_IN_CHILD = ROLLUP + """
import json, resource
import monitor.agent
steps = {"monitor.agent": rollup()}
from monitor.capture.bpf import KernelProbe
probe = KernelProbe(("socat",), 256, byte_counts=False)
steps["+ load through the loader child"] = rollup()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
probe.close()
print(json.dumps({"steps": steps, "child_peak_rss": peak}))
"""

HEAP = """
import json, os, signal, sys, threading, time, tracemalloc
tracemalloc.start(10)
import monitor.agent, monitor.cli
after_imports = tracemalloc.get_traced_memory()[0]
out, at = sys.argv[1], float(sys.argv[2])

def owner(traceback):
    for frame in reversed(traceback):   # the most recent frame in the agent or a library
        parts = frame.filename.split("/")
        if "monitor" in parts:
            return "monitor"
        for marker in ("site-packages", "dist-packages"):
            if marker in parts and parts.index(marker) + 1 < len(parts):
                return parts[parts.index(marker) + 1].removesuffix(".py")
    return "python (stdlib)"

def snapshot():
    time.sleep(at)
    by_package = {}
    for stat in tracemalloc.take_snapshot().statistics("traceback"):
        key = owner(stat.traceback)
        by_package[key] = by_package.get(key, 0) + stat.size
    current, peak = tracemalloc.get_traced_memory()
    with open(out + ".part", "w") as f:
        json.dump({"after_imports": after_imports, "current": current, "peak": peak, "by_package": by_package}, f)
    os.rename(out + ".part", out)
    os.kill(os.getpid(), signal.SIGTERM)   # the agent stops cleanly

threading.Thread(target=snapshot, daemon=True).start()
sys.argv = ["socat-monitor"] + sys.argv[3:]
monitor.cli.main()
"""


def python(code: str, *args: str, timeout: float = 300) -> dict:
    done = subprocess.run([PYTHON, "-c", f"HEAVY = {HEAVY!r}\n{code}", *args], cwd=TREE, env=tree_env(),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"bench_memory: measuring step failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tree_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(TREE)}


def rollup(pid: int) -> dict:
    fields = {"Rss": "rss", "Pss": "pss", "Pss_Anon": "anon", "Pss_File": "file"}
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in fields:
                out[fields[key]] = int(rest.split()[0]) * 1024
    return out


def bpf_memlock(pid: int) -> dict:
    """Kernel memory of the BPF maps and programs `pid` holds (fdinfo memlock), by kind; a map or
    program held by several fds counts once."""
    out = {"maps": 0, "programs": 0, "map_count": 0}
    seen = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        object_id = fields.get("map_id", fields.get("prog_id", "")).strip(), "map_id" in fields
        if "memlock" not in fields or object_id in seen:
            continue
        seen.add(object_id)
        if "map_type" in fields:
            out["maps"] += int(fields["memlock"])
            out["map_count"] += 1
        elif "prog_type" in fields:
            out["programs"] += int(fields["memlock"])
    return out


def measure_imports() -> list[dict]:
    rows = [{"what": "interpreter", **python(IMPORT)}]
    for name in ("numpy", "pyarrow", "pandas", "duckdb", "elasticsearch", "pyroute2", "prometheus_client", "bcc"):
        rows.append({"what": f"import {name}", **python(IMPORT, name)})
    rows.append({"what": "import monitor.agent (what the agent imports)", **python(IMPORT, "monitor.agent")})
    return rows


class Echo(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_memory: {what} did not happen in {timeout:g} s")
        time.sleep(0.1)


def connect_once(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"ping")
            return s.recv(4) == b"ping"
    except OSError:
        return False


def drive(port: int, connections: int, seconds: float) -> int:
    """Up to `connections` sequential echo connections through the relay, within `seconds`."""
    done, deadline = 0, time.monotonic() + seconds
    while done < connections and time.monotonic() < deadline:
        done += connect_once(port)
    return done


EGRESS_POLICY = """version: 1
listeners:
  - name: bench-relay
    port: {port}
    address: 127.0.0.1
    allow_sources: [127.0.0.0/8]
    allow_backends: ["127.0.0.1:{backend}"]
    action: block
"""


class Lab:
    """An echo backend, a socat relay in front of it, and a network namespace to enforce in; with
    `egress`, a policy that has the agent guard the relay's backend connects."""

    def __init__(self, egress: bool) -> None:
        self.backend = Echo(("127.0.0.1", 0), EchoHandler)
        threading.Thread(target=self.backend.serve_forever, daemon=True).start()
        self.port = free_port()
        self.relay = subprocess.Popen(["socat", f"TCP-LISTEN:{self.port},fork,reuseaddr,bind=127.0.0.1",
                                       f"TCP:127.0.0.1:{self.backend.server_address[1]}"])
        self.netns = f"smmem-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.policy: Path | None = None
        if egress:
            self.policy = Path(tempfile.mkstemp(prefix="bench-memory-", suffix=".yaml")[1])
            self.policy.write_text(EGRESS_POLICY.format(port=self.port, backend=self.backend.server_address[1]))
        wait_for(lambda: connect_once(self.port), 10, "the relay listening")

    def close(self) -> None:
        self.relay.terminate()
        self.relay.wait(10)
        self.backend.shutdown()
        self.backend.server_close()
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        if self.policy is not None:
            self.policy.unlink()


def agent_args(tmp: Path, lab: Lab, seconds: float) -> list[str]:
    policy = ["--policy", str(lab.policy)] if lab.policy else []
    return ["run", "--output", str(tmp / "out"), "--state-dir", str(tmp / "state"),
            "--control-socket", str(tmp / "control.sock"), "--duration", str(seconds),
            "--netns", lab.netns, "--metrics", f"127.0.0.1:{free_port()}", *policy]


def measure_agent(lab: Lab, connections: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.monotonic()
        agent = subprocess.Popen([PYTHON, "-c", CLI, *agent_args(tmp, lab, seconds)], cwd=TREE, env=tree_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: (tmp / "control.sock").exists() or agent.poll() is not None, 120, "the agent's start")
            if agent.poll() is not None:
                raise SystemExit(f"bench_memory: the agent exited {agent.returncode}: {agent.stderr.read()[-2000:]}")
            start_s = time.monotonic() - started
            at_start = rollup(agent.pid)
            made = drive(lab.port, connections, max(seconds - start_s - 3, 1))
            time.sleep(1)
            at_end, kernel = rollup(agent.pid), bpf_memlock(agent.pid)
            peak = int(Path(f"/proc/{agent.pid}/status").read_text().split("VmHWM:")[1].split()[0]) * 1024
        finally:
            agent.terminate()
            agent.wait(30)
        return {"start_s": start_s, "at_start": at_start, "at_end": at_end, "peak_rss": peak, "kernel": kernel,
                "connections": made}


def measure_heap(lab: Lab, connections: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        out = tmp / "heap.json"
        with open(tmp / "stderr", "w+") as stderr:
            agent = subprocess.Popen([PYTHON, "-c", f"HEAVY = {HEAVY!r}\n{HEAP}", str(out), str(seconds),
                                      *agent_args(tmp, lab, seconds + HEAP_WAIT_S)], cwd=TREE, env=tree_env(),
                                     stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                wait_for(lambda: (tmp / "control.sock").exists() or agent.poll() is not None, 120, "the agent's start")
                drive(lab.port, connections, max(seconds - 12, 1))
                wait_for(lambda: out.exists() or agent.poll() is not None, seconds + HEAP_WAIT_S, "the heap snapshot")
            finally:
                agent.terminate()
                agent.wait(30)
            if not out.exists():
                stderr.seek(0)
                raise SystemExit(f"bench_memory: the traced agent exited {agent.returncode}: {stderr.read()[-2000:]}")
        return json.loads(out.read_text())


def mib(n: int) -> str:
    return f"{n / MIB:7.1f}"


def print_memory(label: str, m: dict, base: dict | None = None) -> None:
    delta = f"  ({(m['rss'] - base['rss']) / MIB:+.1f})" if base else ""
    print(f"  {label:<48} RSS {mib(m['rss'])}  PSS {mib(m['pss'])}  anon {mib(m['anon'])}  "
          f"file {mib(m['file'])}{delta}")


def report(result: dict) -> None:
    print(f"bench_memory {result['date']}  load average {result['load']}  tree {result['tree']}  (MiB)")
    print("1. imports, each in a fresh interpreter:")
    base = result["imports"][0]["memory"]
    for row in result["imports"]:
        print_memory(row["what"], row["memory"], None if row is result["imports"][0] else base)
    print(f"  the agent imports: {', '.join(result['imports'][-1]['heavy'])}")
    print("2. compiling the capture programs:")
    print("  in the process (bcc):")
    steps = list(result["in_process"].items())
    for (label, m), (_, prev) in zip(steps, [steps[0]] + steps[:-1]):
        print_memory("  " + label, m, None if label == steps[0][0] else prev)
    print("  by the agent's KernelProbe (in a loader child):")
    child = result["in_child"]
    steps = list(child["steps"].items())
    for (label, m), (_, prev) in zip(steps, [steps[0]] + steps[:-1]):
        print_memory("  " + label, m, None if label == steps[0][0] else prev)
    print(f"    the loader child's peak RSS {mib(child['child_peak_rss'])} (gone once loaded)")
    guard = ", egress guard on" if result["egress"] else ""
    print(f"3. the running agent (enforcing in a namespace, metrics on{guard}):")
    for i, run in enumerate(result["agent"], 1):
        print(f"  run {i}: started in {run['start_s']:.1f} s, {run['connections']} connections, "
              f"peak RSS {mib(run['peak_rss'])}")
        print_memory("  started", run["at_start"])
        print_memory("  at the end", run["at_end"])
        k = run["kernel"]
        print(f"    BPF in the kernel (not in RSS): {k['map_count']} maps {mib(k['maps'])}, "
              f"programs {mib(k['programs'])}")
    rss = [run["at_end"]["rss"] for run in result["agent"]]
    print(f"  RSS at the end over {len(rss)} runs: {min(rss) / MIB:.1f}-{max(rss) / MIB:.1f} MiB")
    heap = result["heap"]
    print(f"4. Python heap of the running agent (tracemalloc): {mib(heap['after_imports'])} after its imports, "
          f"{mib(heap['current'])} running, {mib(heap['peak'])} peak; by who allocated it:")
    for name, size in sorted(heap["by_package"].items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {name:<48} {mib(size)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="agent runs (default 3)")
    ap.add_argument("--connections", type=int, default=2000, help="connections per agent run (default 2000)")
    ap.add_argument("--seconds", type=float, default=40.0, help="each agent run's duration (default 40)")
    ap.add_argument("--egress", action="store_true",
                    help="the agent runs with a policy that loads the egress guard (allow_backends, action: block)")
    ap.add_argument("--format", choices=["text", "json"], default="text")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose monitor package to measure")
    args = ap.parse_args()
    global TREE
    TREE = args.tree.resolve()
    if not (TREE / "monitor" / "agent").is_dir():
        raise SystemExit(f"bench_memory: --tree {TREE} has no monitor/agent package")
    if not 1 <= args.runs <= 10 or not 1 <= args.connections <= 100_000 or not 20 <= args.seconds <= 600:
        raise SystemExit("bench_memory: --runs 1..10, --connections 1..100000, --seconds 20..600")
    if os.geteuid() != 0 or not shutil.which("socat"):
        raise SystemExit("bench_memory: run as root, with socat installed")
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tree": str(TREE), "egress": args.egress,
              "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
              "imports": measure_imports(), "in_process": python(COMPILE_IN_PROCESS),
              "in_child": python(COMPILE_IN_CHILD)}
    lab = Lab(args.egress)
    try:
        result["agent"] = [measure_agent(lab, args.connections, args.seconds) for _ in range(args.runs)]
        result["heap"] = measure_heap(lab, args.connections, args.seconds)
    finally:
        lab.close()
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
