"""The agent's configuration: one YAML file, validated once, flags on top.

Each stage owns its settings as a dataclass with defaults (`CaptureConfig`,
`DetectConfig`, `EnforceConfig`, the sinks' configs); this module gathers them
into one `Config`, derives the file's JSON schema from those dataclasses (so
the schema can never drift from the code), validates with line-numbered
errors, and applies command-line overrides. A field whose name ends in `_s`
is a duration: the file may give it as seconds or as `500ms`, `20s`, `15m`,
`1h`, `7d`, under its name with or without the `_s` (`default_ttl: 10m`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .capture import CaptureConfig
from .control import DEFAULT_SOCKET
from .decide import DecideConfig
from .detect.config import DURATION_PATTERN, DetectConfig, parse_duration
from .enforce import EnforceConfig
from .errors import InputError
from .metrics import DEFAULT_LISTEN
from .sinks import AlertFeedConfig, ElasticsearchConfig, NdjsonConfig
from .yamlfile import FlagLocator, load_yaml, validate

DEFAULT_CONFIG_PATH = "/etc/socat-monitor/config.yaml"


@dataclass
class AgentConfig:
    """Top-level settings of the agent itself."""

    output: str = "/var/log/socat-monitor"          # NDJSON events and alerts
    policy: str | None = None                       # policy file applied live
    state_dir: str = "/var/lib/socat-monitor"       # default home of baseline, block state, spool
    baseline: str | None = None                     # learned baseline (default <state_dir>/baseline.json)
    control_socket: str = DEFAULT_SOCKET
    metrics: str | None = DEFAULT_LISTEN            # HOST:PORT of /metrics; null disables
    heartbeat_interval_s: float = 60.0
    queue_size: int = 200_000                       # records between capture and pipeline
    tick_interval_s: float = 0.5                    # detector micro-batches, block expiry


@dataclass
class Config:
    agent: AgentConfig = field(default_factory=AgentConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    enforce: EnforceConfig = field(default_factory=EnforceConfig)
    ndjson: NdjsonConfig = field(default_factory=lambda: NdjsonConfig(directory=AgentConfig.output))
    elasticsearch: ElasticsearchConfig | None = None
    alert_feed: AlertFeedConfig | None = None
    source: str | None = None                       # the file it came from


SECTIONS: dict[str, type] = {
    "capture": CaptureConfig,
    "detect": DetectConfig,
    "decide": DecideConfig,
    "enforce": EnforceConfig,
    "ndjson": NdjsonConfig,
    "elasticsearch": ElasticsearchConfig,
    "alert_feed": AlertFeedConfig,
}
OPTIONAL_SECTIONS = {"elasticsearch", "alert_feed"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_schema(name: str, tp: Any) -> dict[str, Any]:
    base, optional = _unwrap_optional(tp)
    if name.endswith("_s") and base in (float, int):
        schema: dict[str, Any] = {"anyOf": [{"type": "number", "minimum": 0},
                                            {"type": "string", "pattern": DURATION_PATTERN}],
                                  "description": "a duration: seconds, or 500ms, 20s, 15m, 1h, 7d"}
    elif base is bool:
        schema = {"type": "boolean"}
    elif base is int:
        schema = {"type": "integer"}
    elif base is float:
        schema = {"type": "number"}
    elif base in (str, Path):
        schema = {"type": "string"}
    elif typing.get_origin(base) in (tuple, list, frozenset, set):
        item = typing.get_args(base)[0] if typing.get_args(base) else str
        schema = {"type": "array", "items": _type_schema("", item)}
    elif typing.get_origin(base) is dict:
        schema = {"type": "object"}
    else:
        schema = {}
    return {"anyOf": [schema, {"type": "null"}]} if optional else schema


def _yaml_keys(cls: type) -> dict[str, dataclasses.Field]:
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
        "properties": {key: _type_schema(f.name, f.type) for key, f in _yaml_keys(cls).items()},
    }


def config_schema() -> dict[str, Any]:
    """The JSON schema of the config file, derived from the dataclasses."""
    props = dict(section_schema(AgentConfig)["properties"])
    for name, cls in SECTIONS.items():
        sub = section_schema(cls)
        props[name] = {"anyOf": [sub, {"type": "null"}]} if name in OPTIONAL_SECTIONS else sub
    return {"type": "object", "additionalProperties": False, "properties": props}


def _convert(f: dataclasses.Field, value: Any, where: str) -> Any:
    base, _ = _unwrap_optional(f.type)
    if value is None:
        return None
    if f.name.endswith("_s") and base in (float, int):
        return parse_duration(value, where)
    if typing.get_origin(base) in (tuple, frozenset, set):
        return typing.get_origin(base)(value)
    if base is float:
        return float(value)
    if base is int and not isinstance(value, bool):
        return int(value)           # the schema's integer takes 24.0 too
    return value


def build_section(cls: type, data: dict[str, Any] | None, where: str,
                  key_where: Callable[[str], str] | None = None, **defaults: Any) -> Any:
    """A section dataclass from its YAML mapping (already schema-validated).

    `where` locates the section, `key_where(key)` one of its keys: a value the
    dataclass refuses is reported at the key it names."""
    values = dict(defaults)
    keys = _yaml_keys(cls)
    data = data or {}
    for key, value in data.items():
        f = keys[key]
        values[f.name] = _convert(f, value, f"{key_where(key) if key_where else where}: {key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise _refused(str(exc), data, where, key_where) from None


def _refused(message: str, data: dict[str, Any], where: str,
             key_where: Callable[[str], str] | None) -> InputError:
    """A dataclass's `name: problem` (or `section.name: problem`) at the key the user wrote for it."""
    name, sep, problem = message.partition(": ")
    name = name.rsplit(".", 1)[-1]
    for key in (name, name.removesuffix("_s")):
        if sep and key_where is not None and key in data:
            return InputError(key_where(key), f"{key}: {problem}")
    return InputError(where, message)


