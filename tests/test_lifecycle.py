"""Index lifecycle: rollover settings from the config file, the ILM policy, which indices expire."""

from __future__ import annotations

import pytest

from monitor.config import load_config
from monitor.errors import InputError
from monitor.sinks.lifecycle import RolloverConfig, expired, ilm_policy


def _load(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path)


def test_rollover_and_retention_from_the_config_file(tmp_path):
    config = _load(tmp_path, "elasticsearch:\n  urls: [http://127.0.0.1:9250]\n  retention: 30d\n"
                             "  rollover:\n    max_docs: 1000\n    max_age: 1d\n    max_size: 5gb\n"
                             "    check_interval: 10s\n")
    es = config.elasticsearch
    assert es.retention_s == 30 * 86400
    assert es.rollover == RolloverConfig(max_docs=1000, max_age_s=86400.0, max_size="5gb", check_interval_s=10.0)
    assert es.rollover.conditions() == {"max_docs": 1000, "max_age": "86400s", "max_size": "5gb"}


def test_defaults_roll_weekly_or_at_50gb_and_keep_everything(tmp_path):
    es = _load(tmp_path, "elasticsearch:\n  urls: [http://127.0.0.1:9250]\n").elasticsearch
    assert es.rollover.conditions() == {"max_age": "604800s", "max_size": "50gb"} and es.retention_s is None
    assert _load(tmp_path, "elasticsearch:\n  rollover: null\n").elasticsearch.rollover is None


@pytest.mark.parametrize("body,problem", [
    ("    max_docs: 0\n", "max_docs: a positive whole number"),
    ("    max_size: huge\n", "max_size: expected a size"),
    ("    max_dogs: 5\n", "rollover: max_dogs: unknown key"),
    ("    max_age: soon\n", "not a duration"),
])
def test_bad_rollover_settings_are_named(tmp_path, body, problem):
    with pytest.raises(InputError, match=problem):
        _load(tmp_path, "elasticsearch:\n  rollover:\n" + body)


def test_ilm_policy_rolls_over_and_deletes_after_the_retention():
    policy = ilm_policy(RolloverConfig(max_docs=10, max_age_s=None, max_size=None), 3600.0)["policy"]["phases"]
    assert policy["hot"]["actions"]["rollover"] == {"max_docs": 10}
    assert policy["delete"] == {"min_age": "3600s", "actions": {"delete": {}}}
    assert "delete" not in ilm_policy(RolloverConfig(), None)["policy"]["phases"]


def test_an_index_expires_once_its_successor_is_older_than_the_retention():
    day = 86_400_000
    created = {"a-000001": 0, "a-000002": 10 * day, "a-000003": 35 * day, "a-000004": 39 * day,
               "a-other": 0, "ab-000001": 0}
    assert expired("a", created, 20 * 86400, now_ms=40 * day) == ["a-000001"]
    assert expired("a", created, 1 * 86400, now_ms=40 * day) == ["a-000001", "a-000002"]
    assert expired("a", {"a-000001": 0}, 1, now_ms=10 * day) == []      # the write index stays


def test_template_points_at_the_ilm_policy_and_the_ingest_pipeline():
    from monitor.sinks.template import index_template

    settings = index_template(["a-*"], pipeline="p", ilm=("policy", "a"))["template"]["settings"]
    assert settings["index.final_pipeline"] == "p"
    assert (settings["index.lifecycle.name"], settings["index.lifecycle.rollover_alias"]) == ("policy", "a")
    assert "index.lifecycle.name" not in index_template(["a-*"], pipeline="p")["template"]["settings"]
