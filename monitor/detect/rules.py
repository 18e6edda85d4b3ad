"""How an anomaly alert is built (names and severities: the rule catalogue, `monitor.rules`).

Both the live fast path and the batch engine build alerts here, so an alert
looks the same whichever path raised it. Whether it blocks is the decision
stage's call (`monitor.decide`).
"""

from __future__ import annotations

from ..events import Alert, Listener
from ..rules import new_alert

NEW_SOURCE = "anomaly.new_source"
SOURCE_RATE = "anomaly.source_rate"
LISTENER_RATE = "anomaly.listener_rate"
SCAN = "anomaly.scan"
REFUSED_BURST = "anomaly.refused_burst"


def build_alert(
    rule: str,
    t_ns: int,
    description: str,
    *,
    source_ip: str | None,
    listener_port: int,
    source_network: str | None = None,
    listener_ip: str,
    observed: float,
    threshold: float | None,
    baseline: float | None,
    window_s: float | None,
    trigger_id: str | None,
    top_sources: tuple[str, ...] = (),
) -> Alert:
    score = None
    if threshold:
        score = round(observed / threshold, 3)
    return new_alert(
        rule,
        description=description,
        timestamp_ns=t_ns,
        source_ip=source_ip,
        source_network=source_network,
        listener=Listener(ip=listener_ip, port=listener_port),
        trigger_event_ids=(trigger_id,) if trigger_id else (),
        observed=float(observed),
        baseline=None if baseline is None else float(baseline),
        threshold=None if threshold is None else float(threshold),
        score=score,
        window_s=window_s,
        top_sources=top_sources,
    )


def describe_rate(who: str, count: int, window_s: float, threshold: float, baseline: float) -> str:
    return (f"{who}: {count} connections in {window_s:g}s, threshold {threshold:g} "
            f"(learned peak {baseline:g})")