def section_from_flags(cls: type, values: dict[str, Any], flag: str, base: Any = None) -> Any:
    """A section dataclass from settings given as flags (on top of `base`), checked as the config file's is."""
    validate(values, section_schema(cls), FlagLocator(flag))
    start = {f.name: getattr(base, f.name) for f in fields(base)} if base is not None else {}
    return build_section(cls, values, flag, key_where=lambda _key: flag, **start)


def load_config(path: str | Path | None) -> Config:
    """The config in `path` (or all defaults when None); InputError names file:line and key."""
    if path is None:
        return Config()
    data, locator = load_yaml(path)
    if data is None:
        data = {}
    validate(data, config_schema(), locator, path)
    agent = build_section(AgentConfig, {k: v for k, v in data.items() if k not in SECTIONS}, str(path),
                          key_where=lambda key: locator.where((key,)))
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        if name in OPTIONAL_SECTIONS and data.get(name) is None:
            continue
        extra = {"directory": agent.output} if name == "ndjson" else {}
        sections[name] = build_section(cls, data.get(name), f"{locator.where((name,))}: {name}",
                                       key_where=lambda key, n=name: f"{locator.where((n, key))}: {n}",
                                       **extra)
    return Config(agent=agent, source=str(path), **sections)


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy with flag values applied; None values mean 'flag not given'."""
    updated = {}
    for name, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            continue
        current = getattr(config, name)
        if current is None:
            current = SECTIONS[name](**given) if name in SECTIONS else None
            updated[name] = current
        else:
            updated[name] = dataclasses.replace(current, **given)
    return place_state(dataclasses.replace(config, **updated))


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def place_state(config: Config) -> Config:
    """Put every state file left at its default under `agent.state_dir`."""
    state = Path(config.agent.state_dir)
    agent = dataclasses.replace(config.agent, baseline=config.agent.baseline or str(state / "baseline.json"))
    enforce = config.enforce
    if enforce.state_file == _default(EnforceConfig, "state_file"):
        enforce = dataclasses.replace(enforce, state_file=str(state / "blocks.json"))
    es = config.elasticsearch
    if es is not None and Path(es.spool_dir) == Path(_default(ElasticsearchConfig, "spool_dir")):
        derived = Path(es.dead_letter_path) == Path(es.spool_dir) / "dead-letter.ndjson"
        es = dataclasses.replace(es, spool_dir=state / "spool",
                                 dead_letter_path=None if derived else es.dead_letter_path)
    ndjson = config.ndjson
    if Path(ndjson.directory) != Path(agent.output) and Path(ndjson.directory) == Path(AgentConfig.output):
        ndjson = dataclasses.replace(ndjson, directory=Path(agent.output))
    return dataclasses.replace(config, agent=agent, enforce=enforce, elasticsearch=es, ndjson=ndjson)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def to_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, for `config show`."""
    out: dict[str, Any] = dataclasses.asdict(config.agent)
    for name in SECTIONS:
        value = getattr(config, name)
        out[name] = dataclasses.asdict(value) if value is not None else None
    return _plain(out)
