"""The installed copy the service runs carries its own code and BPF sources.

scripts/install-service.sh installs socat-monitor non-editable under a
root-owned prefix; the unit runs that copy. This builds the same wheel, installs
it into a folder, and checks the installed code compiles the BPF C it carries,
not the checkout's.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from tests.lab import PYTHON, ROOT


def test_installed_copy_reads_its_own_bpf_sources(tmp_path):
    built = subprocess.run([PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("socat_monitor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in ("capture.c", "egress.c"):
            assert archive.read(f"monitor/bpf/{name}") == (ROOT / "bpf" / name).read_bytes()
    target = tmp_path / "site"
    installed = subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    where = subprocess.run([PYTHON, "-c", "from monitor.capture.bpf import SOURCE; from monitor.enforce.egress "
                            "import SOURCE as E; print(SOURCE.resolve()); print(E.resolve())"],
                           cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert target.resolve() in Path(line).parents, f"{line} is not in the installed copy"


def test_service_runs_the_installed_copy():
    unit = (ROOT / "scripts" / "socat-monitor.service").read_text()
    execs = [line for line in unit.splitlines() if line.startswith(("ExecStart=", "ExecStartPre=/"))]
    assert execs and all("/opt/socat-monitor/bin/socat-monitor " in line for line in execs)
