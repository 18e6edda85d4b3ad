"""Fixtures of the integration tests: a real Elasticsearch.

`elasticsearch_server` (session) uses `scripts/elasticsearch.sh` on port
$SOCAT_MONITOR_TEST_ES_PORT (default 9250, away from a developer's 9200): it
starts the server if it is not running and stops it at the end only if it
started it. A missing or broken server fails the tests; nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import pytest

from tests.lab import ROOT

ES_SCRIPT = ROOT / "scripts" / "elasticsearch.sh"


@dataclass
class ElasticsearchServer:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _script(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ES_SCRIPT), action], env={**os.environ, "ES_PORT": str(self.port)},
                              capture_output=True, text=True, timeout=300, check=False)

    def running(self) -> bool:
        return self._script("status").returncode == 0

    def start(self) -> None:
        done = self._script("start")
        if done.returncode != 0:
            raise AssertionError(f"cannot start Elasticsearch on {self.url}: {done.stderr.strip()}")

    def stop(self) -> None:
        done = self._script("stop")
        if done.returncode != 0:
            raise AssertionError(f"cannot stop Elasticsearch on {self.url}: {done.stderr.strip()}")

    def client(self):
        import elasticsearch

        return elasticsearch.Elasticsearch([self.url], timeout=30)


@pytest.fixture(scope="session")
def elasticsearch_server():
    server = ElasticsearchServer(int(os.environ.get("SOCAT_MONITOR_TEST_ES_PORT", "9250")))
    started_here = not server.running()
    if started_here:
        server.start()
    yield server
    if started_here:
        server.stop()
