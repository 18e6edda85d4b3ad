"""The agent's allocator settings, each in a fresh interpreter (an arena cap holds for the whole process):
threads share the capped arenas, and a trim gives freed pages back to the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Threads that each allocate blocks too large for Python's small-object allocator (as the agent's
# documents and buffers are), keep one in eight and report the allocator's arenas (malloc_info's
# <heap> elements) and the process's RSS before and after a trim.
PROBE = textwrap.dedent("""
    import ctypes, json, sys, tempfile, threading
    from monitor.agent import heap

    capped = heap.cap_arenas() if sys.argv[1] == "cap" else None
    kept, ready, release = [], threading.Barrier(9, timeout=30), threading.Event()

    def work():
        blocks = [bytes(3000) for _ in range(4000)]
        kept.append(blocks[::8])
        del blocks
        ready.wait()
        release.wait(30)

    def arenas():
        libc = ctypes.CDLL(None)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
        libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
        libc.fclose.argtypes = (ctypes.c_void_p,)
        with tempfile.NamedTemporaryFile() as out:
            fp = libc.fopen(out.name.encode(), b"w")
            libc.malloc_info(0, fp)
            libc.fclose(fp)
            return open(out.name).read().count("<heap nr=")

    def rss_kib():
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])

    for t in [threading.Thread(target=work, daemon=True) for _ in range(8)]:
        t.start()
    try:
        ready.wait()
        before = rss_kib()
        trimmed = heap.trim()
        print(json.dumps({"capped": capped, "arenas": arenas(), "before": before, "after": rss_kib(),
                          "trimmed": trimmed}))
    finally:
        release.set()
""")


def probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}   # glibc's defaults
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True,
                         env=env)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def default():
    return probe("default")


def test_threads_share_the_capped_arenas(default):
    capped = probe("cap")
    assert capped["capped"] is True
    assert capped["arenas"] <= 2
    assert default["arenas"] > 2, "without the cap the threads' allocations make arenas of their own"


def test_trim_returns_the_freed_pages(default):
    assert default["trimmed"] is True
    # 8 threads freed 7/8 of 4000 blocks of 3 KB each: about 80 MiB; most of it goes back
    assert default["before"] - default["after"] > 40 * 1024, default
