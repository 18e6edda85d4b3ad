"""The socat command-line grammar (socat 1.7.4.4), parsed for a static audit.

`parse_command_line(argv)` reads leading options (`-d -d`, `-s`, `-T 10`,
`-lf FILE`, ...) and the two addresses. An address is
`KEYWORD:param:param,option,option=value`; two single addresses joined by
`!!` make a dual address (read side !! write side). Inside an address,
double and single quotes group text and are dropped, a backslash escapes the
next character, and `(...)`, `[...]`, `{...}` nest and are kept (so
`TCP6:[::1]:80` has the two parameters `[::1]` and `80`). After the first
`,` only `,` separates options: `range=10.0.0.0:255.0.0.0` keeps its `:`.
Keywords are case-insensitive and resolved through one socat's alias tables
(`tables.Keywords`: by default the built-in table, or a running binary's own
`-hhh`); a bare number is an FD address and a keyword containing `/` a GOPEN
file. Unknown keywords are kept (kind None / canonical None) so the audit can
report them; only a command socat could not even tokenize raises InputError.
A socat-2 address chain (`OPENSSL,verify=0|TCP:host:443`) is marked
`chained`: socat 1.x reads it as one address with odd options.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InputError
from .tables import BUILTIN, Keywords

MAX_COMMAND_BYTES = 65536   # a longer argv is refused, not parsed: real socat lines are under a few KiB
_FLAG_OPTIONS = set("DvxsuUg46")
_VALUE_OPTIONS = set("btTrRLW")
_INFO_OPTIONS = set("Vh?")
_LOG_OPTIONS = {"y": "attached", "f": "value", "s": "none", "m": "attached", "p": "value", "u": "none", "h": "none"}
_OPEN = {"(": ")", "[": "]", "{": "}"}
# proxy address kinds -> (option naming the proxy server's port, socat's default port)
_PROXY_PORT = {"socks4": ("socksport", "1080"), "socks4a": ("socksport", "1080"), "proxy": ("proxyport", "8080")}
_RAW_IP_PREFIXES = ("ip-", "ip4-", "ip6-")   # IP-RECV:6 etc.: the parameter is an IP protocol number
_RECEIVING_SUFFIXES = ("recvfrom", "recv")   # *-RECV / *-RECVFROM take datagrams from any sender


@dataclass(frozen=True, slots=True)
class AddressOption:
    """One `,option[=value]` of an address."""

    name: str                 # as written, lower-cased
    value: str | None
    text: str                 # the raw token as written
    canonical: str | None     # socat's canonical name; None = socat does not know it
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SocatAddress:
    """One single address. `position` is 1 or 2; `side` is read/write for `!!` halves, else None."""

    text: str
    keyword: str
    kind: str | None          # canonical address type (tcp-listen, fd, gopen, ...); None = unknown
    params: tuple[str, ...]
    options: tuple[AddressOption, ...]
    position: int
    side: str | None = None
    groups: frozenset[str] = frozenset()
    chained: bool = False     # a socat-2 address chain ('|'): socat 1.x cannot run it

    def option(self, *names: str) -> AddressOption | None:
        """The first option whose canonical (or written) name is one of names: socat uses the first."""
        wanted = {canonical_option(n) or n for n in names}
        for opt in self.options:
            if (opt.canonical or opt.name) in wanted:
                return opt
        return None

    def has(self, *names: str) -> bool:
        return self.option(*names) is not None

    def value(self, *names: str) -> str | None:
        """The value of `option(*names)`; None when it is absent or given without a value."""
        opt = self.option(*names)
        return opt.value if opt is not None and opt.value else None

    @property
    def is_listener(self) -> bool:
        """Listening or receiving (*-LISTEN, *-RECV, *-RECVFROM): peers come to this address."""
        return "LISTEN" in self.groups or (self.kind or "").endswith(_RECEIVING_SUFFIXES)

    @property
    def is_ip(self) -> bool:
        return bool({"IP4", "IP6"} & self.groups)

    @property
    def is_openssl(self) -> bool:
        return "OPENSSL" in self.groups

    @property
    def is_exec(self) -> bool:
        return self.kind in ("exec", "system")

    @property
    def is_raw_ip(self) -> bool:
        """IP-RECV, IP4-RECVFROM, ...: raw IP, whose parameter is a protocol number, not a port."""
        return (self.kind or "").startswith(_RAW_IP_PREFIXES)

    @property
    def protocol(self) -> int | None:
        """The IP protocol number of a raw IP address (6 in IP4-RECVFROM:6)."""
        text = self.params[0] if self.is_raw_ip and self.params else ""
        return int(text) if text.isdigit() else None

    @property
    def listen_port(self) -> int | None:
        if not self.is_listener or not self.is_ip or self.is_raw_ip or not self.params:
            return None
        text = self.params[0]
        return int(text) if text.isdigit() else None

    @property
    def bind_address(self) -> str | None:
        """The local address a listener binds to (from bind=), brackets and port removed."""
        value = self.value("bind")
        if value is None:
            return None
        if value.startswith("["):
            return value[1:value.find("]")] if "]" in value else value[1:]
        return value.rsplit(":", 1)[0] if value.count(":") == 1 else value

    @property
    def connect_target(self) -> tuple[str, int | None] | None:
        """(host, port) a client address connects to (TCP, OPENSSL; for SOCKS/PROXY the proxy server)."""
        if self.is_listener or not self.is_ip or "TCP" not in self.groups and "UDP" not in self.groups \
                and "SCTP" not in self.groups:
            return None
        if self.kind in _PROXY_PORT and len(self.params) == 3:
            # the TCP connection goes to the proxy server (what capture sees), not to the final target
            option, default = _PROXY_PORT[self.kind]
            host, port = self.params[0], self.value(option) or default
        elif len(self.params) == 2:
            host, port = self.params
        else:
            return None
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return host, int(port) if port.isdigit() else None


@dataclass(frozen=True, slots=True)
class SocatCommand:
    """A parsed socat invocation."""

    argv: tuple[str, ...]
    options: tuple[str, ...]             # leading options as written, values included
    addresses: tuple[SocatAddress, ...]  # every single address, in order (dual halves separately)
    sloppy: bool = False                 # -s
    info_only: bool = False              # -V / -h: prints and exits
    total_timeout: str | None = None     # -T
    dump_options: tuple[str, ...] = ()   # -v -x -r -R: traffic written to logs/files
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)

    def listeners(self) -> tuple[SocatAddress, ...]:
        return tuple(a for a in self.addresses if a.is_listener)


def canonical_option(name: str) -> str | None:
    """The canonical name of an option in the built-in table (option names do not vary between builds)."""
    return BUILTIN.option(name)


def _lex(text: str, where: str) -> list[tuple[str, str, str]]:
    """Split an address argument into (separator before, value, raw) pieces at top-level `:` `,` `!!`."""
    pieces: list[tuple[str, str, str]] = []
    sep, value, raw = "", [], []
    stack: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise InputError(where, f"address {text!r} ends with a lone backslash")
            value.append(text[i + 1])
            raw.append(text[i:i + 2])
            i += 2
            continue
        if ch in "\"'":
            end = i + 1
            chunk = []
            while end < len(text) and text[end] != ch:
                if ch == '"' and text[end] == "\\" and end + 1 < len(text):
                    end += 1
                chunk.append(text[end])
                end += 1
            if end >= len(text):
                raise InputError(where, f"unclosed quote {ch} in address {text!r}")
            value.extend(chunk)
            raw.append(text[i:end + 1])
            i = end + 1
            continue
        if ch in _OPEN:
            stack.append(_OPEN[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
        elif not stack and (ch in ":," or text.startswith("!!", i)):
            pieces.append((sep, "".join(value), "".join(raw)))
            sep = "!!" if ch == "!" else ch
            value, raw = [], []
            i += 2 if ch == "!" else 1
            continue
        value.append(ch)
        raw.append(ch)
        i += 1
    if stack:
        raise InputError(where, f"unclosed bracket (missing {stack[-1]!r}) in address {text!r}")
    pieces.append((sep, "".join(value), "".join(raw)))
    return pieces


def _option(value: str, raw: str, table: Keywords) -> AddressOption:
    name, eq, opt_value = value.partition("=")
    canonical = table.option(name.strip())
    return AddressOption(
        name=name.strip().lower(),
        value=opt_value if eq else None,
        text=raw,
        canonical=canonical,
        groups=table.options.get(canonical, frozenset()) if canonical else frozenset(),
    )


def _is_chain(pieces: list[tuple[str, str, str]], kind: str | None, table: Keywords) -> bool:
    """A socat-2 chain: some piece holds '|' followed by an address keyword (not a command's pipe)."""
    if kind in ("exec", "system"):
        return False   # there a '|' is the command's own pipe
    return any(table.address(after.strip()) is not None for _, value, _ in pieces for after in value.split("|")[1:])


def _single(pieces: list[tuple[str, str, str]], position: int, side: str | None, table: Keywords) -> SocatAddress:
    keyword = pieces[0][1]
    params: list[str] = []
    options: list[tuple[str, str]] = []
    for sep, value, raw in pieces[1:]:
        if sep == ":" and not options:
            params.append(value)
        elif sep == ":":
            options[-1] = (options[-1][0] + ":" + value, options[-1][1] + ":" + raw)
        else:
            options.append((value, raw))
    kind = table.address(keyword)
    if kind is None and keyword.isdigit():
        kind, params = "fd", [keyword] + params
    elif kind is None and "/" in keyword:
        kind, params = "gopen", [keyword] + params
    groups = table.address_types[kind][1] if kind else frozenset()
    text = pieces[0][2] + "".join(sep + raw for sep, _, raw in pieces[1:])
    return SocatAddress(
        text=text,
        keyword=keyword,
        kind=kind,
        params=tuple(params),
        options=tuple(_option(v, r, table) for v, r in options),
        position=position,
        side=side,
        groups=groups,
        chained=_is_chain(pieces, kind, table),
    )


def parse_address(text: str, position: int = 1, where: str = "command line",
                  table: Keywords = BUILTIN) -> list[SocatAddress]:
    """One address argument: a single address, or the two halves of a `!!` dual address."""
    pieces = _lex(text, where)
    groups: list[list[tuple[str, str, str]]] = [[]]
    for piece in pieces:
        if piece[0] == "!!":
            groups.append([("", piece[1], piece[2])])
        else:
            groups[-1].append(piece)
    if len(groups) > 2:
        raise InputError(where, f"address {text!r} has more than one '!!'")
    if len(groups) == 2:
        return [_single(groups[0], position, "read", table), _single(groups[1], position, "write", table)]
    return [_single(groups[0], position, None, table)]


def _is_address(arg: str) -> bool:
    return not arg.startswith("-") or len(arg) == 1 or arg[1] in ",:!"


def parse_command_line(argv: Sequence[str] | str, table: Keywords = BUILTIN) -> SocatCommand:
    """A SocatCommand from argv (or one shell-quoted string), keywords resolved with table (one socat's
    -hhh; default the built-in table); raises InputError on bad syntax."""
    if isinstance(argv, str):
        try:
            argv = shlex.split(argv)
        except ValueError as exc:
            raise InputError("command line", f"cannot split into arguments: {exc}") from None
    argv = tuple(argv)
    if not argv:
        raise InputError("command line", "empty command line")
    size = sum(len(arg) + 1 for arg in argv)
    if size > MAX_COMMAND_BYTES:
        raise InputError("command line", f"{size:,} characters: more than the {MAX_COMMAND_BYTES:,} that are "
                                         "parsed (no real socat command line is that long)")
    args = list(argv[1:]) if os.path.basename(argv[0]).startswith("socat") else list(argv)
    options: list[str] = []
    flags: set[str] = set()
    dumps: list[str] = []
    timeout = None
    while args and not _is_address(args[0]):
        arg = args.pop(0)
        letter, rest = arg[1], arg[2:]
        written = [arg]
        if letter == "d" and set(rest) <= {"d"}:
            flags.add("d")
        elif letter in _FLAG_OPTIONS and not rest:
            flags.add(letter)
            if letter in "vx":
                dumps.append(arg)
        elif letter in _INFO_OPTIONS and (letter != "h" or set(rest) <= {"h"}):
            flags.add(letter)
        elif letter == "l" and rest[:1] in _LOG_OPTIONS:
            mode = _LOG_OPTIONS[rest[0]]
            if mode == "none" and rest[1:]:
                raise InputError("command line", f"option {arg!r}: -l{rest[0]} takes no value")
            if mode == "value" and not rest[1:]:
                if not args:
                    raise InputError("command line", f"option {arg!r} needs a value")
                written.append(args.pop(0))
            flags.add("l" + rest[0])
        elif letter in _VALUE_OPTIONS:
            if not rest:
                if not args:
                    raise InputError("command line", f"option {arg!r} needs a value")
                written.append(args.pop(0))
            value = rest or written[-1]
            flags.add(letter)
            if letter == "T":
                timeout = value
            if letter in "rR":
                dumps.append(" ".join(written))
        elif letter in _FLAG_OPTIONS | _INFO_OPTIONS | {"d"}:
            raise InputError("command line", f"option {arg!r}: do not merge single character options "
                                             f"(socat wants {' '.join('-' + c for c in arg[1:])})")
        else:
            raise InputError("command line", f"unknown option {arg!r} (socat refuses to start)")
        options.extend(written)
    info_only = bool(flags & _INFO_OPTIONS)
    if len(args) != 2 and not info_only:
        raise InputError("command line", f"exactly 2 addresses required, found {len(args)}: {shlex.join(args)}")
    addresses: list[SocatAddress] = []
    for position, text in enumerate(args[:2], start=1):
        addresses.extend(parse_address(text, position, f"address {position}", table))
    return SocatCommand(
        argv=argv,
        options=tuple(options),
        addresses=tuple(addresses),
        sloppy="s" in flags,
        info_only=info_only,
        total_timeout=timeout,
        dump_options=tuple(dumps),
        flags=frozenset(flags),
    )
