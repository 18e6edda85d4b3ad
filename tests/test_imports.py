"""Every module the code imports is installed on a fresh host.

A module `monitor/` imports must be in the standard library, or come from a
distribution `pyproject.toml` depends on, or from a Debian package that
`scripts/setup.sh` installs (its DEBIAN_PYTHON_MODULES line). The list
`monitor.dependencies` (what doctor checks) must agree with all three.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from monitor.dependencies import DEPENDENCIES
from tests.lab import ROOT


def imported_modules(tree: Path) -> dict[str, str]:
    """Top-level module -> the first file:line importing it, for every absolute import under `tree`."""
    found: dict[str, str] = {}
    for path in sorted(tree.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], f"{path.relative_to(tree.parent)}:{node.lineno}")
    return found


def setup_debian_modules(setup: Path) -> dict[str, str]:
    """module -> Debian package, from setup.sh's `DEBIAN_PYTHON_MODULES=(module=package ...)`."""
    match = re.search(r"^DEBIAN_PYTHON_MODULES=\(([^)]*)\)", setup.read_text(), re.M)
    assert match, f"{setup} has no DEBIAN_PYTHON_MODULES=(...) line"
    return dict(pair.split("=", 1) for pair in match.group(1).split())


def pyproject_distributions(pyproject: Path) -> set[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {_canonical(re.match(r"[A-Za-z0-9_.\-]+", dep).group(0)) for dep in deps}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def uninstalled_imports(tree: Path, setup: Path, pyproject: Path) -> list[str]:
    """Imports a fresh host would not have: `file:line: module` for each."""
    debian = setup_debian_modules(setup)
    declared = pyproject_distributions(pyproject)
    dists = packages_distributions()
    own = tree.name
    problems = []
    for module, where in sorted(imported_modules(tree).items()):
        if module == own or module in sys.stdlib_module_names or module in debian:
            continue
        if not {_canonical(d) for d in dists.get(module, [])} & declared:
            problems.append(f"{where}: {module} is neither standard library, nor a pyproject.toml dependency, "
                            f"nor in {setup.name}'s DEBIAN_PYTHON_MODULES")
    return problems


def test_every_import_is_installed_by_setup():
    assert uninstalled_imports(ROOT / "monitor", ROOT / "scripts" / "setup.sh", ROOT / "pyproject.toml") == []


def test_a_new_uninstalled_import_is_caught(tmp_path):
    pkg = tmp_path / "monitor"
    pkg.mkdir()
    (pkg / "fresh.py").write_text("import os\nimport yaml\n\ndef f():\n    import frobnicate.sub\n")
    (tmp_path / "setup.sh").write_text("DEBIAN_PYTHON_MODULES=(bcc=python3-bpfcc)\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["PyYAML>=6"]\n')
    problems = uninstalled_imports(pkg, tmp_path / "setup.sh", tmp_path / "pyproject.toml")
    assert problems == ["monitor/fresh.py:5: frobnicate is neither standard library, nor a pyproject.toml "
                        "dependency, nor in setup.sh's DEBIAN_PYTHON_MODULES"]


def test_doctor_list_matches_the_code_setup_and_pyproject():
    third_party = {m for m in imported_modules(ROOT / "monitor") if m != "monitor" and m not in sys.stdlib_module_names}
    assert {dep.module for dep in DEPENDENCIES} == third_party
    debian = setup_debian_modules(ROOT / "scripts" / "setup.sh")
    assert {dep.module: dep.package for dep in DEPENDENCIES if dep.debian} == debian
    declared = pyproject_distributions(ROOT / "pyproject.toml")
    assert [dep.package for dep in DEPENDENCIES if not dep.debian and _canonical(dep.package) not in declared] == []
