"""Compiling and loading BPF C with bcc in a short-lived child process.

bcc compiles with the clang and LLVM libraries linked into libbcc: importing
it maps about 60 MiB and a compile leaves about 60 MiB more in the process
for good. So the agent starts a Python child once (`child_main`): the
child compiles and loads the programs, attaches them, hands every BPF fd it
holds (maps, programs, tracepoint perf events, links) back over a
Unix socket and exits without detaching. The kernel objects live as long as
the agent holds those fds (`LoadedObject`), and the agent never maps bcc.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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
CHILD = "import sys; from monitor.capture.loader import child_main; child_main(sys.argv[1:])"
RECOMPILE_FIX = "run `socat-monitor doctor` to see which kernel feature or mount is missing"


@dataclass
class LoadedObject:
    """The fds of one loaded BPF object: its maps by name, what keeps its programs attached."""

    maps: dict[str, KernelMap] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)   # attachments first, then programs

    def close(self) -> None:
        for fd in self.held + [m.fd for m in self.maps.values()]:
            os.close(fd)
        self.held.clear()
        self.maps.clear()


def load(where: str, source: Path, cflags: list[str], flags: dict[str, list[str]]) -> LoadedObject:
    """Compile, load and attach `source` in a child; its fds. Failures are `EnvironmentProblem`s.

    `flags`: hash maps whose keys (zero-padded strings) the child sets to 1 the moment the programs
    are attached, as the in-process load did (the comm filter: no event of a watched process is lost
    while the fds travel)."""
    sys_bpf()                     # a machine the agent cannot call bpf(2) on is refused before compiling
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    request = json.dumps({"source": str(source.absolute()), "cflags": cflags, "flags": flags})
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
    return _adopt(where, fds)


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


def _adopt(where: str, fds: list[int]) -> LoadedObject:
    """The received fds as a LoadedObject; if one cannot be adopted, every fd is closed."""
    loaded = LoadedObject()
    try:
        kinds = {fd: _kind(fd) for fd in fds}
        for fd, kind in kinds.items():
            if kind == MAP:
                bpf_map = KernelMap(fd)
                loaded.maps[bpf_map.spec.name] = bpf_map
    except BaseException as exc:
        _close(fds)
        if isinstance(exc, OSError):
            raise EnvironmentProblem(where, f"cannot use the loaded BPF objects: {exc}", RECOMPILE_FIX) from None
        raise
    loaded.held = [fd for fd, kind in kinds.items() if kind in ATTACHMENT] \
        + [fd for fd, kind in kinds.items() if kind not in ATTACHMENT and kind != MAP]
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
    except Exception as exc:  # bcc raises bare Exception on compile/attach failures
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _refuse(answer, f"loading {source.name} failed: {first}", RECOMPILE_FIX)
    for name, keys in request["flags"].items():
        bpf_map = KernelMap(bpf[name.encode()].get_fd())
        for key in keys:
            bpf_map.update(key.encode()[:bpf_map.spec.key_size - 1], b"\x01")   # NUL-terminated
    socket.send_fds(answer, [b'{"ok": true}'], _bpf_fds())


def child_main(argv: list[str]) -> None:
    """The child's entry: `argv` is the answer socket's fd and the JSON request."""
    with socket.socket(fileno=int(argv[0])) as sock:
        _child(sock, json.loads(argv[1]))
    sys.stderr.flush()
    os._exit(0)   # not bcc's atexit cleanup: it would detach the programs the agent now holds
