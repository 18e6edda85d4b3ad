"""The agent: wires capture -> pipeline -> sinks, and runs them.

Two threads carry the data. The capture thread only polls the ring buffer
and hands batches to a bounded queue (when the queue is full the batch is
counted as lost in user space and reported, never silently dropped). The
main thread runs each record through the `Pipeline` (policy, detection,
audit, blocks), writes what comes out to the sinks, and does the periodic
work: detector ticks, block expiry, egress denials, heartbeats, reloads.
Signals: SIGINT/SIGTERM stop cleanly with everything flushed; SIGHUP (or
`socat-monitor reload`) re-reads the config and the policy, keeping the old
policy when the new one is bad.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import Config, load_config
from .console import format_record
from .control import ControlServer
from .decide import Decider
from .ecs import HostInfo
from .events import Action, Alert, ConnectionEvent, Heartbeat, PipelineError, ProcessEvent, Record, now_ns
from .metrics import MetricsServer, Sample, parse_listen, process_samples
from .pipeline import Pipeline
from .status import LiveStatus

log = logging.getLogger(__name__)

LISTENER_REFRESH_S = 5.0
BASELINE_SAVE_S = 600.0


@dataclass
class RunOptions:
    duration_s: float | None = None
    follow: Callable[[str], None] | None = None   # where --follow lines go
    config_path: str | None = None                 # re-read on reload


class Agent:
    """One running socat-monitor agent."""

    def __init__(self, config: Config, options: RunOptions) -> None:
        self.config = config
        self.options = options
        self.host = HostInfo.detect()
        self.status = LiveStatus()
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.queue: queue.Queue[list[Record]] = queue.Queue(maxsize=max(1, config.agent.queue_size // 64))
        self.user_lost = 0
        self._user_lost_reported = 0
        self.last_reload: dict[str, Any] = {}
        self._reload_done: threading.Event | None = None
        if config.agent.metrics:
            parse_listen(config.agent.metrics)   # a bad flag fails before anything is touched
        self.policy = _load_policy(config.agent.policy)
        self.enforcer = _make_enforcer(config)
        self.decider = Decider(config.decide, default_ttl_s=config.enforce.default_ttl_s,
                               block_rules=config.detect.block_rules, blocker=self.enforcer)
        self.detector = _make_detector(config, [r for r in config.detect.rules if self.decider.may_block(r)])
        self.egress = None
        self.sinks = _make_sinks(config, self.host, self._sink_error)
        self.pipeline = Pipeline(
            policy=_engine(self.policy),
            detector=self.detector,
            auditor=self._audit,
            decider=self.decider,
        )
        self.capture = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self._pending_errors: list[PipelineError] = []
        self._known_ports: set[int] = set()

    # ---- start and stop -------------------------------------------------

    def start(self) -> None:
        """Everything that can fail on a bad host, before any data flows."""
        from .capture import Capture

        self.capture = Capture(self.config.capture)
        listeners = self.capture.listeners()
        if self.enforcer is not None:
            for event in self.enforcer.start(self._listener_ports(listeners)):
                self._emit(event)
        self._start_egress(listeners)
        for alert in self._audit_running():
            for record in self.pipeline.alerts([alert]):
                self._emit(record)
        self.control = ControlServer(self.config.agent.control_socket, self.snapshot, self.request_reload_now)
        if self.config.agent.metrics:
            self.metrics = MetricsServer(self.config.agent.metrics, self.samples)
        log.info("agent started: %d socat listeners, output %s", len(listeners), self.config.agent.output)

    def run(self) -> dict[str, Any]:
        """Run until stopped or the duration is over; return the summary."""
        reader = threading.Thread(target=self._capture_loop, name="capture", daemon=True)
        try:
            self.start()
            reader.start()
            self._main_loop()
        finally:
            self.stop_event.set()
            if reader.is_alive():
                reader.join(5.0)
            self._drain()
            self._close()
        return self.summary()

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
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    # ---- the two loops ---------------------------------------------------

    def _capture_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                batch = self.capture.poll(100)
            except Exception as exc:  # never let the reader die silently
                log.error("capture: %s", exc)
                self._pending_errors.append(PipelineError("capture", f"poll failed: {exc}", now_ns()))
                time.sleep(0.1)
                continue
            if batch:
                self._enqueue(batch)

    def _enqueue(self, batch: list[Record]) -> None:
        try:
            self.queue.put_nowait(batch)
        except queue.Full:
            self.user_lost += len(batch)

    def _main_loop(self) -> None:
        deadline = None if self.options.duration_s is None else time.monotonic() + self.options.duration_s
        interval = self.config.agent.tick_interval_s
        next_tick = time.monotonic() + interval
        next_heartbeat = time.monotonic() + self.config.agent.heartbeat_interval_s
        next_refresh = time.monotonic() + LISTENER_REFRESH_S
        next_save = time.monotonic() + BASELINE_SAVE_S
        while not self.stop_event.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            try:
                self._process(self.queue.get(timeout=max(0.0, min(next_tick - now, interval))))
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + interval
                self._tick()
            if now >= next_heartbeat:
                next_heartbeat = now + self.config.agent.heartbeat_interval_s
                self._emit(Heartbeat(now_ns(), tuple((s.key, s.value) for s in self.samples())))
            if now >= next_refresh:
                next_refresh = now + LISTENER_REFRESH_S
                self._refresh_listeners()
            if now >= next_save:
                next_save = now + BASELINE_SAVE_S
                self._save_baseline()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()

    def _drain(self) -> None:
        """Records already captured are processed before exit: nothing is lost on stop."""
        if self.capture is not None:
            try:
                self._enqueue(self.capture.poll(0))
            except Exception as exc:
                log.warning("final capture poll: %s", exc)
        while True:
            try:
                self._process(self.queue.get_nowait())
            except queue.Empty:
                break
        self._tick()

    def _process(self, batch: list[Record]) -> None:
        for record in batch:
            if isinstance(record, ConnectionEvent) and record.listener is not None \
                    and record.listener.port not in self._known_ports:
                self._known_ports.add(record.listener.port)
                self._refresh_listeners()   # a new relay: scope blocks and guard its backends at once
            for out in self.pipeline.process(record):
                self._emit(out)

    def _tick(self) -> None:
        for record in self.pipeline.tick(now_ns()):
            self._emit(record)
        raised = self.egress.poll() if self.egress is not None else []
        if self.enforcer is not None:
            raised += self.enforcer.drain_alerts()
        for record in self.pipeline.alerts(raised):
            self._emit(record)
        self._report_losses()

    def _report_losses(self) -> None:
        while self._pending_errors:
            self._emit(self._pending_errors.pop(0))
        lost = self.user_lost - self._user_lost_reported
        if lost > 0:
            self._user_lost_reported = self.user_lost
            log.error("agent queue full: %d events lost in user space", lost)
            self._emit(PipelineError("agent.queue", "pipeline queue full: events dropped", now_ns(), count=lost))

    def _emit(self, record: Record) -> None:
        self.status.observe(record)
        self.sinks.write(record)
        if self.options.follow is not None:
            line = format_record(record)
            if line:
                self.options.follow(line)

    def _sink_error(self, error: PipelineError) -> None:
        """A sink's own loss, reported through the other sinks from the main thread."""
        log.error("%s: %s (%d)", error.stage, error.message, error.count)
        self._pending_errors.append(error)

    # ---- listeners, audit, egress -----------------------------------------

    def _listener_ports(self, listeners) -> set[int]:
        ports = {listener.port for listener in listeners}
        if self.policy is not None:
            ports |= {lp.port for lp in self.policy.listeners}
        return ports

    def _refresh_listeners(self) -> None:
        listeners = self.capture.listeners()
        ports = self._listener_ports(listeners)
        self._known_ports |= ports
        if self.enforcer is not None:
            self.enforcer.set_ports(ports)
        if self.egress is not None:
            for listener in listeners:
                if listener.pid is not None:
                    self.egress.track(listener.pid, listener.port)

    def _start_egress(self, listeners) -> None:
        rules = _egress_rules(self.policy)
        if not rules or self.enforcer is None or self.config.enforce.dry_run:
            return
        from .enforce import EgressGuard

        self.egress = EgressGuard(rules)
        self._refresh_listeners()

    def _reload_egress(self) -> None:
        if self.egress is not None:
            self.egress.set_rules(_egress_rules(self.policy))
        elif self.capture is not None:
            self._start_egress(self.capture.listeners())

    def _audit(self, event: ProcessEvent) -> list[Alert]:
        from .policy import audit_command, audit_process, finding_to_alert, parse_command_line

        if event.action is not Action.PROCESS_STARTED:
            return []
        try:
            findings = audit_process(event.process.pid, self.policy)
        except Exception:  # the process is already gone: audit what BPF saw at exec
            try:
                findings = audit_command(parse_command_line(event.process.args), pid=event.process.pid,
                                         uid=event.process.uid, policy=self.policy)
            except Exception as exc:
                log.warning("audit of pid %d: %s", event.process.pid, exc)
                return []
        return [finding_to_alert(f, event.timestamp_ns, event.process) for f in findings]

    def _audit_running(self) -> list[Alert]:
        from .policy import audit_running, finding_to_alert

        stamp = now_ns()
        return [finding_to_alert(f, stamp, None) for f in audit_running(self.policy)]

    # ---- reload, status, metrics -------------------------------------------

    def request_reload_now(self) -> dict[str, Any]:
        """Control-socket reload: done in the main thread, answered when done."""
        done = threading.Event()
        self._reload_done = done
        self.last_reload = {}
        self.reload_requested.set()
        done.wait(10.0)
        return self.last_reload or {"ok": False, "error": "reload did not finish in 10 s"}

    def reload(self) -> None:
        path = self.options.config_path
        try:
            config = load_config(path) if path else self.config
            policy = _load_policy(config.agent.policy)
        except Exception as exc:
            log.error("reload rejected, old policy stays in force: %s", exc)
            self.last_reload = {"ok": False, "error": str(exc)}
        else:
            self.config.agent.policy = config.agent.policy
            self.policy = policy
            self.pipeline.replace_policy(_engine(policy))
            self._reload_egress()
            log.info("reloaded: policy %s", config.agent.policy or "(none)")
            self.last_reload = {"ok": True, "policy": config.agent.policy}
        if self._reload_done is not None:
            self._reload_done.set()
            self._reload_done = None

    def counters(self) -> dict[str, Any]:
        """The health counters of the control socket's status."""
        return {**self._pipeline_counters(), "rss_bytes": process_samples()[0].value}

    def _pipeline_counters(self) -> dict[str, Any]:
        kernel_lost = self.capture.stats.kernel_lost if self.capture is not None else 0
        sink = self.sinks.stats
        return {
            "kernel_lost": kernel_lost,
            "user_lost": self.user_lost,
            "queue_depth": self.queue.qsize(),
            "blocks_active": len(self.enforcer.active()) if self.enforcer is not None else 0,
            "es_spool_bytes": sink.spool_bytes,
            "es_lag_s": sink.lag_s,
        }

    def snapshot(self) -> dict[str, Any]:
        blocks = []
        if self.enforcer is not None:
            stamp = time.time_ns()
            for block in self.enforcer.active():
                blocks.append({"target": block.target, "rule_id": block.rule_id,
                               "expires_in_s": round(block.remaining_s(stamp), 1)})
        snap = self.status.snapshot(self.counters(), blocks)
        snap.update(version=__version__, pid=os.getpid(), host=self.host.name, last_reload=self.last_reload)
        return snap

    def samples(self) -> list[Sample]:
        counters = self._pipeline_counters()
        out = [Sample("events_total", "counter", "Records written, by event.action.", v, (("action", k),))
               for k, v in sorted(self.status.events.items())]
        out += [Sample("alerts_total", "counter", "Alerts raised, by rule.", v, (("rule", k),))
                for k, v in sorted(self.status.alerts.items())]
        out += [
            Sample("kernel_lost_events_total", "counter", "Events the kernel could not deliver.", counters["kernel_lost"]),
            Sample("user_lost_events_total", "counter", "Events dropped in the agent (queue full).", counters["user_lost"]),
            Sample("queue_depth", "gauge", "Batches waiting between capture and pipeline.", counters["queue_depth"]),
            Sample("blocks_active", "gauge", "Sources blocked now.", counters["blocks_active"]),
            Sample("elasticsearch_spool_bytes", "gauge", "Bytes spooled for Elasticsearch.", counters["es_spool_bytes"]),
            Sample("elasticsearch_lag_seconds", "gauge", "Age of the oldest unacknowledged event.", counters["es_lag_s"]),
        ]
        out += [Sample("sink_lost_events_total", "counter", "Events lost by a sink, by stage.", v, (("stage", k),))
                for k, v in sorted(self.status.pipeline_lost.items())]
        return out + process_samples()

    def summary(self) -> dict[str, Any]:
        kernel_lost = self.capture.stats.kernel_lost if self.capture is not None else 0
        summary = self.status.summary(kernel_lost, self.user_lost)
        summary["output"] = self.config.agent.output
        return summary


