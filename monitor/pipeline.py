"""The decision pipeline: one record in, the records to write out.

`Pipeline.process` takes a captured record, runs the declared policy and
the detectors over it (not over an accept whose source the capture knows only
in part: `ConnectionEvent.source_partial`), audits new socat processes, and
hands every alert to the decision stage (`monitor.decide.Decider`), which decides and carries out
blocks through the `Enforcer` interface. It holds no threads and does no I/O
of its own (the enforcer and the audit's /proc read are the edges it calls),
so the agent stays a thin loop around it.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol

from .decide import Decider
from .events import (
    Action,
    Alert,
    ConnectionEvent,
    Listener,
    ProcessEvent,
    ProcessInfo,
    Record,
)

log = logging.getLogger(__name__)


class PolicyChecker(Protocol):
    def check(self, event: ConnectionEvent) -> list[Alert]: ...
    def listener_name(self, port: int, process: ProcessInfo | None = None) -> str | None: ...


class AnomalyDetector(Protocol):
    def watch(self, port: int, t_ns: int) -> None: ...
    def observe(self, event: ConnectionEvent, flagged: bool = False) -> list[Alert]: ...
    def tick(self, now_ns: int) -> list[Alert]: ...


Auditor = Callable[[ProcessEvent], list[Alert]]


class Pipeline:
    """Policy, detection, audit and enforcement decisions for one agent."""

    def __init__(
        self,
        *,
        policy: PolicyChecker | None = None,
        detector: AnomalyDetector | None = None,
        auditor: Auditor | None = None,
        decider: Decider,
    ) -> None:
        self.policy = policy
        self.detector = detector
        self.auditor = auditor
        self.decider = decider

    def replace_policy(self, policy: PolicyChecker | None) -> None:
        """Swap the policy in force (reload); detector state is kept."""
        self.policy = policy

    def replace_detector(self, detector: AnomalyDetector | None) -> None:
        """Swap the detector (reload of detect settings); the caller hands its baseline over."""
        self.detector = detector

    def process(self, record: Record) -> list[Record]:
        """The record itself (named by policy), then the alerts and blocks it caused."""
        if record.__class__ is ConnectionEvent:   # most records: exact class first
            if self.policy is not None:
                self._name_listener(record)
            if record.source_partial:   # a source known to 64 bits at most is written, not judged
                return [record]
            alerts = self._judge(record)
        elif isinstance(record, ProcessEvent) and record.action is Action.PROCESS_STARTED and self.auditor is not None:
            alerts = self.auditor(record)
        else:
            return [record]
        if not alerts:   # most records: nothing to decide
            return [record]
        return [record, *self._decide(alerts)]

    def _judge(self, event: ConnectionEvent) -> list[Alert]:
        alerts = self.policy.check(event) if self.policy is not None else []
        if self.detector is not None:
            found = self.detector.observe(event, flagged=bool(alerts))
            if found:
                alerts = alerts + found
        return alerts

    def watch(self, ports: Iterable[int], now_ns: int) -> None:
        """The agent watches these listening ports from `now_ns` (those it already watched keep their start)."""
        if self.detector is not None:
            for port in ports:
                self.detector.watch(port, now_ns)

    def tick(self, now_ns: int) -> list[Record]:
        """Periodic work: micro-batch detection and block expiry."""
        out: list[Record] = []
        if self.detector is not None:
            out.extend(self._decide(self.detector.tick(now_ns)))
        for blocker in self.decider.blockers.values():
            out.extend(blocker.expire(now_ns))
        return out

    def alerts(self, alerts: Iterable[Alert]) -> list[Record]:
        """Alerts raised outside the event flow (egress guard, audit at start)."""
        return self._decide(list(alerts))

    def _name_listener(self, event: ConnectionEvent) -> None:
        if event.listener is None or event.listener.name:
            return
        name = self.policy.listener_name(event.listener.port, event.process)
        if name:
            event.listener = Listener(event.listener.ip, event.listener.port, name)

    def _decide(self, alerts: list[Alert]) -> list[Record]:
        return self.decider.decide(alerts)
