"""The replay source: connection events read back from NDJSON files (plain or gzip).

`read_chunks(paths)` streams files and yields columnar `EventChunk`s. A file
is first scanned by DuckDB (`monitor.replay.scan`: in parallel, only the
fields detection needs). From the first document that scan cannot take, or
the first table that fails the checks below, the rest of the file goes to the
line-checking reader: blocks through pyarrow's JSON reader with the same
projected schema, and a block pyarrow cannot take cleanly (a malformed line,
a missing or bad field, a foreign layout such as flat dotted keys) line by
line with `monitor.ecs.parse_connection`, so every bad line is reported with
its file and line number and no good line is lost. Non-connection documents
(alerts, process events, heartbeats) are counted and skipped.
`read_events(paths)` yields `ConnectionEvent`s one by one for consumers that
want records.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ..ecs import DATASET_CONNECTION, DocumentError, _field, parse_connection, parse_timestamp
from ..errors import InputError
from ..addresses import normalize_ip
from ..events import Action, ConnectionEvent, Container, Direction, Listener, Outcome, ProcessInfo, unrecorded_id
from .fields import ACTIONS, CODE, CODE_OF_VALUE, FULL_SCHEMA, SCHEMA, Columns
from .scan import FileScan

BLOCK_BYTES = 16 << 20      # bytes handed to pyarrow at once
MAX_LINE_BYTES = 1 << 20    # a longer line is reported and skipped, never held whole (documents are ~1 KB)
PARSE_BLOCK = 2 << 20       # pyarrow's own block size: its threads parse these in parallel
_OTHER_KINDS = {"alert", "metric", "pipeline_error", "state", "signal"}
_BOM = b"\xef\xbb\xbf"

@dataclass
class Malformed:
    """A line that is not a usable connection document."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class ReadStats:
    lines: int = 0                # lines read (blank lines the DuckDB scan skips are not counted)
    connections: int = 0
    other_documents: int = 0
    malformed: int = 0
    scanned: int = 0              # documents the DuckDB scan delivered
    slow_blocks: int = 0          # blocks read line by line
    bad_lines: list[Malformed] = field(default_factory=list)   # the first `keep` of them
    handovers: list[str] = field(default_factory=list)         # files the scan left, part or whole, and why;
                                                               # segments not used, and why (replay.sources)
    keep: int = 1000

    def bad(self, path: str, line: int, message: str) -> None:
        self.malformed += 1
        if len(self.bad_lines) < self.keep:
            self.bad_lines.append(Malformed(path, line, message))

    def hand_over(self, path: str, line: int, reason: str) -> None:
        self.handovers.append(f"{path}: read by the line-checking reader from line {line:,} ({reason}; "
                              "slower, names every bad line)")


