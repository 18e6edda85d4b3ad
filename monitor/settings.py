"""Settings: a config dataclass field with its constraints declared beside it.

`setting(default, minimum=..., choices=..., check=..., live=...)` is a
dataclass field whose metadata says which values are valid and whether the
value can change while the agent runs. Everything that checks a setting
reads that one declaration:

- `section_schema(cls)` derives the JSON schema of a section (types, bounds,
  choices, patterns, and a `format` for each `check` function and duration),
  which `monitor.yamlfile.validate` applies with `FORMATS`, so every problem
  is one `FILE:LINE: key: problem`;
- `build_section` converts the validated mapping and checks the relations
  between fields (`at_least`, `excludes`) at the key the user wrote;
- `monitor.config` runs both at load, for the file and for command-line
  flags, so `config check`, `run` and a reload give the same verdict.

A field whose name ends in `_s` is a duration: seconds, or `500ms`, `20s`,
`15m`, `1h`, `7d`, under its name with or without the `_s`; it is never
negative.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import jsonschema

from .durations import DURATION_PATTERN, parse_duration
from .errors import InputError
from .yamlfile import InputErrors, KeyPath, Locator

FORMATS = jsonschema.FormatChecker(formats=())   # one entry per field with a check; filled by section_schema
DURATION_TEXT = "a duration: seconds, or 500ms, 20s, 15m, 1h, 7d"


@dataclass(frozen=True)
class Setting:
    """What values a setting takes, and whether it can change at run time."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None                  # exclusive minimum
    choices: tuple[Any, ...] | None = None      # of the value, or of each item of a list
    pattern: str | None = None
    check: Callable[[Any], Any] | None = None   # raises ValueError or InputError saying what is wrong
    expect: str | None = None                   # "what is expected" in messages
    at_least: str | None = None                 # another field of the section this one may not be below
    excludes: str | None = None                 # another field that may not be set together with this one
    required: bool = False                      # the section, when present, must give it
    live: bool = True                           # False: a reload cannot change it (needs a restart)


PLAIN = Setting()


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field with its constraints (see `Setting`)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"setting": Setting(**spec)})


def spec_of(f: dataclasses.Field) -> Setting:
    return f.metadata.get("setting", PLAIN)


def is_duration(f: dataclasses.Field) -> bool:
    return f.name.endswith("_s") and _unwrap_optional(f.type)[0] in (float, int)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _is_list(base: Any) -> bool:
    return typing.get_origin(base) in (tuple, list, frozenset, set)


def _type_schema(tp: Any) -> dict[str, Any]:
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp in (str, Path):
        return {"type": "string"}
    if _is_list(tp):
        item = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return {"type": "array", "items": _type_schema(item)}
    if typing.get_origin(tp) is dict:
        return {"type": "object"}
    return {}


def _bounds(spec: Setting) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name in (("minimum", "minimum"), ("maximum", "maximum"), ("above", "exclusiveMinimum"),
                      ("pattern", "pattern")):
        if getattr(spec, key) is not None:
            out[name] = getattr(spec, key)
    if spec.choices is not None:
        out["enum"] = list(spec.choices)
    return out


def _duration_check(spec: Setting) -> Callable[[Any], None]:
    """Bounds of a duration, checked on its value in seconds."""
    def check(value: Any) -> None:
        try:
            seconds = parse_duration(value)
        except InputError:
            raise ValueError("must be zero or positive") from None
        if spec.above is not None and not seconds > spec.above:
            raise ValueError(f"must be more than {spec.above:g}s")
        if spec.minimum is not None and seconds < spec.minimum:
            raise ValueError(f"must be at least {spec.minimum:g}s")
        if spec.maximum is not None and seconds > spec.maximum:
            raise ValueError(f"must be at most {spec.maximum:g}s")
        if spec.check is not None:
            spec.check(seconds)
    return check


