"""A BPF map the agent holds by fd, read and written with the bpf(2) syscall.

The programs are compiled and loaded by a short-lived child (`loader`), so
the agent itself never maps bcc and LLVM: it keeps only the fds. `KernelMap`
reads and writes their elements. Per-CPU maps hold one value per possible
CPU, each padded to 8 bytes, as the kernel lays them out.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..host.syscalls import bpf

MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_GET_INFO_BY_FD = 15
PERCPU_TYPES = frozenset({5, 6, 10})   # BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")


class _ElemAttr(ctypes.Structure):
    """`union bpf_attr` as the element commands read it."""
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def possible_cpus(text: str | None = None) -> int:
    """How many CPUs the kernel may run (the per-CPU value count): `0-1` -> 2, `0,2-3` -> 3."""
    text = POSSIBLE_CPUS.read_text() if text is None else text
    count = 0
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


@dataclass(frozen=True, slots=True)
class MapSpec:
    """One map's name and layout, as the kernel tells them (`struct bpf_map_info`)."""

    name: str
    map_type: int
    key_size: int
    value_size: int

    @classmethod
    def of(cls, fd: int) -> "MapSpec":
        info = ctypes.create_string_buffer(88)
        attr = _InfoAttr(fd, len(info), ctypes.addressof(info))
        bpf(OBJ_GET_INFO_BY_FD, attr, f"bpf map fd {fd}")
        map_type, _id, key_size, value_size = struct.unpack_from("<4I", info.raw, 0)
        return cls(info.raw[24:40].split(b"\0")[0].decode(), map_type, key_size, value_size)


class KernelMap:
    """One BPF map by fd: lookup, update, delete and its keys, on raw bytes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.spec = spec = MapSpec.of(fd)
        per_cpu = possible_cpus() if spec.map_type in PERCPU_TYPES else 0
        self._value_bytes = ((spec.value_size + 7) // 8 * 8) * per_cpu if per_cpu else spec.value_size

    def lookup(self, key: bytes) -> bytes | None:
        """The value at `key` (per CPU: every CPU's, 8-byte aligned), None if absent."""
        value = ctypes.create_string_buffer(self._value_bytes)
        if self._call(MAP_LOOKUP_ELEM, key, value, missing_ok=True) is None:
            return None
        return value.raw

    def update(self, key: bytes, value: bytes) -> None:
        self._call(MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)))

    def delete(self, key: bytes) -> None:
        """Remove `key`; an absent key is no error."""
        self._call(MAP_DELETE_ELEM, key, None, missing_ok=True)

    def keys(self) -> Iterator[bytes]:
        """Every key, in the kernel's order (a hash map changed meanwhile may repeat or skip some)."""
        key: bytes | None = None
        while True:
            following = ctypes.create_string_buffer(self.spec.key_size)
            if self._call(MAP_GET_NEXT_KEY, key, following, missing_ok=True) is None:
                return
            key = following.raw
            yield key

    def sum_u64(self, key: bytes) -> int:
        """A u64 counter's value: summed over the CPUs when the map is per-CPU."""
        raw = self.lookup(key) or b""
        return sum(int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8))

    def _call(self, command: int, key: bytes | None, value, missing_ok: bool = False) -> int | None:
        """One element command; `key` None is NULL (GET_NEXT_KEY: the first key), `value` None too."""
        key_buf = None if key is None else ctypes.create_string_buffer(key, self.spec.key_size)
        attr = _ElemAttr(self.fd, 0, 0 if key_buf is None else ctypes.addressof(key_buf),
                         0 if value is None else ctypes.addressof(value), 0)
        try:
            return bpf(command, attr, f"bpf map {self.spec.name}")
        except OSError as exc:
            if missing_ok and exc.errno == errno.ENOENT:   # no such key (GET_NEXT_KEY: no key after it)
                return None
            raise