@dataclass
class EventChunk:
    """Connection events as parallel columns; addresses as dictionary codes."""

    t: np.ndarray                 # int64 ns
    action: np.ndarray            # int8 index into ACTIONS
    egress: np.ndarray            # bool
    src: np.ndarray               # int32 index into src_values
    src_values: list[str]
    src_port: np.ndarray          # int64
    dst: np.ndarray               # int32 index into dst_values
    dst_values: list[str]
    dst_port: np.ndarray          # int64
    listener: np.ndarray          # int64: socat.listener.port, else destination.port
    refused: np.ndarray           # bool: denied, or socat.refused
    partial: np.ndarray           # bool: socat.source_partial (its source known in part: not judged)
    duration: np.ndarray          # int64 ns, -1 when unknown
    event_id: Callable[[int], str | None]
    source: str = ""              # file the chunk came from
    extra: dict[str, pa.Array] | None = None       # full reads: listener ip/name, session id, process
    events: list[ConnectionEvent] | None = None    # the line-by-line path keeps the parsed events
    id_column: pa.Array | None = None              # event.id of each row, where the reader has it as a column

    def __len__(self) -> int:
        return len(self.t)

    def event(self, i: int) -> ConnectionEvent:
        """Row `i` as a ConnectionEvent (for policy checks)."""
        if self.events is not None:
            return self.events[i]
        action = ACTIONS[int(self.action[i])]
        duration = int(self.duration[i])
        extra = {name: column[i].as_py() for name, column in self.extra.items()} if self.extra else {}
        listener_ip = extra.get("listener_ip") or self.dst_values[self.dst[i]]
        process = None
        if extra.get("pid") is not None:
            container = extra.get("container_id")
            process = ProcessInfo(pid=extra["pid"], comm=extra.get("comm") or "", netns=extra.get("netns"),
                                  netns_name=extra.get("netns_name"),
                                  container=Container(container, extra.get("container_name")) if container else None)
        return ConnectionEvent(
            id=self.event_id(i) or unrecorded_id(int(self.t[i])),     # as parse_connection names one without an id
            action=action, timestamp_ns=int(self.t[i]),
            source_ip=self.src_values[self.src[i]], source_port=int(self.src_port[i]),
            destination_ip=self.dst_values[self.dst[i]], destination_port=int(self.dst_port[i]),
            direction=Direction.EGRESS if self.egress[i] else Direction.INGRESS,
            outcome=Outcome.SUCCESS,
            listener=Listener(ip=listener_ip, port=int(self.listener[i]), name=extra.get("listener_name")),
            duration_ns=duration if duration >= 0 else None,
            refused=bool(self.refused[i]),
            source_partial=bool(self.partial[i]),
            session_id=extra.get("session"),
            process=process,
        )


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def _open(path: Path):
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _blocks(fh: BinaryIO, size: int, line: int = 1,
            too_long: Callable[[int], None] = lambda line: None) -> Iterator[tuple[int, int, memoryview]]:
    """(first line number, line count, whole lines) blocks of an open file, from where it stands
    (at line `line`).

    Each block is read into a buffer of its own behind the previous block's
    unfinished line (no copy of the block; a reader thread may still hold the last).
    An unfinished line that grows past MAX_LINE_BYTES is read past, not kept: `too_long`
    gets its number."""
    rest = b""
    while True:
        buffer = bytearray(len(rest) + size)
        buffer[: len(rest)] = rest
        got = fh.readinto(memoryview(buffer)[len(rest):])
        if not got:
            break
        end = len(rest) + got
        cut = buffer.rfind(b"\n", 0, end)
        if cut < 0:
            rest = bytes(buffer[:end])
            if len(rest) > MAX_LINE_BYTES:
                too_long(line)
                rest = _past_line(fh, size)
                line += 1
            continue
        rest = bytes(buffer[cut + 1: end])
        block = memoryview(buffer)[: cut + 1]
        count = int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == 10))   # 10x bytes.count
        yield line, count, block
        line += count
    if rest.strip():
        yield line, 1, memoryview(rest + b"\n")


def _past_line(fh: BinaryIO, size: int) -> bytes:
    """Read past the end of the current line; what follows it (empty at the end of the file)."""
    while True:
        data = fh.read(size)
        newline = data.find(b"\n")
        if not data or newline >= 0:
            return data[newline + 1:] if data else b""


def read_chunks(paths: Iterable[str | Path], stats: ReadStats | None = None,
                block_bytes: int | None = None, full: bool = False) -> Iterator[EventChunk]:
    """Columnar chunks of connection events from NDJSON files, in file order.

    `full` also reads what policy checks need (listener address and name,
    session id, process), so `EventChunk.event(i)` is complete; detection alone
    does not need it and reads faster without.

    A missing or unreadable file is an InputError naming it; a gzip file
    that ends early reports the problem as a malformed line and keeps what was read.
    """
    stats = stats if stats is not None else ReadStats()
    canonical: dict[str, str] = {}      # address as written -> canonical spelling
    paths = [Path(raw) for raw in paths]
    for path in paths:
        if not path.is_file():
            raise InputError(str(path), "no such file")
    for path in paths:
        try:
            stop = yield from _scanned(path, stats, canonical, full)
            if stop is None:
                continue
            yield from _checked(path, stats, canonical, full, block_bytes or BLOCK_BYTES, *stop)
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            if isinstance(exc, PermissionError):
                raise InputError(str(path), f"cannot read: {exc.strerror}") from None
            stats.bad(str(path), -1, f"file ends early or is not readable: {exc}")


