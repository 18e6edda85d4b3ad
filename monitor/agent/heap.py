"""The agent process's heap: the garbage collector and the C allocator.

`settle_heap` tunes the cyclic garbage collector once the agent has started.
`cap_arenas` and `trim` keep glibc's allocator from holding on to freed
memory over days: by default each thread that allocates gets an arena of its
own (up to 8 per CPU), and freed blocks stay in the arena that made them. The
agent's threads (capture, sinks, journal, netlink workers) allocate
documents and buffers larger than Python's small-object allocator takes, so
without a cap each keeps its own free memory; and free pages inside an arena
go back to the kernel only when someone asks (`malloc_trim`). Elsewhere than
glibc (musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import functools
import gc

# Records are short-lived and hold no reference cycles: reference counting frees them. The cyclic
# collector's default (a young collection every 700 allocations) cost 8-18 us per connection in
# scripts/bench_capture.py's path; every 20,000 it costs next to nothing.
GC_THRESHOLDS = (20_000, 20, 20)

M_ARENA_MAX = -8     # mallopt(3): the most arenas the allocator makes
ARENAS = 2           # the main thread's and one the other threads share
TRIM_INTERVAL_S = 60.0


def settle_heap() -> None:
    """After start: what start built (bcc, the programs, config, modules) is never collected again,
    so full collections walk only what the loops made; young collections are rarer (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library's allocator calls, from the process's own symbols; None where they are missing."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc


def cap_arenas(arenas: int = ARENAS) -> bool:
    """Make the allocator share `arenas` arenas between all threads; call before the threads start
    (an arena a thread already has stays, and once more than 8 exist glibc has fixed its limit for
    good). True when the allocator took it."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the free pages of every arena back to the kernel. True when some were."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
