"""The live view of a running agent: its `Status` laid out as screen lines.

Pure: `render` turns a `monitor.status.Status` (and the one before it, for
rates) into exactly `height` lines no wider than `width`. The terminal loop,
keys and the socket live in `monitor.cli.top`.
"""

from __future__ import annotations

import datetime as dt

from .status import AlertRow, BlockRow, DropRow, ListenerRow, SourceRow, Status
from .terminal import safe_text


def connection_rate(status: Status, previous: Status | None) -> float:
    """Accepted connections per second: from the counter delta between two
    snapshots of the same agent, else the sum of the listeners' rates."""
    if previous is not None and previous.pid == status.pid:
        elapsed = status.uptime_s - previous.uptime_s
        delta = status.counters.accepted - previous.counters.accepted
        if elapsed > 0 and delta >= 0:
            return delta / elapsed
    return sum(row.rate_per_s for row in status.listeners)


def render(status: Status, width: int, height: int, previous: Status | None = None,
           interval_s: float | None = None) -> list[str]:
    """Exactly `height` screen lines, each at most `width` characters."""
    width, height = max(width, 20), max(height, 4)
    head = _header(status, previous)
    footer = "q quit" + (f" · refresh {interval_s:g}s" if interval_s else "")
    sections = [
        ("LISTENERS", _listener_table(status.listeners)),
        ("TOP SOURCES", _source_table(status.top_sources)),
        ("RECENT ALERTS", _alert_table(status.recent_alerts)),
        ("ACTIVE BLOCKS", _block_table(status.blocks)),
        *([("DROPPED BEFORE THE HANDSHAKE", _drop_table(status.drops))] if status.drops else []),
    ]
    budget = height - len(head) - 1
    body = _fit_sections(sections, budget)
    lines = head + body
    lines += [""] * (height - 1 - len(lines))
    lines.append(footer)
    return [_clip(line, width) for line in lines[:height]]


def _header(status: Status, previous: Status | None) -> list[str]:
    c = status.counters
    total = sum(c.events.values())
    alerts = sum(c.alerts.values())
    line1 = (f"socat-monitor {status.version}  host {status.host}  pid {status.pid}  "
             f"up {_duration(status.uptime_s)}  rss {_bytes(c.rss_bytes)}")
    line2 = (f"conn/s {connection_rate(status, previous):.1f}  events {total}  alerts {alerts}  "
             f"blocks {c.blocks_active}{_dropped(status.drops)}  lost kernel {c.kernel_lost} user {c.user_lost}  "
             f"queue {c.queue_depth}  es spool {_bytes(c.es_spool_bytes)} lag {c.es_lag_s:.1f}s")
    return [line1, line2, ""]


def _dropped(rows: tuple[DropRow, ...]) -> str:
    """The header's drop figure: SYNs the drop listeners dropped, when there are any."""
    return f"  dropped {sum(r.packets for r in rows)}" if rows else ""


def _fit_sections(sections: list[tuple[str, list[str]]], budget: int) -> list[str]:
    """Every section title first, then lines shared out round-robin (a column
    header only with its first row), blank separators last, so a short
    terminal still shows every section; rows that did not fit are counted."""
    contents = [rows or ["  (none)"] for _, rows in sections]
    room = budget - len(sections)
    shown = [0] * len(sections)
    progress = True
    while room > 0 and progress:
        progress = False
        for i, content in enumerate(contents):
            cost = 2 if shown[i] == 0 and len(content) > 1 else 1
            if shown[i] < len(content) and cost <= room:
                shown[i] += cost
                room -= cost
                progress = True
    separators = max(min(room, len(sections) - 1), 0)
    out: list[str] = []
    for i, (title, rows) in enumerate(sections):
        if 0 < i <= separators:
            out.append("")
        hidden = len(rows) - 1 - max(shown[i] - 1, 0) if rows else 0
        out.append(title + (f"  (+{hidden} more)" if hidden > 0 else ""))
        out.extend(contents[i][:shown[i]])
    return out[:max(budget, 0)]


def _listener_table(rows: tuple[ListenerRow, ...]) -> list[str]:
    if not rows:
        return []
    out = [f"  {'NAME':<16} {'ADDRESS':<28} {'PIDS':<14} {'CONN/S':>7} {'ACTIVE':>6}"]
    for r in rows:
        pids = ",".join(str(p) for p in r.pids[:3]) + ("…" if len(r.pids) > 3 else "")
        out.append(f"  {_cell(r.name or '-', 16)} {_cell(_endpoint(r.ip, r.port), 28)} "
                   f"{_cell(pids or '-', 14)} {r.rate_per_s:>7.1f} {r.active:>6}")
    return out


def _source_table(rows: tuple[SourceRow, ...]) -> list[str]:
    if not rows:
        return []
    out = [f"  {'SOURCE':<40} {'CONNS':>7} {'CONN/S':>7} {'PORT':>6}"]
    for r in rows:
        port = "-" if r.listener_port is None else str(r.listener_port)
        out.append(f"  {_cell(r.ip, 40)} {r.connections:>7} {r.rate_per_s:>7.1f} {port:>6}")
    return out


def _alert_table(rows: tuple[AlertRow, ...]) -> list[str]:
    if not rows:
        return []
    out = [f"  {'TIME':<8} {'SEV':<8} {'RULE':<28} {'SOURCE':<26} {'PORT':>5}  DESCRIPTION"]
    for r in rows:
        port = "-" if r.listener_port is None else str(r.listener_port)
        out.append(f"  {_clock(r.timestamp):<8} {_cell(r.severity, 8)} {_cell(r.rule_id, 28)} "
                   f"{_cell(r.source_ip or '-', 26)} {port:>5}  {r.description}")
    return out


def _block_table(rows: tuple[BlockRow, ...]) -> list[str]:
    if not rows:
        return []
    out = [f"  {'TARGET':<43} {'EXPIRES':>9}  RULE"]
    for r in rows:
        expires = "never" if r.expires_in_s is None else _duration(r.expires_in_s)
        out.append(f"  {_cell(r.target, 43)} {expires:>9}  {r.rule_id or '-'}")
    return out


def _drop_table(rows: tuple[DropRow, ...]) -> list[str]:
    """The drop listeners' figures; with their namespace when they are in several."""
    if not rows:
        return []
    several = len({r.netns for r in rows}) > 1

    def netns(text: str) -> str:
        return f" {_cell(text, 16)}" if several else ""

    out = [f"  {'LISTENER':<28}{netns('NETNS')} {'PORT':>5} {'SYNS':>10} {'SOURCES':>8}"]
    for r in rows:
        note = "  (dry run: would drop)" if r.dry_run else ""
        out.append(f"  {_cell(r.listener, 28)}{netns(r.netns or '(own)')} {r.port:>5} {r.packets:>10} "
                   f"{r.sources:>8}{note}")
    return out


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _cell(text: str, size: int) -> str:
    """`text` in exactly `size` columns, control characters escaped: padded, or cut with an ellipsis."""
    text = safe_text(text)
    return text.ljust(size) if len(text) <= size else text[:size - 1] + "…"


def _clip(line: str, width: int) -> str:
    line = safe_text(line)
    return line if len(line) <= width else line[:width - 1] + "…"


def _clock(timestamp: str) -> str:
    try:
        return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).strftime("%H:%M:%S")
    except ValueError:
        return timestamp[:8]


def _duration(seconds: float) -> str:
    whole = int(max(seconds, 0))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