def _scanned(path: Path, stats: ReadStats, canonical: dict[str, str], full: bool):
    """The DuckDB scan's chunks; returns None when it read the whole file, else
    (documents it took, why it stopped)."""
    scan = FileScan(path, FULL_SCHEMA if full else SCHEMA, compressed=_is_gzip(path))
    taken = 0
    for table in scan.tables():
        chunk = _table_chunk(table, table.num_rows, stats, str(path), canonical, full)
        if chunk is None:
            return taken, "a document there fails the checks"
        taken += table.num_rows
        stats.scanned += table.num_rows
        if len(chunk):
            yield chunk
    return None if scan.complete else (taken, scan.stopped_by)


def _checked(path: Path, stats: ReadStats, canonical: dict[str, str], full: bool, block_bytes: int,
             documents: int, reason: str) -> Iterator[EventChunk]:
    """The line-checking reader, from the document after the first `documents` to the end."""
    with _open(path) as fh:
        line = _skip_documents(fh, documents)
        stats.hand_over(str(path), line, reason)

        def too_long(number: int) -> None:
            stats.bad(str(path), number, f"line longer than {MAX_LINE_BYTES:,} bytes: skipped")
        for first, count, block in _blocks(fh, block_bytes, line, too_long):
            chunk = _fast(block, count, stats, str(path), canonical, full)
            if chunk is None:
                stats.slow_blocks += 1
                chunk = _slow(block, first, stats, str(path))
            if len(chunk):
                yield chunk


def _skip_documents(fh: BinaryIO, documents: int) -> int:
    """Read past the first `documents` non-blank lines; the number of the line after them."""
    line = 0
    while documents:
        raw = fh.readline()
        if not raw:
            break
        line += 1
        if raw.strip():
            documents -= 1
    return line + 1


def first_time(path: Path) -> int | None:
    """The time of a file's first readable document (rotated files replay oldest first); None without one."""
    try:
        with _open(path) as fh:
            head = fh.read(1 << 20)
    except (OSError, EOFError):
        return None
    for line in head.split(b"\n")[:100]:
        try:
            stamp = _field(orjson.loads(line), "@timestamp")
            return parse_timestamp(str(stamp)) if stamp is not None else None
        except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
            continue
    return None


def read_events(paths: Iterable[str | Path], stats: ReadStats | None = None) -> Iterator[ConnectionEvent]:
    """ConnectionEvents one by one, in file order (the agent's replay source)."""
    for chunk in read_chunks(paths, stats):
        for i in range(len(chunk)):
            yield chunk.event(i)


