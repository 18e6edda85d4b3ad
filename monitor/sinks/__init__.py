"""Sinks: where ECS documents go (NDJSON files and their Parquet segments, Elasticsearch, the alert feed,
a webhook).

The agent builds the sinks it is configured for and writes every record to
a `Fanout` of them. Each sink reports its own losses as `PipelineError`
records through `on_error`, which the agent routes back into the fan-out.

`ElasticsearchSink` is looked up only when asked for (`__getattr__`): its
client library imports pandas and numpy when they are installed, about
80 MiB an agent that does not ship to Elasticsearch should not carry.
"""

from .alertfeed import AlertFeed, AlertFeedConfig
from .columnar import ColumnarConfig, ColumnarSink
from .base import ErrorCallback, Fanout, Sink, SinkStats
from .es_config import ElasticsearchConfig
from .ndjson import NdjsonConfig, NdjsonSink
from .webhook import WebhookConfig, WebhookSink

__all__ = [      # not ElasticsearchSink: `import *` would load it
    "AlertFeed", "AlertFeedConfig", "ColumnarConfig", "ColumnarSink", "ElasticsearchConfig", "ErrorCallback",
    "Fanout", "NdjsonConfig", "NdjsonSink", "Sink", "SinkStats", "WebhookConfig", "WebhookSink",
]


def __getattr__(name: str):
    if name == "ElasticsearchSink":
        from .elasticsearch import ElasticsearchSink  # noqa: PLC0415 (heavy: only for an agent that ships there)
        return ElasticsearchSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
