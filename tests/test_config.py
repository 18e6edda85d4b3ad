"""The agent config file: defaults, durations, overrides, and errors that name file:line and key."""

from __future__ import annotations

import pytest

from monitor.config import config_schema, load_config, place_state, with_overrides
from monitor.errors import InputError
from tests.lab import socat_monitor

GOOD = """\
output: /tmp/out
policy: /etc/socat-monitor/policy.yaml
heartbeat_interval: 30s
capture:
  comms: [socat, socat2]
detect:
  learning_period: 15m
  source_rate_min: 50
enforce:
  dry_run: true
  default_ttl: 10m
  never_block: [10.0.0.0/8]
elasticsearch:
  urls: [http://127.0.0.1:9200]
  batch_interval: 500ms
alert_feed:
  path: /tmp/alerts.jsonl
"""


def test_good_file_maps_every_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD)
    config = place_state(load_config(path))
    assert config.agent.heartbeat_interval_s == 30
    assert config.capture.comms == ("socat", "socat2")
    assert config.detect.learning_period_s == 900 and config.detect.source_rate_min == 50
    assert config.enforce.dry_run and config.enforce.default_ttl_s == 600
    assert config.enforce.never_block == ("10.0.0.0/8",)
    assert config.elasticsearch.batch_interval_s == 0.5
    assert str(config.alert_feed.path) == "/tmp/alerts.jsonl"
    assert str(config.ndjson.directory) == "/tmp/out"
    assert config.enforce.state_file == "/var/lib/socat-monitor/blocks.json"


def test_defaults_without_a_file():
    config = place_state(load_config(None))
    assert config.elasticsearch is None and config.alert_feed is None
    assert config.agent.metrics == "127.0.0.1:9464"


def test_flags_override_the_file_and_state_follows_state_dir(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD)
    config = with_overrides(load_config(path), agent={"output": "/tmp/other", "state_dir": str(tmp_path)},
                            ndjson={"directory": "/tmp/other"}, enforce={"dry_run": None, "netns": "lab"})
    assert config.agent.output == "/tmp/other" and str(config.ndjson.directory) == "/tmp/other"
    assert config.enforce.dry_run is True and config.enforce.netns == "lab"
    assert config.enforce.state_file == str(tmp_path / "blocks.json")
    assert config.agent.baseline == str(tmp_path / "baseline.json")
    assert str(config.elasticsearch.spool_dir) == str(tmp_path / "spool")
    assert str(config.elasticsearch.dead_letter_path) == str(tmp_path / "spool" / "dead-letter.ndjson")


@pytest.mark.parametrize("text, line, needle", [
    ("output: /tmp\nheartbeat_interval: soon\n", 2, "heartbeat_interval"),
    ("capture:\n  comms: socat\n", 2, "capture.comms"),
    ("detect:\n  learning_period: 1h\n  source_rate_mn: 3\n", 3, "source_rate_mn"),
    ("enforce:\n  dry_run: maybe\n", 2, "enforce.dry_run"),
    ("unknown_top: 1\n", 1, "unknown_top"),
    ("ndjson:\n  rotate_bytes: 10\n", 2, "ndjson: rotate_bytes: must be at least 1024"),
    ("detect:\n  resolution: 1s\n  source_rate_window: 0.5s\n", 3,
     "detect: source_rate_window: must be at least resolution_s"),
    ("detect:\n  block_rules: [anomaly.nope]\n", 2, "detect: block_rules: unknown rule"),
    ("alert_feed:\n  path: /tmp/feed\n  keep: 0\n", 3, "alert_feed: keep: must be at least 1"),
    ("alert_feed:\n  syslog: tcp:/x\n", 2, "alert_feed: syslog: expected udp://host:port"),
    ("output: [1, 2\n", 2, "not valid YAML"),
    ("decide:\n  repeat_factor: 0.5\n", 2, "decide: repeat_factor: must be at least 1"),
    ("decide:\n  max_ttl: 1h\n  rules:\n    anomaly.listener_rate: {action: block}\n", 3,
     "decide: rules: anomaly.listener_rate: cannot block"),
    ("decide:\n  rules:\n    policy.nope: {action: block}\n", 2, "'policy.nope' is neither a rule id nor a ruleset"),
    ("decide:\n  repeat_window: sometimes\n", 2, "decide.repeat_window"),
])
def test_bad_files_name_line_and_key(tmp_path, text, line, needle):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:{line}"), str(err.value)
    assert needle in str(err.value)


def test_schema_is_derived_from_the_dataclasses():
    props = config_schema()["properties"]
    assert {"capture", "detect", "decide", "enforce", "ndjson", "elasticsearch", "alert_feed"} <= set(props)
    assert "learning_period" in props["detect"]["properties"]
    assert "learning_period_s" in props["detect"]["properties"]


def test_config_check_cli(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text("enforce:\n  default_ttl: forever\n")
    ok = socat_monitor("config", "check", str(good))
    assert ok.returncode == 0 and "ok" in ok.stdout
    fail = socat_monitor("config", "check", str(bad))
    assert fail.returncode == 2
    assert f"{bad}:2" in fail.stderr and "default_ttl" in fail.stderr
    assert "Traceback" not in fail.stderr
    missing = socat_monitor("config", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_decide_section_takes_durations_and_rules(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("decide:\n  ttl: 5m\n  max_ttl: 2d\n  repeat_factor: 2\n"
                    "  rules:\n    anomaly: {action: block, ttl: 1h}\n    anomaly.new_source: {scope: address}\n")
    decide = load_config(path).decide
    assert (decide.ttl_s, decide.max_ttl_s, decide.repeat_factor) == (300, 172800, 2.0)
    assert decide.rules == {"anomaly": {"action": "block", "ttl": "1h"}, "anomaly.new_source": {"scope": "address"}}
    assert load_config(None).decide.repeat_window_s == 86400
