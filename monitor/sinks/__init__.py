"""Sinks: where ECS documents go (NDJSON files and their Parquet segments, Elasticsearch, the alert feed,
a webhook).

The agent builds the sinks it is configured for and writes every record to
a `Fanout` of them. Each sink reports its own losses as `PipelineError`
records through `on_error`, which the agent routes back into the fan-out.
"""

from .alertfeed import AlertFeed, AlertFeedConfig
from .columnar import ColumnarConfig, ColumnarSink
from .base import ErrorCallback, Fanout, Sink, SinkStats
from .elasticsearch import ElasticsearchConfig, ElasticsearchSink
from .ndjson import NdjsonConfig, NdjsonSink
from .webhook import WebhookConfig, WebhookSink

__all__ = [
    "AlertFeed", "AlertFeedConfig", "ColumnarConfig", "ColumnarSink", "ElasticsearchConfig", "ElasticsearchSink", "ErrorCallback",
    "Fanout", "NdjsonConfig", "NdjsonSink", "Sink", "SinkStats", "WebhookConfig", "WebhookSink",
]
