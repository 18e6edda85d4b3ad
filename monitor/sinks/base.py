"""What every sink is: the `Sink` protocol, its counters, error reporting, fan-out.

A sink takes typed records (`monitor.events.Record`) and ships their ECS
rendering somewhere. `write()` never waits on a server or a slow disk: it
appends to a buffer or spool and returns; background threads do the I/O.
A sink's own losses (a full spool, a dead letter, a failed disk) become
`PipelineError` records handed to an `on_error` callback, aggregated so that
a persistent fault yields at most one record per stage and message per
second; the agent routes them to the other sinks.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

from ..events import PipelineError, Record, now_ns

log = logging.getLogger(__name__)

ErrorCallback = Callable[[PipelineError], None]


@dataclass(slots=True)
class SinkStats:
    """Counters of one sink (documents unless said otherwise)."""

    written: int = 0          # delivered: on disk in its file / acknowledged by the server
    failed: int = 0           # could not be rendered or written and are lost
    dropped: int = 0          # discarded by a bound (buffer or spool full)
    dead_lettered: int = 0    # refused by the server for good, kept in the dead-letter file
    duplicates: int = 0       # the server already had them (409 on create): delivered once
    retried: int = 0          # items or requests sent again after a retryable failure
    spool_bytes: int = 0      # not yet acknowledged, on disk
    pending: int = 0          # accepted by write() but not yet delivered
    lag_s: float = 0.0        # age of the oldest undelivered document

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def check_url(url: str) -> None:
    """A server URL of a sink's config: http:// or https://; ValueError says what is wrong."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} must start with http:// or https://")


class Sink(Protocol):
    def write(self, record: Record) -> None:
        """Accept a record; never waits on a server (thread-safe)."""

    def flush(self) -> None:
        """Deliver what is buffered now; may wait, bounded (Elasticsearch: until acknowledged)."""

    def close(self) -> None:
        """Flush, fsync, stop the sink's threads (bounded wait)."""

    @property
    def stats(self) -> SinkStats:
        """Counters since start."""


class ErrorReporter:
    """Aggregates a sink's own faults into rate-limited PipelineError records.

    `add()` is cheap and thread-safe; `emit_due()` (called from the sink's
    background thread, and at close with `force=True`) hands the aggregated
    records to the callback, or logs them when there is none.
    """

    def __init__(self, stage: str, on_error: ErrorCallback | None, interval_s: float = 1.0):
        self.stage = stage
        self.on_error = on_error
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._last_emit = 0.0

    def add(self, message: str, count: int = 1) -> None:
        with self._lock:
            self._pending[message] = self._pending.get(message, 0) + count

    def emit_due(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._pending or (not force and now - self._last_emit < self.interval_s):
                return
            pending, self._pending = self._pending, {}
            self._last_emit = now
        for message, count in pending.items():
            err = PipelineError(stage=self.stage, message=message, timestamp_ns=now_ns(), count=count)
            log.warning("%s: %s (%d events)", self.stage, message, count)
            if self.on_error is not None:
                try:
                    self.on_error(err)
                except Exception:  # a failing consumer must not stop this sink
                    log.exception("%s: error callback failed", self.stage)


class Fanout:
    """Writes every record to each sink; one sink failing never stops the others.

    `write_all` hands a batch to a sink that has a `write_all` of its own in one call (the NDJSON
    sink takes its lock once for the batch), to the others record by record; a sink's own faults are
    reported once for the batch."""

    def __init__(self, sinks: list[Sink], on_error: ErrorCallback | None = None):
        self.sinks = list(sinks)
        self._errors = ErrorReporter("sinks", on_error)

    def write(self, record: Record) -> None:
        self.write_all([record])

    def write_all(self, records: list[Record]) -> None:
        for sink in self.sinks:
            write_all = getattr(sink, "write_all", None)
            if write_all is not None:
                self._write(write_all, records)
            else:
                for record in records:
                    self._write(sink.write, record)
        self._errors.emit_due()

    def _write(self, write: Callable[[Any], None], arg: Any) -> None:
        try:
            write(arg)
        except Exception as exc:
            self._errors.add(f"{type(write.__self__).__name__}.write failed: {exc}")

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing %s failed", type(sink).__name__)
        self._errors.emit_due(force=True)

    @property
    def stats(self) -> SinkStats:
        total = SinkStats()
        for sink in self.sinks:
            s = sink.stats
            for name in ("written", "failed", "dropped", "dead_lettered", "duplicates", "retried",
                         "spool_bytes", "pending"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
            total.lag_s = max(total.lag_s, s.lag_s)
        return total

    def stats_by_sink(self) -> dict[str, SinkStats]:
        return {type(sink).__name__: sink.stats for sink in self.sinks}
