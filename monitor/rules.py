"""The rule catalogue: every rule id socat-monitor raises, once.

Each `Rule` says what the id is called, which ruleset raises it, how severe it
is by default, the MITRE ATT&CK technique it reveals (where one fits) and what
the decision stage does with it by default: `alert`, or `block` the source
(`scope` `address`, or `network`: its /24 or /64); for the policy's rules the
listener's `action` says it (`follows_listener`). `can_block` is false for
rules that name no single offender (a listener-wide rate, an audit finding).
Producers build their alerts with `new_alert` (name, ruleset and severity come
from here) and the repeats their dedup holds back with `repeat_alert`; ECS rendering, the alert feed, the dashboards, the decision stage
and the README's rule table read the same entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .events import Alert, Severity

ACTIONS = ("alert", "block")
SCOPES = ("address", "network")


@dataclass(frozen=True, slots=True)
class Technique:
    """A MITRE ATT&CK technique and the tactic it serves."""

    id: str
    name: str
    tactic_id: str
    tactic: str


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    ruleset: str                       # policy | anomaly | audit | enforce
    severity: Severity                 # default; a policy listener or the finding may raise or lower it
    technique: Technique | None = None
    action: str = "alert"              # default decision: alert | block
    scope: str = "address"             # what a block drops: address | network
    can_block: bool = True             # false: the alert names no single offender
    follows_listener: bool = False     # the policy listener's `action` decides (when decide.rules does not)


_PROXY = Technique("T1090", "Proxy", "TA0011", "Command and Control")
_REMOTE_SERVICES = Technique("T1133", "External Remote Services", "TA0001", "Initial Access")
_ENDPOINT_DOS = Technique("T1499", "Endpoint Denial of Service", "TA0040", "Impact")
_NETWORK_DOS = Technique("T1498", "Network Denial of Service", "TA0040", "Impact")
_DISCOVERY = Technique("T1046", "Network Service Discovery", "TA0007", "Discovery")
_INTERPRETER = Technique("T1059", "Command and Scripting Interpreter", "TA0002", "Execution")
_AITM = Technique("T1557", "Adversary-in-the-Middle", "TA0006", "Credential Access")

_LOW, _MEDIUM, _HIGH, _CRITICAL = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL


def _policy(rule_id: str, name: str, severity: Severity, technique: Technique | None = None) -> Rule:
    return Rule(rule_id, name, "policy", severity, technique, follows_listener=True)


def _anomaly(rule_id: str, name: str, severity: Severity, technique: Technique | None = None,
             **extra: Any) -> Rule:
    return Rule(rule_id, name, "anomaly", severity, technique, **extra)


def _audit(rule_id: str, name: str, severity: Severity, technique: Technique | None = None) -> Rule:
    return Rule(rule_id, name, "audit", severity, technique, can_block=False)


CATALOGUE: tuple[Rule, ...] = (
    Rule("policy.unknown_listener", "Connection to a listener not in the policy", "policy", _LOW),
    _policy("policy.source_denied", "Source not allowed by policy", _HIGH, _REMOTE_SERVICES),
    _policy("policy.backend_denied", "Backend not allowed by policy", _HIGH, _PROXY),
    _policy("policy.rate_exceeded", "Declared per-source rate exceeded", _MEDIUM, _ENDPOINT_DOS),
    _policy("policy.concurrency_exceeded", "Declared per-source concurrency exceeded", _MEDIUM, _ENDPOINT_DOS),
    _anomaly("anomaly.new_source", "New source", _LOW, scope="network"),
    _anomaly("anomaly.source_rate", "Source connection rate", _HIGH, _ENDPOINT_DOS),
    _anomaly("anomaly.listener_rate", "Listener connection rate", _HIGH, _NETWORK_DOS, can_block=False),
    _anomaly("anomaly.scan", "Scan", _MEDIUM, _DISCOVERY),
    _anomaly("anomaly.refused_burst", "Refused connection burst", _MEDIUM),
    _audit("audit.no_source_restriction", "Listener accepts any source", _MEDIUM),
    _audit("audit.exec_address", "Command execution address", _HIGH, _INTERPRETER),
    _audit("audit.unbounded_fork", "fork without max-children", _MEDIUM),
    _audit("audit.tls_no_verify", "TLS peer not verified", _HIGH, _AITM),
    _audit("audit.runs_as_root", "socat runs as root", _MEDIUM),
    _audit("audit.sloppy_mode", "Sloppy mode ignores an option", _HIGH),
    _audit("audit.all_interfaces", "Listener on all addresses", _HIGH),
    _audit("audit.risky_environment", "Risky environment variable", _MEDIUM),
    _audit("audit.vulnerable_version", "socat version with a known CVE", _HIGH),
    _audit("audit.policy_mismatch", "Command line contradicts the policy", _MEDIUM),
    _audit("audit.invalid_address", "socat would refuse this address", _HIGH),
    _audit("audit.invalid_option", "socat would refuse this option", _HIGH),
    _audit("audit.duplicate_option", "Option given twice", _LOW),
    _audit("audit.udp_fork_no_timeout", "UDP fork children never exit", _LOW),
    _audit("audit.traffic_dump", "Relayed data written to logs", _LOW),
    _audit("audit.unreadable_process", "socat process could not be audited", _LOW),
    _audit("audit.tcpwrap_fails_open", "tcpwrap without hosts.allow/hosts.deny", _HIGH),
    _audit("audit.findings_truncated", "More findings than are listed", _LOW),
    Rule("enforce.circuit_breaker", "Block circuit breaker tripped", "enforce", _HIGH, can_block=False),
)

RULES: dict[str, Rule] = {rule.id: rule for rule in CATALOGUE}
RULESETS: tuple[str, ...] = tuple(dict.fromkeys(rule.ruleset for rule in CATALOGUE))


def rule(rule_id: str) -> Rule:
    """The catalogue entry of `rule_id`; KeyError names an id nobody declared."""
    try:
        return RULES[rule_id]
    except KeyError:
        raise KeyError(f"rule {rule_id!r} is not in the catalogue (monitor/rules.py)") from None


def new_alert(rule_id: str, *, description: str, timestamp_ns: int, severity: Severity | None = None,
              **fields: Any) -> Alert:
    """An Alert of `rule_id`, its name, ruleset and (unless given) severity from the catalogue."""
    entry = rule(rule_id)
    return Alert(rule_id=entry.id, rule_name=entry.name, description=description, ruleset=entry.ruleset,
                 severity=entry.severity if severity is None else severity, timestamp_ns=timestamp_ns, **fields)


def repeat_alert(rule_id: str, timestamp_ns: int, source_ip: str | None, listener_action: str | None = None,
                 **decision_inputs: Any) -> Alert:
    """A repeat that a producer's dedup window or cooldown holds back: never written, so it carries
    only what the decision stage reads (no name, no description, no id; `decision_inputs`: the relay
    `process`, `listener_trusts_unprivileged`)."""
    return Alert(rule_id, "", "", rule(rule_id).ruleset, Severity.LOW, timestamp_ns, source_ip=source_ip,
                 listener_action=listener_action, deduplicated=True, id="", **decision_inputs)


def markdown_table() -> str:
    """The README's rule table, generated from the catalogue (a test keeps the README equal to it)."""
    lines = ["| rule | name | ruleset | severity | ATT&CK | default action | a block drops |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for entry in CATALOGUE:
        technique = f"{entry.technique.id} {entry.technique.name}" if entry.technique else "-"
        action = "the listener's `action`" if entry.follows_listener else entry.action
        scope = {"address": "the address", "network": "its /24 or /64"}[entry.scope] if entry.can_block else "never blocks"
        lines.append(f"| `{entry.id}` | {entry.name} | {entry.ruleset} | {entry.severity.name.lower()} "
                     f"| {technique} | {action} | {scope} |")
    return "\n".join(lines) + "\n"
