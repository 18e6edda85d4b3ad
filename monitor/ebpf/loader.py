"""Compiling and loading BPF C with bcc in a short-lived child process.

bcc compiles with the clang and LLVM libraries linked into libbcc: importing
it maps about 60 MiB and a compile leaves about 60 MiB more in the process
for good. So the agent starts a Python child for each BPF object
(`child_main`): the child compiles and loads the programs, attaches its
tracepoints, loads the programs the caller attaches itself (the egress
guard's cgroup programs: `Program`), hands every BPF fd it holds (maps,
programs, tracepoint perf events, links) back over a Unix socket and exits
without detaching. The kernel objects live as long as the agent holds those
fds (`LoadedObject`), and the agent never maps bcc. Used by the capture
(`bpf/capture.c`) and the egress guard (`bpf/egress.c`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..children import python_child
from ..dependencies import fix_for
from ..errors import EnvironmentProblem
from ..host.syscalls import sys_bpf
from .maps import KernelMap

LOAD_TIMEOUT_S = 120.0
MAX_FDS = 250                     # one message carries at most SCM_MAX_FD (253)
MAP, PROGRAM = "anon_inode:bpf-map", "anon_inode:bpf-prog"
ATTACHMENT = ("anon_inode:[perf_event]", "anon_inode:bpf_link")
CHILD = "import sys; from monitor.ebpf.loader import child_main; child_main(sys.argv[1:])"
RECOMPILE_FIX = "run `socat-monitor doctor` to see which kernel feature or mount is missing"


@dataclass(frozen=True, slots=True)
class Program:
    """A program of the source the child loads but does not attach: the caller attaches its fd."""

    name: str
    prog_type: int
    attach_type: int


@dataclass
class LoadedObject:
    """The fds of one loaded BPF object: its maps by name, the programs asked for by name, and what
    keeps its other programs attached."""

    maps: dict[str, KernelMap] = field(default_factory=dict)
    programs: dict[str, int] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)   # attachments first, then programs, then maps' second fds

    def close(self) -> None:
        for fd in self.held + list(self.programs.values()) + [m.fd for m in self.maps.values()]:
            os.close(fd)
        self.held.clear()
        self.programs.clear()
        self.maps.clear()


def load(where: str, source: Path, cflags: list[str], flags: dict[str, list[str]],
         programs: Sequence[Program] = ()) -> LoadedObject:
    """Compile, load and attach `source` in a child; its fds. Failures are `EnvironmentProblem`s.

    `flags`: hash maps whose keys (zero-padded strings) the child sets to 1 the moment the programs
    are attached, as the in-process load did (the comm filter: no event of a watched process is lost
    while the fds travel). `programs`: loaded, not attached, and returned by name in `programs`."""
    _can_compile(where)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    request = json.dumps({"source": str(source.absolute()), "cflags": cflags, "flags": flags,
                          "programs": [[p.name, p.prog_type, p.attach_type] for p in programs]})
    with parent:
        try:
            proc = python_child(["-c", CHILD, str(child.fileno()), request],
                                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            child.close()
        parent.settimeout(LOAD_TIMEOUT_S)
        try:
            message, fds = _receive(where, source, parent)
        except EnvironmentProblem:
            proc.kill()
            proc.wait()
            raise
        code = proc.wait()
    if not message:
        _close(fds)
        raise EnvironmentProblem(where, f"loading {source.name} failed: the loader exited with code {code} "
                                        "and no answer (its errors are above)", RECOMPILE_FIX)
    answer = json.loads(message)
    if "error" in answer:
        _close(fds)
        raise EnvironmentProblem(where, answer["error"], answer["fix"])
    return _adopt(where, fds, [p.name for p in programs])


def _can_compile(where: str) -> None:
    """What bcc needs in the child, checked before starting it: bpf(2) on this machine, the kernel
    headers and the bcc module."""
    sys_bpf()
    release = os.uname().release
    if not Path(f"/lib/modules/{release}/build").exists():
        raise EnvironmentProblem(where, f"no kernel headers at /lib/modules/{release}/build (bcc compiles against "
                                        "them)", "apt-get install -y linux-headers-amd64 and link them: "
                                                 "scripts/setup.sh does it")
    if importlib.util.find_spec("bcc") is None:
        raise EnvironmentProblem(where, "the bcc Python module is not importable", fix_for("bcc"))


def _receive(where: str, source: Path, sock: socket.socket) -> tuple[bytes, list[int]]:
    """The loader's answer and the fds it sent; EnvironmentProblem if none came or the fds were cut off."""
    try:
        message, fds, flags, _addr = socket.recv_fds(sock, 1 << 16, MAX_FDS)
    except OSError as exc:
        raise EnvironmentProblem(where, f"loading {source.name} failed: no answer from the loader "
                                        f"({exc.strerror or exc})", RECOMPILE_FIX) from None
    if flags & socket.MSG_CTRUNC:
        _close(fds)
        raise EnvironmentProblem(where, f"loading {source.name} failed: the loader's answer carried more than "
                                        f"{MAX_FDS} BPF fds and was cut off", "report this as a bug")
    return message, fds


