"""The agent's configuration: one YAML file, validated once at load, flags on top.

Each stage owns its settings as a dataclass whose fields carry their
constraints (`monitor.settings.setting`): `CaptureConfig`, `DetectConfig`,
`EngineConfig` of the policy engine, `EnforceConfig`, the sinks' configs. This module gathers them into one
`Config`, derives the file's JSON schema from them (so the schema can never
drift from the code), validates with line-numbered errors, applies
command-line overrides (checked the same way), and says which settings
differ between two configs and whether a reload may change them.
`ConfigSource` is a file and the overrides on top of it: what `run` loads at
start and a reload loads again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .capture import CaptureConfig
from .control import DEFAULT_SOCKET
from .decide import DecideConfig
from .detect import DetectConfig
from .enforce import EnforceConfig
from .metrics import DEFAULT_LISTEN, check_listen
from .settings import FORMATS, build_section, restart_only, section_schema, setting, spec_of
from .sinks import AlertFeedConfig, ColumnarConfig, ElasticsearchConfig, NdjsonConfig, WebhookConfig
from .yamlfile import FlagLocator, InputErrors, load_yaml, validate
from .policy.engine import EngineConfig

DEFAULT_CONFIG_PATH = "/etc/socat-monitor/config.yaml"


@dataclass
class AgentConfig:
    """Top-level settings of the agent itself."""

    output: str = "/var/log/socat-monitor"          # NDJSON events and alerts
    policy: str | None = None                       # policy file applied live
    state_dir: str = setting("/var/lib/socat-monitor", live=False)   # default home of baseline, block state, spool
    baseline: str | None = setting(None, live=False)   # learned baseline (default <state_dir>/baseline.json)
    control_socket: str = setting(DEFAULT_SOCKET, live=False)
    metrics: str | None = setting(DEFAULT_LISTEN, check=check_listen, live=False)   # HOST:PORT of /metrics; null disables
    heartbeat_interval_s: float = setting(60.0, above=0)
    queue_size: int = setting(200_000, minimum=64, live=False)   # records between capture and pipeline
    tick_interval_s: float = setting(0.5, above=0)               # detector micro-batches, block expiry


@dataclass
class Config:
    agent: AgentConfig = field(default_factory=AgentConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    policy_engine: EngineConfig = field(default_factory=EngineConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    enforce: EnforceConfig = field(default_factory=EnforceConfig)
    ndjson: NdjsonConfig = field(default_factory=lambda: NdjsonConfig(directory=AgentConfig.output))
    columnar: ColumnarConfig = field(default_factory=ColumnarConfig)
    elasticsearch: ElasticsearchConfig | None = None
    alert_feed: AlertFeedConfig | None = None
    webhook: WebhookConfig | None = None
    source: str | None = None                       # the file it came from


SECTIONS: dict[str, type] = {
    "capture": CaptureConfig,
    "detect": DetectConfig,
    "policy_engine": EngineConfig,
    "decide": DecideConfig,
    "enforce": EnforceConfig,
    "ndjson": NdjsonConfig,
    "columnar": ColumnarConfig,
    "elasticsearch": ElasticsearchConfig,
    "alert_feed": AlertFeedConfig,
    "webhook": WebhookConfig,
}
OPTIONAL_SECTIONS = {"elasticsearch", "alert_feed", "webhook"}
ALL_SECTIONS: dict[str, type] = {"agent": AgentConfig, **SECTIONS}   # "agent": the top-level keys


def config_schema() -> dict[str, Any]:
    """The JSON schema of the config file, derived from the dataclasses."""
    props = dict(section_schema(AgentConfig)["properties"])
    for name, cls in SECTIONS.items():
        sub = section_schema(cls)
        props[name] = {"anyOf": [sub, {"type": "null"}]} if name in OPTIONAL_SECTIONS else sub
    return {"type": "object", "additionalProperties": False, "properties": props}


def _at(name: str) -> tuple[str, ...]:
    """Key path of a section in the file (the agent's own settings are at the top level)."""
    return () if name == "agent" else (name,)


def section_from_flags(cls: type, values: dict[str, Any], flag: str, at: tuple[str, ...] = (),
                       base: Any = None) -> Any:
    """A section dataclass from settings given as flags (on top of `base`), checked as the config file's is."""
    locator = FlagLocator(flag)
    data, schema = _plain(values), section_schema(cls)
    for key in reversed(at):
        data, schema = {key: data}, {"type": "object", "properties": {key: schema}}
    validate(data, schema, locator, formats=FORMATS)
    start = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)} if base is not None else {}
    return build_section(cls, _plain(values), locator, at, **start)


