"""Who a relay is, beyond its pid: the name `ip netns` gives its network
namespace (a bind mount under /run/netns), its cgroup path and the container
that path belongs to (docker, containerd, CRI-O, podman, systemd-nspawn).

The capture's process table reads these once per process (`Identities`
caches the namespace names and container names it looked up), so an event
costs nothing more. `sshd_ports` reads the ports the host's SSH server
listens on, for the safety rule that never blocks an operator's session.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace

from ..events import Container, ProcessInfo
from . import processes, tcp

NETNS_DIR = "/run/netns"
DOCKER_CONTAINERS = "/var/lib/docker/containers"
SSHD_CONFIG = "/etc/ssh/sshd_config"
SSH_DEFAULT_PORTS = (22,)
NAMES_MAX_AGE_S = 1.0     # /run/netns is read again for an unknown inode at most this often

_HEX64 = r"([0-9a-f]{64})"
# Only cgroups a local user cannot create: those under the root-owned slices the runtimes use (a path
# under /user.slice, a rootless podman's or one a user made up, is no container identity).
_ROOT_OWNED = r"^/(?:system\.slice|machine\.slice|kubepods[^/]*|libpod_parent)/(?:[^/]+/)*?"
# (runtime, pattern) in the order tried; the first group is the container id
_CGROUP_CONTAINERS = (
    ("podman", re.compile(_ROOT_OWNED + r"libpod-(?!conmon-)" + _HEX64 + r"(?:\.scope)?(?:/|$)")),
    ("docker", re.compile(_ROOT_OWNED + r"docker-" + _HEX64 + r"\.scope(?:/|$)")),
    ("docker", re.compile(r"^/docker/" + _HEX64 + r"(?:/|$)")),
    ("containerd", re.compile(_ROOT_OWNED + r"cri-containerd-" + _HEX64 + r"\.scope(?:/|$)")),
    ("cri-o", re.compile(_ROOT_OWNED + r"crio-" + _HEX64 + r"\.scope(?:/|$)")),
    ("containerd", re.compile(r"^/kubepods[^/]*/(?:[^/]+/)*?" + _HEX64 + r"(?:/|$)")),
)
_NSPAWN = re.compile(r"^/machine\.slice/machine-([^/]+)\.scope(?:/|$)")


def cgroup_path(pid: int | str, proc: str = processes.PROC) -> str | None:
    """PID's cgroup v2 path (`0::/...`), else its systemd v1 one; None when unreadable."""
    text = processes.read_text(f"{proc}/{pid}/cgroup")
    if text is None:
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        found.setdefault("v2" if hierarchy == "0" and not controllers else controllers, path)
    v2, systemd = found.get("v2"), found.get("name=systemd")
    return v2 if v2 is not None and (v2 != "/" or systemd is None) else systemd


def _unescape_unit(text: str) -> str:
    """systemd unit-name escaping undone (`\\x2d` -> `-`)."""
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def container_of(cgroup: str | None) -> Container | None:
    """The container a cgroup path belongs to (id and runtime; an nspawn machine's id is its name, None
    when it has characters that do not print)."""
    if not cgroup:
        return None
    for runtime, pattern in _CGROUP_CONTAINERS:
        match = pattern.match(cgroup)
        if match:
            return Container(id=match.group(1), runtime=runtime)
    match = _NSPAWN.match(cgroup)
    name = _unescape_unit(match.group(1)) if match else ""
    if name.isprintable() and name:
        return Container(id=name, name=name, runtime="systemd-nspawn")
    return None


def netns_names(directory: str = NETNS_DIR) -> dict[int, str]:
    """inode -> name of every network namespace `ip netns` knows (its bind mounts in `directory`)."""
    try:
        nsfs = os.stat("/proc/self/ns/net").st_dev
        entries = os.listdir(directory)
    except OSError:
        return {}
    out: dict[int, str] = {}
    for name in sorted(entries):
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            continue
        if st.st_dev == nsfs:   # a mounted namespace, not a file left behind
            out.setdefault(st.st_ino, name)
    return out


