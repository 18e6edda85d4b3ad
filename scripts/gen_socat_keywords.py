"""Regenerate monitor/socat/keywords.py from `socat -hhh` of the installed socat.

Usage: .venv/bin/python scripts/gen_socat_keywords.py > monitor/socat/keywords.py
The table records every address type and address option with its groups and
aliases, so the command-line parser knows exactly what that socat accepts
(read by monitor.socat.tables.parse_help, the same reader the audit uses on a
running socat's own -hhh).
"""

from __future__ import annotations

import re
import subprocess

from monitor.socat.tables import parse_help


def main() -> None:
    version = subprocess.run(["socat", "-V"], capture_output=True, text=True, check=True).stdout
    number = re.search(r"socat version (\S+)", version).group(1)
    table = parse_help(subprocess.run(["socat", "-hhh"], capture_output=True, text=True, check=False).stdout)
    print('"""Address types and options of socat ' + number + ', generated from `socat -hhh`')
    print("by scripts/gen_socat_keywords.py: do not edit by hand.\"\"\"")
    print()
    print(f"SOCAT_VERSION = {number!r}")
    print()
    print("# canonical address type -> (allowed parameter counts, option groups)")
    print("ADDRESS_TYPES: dict[str, tuple[frozenset[int], frozenset[str]]] = {")
    for name, (counts, groups) in sorted(table.address_types.items()):
        print(f"    {name!r}: (frozenset({sorted(counts)!r}), frozenset({sorted(groups)!r})),")
    print("}")
    print()
    print("ADDRESS_ALIASES: dict[str, str] = {")
    for name, target in sorted(table.address_aliases.items()):
        print(f"    {name!r}: {target!r},")
    print("}")
    print()
    print("# canonical option -> option groups")
    print("OPTIONS: dict[str, frozenset[str]] = {")
    for name, groups in sorted(table.options.items()):
        print(f"    {name!r}: frozenset({sorted(groups)!r}),")
    print("}")
    print()
    print("OPTION_ALIASES: dict[str, str] = {")
    for name, target in sorted(table.option_aliases.items()):
        print(f"    {name!r}: {target!r},")
    print("}")


if __name__ == "__main__":
    main()
