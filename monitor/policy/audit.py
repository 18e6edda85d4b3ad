"""Static audit of socat command lines: risky options, environment and version.

`audit_command(cmd, ...)` is pure: it looks at a parsed `SocatCommand` (plus,
when known, the process's uid and environment, the installed socat version and
the policy) and returns `Finding`s, each with a stable id, a severity, the
offending token, a message and a fix. `audit_process(pid)` and
`audit_running()` audit running processes with the facts
`monitor.host.processes` reads from /proc; `finding_to_alert` turns a
finding into an `Alert` (ruleset `audit`) for the agent's sinks.

Finding ids: the `audit.*` rules of `monitor.rules` (`FINDINGS`: id -> title). Extras beyond the required ones:
`audit.invalid_address` / `audit.invalid_option` (socat would refuse to
start), `audit.duplicate_option`, `audit.udp_fork_no_timeout`,
`audit.traffic_dump`, `audit.unreadable_process`, `audit.tcpwrap_fails_open`.

Which keywords socat accepts depends on its build: the verdicts are for one
`SocatBuild` (a running process's own executable, the socat on PATH, or the
built-in table when there is no binary to ask), named in each finding.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..addresses import Network, same_address
from ..errors import InputError
from ..events import Alert, Listener, Outcome, ProcessInfo, Severity
from ..host.processes import ProcessFacts, read_process, socat_processes
from ..socat.build import SocatBuild, builtin_build, path_build, process_build
from ..rules import CATALOGUE, new_alert
from ..socat.grammar import AddressOption, SocatAddress, SocatCommand, parse_command_line
from ..socat.tables import BUILTIN, address_feature, option_feature
from .model import ListenerPolicy, Policy

FINDINGS: dict[str, str] = {r.id: r.name for r in CATALOGUE if r.ruleset == "audit"}   # id -> title
# Per rule and command line: a hostile argv with thousands of bad options gives five findings and a
# count, and cannot crowd out a finding of another rule (an EXEC: behind them is still reported).
MAX_PER_RULE = 5

# (CVE, first affected, first fixed, severity, what) for socat releases.
CVES: tuple[tuple[str, str, str, Severity, str], ...] = (
    ("CVE-2004-1484", "1.4.0.0", "1.4.0.3", Severity.HIGH, "format string in syslog logging"),
    ("CVE-2010-2799", "1.5.0.0", "1.7.1.3", Severity.HIGH, "stack overflow in the address lexer"),
    ("CVE-2012-0219", "1.5.0.0", "1.7.2.1", Severity.MEDIUM, "heap overflow in the READLINE address"),
    ("CVE-2013-3571", "1.2.0.0", "1.7.2.2", Severity.MEDIUM, "file descriptor leak on refused connections (DoS)"),
    ("CVE-2014-0019", "1.3.0.0", "1.7.2.3", Severity.MEDIUM, "buffer overflow in PROXY-CONNECT"),
    ("CVE-2015-1379", "1.0.0.0", "1.7.3.0", Severity.LOW, "unsafe signal handling (DoS)"),
    ("CVE-2016-2217", "1.7.3.0", "1.7.3.1", Severity.MEDIUM, "non-prime built-in Diffie-Hellman parameter"),
    ("CVE-2024-54661", "1.0.0.0", "1.8.0.2", Severity.MEDIUM, "readline.sh writes to predictable /tmp files"),
)

RISKY_ENVIRONMENT: dict[str, tuple[Severity, str]] = {
    "LD_PRELOAD": (Severity.HIGH, "loads extra code into socat"),
    "LD_AUDIT": (Severity.HIGH, "loads extra code into socat"),
    "LD_LIBRARY_PATH": (Severity.MEDIUM, "changes which libraries (libssl, libc) socat loads"),
    "GCONV_PATH": (Severity.MEDIUM, "changes which libraries socat loads"),
    "SSL_CERT_FILE": (Severity.MEDIUM, "replaces the CA certificates OpenSSL trusts"),
    "SSL_CERT_DIR": (Severity.MEDIUM, "replaces the CA certificates OpenSSL trusts"),
    "OPENSSL_CONF": (Severity.MEDIUM, "changes OpenSSL's configuration (protocols, engines)"),
    "OPENSSL_ENGINES": (Severity.MEDIUM, "loads OpenSSL engines from another directory"),
    "OPENSSL_MODULES": (Severity.MEDIUM, "loads OpenSSL providers from another directory"),
    "SOCAT_DEFAULT_LISTEN_IP": (Severity.MEDIUM, "changes the listen address without changing argv"),
    "SOCAT_PREFERRED_RESOLVE_IP": (Severity.LOW, "changes address resolution without changing argv"),
    "HOSTALIASES": (Severity.LOW, "changes host name resolution"),
    "RES_OPTIONS": (Severity.LOW, "changes host name resolution"),
    "LOCALDOMAIN": (Severity.LOW, "changes host name resolution"),
}
# The usual system CA stores: pointing SSL_CERT_FILE/SSL_CERT_DIR at them changes nothing.
_SYSTEM_CA_STORES = frozenset({
    "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs", "/etc/ssl/cert.pem", "/usr/lib/ssl/cert.pem",
    "/usr/lib/ssl/certs", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/pki/tls/certs", "/etc/pki/tls/cert.pem",
})
# socat sets these itself for EXEC/SYSTEM children: informational, not risky.
_INFORMATIONAL_SOCAT = re.compile(r"^SOCAT_(PID|PPID|VERSION|SOCKADDR|SOCKPORT|PEERADDR|PEERPORT|IP_\w+|"
                                  r"OPENSSL_\w+|\w*_(SOCKADDR|PEERADDR|SOCKPORT|PEERPORT))$")

_ALWAYS_ALLOWED_GROUPS = frozenset({"PROCESS", "APPL"})
_TCPWRAP = ("tcpwrappers", "tcpwrap-etc", "tcpwrap-hosts-allow-table", "tcpwrap-hosts-deny-table")
_IP6_FAMILIES = ("ip6", "inet6", "6")
_PRIVILEGE_DROPS = ("substuser", "substuser-delayed", "substuser-early", "setuid", "setuid-early")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class Finding:
    """One audit result about one token of one command line."""

    id: str
    severity: Severity
    message: str
    token: str
    fix: str
    pid: int | None = None
    command_line: str | None = None
    listener: Listener | None = None
    socat: str | None = None          # which socat the verdict is for (SocatBuild.label)

    @property
    def title(self) -> str:
        return FINDINGS[self.id]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "severity": self.severity.name.lower(),
            "pid": self.pid,
            "token": self.token,
            "message": self.message,
            "fix": self.fix,
        }
        if self.command_line is not None:
            out["command_line"] = self.command_line
        if self.socat is not None:
            out["socat"] = self.socat
        if self.listener is not None:
            out["listener"] = {"ip": self.listener.ip, "port": self.listener.port, "name": self.listener.name}
        return out


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:4])


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str | None) -> bool:
    if host is None:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def parse_range(value: str) -> Network:
    """socat's range= value (`a.b.c.d/bits`, `a.b.c.d:mask`, `[v6]/bits`) as a network."""
    text = value.strip()
    if text.startswith("["):
        close = text.find("]")
        address, rest = text[1:close], text[close + 1:]
        return ipaddress.ip_network(address + rest, strict=False)
    if text.count(":") == 1 and "." in text:
        address, mask = text.split(":")
        return ipaddress.ip_network(f"{address}/{mask}", strict=False)
    return ipaddress.ip_network(text, strict=False)