def docker_name(container_id: str, directory: str = DOCKER_CONTAINERS) -> str | None:
    """A docker container's name, from its config in docker's state directory (None if unreadable)."""
    text = processes.read_text(os.path.join(directory, container_id, "config.v2.json"))
    try:
        name = json.loads(text).get("Name") if text else None
    except ValueError:
        return None
    return name.lstrip("/") if isinstance(name, str) and name else None


class Identities:
    """Namespace names and container names, looked up once and cached."""

    def __init__(self, netns_dir: str = NETNS_DIR, docker_dir: str = DOCKER_CONTAINERS) -> None:
        self.netns_dir = netns_dir
        self.docker_dir = docker_dir
        self._names: dict[int, str] = {}
        self._names_at = float("-inf")
        self._containers: dict[str, Container] = {}

    def netns_name(self, inode: int | None) -> str | None:
        """The `ip netns` name of namespace `inode` (None: unnamed, the host's, or unknown)."""
        if inode is None:
            return None
        if inode not in self._names and time.monotonic() - self._names_at >= NAMES_MAX_AGE_S:
            self._names = netns_names(self.netns_dir)
            self._names_at = time.monotonic()
        return self._names.get(inode)

    def of(self, info: ProcessInfo, proc: str = processes.PROC) -> ProcessInfo:
        """`info` with who its process is, read now: namespaces, the network namespace's name, cgroup and
        container."""
        netns, cgroup = processes.netns_inode(info.pid, proc), cgroup_path(info.pid, proc)
        return replace(info, netns=netns, userns_owner=processes.userns_owner(info.pid, proc),
                       netns_name=self.netns_name(netns), cgroup=cgroup, container=self.container(cgroup))

    def container(self, cgroup: str | None) -> Container | None:
        """The container of a cgroup path, named where its runtime's state says the name."""
        found = container_of(cgroup)
        if found is None or found.name is not None:
            return found
        known = self._containers.get(found.id)
        if known is None:
            name = docker_name(found.id, self.docker_dir) if found.runtime == "docker" else None
            known = Container(found.id, name, found.runtime)
            if len(self._containers) > 4096:
                self._containers.clear()
            self._containers[found.id] = known
        return known


def _configured_ports(path: str) -> tuple[int, ...]:
    """The `Port` lines of an sshd_config (not its includes)."""
    text = processes.read_text(path)
    ports = []
    for line in (text or "").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) == 2 and words[0].lower() == "port" and words[1].isdigit():
            ports.append(int(words[1]))
    return tuple(sorted(set(ports)))


def _listening_ports(pid: int, proc: str) -> set[int]:
    """Ports of the TCP sockets PID listens on (its fds matched with its namespace's table)."""
    listening = {}
    for cols in tcp.listening(f"{proc}/{pid}/net"):
        if len(cols) > 9:
            listening[f"socket:[{cols[9]}]"] = tcp.hex_address(cols[1])[1]
    try:
        fds = os.listdir(f"{proc}/{pid}/fd")
    except OSError:
        return set()
    ports = set()
    for fd in fds:
        try:
            target = os.readlink(f"{proc}/{pid}/fd/{fd}")
        except OSError:
            continue
        if target in listening:
            ports.add(listening[target])
    return ports


def sshd_ports(proc: str = processes.PROC, config: str = SSHD_CONFIG) -> tuple[int, ...]:
    """The ports the host's SSH server listens on: from its listening sockets (processes named sshd),
    else its config's `Port` lines, else 22."""
    ports: set[int] = set()
    for pid in processes.pids_named(("sshd",), proc):
        ports |= _listening_ports(pid, proc)
    return tuple(sorted(ports)) or _configured_ports(config) or SSH_DEFAULT_PORTS
