"""Self-monitoring: a Prometheus endpoint and the heartbeat's counters.

The agent describes its health as a list of `Sample`s (events by action,
losses in kernel and user space, queue depth, alerts by rule, active blocks,
Elasticsearch lag and spool, process resources). The same list feeds the
`/metrics` endpoint and the minute heartbeat document, so the SIEM and
Prometheus never disagree.

The endpoint is bounded: a client that sends nothing is dropped after
`REQUEST_TIMEOUT_S`, at most `MAX_CLIENTS` are served at once, and a client
over that is closed at once and counted (`metrics_refused_total`).
"""

from __future__ import annotations

import resource
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from .errors import InputError
from .host.processes import resident_bytes

PREFIX = "socat_monitor_"
DEFAULT_LISTEN = "127.0.0.1:9464"
REQUEST_TIMEOUT_S = 5.0
MAX_CLIENTS = 8


@dataclass(frozen=True, slots=True)
class Sample:
    name: str                     # without prefix, e.g. "events_total"
    kind: str                     # "counter" | "gauge"
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """A flat name for the heartbeat: name or name.label_value."""
        return ".".join([self.name, *(value for _, value in self.labels)])


def process_samples() -> list[Sample]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return [
        Sample("process_resident_memory_bytes", "gauge", "Resident memory of the agent.", resident_bytes()),
        Sample("process_cpu_seconds_total", "counter", "CPU time of the agent (user+system).",
               usage.ru_utime + usage.ru_stime),
    ]


class _Collector:
    def __init__(self, samples: Callable[[], Iterable[Sample]]) -> None:
        self.samples = samples

    def collect(self):
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for s in self.samples():
            fam = families.get(s.name)
            if fam is None:
                label_names = [k for k, _ in s.labels]
                cls = CounterMetricFamily if s.kind == "counter" else GaugeMetricFamily
                name = PREFIX + (s.name[: -len("_total")] if s.kind == "counter" and s.name.endswith("_total") else s.name)
                fam = families[s.name] = cls(name, s.help, labels=label_names)
            fam.add_metric([v for _, v in s.labels], s.value)
        return list(families.values())


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("--metrics", f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_listen(text: str) -> None:
    """The config's `metrics`: HOST:PORT, or empty for off."""
    if text:
        try:
            parse_listen(text)
        except InputError:
            raise ValueError("expected HOST:PORT (or null for off)") from None


class _Handler(BaseHTTPRequestHandler):
    timeout = REQUEST_TIMEOUT_S   # the socket's timeout: a client that stalls is dropped

    def do_GET(self) -> None:   # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:   # noqa: A002 (http.server's signature)
        """Scrapes are not worth a log line each."""


class _BoundedServer(ThreadingHTTPServer):
    """A thread per client, at most MAX_CLIENTS of them; the rest are closed at once and counted."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.registry = registry
        self.refused = 0
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """Serves /metrics over HTTP from a daemon thread."""

    def __init__(self, listen: str, samples: Callable[[], Iterable[Sample]]) -> None:
        host, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(lambda: [*samples(), self._refused_sample()]))
        try:
            self.server = _BoundedServer((host, port), self.registry)
        except OSError as exc:
            raise InputError("--metrics", f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()
        self.address = f"{host}:{self.server.server_port}"

    def _refused_sample(self) -> Sample:
        return Sample("metrics_refused_total", "counter",
                      f"/metrics clients closed unserved because {MAX_CLIENTS} were being served.", self.server.refused)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
