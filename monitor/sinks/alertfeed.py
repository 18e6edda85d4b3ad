"""The local alert feed, for SOCs without Elasticsearch.

Alerts (policy, audit, anomaly) and block events (address blocked, unblocked,
refused) as ECS JSON lines in one file, and optionally as RFC 5424 syslog
messages to a unix datagram socket (`/dev/log`, or `unix:/path`) or over UDP
(`udp://127.0.0.1:514`). Every other record is ignored here.

The file is rotated as logrotate would: once it reaches `rotate_bytes` it
becomes `FILE.1` (the older ones shift to `FILE.2` ... `FILE.<keep>`, the
oldest is dropped), and a new `FILE` starts, so `tail -F FILE` follows it.

A syslog message is
`<PRI>1 TIMESTAMP HOST socat-monitor PID RULE_ID [socat@32473 ...] JSON`:
the severity maps critical->crit, high->err, medium->warning, low->notice
(blocks are notice), the structured data carries rule, severity, source,
event id and the rule's ATT&CK technique (from the catalogue,
`monitor.rules`), and the message is the ECS document, so a collector gets
both a readable header and every field. `write()` only enqueues; a thread writes
the file and sends the datagrams; a full queue or a failed send is counted
and reported, never raised.
"""

from __future__ import annotations

import collections
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..ecs import HostInfo, render
from ..events import Action, Alert, BlockEvent, Record, Severity
from ..files import GROUP_READABLE, open_append
from ..settings import setting
from ..rules import RULES
from .base import ErrorCallback, ErrorReporter, SinkStats

FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
              **{f"local{i}": 16 + i for i in range(8)}}
_SYSLOG_SEVERITY = {Severity.CRITICAL: 2, Severity.HIGH: 3, Severity.MEDIUM: 4, Severity.LOW: 5}
_NOTICE = 5
SD_ID = "socat@32473"


def parse_syslog_target(text: str) -> tuple[int, Any]:
    """(socket family, address) of a syslog target; ValueError names what is wrong."""
    if text.startswith("udp://"):
        parts = urlsplit(text)
        if not parts.hostname:
            raise ValueError("no host in the udp:// target")
        try:
            port = parts.port or 514
        except ValueError:
            raise ValueError("bad port in the udp:// target") from None
        family = socket.AF_INET6 if ":" in parts.hostname else socket.AF_INET
        return family, (parts.hostname, port)
    path = text[len("unix:"):] if text.startswith("unix:") else text
    if not path.startswith("/"):
        raise ValueError("expected udp://host:port, unix:/path or an absolute path")
    return socket.AF_UNIX, path


@dataclass(slots=True)
class AlertFeedConfig:
    path: Path | None = None            # JSON lines file of alerts and blocks
    syslog: str | None = setting(None, check=parse_syslog_target)   # "/dev/log", "unix:/path" or "udp://host:port"
    facility: str = setting("auth", choices=tuple(FACILITIES))
    max_queue: int = 10_000
    flush_interval_s: float = 0.2
    rotate_bytes: int = setting(64 * 1024 * 1024, minimum=1024)   # the file becomes FILE.1 at this size
    keep: int = setting(5, minimum=1)                              # rotated files kept: FILE.1 .. FILE.<keep>

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = Path(self.path)


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: str, limit: int) -> str:
    token = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return token or "-"


def syslog_message(record: Alert | BlockEvent, doc: dict[str, Any], host: HostInfo, facility: int) -> bytes:
    """The RFC 5424 message of an alert or block event."""
    if isinstance(record, Alert):
        severity, msgid = _SYSLOG_SEVERITY[record.severity], record.rule_id
        params = {"rule": record.rule_id, "severity": record.severity.name.lower(),
                  "source": record.source_ip or "", "id": record.id}
    else:
        severity, msgid = _NOTICE, record.action.value
        params = {"rule": record.rule_id or "", "action": record.action.value,
                  "target": record.target, "id": record.id}
    entry = RULES.get(record.rule_id or "")
    if entry is not None and entry.technique is not None:
        params["technique"] = entry.technique.id
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_escape(v)}"' for k, v in params.items() if v) + "]"
    header = (f"<{facility * 8 + severity}>1 {doc['@timestamp']} {_header_token(host.name, 255)} "
              f"socat-monitor {os.getpid()} {_header_token(msgid, 32)} {sd} ")
    return header.encode() + orjson.dumps(doc)


