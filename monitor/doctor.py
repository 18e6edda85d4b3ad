"""Can this host run the agent? Checks, each with the exact fix.

`run_checks(env)` inspects the kernel (tracepoints, BTF), mounts, kernel
headers for bcc, privileges, and the socat and nft binaries; then it proves
what `run` will do: every Python module the agent imports really imports
(`monitor.dependencies`), the capture programs compile and load (then are
unloaded), an nftables table is created and deleted through the agent's own
code in a throwaway network namespace (the host's ruleset is never touched),
and the configured Elasticsearch answers. Each `Check` is `ok`, `warn` (the
agent runs, something is degraded or will be fixed at start) or `fail` (the
agent cannot run), and carries the command that fixes it. `DoctorEnv` holds
every path and the PATH searched, so tests can point a check at a missing
piece. OK means `socat-monitor run` starts.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass, field

from .dependencies import DEPENDENCIES
from .errors import MonitorError
from .host.mounts import CGROUP2, DEBUGFS, MOUNTS_TABLE, TRACING, cgroup2_root, mounted
from .host.processes import Status, parse_status

OK, WARN, FAIL = "ok", "warn", "fail"

TRACEPOINTS = (
    "syscalls/sys_enter_accept", "syscalls/sys_exit_accept", "syscalls/sys_enter_accept4",
    "syscalls/sys_exit_accept4", "syscalls/sys_enter_connect", "syscalls/sys_exit_connect",
    "syscalls/sys_enter_bind", "syscalls/sys_enter_execve", "syscalls/sys_exit_execve",
    "syscalls/sys_enter_exit_group", "sock/inet_sock_set_state", "sched/sched_process_fork",
    "sched/sched_process_exit", "signal/signal_deliver",
)
# measured in scripts/CAPABILITIES.md: the agent cannot start without these
CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_PERFMON": 38, "CAP_BPF": 39}
# without these, socat relays run by other users cannot have their sockets read
INSPECT_CAPABILITIES = {"CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19}
CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class DoctorEnv:
    """Where the checks look; defaults are this host."""

    tracing: str = TRACING
    debugfs: str = DEBUGFS
    bpffs: str = "/sys/fs/bpf"
    btf: str = "/sys/kernel/btf/vmlinux"
    modules: str = f"/lib/modules/{os.uname().release}"
    mounts: str = MOUNTS_TABLE
    status: str = "/proc/self/status"
    filesystems: str = "/proc/filesystems"
    path: str | None = None   # PATH for socat/nft; None = the current PATH


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def check_mounts(env: DoctorEnv) -> list[Check]:
    mounts = mounted(env.mounts)
    out = []
    for path, fstype, why in (
        (env.tracing, "tracefs", "tracepoints attach through it; the agent mounts it at start if it can"),
        (env.debugfs, "debugfs", "bcc looks for tracepoints there; the agent mounts it at start if it can"),
        (env.bpffs, "bpf", "needed to pin maps (optional)"),
    ):
        if mounts.get(path) == fstype:
            out.append(Check(f"mount {fstype}", OK, f"{fstype} at {path}"))
        else:
            out.append(Check(f"mount {fstype}", WARN, f"{fstype} is not mounted at {path}: {why}",
                             f"mount -t {fstype} none {path}"))
    root = cgroup2_root(env.mounts)
    out.append(Check("mount cgroup2", OK, f"cgroup2 at {root} (the egress guard attaches there)") if root else Check(
        "mount cgroup2", WARN, "no cgroup2 mount (needed only for in-kernel connect filtering)",
        f"mkdir -p {CGROUP2} && mount -t cgroup2 none {CGROUP2}"))
    return out


def _status(env: DoctorEnv) -> Status:
    """The agent's own /proc status (as `env` points at it); an empty one when unreadable."""
    try:
        with open(env.status, encoding="ascii") as fh:
            return parse_status(fh.read())
    except (OSError, ValueError):
        return Status(name="", ppid=None, uid=None, cap_eff=0)


def _kernel_has(fstype: str, env: DoctorEnv) -> bool:
    try:
        with open(env.filesystems, encoding="ascii") as fh:
            return any(line.split()[-1] == fstype for line in fh if line.strip())
    except OSError:
        return True   # cannot tell: assume the usual


