"""What each anomaly rule is called, how severe it is, and how its alert is built.

Both the live fast path and the batch engine build alerts here, so an alert
looks the same whichever path raised it.
"""

from __future__ import annotations

from ..events import Alert, Listener, Severity
from .config import DetectConfig

NEW_SOURCE = "anomaly.new_source"
SOURCE_RATE = "anomaly.source_rate"
LISTENER_RATE = "anomaly.listener_rate"
SCAN = "anomaly.scan"
REFUSED_BURST = "anomaly.refused_burst"

_META = {
    NEW_SOURCE: ("New source", Severity.LOW),
    SOURCE_RATE: ("Source connection rate", Severity.HIGH),
    LISTENER_RATE: ("Listener connection rate", Severity.HIGH),
    SCAN: ("Scan", Severity.MEDIUM),
    REFUSED_BURST: ("Refused connection burst", Severity.MEDIUM),
}


def build_alert(
    config: DetectConfig,
    rule: str,
    t_ns: int,
    description: str,
    *,
    source_ip: str | None,
    listener_port: int,
    listener_ip: str,
    observed: float,
    threshold: float | None,
    baseline: float | None,
    window_s: float | None,
    trigger_id: str | None,
    top_sources: tuple[str, ...] = (),
    block_target: str | None = None,
) -> Alert:
    name, severity = _META[rule]
    block = rule in config.block_rules and (block_target or source_ip) is not None and rule != LISTENER_RATE
    score = None
    if threshold:
        score = round(observed / threshold, 3)
    return Alert(
        rule_id=rule,
        rule_name=name,
        description=description,
        ruleset="anomaly",
        severity=severity,
        timestamp_ns=t_ns,
        source_ip=source_ip,
        listener=Listener(ip=listener_ip, port=listener_port),
        trigger_event_ids=(trigger_id,) if trigger_id else (),
        observed=float(observed),
        baseline=None if baseline is None else float(baseline),
        threshold=None if threshold is None else float(threshold),
        score=score,
        window_s=window_s,
        top_sources=top_sources,
        block=block,
        block_target=(block_target or source_ip) if block else None,
    )


def describe_rate(who: str, count: int, window_s: float, threshold: float, baseline: float) -> str:
    return (f"{who}: {count} connections in {window_s:g}s, threshold {threshold:g} "
            f"(learned peak {baseline:g})")