def _load_policy(path: str | None):
    if not path:
        return None
    from .policy import load_policy

    return load_policy(path)


def _engine(policy):
    if policy is None:
        return None
    from .policy import PolicyEngine

    return PolicyEngine(policy)


def _make_detector(config: Config, repeats: list[str]):
    from .detect import Baseline, Detector

    path = config.agent.baseline
    baseline = Baseline.load(path) if path and Path(path).exists() else None
    return Detector(config.detect, baseline, repeats)


def _make_enforcer(config: Config):
    if not config.enforce.enabled:
        return None
    from .enforce import Enforcer

    return Enforcer(config.enforce)


def _egress_rules(policy) -> list:
    if policy is None:
        return []
    from .enforce import EgressRule

    return [EgressRule.from_policy(lp) for lp in policy.listeners if lp.allow_backends and lp.action == "block"]


def _make_sinks(config: Config, host: HostInfo, on_error):
    from .sinks import AlertFeed, ElasticsearchSink, Fanout, NdjsonSink

    sinks = [NdjsonSink(config.ndjson, host, on_error=on_error)]
    if config.elasticsearch is not None and config.elasticsearch.urls:
        sinks.append(ElasticsearchSink(config.elasticsearch, host, on_error=on_error))
    if config.alert_feed is not None:
        sinks.append(AlertFeed(config.alert_feed, host, on_error=on_error))
    return Fanout(sinks)
