"""`Agent`: one running socat-monitor agent, its parts, start and stop.

The main thread runs each record through the `Pipeline` (policy, detection,
audit, blocks), writes what comes out to the sinks, and does the periodic
work: detector ticks, block expiry, egress denials, heartbeats, listener
refresh, baseline saves and reloads. Errors of other threads (capture, the
sinks' own threads) reach it through `errors`, a queue, and are written as
`pipeline_error` records from here.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..capture import Capture
from ..config import Config, ConfigSource
from ..console import format_record
from ..control import ControlServer
from ..ecs import HostInfo
from ..enforce import EgressGuard
from ..events import (Action, Alert, ConnectionEvent, Heartbeat, Listener, PipelineError, ProcessEvent, ProcessInfo,
                      Record, now_ns)
from ..host import processes
from ..host.listeners import discover
from ..host.identity import Identities
from ..metrics import MetricsServer
from ..pipeline import Pipeline
from ..policy import Policy, audit_running, finding_to_alert
from ..policy.engine import dropped_alert
from ..status import LiveStatus, ReloadResult, RunSummary, to_json
from . import heap, report
from .report import ForgottenReport
from .auditing import AuditWorker
from .loops import CaptureReader, Handoff, Periodic, main_loop
from .reload import reload
from .wiring import egress_rules, engine, guards, home, make_decider, make_detector, make_enforcer, make_sinks, read_policy

log = logging.getLogger(__name__)

LISTENER_REFRESH_S = 5.0
DROP_READ_S = 1.0            # the drop listeners' dropped sources are read this often (reported within 2 s)
BASELINE_SAVE_S = 600.0
RELOAD_ANSWER_S = 10.0


@dataclass
class RunOptions:
    source: ConfigSource = field(default_factory=ConfigSource)   # loaded again at reload
    duration_s: float | None = None
    follow: Callable[[str], None] | None = None                  # where --follow lines go


class Agent:
    """One running socat-monitor agent."""

    def __init__(self, config: Config, options: RunOptions) -> None:
        heap.cap_arenas()   # before the sinks, the enforcer and the capture start their threads
        self.config = config
        self.options = options
        self.host = HostInfo.detect()
        self.status = LiveStatus(open_idle_s=config.policy_engine.open_idle_timeout_s)
        self.stop_event = threading.Event()
        self.reload_signal = threading.Event()
        self.reload_requests: queue.Queue[queue.Queue[ReloadResult]] = queue.Queue()
        self.errors: queue.Queue[PipelineError] = queue.Queue()
        self.handoff = Handoff(config.agent.queue_size)
        self.last_reload: ReloadResult | None = None
        self.policy = read_policy(config.agent.policy)
        self.home = home(config)
        self.identities = Identities()
        self.enforcer = make_enforcer(config)
        self.decider = make_decider(config, self.enforcer)
        self.detector = make_detector(config, self.decider)
        self.egress: EgressGuard | None = None
        self.sinks = make_sinks(config, self.host, self.sink_error)
        self.audits = AuditWorker(lambda: self.policy)
        self.pipeline = Pipeline(policy=engine(self.policy, config), detector=self.detector, auditor=self._audit,
                                 decider=self.decider)
        self.capture: Capture | None = None
        self.reader: CaptureReader | None = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self._known_ports: set[int] = set()
        self._forgotten = ForgottenReport()

    # ---- start and stop -------------------------------------------------

    def start(self) -> None:
        """Everything that can fail on a bad host, before any data flows.

        The slow parts (the firewall table, the egress guard's compile, the audit of running relays)
        come before the capture attaches, and little follows it: an agent started under a flood is
        current at once, not behind by its own start."""
        relays = discover(tuple(self.config.capture.comms))
        if self.enforcer is not None:
            ports = self._listener_ports([Listener(lst.ip, lst.port) for lst, _ in relays.listeners])
            for event in self.enforcer.start(ports, self.policy):
                self.emit(event)
        self._make_egress()
        for record in self.pipeline.alerts(self._audit_running()):
            self.emit(record)
        heap.settle_heap()
        self.capture = Capture(self.config.capture, known_ports={lst.port for lst, _ in relays.listeners})
        self.reader = CaptureReader(self.capture, self.handoff, self.errors, self.stop_event)
        listeners = self.refresh_listeners(self.capture.attached_with)   # idle relays learn "idle" from now
        self.control = ControlServer(self.config.agent.control_socket, lambda: to_json(report.snapshot(self)),
                                     self.request_reload)
        if self.config.agent.metrics:
            self.metrics = MetricsServer(self.config.agent.metrics, lambda: report.exported_samples(self))
        self.reader.thread.start()
        log.info("agent started: %d socat listeners, output %s", len(listeners), self.config.agent.output)

    def run(self) -> RunSummary:
        """Run until stopped or the duration is over; return the summary."""
        try:
            self.start()
            main_loop(self.handoff, self._process, self._periodic(), self._reload_if_asked, self.stop_event,
                      self.options.duration_s)
        finally:
            self.stop_event.set()
            if self.reader is not None and self.reader.thread.is_alive():
                self.reader.thread.join(5.0)
            self._drain()
            self._close()
        return report.summary(self)

    def _periodic(self) -> list[Periodic]:
        """The main loop's tasks; the config is read at each run, so a reload changes the periods."""
        return [
            Periodic(lambda: self.config.agent.tick_interval_s, self.tick),
            Periodic(lambda: self.config.agent.heartbeat_interval_s, self._heartbeat),
            Periodic(lambda: LISTENER_REFRESH_S, self.refresh_listeners),
            Periodic(lambda: BASELINE_SAVE_S, self._save_baseline),
            Periodic(lambda: DROP_READ_S, self._drops),
            Periodic(lambda: heap.TRIM_INTERVAL_S, heap.trim),
        ]

    def _drops(self) -> None:
        """What the drop listeners' kernel rules dropped: new sources get an event and an alert, the
        others a running count."""
        if self.enforcer is None:
            return
        events = self.enforcer.drop_events(now_ns())
        for event in events:
            self.emit(event)
        first = [dropped_alert(e) for e in events if e.action is Action.CONNECTION_DROPPED]
        for record in self.pipeline.alerts(first):
            self.emit(record)

    def _heartbeat(self) -> None:
        self.emit(Heartbeat(now_ns(), tuple((s.key, s.value) for s in report.samples(self))))
        if self.enforcing():
            for event in self.enforcer.counter_events(now_ns()):   # what each active block dropped
                self.emit(event)

    def enforcing(self) -> bool:
        """Blocks are really made (an enforcer, not a dry run): their counters mean something."""
        return self.enforcer is not None and not self.config.enforce.dry_run

    def _close(self) -> None:
        for closer in (self.control, self.metrics, self.egress, self.capture, self.enforcer):
            if closer is not None:
                try:
                    closer.close()
                except Exception as exc:
                    log.warning("closing %s: %s", type(closer).__name__, exc)
        self._save_baseline()
        self.sinks.close()

    def _save_baseline(self) -> None:
        """Persist what the detectors learned, so a restart (or a crash) does not forget it."""
        if self.config.agent.baseline:
            try:
                self.detector.baseline().save(self.config.agent.baseline)
            except OSError as exc:
                log.error("saving baseline %s: %s", self.config.agent.baseline, exc)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_signal.set())

    # ---- records -----------------------------------------------------------

    def _drain(self) -> None:
        """Records already captured are processed before exit: nothing is lost on stop."""
        if self.capture is not None:
            try:
                self.handoff.offer(self.capture.poll(0))
            except Exception as exc:
                log.warning("final capture poll: %s", exc)
        while (batch := self.handoff.take(0)) is not None:
            self._process(batch)
        self.audits.close()
        self.tick()

    def _process(self, batch: list[Record]) -> None:
        out: list[Record] = []
        try:
            for record in batch:
                if isinstance(record, ConnectionEvent) and record.listener is not None \
                        and record.listener.port not in self._known_ports:
                    self.pipeline.watch((record.listener.port,), record.timestamp_ns)   # listening since then
                    self._known_ports.add(record.listener.port)
                    self.refresh_listeners()   # a new relay: scope blocks and guard its backends at once
                out += self.pipeline.process(record)
        finally:   # what the batch caused before a failure (blocks the kernel holds) is written all the same
            self.emit_all(out)

    def tick(self) -> None:
        for record in self.pipeline.tick(now_ns()):
            self.emit(record)
        raised = self.audits.alerts()
        if self.egress is not None:
            raised += self.egress.poll()
            self._pending(self.egress.drain_errors())     # relays left unguarded (table full)
        if self.enforcer is not None:
            raised += self.enforcer.drain_alerts()
            self._pending(self.enforcer.drain_errors())   # table rebuilt, kernel errors
        for record in self.pipeline.alerts(raised):
            self.emit(record)
        self._report_losses()

    def _report_losses(self) -> None:
        while True:
            try:
                self.emit(self.errors.get_nowait())
            except queue.Empty:
                break
        lost = self.handoff.new_losses()
        if lost > 0:
            log.error("agent queue full: %d events lost in user space", lost)
            self.emit(PipelineError("agent.queue", "pipeline queue full: events dropped", now_ns(), count=lost))
        if self.pipeline.policy is not None:
            self._forgotten.log_new(self.pipeline.policy, self.config)
        unaudited = self.audits.new_drops()
        if unaudited > 0:
            self.emit(PipelineError("agent.audit", "audit queue full: execs not audited", now_ns(), count=unaudited))

    def emit(self, record: Record) -> None:
        self.emit_all([record])

    def emit_all(self, records: list[Record]) -> None:
        """Count the records in the live status, then write them out (one lock taking for them all in each)."""
        self.status.observe_all(records)
        self.sinks.write_all(records)
        follow = self.options.follow
        if follow is not None:
            for record in records:
                line = format_record(record)
                if line:
                    follow(line)

    def _pending(self, errors: list[PipelineError]) -> None:
        for error in errors:
            self.errors.put(error)

    def sink_error(self, error: PipelineError) -> None:
        """A sink's own loss (from its thread), reported through the sinks from the main thread."""
        log.error("%s: %s (%d)", error.stage, error.message, error.count)
        self.errors.put(error)

    # ---- listeners, policy, audit, egress ------------------------------------

    def _listener_ports(self, listeners: list[Listener]) -> set[int]:
        ports = {listener.port for listener in listeners}
        if self.policy is not None:
            ports |= {lp.port for lp in self.policy.listeners}
        return ports

    def refresh_listeners(self, listeners: list[Listener] | None = None) -> list[Listener]:
        """The relays listening now (`listeners` when just found): the detectors watch them, blocks are
        scoped to them, the egress guard guards their backends."""
        if listeners is None:
            listeners = self.capture.listeners()
        ports = self._listener_ports(listeners)
        self.pipeline.watch({lst.port for lst in listeners}, now_ns())   # a relay seen listening learns from now
        self._known_ports |= ports
        if self.enforcer is not None:
            self.enforcer.set_ports(ports)
        if self.egress is not None:
            for listener in listeners:
                if listener.pid is not None and guards(self.policy, listener, self._relay(listener.pid), self.home):
                    self.egress.track(listener.pid, listener.port)
        return listeners

    def _relay(self, pid: int) -> ProcessInfo:
        """Who the relay holding a listener is (for the policy entry that means it)."""
        status = processes.status(pid)
        return self.identities.of(ProcessInfo(pid=pid, comm=status.name if status else "",
                                              started_uid=status.uid if status else None))

    def set_policy(self, policy: Policy | None, config: Config) -> None:
        """Put `policy` in force (reload, with the new `config`'s policy_engine): the engine, the drop
        listeners' kernel sets, then the egress guard's rules."""
        self.policy = policy
        self.audits.forget()
        self.pipeline.replace_policy(engine(policy, config, self.pipeline.policy))
        self.status.open.idle_ns = int(config.policy_engine.open_idle_timeout_s * 1e9)
        if self.enforcer is not None:
            self.enforcer.set_drops(policy)
        if self.egress is not None:
            self.egress.set_rules(egress_rules(policy))
        elif self.capture is not None and self._make_egress():
            self.refresh_listeners()

    def _make_egress(self) -> bool:
        """The egress guard, when the policy declares backends and blocks are really made."""
        rules = egress_rules(self.policy)
        if not rules or self.enforcer is None or self.config.enforce.dry_run:
            return False
        self.egress = EgressGuard(rules)
        return True

    def _audit(self, event: ProcessEvent) -> list[Alert]:
        """Exec'd socat processes are audited on the audit thread; their alerts come with the next tick."""
        return self.audits.submit(event) if event.action is Action.PROCESS_STARTED else []

    def _audit_running(self) -> list[Alert]:
        stamp = now_ns()
        return [finding_to_alert(f, stamp, None) for f in audit_running(self.policy)]

    # ---- reload ---------------------------------------------------------------

    def request_reload(self) -> dict:
        """Control-socket reload (its thread): done by the main thread, answered when done."""
        answer: queue.Queue[ReloadResult] = queue.Queue(maxsize=1)
        self.reload_requests.put(answer)
        try:
            return to_json(answer.get(timeout=RELOAD_ANSWER_S))
        except queue.Empty:
            return to_json(ReloadResult(ok=False, error=f"reload did not finish in {RELOAD_ANSWER_S:g} s"))

    def _reload_if_asked(self) -> None:
        """One reload for SIGHUP and every waiting control-socket request."""
        if self.reload_requests.empty() and not self.reload_signal.is_set():
            return   # the common case, after each batch: learnt without raising queue.Empty
        waiting = []
        while True:
            try:
                waiting.append(self.reload_requests.get_nowait())
            except queue.Empty:
                break
        self.reload_signal.clear()
        self.last_reload = reload(self)
        for answer in waiting:
            answer.put(self.last_reload)