def load_config(path: str | Path | None) -> Config:
    """The config in `path` (or all defaults when None); InputErrors name file:line and key of every problem."""
    if path is None:
        return Config()
    data, locator = load_yaml(path)
    if data is None:
        data = {}
    validate(data, config_schema(), locator, path, formats=FORMATS)
    problems: list = []
    built: dict[str, Any] = {}
    for name, cls in ALL_SECTIONS.items():
        if name in OPTIONAL_SECTIONS and data.get(name) is None:
            continue
        section = {k: v for k, v in data.items() if k not in SECTIONS} if name == "agent" else data.get(name)
        extra = {"directory": built["agent"].output} if name == "ndjson" else {}
        try:
            built[name] = build_section(cls, section, locator, _at(name), **extra)
        except InputErrors as exc:
            problems += exc.problems
    if problems:
        raise InputErrors(problems)
    return Config(source=str(path), **built)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy with flag values applied (None means 'flag not given'), checked as the file's values are."""
    updated = {}
    for name, values in sections.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            updated[name] = section_from_flags(ALL_SECTIONS[name], given, "command line", _at(name),
                                               base=getattr(config, name))
    return place_state(dataclasses.replace(config, **updated))


@dataclass(frozen=True)
class ConfigSource:
    """A config file (or none) and the command-line overrides on top: loaded at start and again at reload."""

    path: str | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def load(self) -> Config:
        return with_overrides(load_config(self.path), **self.overrides)


@dataclass(frozen=True)
class Change:
    """One setting that differs between two configs."""

    key: str            # `enforce.never_block`, `policy` (top level), or a whole optional section
    old: Any
    new: Any
    live: bool          # a reload may change it


def changes(old: Config, new: Config) -> list[Change]:
    """Every setting that differs, section by section in file order."""
    out: list[Change] = []
    for name, cls in ALL_SECTIONS.items():
        before, after = getattr(old, name), getattr(new, name)
        if before is None or after is None:
            if before != after:
                out.append(Change(name, _section_data(before), _section_data(after), not restart_only(cls)))
            continue
        for f in fields(cls):
            a, b = getattr(before, f.name), getattr(after, f.name)
            if a != b:
                out.append(Change(".".join(_at(name) + (f.name,)), _plain(a), _plain(b), spec_of(f).live))
    return out


def _section_data(section: Any) -> Any:
    return None if section is None else _plain(dataclasses.asdict(section))


def keep_restart_only(old: Config, new: Config) -> Config:
    """`new` with every setting a reload cannot change set back to its value in `old`."""
    updated = {}
    for name, cls in ALL_SECTIONS.items():
        before, after = getattr(old, name), getattr(new, name)
        if before is None or after is None:
            continue
        updated[name] = dataclasses.replace(after, **{n: getattr(before, n) for n in restart_only(cls)})
    return dataclasses.replace(new, **updated)


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def journal_name(netns: str | None) -> str:
    """The default block journal's file name: one per enforced namespace, so one namespace's blocks are
    never restored into another's."""
    return f"blocks-{netns or 'host'}.json"


def member_journal(enforce: EnforceConfig, netns: str | None) -> str:
    """The journal of namespace `netns` when `enforce` names several: beside `state_file`, named for it."""
    path = Path(enforce.state_file)
    first = enforce.namespaces[0] if enforce.namespaces else enforce.netns
    if path.name == journal_name(first):
        return str(path.with_name(journal_name(netns)))
    return str(path.with_name(f"{path.stem}-{netns or 'host'}{path.suffix}"))


def place_state(config: Config) -> Config:
    """Put every state file left at its default under `agent.state_dir` (the block journal named for
    the namespace enforced in)."""
    state = Path(config.agent.state_dir)
    agent = dataclasses.replace(config.agent, baseline=config.agent.baseline or str(state / "baseline.json"))
    enforce = config.enforce
    if enforce.state_file == _default(EnforceConfig, "state_file"):
        first = enforce.namespaces[0] if enforce.namespaces else enforce.netns
        enforce = dataclasses.replace(enforce, state_file=str(state / journal_name(first)))
    es = config.elasticsearch
    if es is not None and Path(es.spool_dir) == Path(_default(ElasticsearchConfig, "spool_dir")):
        derived = Path(es.dead_letter_path) == Path(es.spool_dir) / "dead-letter.ndjson"
        es = dataclasses.replace(es, spool_dir=state / "spool",
                                 dead_letter_path=None if derived else es.dead_letter_path)
    hook = config.webhook
    if hook is not None and Path(hook.spool_dir) == Path(_default(WebhookConfig, "spool_dir")):
        derived = Path(hook.dead_letter_path) == Path(hook.spool_dir) / "dead-letter.ndjson"
        hook = dataclasses.replace(hook, spool_dir=state / "webhook-spool",
                                   dead_letter_path=None if derived else hook.dead_letter_path)
    ndjson = config.ndjson
    if Path(ndjson.directory) != Path(agent.output) and Path(ndjson.directory) == Path(AgentConfig.output):
        ndjson = dataclasses.replace(ndjson, directory=Path(agent.output))
    return dataclasses.replace(config, agent=agent, enforce=enforce, elasticsearch=es, ndjson=ndjson, webhook=hook)


def to_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, for `config show`."""
    out: dict[str, Any] = dataclasses.asdict(config.agent)
    for name in SECTIONS:
        value = getattr(config, name)
        out[name] = dataclasses.asdict(value) if value is not None else None
    return _plain(out)
