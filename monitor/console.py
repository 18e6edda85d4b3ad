"""One human-readable line per record, for `run --follow`.

Lines carry text that processes chose (command lines, audit messages), so
every line is escaped for the terminal (`monitor.terminal.safe_text`).
"""

from __future__ import annotations

import time

from .events import Alert, BlockEvent, ConnectionEvent, Direction, DropEvent, Heartbeat, PipelineError, ProcessEvent, Record
from .terminal import safe_text

_SHORT = {
    "connection_accepted": "ACCEPT",
    "connection_attempted": "CONNECT",
    "connection_closed": "CLOSE",
    "connection_denied": "REFUSED",
    "process_started": "EXEC",
    "process_ended": "EXIT",
    "address_blocked": "BLOCK",
    "address_unblocked": "UNBLOCK",
    "block_refused": "NO-BLOCK",
    "block_dry_run": "DRY-BLOCK",
    "block_counters": "DROPS",
    "connection_dropped": "DROPPED",
    "drop_counters": "DROPPED",
}


def _clock(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9)) + f".{ns // 1_000_000 % 1000:03d}"


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _connection(ev: ConnectionEvent) -> str:
    arrow = "->" if ev.direction is Direction.INGRESS else "=>"
    proc = f" socat[{ev.process.pid}]" if ev.process else ""
    extra = ""
    if ev.duration_ns is not None:
        extra += f" {ev.duration_ns / 1e6:.1f}ms"
    if ev.error:
        extra += f" {ev.error}"
    if ev.session_id:
        extra += f" session={ev.session_id}"
    return (f"{_SHORT[ev.action.value]:<9}{_endpoint(ev.source_ip, ev.source_port)} {arrow} "
            f"{_endpoint(ev.destination_ip, ev.destination_port)}{proc}{extra}")


def format_record(record: Record) -> str | None:
    """The console line of a record, or None for records not worth a line."""
    if isinstance(record, ConnectionEvent):
        body = _connection(record)
    elif isinstance(record, ProcessEvent):
        status = "" if record.exit_code is None else f" status={record.exit_code}"
        body = f"{_SHORT[record.action.value]:<9}pid={record.process.pid} {record.process.command_line}{status}"
    elif isinstance(record, Alert):
        src = f" {record.source_ip}" if record.source_ip else ""
        body = f"ALERT    [{record.severity.name.lower()}] {record.rule_id}{src}: {record.description}"
    elif isinstance(record, BlockEvent):
        ttl = f" ttl={record.ttl_s:g}s" if record.ttl_s else ""
        why = f" ({record.reason})" if record.reason else ""
        drops = f" dropped={record.dropped_packets}p/{record.dropped_bytes}B" if record.dropped_packets is not None else ""
        body = f"{_SHORT[record.action.value]:<9}{record.target}{ttl}{drops} rule={record.rule_id}{why}"
    elif isinstance(record, DropEvent):
        would = " (dry run: would drop)" if record.dry_run else ""
        body = (f"{_SHORT[record.action.value]:<9}{record.source_ip} -> {record.listener.name} port "
                f"{record.listener.port} packets={record.dropped_packets}{would}")
    elif isinstance(record, PipelineError):
        body = f"LOSS     {record.stage}: {record.count} lost: {record.message}"
    elif isinstance(record, Heartbeat):
        return None
    else:
        return None
    return safe_text(f"{_clock(record.timestamp_ns)} {body}")
