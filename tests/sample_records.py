"""Real-looking records of every type, for sink, dashboard and benchmark tests."""

from __future__ import annotations

import itertools
import time

from monitor.events import (
    Action, Alert, BlockEvent, ConnectionEvent, Direction, Heartbeat, Listener, Outcome, PipelineError,
    ProcessEvent, ProcessInfo, Severity,
)

SOCAT = ProcessInfo(pid=4242, comm="socat", ppid=4000, tid=4242, uid=1000, gid=1000, user_name="relay",
                    executable="/usr/bin/socat", start_ns=time.time_ns() - 60_000_000_000,
                    args=("socat", "TCP-LISTEN:8443,fork,reuseaddr", "TCP:10.20.0.5:443"))
LISTENER = Listener(ip="0.0.0.0", port=8443, name="web")
_ports = itertools.count(40000)


def connection(i: int = 0, source_ip: str | None = None, action: Action = Action.ACCEPTED) -> ConnectionEvent:
    return ConnectionEvent(
        action=action, timestamp_ns=time.time_ns(), ktime_ns=time.monotonic_ns(),
        source_ip=source_ip or f"192.0.2.{i % 250 + 1}", source_port=next(_ports) % 65535 or 1,
        destination_ip="10.20.0.1", destination_port=8443, direction=Direction.INGRESS,
        process=SOCAT, listener=LISTENER, session_id=f"s-{i}",
    )


def egress(i: int = 0) -> ConnectionEvent:
    return ConnectionEvent(
        action=Action.ATTEMPTED, timestamp_ns=time.time_ns(), source_ip="10.20.0.1", source_port=50000 + i % 10000,
        destination_ip="10.20.0.5", destination_port=443, direction=Direction.EGRESS, process=SOCAT,
        listener=LISTENER, session_id=f"s-{i}",
    )


def closed(i: int = 0) -> ConnectionEvent:
    return ConnectionEvent(
        action=Action.CLOSED, timestamp_ns=time.time_ns(), source_ip="2001:db8::7", source_port=41000,
        destination_ip="2001:db8::1", destination_port=8443, process=SOCAT, listener=LISTENER,
        session_id=f"s-{i}", duration_ns=1_500_000_000, bytes_in=1200, bytes_out=64000,
        outcome=Outcome.SUCCESS,
    )


def alert(source_ip: str = "198.51.100.9", rule_id: str = "anomaly.scan", severity: Severity = Severity.HIGH) -> Alert:
    return Alert(
        rule_id=rule_id, rule_name="port scan", description=f"{source_ip} touched 40 ports in 10s",
        ruleset="anomaly", severity=severity, timestamp_ns=time.time_ns(), source_ip=source_ip,
        listener=LISTENER, process=SOCAT, trigger_event_ids=("a-1", "a-2"), observed=40.0, baseline=2.0,
        threshold=10.0, score=0.97, window_s=10.0, top_sources=(source_ip,), token="EXEC:/bin/sh",
        source_network="2001:db8:bad:1::/64",
        fix="remove EXEC", outcome=Outcome.FAILURE, block=True, block_target=source_ip,
    )


def every_kind() -> list:
    """One record of every type, with every optional field filled."""
    return [
        connection(1), egress(1), closed(1),
        ConnectionEvent(action=Action.DENIED, timestamp_ns=time.time_ns(), source_ip="203.0.113.4",
                        source_port=5555, destination_ip="10.20.0.1", destination_port=8443, process=SOCAT,
                        listener=LISTENER, refused=True, error="ECONNREFUSED", duration_ns=10,
                        outcome=Outcome.FAILURE),
        ProcessEvent(action=Action.PROCESS_ENDED, timestamp_ns=time.time_ns(), process=SOCAT, exit_code=1,
                     signal=15, ktime_ns=5),
        alert(),
        BlockEvent(action=Action.BLOCKED, timestamp_ns=time.time_ns(), target="198.51.100.0/24", ttl_s=600.0,
                   rule_id="anomaly.scan", reason="scan", alert_id="x-1"),
        PipelineError(stage="capture", message="ring buffer full", timestamp_ns=time.time_ns(), count=12),
        Heartbeat(timestamp_ns=time.time_ns(), counters=(("events", 10.0), ("lost", 0.0))),
    ]
