"""Reading a BPF ring buffer map straight from its memory mapping.

The kernel's BPF ring buffer is shared memory: a consumer-position page we
may write, a producer-position page and the data area (mapped twice in a
row, so a record that wraps is contiguous) that we may only read. Each
record has an 8-byte header (length with BUSY/DISCARD bits, page offset)
and is 8-byte aligned. Draining it here costs a slice per record instead of
a C-to-Python callback per record (what bcc's `ring_buffer_poll` does).

Loads are ordered on x86-64 (the only target: Debian amd64 kernels); the
kernel publishes a record by clearing BUSY after writing it. The two
positions are read and written as whole aligned words (a memoryview cast to
native integers: one load or store each), never with `struct`, which packs
byte by byte after zeroing its target: a producer that read the consumer
position in the middle of such a store saw 0 and took the ring for full, and
a producer position read in the middle of an update could point past the
published records.

Under load, wakeups are batched: a wakeup that comes less than `batch_ns`
after the previous one waits out the rest of that interval before the
drain, so a busy relay's records come several connections at a time,
not one wakeup per accept (each wakeup costs the consumer about as much as
the records it brings). A wakeup on a quiet host (the previous one long
ago) is drained at once: a lone offender is not delayed. A poll timeout is
no wakeup: records that trickled in without one say nothing of load.
"""

from __future__ import annotations

import mmap
import select
import time

BUSY = 1 << 31
DISCARD = 1 << 30


class RingReader:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF map, given its fd and size."""

    last_wakeup_ns = 0   # monotonic time the last wakeup was let through

    def __init__(self, map_fd: int, size: int, batch_ns: int = 0) -> None:
        """`batch_ns`: the least time between two drains under load (the latency it may add)."""
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError(f"ring buffer size {size} is not a power-of-two multiple of the page size")
        self.size = size
        self.mask = size - 1
        self.batch_ns = batch_ns
        page = mmap.PAGESIZE
        self._use(mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0),
                  mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page))
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def _use(self, consumer, producer) -> None:
        """Read the ring from these buffers: the consumer-position page, and the producer-position
        page followed by the data area mapped twice."""
        self._consumer, self._producer = consumer, producer
        self._data = mmap.PAGESIZE   # the data area starts one page into the producer mapping
        self._cons_pos = memoryview(consumer).cast("Q")   # [0]: the consumer position, one store
        self._prod_pos = memoryview(producer).cast("Q")   # [0]: the producer position, one load
        self._words = memoryview(producer).cast("I")      # record headers, by 4-byte index

    def wait(self, timeout_ms: int) -> None:
        """Block until the kernel signals data or timeout_ms passes; under load, batch (`batch_ns`)."""
        if self._epoll.poll(max(timeout_ms, 0) / 1000) and timeout_ms > 0 and self.batch_ns:
            now = time.monotonic_ns()
            early = self.last_wakeup_ns + self.batch_ns - now
            if early > 0:
                time.sleep(early / 1e9)
                now += early
            self.last_wakeup_ns = now

    def drain(self, out: list[bytes]) -> int:
        """Append every published record to `out`, free their space; how many."""
        prod_map, words = self._producer, self._words
        cons = self._cons_pos[0]
        prod = self._prod_pos[0]
        base, mask = self._data, self.mask
        n = 0
        while cons < prod:
            off = base + (cons & mask)
            head = words[off >> 2]
            if head & BUSY:
                break
            length = head & ~(BUSY | DISCARD)
            if not head & DISCARD:
                out.append(prod_map[off + 8: off + 8 + length])
                n += 1
            cons += (length + 15) & ~7   # 8-byte header, rounded up to 8
        self._cons_pos[0] = cons
        return n

    def close(self) -> None:
        self._epoll.close()
        for view in (self._cons_pos, self._prod_pos, self._words):
            view.release()   # a mapping with views into it cannot be closed
        self._producer.close()
        self._consumer.close()
