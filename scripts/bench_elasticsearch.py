#!/usr/bin/env python3
"""Benchmark of the Elasticsearch sink, measured side by side in one run.

    scripts/elasticsearch.sh start            # a real Elasticsearch on 127.0.0.1:9200
    .venv/bin/python scripts/bench_elasticsearch.py [--url URL] [--events N]

Prints:
  encode      render + orjson + spool line, records/s (the agent-side ceiling)
  write()     what the caller pays: encode + append to the disk spool, records/s
  raw _bulk   the server alone: pre-encoded bulk bodies posted back to back, docs/s
              (after a warm-up of the server; same mappings as the sink's indices)
  sink        record -> indexed (acknowledged by Elasticsearch), sustained docs/s,
              and agent CPU (user+system, all threads) per 1,000 events
and the ratio sink / raw bulk, which shows whether the server or the agent limits.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import elasticsearch  # noqa: E402

from monitor.ecs import HostInfo  # noqa: E402
from monitor.sinks import ElasticsearchConfig, ElasticsearchSink  # noqa: E402
from monitor.sinks.elasticsearch import spool_line  # noqa: E402
from monitor.sinks.template import index_template  # noqa: E402
from tests.sample_records import connection  # noqa: E402

HOST = HostInfo(name="bench-host", id="3" * 32)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_encode(records: list) -> float:
    start = time.perf_counter()
    for record in records:
        spool_line(record, HOST)
    return len(records) / (time.perf_counter() - start)


def bench_raw_bulk(es: elasticsearch.Elasticsearch, records: list, index: str, batch: int) -> float:
    bodies = []
    for i in range(0, len(records), batch):
        parts = []
        for record in records[i:i + batch]:
            line = spool_line(record, HOST)
            rid, doc = line[1:].split(b"\t", 1)
            parts.append(b'{"create":{"_index":"%s","_id":"raw-%s"}}\n' % (index.encode(), rid) + doc)
        bodies.append(b"".join(parts))
    start = time.perf_counter()
    for body in bodies:
        resp = es.bulk(body=body, filter_path="errors")
        if resp.get("errors"):
            raise SystemExit("raw bulk reported item errors")
    return len(records) / (time.perf_counter() - start)


def bench_sink(url: str, records: list, prefix: str, spool: Path, batch: int) -> dict[str, float]:
    config = ElasticsearchConfig(urls=[url], spool_dir=spool, events_index=f"{prefix}-events",
                                 alerts_index=f"{prefix}-alerts", template_name=prefix, batch_size=batch)
    sink = ElasticsearchSink(config, HOST)
    deadline = time.monotonic() + 30
    while not sink.ready:
        if time.monotonic() > deadline:
            raise SystemExit(f"sink not ready after 30s: is Elasticsearch at {url}?")
        time.sleep(0.05)
    cpu0, t0 = cpu_s(), time.perf_counter()
    for record in records:
        sink.write(record)
    t_written = time.perf_counter()
    if not sink.flush(600):
        raise SystemExit(f"not everything delivered: {sink.stats}")
    t_done, cpu1 = time.perf_counter(), cpu_s()
    stats = sink.stats
    sink.close()
    if stats.written != len(records):
        raise SystemExit(f"delivered {stats.written} of {len(records)}: {stats}")
    return {
        "write_rate": len(records) / (t_written - t0),
        "indexed_rate": len(records) / (t_done - t0),
        "cpu_ms_per_1000": (cpu1 - cpu0) * 1000 / len(records) * 1000,
        "seconds": t_done - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('ES_PORT', '9200')}")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()

    es = elasticsearch.Elasticsearch([args.url], timeout=60)
    if not es.ping():
        raise SystemExit(f"no Elasticsearch at {args.url}: run scripts/elasticsearch.sh start (ES_PORT=...)")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    spool = Path(tempfile.mkdtemp(prefix="socat-monitor-bench-"))
    records = [connection(i) for i in range(args.events)]
    raw_records = [connection(i) for i in range(args.events)]
    try:
        encode = bench_encode(records[:50_000])
        # same template for every index; a warm-up first (JVM JIT, index creation)
        es.transport.perform_request("PUT", f"/_index_template/{prefix}-raw",
                                     body=index_template([f"{prefix}-raw-*"], wildcard=False))
        bench_raw_bulk(es, raw_records[:30_000], f"{prefix}-raw-warmup", args.batch)
        raw = bench_raw_bulk(es, raw_records, f"{prefix}-raw-measured", args.batch)
        sink = bench_sink(args.url, records, prefix, spool, args.batch)
        es.indices.refresh(index=f"{prefix}-events")
        indexed = es.count(index=f"{prefix}-events")["count"]
    finally:
        es.indices.delete(index=f"{prefix}-*", ignore=[404])
        for name in (prefix, f"{prefix}-raw"):
            es.transport.perform_request("DELETE", f"/_index_template/{name}", params={"ignore": 404})
        shutil.rmtree(spool, ignore_errors=True)
    if indexed != args.events:
        raise SystemExit(f"count in Elasticsearch {indexed} != {args.events}")

    print(f"Elasticsearch sink benchmark: {args.events} connection events, batch {args.batch}, "
          f"{ElasticsearchConfig().max_in_flight} bulk requests in flight, {args.url}")
    print(f"  encode (render+orjson+spool line)  {encode:>10,.0f} records/s")
    print(f"  write() (encode + disk spool)      {sink['write_rate']:>10,.0f} records/s")
    print(f"  raw _bulk, server alone            {raw:>10,.0f} docs/s")
    print(f"  sink, record -> indexed            {sink['indexed_rate']:>10,.0f} docs/s "
          f"({sink['seconds']:.1f}s, all {indexed} counted in the index)")
    print(f"  sink / raw _bulk                   {sink['indexed_rate'] / raw:>10.2f}")
    print(f"  agent CPU per 1,000 events         {sink['cpu_ms_per_1000']:>10.1f} ms (user+system, all threads)")


if __name__ == "__main__":
    main()