def prefetch(chunks: Iterator[EventChunk], depth: int = 1) -> Iterator[EventChunk]:
    """Read ahead in a thread (pyarrow parses without the GIL) while the caller works."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        queue.put(chunk, timeout=0.2)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as exc:   # handed to the consumer, raised there
            queue.put(exc)

    thread = threading.Thread(target=pump, name="replay-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _fast(block: memoryview, lines: int, stats: ReadStats, path: str, canonical: dict[str, str],
          full: bool = False) -> EventChunk | None:
    """The pyarrow path; None when the block needs the line-by-line path."""
    try:
        table = pj.read_json(
            pa.BufferReader(pa.py_buffer(block)),
            read_options=pj.ReadOptions(block_size=PARSE_BLOCK, use_threads=True),
            parse_options=pj.ParseOptions(explicit_schema=FULL_SCHEMA if full else SCHEMA,
                                          unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return _table_chunk(table, lines, stats, path, canonical, full)


def _table_chunk(table: pa.Table, lines: int, stats: ReadStats, path: str, canonical: dict[str, str],
                 full: bool) -> EventChunk | None:
    """The connection rows of a parsed table; None when one needs the line-by-line path to say what is wrong."""
    cols = Columns(table)
    action = cols["event.action"]
    dataset = cols["event.dataset"]
    is_conn_dataset = pc.fill_null(pc.equal(dataset, DATASET_CONNECTION), False)
    no_dataset = pc.is_null(dataset)
    other_kind = pc.fill_null(pc.is_in(cols["event.kind"], pa.array(sorted(_OTHER_KINDS))), False)
    conn_action = pc.fill_null(pc.is_in(action, pa.array(list(CODE_OF_VALUE))), False)
    if pc.any(pc.and_(no_dataset, pc.is_null(action))).as_py():
        return None
    # a socat.connection document with a foreign action is malformed: the slow path says so
    if pc.any(pc.and_(is_conn_dataset, pc.invert(conn_action))).as_py():
        return None
    selected = pc.or_(is_conn_dataset, pc.and_(pc.and_(no_dataset, pc.invert(other_kind)), conn_action))
    rows = int(pc.sum(pc.cast(selected, pa.int64())).as_py() or 0)
    total = len(table)
    if rows < total:
        cols = Columns(table.filter(selected))
    stamp = _times(cols["@timestamp"])
    src_ip, src_port = cols["source.ip"], cols["source.port"]
    dst_ip, dst_port = cols["destination.ip"], cols["destination.port"]
    action = cols["event.action"]
    if stamp is None or any(col.null_count for col in (action, src_ip, src_port, dst_ip, dst_port)):
        return None
    ports = np.concatenate([src_port.to_numpy(), dst_port.to_numpy()])
    if len(ports) and (ports.min() < 0 or ports.max() > 65535):
        return None
    lport = pc.coalesce(cols["socat.listener.port"], dst_port).to_numpy().astype(np.int64)
    src_enc, dst_enc = src_ip.dictionary_encode(), dst_ip.dictionary_encode()
    src_values = _canonical_ips(src_enc.dictionary.to_pylist(), canonical)
    dst_values = _canonical_ips(dst_enc.dictionary.to_pylist(), canonical)
    if src_values is None or dst_values is None:
        return None
    action_enc = action.dictionary_encode()
    codes = np.array([CODE_OF_VALUE[a] for a in action_enc.dictionary.to_pylist()], dtype=np.int8)
    action_codes = codes[action_enc.indices.to_numpy()] if len(codes) else np.empty(0, dtype=np.int8)
    direction = cols["network.direction"]
    egress = np.where(pc.is_null(direction).to_numpy(zero_copy_only=False), action_codes == CODE[Action.ATTEMPTED],
                      pc.fill_null(pc.equal(direction, "egress"), False).to_numpy(zero_copy_only=False))
    refused = (pc.fill_null(cols["socat.refused"], False).to_numpy(zero_copy_only=False)
               | (action_codes == CODE[Action.DENIED]))
    partial = pc.fill_null(cols["socat.source_partial"], False).to_numpy(zero_copy_only=False)
    duration = pc.fill_null(cols["event.duration"], -1).to_numpy().astype(np.int64)
    ids = cols["event.id"]
    stats.lines += lines
    stats.connections += rows
    stats.other_documents += total - rows
    return EventChunk(
        t=stamp,
        action=action_codes, egress=egress,
        src=src_enc.indices.to_numpy(), src_values=src_values, src_port=src_port.to_numpy().astype(np.int64),
        dst=dst_enc.indices.to_numpy(), dst_values=dst_values, dst_port=dst_port.to_numpy().astype(np.int64),
        listener=lport, refused=refused, partial=partial, duration=duration,
        event_id=lambda i: ids[i].as_py(), source=path, extra=cols.extra() if full else None, id_column=ids,
    )


def _times(stamp: pa.Array) -> np.ndarray | None:
    """@timestamp (text) as int64 ns; None if one is missing or unreadable.

    Converted at once when every one carries a zone (Z or an offset, as the
    agent writes them) or none does, else one by one with `parse_timestamp`,
    which also refuses what pyarrow would wrap around (years outside 1678..2261)."""
    if stamp.null_count:
        return None
    if _years_within_range(stamp):
        for zone in ("UTC", None):
            try:
                return stamp.cast(pa.timestamp("ns", tz=zone)).cast(pa.int64()).to_numpy()
            except pa.ArrowInvalid:
                continue
    try:
        return np.fromiter((parse_timestamp(text) for text in stamp.to_pylist()), dtype=np.int64, count=len(stamp))
    except (ValueError, OverflowError):
        return None


def _years_within_range(stamp: pa.Array) -> bool:
    """Every time in 1678..2261, where nanoseconds since 1970 fit an int64 (ISO text sorts by year)."""
    if len(stamp) == 0:
        return True
    bounds = pc.min_max(stamp)
    return "1678" <= bounds["min"].as_py() and bounds["max"].as_py() < "2262"


def _canonical_ips(values: list[str], known: dict[str, str]) -> list[str] | None:
    """The canonical spelling of each address (as parse_connection gives it); None if one is not an address."""
    try:
        for value in values:
            if value not in known:
                known[value] = normalize_ip(value)
    except ValueError:
        return None
    return [known[value] for value in values]


def _slow(view: memoryview, first_line: int, stats: ReadStats, path: str) -> EventChunk:
    """Line by line: every bad line reported with its number, every good one kept."""
    block = bytes(view)
    if first_line == 1 and block.startswith(_BOM):
        block = block[len(_BOM):]         # a file saved with a byte order mark, as the scan reads it
    events: list[ConnectionEvent] = []
    for offset, line in enumerate(block.split(b"\n")[:-1] if block.endswith(b"\n") else block.split(b"\n")):
        number = first_line + offset
        stats.lines += 1
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            stats.bad(path, number, f"line longer than {MAX_LINE_BYTES:,} bytes: skipped")
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            stats.bad(path, number, f"not JSON ({exc})")
            continue
        if not isinstance(doc, dict):
            stats.bad(path, number, "not a JSON object")
            continue
        if not _is_connection(doc):
            stats.other_documents += 1
            continue
        try:
            events.append(parse_connection(doc))
        except DocumentError as exc:
            stats.bad(path, number, str(exc))
            continue
        except (TypeError, ValueError) as exc:
            stats.bad(path, number, f"bad field value ({exc})")
            continue
        stats.connections += 1
    return chunk_from_events(events, path)


def _is_connection(doc: dict) -> bool:
    dataset = _field(doc, "event.dataset")
    if dataset is not None:
        return dataset == DATASET_CONNECTION
    kind = _field(doc, "event.kind")
    if isinstance(kind, str) and kind in _OTHER_KINDS:
        return False
    action = _field(doc, "event.action")
    return action is None or (isinstance(action, str) and action in CODE_OF_VALUE)


def chunk_from_events(events: list[ConnectionEvent], source: str = "") -> EventChunk:
    """The columnar form of a list of events."""
    src, src_values = pd.factorize(pd.Series([e.source_ip for e in events], dtype=object))
    dst, dst_values = pd.factorize(pd.Series([e.destination_ip for e in events], dtype=object))
    ids = [e.id for e in events]
    return EventChunk(
        t=np.array([e.timestamp_ns for e in events], dtype=np.int64),
        action=np.array([CODE[e.action] for e in events], dtype=np.int8),
        egress=np.array([e.direction is Direction.EGRESS for e in events], dtype=bool),
        src=src.astype(np.int32), src_values=list(src_values),
        src_port=np.array([e.source_port for e in events], dtype=np.int64),
        dst=dst.astype(np.int32), dst_values=list(dst_values),
        dst_port=np.array([e.destination_port for e in events], dtype=np.int64),
        listener=np.array([e.listener.port if e.listener else e.destination_port for e in events], dtype=np.int64),
        refused=np.array([e.refused or e.action is Action.DENIED for e in events], dtype=bool),
        partial=np.array([e.source_partial for e in events], dtype=bool),
        duration=np.array([e.duration_ns if e.duration_ns is not None else -1 for e in events], dtype=np.int64),
        event_id=lambda i: ids[i], source=source, events=events,
    )
