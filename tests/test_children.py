"""The agent's own Python children (the BPF loader, the columnar conversion) never import from the
directory the agent was started in, nor from an inherited PYTHONPATH: a `bcc.py` or `monitor/`
planted there would otherwise run as root. Real children, started from a hostile working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.ebpf import loader
from monitor.children import PACKAGE_ROOT, child_environment
from monitor.errors import EnvironmentProblem
from monitor.replay.periods import segment_of
from monitor.sinks import ColumnarConfig, ColumnarSink
from tests.test_columnar_sink import _write_closed, wait_for


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    """A working directory and an inherited PYTHONPATH whose `bcc`, `monitor` and `pyarrow` modules
    write the returned marker file when imported; the test runs in that directory."""
    marker = tmp_path / "hostile-code-ran"
    planted = f"import pathlib\npathlib.Path({str(marker)!r}).write_text(__file__)\n"
    for directory in (tmp_path / "cwd", tmp_path / "pythonpath"):
        for package in ("monitor", "pyarrow"):
            (directory / package).mkdir(parents=True)
            (directory / package / "__init__.py").write_text(planted)
        (directory / "bcc.py").write_text(planted)
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pythonpath"))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "cwd" / "bcc.py"))
    return marker


def test_the_loader_child_imports_nothing_from_the_working_directory(marker, tmp_path):
    with pytest.raises(EnvironmentProblem) as caught:      # the source is absent: the child answers so
        loader.load("capture", Path("absent.c"), [], {})
    assert not marker.exists(), f"the loader child imported {marker.read_text()}"
    assert "absent.c" in caught.value.message and "\n" not in caught.value.message


def test_the_columnar_child_imports_nothing_from_the_working_directory(marker, tmp_path):
    directory = Path("events")                              # relative to the hostile working directory
    directory.mkdir()
    closed = _write_closed(directory, "events-20260101T000000Z-1.ndjson", 3)
    errors = []
    sink = ColumnarSink(ColumnarConfig(), directory, on_error=errors.append)
    try:
        wait_for(lambda: sink.converted.segments or sink.converted.failed or errors)
    finally:
        sink.close()
    assert not marker.exists(), f"the columnar child imported {marker.read_text()}"
    assert segment_of(closed).exists() and sink.converted.segments == 1 and errors == []


def test_the_environment_keeps_the_agents_but_not_its_python_search_settings(monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/tmp/elsewhere")
    monkeypatch.setenv("PYTHONPATH", "/tmp/elsewhere")
    monkeypatch.setenv("CHILDREN_TEST_KEPT", "1")
    env = child_environment()
    assert env["PYTHONPATH"] == PACKAGE_ROOT and (Path(PACKAGE_ROOT) / "monitor" / "children.py").exists()
    assert "PYTHONHOME" not in env and env["CHILDREN_TEST_KEPT"] == "1"
