"""The fields replay reads from a recorded document, and the action codes of its columns.

`FIELDS` is the one list: each field's dotted ECS path, its type, and
whether only full reads (policy checks) need it and under which name
`EventChunk.extra` carries it. The DuckDB scan and pyarrow's reader both
project `schema(full)`, built from it, and the table reader takes its
columns by the same paths (`Columns`); the line-by-line reader parses the
same fields with `monitor.ecs.parse_connection`. Adding a field is one row
here (and, for a full-read field, its use in `EventChunk.event`).

An action is stored as an int8 code, its index in `ACTIONS`; `CODE` names them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..events import Action


@dataclass(frozen=True, slots=True)
class Field:
    path: str                   # dotted ECS path
    kind: pa.DataType
    extra: str | None = None    # full reads only, as EventChunk.extra[extra]


FIELDS = (
    Field("@timestamp", pa.string()),      # text, converted the same way for both table readers
    Field("event.id", pa.string()),
    Field("event.action", pa.string()),
    Field("event.dataset", pa.string()),
    Field("event.kind", pa.string()),
    Field("event.duration", pa.int64()),
    Field("source.ip", pa.string()),
    Field("source.port", pa.int64()),
    Field("destination.ip", pa.string()),
    Field("destination.port", pa.int64()),
    Field("network.direction", pa.string()),
    Field("socat.listener.ip", pa.string(), extra="listener_ip"),
    Field("socat.listener.port", pa.int64()),
    Field("socat.listener.name", pa.string(), extra="listener_name"),
    Field("socat.refused", pa.bool_()),
    Field("socat.source_partial", pa.bool_()),
    Field("socat.session.id", pa.string(), extra="session"),
    Field("process.pid", pa.int64(), extra="pid"),
    Field("process.name", pa.string(), extra="comm"),
    Field("socat.netns.inode", pa.int64(), extra="netns"),
    Field("socat.netns.name", pa.string(), extra="netns_name"),
    Field("container.id", pa.string(), extra="container_id"),
    Field("container.name", pa.string(), extra="container_name"),
)

ACTIONS = (Action.ACCEPTED, Action.ATTEMPTED, Action.CLOSED, Action.DENIED)
CODE = {action: code for code, action in enumerate(ACTIONS)}     # Action -> int8 code
CODE_OF_VALUE = {action.value: code for action, code in CODE.items()}   # event.action text -> code


def schema(full: bool) -> pa.Schema:
    """The nested schema of the fields (all of them when `full`, else those detection needs)."""
    tree: dict = {}
    for field in FIELDS:
        if field.extra is None or full:
            *parents, leaf = field.path.split(".")
            node = tree
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = field.kind
    return pa.schema(_struct_fields(tree))


def _struct_fields(node: dict) -> list[pa.Field]:
    return [pa.field(name, pa.struct(_struct_fields(child)) if isinstance(child, dict) else child)
            for name, child in node.items()]


SCHEMA = schema(full=False)
FULL_SCHEMA = schema(full=True)


class Columns:
    """A parsed table's fields by dotted path (a struct's nulls carried to its children)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._top: dict[str, pa.Array] = {}

    def __getitem__(self, path: str) -> pa.Array:
        top, *rest = path.split(".")
        array = self._top.get(top)
        if array is None:
            array = self._top[top] = self.table.column(top).combine_chunks()
        for name in rest:
            array = pc.struct_field(array, name)
        return array

    def extra(self) -> dict[str, pa.Array]:
        """The full-read fields, by their `EventChunk.extra` names."""
        return {field.extra: self[field.path] for field in FIELDS if field.extra is not None}