def _restricts_nothing(value: str | None) -> bool:
    """range=a.b.c.d/0 (v4 or v6, any address) matches every source."""
    try:
        return parse_range(value or "").prefixlen == 0
    except ValueError:
        return False


class _Auditor:
    """Collects findings for one command; each check is a small method."""

    def __init__(self, cmd: SocatCommand, pid: int | None, policy: Policy | None, build: SocatBuild) -> None:
        self.cmd = cmd
        self.pid = pid
        self.policy = policy
        self.build = build
        self.findings: list[Finding] = []
        self.told: Counter[str] = Counter()
        self.untold: Counter[str] = Counter()   # findings past MAX_PER_RULE: counted, not built

    def room(self, rule: str) -> bool:
        """True while `rule` may add a finding; else the one it would add is counted as untold."""
        if self.told[rule] < MAX_PER_RULE:
            return True
        self.untold[rule] += 1
        return False

    def add(self, rule: str, severity: Severity, token: str, message: str, fix: str,
            address: SocatAddress | None = None, entry: ListenerPolicy | None = None) -> None:
        if not self.room(rule):
            return
        self.told[rule] += 1
        listener = None
        if address is not None and address.listen_port is not None:
            listener = Listener(ip=self.listen_ip(address), port=address.listen_port,
                                name=entry.name if entry else None)
        self.findings.append(Finding(rule, severity, _clip(message), _clip(token), fix, self.pid,
                                     self.cmd.command_line, listener, self.build.label))

    def listen_ip(self, address: SocatAddress) -> str:
        """bind= or the unspecified address socat listens on: '::' for TCP6-LISTEN, -6 or pf=ip6."""
        if address.bind_address:
            return address.bind_address
        v6 = "IP4" not in address.groups or "6" in self.cmd.flags \
            or (address.value("protocol-family") or "").lower() in _IP6_FAMILIES
        return "::" if v6 else "0.0.0.0"

    # -- socat would refuse ----------------------------------------------------------------------

    def _without(self, feature: str | None) -> str:
        return f" (it is built without {feature}: see its -V)" if self.build.lacks(feature) else ""

    def check_syntax(self, address: SocatAddress) -> None:
        table, label = self.build.keywords, self.build.label
        if address.kind is None:
            if not self.room("audit.invalid_address"):   # spare the spelling suggestion too (~1 ms)
                return
            close = difflib.get_close_matches(address.keyword.lower(), list(table.address_types), n=1)
            known = BUILTIN.address(address.keyword)
            self.add("audit.invalid_address", Severity.HIGH, address.keyword,
                     f"{label} does not know address type {address.keyword!r}"
                     f"{self._without(address_feature(known) if known else None)}: it refuses to start",
                     f"use a valid address type{f' (did you mean {close[0].upper()}?)' if close else ''}; "
                     "see socat -hhh")
            return
        if address.chained:
            self.add("audit.invalid_address", Severity.HIGH, address.text,
                     f"a socat 2 address chain ('|'): {label} has no chains, reads it as one "
                     f"{address.kind.upper()} address with the rest as parameters and options, and refuses to start",
                     "socat 1 cannot chain addresses: use one address type that does both (e.g. OPENSSL:host:port) "
                     "or run socat 2")
            return
        counts = table.address_types[address.kind][0]
        if len(address.params) not in counts:
            want = " or ".join(str(c) for c in sorted(counts))
            self.add("audit.invalid_address", Severity.HIGH, address.text,
                     f"{address.kind.upper()} takes {want} parameter(s), got {len(address.params)}: "
                     f"{label} refuses to start",
                     f"write it as {address.kind.upper()} with {want} ':'-separated parameter(s)")
        seen: dict[str, AddressOption] = {}
        for opt in address.options:
            self.check_option(address, opt)
            key = opt.canonical or opt.name
            if opt.canonical and key in seen and seen[key].value != opt.value:
                self.add("audit.duplicate_option", Severity.LOW, opt.text,
                         f"{key} is given twice ({seen[key].text} and {opt.text}): socat uses the first in the "
                         "parent and children may fail", f"keep one {key}= option")
            seen.setdefault(key, opt)

    def check_option(self, address: SocatAddress, opt: AddressOption) -> None:
        if not self.room("audit.sloppy_mode" if self.cmd.sloppy else "audit.invalid_option"):
            return
        if opt.canonical is None:
            close = difflib.get_close_matches(opt.name, list(self.build.keywords.options), n=1)
            hint = f"did you mean {close[0]}?" if close else "see socat -hhh for the option names"
            known = BUILTIN.option(opt.name)
            feature = option_feature(known, BUILTIN.options[known]) if known else None
            problem = f"option {opt.name!r} unknown to {self.build.label}{self._without(feature)}"
        elif "g" in self.cmd.flags or opt.groups & (address.groups | _ALWAYS_ALLOWED_GROUPS):
            return
        else:
            hint = f"remove it or use an address type that supports {opt.canonical}"
            problem = f"option {opt.name!r} is not supported by {(address.kind or '').upper()} in {self.build.label}"
        if self.cmd.sloppy:
            self.add("audit.sloppy_mode", Severity.HIGH, opt.text,
                     f"{problem}; with -s socat only warns and runs without it",
                     f"{hint} Then drop -s, so socat refuses options it does not know")
        else:
            self.add("audit.invalid_option", Severity.HIGH, opt.text, f"{problem}: it refuses to start", hint)

    # -- risky configurations --------------------------------------------------------------------

    def check_exec(self, address: SocatAddress) -> None:
        if not address.is_exec:
            return
        exposed = any(a.is_listener and a.is_ip and a.position != address.position for a in self.cmd.addresses)
        self.add("audit.exec_address", Severity.CRITICAL if exposed else Severity.HIGH, address.text,
                 f"{address.keyword.upper()} runs a command"
                 + (" for every network client" if exposed else " with data from the other address"),
                 "relay to a service instead of a command; if unavoidable, add su=nobody, chroot= and a strict range=",
                 address)

    def check_sources(self, address: SocatAddress) -> None:
        """IP listeners and receivers (*-LISTEN, *-RECV, *-RECVFROM) need range= (not /0) or tcpwrap."""
        if not (address.is_listener and address.is_ip) or address.has(*_TCPWRAP):
            return
        declared = address.option("range")
        if declared is not None and not _restricts_nothing(declared.value):
            return
        entry = self._entry(address)
        what = address.keyword.upper() + (f" (IP protocol {address.protocol})" if address.protocol is not None else "")
        problem = (f"{what} has neither range= nor tcpwrap" if declared is None
                   else f"{declared.text} on {what} restricts nothing (a /0 prefix matches every address)")
        if entry is not None and entry.drops and "TCP" in address.groups:
            self.add("audit.no_source_restriction", Severity.LOW, address.text if declared is None else declared.text,
                     f"{problem}, but the policy's action drop restricts its sources in the kernel to "
                     f"{', '.join(map(str, entry.allow_sources)) or 'nobody'} (already applied)",
                     "nothing needed while the agent runs; add range= too as a second layer", address, entry)
            return
        restricted = entry is not None and entry.allow_sources is not None
        severity = Severity.HIGH if restricted else Severity.LOW if _is_loopback(address.bind_address) \
            else Severity.MEDIUM
        self.add("audit.no_source_restriction", severity, address.text if declared is None else declared.text,
                 f"{problem}: any address can reach it"
                 + (f" although the policy allows only {', '.join(map(str, entry.allow_sources))}" if restricted else ""),
                 "add range=<allowed CIDR> (and keep the nftables policy as a second layer)", address, entry)

    def check_fork(self, address: SocatAddress) -> None:
        """fork without max-children on any address that can fork: listeners of every family and connectors."""
        fork = address.option("fork")
        if fork is None or not fork.groups & address.groups:   # a fork socat ignores or refuses
            return
        entry = self._entry(address)
        if not address.has("max-children"):
            self.add("audit.unbounded_fork", Severity.MEDIUM, fork.text, _fork_exposure(address),
                     "add max-children=<N> (socat >= 1.7.2.0)", address, entry)
        if "UDP" in address.groups and address.is_listener and self.cmd.total_timeout is None:
            self.add("audit.udp_fork_no_timeout", Severity.LOW, fork.text,
                     "UDP fork children never exit without -T", "add -T <seconds>", address, entry)

    def check_tls(self, address: SocatAddress) -> None:
        if not address.is_openssl:
            return
        verify = address.option("verify")
        listening = address.is_listener
        if verify is not None and (verify.value or "1").lower() in _FALSE:
            self.add("audit.tls_no_verify", Severity.HIGH, verify.text,
                     "verify=0: " + ("clients are not authenticated" if listening
                                     else "the server certificate is not checked (man in the middle)"),
                     "remove verify=0 and give cafile=" + (" with the client CA" if listening else ""), address)
        elif listening and not address.has("cafile", "capath"):
            self.add("audit.tls_no_verify", Severity.MEDIUM, address.text,
                     "OPENSSL listener without cafile: clients are checked against the system CA store "
                     "(or SSL_CERT_FILE)", "add cafile=<client CA bundle>", address)

    def check_privileges(self, uid: int | None) -> None:
        if uid != 0:
            return
        drop = next((o for a in self.cmd.addresses for o in a.options if o.canonical in _PRIVILEGE_DROPS), None)
        if drop is None:
            exposed = any(a.is_listener and a.is_ip and not _is_loopback(a.bind_address) for a in self.cmd.addresses)
            token = next((a.text for a in self.cmd.addresses if a.is_listener), self.cmd.addresses[0].text
                         if self.cmd.addresses else "socat")
            self.add("audit.runs_as_root", Severity.HIGH if exposed else Severity.MEDIUM, token,
                     "socat runs as root with no su= or setuid=", "add su=nobody (or run it as an unprivileged user)")
        elif drop.canonical.startswith("setuid") and not any(a.has("setgid", "setgid-early") for a in self.cmd.addresses):
            self.add("audit.runs_as_root", Severity.LOW, drop.text,
                     f"{drop.name}= without setgid= keeps group 0", "add setgid=<group> (or use su=)")

    def check_tcpwrap(self, address: SocatAddress, file_exists: Callable[[str], bool] | None) -> None:
        wrap = address.option("tcpwrappers")
        if wrap is None or file_exists is None:
            return
        directory = (address.value("tcpwrap-etc") or "/etc").rstrip("/")
        tables = [address.value("tcpwrap-hosts-allow-table") or f"{directory}/hosts.allow",
                  address.value("tcpwrap-hosts-deny-table") or f"{directory}/hosts.deny"]
        if not any(file_exists(t) for t in tables):
            self.add("audit.tcpwrap_fails_open", Severity.HIGH, wrap.text,
                     f"tcpwrap is set but neither {tables[0]} nor {tables[1]} exists: every source is allowed",
                     f"create {tables[1]} with 'ALL: ALL' and allow clients in {tables[0]}, or use range=", address)

    def check_dumps(self) -> None:
        for option in self.cmd.dump_options:
            self.add("audit.traffic_dump", Severity.LOW, option,
                     f"{option.split()[0]} writes relayed data to logs or files", f"remove {option.split()[0]}")

    def check_environment(self, environ: Mapping[str, str] | None) -> None:
        for name, value in sorted((environ or {}).items()):
            known = RISKY_ENVIRONMENT.get(name)
            if known is None and name.startswith("SOCAT_") and not _INFORMATIONAL_SOCAT.match(name):
                known = (Severity.LOW, "changes socat's behaviour without changing argv")
            if name in ("SSL_CERT_FILE", "SSL_CERT_DIR") and value.rstrip("/") in _SYSTEM_CA_STORES:
                continue
            if known is not None:
                self.add("audit.risky_environment", known[0], f"{name}={value}", f"{name} {known[1]}",
                         f"remove {name} from the environment of the service that starts socat")

    # -- policy ----------------------------------------------------------------------------------

    def _entry(self, address: SocatAddress) -> ListenerPolicy | None:
        if self.policy is None or address.listen_port is None:
            return None
        return self.policy.listener(address.listen_port, address.bind_address)

    def check_policy(self, address: SocatAddress) -> None:
        if self.policy is None or not (address.is_listener and address.is_ip) or address.listen_port is None:
            return
        port, bind = address.listen_port, address.bind_address
        entry = self._entry(address)
        if entry is None:
            if self.policy.defaults.unknown_listener == "alert":
                self.add("audit.policy_mismatch", Severity.MEDIUM, address.text,
                         f"listener on port {port} is not declared in the policy",
                         "declare it under listeners: (socat-monitor policy suggest) or stop it", address)
            return
        self._check_bind(address, entry, bind)
        self._check_range(address, entry)
        self._check_backends(address, entry)

    def _check_bind(self, address: SocatAddress, entry: ListenerPolicy, bind: str | None) -> None:
        if entry.binds_all():
            return
        if _is_unspecified(bind):
            self.add("audit.all_interfaces", Severity.HIGH, address.text,
                     f"listens on all addresses; the policy says {entry.name} binds to {entry.address}",
                     f"add bind={entry.address}", address, entry)
        elif bind != entry.address and not same_address(bind or "", entry.address or ""):
            self.add("audit.policy_mismatch", Severity.HIGH, address.option("bind").text,
                     f"binds to {bind}; the policy says {entry.name} binds to {entry.address}",
                     f"use bind={entry.address} or correct the policy", address, entry)

    def _check_range(self, address: SocatAddress, entry: ListenerPolicy) -> None:
        opt = address.option("range")
        if opt is None or entry.allow_sources is None:
            return
        try:
            declared = parse_range(opt.value or "")
        except ValueError:
            self.add("audit.invalid_option", Severity.HIGH, opt.text, f"range={opt.value} is not a CIDR",
                     "write range=<address>/<bits>", address, entry)
            return
        allowed = [n for n in ipaddress.collapse_addresses(
            [n for n in entry.allow_sources if n.version == declared.version])]
        if not any(declared.subnet_of(n) for n in allowed):
            self.add("audit.policy_mismatch", Severity.HIGH, opt.text,
                     f"range={declared} is wider than allow_sources of {entry.name} "
                     f"({', '.join(map(str, entry.allow_sources)) or 'none'})",
                     "narrow range= to the policy's allow_sources", address, entry)

    def _check_backends(self, address: SocatAddress, entry: ListenerPolicy) -> None:
        if entry.allow_backends is None:
            return
        for other in self.cmd.addresses:
            if other.position == address.position:
                continue
            if other.is_exec:
                self.add("audit.policy_mismatch", Severity.HIGH, other.text,
                         f"{entry.name} relays to a command, not to an allowed backend", "relay to a backend "
                         "named in allow_backends", address, entry)
                continue
            target = other.connect_target
            if target is None:
                continue
            host, port = target
            self._check_backend(address, entry, other, "127.0.0.1" if host.lower() == "localhost" else host, port)

    def _check_backend(self, address: SocatAddress, entry: ListenerPolicy, other: SocatAddress,
                       host: str, port: int | None) -> None:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self.add("audit.policy_mismatch", Severity.LOW, other.text,
                     f"backend {host!r} is a host name; the policy lists addresses, so it cannot be checked",
                     "connect to an IP address listed in allow_backends", address, entry)
            return
        if port is None or not entry.backend_allowed(ip, port):
            self.add("audit.policy_mismatch", Severity.HIGH, other.text,
                     f"backend {host}:{port} is not in allow_backends of {entry.name} "
                     f"({', '.join(b.text for b in entry.allow_backends) or 'none'})",
                     "connect only to a backend the policy allows, or correct the policy", address, entry)