def _adopt(where: str, fds: list[int], programs: Sequence[str] = ()) -> LoadedObject:
    """The received fds as a LoadedObject, the first ones the `programs` asked for by name; if one
    cannot be adopted, every fd is closed."""
    loaded = LoadedObject()
    try:
        kinds = {fd: _kind(fd) for fd in fds}
        for fd, kind in kinds.items():
            if kind == MAP:
                bpf_map = KernelMap(fd)
                if bpf_map.spec.name in loaded.maps:   # bcc holds some maps twice (a ring buffer's)
                    loaded.held.append(fd)
                else:
                    loaded.maps[bpf_map.spec.name] = bpf_map
    except BaseException as exc:
        _close(fds)
        if isinstance(exc, OSError):
            raise EnvironmentProblem(where, f"cannot use the loaded BPF objects: {exc}", RECOMPILE_FIX) from None
        raise
    if [kinds[fd] for fd in fds[:len(programs)]] != [PROGRAM] * len(programs):
        _close(fds)
        raise EnvironmentProblem(where, f"the loader's answer lacks the programs {', '.join(programs)}",
                                 "report this as a bug")
    loaded.programs = dict(zip(programs, fds))
    rest = fds[len(programs):]
    loaded.held = [fd for fd in rest if kinds[fd] in ATTACHMENT] \
        + [fd for fd in rest if kinds[fd] not in ATTACHMENT and kinds[fd] != MAP] + loaded.held
    return loaded


def _kind(fd: int) -> str:
    """What the fd is (`anon_inode:bpf-map`...), as /proc names it."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            continue


def _bpf_fds() -> list[int]:
    """Every fd of this process that is a BPF map, program, link or perf event."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            kind = _kind(int(name))
        except OSError:
            continue
        if kind == MAP or kind == PROGRAM or kind in ATTACHMENT:
            out.append(int(name))
    return out


def _refuse(answer: socket.socket, error: str, fix: str | None) -> None:
    answer.send(json.dumps({"error": error, "fix": fix}).encode())


def _child(answer: socket.socket, request: dict) -> None:
    """Compile and load as asked; answer with the fds, or with the error and its fix."""
    source = Path(request["source"])
    try:
        import bcc  # noqa: PLC0415 (the point of this process: the agent itself never imports bcc)
    except ImportError as exc:
        return _refuse(answer, f"the bcc Python module is not importable ({exc})", fix_for("bcc"))
    try:
        text = source.read_text()
    except OSError as exc:
        return _refuse(answer, f"cannot read the BPF program {source}: {exc.strerror}", "reinstall socat-monitor")
    try:
        bpf = bcc.BPF(text=text.encode(), cflags=request["cflags"])
        named = [bpf.load_func(name.encode(), prog_type, attach_type=attach_type).fd
                 for name, prog_type, attach_type in request["programs"]]
    except Exception as exc:  # bcc raises bare Exception on compile/load/attach failures
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _refuse(answer, f"loading {source.name} failed: {first}", RECOMPILE_FIX)
    for name, keys in request["flags"].items():
        bpf_map = KernelMap(bpf[name.encode()].get_fd())
        for key in keys:
            bpf_map.update(key.encode()[:bpf_map.spec.key_size - 1], b"\x01")   # NUL-terminated
    socket.send_fds(answer, [b'{"ok": true}'], named + [fd for fd in _bpf_fds() if fd not in named])


def child_main(argv: list[str]) -> None:
    """The child's entry: `argv` is the answer socket's fd and the JSON request."""
    with socket.socket(fileno=int(argv[0])) as sock:
        _child(sock, json.loads(argv[1]))
    sys.stderr.flush()
    os._exit(0)   # not bcc's atexit cleanup: it would detach the programs the agent now holds
