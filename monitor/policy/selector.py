"""Which relays a policy listener entry means: `Selector`, its identity keys.

A listener entry may name the relay's network namespace (`netns`: its `ip
netns` name, or `net:[INODE]`), its container (name, or an id prefix of 12
or more hex digits), a cgroup path prefix and the user that started it.
Every key named must match. An entry naming none means the relays of the
namespaces the agent enforces in (`home`, inodes), so a relay elsewhere on
the same port is never judged, nor blocked, by it. A relay whose identity
is unknown (offline records without it, a process gone before it was read)
and an engine without a home (offline `analyze`) match as before: by port.
"""

from __future__ import annotations

import pwd
import re
from collections.abc import Collection
from dataclasses import dataclass

from ..events import ProcessInfo

_INODE = re.compile(r"^net:\[([0-9]+)\]$")
MIN_ID_PREFIX = 12
SELECTOR_KEYS = ("netns", "container", "cgroup", "user")


def parse_user(value: str | int) -> tuple[str, int]:
    """(text, uid) of a `user` value: a uid, or a user name this host knows; ValueError otherwise."""
    if isinstance(value, int) or str(value).isdigit():
        uid = int(value)
        if not 0 <= uid < 2**32:
            raise ValueError(f"uid {uid} is out of range")
        return str(uid), uid
    try:
        return value, pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValueError(f"no user {value!r} on this host (give a user name it knows, or a uid)") from None


def netns_inode_of(text: str) -> int | None:
    """The inode a `netns: net:[INODE]` names (None for a name)."""
    match = _INODE.match(text)
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class Selector:
    """The identity keys of one listener entry (None: not named)."""

    netns: str | None = None
    container: str | None = None
    cgroup: str | None = None
    user: str | None = None
    uid: int | None = None

    @property
    def named(self) -> int:
        """How many keys are named (an entry naming more is preferred on a shared port)."""
        return sum(value is not None for value in (self.netns, self.container, self.cgroup, self.uid))

    def matches(self, process: ProcessInfo | None, home: Collection[int] | None) -> bool:
        """Whether the relay `process` is one this entry means (see the module docstring)."""
        if process is None:
            return True
        if not self.named:
            return home is None or process.netns is None or process.netns in home
        return (self._netns(process) and self._container(process) and self._cgroup(process)
                and self._user(process))

    def _netns(self, process: ProcessInfo) -> bool:
        if self.netns is None:
            return True
        inode = netns_inode_of(self.netns)
        return process.netns == inode if inode is not None else process.netns_name == self.netns

    def _container(self, process: ProcessInfo) -> bool:
        if self.container is None:
            return True
        found = process.container
        if found is None:
            return False
        by_id = len(self.container) >= MIN_ID_PREFIX and found.id.startswith(self.container)
        return by_id or self.container in (found.name, found.id)

    def _cgroup(self, process: ProcessInfo) -> bool:
        if self.cgroup is None:
            return True
        prefix, path = self.cgroup.rstrip("/"), process.cgroup
        return path is not None and (prefix == "" or path == prefix or path.startswith(prefix + "/"))

    def _user(self, process: ProcessInfo) -> bool:
        if self.uid is None:
            return True
        started = process.started_uid if process.started_uid is not None else process.uid
        return started == self.uid