def _fork_exposure(address: SocatAddress) -> str:
    """Who can make this address fork, in words."""
    kind = address.kind or ""
    if kind.startswith("vsock") and address.is_listener:
        who = "VSOCK-LISTEN takes connections from every guest VM on this host (and from the host itself)"
    elif kind.startswith("abstract") and address.is_listener:
        who = f"{kind.upper()} has no file permissions: every process in this network namespace can connect"
    elif "UNIX" in address.groups and address.is_listener:
        who = f"{kind.upper()} takes connections from every local process allowed to open {address.params[0]}" \
            if address.params else f"{kind.upper()} takes connections from local processes"
    elif address.is_listener:
        return "fork without max-children: a connection flood forks without limit"
    else:
        who = (f"{kind.upper()} with fork connects again as soon as a connection is made and hands each to a "
               "child, so the peer decides how many children run")
    return f"{who}; fork without max-children forks without limit"


def version_findings(socat_version: str, pid: int | None = None, socat: str | None = None) -> list[Finding]:
    """One finding per known CVE that affects this socat version (of the binary `socat` names)."""
    version = _version_tuple(socat_version)
    out = []
    for cve, first, fixed, severity, what in CVES:
        if _version_tuple(first) <= version < _version_tuple(fixed):
            out.append(Finding("audit.vulnerable_version", severity,
                               f"socat {socat_version} is affected by {cve}: {what}",
                               f"socat {socat_version}", f"upgrade socat to {fixed} or later (distribution "
                               "packages may carry a backported fix: check the changelog)", pid, socat=socat))
    return out