def check_tracepoints(env: DoctorEnv) -> Check:
    roots = [os.path.join(env.tracing, "events"), os.path.join(env.debugfs, "tracing", "events")]
    root = next((r for r in roots if os.path.isdir(r)), None)
    fix = f"mount -t tracefs none {env.tracing}"
    if root is None:
        if not _kernel_has("tracefs", env):
            return Check("tracepoints", FAIL, "this kernel has no tracefs: tracepoints cannot be attached",
                         "use a kernel built with CONFIG_TRACEPOINTS=y and CONFIG_FTRACE_SYSCALLS=y")
        if not _status(env).cap_eff >> CAP_SYS_ADMIN & 1:
            return Check("tracepoints", FAIL, f"tracefs is not mounted at {env.tracing} and without CAP_SYS_ADMIN "
                         "the agent cannot mount it at start", f"{fix} (as root, before starting the agent)")
        return Check("tracepoints", WARN, f"not verified: tracefs is not mounted at {env.tracing} "
                     "(the agent mounts it at start; normal under `ip netns exec`)", fix)
    missing = [tp for tp in TRACEPOINTS if not os.path.isdir(os.path.join(root, tp))]
    if missing:
        return Check("tracepoints", FAIL, f"kernel lacks tracepoints: {', '.join(missing)}",
                     "use a kernel built with CONFIG_FTRACE_SYSCALLS=y and CONFIG_TRACEPOINTS=y (Linux >= 4.16)")
    return Check("tracepoints", OK, f"all {len(TRACEPOINTS)} tracepoints present (kprobes not required)")


def check_btf(env: DoctorEnv) -> Check:
    if os.path.exists(env.btf):
        return Check("btf", OK, f"{env.btf} present")
    return Check("btf", WARN, f"{env.btf} missing: not needed by the tracepoint capture",
                 "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def check_headers(env: DoctorEnv) -> Check:
    build = os.path.join(env.modules, "build")
    if os.path.isdir(os.path.join(build, "include")):
        return Check("kernel headers", OK, f"{build} -> {os.path.realpath(build)}")
    return Check("kernel headers", FAIL, f"no kernel headers at {build}: bcc compiles the capture program against them",
                 "apt-get install -y linux-headers-amd64 && ln -sfn /usr/src/linux-headers-<version>-amd64 "
                 f"{build} (scripts/setup.sh does it)")


def check_modules() -> list[Check]:
    """Import every module the agent imports: each missing or broken one is named with its package."""
    failed = []
    for dep in DEPENDENCIES:
        try:
            importlib.import_module(dep.module)
        except Exception as exc:   # ImportError, or a broken install failing at import
            failed.append(Check(f"module {dep.module}", FAIL, f"cannot import {dep.module}: {exc}", dep.fix))
    if failed:
        return failed
    return [Check("python modules", OK, f"all {len(DEPENDENCIES)} import: "
                  + ", ".join(dep.module for dep in DEPENDENCIES))]


def check_capture_programs() -> Check:
    """Compile and load the capture programs as `run` does, then unload them."""
    bpf = importlib.import_module("monitor.capture.bpf")   # only once its modules are known to import
    try:
        probe = bpf.KernelProbe(comms=("socat",), ringbuf_pages=64)
    except MonitorError as exc:
        return Check("capture programs", FAIL, f"cannot load {bpf.SOURCE.name}: {exc.message}",
                     getattr(exc, "fix", None) or "see the FAIL lines above")
    probe.close()
    return Check("capture programs", OK, f"{bpf.SOURCE.name} compiled, loaded and unloaded")


def check_nftables() -> Check:
    """Create and delete a table through the agent's own nftables code, in a throwaway namespace."""
    nft = importlib.import_module("monitor.enforce.nft")
    ns = f"socat-monitor-doctor-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return Check("nftables", FAIL, f"cannot make a throwaway network namespace: {made.stderr.strip()}",
                     "run as root with iproute2 installed (apt-get install -y iproute2)")
    try:
        table = nft.NftTable("socat_monitor_doctor", ns)
        try:
            table.create(scope="host", ports=())
            created = table.ownership().ours
        finally:
            table.close()
    except MonitorError as exc:
        return Check("nftables", FAIL, f"cannot create an nftables table: {exc}",
                     "apt-get install -y nftables python3-nftables (scripts/setup.sh); the agent needs CAP_NET_ADMIN")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    if not created:
        return Check("nftables", FAIL, "a table was created but is not listed as ours", "check `nft list tables` by hand")
    return Check("nftables", OK, "a table was created and deleted in a throwaway network namespace")


