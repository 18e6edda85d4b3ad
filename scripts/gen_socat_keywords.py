"""Regenerate monitor/socat/keywords.py from `socat -hhh` of the installed socat.

Usage: .venv/bin/python scripts/gen_socat_keywords.py > monitor/socat/keywords.py
The table records every address type and address option with its groups and
aliases, so the command-line parser knows exactly what that socat accepts.
"""

from __future__ import annotations

import re
import subprocess


def main() -> None:
    version = subprocess.run(["socat", "-V"], capture_output=True, text=True, check=True).stdout
    number = re.search(r"socat version (\S+)", version).group(1)
    text = subprocess.run(["socat", "-hhh"], capture_output=True, text=True, check=False).stdout
    addresses: dict[str, tuple[set[int], str]] = {}
    address_aliases: dict[str, str] = {}
    options: dict[str, str] = {}
    option_aliases: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("bi-address:", "address-head:", "opts:"):
            section = stripped
            continue
        if section == "bi-address:":
            bare = re.fullmatch(r"([a-z0-9-]+)\[,<opts>\]\tgroups=(\S+)", stripped)
            if bare:
                counts, groups = addresses.get(bare.group(1), (set(), bare.group(2)))
                counts.add(0)
                addresses[bare.group(1)] = (counts, groups)
        elif section == "address-head:":
            alias = re.fullmatch(r"(\S+) is an alias name for (\S+)", stripped)
            if alias:
                address_aliases[alias.group(1)] = alias.group(2)
                continue
            head = re.fullmatch(r"([a-z0-9-]+)(\[?)(:[^\t]*)?\]?\tgroups=(\S+)", stripped)
            if head:
                name, optional, params, groups = head.groups()
                count = params.count(":") if params else 0
                counts, _ = addresses.get(name, (set(), groups))
                counts.add(count)
                if optional:
                    counts.add(0)
                addresses[name] = (counts, groups)
        elif section == "opts:":
            alias = re.fullmatch(r"(\S+) is an alias for (\S+)", stripped)
            if alias:
                option_aliases[alias.group(1)] = alias.group(2)
                continue
            opt = re.fullmatch(r"(\S+)\tgroups=(\S+)\tphase=\S+\ttype=\S+", stripped)
            if opt:
                options[opt.group(1)] = opt.group(2)
    print('"""Address types and options of socat ' + number + ', generated from `socat -hhh`')
    print("by scripts/gen_socat_keywords.py: do not edit by hand.\"\"\"")
    print()
    print(f"SOCAT_VERSION = {number!r}")
    print()
    print("# canonical address type -> (allowed parameter counts, option groups)")
    print("ADDRESS_TYPES: dict[str, tuple[frozenset[int], frozenset[str]]] = {")
    for name, (counts, groups) in sorted(addresses.items()):
        print(f"    {name!r}: (frozenset({sorted(counts)!r}), frozenset({sorted(groups.split(','))!r})),")
    print("}")
    print()
    print("ADDRESS_ALIASES: dict[str, str] = {")
    for name, target in sorted(address_aliases.items()):
        if name.startswith("<"):
            continue
        print(f"    {name!r}: {target!r},")
    print("}")
    print()
    print("# canonical option -> option groups")
    print("OPTIONS: dict[str, frozenset[str]] = {")
    for name, groups in sorted(options.items()):
        print(f"    {name!r}: frozenset({sorted(groups.split(','))!r}),")
    print("}")
    print()
    print("OPTION_ALIASES: dict[str, str] = {")
    for name, target in sorted(option_aliases.items()):
        print(f"    {name!r}: {target!r},")
    print("}")


if __name__ == "__main__":
    main()
