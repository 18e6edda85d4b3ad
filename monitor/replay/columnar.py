"""The columnar form of connection events: a Parquet segment beside each closed NDJSON events file.

`events-<start>-<n>.parquet` holds the connection events of
`events-<start>-<n>.ndjson` (its "twin"), one row per event with flat
ECS-named columns (`SEGMENT_SCHEMA`), zstd-compressed, a row group per
chunk the NDJSON reader delivered. `write_segment` builds it with that same
reader (`monitor.replay.reader.read_chunks`, every check and bad-line report
included), so a segment holds exactly the events `analyze` would read from
its twin, in the same chunks, and its key-value metadata keeps the twin's
size and the reader's counts (lines, other documents, malformed lines). It
writes `.NAME.tmp`, fsyncs and renames: a segment is whole or absent.

`segment_chunks(path, stats, full)` reads a segment back as `EventChunk`s, a
row group at a time, without parsing or checking again: addresses come back
as Parquet's dictionaries, times as int64, event ids only when an alert
asks for one. A file that is not a readable segment raises `BadSegment`.

Run as `python -m monitor.replay.columnar NDJSON` it writes NDJSON's segment
(the columnar sink runs it so, in a child process).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..events import Action, Direction
from .fields import ACTIONS, CODE
from .periods import segment_of, temporary_of
from .reader import EventChunk, ReadStats, first_time, read_chunks

FORMAT = "socat-monitor-segment-1"       # key-value metadata `socat.format`
COMPRESSION_LEVEL = 3

_DICT = pa.dictionary(pa.int32(), pa.string())
SEGMENT_SCHEMA = pa.schema([
    ("@timestamp", pa.timestamp("ns", tz="UTC")),
    ("event.id", pa.string()),
    ("event.action", _DICT),
    ("event.duration", pa.int64()),           # ns; null when unknown
    ("source.ip", _DICT),                     # canonical spelling
    ("source.port", pa.int32()),
    ("destination.ip", _DICT),
    ("destination.port", pa.int32()),
    ("network.direction", _DICT),             # ingress | egress, always set
    ("socat.listener.port", pa.int32()),      # the listener's port, else destination.port
    ("socat.refused", pa.bool_()),            # refused, or event.action denied
    ("socat.listener.ip", pa.string()),
    ("socat.listener.name", pa.string()),
    ("socat.session.id", pa.string()),
    ("process.pid", pa.int64()),
    ("process.name", pa.string()),
    ("socat.source_partial", pa.bool_()),     # the source known in part (not judged); absent in older segments
])
DETECT_COLUMNS = ["@timestamp", "event.action", "event.duration", "source.ip", "source.port", "destination.ip",
                  "destination.port", "network.direction", "socat.listener.port", "socat.refused"]
LATER_COLUMNS = {"socat.source_partial"}         # a segment written before them reads without them
EXTRA_COLUMNS = {"listener_ip": "socat.listener.ip", "listener_name": "socat.listener.name",
                 "session": "socat.session.id", "pid": "process.pid", "comm": "process.name"}
_DICTIONARIES = [f.name for f in SEGMENT_SCHEMA if pa.types.is_dictionary(f.type)]
_ACTION_VALUES = pa.array([a.value for a in ACTIONS])
_DIRECTIONS = pa.array([Direction.INGRESS.value, Direction.EGRESS.value])


class BadSegment(Exception):
    """A file named like a segment that is not a readable one (message: why)."""


@dataclass(frozen=True, slots=True)
class Counts:
    """What the NDJSON reader counted in a segment's twin, kept in the segment."""

    source: str                     # the twin's file name (bad lines are named in it)
    source_bytes: int
    first_time: int | None          # the twin's ordering time (`reader.first_time`)
    lines: int
    connections: int
    other_documents: int
    malformed: int
    bad_lines: tuple[tuple[int, str], ...] = ()

    def metadata(self) -> dict[str, str]:
        return {"socat.format": FORMAT, "socat.counts": json.dumps(
            {"source": self.source, "source_bytes": self.source_bytes, "first_time": self.first_time,
             "lines": self.lines, "connections": self.connections, "other_documents": self.other_documents,
             "malformed": self.malformed, "bad_lines": [list(b) for b in self.bad_lines]})}

    @classmethod
    def of(cls, metadata: dict[bytes, bytes] | None) -> Counts:
        if not metadata or metadata.get(b"socat.format") != FORMAT.encode():
            raise BadSegment(f"not a socat-monitor segment (no socat.format {FORMAT!r} in its metadata)")
        try:
            raw = json.loads(metadata[b"socat.counts"])
            first = raw["first_time"]
            return cls(str(raw["source"]), int(raw["source_bytes"]), None if first is None else int(first),
                       int(raw["lines"]), int(raw["connections"]), int(raw["other_documents"]), int(raw["malformed"]),
                       tuple((int(n), str(m)) for n, m in raw["bad_lines"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadSegment(f"unreadable socat.counts metadata ({exc})") from None


# --- writing -------------------------------------------------------------------------------------------

def write_segment(ndjson: Path, level: int = COMPRESSION_LEVEL) -> Counts:
    """Write `ndjson`'s segment (tmp, fsync, rename; the twin's permissions); the counts it keeps.
    OSError and InputError pass."""
    source_bytes = ndjson.stat().st_size
    target = segment_of(ndjson)
    tmp = temporary_of(target)
    stats = ReadStats()
    try:
        with pq.ParquetWriter(tmp, SEGMENT_SCHEMA, compression="zstd", compression_level=level,
                              use_dictionary=_DICTIONARIES, write_page_checksum=True) as writer:
            for chunk in read_chunks([ndjson], stats, full=True):
                writer.write_table(segment_table(chunk))
            counts = Counts(ndjson.name, source_bytes, first_time(ndjson), stats.lines, stats.connections,
                            stats.other_documents, stats.malformed,
                            tuple((bad.line, bad.message) for bad in stats.bad_lines))
            writer.add_key_value_metadata(counts.metadata())
        os.chmod(tmp, stat.S_IMODE(ndjson.stat().st_mode))      # readable by whom the twin is
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_table(chunk: EventChunk) -> pa.Table:
    """A chunk's rows in the segment's columns."""
    n = len(chunk)
    duration = pa.array(chunk.duration, mask=chunk.duration < 0)
    return pa.table({
        "@timestamp": pa.array(chunk.t, pa.timestamp("ns", tz="UTC")),
        "event.id": _ids(chunk),
        "event.action": pa.DictionaryArray.from_arrays(pa.array(chunk.action.astype(np.int32)), _ACTION_VALUES),
        "event.duration": duration,
        "source.ip": _dictionary(chunk.src, chunk.src_values),
        "source.port": pa.array(chunk.src_port.astype(np.int32)),
        "destination.ip": _dictionary(chunk.dst, chunk.dst_values),
        "destination.port": pa.array(chunk.dst_port.astype(np.int32)),
        "network.direction": pa.DictionaryArray.from_arrays(pa.array(chunk.egress.astype(np.int32)), _DIRECTIONS),
        "socat.listener.port": pa.array(chunk.listener.astype(np.int32)),
        "socat.refused": pa.array(chunk.refused),
        "socat.source_partial": pa.array(chunk.partial),
        **{column: _extra(chunk, name, n) for name, column in EXTRA_COLUMNS.items()},
    }, schema=SEGMENT_SCHEMA)


def _dictionary(codes: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values, pa.string()))


def _ids(chunk: EventChunk) -> pa.Array:
    if chunk.id_column is not None:
        return chunk.id_column.cast(pa.string())
    return pa.array([chunk.event_id(i) for i in range(len(chunk))], pa.string())


def _extra(chunk: EventChunk, name: str, n: int) -> pa.Array:
    kind = SEGMENT_SCHEMA.field(EXTRA_COLUMNS[name]).type
    if chunk.extra is not None:
        return chunk.extra[name].cast(kind)
    if chunk.events is None:
        return pa.nulls(n, kind)
    return pa.array([_event_extra(e, name) for e in chunk.events], kind)


def _event_extra(event, name: str):
    if name == "listener_ip":
        return event.listener.ip if event.listener else None
    if name == "listener_name":
        return event.listener.name if event.listener else None
    if name == "session":
        return event.session_id
    process = event.process
    if process is None:
        return None
    return process.pid if name == "pid" else process.comm


# --- reading -------------------------------------------------------------------------------------------

def open_segment(path: Path) -> tuple[pq.ParquetFile, Counts]:
    """The segment's file and counts; BadSegment says why it is not one."""
    try:
        file = pq.ParquetFile(path, read_dictionary=_DICTIONARIES, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise BadSegment(f"not a readable Parquet file ({_first_line(exc)})") from None
    counts = Counts.of(file.metadata.metadata)
    schema = file.schema_arrow
    for expected in SEGMENT_SCHEMA:
        if schema.get_field_index(expected.name) < 0:
            if expected.name in LATER_COLUMNS:
                continue
            raise BadSegment(f"no column {expected.name}")
        if schema.field(expected.name).type != expected.type:
            raise BadSegment(f"column {expected.name} is {schema.field(expected.name).type}, not {expected.type}")
    return file, counts


def segment_chunks(path: Path, stats: ReadStats, full: bool = False) -> Iterator[EventChunk]:
    """A segment's chunks, a row group at a time; its connections counted in `stats` as they go, its
    twin's other counts once all are read. BadSegment when the file or a row group cannot be read."""
    file, counts = open_segment(path)
    later = [name for name in sorted(LATER_COLUMNS) if file.schema_arrow.get_field_index(name) >= 0]
    columns = DETECT_COLUMNS + later + (list(EXTRA_COLUMNS.values()) if full else [])
    for group in range(file.num_row_groups):
        try:
            table = file.read_row_group(group, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise BadSegment(f"row group {group} unreadable ({_first_line(exc)})") from None
        chunk = _chunk(table, file, group, str(path), full)
        stats.connections += len(chunk)
        yield chunk
    stats.lines += counts.lines
    stats.other_documents += counts.other_documents
    stats.malformed += counts.malformed - len(counts.bad_lines)
    for line, message in counts.bad_lines:
        stats.bad(str(path.with_name(counts.source)), line, message)


def _chunk(table: pa.Table, file: pq.ParquetFile, group: int, source: str, full: bool) -> EventChunk:
    table = table.unify_dictionaries().combine_chunks()
    column = {name: table.column(name).chunk(0) if table.column(name).num_chunks else
              pa.array([], table.schema.field(name).type) for name in table.column_names}
    for name in DETECT_COLUMNS:
        if name != "event.duration" and column[name].null_count:
            raise BadSegment(f"row group {group}: {name} has nulls")
    action = column["event.action"]
    try:
        codes = np.array([CODE[Action(value)] for value in action.dictionary.to_pylist()], dtype=np.int8)
    except (KeyError, ValueError) as exc:
        raise BadSegment(f"row group {group}: event.action {exc} is not a connection's") from None
    direction = column["network.direction"]
    egress = np.array([value == Direction.EGRESS.value for value in direction.dictionary.to_pylist()], dtype=bool)
    src, dst = column["source.ip"], column["destination.ip"]
    partial = column.get("socat.source_partial")
    ids = _LazyIds(file, group)
    return EventChunk(
        t=column["@timestamp"].cast(pa.int64()).to_numpy(),
        action=codes[action.indices.to_numpy()] if len(codes) else np.empty(0, np.int8),
        egress=egress[direction.indices.to_numpy()] if len(egress) else np.empty(0, bool),
        src=src.indices.to_numpy(), src_values=src.dictionary.to_pylist(),
        src_port=column["source.port"].to_numpy().astype(np.int64),
        dst=dst.indices.to_numpy(), dst_values=dst.dictionary.to_pylist(),
        dst_port=column["destination.port"].to_numpy().astype(np.int64),
        listener=column["socat.listener.port"].to_numpy().astype(np.int64),
        refused=column["socat.refused"].to_numpy(zero_copy_only=False),
        partial=(partial.fill_null(False).to_numpy(zero_copy_only=False) if partial is not None
                 else np.zeros(len(action), dtype=bool)),
        duration=column["event.duration"].fill_null(-1).to_numpy(),
        event_id=ids, source=source,
        extra={name: column[path] for name, path in EXTRA_COLUMNS.items()} if full else None,
    )


class _LazyIds:
    """A row group's event ids, read when the first is asked for (an alert names its event)."""

    def __init__(self, file: pq.ParquetFile, group: int) -> None:
        self.file = file
        self.group = group
        self.ids: pa.Array | None = None

    def __call__(self, i: int) -> str | None:
        if self.ids is None:
            self.ids = self.file.read_row_group(self.group, columns=["event.id"]).column(0).combine_chunks()
        return self.ids[i].as_py()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def convert(source: Path, level: int) -> dict:
    """Write `source`'s segment: {"connections": N, "malformed": M}, or {"error": one line naming the file}."""
    from ..errors import InputError

    try:
        counts = write_segment(source, level)
    except InputError as exc:
        return {"error": f"{source}: cannot write its segment: {exc.message}"}
    except (OSError, pa.ArrowException) as exc:
        return {"error": f"{source}: cannot write its segment: {_first_line(exc)}"}
    return {"connections": counts.connections, "malformed": counts.malformed}


def serve(level: int) -> int:
    """Convert the file named by each stdin line (a JSON string), answering each with `convert`'s JSON
    line on stdout, until stdin ends: one child converts file after file without importing again.
    Whatever else would print to stdout (a library's progress output) goes to stderr instead: stdout
    carries the answers only."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        answers.write(json.dumps(convert(Path(json.loads(line)), level)) + "\n")
        answers.flush()
    return 0


def main(argv: list[str]) -> int:
    """`python -m monitor.replay.columnar NDJSON [LEVEL]`: write its segment, niced; exit 0, or 2 with one
    line. `--serve [LEVEL]`: `serve` (the columnar sink's child). A `.tmp` is private while written
    (umask 077; the segment gets the twin's mode when whole)."""
    os.umask(0o077)
    os.nice(10)
    level = int(argv[1]) if len(argv) > 1 else COMPRESSION_LEVEL
    if argv[0] == "--serve":
        return serve(level)
    result = convert(Path(argv[0]), level)
    if "error" in result:
        print(result["error"], file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