def audit_command(cmd: SocatCommand, *, pid: int | None = None, uid: int | None = None,
                  environ: Mapping[str, str] | None = None, policy: Policy | None = None,
                  build: SocatBuild | None = None,
                  file_exists: Callable[[str], bool] | None = None) -> list[Finding]:
    """Every finding about one command line, parsed with `build.keywords`, judged for that socat build
    (default: the built-in table). The binary's own version: `cve_findings`.

    Pure unless `file_exists` is given: then tcpwrap tables are looked up with it
    (a tcpwrap listener with neither hosts.allow nor hosts.deny fails open)."""
    build = build or builtin_build()
    auditor = _Auditor(cmd, pid, policy, build)
    if not cmd.info_only:
        for address in cmd.addresses:
            auditor.check_syntax(address)
            auditor.check_exec(address)
            auditor.check_sources(address)
            auditor.check_fork(address)
            auditor.check_tls(address)
            auditor.check_tcpwrap(address, file_exists)
            auditor.check_policy(address)
        auditor.check_privileges(uid)
        auditor.check_dumps()
    auditor.check_environment(environ)
    return auditor.findings + _truncation(auditor)


def _clip(text: str, limit: int = 256) -> str:
    """Tokens and messages quote the command line: at most `limit` characters of it each."""
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} chars)"


