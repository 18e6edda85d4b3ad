"""The live view's pure parts: status JSON -> Status -> screen lines."""

from __future__ import annotations

import copy

import pytest

from monitor.errors import InputError
from monitor.liveview import connection_rate, render
from monitor.status import BlockRow, Counters, LiveStatus, ReloadResult, Status, parse_status, to_json
from tests import sample_records as S

SAMPLE = {
    "version": "0.1.0", "pid": 123, "uptime_s": 12.5, "host": "vm",
    "counters": {"events": {"connection_accepted": 10, "connection_attempted": 9, "connection_closed": 18},
                 "kernel_lost": 0, "user_lost": 2, "queue_depth": 0, "alerts": {"policy.source_denied": 1},
                 "blocks_active": 1, "es_spool_bytes": 2048, "es_lag_s": 0.0, "rss_bytes": 52_000_000},
    "listeners": [{"ip": "0.0.0.0", "port": 8443, "name": "web-relay", "pids": [4242], "rate_per_s": 3.2,
                   "active": 2},
                  {"ip": "::", "port": 8444, "name": None, "pids": [4243, 4244], "rate_per_s": 0.5, "active": 0}],
    "top_sources": [{"ip": "198.51.100.7", "connections": 40, "rate_per_s": 1.5, "listener_port": 8443}],
    "recent_alerts": [{"@timestamp": "2026-11-25T22:30:01.123456Z", "rule_id": "policy.source_denied",
                       "severity": "high", "source_ip": "203.0.113.9", "listener_port": 8443,
                       "description": "source not in allow_sources"}],
    "blocks": [{"target": "203.0.113.9", "expires_in_s": 590.0, "rule_id": "policy.source_denied"}],
    "drops": [{"listener": "web-relay", "port": 8443, "packets": 300, "sources": 2, "dry_run": False}],
}


def test_parse_status_reads_every_section():
    status = parse_status(SAMPLE)
    assert status.pid == 123 and status.host == "vm" and status.uptime_s == 12.5
    assert status.counters.accepted == 10 and status.counters.user_lost == 2
    assert status.counters.alerts == {"policy.source_denied": 1}
    assert status.listeners[0].name == "web-relay" and status.listeners[0].pids == (4242,)
    assert status.listeners[1].name is None
    assert status.top_sources[0].connections == 40
    assert status.recent_alerts[0].source_ip == "203.0.113.9"
    assert status.blocks[0].expires_in_s == 590.0
    assert status.drops[0].packets == 300 and status.drops[0].sources == 2


def test_parse_status_tolerates_missing_and_unknown_keys():
    status = parse_status({"version": "0.2.0", "pid": 1, "new_thing": {"x": 1}})
    assert status == Status(version="0.2.0", pid=1, uptime_s=0.0, host="")


@pytest.mark.parametrize("path, value, key", [
    (("pid",), "x", "pid"),
    (("counters", "rss_bytes"), [1], "rss_bytes"),
    (("listeners",), {"a": 1}, "listeners"),
    (("listeners", 0, "pids"), ["1"], "pids"),
    (("blocks", 0, "target"), 7, "target"),
    (("counters", "events", "connection_accepted"), True, "connection_accepted"),
])
def test_parse_status_names_the_bad_key(path, value, key):
    data = copy.deepcopy(SAMPLE)
    node = data
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(InputError) as err:
        parse_status(data, where="sock: status")
    assert key in str(err.value) and str(err.value).startswith("sock: status")


def test_parse_status_rejects_a_non_object():
    with pytest.raises(InputError, match="expected an object"):
        parse_status([1, 2])


def test_render_shows_every_section():
    lines = render(parse_status(SAMPLE), 132, 40)
    screen = "\n".join(lines)
    assert len(lines) == 40 and all(len(line) <= 132 for line in lines)
    for text in ("host vm", "pid 123", "rss 49.6 MiB", "events 37", "lost kernel 0 user 2",
                 "web-relay", "0.0.0.0:8443", "[::]:8444", "4243,4244",
                 "198.51.100.7", "22:30:01", "policy.source_denied", "203.0.113.9", "9:50",
                 "source not in allow_sources", "dropped 300", "DROPPED BEFORE THE HANDSHAKE", "q quit"):
        assert text in screen, text


def test_drops_show_their_namespace_when_they_are_in_several():
    one = render(parse_status(SAMPLE), 132, 40)
    assert not any("NETNS" in line for line in one), "one namespace: no column"
    data = copy.deepcopy(SAMPLE)
    data["drops"] = [dict(SAMPLE["drops"][0], netns="lab-a"), dict(SAMPLE["drops"][0], netns="lab-b", packets=7)]
    status = parse_status(data)
    assert [r.netns for r in status.drops] == ["lab-a", "lab-b"]
    lines = render(status, 132, 40)
    assert any("NETNS" in line for line in lines)
    assert any("lab-a" in line and "300" in line for line in lines) and any("lab-b" in line for line in lines)


def test_render_clips_to_a_narrow_terminal():
    lines = render(parse_status(SAMPLE), 40, 24)
    assert len(lines) == 24 and all(len(line) <= 40 for line in lines)
    assert any(line.endswith("…") for line in lines)


def test_render_keeps_every_section_on_a_short_terminal():
    data = copy.deepcopy(SAMPLE)
    data["top_sources"] = [{"ip": f"198.51.100.{i}", "connections": i} for i in range(1, 30)]
    lines = render(parse_status(data), 100, 16)
    screen = "\n".join(lines)
    assert len(lines) == 16
    for title in ("LISTENERS", "TOP SOURCES", "RECENT ALERTS", "ACTIVE BLOCKS", "DROPPED BEFORE THE HANDSHAKE"):
        assert title in screen, screen
    assert "more)" in screen
    assert lines[-1].startswith("q quit")


def test_render_says_none_for_empty_tables():
    lines = render(parse_status({"version": "0.1.0", "pid": 1}), 80, 24)
    assert "\n".join(lines).count("(none)") == 4


def test_connection_rate_from_counter_delta():
    before = parse_status(SAMPLE)
    later = copy.deepcopy(SAMPLE)
    later["uptime_s"] = 14.5
    later["counters"]["events"]["connection_accepted"] = 30
    assert connection_rate(parse_status(later), before) == pytest.approx(10.0)
    assert connection_rate(before, None) == pytest.approx(3.7)


def test_connection_rate_ignores_a_restarted_agent():
    before = parse_status(SAMPLE)
    restarted = copy.deepcopy(SAMPLE)
    restarted["pid"] = 999
    restarted["counters"]["events"]["connection_accepted"] = 1
    assert connection_rate(parse_status(restarted), before) == pytest.approx(3.7)


def test_the_agents_status_reads_back_as_the_same_status():
    """One dataclass both ways: what the agent fills is what top reads, field for field."""
    live = LiveStatus()
    for record in S.every_kind() + [S.connection(i) for i in range(3)] + [S.alert()]:
        live.observe(record)
    status = live.snapshot(version="9.9", pid=7, host="vm", counters=Counters(kernel_lost=2, es_lag_s=1.5),
                           blocks=(BlockRow("198.51.100.9", 30.0, "anomaly.scan"),),
                           last_reload=ReloadResult(ok=False, policy="/p.yaml", changed=("enforce.never_block",),
                                                    rejected=("capture.ringbuf_pages: needs a restart",)))
    data = to_json(status)
    assert data["recent_alerts"][0]["@timestamp"] and data["counters"]["kernel_lost"] == 2
    assert status.listeners and status.recent_alerts and status.counters.accepted >= 3
    assert parse_status(data) == status