def _register(name: str, check: Callable[[Any], Any], typed: dict[str, Any]) -> None:
    """A format that runs `check` on values of the right type (the schema's type keywords report the others)."""
    of_type = jsonschema.Draft202012Validator(typed)

    def run(value: Any) -> bool:
        if value is None or not of_type.is_valid(value):
            return True
        try:
            check(value)
        except InputError as exc:
            raise ValueError(exc.message) from None
        return True
    FORMATS.checks(name, raises=ValueError)(run)


def field_schema(cls: type, f: dataclasses.Field) -> dict[str, Any]:
    """The JSON schema of one setting, its constraints included."""
    spec = spec_of(f)
    base, optional = _unwrap_optional(f.type)
    check = spec.check
    if is_duration(f):
        schema: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": DURATION_PATTERN}],
                                  "x-expect": DURATION_TEXT}
        check = _duration_check(spec)
    else:
        schema = _type_schema(base)
        target = schema["items"] if _is_list(base) and spec.choices is not None else schema
        target.update(_bounds(spec))
        if spec.expect:
            schema["x-expect"] = spec.expect
    if optional:
        schema = {"anyOf": [schema, {"type": "null"}]}
    if check is not None:
        name = f"{cls.__module__}.{cls.__qualname__}.{f.name}"
        _register(name, check, dict(schema))
        schema["format"] = name
    return schema


def yaml_keys(cls: type) -> dict[str, dataclasses.Field]:
    """YAML key -> field; `*_s` fields also answer to the name without `_s`."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, dataclasses.Field] = {}
    for f in fields(cls):
        f.type = hints[f.name]
        keys[f.name] = f
        if f.name.endswith("_s"):
            keys[f.name[:-2]] = f
    return keys


def section_schema(cls: type) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {key: field_schema(cls, f) for key, f in yaml_keys(cls).items()},
    }


def convert(f: dataclasses.Field, value: Any) -> Any:
    """A schema-valid YAML value as the field's Python type."""
    base, _ = _unwrap_optional(f.type)
    if value is None:
        return None
    if is_duration(f):
        return parse_duration(value)
    if typing.get_origin(base) in (tuple, frozenset, set):
        return typing.get_origin(base)(value)
    if base is float:
        return float(value)
    if base is int and not isinstance(value, bool):
        return int(value)           # the schema's integer takes 24.0 too
    return value


def relation_problems(section: Any) -> list[tuple[str, str]]:
    """(field, problem) for each broken `at_least` / `excludes` relation of a built section."""
    out = []
    for f in fields(section):
        spec = spec_of(f)
        value = getattr(section, f.name)
        if spec.at_least is not None and value < getattr(section, spec.at_least):
            other = spec.at_least
            out.append((f.name, f"must be at least {other.removesuffix('_s')} ({getattr(section, other):g})"))
        if spec.excludes is not None and value and getattr(section, spec.excludes):
            out.append((f.name, f"give either {f.name} or {spec.excludes}, not both"))
        if spec.required and not value:
            out.append((f.name, "required in this section"))
    return out


def _written_key(name: str, data: dict[str, Any]) -> str:
    """The key the user wrote for a field (`default_ttl` or `default_ttl_s`)."""
    short = name.removesuffix("_s")
    return short if short in data and name not in data else name


def build_section(cls: type, data: dict[str, Any] | None, locator: Locator, at: KeyPath = (),
                  **defaults: Any) -> Any:
    """A section dataclass from its schema-validated mapping; InputErrors at the key of a broken relation."""
    data = data or {}
    keys = yaml_keys(cls)
    values = dict(defaults)
    for key, value in data.items():
        values[keys[key].name] = convert(keys[key], value)
    section = cls(**values)
    problems = [locator.error(at + (_written_key(name, data),), problem)
                for name, problem in relation_problems(section)]
    if problems:
        raise InputErrors(problems)
    return section


def restart_only(cls: type) -> frozenset[str]:
    """Fields of a section that a reload cannot change."""
    return frozenset(f.name for f in fields(cls) if not spec_of(f).live)