def _truncation(auditor: _Auditor) -> list[Finding]:
    if not auditor.untold:
        return []
    counts = ", ".join(f"{rule} x{n}" for rule, n in sorted(auditor.untold.items()))
    return [Finding("audit.findings_truncated", Severity.LOW,
                    f"{sum(auditor.untold.values())} more finding(s) not listed ({counts}): at most "
                    f"{MAX_PER_RULE} per rule are kept for one command line", auditor.cmd.command_line[:80],
                    "fix the findings above and audit it again",
                    auditor.pid, auditor.cmd.command_line, None, auditor.build.label)]


# -- running processes (facts from monitor.host.processes) -----------------------------------------

def _audit_facts(facts: ProcessFacts, policy: Policy | None, build: SocatBuild) -> list[Finding]:
    try:
        cmd = parse_command_line(facts.argv, build.keywords)
    except InputError as exc:
        return [Finding("audit.unreadable_process", Severity.LOW, f"command line does not parse: {exc.message}",
                        " ".join(facts.argv), "check the command line by hand", facts.pid, " ".join(facts.argv),
                        socat=build.label)]
    return audit_command(cmd, pid=facts.pid, uid=facts.uid, environ=facts.environ, policy=policy, build=build,
                         file_exists=os.path.exists)


def cve_findings(builds: list[SocatBuild]) -> list[Finding]:
    """version_findings once per distinct socat binary (none for the built-in table)."""
    binaries = {(b.path, b.version): b for b in builds if b.path is not None}
    return [f for b in binaries.values() for f in version_findings(b.version, None, b.label)]


