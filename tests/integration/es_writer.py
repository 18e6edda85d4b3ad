"""A stand-in agent for the crash test: writes numbered connection events
through an ElasticsearchSink, says so on stdout, then waits to be killed or
to finish delivering.

    python -m tests.integration.es_writer URL SPOOL PREFIX FIRST COUNT [--finish]
"""

from __future__ import annotations

import sys
import time

from monitor.ecs import HostInfo
from monitor.sinks import ElasticsearchConfig, ElasticsearchSink
from tests.sample_records import connection


def main() -> None:
    url, spool, prefix, first, count = sys.argv[1:6]
    finish = "--finish" in sys.argv
    config = ElasticsearchConfig(urls=[url], spool_dir=spool, events_index=f"{prefix}-events",
                                 alerts_index=f"{prefix}-alerts", template_name=prefix, batch_size=250)
    sink = ElasticsearchSink(config, HostInfo(name="crash-test", id="0" * 32))
    print(f"pending-at-start {sink.stats.pending}", flush=True)
    for i in range(int(first), int(first) + int(count)):
        event = connection(i)
        event.id = f"{prefix}-{i:06d}"
        sink.write(event)
    print("spooled", flush=True)
    if finish:
        ok = sink.flush(120)
        sink.close()
        print(f"flushed {ok} {sink.stats.duplicates}", flush=True)
        return
    time.sleep(600)


if __name__ == "__main__":
    main()
