"""What a fresh host meets: doctor's OK means `run` starts; a missing module is named with its fix.

A module is "removed from the import path" by running the CLI in a Python
whose `sys.modules[name]` is None: `import name` then fails exactly as on a
host without the package.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.lab import PYTHON, ROOT

WITHOUT = "import sys; sys.modules[{name!r}] = None; from monitor.cli import main; main()"


def cli_without(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", WITHOUT.format(name=module), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def doctor_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("socat-monitor-doctor-")]


def test_doctor_ok_proves_programs_and_nftables_and_leaves_nothing():
    done = cli_without("not_a_dependency", "doctor", "--format", "json")
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert done.returncode == 0 and report["ok"], done.stdout + done.stderr
    assert checks["capture programs"]["status"] == "ok" and checks["nftables"]["status"] == "ok"
    assert checks["python modules"]["status"] == "ok"
    assert doctor_namespaces() == []


@pytest.mark.parametrize("module,package", [("nftables", "python3-nftables"), ("pyroute2", "pyroute2"),
                                            ("bcc", "python3-bpfcc")])
def test_doctor_names_a_missing_module_and_its_fix(module, package):
    done = cli_without(module, "doctor", "--format", "json")
    assert done.returncode == 3, done.stdout + done.stderr
    report = json.loads(done.stdout)
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == [f"module {module}"]
    assert package in failed[0]["fix"] and "scripts/setup.sh" in failed[0]["fix"]


def test_run_without_a_module_exits_3_with_the_fix(tmp_path):
    done = cli_without("nftables", "run", "--output", str(tmp_path / "out"), "--duration", "3")
    assert done.returncode == 3, done.stderr
    assert "the Python module 'nftables' is missing" in done.stderr
    assert "apt-get install -y python3-nftables" in done.stderr and "internal error" not in done.stderr
