"""The Elasticsearch sink's settings, apart from the sink: the config reads them on every host.

`ElasticsearchConfig` is all `monitor.config` needs; the sink itself
(`monitor.sinks.elasticsearch`) and the client library it uses are
imported only by an agent configured to ship to Elasticsearch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..settings import setting
from .base import check_url
from .lifecycle import RolloverConfig, check_rollover


def check_urls(urls: list[str]) -> None:
    if not urls:
        raise ValueError("at least one URL is needed")
    for url in urls:
        check_url(url)


@dataclass(slots=True)
class ElasticsearchConfig:
    urls: list[str] = setting(default_factory=lambda: ["http://127.0.0.1:9200"], check=check_urls)
    username: str | None = None
    password: str | None = None
    api_key: str | None = setting(None, excludes="username")   # base64 "id:key" as Kibana shows it
    ca_file: str | None = None
    verify_certs: bool = True
    events_index: str = "socat-monitor-events"   # write alias; first index <alias>-000001
    alerts_index: str = "socat-monitor-alerts"
    template_name: str = "socat-monitor"
    spool_dir: Path = Path("/var/lib/socat-monitor/spool")
    spool_max_bytes: int = setting(1024 * 1024 * 1024, minimum=1024 * 1024)
    segment_bytes: int = 16 * 1024 * 1024
    batch_size: int = setting(2000, minimum=1)
    batch_bytes: int = 8 * 1024 * 1024
    batch_interval_s: float = setting(1.0, above=0)
    max_in_flight: int = setting(2, minimum=1)   # bulk requests at once (acked in order)
    request_timeout_s: float = 10.0
    backoff_max_s: float = 10.0
    sync_interval_s: float = 1.0
    close_timeout_s: float = 5.0
    dead_letter_path: Path | None = None  # default: <spool_dir>/dead-letter.ndjson
    rollover: RolloverConfig | None = setting(default_factory=RolloverConfig, check=check_rollover)   # None: never
    retention_s: float | None = setting(None, above=0)      # delete indices older than this (None: keep)

    def __post_init__(self) -> None:
        self.spool_dir = Path(self.spool_dir)
        if isinstance(self.rollover, dict):
            self.rollover = RolloverConfig.from_yaml(self.rollover)
        if isinstance(self.urls, str):
            self.urls = [self.urls]
        if self.dead_letter_path is None:
            self.dead_letter_path = self.spool_dir / "dead-letter.ndjson"
        self.dead_letter_path = Path(self.dead_letter_path)

    def first_index(self, alias: str) -> str:
        return f"{alias}-000001"
