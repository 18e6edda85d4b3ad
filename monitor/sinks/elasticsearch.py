"""The Elasticsearch sink: spool to disk, ship in bulk, exactly once.

`write()` renders the ECS document and appends it to the disk spool (one
`write(2)`), nothing more: a slow or dead server never blocks the caller.
A shipper thread

1. installs the `event.ingested` ingest pipeline, an ILM policy where the
   server has ILM, one index template per alias (a template with a higher
   `version` is left alone) and the rollover aliases (retrying in the
   background while the server is unreachable),
2. reads batches from the spool (`batch_size` documents, or whatever is
   there after `batch_interval_s`), sends them as `_bulk` `create` actions
   with the event id as `_id` to the events or alerts alias,
3. per item: 2xx is delivered, 409 is "already delivered" (a replay after a
   crash or a lost answer), 429/5xx are retried with backoff, anything else
   goes to the dead-letter file with the reason,
4. acknowledges the batch in the spool only when every item is settled,
5. without ILM (the OSS build), rolls the aliases over itself when a
   `rollover` condition is met and deletes indices past `retention_s`.

A batch sent before (after a failure or a restart) is first checked against
every index behind its alias, since a rollover in between would let its
`create` land in the new write index, where no 409 marks the duplicate.

Alerts (`event.kind: alert`) go to `alerts_index`, everything else to
`events_index`. Spool lines are `<a|e><event id>\\t<ECS JSON>`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import orjson

from ..ecs import HostInfo, encode, parse_timestamp
from ..events import Alert, Record
from ..files import open_append
from ..redact import cleartext_credentials, redact_url
from .base import ErrorCallback, ErrorReporter, SinkStats
from .es_client import EsClient, ItemResult, Unavailable
from .es_config import ElasticsearchConfig
from .lifecycle import expired, ilm_policy
from .spool import DiskSpool, SpoolBatch
from .template import TEMPLATE_VERSION, index_template, ingest_pipeline

log = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 500, 502, 503, 504})
REFUSED_BATCH = frozenset({400, 413})   # the whole request refused for what it holds: split it, dead-letter the culprit


def spool_line(record: Record, host: HostInfo) -> bytes:
    """The spool line of a record: stream marker, id, tab, ECS JSON, newline."""
    marker = b"a" if isinstance(record, Alert) else b"e"
    return marker + record.id.encode() + b"\t" + encode(record, host)


class ElasticsearchSink:
    def __init__(self, config: ElasticsearchConfig, host: HostInfo, on_error: ErrorCallback | None = None):
        self.config = config
        self.host = host
        self._errors = ErrorReporter("sinks.elasticsearch", on_error)
        self._spool = DiskSpool(config.spool_dir, config.spool_max_bytes, config.segment_bytes)
        if self._spool.recovered_partial:
            self._errors.add("spool line cut by a crash was discarded", self._spool.recovered_partial)
        if self._spool.repaired_ack:
            self._errors.add(f"spool ack file was corrupt (kept as {config.spool_dir / 'acked.corrupt'}): "
                             "resending from the oldest segment, duplicates are dropped by the server")
        for url in config.urls:
            if cleartext_credentials(url, config.username is not None or config.api_key is not None):
                log.warning("elasticsearch %s: credentials would be sent without TLS; use https://", redact_url(url))
        self._client = EsClient(config.urls, username=config.username, password=config.password,
                                api_key=config.api_key, ca_file=config.ca_file,
                                verify_certs=config.verify_certs, timeout_s=config.request_timeout_s)
        self._events_action = b'{"create":{"_index":' + orjson.dumps(config.events_index) + b',"_id":'
        self._alerts_action = b'{"create":{"_index":' + orjson.dumps(config.alerts_index) + b',"_id":'
        self._lock = threading.Lock()
        self._stats = SinkStats()
        self._head_ns: int | None = None
        self._ready = False
        self._ilm = False
        self._rollable: list[str] = []
        self._next_lifecycle = 0.0
        # batches before this spool position may have reached a write index that has rolled over since
        self._resend_until = self._spool.end_position if self._spool.pending else (0, 0)
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._pool = ThreadPoolExecutor(config.max_in_flight, thread_name_prefix="sink-elasticsearch-bulk")
        self._dead_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sink-elasticsearch", daemon=True)
        self._thread.start()

    # -- caller side --------------------------------------------------------

    def write(self, record: Record) -> None:
        try:
            line = spool_line(record, self.host)
        except Exception as exc:
            with self._lock:
                self._stats.failed += 1
            self._errors.add(f"cannot render {type(record).__name__}: {exc}")
            return
        try:
            dropped = self._spool.append(line)
        except OSError as exc:
            with self._lock:
                self._stats.failed += 1
            self._errors.add(f"cannot append to spool {self.config.spool_dir}: {exc.strerror or exc}")
            return
        if dropped:
            with self._lock:
                self._stats.dropped += dropped
            self._errors.add(f"spool over {self.config.spool_max_bytes} bytes: oldest events dropped", dropped)
        if self._spool.pending >= self.config.batch_size and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until the spool is empty (everything acknowledged); False on timeout."""
        return self._spool.wait_empty(self._flushed, self._wake,
                                      timeout_s if timeout_s is not None else self.config.close_timeout_s)

    def close(self) -> None:
        """Ship what can be shipped within `close_timeout_s`, then fsync the spool and stop.

        Whatever is not acknowledged stays in the spool for the next start.
        """
        if self._ready:
            self.flush(self.config.close_timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.config.request_timeout_s + 2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._spool.close()
        self._client.close()
        left = self._spool.pending
        if left:
            log.warning("elasticsearch sink: %d events stay in the spool %s for the next start",
                        left, self.config.spool_dir)
        self._errors.emit_due(force=True)

    @property
    def stats(self) -> SinkStats:
        with self._lock:
            s = SinkStats(**self._stats.as_dict())
            head = self._head_ns
        s.pending = self._spool.pending
        s.spool_bytes = self._spool.pending_bytes
        s.lag_s = max(0.0, (time.time_ns() - head) / 1e9) if head is not None and s.pending else 0.0
        return s

    @property
    def ready(self) -> bool:
        """True once the template and aliases are in place."""
        return self._ready

    # -- shipper thread -----------------------------------------------------

    def _run(self) -> None:
        last_sync = time.monotonic()
        backoff = 0.0
        while not self._stop.is_set():
            self._errors.emit_due()
            if time.monotonic() - last_sync >= self.config.sync_interval_s:
                self._sync()
                last_sync = time.monotonic()
            if backoff:
                self._stop.wait(backoff)
            try:
                if not self._ready:
                    self._setup()
                shipped = self._ship_available()
                self._manage_lifecycle()
            except Unavailable as exc:
                backoff = min(max(backoff * 2, 0.2), self.config.backoff_max_s)
                self._note_down(str(exc))
                continue
            except Exception as exc:  # a bug or a broken spool must not end shipping
                log.exception("elasticsearch sink: shipping failed")
                self._errors.add(f"shipping failed: {type(exc).__name__}: {exc}", 0)
                backoff = self.config.backoff_max_s
                continue
            backoff = 0.0
            self._note_up()
            if not shipped:
                with self._flushed:
                    self._flushed.notify_all()
                self._wake.wait(self.config.batch_interval_s)
                self._wake.clear()
        self._sync()

    def _sync(self) -> None:
        try:
            self._spool.sync()
        except OSError as exc:
            self._errors.add(f"cannot fsync spool {self.config.spool_dir}: {exc.strerror or exc}")

    def _note_down(self, message: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("elasticsearch %s unavailable (%s); spooling to %s and retrying",
                        ",".join(map(redact_url, self.config.urls)), message, self.config.spool_dir)
            self._errors.add(f"elasticsearch unavailable, spooling and retrying: {message}", 0)
        with self._lock:
            self._stats.retried += 1

    def _note_up(self) -> None:
        if self._down_since is not None:
            log.warning("elasticsearch back after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None

    def _setup(self) -> None:
        """Pipeline, ILM policy (where the server has ILM), one template per alias, the aliases."""
        cfg = self.config
        server = self._client.server()
        self._ilm = cfg.rollover is not None and self._client.has_ilm()
        self._client.put_pipeline(cfg.template_name, ingest_pipeline())
        if self._ilm:
            assert cfg.rollover is not None
            self._client.put_ilm_policy(cfg.template_name, ilm_policy(cfg.rollover, cfg.retention_s))
        self._drop_combined_template()
        self._rollable = []
        for stream, alias in (("events", cfg.events_index), ("alerts", cfg.alerts_index)):
            body = index_template([f"{alias}-*"], wildcard=server.has_wildcard, pipeline=cfg.template_name,
                                  ilm=(cfg.template_name, alias) if self._ilm else None)
            self._install_template(f"{cfg.template_name}-{stream}", body)
            if self._client.alias_exists(alias):
                self._rollable.append(alias)
            elif self._client.index_exists(alias):
                log.warning("elasticsearch: %s is an index, not an alias: writing to it without rollover or "
                            "retention (see the README, 'Index lifecycle', to migrate)", alias)
            else:
                self._client.create_index_with_alias(cfg.first_index(alias), alias)
                self._rollable.append(alias)
        log.info("elasticsearch: index lifecycle by %s", "the server's ILM policy " + cfg.template_name
                 if self._ilm else "the agent (rollover API)" if cfg.rollover else "nobody (rollover: null)")
        self._ready = True

    def _install_template(self, name: str, body: dict) -> None:
        installed = self._client.template_version(name)
        if installed is None or installed < TEMPLATE_VERSION:
            self._client.put_template(name, body)
        elif installed > TEMPLATE_VERSION:
            log.warning("index template %s has version %d, newer than ours (%d): keeping it",
                        name, installed, TEMPLATE_VERSION)

    def _drop_combined_template(self) -> None:
        """Version 1 had one template for both aliases; its patterns would clash with the new ones."""
        old = self._client.template(self.config.template_name)
        if old is not None and old.get("_meta", {}).get("managed_by") == "socat-monitor":
            self._client.delete_template(self.config.template_name)

    def _manage_lifecycle(self) -> None:
        """OSS build: roll the aliases over when a condition is met, delete indices past the retention."""
        cfg = self.config
        if self._ilm or time.monotonic() < self._next_lifecycle:
            return
        self._next_lifecycle = time.monotonic() + (cfg.rollover.check_interval_s if cfg.rollover else 60.0)
        try:
            for alias in self._rollable:
                self._roll(alias)
        except Unavailable as exc:   # shipping goes on; the next check tries again
            self._errors.add(f"index lifecycle: {exc}", 0)

    def _roll(self, alias: str) -> None:
        cfg = self.config
        if cfg.rollover is not None:
            if cfg.rollover.max_docs is not None:
                self._client.refresh(alias)     # max_docs counts only what a refresh has made visible
            new_index = self._client.rollover(alias, cfg.rollover.conditions())
            if new_index:
                log.info("elasticsearch: %s rolled over to %s", alias, new_index)
        if cfg.retention_s is not None:
            now_ms = time.time_ns() // 1_000_000
            for index in expired(alias, self._client.alias_indices(alias), cfg.retention_s, now_ms):
                self._client.delete_index(index)
                log.info("elasticsearch: deleted %s, past the retention of %ss", index, int(cfg.retention_s))

    def _ship_available(self) -> bool:
        """Ship batches while the spool has data, `max_in_flight` bulk requests at a time.

        Batches are acknowledged in spool order. When one fails, the others are
        awaited, those before it acknowledged, and the spool rewound to resend
        the rest (already delivered ones then come back as 409). True if
        anything was shipped.
        """
        shipped = False
        inflight: collections.deque[tuple[SpoolBatch, Future]] = collections.deque()
        try:
            while not self._stop.is_set():
                while len(inflight) < self.config.max_in_flight:
                    batch = self._spool.read_batch(self.config.batch_size, self.config.batch_bytes)
                    if batch is None or not batch.lines:
                        break
                    if not inflight:
                        self._note_head(batch)
                    inflight.append((batch, self._pool.submit(self._deliver, batch)))
                if not inflight:
                    return shipped
                batch, future = inflight[0]
                future.result()
                inflight.popleft()
                self._spool.ack(batch)
                shipped = True
                with self._flushed:
                    self._flushed.notify_all()
            return shipped
        finally:
            self._settle_inflight(inflight)

    def _settle_inflight(self, inflight: collections.deque) -> None:
        """After a failure or at stop: ack what completed in order, resend the rest later."""
        if not inflight:
            return
        ok = True
        for batch, future in inflight:
            try:
                future.result(timeout=self.config.request_timeout_s + 5)
            except Exception:
                ok = False
            else:
                if ok:
                    self._spool.ack(batch)
        self._resend_until = max(self._resend_until, self._spool.read_position)
        self._spool.rewind()

    def _note_head(self, batch: SpoolBatch) -> None:
        try:
            doc = orjson.loads(batch.lines[0].split(b"\t", 1)[1])
            head = parse_timestamp(doc["@timestamp"])
        except (ValueError, KeyError, IndexError):
            head = None
        with self._lock:
            self._head_ns = head

    def _action(self, line: bytes) -> tuple[bytes, bytes]:
        head, doc = line.split(b"\t", 1)
        prefix = self._alerts_action if head[:1] == b"a" else self._events_action
        return prefix + orjson.dumps(head[1:].decode()) + b"}}", doc

    def _deliver(self, batch: SpoolBatch) -> None:
        """Send until every line is settled (delivered, duplicate or dead-lettered).

        Raises Unavailable when the whole request fails; the batch stays in the
        spool and is sent again (duplicates then come back as 409).
        """
        self._send(self._not_yet_delivered(batch))

    def _send(self, todo: list[bytes]) -> None:
        """Bulk-send lines until each is settled. A request refused whole for what it holds (400,
        413) is split in two and each half sent on its own, so one bad or huge document is
        dead-lettered alone instead of holding up everything behind it."""
        backoff = 0.0
        while todo:
            if backoff:
                if self._stop.wait(backoff):
                    raise Unavailable("stopping with items still to retry")
            todo = self._drop_corrupt(todo)
            if not todo:
                return
            pairs = [self._action(line) for line in todo]
            body = b"".join(a + b"\n" + d + b"\n" for a, d in pairs)
            try:
                results = self._client.bulk(body)
            except Unavailable as exc:
                if exc.status not in REFUSED_BATCH:
                    raise
                self._split(todo, exc)
                return
            if len(results) != len(todo):
                raise Unavailable(f"bulk answered {len(results)} items for {len(todo)} sent")
            retry = self._settle(todo, pairs, results)
            if retry:
                with self._lock:
                    self._stats.retried += len(retry)
                backoff = min(max(backoff * 2, 0.2), self.config.backoff_max_s)
            todo = retry

    def _split(self, todo: list[bytes], exc: Unavailable) -> None:
        if len(todo) == 1:
            self._dead_letter([(todo[0], ItemResult(exc.status or 0, f"request refused whole: {exc}"))])
            return
        half = len(todo) // 2
        self._send(todo[:half])
        self._send(todo[half:])

    def _not_yet_delivered(self, batch: SpoolBatch) -> list[bytes]:
        """The batch's lines, without those already in an index behind their alias.

        Only for a batch sent before (a resend after a failure or a restart),
        and only when indices roll over: `create` then reaches the new write
        index, where the 409 that marks a duplicate would not happen.
        """
        if self.config.rollover is None or (batch.segment, batch.start) >= self._resend_until:
            return batch.lines
        by_alias: dict[str, list[str]] = {}
        for line in batch.lines:
            head = line.split(b"\t", 1)[0]
            alias = self.config.alerts_index if head[:1] == b"a" else self.config.events_index
            by_alias.setdefault(alias, []).append(head[1:].decode(errors="replace"))
        present: set[str] = set()
        for alias, ids in by_alias.items():
            present |= self._client.existing_ids(alias, ids)
        if not present:
            return batch.lines
        with self._lock:
            self._stats.duplicates += len(present)
        return [line for line in batch.lines if line.split(b"\t", 1)[0][1:].decode(errors="replace") not in present]

    def _drop_corrupt(self, lines: list[bytes]) -> list[bytes]:
        good = [line for line in lines if b"\t" in line[:200] and line[:1] in (b"a", b"e")]
        if len(good) != len(lines):
            bad = [line for line in lines if not (b"\t" in line[:200] and line[:1] in (b"a", b"e"))]
            self._dead_letter([(line, ItemResult(0, "corrupt spool line")) for line in bad])
        return good

    def _settle(self, lines: list[bytes], pairs: list[tuple[bytes, bytes]], results: list[ItemResult]) -> list[bytes]:
        retry: list[bytes] = []
        dead: list[tuple[bytes, ItemResult]] = []
        written = duplicates = 0
        for line, (action, _), result in zip(lines, pairs, results):
            if 200 <= result.status < 300:
                written += 1
            elif result.status == 409:
                duplicates += 1
            elif result.status in RETRYABLE:
                retry.append(line)
            else:
                dead.append((line, result))
        if dead:
            self._dead_letter(dead)
        with self._lock:
            self._stats.written += written
            self._stats.duplicates += duplicates
        return retry

    def _dead_letter(self, dead: list[tuple[bytes, ItemResult]]) -> None:
        path = self.config.dead_letter_path
        assert path is not None
        out = []
        for line, result in dead:
            head, _, doc = line.partition(b"\t")
            index = self.config.alerts_index if head[:1] == b"a" else self.config.events_index
            try:
                document = orjson.loads(doc)
            except orjson.JSONDecodeError:
                document = line.decode(errors="replace")
            out.append(orjson.dumps({"reason": result.error, "status": result.status, "index": index,
                                     "document": document}, option=orjson.OPT_APPEND_NEWLINE))
        with self._lock:
            self._stats.dead_lettered += len(dead)
        try:
            with self._dead_lock, open_append(path) as fh:
                fh.write(b"".join(out))
            self._errors.add(f"refused by elasticsearch, kept in {path}: {dead[0][1].error}", len(dead))
        except OSError as exc:
            with self._lock:
                self._stats.failed += len(dead)
            self._errors.add(f"refused by elasticsearch and cannot write {path}: {exc.strerror or exc}", len(dead))
