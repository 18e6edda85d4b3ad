"""Reloading a running agent (SIGHUP or `socat-monitor reload`).

The config is loaded again from the same `ConfigSource` as at start (the
file with the command-line overrides of `run`), with the policy it names,
and checked the same way. A config or policy that does not pass is refused
as a whole and nothing changes. Otherwise every changed setting that can
change at run time is applied, in this order: `enforce.never_block` first
(it protects hosts: blocks it now covers are lifted), the other enforcement
settings, detection (a new detector over the same baseline), the policy
(always re-read), the sinks (rebuilt), and the agent's own periods. A setting
that needs a restart keeps its old value and is named in the answer.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable

from ..config import Change, Config, changes, keep_restart_only
from ..errors import InputError, MonitorError
from ..events import now_ns
from ..policy import Policy
from ..status import ReloadResult
from ..yamlfile import InputErrors
from .wiring import make_detector, make_sinks, read_policy, sink_settings

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)


def reload(agent: Agent) -> ReloadResult:
    """Apply what changed; the answer says what changed, what was kept and why."""
    old = agent.config
    try:
        new = agent.options.source.load()
        policy = read_policy(new.agent.policy)
    except InputError as exc:
        log.error("reload rejected, nothing changed: %s", _text(exc))
        return ReloadResult(ok=False, policy=old.agent.policy, error=_text(exc))
    found = changes(old, new)
    kept = [f"{c.key}: {_short(c.old)} -> {_short(c.new)}: needs a restart, kept" for c in found if not c.live]
    new = keep_restart_only(old, new)
    failed = []
    for section, step in STEPS:
        problem = step(agent, old, new, policy)
        if problem:
            failed.append(section)
            kept.append(f"{section}: {problem}")
    agent.config = _with_sections(new, old, failed)
    changed = tuple(c.key for c in sorted(found, key=_applied_at) if c.live and _section(c) not in failed)
    for line in kept:
        log.error("reload: %s", line)
    log.info("reloaded: policy %s; changed: %s", new.agent.policy or "(none)", ", ".join(changed) or "nothing")
    return ReloadResult(ok=not kept, policy=new.agent.policy, changed=changed, rejected=tuple(kept))


def _enforce(agent: Agent, old: Config, new: Config, policy: Policy | None) -> str | None:
    if agent.enforcer is None or new.enforce == old.enforce:
        return None
    try:
        for event in agent.enforcer.reconfigure(new.enforce, now_ns()):
            agent.emit(event)
    except MonitorError as exc:
        try:
            agent.enforcer.reconfigure(old.enforce, now_ns())
        except MonitorError as again:
            return f"not applied ({exc}), and the old settings could not be restored: {again}"
        return f"not applied, the old settings are back: {exc}"
    return None


def _decide(agent: Agent, old: Config, new: Config, policy: Policy | None) -> str | None:
    """New decisions (and, with them, the detector's repeats): the block history is kept."""
    if (new.decide, new.detect.block_rules, new.enforce.default_ttl_s) == \
            (old.decide, old.detect.block_rules, old.enforce.default_ttl_s):
        return None
    agent.decider.reconfigure(new.decide, default_ttl_s=new.enforce.default_ttl_s, block_rules=new.detect.block_rules)
    return _new_detector(agent, new)


def _detect(agent: Agent, old: Config, new: Config, policy: Policy | None) -> str | None:
    return None if new.detect == old.detect else _new_detector(agent, new)


def _new_detector(agent: Agent, new: Config) -> None:
    agent.tick()   # what the old detector buffered is judged by it
    agent.detector = make_detector(new, agent.decider, agent.detector.baseline())
    agent.pipeline.replace_detector(agent.detector)


def _policy(agent: Agent, old: Config, new: Config, policy: Policy | None) -> str | None:
    try:
        agent.set_policy(policy, new)
    except (MonitorError, OSError) as exc:   # the policy is in force; its kernel part (drop sets, egress) is not
        return f"policy in force, but its kernel rules (drop sets, egress guard) could not be applied: {exc}"
    return None


def _sinks(agent: Agent, old: Config, new: Config, policy: Policy | None) -> str | None:
    if sink_settings(new) == sink_settings(old):
        return None
    agent.sinks.close()
    try:
        agent.sinks = make_sinks(new, agent.host, agent.sink_error)
    except (OSError, MonitorError) as exc:
        agent.sinks = make_sinks(old, agent.host, agent.sink_error)
        return f"not applied, the old sinks are back: {exc}"
    return None


STEPS: tuple[tuple[str, Callable[..., str | None]], ...] = (
    ("enforce", _enforce),     # never_block first: a safety setting
    ("decide", _decide),
    ("detect", _detect),
    ("policy", _policy),
    ("sinks", _sinks),
)
_SINK_SECTIONS = ("ndjson", "elasticsearch", "alert_feed", "webhook")


def _applied_at(change: Change) -> tuple[int, bool]:
    """Where a change is applied in the order of STEPS (never_block first; the agent's own settings last)."""
    names = [name for name, _ in STEPS]
    section = _section(change)
    return (names.index(section) if section in names else len(names), change.key != "enforce.never_block")


def _section(change: Change) -> str:
    head = change.key.split(".", 1)[0]
    return "sinks" if head in _SINK_SECTIONS else head


def _with_sections(new: Config, old: Config, failed: list[str]) -> Config:
    """`new`, with the sections whose step failed at their old values."""
    names = [n for n in failed if n not in ("sinks", "policy")] + (list(_SINK_SECTIONS) if "sinks" in failed else [])
    return dataclasses.replace(new, **{n: getattr(old, n) for n in names})


def _text(exc: InputError) -> str:
    return "\n".join(exc.lines()) if isinstance(exc, InputErrors) else str(exc)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