def audit_process(pid: int, policy: Policy | None) -> list[Finding]:
    """Findings for one running socat process (argv, environment, uid from /proc), judged for its own
    executable (/proc/PID/exe), and that executable's version."""
    try:
        facts = read_process(pid)
    except (FileNotFoundError, ProcessLookupError):
        raise InputError(f"--pid {pid}", "no such process") from None
    except PermissionError:
        raise InputError(f"--pid {pid}", f"cannot read /proc/{pid} (run as root)") from None
    if not facts.argv:
        raise InputError(f"--pid {pid}", "process has no command line (a kernel thread or a zombie)")
    if facts.comm != "socat" and not os.path.basename(facts.argv[0]).startswith("socat"):
        raise InputError(f"--pid {pid}", f"not a socat process ({facts.comm}: {' '.join(facts.argv)[:80]})")
    build = process_build(pid)
    return _audit_facts(facts, policy, build) + cve_findings([build])


def audit_running(policy: Policy | None) -> list[Finding]:
    """Findings for every socat process running now, each judged for its own executable, plus the
    versions of those executables and of the socat on PATH, once per binary."""
    findings: list[Finding] = []
    builds = [path_build()]
    for facts in sorted(socat_processes(), key=lambda f: f.pid):
        builds.append(process_build(facts.pid))
        findings.extend(_audit_facts(facts, policy, builds[-1]))
    return findings + cve_findings(builds)


def finding_to_alert(f: Finding, timestamp_ns: int, process: ProcessInfo | None) -> Alert:
    """An audit finding as an Alert (ruleset "audit") for the sinks."""
    return new_alert(f.id, description=f.message, severity=f.severity, timestamp_ns=timestamp_ns,
                     listener=f.listener, process=process, token=f.token, fix=f.fix, outcome=Outcome.UNKNOWN)
