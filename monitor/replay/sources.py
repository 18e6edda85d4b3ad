"""Which file stands for each period `analyze` replays, and in what order.

The agent's output folder can hold, for one period, the NDJSON file
(`events-<start>-<n>.ndjson`), its Parquet segment (`.parquet`, see
`monitor.replay.columnar`), or both. `plan(paths)` reads each period once:
its segment when one exists and was made from the twin as it is now (same
size), else the NDJSON file, whichever of the two was named. `read_sources`
then streams them. A segment that turns out unreadable is reported as a bad
file (one line naming it) and its twin, when there is one, is read in its
place from where the segment stopped, so no event is lost or counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError
from .columnar import BadSegment, Counts, open_segment, segment_chunks
from .periods import is_ndjson, is_segment, segment_of, stem, twin_of
from .reader import EventChunk, ReadStats, first_time, read_chunks


@dataclass(frozen=True, slots=True)
class Source:
    """One period's file to read."""

    path: Path
    segment: bool               # a Parquet segment, else NDJSON
    twin: Path | None = None    # the NDJSON file a segment stands for (read if the segment fails)
    first: int | None = None    # ordering time (ns) of the period's first document
    note: str = ""              # why a segment named or found was not used


def plan(paths: Iterable[str | Path], columnar: bool = True) -> list[Source]:
    """The files to read, one per period, oldest first; InputError for a file that does not exist.

    `columnar` False reads NDJSON wherever a period has it, unless its segment was named.
    A segment not used where its twin is (unreadable, or made from a shorter file) says why in `note`."""
    chosen: dict[tuple[Path, str], Source] = {}
    order: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise InputError(str(path), "no such file")
        real = path.resolve()          # events.ndjson (the symlink) and its target are one file
        key = (real.parent, stem(real))
        if key not in chosen:
            order.append(key)
            chosen[key] = _choose(real if path.is_symlink() else path, columnar)
    sources = [chosen[key] for key in order]
    ranked = sorted(enumerate(sources), key=lambda s: (s[1].first is None, s[1].first or 0, s[0]))
    return [source for _i, source in ranked]


def _choose(path: Path, columnar: bool) -> Source:
    if not (is_segment(path) or is_ndjson(path)):
        return Source(path, False, first=first_time(path))      # another tool's file: NDJSON
    twin = twin_of(path) if is_segment(path) else path
    if twin is None:
        counts, _problem = _counts(path)
        return Source(path, True, first=counts.first_time if counts else None)   # read_sources reports a bad one
    segment = segment_of(twin)
    if not (columnar or is_segment(path)) or not segment.is_file():
        return Source(twin, False, first=first_time(twin))
    counts, problem = _counts(segment)
    if counts is not None and counts.source_bytes == _size(twin):
        return Source(segment, True, twin, counts.first_time)
    note = problem or f"made when {twin.name} had {counts.source_bytes:,} bytes, not {_size(twin):,}"
    return Source(twin, False, first=first_time(twin), note=f"{segment}: {note}: {twin.name} read instead")


def _counts(segment: Path) -> tuple[Counts | None, str]:
    """The segment's counts, or None and why it is not usable."""
    try:
        return open_segment(segment)[1], ""
    except BadSegment as exc:
        return None, f"not a usable Parquet segment ({exc})"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def read_sources(sources: list[Source], stats: ReadStats, full: bool = False) -> Iterator[EventChunk]:
    """Every source's chunks in order (`reader.read_chunks` for NDJSON, `segment_chunks` for segments)."""
    for source in sources:
        if source.note:
            stats.handovers.append(source.note)
        if source.segment:
            yield from _segment_or_twin(source, stats, full)
        else:
            yield from read_chunks([source.path], stats, full=full)


def _segment_or_twin(source: Source, stats: ReadStats, full: bool) -> Iterator[EventChunk]:
    delivered = 0
    try:
        for chunk in segment_chunks(source.path, stats, full):
            delivered += 1
            yield chunk
        return
    except BadSegment as exc:
        problem = f"not a usable Parquet segment ({exc})"
    if source.twin is None:
        stats.bad(str(source.path), -1, problem)
        return
    stats.handovers.append(f"{source.path}: {problem}: {source.twin.name} read from its chunk {delivered + 1}")
    yield from _twin_after(source.twin, delivered, stats, full)


def _twin_after(twin: Path, skip: int, stats: ReadStats, full: bool) -> Iterator[EventChunk]:
    """The twin's chunks after the first `skip`, which the segment delivered (its row groups are the
    twin's chunks, one each) and counted."""
    for index, chunk in enumerate(read_chunks([twin], stats, full=full)):
        if index < skip:
            stats.connections -= len(chunk)
            continue
        yield chunk
