"""Hostile files: YAML bombs, deep nesting, symlinked outputs, secrets in a config.

Each test feeds the real CLI (or the real sink) a file built to hurt, and
checks that the answer is a bounded, one-line, located refusal, not minutes
of CPU, gigabytes of memory, or a write somewhere it must not go.
"""

from __future__ import annotations

import gzip
import os
import resource
import stat
import time

import orjson

from monitor.ecs import HostInfo
from monitor.enforce.state import ActiveBlock, StateFile
from monitor.events import Alert, Severity, now_ns
from monitor.sinks import AlertFeed, AlertFeedConfig, NdjsonConfig, NdjsonSink
from tests.lab import socat_monitor

NINE = ", ".join(["*{}"] * 9)


def alias_bomb(levels: int) -> str:
    """A policy whose `listeners:` expands to 9**levels values through aliases (a few hundred bytes)."""
    lines = ["version: 1", 'l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{n}: &l{n} [{NINE.format(*[f'l{n - 1}'] * 9)}]" for n in range(1, levels)]
    lines.append(f"listeners: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_fast_with_its_line(tmp_path):
    policy = tmp_path / "bomb.yaml"
    policy.write_text(alias_bomb(7))
    assert policy.stat().st_size < 500
    started = time.monotonic()
    done = socat_monitor("policy", "check", str(policy), timeout=60)
    assert done.returncode == 2
    assert f"{policy}:" in done.stderr and "once its aliases are expanded" in done.stderr
    assert time.monotonic() - started < 10


def test_alias_bomb_in_a_config_is_refused_too(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(alias_bomb(7).replace("version: 1\n", "").replace("listeners:", "capture:"))
    done = socat_monitor("config", "check", str(config), timeout=60)
    assert done.returncode == 2 and "once its aliases are expanded" in done.stderr


def test_ordinary_aliases_still_work(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nlisteners:\n"
                      "  - {name: a, port: 8080, allow_sources: &office [192.0.2.0/24]}\n"
                      "  - {name: b, port: 8081, allow_sources: *office}\n")
    done = socat_monitor("policy", "check", str(policy))
    assert done.returncode == 0, done.stderr


def test_deep_nesting_is_refused_with_its_line(tmp_path):
    block = tmp_path / "deep-block.yaml"
    text, indent = "version: 1\n", ""
    for level in range(80):
        text += f"{indent}k{level}:\n"
        indent += "  "
    block.write_text(text + f"{indent}x\n")
    done = socat_monitor("policy", "check", str(block))
    assert done.returncode == 2 and "nested deeper than 64 levels" in done.stderr
    assert f"{block}:66:" in done.stderr

    flow = tmp_path / "deep-flow.yaml"
    flow.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    done = socat_monitor("policy", "check", str(flow), timeout=60)
    assert done.returncode == 2 and "nested deeper" in done.stderr and "RecursionError" not in done.stderr


def test_config_show_never_prints_secrets(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text('elasticsearch:\n  urls: ["https://elastic:hunter2@127.0.0.1:9250"]\n'
                      "  username: elastic\n  password: hunter2\n")
    for fmt in ("yaml", "json"):
        done = socat_monitor("config", "show", str(config), "--format", fmt)
        assert done.returncode == 0
        assert "hunter2" not in done.stdout
        assert "elastic:***@127.0.0.1:9250" in done.stdout


def _alert() -> Alert:
    return Alert(rule_id="policy.source_denied", rule_name="source not allowed", description="test",
                 ruleset="policy", severity=Severity.HIGH, timestamp_ns=now_ns(), source_ip="192.0.2.7")


def test_alert_feed_is_private_and_never_follows_a_symlink(tmp_path):
    target = tmp_path / "precious"
    target.write_text("do not touch\n")
    link = tmp_path / "feed.ndjson"
    link.symlink_to(target)
    errors = []
    feed = AlertFeed(AlertFeedConfig(path=link), HostInfo.detect(), on_error=errors.append)
    feed.write(_alert())
    feed.close()
    assert target.read_text() == "do not touch\n"
    assert errors and "cannot write" in errors[0].message

    fresh = tmp_path / "new" / "feed.ndjson"
    feed = AlertFeed(AlertFeedConfig(path=fresh), HostInfo.detect())
    feed.write(_alert())
    feed.close()
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o037 == 0   # no group write, nothing for others


def test_ndjson_retention_deletes_oldest_closed_files(tmp_path):
    config = NdjsonConfig(directory=tmp_path, rotate_bytes=4096, flush_interval_s=0.05,
                          retention_bytes=20_000, retention_age_s=0)
    old = tmp_path / "events-20200101T000000Z-1.ndjson"
    old.write_bytes(b"{}\n" * 4000)
    os.utime(old, (1, 1))
    sink = NdjsonSink(config, HostInfo.detect())
    for _ in range(400):
        sink.write(_alert())
    sink.flush()
    sink.prune()
    sink.close()
    files = sorted(tmp_path.glob("*-*.ndjson"))
    assert not old.exists() and sink.retired.files >= 1
    assert sum(p.stat().st_size for p in files) <= 20_000 + 4096
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in files)


def test_torn_block_journal_is_set_aside_not_fatal(tmp_path):
    """A crash mid-append leaves half a line at the end of the block journal: the good blocks come
    back, the torn line is kept in <file>.bad and counted; nothing refuses to start."""
    journal = tmp_path / "blocks.json"
    state = StateFile(str(journal))
    now = time.time_ns()
    good = ActiveBlock("192.0.2.7", now + 600 * 10**9, 600.0, now, "policy.source_denied")
    state.record([good])
    state.close()
    with open(journal, "a", encoding="utf-8") as fh:
        fh.write('{"add":{"target":"198.51.100.9","expires_ns":17')   # torn: no end, no newline
    state = StateFile(str(journal))
    assert state.load(now) == [good] and state.bad_lines == 1
    assert '198.51.100.9' in (tmp_path / "blocks.json.bad").read_text()
    state.replace(state.load(now))
    state.close()
    assert StateFile(str(journal)).load(now) == [good]


def test_analyze_skips_a_huge_line_without_holding_it(tmp_path):
    """A 130 KB gzip holding one 128 MiB line (and real events around it): the line is reported and
    skipped, the events are read, and memory stays far below the line's size."""
    good = orjson.dumps({"@timestamp": "2026-12-03T10:00:00Z", "event": {"action": "connection_accepted"},
                         "source": {"ip": "192.0.2.7", "port": 40000},
                         "destination": {"ip": "127.0.0.1", "port": 8443}}) + b"\n"
    path = tmp_path / "huge.ndjson.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(good * 3)
        chunk = b"x" * (1 << 20)
        for _ in range(128):
            fh.write(chunk)
        fh.write(b"\n" + good * 2)
    assert path.stat().st_size < 1 << 20
    done = socat_monitor("analyze", str(path), "--format", "json", timeout=300)
    used_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert done.returncode == 0, done.stderr
    assert f"{path}:4: line longer than 1,048,576 bytes: skipped" in done.stderr
    summary = orjson.loads(done.stdout.splitlines()[-1])["summary"]
    assert summary["connection_events"] == 5
    assert used_mb < 700, f"analyze peaked at {used_mb:.0f} MB"
