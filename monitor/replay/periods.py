"""A period's files by name: an NDJSON events file and the Parquet segment made from it.

`events-<start>-<n>.ndjson` (or `.ndjson.gz`) and `events-<start>-<n>.parquet`
hold the same period; `stem` is the name they share. A segment is written
as `.events-<start>-<n>.parquet.tmp` and renamed when whole. Plain names
only (no pyarrow), so the agent's columnar sink can use them.
"""

from __future__ import annotations

from pathlib import Path

SEGMENT_SUFFIX = ".parquet"
NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz")


def is_segment(path: Path) -> bool:
    return path.name.endswith(SEGMENT_SUFFIX)


def is_ndjson(path: Path) -> bool:
    return path.name.endswith(NDJSON_SUFFIXES)


def stem(path: Path) -> str:
    """The period's name shared by an NDJSON file and its segment (`events-<start>-<n>`)."""
    name = path.name
    for suffix in (SEGMENT_SUFFIX, *NDJSON_SUFFIXES):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def segment_of(ndjson: Path) -> Path:
    return ndjson.with_name(stem(ndjson) + SEGMENT_SUFFIX)


def temporary_of(segment: Path) -> Path:
    return segment.with_name(f".{segment.name}.tmp")


def twin_of(segment: Path) -> Path | None:
    """The NDJSON file a segment was made from, when it is still there."""
    for suffix in NDJSON_SUFFIXES:
        candidate = segment.with_name(stem(segment) + suffix)
        if candidate.is_file():
            return candidate
    return None
