"""socat keyword tables: what one socat build accepts, and which keywords depend on the build.

`Keywords` holds the address types (parameter counts, option groups), options
(groups) and their aliases. `parse_help(text)` reads them from `socat -hhh`
(of the running binary, or of this host's socat by
scripts/gen_socat_keywords.py). `BUILTIN` is the table used when no socat
binary can be asked: this host's generated `keywords` plus the build-dependent
keywords this host's build lacks (READLINE and its options), so a keyword that
is valid on some builds is not reported as refused. `address_feature` and
`option_feature` name the `-V` feature (`WITH_READLINE`, ...) a keyword needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import keywords

AddressType = tuple[frozenset[int], frozenset[str]]

# address type name prefix -> the `socat -V` feature it needs (first match wins: socks4a before socks4)
_ADDRESS_FEATURES: tuple[tuple[str, str], ...] = (
    ("readline", "WITH_READLINE"), ("openssl", "WITH_OPENSSL"), ("sctp", "WITH_SCTP"),
    ("vsock", "WITH_VSOCK"), ("socks4a", "WITH_SOCKS4A"), ("socks4", "WITH_SOCKS4"), ("proxy", "WITH_PROXY"),
    ("tun", "WITH_TUN"), ("pty", "WITH_PTY"), ("exec", "WITH_EXEC"), ("system", "WITH_SYSTEM"),
    ("abstract-", "WITH_ABSTRACT_UNIXSOCKET"), ("interface", "WITH_INTERFACE"),
    ("socket-", "WITH_GENERICSOCKET"), ("ip-", "WITH_RAWIP"), ("ip4-", "WITH_RAWIP"), ("ip6-", "WITH_RAWIP"),
)
# option group -> the feature its options need
_OPTION_GROUP_FEATURES = {"READLINE": "WITH_READLINE", "OPENSSL": "WITH_OPENSSL", "SCTP": "WITH_SCTP",
                          "SOCKS4": "WITH_SOCKS4", "HTTP": "WITH_PROXY", "PTY": "WITH_PTY"}
_OPTION_NAME_FEATURES = (("tcpwrap", "WITH_LIBWRAP"), ("fips", "WITH_FIPS"))

# Build-dependent keywords of socat 1.7.4.4 that this host's build (without readline) does not list.
_EXTRA_ADDRESSES: dict[str, AddressType] = {
    "readline": (frozenset([0]), frozenset(["FD", "READLINE", "TERMIOS"])),
}
_EXTRA_OPTIONS: dict[str, frozenset[str]] = {
    name: frozenset(["READLINE"]) for name in ("history-file", "noecho", "noprompt", "prompt")
}
_EXTRA_OPTION_ALIASES = {"history": "history-file"}


@dataclass(frozen=True, slots=True)
class Keywords:
    """Address types and options one socat accepts, with their aliases (all lower case)."""

    address_types: Mapping[str, AddressType]
    address_aliases: Mapping[str, str]
    options: Mapping[str, frozenset[str]]
    option_aliases: Mapping[str, str]

    def address(self, keyword: str) -> str | None:
        """The canonical address type of keyword; None when this socat does not know it."""
        lowered = keyword.lower()
        return lowered if lowered in self.address_types else self.address_aliases.get(lowered)

    def option(self, name: str) -> str | None:
        """The canonical option name; None when this socat does not know it."""
        lowered = name.lower()
        return lowered if lowered in self.options else self.option_aliases.get(lowered)


def address_feature(kind: str) -> str | None:
    """The `socat -V` feature (WITH_...) an address type needs beyond the base build, if any."""
    return next((feature for prefix, feature in _ADDRESS_FEATURES if kind.startswith(prefix)), None)


def option_feature(name: str, groups: frozenset[str]) -> str | None:
    """The `socat -V` feature an option needs, if any."""
    named = next((feature for prefix, feature in _OPTION_NAME_FEATURES if name.startswith(prefix)), None)
    return named or next((_OPTION_GROUP_FEATURES[g] for g in sorted(groups) if g in _OPTION_GROUP_FEATURES), None)


def parse_help(text: str) -> Keywords:
    """The keyword tables in the text `socat -hhh` prints."""
    addresses: dict[str, tuple[set[int], str]] = {}
    address_aliases: dict[str, str] = {}
    options: dict[str, frozenset[str]] = {}
    option_aliases: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("bi-address:", "address-head:", "opts:"):
            section = stripped
        elif section == "bi-address:":
            bare = re.fullmatch(r"([a-z0-9-]+)\[,<opts>\]\tgroups=(\S+)", stripped)
            if bare:
                addresses.setdefault(bare.group(1), (set(), bare.group(2)))[0].add(0)
        elif section == "address-head:":
            _address_head(stripped, addresses, address_aliases)
        elif section == "opts:":
            alias = re.fullmatch(r"(\S+) is an alias for (\S+)", stripped)
            opt = re.fullmatch(r"(\S+)\tgroups=(\S+)\tphase=\S+\ttype=\S+", stripped)
            if alias:
                option_aliases[alias.group(1)] = alias.group(2)
            elif opt:
                options[opt.group(1)] = frozenset(opt.group(2).split(","))
    return Keywords(
        address_types={name: (frozenset(counts), frozenset(groups.split(",")))
                       for name, (counts, groups) in addresses.items()},
        address_aliases=address_aliases,
        options=options,
        option_aliases=option_aliases,
    )


def _address_head(line: str, addresses: dict[str, tuple[set[int], str]], aliases: dict[str, str]) -> None:
    alias = re.fullmatch(r"(\S+) is an alias name for (\S+)", line)
    if alias:
        if not alias.group(1).startswith("<"):
            aliases[alias.group(1)] = alias.group(2)
        return
    head = re.fullmatch(r"([a-z0-9-]+)(\[?)(:[^\t]*)?\]?\tgroups=(\S+)", line)
    if head:
        name, optional, params, groups = head.groups()
        counts = addresses.get(name, (set(), groups))[0]
        counts.add(params.count(":") if params else 0)
        if optional:
            counts.add(0)
        addresses[name] = (counts, groups)   # a head's groups (pipe:<file> adds NAMED) win over the bare form's


BUILTIN = Keywords(
    address_types={**_EXTRA_ADDRESSES, **keywords.ADDRESS_TYPES},
    address_aliases=keywords.ADDRESS_ALIASES,
    options={**_EXTRA_OPTIONS, **keywords.OPTIONS},
    option_aliases={**_EXTRA_OPTION_ALIASES, **keywords.OPTION_ALIASES},
)
BUILTIN_VERSION = keywords.SOCAT_VERSION
