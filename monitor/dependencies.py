"""What socat-monitor imports from outside the standard library, and how a host gets each.

`DEPENDENCIES` is the one list: `doctor` imports every entry to prove the
agent can start, and the CLI edge turns a `ModuleNotFoundError` into the fix
for the module it names (exit 3). `tests/test_imports.py` holds the list
honest against the code's imports, `pyproject.toml` and the Debian packages
`scripts/setup.sh` installs.
"""

from __future__ import annotations

from dataclasses import dataclass

SETUP = "scripts/setup.sh"


@dataclass(frozen=True, slots=True)
class Dependency:
    module: str          # the top-level name the code imports
    package: str         # the Debian package or PyPI distribution that provides it
    debian: bool = False  # True: only Debian has it (the venv sees it through --system-site-packages)

    @property
    def fix(self) -> str:
        if self.debian:
            return (f"apt-get install -y {self.package}, and run from a virtualenv made with "
                    f"/usr/bin/python3 -m venv --system-site-packages ({SETUP} does both)")
        return f"pip install '{self.package}' into the agent's virtualenv ({SETUP} installs every dependency)"


DEPENDENCIES = (
    Dependency("bcc", "python3-bpfcc", debian=True),
    Dependency("nftables", "python3-nftables", debian=True),
    Dependency("click", "click"),
    Dependency("duckdb", "duckdb"),
    Dependency("elasticsearch", "elasticsearch"),
    Dependency("jsonschema", "jsonschema"),
    Dependency("numpy", "numpy"),
    Dependency("orjson", "orjson"),
    Dependency("pandas", "pandas"),
    Dependency("prometheus_client", "prometheus-client"),
    Dependency("pyarrow", "pyarrow"),
    Dependency("pyroute2", "pyroute2"),
    Dependency("yaml", "PyYAML"),
)

BY_MODULE = {dep.module: dep for dep in DEPENDENCIES}


def fix_for(module: str | None) -> str | None:
    """The fix for a missing module (`ModuleNotFoundError.name`, dotted or not); None if it is not ours to name."""
    dep = BY_MODULE.get((module or "").split(".")[0])
    return dep.fix if dep else None
