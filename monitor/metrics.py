"""Self-monitoring: a Prometheus endpoint and the heartbeat's counters.

The agent describes its health as a list of `Sample`s (events by action,
losses in kernel and user space, queue depth, alerts by rule, active blocks,
Elasticsearch lag and spool, process resources). The same list feeds the
`/metrics` endpoint and the minute heartbeat document, so the SIEM and
Prometheus never disagree.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from .errors import InputError

PREFIX = "socat_monitor_"
DEFAULT_LISTEN = "127.0.0.1:9464"


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
    with open("/proc/self/statm", encoding="ascii") as fh:
        rss_pages = int(fh.read().split()[1])
    return [
        Sample("process_resident_memory_bytes", "gauge", "Resident memory of the agent.",
               rss_pages * resource.getpagesize()),
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


class MetricsServer:
    """Serves /metrics over HTTP from a daemon thread."""

    def __init__(self, listen: str, samples: Callable[[], Iterable[Sample]]) -> None:
        host, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(samples))
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise InputError("--metrics", f"cannot listen on {listen}: {exc.strerror or exc}") from None
        self.address = f"{host}:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
