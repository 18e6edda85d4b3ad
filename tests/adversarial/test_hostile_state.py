"""Damaged state on disk: the agent repairs or sets it aside, counts it, and keeps shipping."""

from __future__ import annotations

import uuid

import pytest

from monitor.ecs import HostInfo
from monitor.sinks import ElasticsearchConfig, ElasticsearchSink
from tests import sample_records as S

HOST = HostInfo(name="adv-host", id="2" * 32)


@pytest.mark.parametrize("ack", ["1 -7", "not numbers", "99999 0", "1 3"])
def test_corrupt_spool_ack_is_set_aside_and_shipping_resumes(elasticsearch_server, tmp_path, ack):
    prefix = f"adv-{uuid.uuid4().hex[:8]}"
    config = ElasticsearchConfig(urls=["http://127.0.0.1:9"], spool_dir=tmp_path / "spool",
                                 events_index=f"{prefix}-events", alerts_index=f"{prefix}-alerts",
                                 template_name=prefix, close_timeout_s=1.0)
    down = ElasticsearchSink(config, HOST)   # nobody listens on :9: everything stays spooled
    records = [S.connection(i) for i in range(20)]
    for record in records:
        down.write(record)
    down.close()
    (tmp_path / "spool" / "acked").write_text(ack)

    errors = []
    config.urls = [elasticsearch_server.url]
    up = ElasticsearchSink(config, HOST, on_error=errors.append)
    try:
        assert up.flush(30), up.stats
        es = elasticsearch_server.client()
        es.indices.refresh(index=f"{prefix}-events")
        assert es.count(index=f"{prefix}-events")["count"] == len(records)
        assert any("ack file was corrupt" in e.message for e in errors)
        assert (tmp_path / "spool" / "acked.corrupt").read_text() == ack
    finally:
        up.close()
        es = elasticsearch_server.client()
        es.indices.delete(index=f"{prefix}-*", ignore=[404])
        es.transport.perform_request("DELETE", f"/_index_template/{prefix}", params={"ignore": 404})