class AlertFeed:
    """Alerts and blocks to a JSON lines file and/or syslog."""

    def __init__(self, config: AlertFeedConfig, host: HostInfo, on_error: ErrorCallback | None = None):
        self.config = config
        self.host = host
        self._facility = FACILITIES[config.facility]
        self._errors = ErrorReporter("sinks.alerts", on_error)
        self._queue: collections.deque[tuple[Record, dict[str, Any]]] = collections.deque()
        self._lock = threading.Lock()
        self._stats = SinkStats()
        self._sock: socket.socket | None = None
        self._target: Any = None
        if config.syslog:
            family, self._target = parse_syslog_target(config.syslog)
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink-alerts", daemon=True)
        self._thread.start()

    def write(self, record: Record) -> None:
        if not isinstance(record, (Alert, BlockEvent)) or \
                (isinstance(record, BlockEvent) and record.action is Action.BLOCK_COUNTERS):
            return   # alerts and block changes only: the periodic drop counters are not news
        try:
            doc = render(record, self.host)
        except Exception as exc:
            self._errors.add(f"cannot render {type(record).__name__}: {exc}")
            with self._lock:
                self._stats.failed += 1
            return
        with self._lock:
            if len(self._queue) >= self.config.max_queue:
                self._stats.dropped += 1
                self._errors.add("alert feed queue full: alert dropped")
                return
            self._queue.append((record, doc))
            self._stats.pending += 1

    def flush(self) -> None:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
        if not items:
            return
        ok = self._write_file(items) and self._send_syslog(items)
        with self._lock:
            self._stats.pending -= len(items)
            if ok:
                self._stats.written += len(items)
            else:
                self._stats.failed += len(items)

    def _write_file(self, items: list[tuple[Record, dict[str, Any]]]) -> bool:
        path = self.config.path
        if path is None:
            return True
        data = b"".join(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE) for _, doc in items)
        try:
            with open_append(path, GROUP_READABLE) as fh:
                fh.write(data)
                full = fh.tell() >= self.config.rotate_bytes
        except OSError as exc:
            self._errors.add(f"cannot write {path}: {exc.strerror or exc}", len(items))
            return False
        if full:
            self._rotate(path)
        return True

    def _rotate(self, path: Path) -> None:
        """FILE -> FILE.1, FILE.1 -> FILE.2, ...; FILE.<keep> is replaced; a new empty FILE.
        A failure is reported and the file keeps growing."""
        try:
            for n in range(self.config.keep - 1, 0, -1):
                older = path.with_name(f"{path.name}.{n}")
                if older.exists():
                    os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
            os.replace(path, path.with_name(f"{path.name}.1"))
            path.touch()                    # the feed's path always exists for its readers
        except OSError as exc:
            self._errors.add(f"cannot rotate {path}: {exc.strerror or exc}")

    def _send_syslog(self, items: list[tuple[Record, dict[str, Any]]]) -> bool:
        if self._sock is None:
            return True
        ok = True
        for record, doc in items:
            try:
                self._sock.sendto(syslog_message(record, doc, self.host, self._facility), self._target)
            except OSError as exc:
                ok = False
                self._errors.add(f"cannot send syslog to {self.config.syslog}: {exc.strerror or exc}")
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.config.flush_interval_s):
            self.flush()
            self._errors.emit_due()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        if self._sock is not None:
            self._sock.close()
        self._errors.emit_due(force=True)

    @property
    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(**self._stats.as_dict())
