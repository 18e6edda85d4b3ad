"""The webhook sink: alerts and blocks POSTed as JSON to an HTTP endpoint, exactly once per id.

Many SOC tools (SOAR platforms, chat bridges, ticketing) take alerts as an
HTTP POST. `write()` renders the ECS document of an alert or block event
and appends it to a disk spool (the Elasticsearch sink's `DiskSpool`), so
an unreachable receiver never blocks the agent and nothing is lost across a
restart. A thread POSTs one document per request, in order:

- the body is the ECS document; the headers carry `Idempotency-Key` and
  `X-Socat-Monitor-Event-Id`, both the event id, which is also `event.id`
  in the body: a receiver that dedupes on it sees every alert exactly once,
  since the sender retries until it has an answer and never drops;
- 2xx, and 409 (the receiver already has it), are delivered;
- 408, 425, 429, 5xx and connection failures are retried with backoff (the
  document stays in the spool);
- any other answer is final: the document goes to the dead-letter file with
  the status, and is counted and reported.

Spool lines are `<event id>\\t<ECS JSON>`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..ecs import HostInfo, render
from ..events import Action, Alert, BlockEvent, Record
from ..files import open_append
from ..redact import cleartext_credentials, redact_url
from ..settings import setting
from .base import ErrorCallback, ErrorReporter, SinkStats, check_url
from .spool import DiskSpool

log = logging.getLogger(__name__)

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(slots=True)
class WebhookConfig:
    url: str = setting("", check=check_url, required=True)
    authorization: str | None = None      # the Authorization header, e.g. "Bearer <token>"
    ca_file: str | None = None
    verify_certs: bool = True
    spool_dir: Path = Path("/var/lib/socat-monitor/webhook-spool")
    spool_max_bytes: int = setting(256 * 1024 * 1024, minimum=1024 * 1024)
    request_timeout_s: float = 10.0
    backoff_max_s: float = 30.0
    close_timeout_s: float = 5.0
    dead_letter_path: Path | None = None  # default: <spool_dir>/dead-letter.ndjson

    def __post_init__(self) -> None:
        self.spool_dir = Path(self.spool_dir)
        self.dead_letter_path = Path(self.dead_letter_path or self.spool_dir / "dead-letter.ndjson")


class _Retry(Exception):
    """Not delivered yet; try again after a backoff."""


class WebhookSink:
    def __init__(self, config: WebhookConfig, host: HostInfo, on_error: ErrorCallback | None = None):
        self.config = config
        self.host = host
        self._errors = ErrorReporter("sinks.webhook", on_error)
        if cleartext_credentials(config.url, config.authorization is not None):
            log.warning("webhook %s: credentials would be sent without TLS; use https://", redact_url(config.url))
        self._spool = DiskSpool(config.spool_dir, config.spool_max_bytes, 4 * 1024 * 1024)
        self._tls = self._tls_context()
        self._lock = threading.Lock()
        self._stats = SinkStats()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sink-webhook", daemon=True)
        self._thread.start()

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.config.url.startswith("https://"):
            return None
        context = ssl.create_default_context(cafile=self.config.ca_file)
        if not self.config.verify_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    # -- caller side --------------------------------------------------------

    def write(self, record: Record) -> None:
        if not (isinstance(record, Alert) or (isinstance(record, BlockEvent)
                                              and record.action is not Action.BLOCK_COUNTERS)):
            return   # alerts and block changes; a block's periodic counters are metrics, not alerts
        try:
            line = record.id.encode() + b"\t" + orjson.dumps(render(record, self.host),
                                                             option=orjson.OPT_APPEND_NEWLINE)
            dropped = self._spool.append(line)
        except Exception as exc:
            with self._lock:
                self._stats.failed += 1
            self._errors.add(f"cannot spool {type(record).__name__}: {exc}")
            return
        if dropped:
            with self._lock:
                self._stats.dropped += dropped
            self._errors.add(f"spool over {self.config.spool_max_bytes} bytes: oldest alerts dropped", dropped)
        self._wake.set()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every spooled document has an answer; False on timeout."""
        return self._spool.wait_empty(self._idle, self._wake,
                                      timeout_s if timeout_s is not None else self.config.close_timeout_s)

    def close(self) -> None:
        """Deliver what can be delivered within `close_timeout_s`; the rest stays spooled for the next start."""
        self.flush(self.config.close_timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.config.request_timeout_s + 2)
        self._spool.close()
        if self._spool.pending:
            log.warning("webhook sink: %d alerts stay in the spool %s for the next start",
                        self._spool.pending, self.config.spool_dir)
        self._errors.emit_due(force=True)

    @property
    def stats(self) -> SinkStats:
        with self._lock:
            s = SinkStats(**self._stats.as_dict())
        s.pending = self._spool.pending
        s.spool_bytes = self._spool.pending_bytes
        return s

    # -- sender thread ------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._errors.emit_due()
            batch = self._spool.read_batch(1, 16 * 1024 * 1024)
            if batch is None or not batch.lines:
                with self._idle:
                    self._idle.notify_all()
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._deliver(batch.lines[0])
            except Exception as exc:   # _Retry, or anything else: the sender thread never dies
                self._spool.rewind()
                with self._lock:
                    self._stats.retried += 1
                backoff = min(max(backoff * 2, 0.2), self.config.backoff_max_s)
                if not isinstance(exc, _Retry):
                    log.exception("webhook sink: delivery failed")
                self._errors.add(f"webhook {redact_url(self.config.url)}: {exc}; retrying", 0)
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            self._spool.ack(batch)
            with self._idle:
                self._idle.notify_all()
        self._spool.sync()

    def _deliver(self, line: bytes) -> None:
        event_id, _, doc = line.partition(b"\t")
        key = event_id.decode(errors="replace")
        headers = {"Content-Type": "application/json", "Idempotency-Key": key, "X-Socat-Monitor-Event-Id": key,
                   "User-Agent": "socat-monitor"}
        if self.config.authorization:
            headers["Authorization"] = self.config.authorization
        request = urllib.request.Request(self.config.url, data=doc, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.request_timeout_s, context=self._tls) as resp:
                resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            raise _Retry(f"cannot reach: {getattr(exc, 'reason', exc)}") from None
        if status in RETRYABLE:
            raise _Retry(f"HTTP {status}")
        with self._lock:
            if 200 <= status < 300:
                self._stats.written += 1
            elif status == 409:
                self._stats.duplicates += 1
        if not (200 <= status < 300 or status == 409):
            self._dead_letter(key, doc, status)

    def _dead_letter(self, key: str, doc: bytes, status: int) -> None:
        path = self.config.dead_letter_path
        assert path is not None
        try:
            document = orjson.loads(doc)
        except orjson.JSONDecodeError:
            document = doc.decode(errors="replace")
        url = redact_url(self.config.url)
        entry = orjson.dumps({"reason": f"HTTP {status}", "status": status, "url": url, "id": key,
                              "document": document}, option=orjson.OPT_APPEND_NEWLINE)
        try:
            with open_append(path) as fh:
                fh.write(entry)
        except OSError as exc:
            with self._lock:
                self._stats.failed += 1
            self._errors.add(f"refused by {url} (HTTP {status}) and cannot write {path}: {exc.strerror or exc}")
            return
        with self._lock:
            self._stats.dead_lettered += 1
        self._errors.add(f"refused by {url} (HTTP {status}), kept in {path}")
