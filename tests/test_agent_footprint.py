"""The live agent's import graph carries no heavy library it does not use.

pandas with pyarrow, DuckDB, the Elasticsearch client (which imports pandas
itself) and bcc with its LLVM would each add tens of MiB to the agent's
resident memory: analysis reads files with them, and the capture programs
are compiled by a short-lived child (`monitor.capture.loader`). Measured by
`scripts/bench_memory.py`.
"""

from __future__ import annotations

import json
import subprocess

from tests.lab import PYTHON, ROOT

NOT_LIVE = ("pandas", "pyarrow", "duckdb", "elasticsearch", "bcc")
PROBE = ("import json, sys, monitor.agent, monitor.cli; from monitor.capture import bpf, loader; "
         "print(json.dumps(sorted(m for m in {names} if m in sys.modules)))")


def loaded(*names: str) -> list[str]:
    done = subprocess.run([PYTHON, "-c", PROBE.format(names=names)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def test_the_agent_imports_no_analysis_library_no_es_client_and_no_bcc():
    assert loaded(*NOT_LIVE) == []


def test_the_probe_sees_what_the_agent_does_import():
    assert loaded("numpy", "orjson") == ["numpy", "orjson"]