def check_elasticsearch(es_config) -> Check:
    """The configured Elasticsearch answers with the configured credentials."""
    es_client = importlib.import_module("monitor.sinks.es_client")
    client = es_client.EsClient(list(es_config.urls), username=es_config.username, password=es_config.password,
                                api_key=es_config.api_key, ca_file=es_config.ca_file,
                                verify_certs=es_config.verify_certs, timeout_s=5.0)
    try:
        server = client.server()
    except es_client.Unavailable as exc:
        return Check("elasticsearch", WARN, f"{', '.join(es_config.urls)}: {exc} (the agent starts and spools "
                     "events to disk until it answers)", "start the server, or fix elasticsearch.* in the config")
    finally:
        client.close()
    version = ".".join(map(str, server.version))
    return Check("elasticsearch", OK, f"{', '.join(es_config.urls)} answers: Elasticsearch {version} ({server.flavor})")


def check_privileges(env: DoctorEnv) -> Check:
    own = _status(env)
    capeff, uid = own.cap_eff, own.uid
    if uid != 0:
        return Check("privileges", FAIL, f"running as uid {uid}: capture needs root", "run as root: sudo socat-monitor run")
    missing = [name for name, bit in CAPABILITIES.items() if not capeff >> bit & 1]
    if missing:
        return Check("privileges", FAIL, f"uid 0 without {', '.join(missing)}: the agent cannot start",
                     f"give the agent {' '.join(CAPABILITIES)} (CapabilityBoundingSet= in scripts/socat-monitor.service)")
    blind = [name for name, bit in INSPECT_CAPABILITIES.items() if not capeff >> bit & 1]
    if blind:
        return Check("privileges", WARN, f"uid 0 without {', '.join(blind)}: socat relays run by other users cannot "
                     "have their sockets read (reported at start; their listeners are inferred from socket owners)",
                     f"give the agent {' '.join(INSPECT_CAPABILITIES)} too (scripts/socat-monitor.service)")
    return Check("privileges", OK, f"uid 0 with {', '.join([*CAPABILITIES, *INSPECT_CAPABILITIES])}")


def check_binary(name: str, env: DoctorEnv, required: bool, version_args: list[str], fix: str, why: str) -> Check:
    path = shutil.which(name, path=env.path)
    if path is None:
        return Check(name, FAIL if required else WARN, f"{name} not found in PATH: {why}", fix)
    try:
        out = subprocess.run([path, *version_args], capture_output=True, text=True, timeout=5, check=False)
        text = (out.stdout + out.stderr).strip().splitlines()
        version = next((line.strip() for line in text if "version" in line.lower()), text[0] if text else "")
    except (OSError, subprocess.TimeoutExpired) as exc:
        version = f"cannot run: {exc}"
    return Check(name, OK, f"{path}: {version}")


def run_checks(env: DoctorEnv | None = None, es_config=None) -> Report:
    """Every check; the ones that load programs or make tables run only once what they need passed."""
    env = env or DoctorEnv()
    report = Report()
    report.checks.append(check_privileges(env))
    report.checks.append(check_tracepoints(env))
    report.checks.append(check_btf(env))
    report.checks.extend(check_mounts(env))
    report.checks.append(check_headers(env))
    report.checks.extend(check_modules())
    report.checks.append(check_binary("socat", env, True, ["-V"], "apt-get install -y socat",
                                      "the agent monitors socat relays and audits their command lines"))
    report.checks.append(check_binary("nft", env, False, ["--version"], "apt-get install -y nftables",
                                      "needed to inspect blocks by hand (the agent itself talks netlink)"))
    if report.ok:
        report.checks.append(check_capture_programs())
        report.checks.append(check_nftables())
    if es_config is not None and report.ok:
        report.checks.append(check_elasticsearch(es_config))
    return report


def render_text(report: Report) -> str:
    lines = []
    for c in report.checks:
        lines.append(f"{c.status.upper():4} {c.name}: {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"     fix: {c.fix}")
    lines.append("the agent can run on this host" if report.ok else "the agent cannot run on this host: fix the FAIL lines")
    return "\n".join(lines)
