"""The adversarial tests use the integration suite's real Elasticsearch."""

from tests.integration.conftest import elasticsearch_server  # noqa: F401 (a fixture, re-exported)
