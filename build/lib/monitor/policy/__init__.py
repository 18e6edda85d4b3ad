"""Declared policy: the model and its loader, the audit of socat command lines,
the runtime policy engine and policy suggestion.

Everything here is pure or reads policy files only (the audit of running
processes gets its /proc facts from `monitor.host`; socat's grammar is
`monitor.socat`), so the live agent and offline replay make identical decisions.
"""

from .audit import Finding, audit_command, audit_process, audit_running, finding_to_alert
from ..socat.grammar import AddressOption, SocatAddress, SocatCommand, parse_command_line
from .engine import EngineConfig, PolicyEngine
from .model import (
    POLICY_SCHEMA,
    Backend,
    Defaults,
    ListenerPolicy,
    Policy,
    Rate,
    load_policy,
    parse_policy,
    policy_reference,
)
from .suggest import suggest_policy

__all__ = [
    "POLICY_SCHEMA", "AddressOption", "Backend", "Defaults", "EngineConfig", "Finding", "ListenerPolicy", "Policy", "PolicyEngine", "Rate",
    "SocatAddress", "SocatCommand", "audit_command", "audit_process", "audit_running", "finding_to_alert",
    "load_policy", "parse_command_line", "parse_policy", "policy_reference", "suggest_policy",
]
