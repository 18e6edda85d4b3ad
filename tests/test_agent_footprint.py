"""The live agent's import graph carries no heavy library it does not use.

pandas with pyarrow, DuckDB, the Elasticsearch client (which imports pandas
itself) and bcc with its LLVM would each add tens of MiB to the agent's
resident memory: analysis reads files with them, and the BPF programs (the
capture's and the egress guard's) are compiled by a short-lived child
(`monitor.ebpf.loader`). A lazy `import bcc` inside a function would not show
in the import graph, so the source is read too: only the loader's child
imports bcc. Measured by `scripts/bench_memory.py`.
"""

from __future__ import annotations

import ast
import json
import subprocess

from tests.lab import PYTHON, ROOT

NOT_LIVE = ("pandas", "pyarrow", "duckdb", "elasticsearch", "bcc")
PROBE = ("import json, sys, monitor.agent, monitor.cli; from monitor.capture import bpf; from monitor.ebpf import loader; "
         "print(json.dumps(sorted(m for m in {names} if m in sys.modules)))")


def loaded(*names: str) -> list[str]:
    done = subprocess.run([PYTHON, "-c", PROBE.format(names=names)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def test_the_agent_imports_no_analysis_library_no_es_client_and_no_bcc():
    assert loaded(*NOT_LIVE) == []


def test_the_probe_sees_what_the_agent_does_import():
    assert loaded("numpy", "orjson") == ["numpy", "orjson"]


def bcc_importers() -> list[str]:
    """`module:function` of every `import bcc` / `from bcc import` in the package's source."""
    found = []
    for path in sorted((ROOT / "monitor").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.split(".")[0] == "bcc" for name in names):
                inside = [f.name for f in functions if f.lineno <= node.lineno <= f.end_lineno]   # outermost first
                found.append(f"{path.relative_to(ROOT).with_suffix('')}:{inside[-1] if inside else '<module>'}")
    return found


def test_only_the_loader_child_imports_bcc_not_the_egress_guard_nor_the_capture():
    assert bcc_importers() == ["monitor/ebpf/loader:_child"]
