"""The declared policy: its schema, its typed model and loading it from YAML.

A policy file names the socat listeners that may exist and, for each, who may
connect (`allow_sources`), where its children may connect (`allow_backends`),
the declared per-source rate and concurrency limits, and whether a violation
only alerts or also blocks the source. `load_policy(path)` validates the file
with `POLICY_SCHEMA` and semantic checks (addresses, CIDRs, rates, unique
names and ports), reporting every problem as `FILE:LINE: key.path: ...`.
`policy_reference()` renders the schema as the reference the README embeds.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..addresses import Address, Network, parse_network, same_address
from ..errors import InputError
from ..events import ProcessInfo, Severity
from .selector import Selector, parse_user
from ..yamlfile import InputErrors, Locator, load_yaml, parse_yaml, validate


ACTIONS = ("alert", "block", "drop")
UNKNOWN_LISTENER_ACTIONS = ("alert", "ignore")

_RATE_UNITS = {
    "second": 1.0, "sec": 1.0, "s": 1.0,
    "minute": 60.0, "min": 60.0, "m": 60.0,
    "hour": 3600.0, "h": 3600.0,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(" + "|".join(_RATE_UNITS) + r")\s*$", re.IGNORECASE)
RATE_PATTERN = r"^\s*[0-9]+\s*/\s*(?i:second|sec|s|minute|min|m|hour|h)\s*$"
NETNS_PATTERN = r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*|net:\[[0-9]+\])$"
CONTAINER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
CGROUP_PATTERN = r"^/[^\s]*$"

POLICY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "socat-monitor policy",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "listeners"],
    "properties": {
        "version": {
            "const": 1,
            "description": "Policy format version. Only 1 exists.",
            "examples": [1],
        },
        "listeners": {
            "type": "array",
            "description": "The socat listeners that may run, one entry per listening port.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "port"],
                "properties": {
                    "name": {
                        "type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                        "x-expect": "a name of letters, digits, '-', '_' or '.'",
                        "description": "Unique name; alerts carry it as socat.listener.name.",
                        "examples": ["web-relay"],
                    },
                    "port": {
                        "type": "integer", "minimum": 1, "maximum": 65535,
                        "x-expect": "a TCP port number 1-65535",
                        "description": "The socat listener's local port (required).",
                        "examples": [8443],
                    },
                    "address": {
                        "type": "string",
                        "x-expect": "an IP address such as 0.0.0.0, 127.0.0.1 or ::1",
                        "description": "Local address the listener must bind to; the audit flags a "
                                       "listener on all addresses when this names one. Default: any.",
                        "examples": ["127.0.0.1"],
                    },
                    "allow_sources": {
                        "type": "array", "items": {"type": "string", "x-expect": "an IP address or CIDR"},
                        "description": "Client addresses or CIDRs that may connect. Omitted: any "
                                       "source; empty list: none.",
                        "examples": [["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]],
                    },
                    "allow_backends": {
                        "type": "array",
                        "items": {"type": "string", "x-expect": "IP[:PORT], CIDR[:PORT] or [IPv6]:PORT"},
                        "description": "Where the listener's children may connect: IP, CIDR, "
                                       "IP:PORT, [IPv6]:PORT; PORT may be '*'. Omitted: anywhere.",
                        "examples": [["10.0.0.5:443", "[2001:db8::5]:443", "10.1.0.0/16:*"]],
                    },
                    "max_rate_per_source": {
                        "type": "string", "pattern": RATE_PATTERN,
                        "x-expect": "a rate like 30/minute (N/second, N/minute or N/hour)",
                        "description": "Most new connections one source may open in the period "
                                       "(a sliding window). Default: unlimited.",
                        "examples": ["30/minute"],
                    },
                    "max_concurrent_per_source": {
                        "type": "integer", "minimum": 1,
                        "x-expect": "a whole number >= 1",
                        "description": "Most connections one source may hold open at once. Default: unlimited.",
                        "examples": [10],
                    },
                    "action": {
                        "enum": list(ACTIONS), "default": "alert",
                        "description": "alert: report violations; block: also ask enforce to drop the source; "
                                       "drop: the kernel drops new connections from sources outside "
                                       "allow_sources before the handshake (by port, address and netns only: "
                                       "not with container, cgroup or user; one drop entry per port in a "
                                       "namespace).",
                        "examples": ["block"],
                    },
                    "netns": {
                        "type": "string", "pattern": NETNS_PATTERN,
                        "x-expect": "a network namespace name as `ip netns` lists it, or net:[INODE]",
                        "description": "Only the relay in this network namespace (its `ip netns` name, or "
                                       "net:[INODE]). With no netns, container, cgroup or user named: only relays "
                                       "in the namespace(s) the agent enforces in.",
                        "examples": ["lab-a"],
                    },
                    "container": {
                        "type": "string", "pattern": CONTAINER_PATTERN,
                        "x-expect": "a container name, or its id (12 or more hex digits)",
                        "description": "Only the relay in this container (docker, containerd, CRI-O, podman or "
                                       "systemd-nspawn, found from its cgroup): its name, or its id or an id "
                                       "prefix of 12 or more digits.",
                        "examples": ["web-proxy"],
                    },
                    "cgroup": {
                        "type": "string", "pattern": CGROUP_PATTERN,
                        "x-expect": "a cgroup path starting with /",
                        "description": "Only a relay whose cgroup path is this one or below it "
                                       "(/proc/PID/cgroup).",
                        "examples": ["/system.slice/relay.service"],
                    },
                    "user": {
                        "type": ["string", "integer"],
                        "x-expect": "a user name or uid",
                        "description": "Only a relay started by this user (name or uid; the uid it was exec'd "
                                       "as, so socat's su= does not change it).",
                        "examples": ["root"],
                    },
                    "trust_unprivileged": {
                        "type": "boolean", "default": False,
                        "description": "Let a relay on this port that runs as a non-root user, or in a user "
                                       "namespace a non-root user owns, cause blocks (action: block). Default: "
                                       "such relays are alerted on, never blocked (any local user can start one).",
                        "examples": [True],
                    },
                    "severity": {
                        "enum": ["low", "medium", "high", "critical"],
                        "description": "Overrides the severity of this listener's violations. "
                                       "Default: per rule (source/backend high, rate/concurrency medium).",
                        "examples": ["critical"],
                    },
                    "description": {
                        "type": "string",
                        "description": "Free text for people; not interpreted.",
                        "examples": ["TLS relay to the web backend"],
                    },
                },
            },
        },
        "defaults": {
            "type": "object",
            "additionalProperties": False,
            "description": "Settings that apply where a listener says nothing.",
            "properties": {
                "unknown_listener": {
                    "enum": list(UNKNOWN_LISTENER_ACTIONS), "default": "alert",
                    "description": "A socat listener not named in the policy: alert or ignore.",
                    "examples": ["alert"],
                },
                "action": {
                    "enum": list(ACTIONS), "default": "alert",
                    "description": "Action of listeners that do not set one.",
                    "examples": ["alert"],
                },
            },
        },
    },
}


@dataclass(frozen=True, slots=True)
class Rate:
    """A declared rate: at most `count` new connections per `period_s` seconds."""

    count: int
    period_s: float
    text: str

    @classmethod
    def parse(cls, text: str) -> "Rate":
        match = _RATE_RE.match(text)
        if not match:
            raise ValueError(f"expected a rate like 30/minute, got {text!r}")
        unit = match.group(2).lower()
        canonical = {1.0: "second", 60.0: "minute", 3600.0: "hour"}[_RATE_UNITS[unit]]
        return cls(int(match.group(1)), _RATE_UNITS[unit], f"{int(match.group(1))}/{canonical}")


@dataclass(frozen=True, slots=True)
class Backend:
    """An allowed backend: a network and a port (None = any port)."""

    network: Network
    port: int | None
    text: str

    @classmethod
    def parse(cls, text: str) -> "Backend":
        raw = text.strip()
        host, port_text = raw, None
        if raw.startswith("["):
            close = raw.find("]")
            if close < 0:
                raise ValueError(f"unclosed '[' in {text!r}")
            host, rest = raw[1:close], raw[close + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
                port_text = rest[1:]
        elif raw.count(":") == 1:
            host, port_text = raw.split(":")
        port: int | None = None
        if port_text is not None and port_text != "*":
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"port must be 1-65535 or '*', got {port_text!r} in {text!r}")
            port = int(port_text)
        try:
            network = parse_network(host)
        except ValueError as exc:
            if not any(c.isdigit() for c in host.split(".")[-1][:1]) and ":" not in host:
                raise ValueError(f"{host!r} is a host name: use its IP address or CIDR") from None
            raise exc
        return cls(network, port, raw)

    def matches(self, address: Address, port: int) -> bool:
        return address in self.network and (self.port is None or self.port == port)


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """What one declared listener may do."""

    name: str
    port: int
    address: str | None = None
    allow_sources: tuple[Network, ...] | None = None     # None: any source
    allow_backends: tuple[Backend, ...] | None = None      # None: any backend
    max_rate_per_source: Rate | None = None
    max_concurrent_per_source: int | None = None
    action: str = "alert"
    severity: Severity | None = None
    description: str | None = None
    trust_unprivileged: bool = False      # a non-root relay may cause blocks
    selector: Selector = field(default_factory=Selector)   # which relays on the port it means

    @property
    def blocks(self) -> bool:
        return self.action == "block"

    @property
    def drops(self) -> bool:
        """Sources outside allow_sources are dropped in the kernel (a missing list leaves nothing to drop)."""
        return self.action == "drop" and self.allow_sources is not None

    def source_allowed(self, address: Address) -> bool:
        if self.allow_sources is None:
            return True
        return any(address.version == net.version and address in net for net in self.allow_sources)

    def backend_allowed(self, address: Address, port: int) -> bool:
        if self.allow_backends is None:
            return True
        return any(address.version == b.network.version and b.matches(address, port) for b in self.allow_backends)

    def binds_all(self) -> bool:
        return self.address is None or ipaddress.ip_address(self.address).is_unspecified


@dataclass(frozen=True, slots=True)
class Defaults:
    unknown_listener: str = "alert"
    action: str = "alert"


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy. `listener(port, ip)` finds the entry for a listening socket."""

    version: int = 1
    listeners: tuple[ListenerPolicy, ...] = ()
    defaults: Defaults = field(default_factory=Defaults)
    path: str | None = None

    def listener(self, port: int, ip: str | None = None, process: ProcessInfo | None = None,
                 home: Collection[int] | None = None) -> ListenerPolicy | None:
        """The declared listener on port that means the relay `process` (`Selector.matches`, `home`: the
        namespaces enforced in): the one naming more identity keys (fewer for a relay of unknown identity),
        then the one naming ip, if several do."""
        named = (lambda entry: -entry.selector.named) if process is not None else (lambda entry: entry.selector.named)
        candidates = sorted((entry for entry in self.listeners
                             if entry.port == port and entry.selector.matches(process, home)), key=named)
        candidates = [entry for entry in candidates if entry.selector.named == candidates[0].selector.named] \
            if candidates else []
        if len(candidates) > 1 and ip is not None:
            for entry in candidates:
                if entry.address is not None and same_address(entry.address, ip):
                    return entry
            unbound = [entry for entry in candidates if entry.binds_all()]
            if unbound:
                return unbound[0]
        return candidates[0] if candidates else None

    def notes(self, known_netns: Collection[str] | None = None) -> list[str]:
        """What `policy check` tells about a valid policy: settings that do nothing, and (given the names
        `ip netns` knows, `known_netns`) entries naming a namespace that does not exist now."""
        out = [f"listeners[{i}] {entry.name!r}: action drop without allow_sources: drop has nothing to enforce "
               "(every source may connect); list the allowed sources, or [] for nobody"
               for i, entry in enumerate(self.listeners) if entry.action == "drop" and entry.allow_sources is None]
        if known_netns is not None:
            out += [f"listeners[{i}] {entry.name!r}: netns {entry.selector.netns!r} is not a namespace `ip netns` "
                    "knows now: the entry means no relay until it exists"
                    for i, entry in enumerate(self.listeners)
                    if entry.selector.netns and not entry.selector.netns.startswith("net:[")
                    and entry.selector.netns not in known_netns]
        return out


def _listener(raw: dict[str, Any], index: int, defaults: Defaults, locator: Locator,
              problems: list[InputError]) -> ListenerPolicy | None:
    at = ("listeners", index)

    def parsed(key: str, parse, value):
        try:
            return parse(value)
        except ValueError as exc:
            problems.append(locator.error(at + (key,), str(exc)))
            return None

    def parsed_list(key: str, parse) -> tuple | None:
        if key not in raw:
            return None
        out = []
        for i, item in enumerate(raw[key]):
            try:
                out.append(parse(item))
            except ValueError as exc:
                problems.append(locator.error(at + (key, i), str(exc)))
        return tuple(out)

    before = len(problems)
    address = raw.get("address")
    if address is not None:
        parsed("address", lambda t: ipaddress.ip_address(t.strip("[]")), address)
        address = address.strip("[]")
    listener = ListenerPolicy(
        name=raw["name"],
        port=raw["port"],
        address=address,
        allow_sources=parsed_list("allow_sources", parse_network),
        allow_backends=parsed_list("allow_backends", Backend.parse),
        max_rate_per_source=parsed("max_rate_per_source", Rate.parse, raw["max_rate_per_source"])
        if "max_rate_per_source" in raw else None,
        max_concurrent_per_source=raw.get("max_concurrent_per_source"),
        action=raw.get("action", defaults.action),
        severity=Severity.parse(raw["severity"]) if "severity" in raw else None,
        description=raw.get("description"),
        trust_unprivileged=raw.get("trust_unprivileged", False),
        selector=_selector(raw, at, locator, problems),
    )
    rate = listener.max_rate_per_source
    if rate is not None and rate.count < 1:
        problems.append(locator.error(at + ("max_rate_per_source",), f"expected at least 1 per period, got {rate.text!r}"))
    return listener if len(problems) == before else None


def _selector(raw: dict[str, Any], at: tuple, locator: Locator, problems: list[InputError]) -> Selector:
    """The entry's identity keys (their syntax the schema checked; a user is looked up here)."""
    user, uid = None, None
    if "user" in raw:
        try:
            user, uid = parse_user(raw["user"])
        except ValueError as exc:
            problems.append(locator.error(at + ("user",), str(exc)))
    return Selector(netns=raw.get("netns"), container=raw.get("container"), cgroup=raw.get("cgroup"),
                    user=user, uid=uid)


def _drop_problems(listener: ListenerPolicy, index: int, earlier: list[tuple[int, ListenerPolicy]],
                   locator: Locator) -> list[InputError]:
    """What the kernel cannot do for a drop entry: it drops by port, address and namespace only, so an entry
    naming a container, cgroup or user, or a second drop entry on the same port in a namespace both mean
    (no netns: every one enforced in; a client would have to be in both allowlists), would drop other
    relays' clients."""
    if listener.action != "drop":
        return []
    selector = listener.selector
    named = [key for key, value in (("container", selector.container), ("cgroup", selector.cgroup),
                                    ("user", selector.uid)) if value is not None]
    if named:
        return [locator.error(("listeners", index, named[0]),
                              f"the kernel drops by port and namespace only: action drop cannot be scoped by "
                              f"{', '.join(named)} (scope it by netns, or use action block)")]
    for first, other in earlier:
        if (other.port == listener.port and _overlap(other.selector.netns, selector.netns, str.__eq__)
                and _overlap(other.address, listener.address, same_address)):
            return [locator.error(("listeners", index, "port"),
                                  f"port {listener.port} already has a drop entry in the same namespace "
                                  f"(listeners[{first}] {other.name!r}): the kernel would drop a client unless "
                                  "both allowed it; merge their allow_sources into one entry")]
    return []


def _overlap(one: str | None, other: str | None, same) -> bool:
    """Whether two values of a key (None: any) can mean one thing (`same`: whether two named ones do)."""
    return one is None or other is None or same(one, other)


def policy_from_data(data: Any, locator: Locator) -> Policy:
    """A Policy from loaded YAML data; raises InputErrors listing every problem with file:line."""
    validate(data, POLICY_SCHEMA, locator)
    problems: list[InputError] = []
    raw_defaults = data.get("defaults") or {}
    defaults = Defaults(
        unknown_listener=raw_defaults.get("unknown_listener", "alert"),
        action=raw_defaults.get("action", "alert"),
    )
    listeners: list[ListenerPolicy] = []
    names: dict[str, int] = {}
    bindings: dict[tuple[int, str | None], int] = {}
    drops: list[tuple[int, ListenerPolicy]] = []
    for index, raw in enumerate(data["listeners"]):
        name = raw["name"]
        if name in names:
            problems.append(locator.error(("listeners", index, "name"),
                                          f"duplicate listener name {name!r} (first at listeners[{names[name]}])"))
        names.setdefault(name, index)
        listener = _listener(raw, index, defaults, locator, problems)
        if listener is None:
            continue
        selector = listener.selector
        binding = (listener.port, str(ipaddress.ip_address(listener.address)) if listener.address else None,
                   selector.netns, selector.container, selector.cgroup, selector.uid)
        if binding in bindings:
            same = " for the same relays (netns, container, cgroup, user)" if selector.named else ""
            problems.append(locator.error(("listeners", index, "port"),
                                          f"port {listener.port} already declared by listeners[{bindings[binding]}]"
                                          f"{same}"))
        else:
            problems.extend(_drop_problems(listener, index, drops, locator))
        bindings.setdefault(binding, index)
        if listener.action == "drop":
            drops.append((index, listener))
        listeners.append(listener)
    if problems:
        problems.sort(key=lambda p: int(p.where.rsplit(":", 1)[1]))
        raise InputErrors(problems)
    return Policy(version=data["version"], listeners=tuple(listeners), defaults=defaults, path=locator.path)


def load_policy(path: str | Path) -> Policy:
    """Load and validate a policy file; raises InputError naming file:line and key."""
    data, locator = load_yaml(path)
    if data is None:
        raise InputError(f"{path}:1", "empty policy file: expected at least 'version: 1' and 'listeners:'")
    return policy_from_data(data, locator)


def parse_policy(text: str, name: str = "<policy>") -> Policy:
    """Like load_policy, for policy text already in memory."""
    data, locator = parse_yaml(text, name)
    if data is None:
        raise InputError(f"{name}:1", "empty policy: expected at least 'version: 1' and 'listeners:'")
    return policy_from_data(data, locator)


def _reference_rows(schema: dict[str, Any], prefix: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, sub in schema.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        example = sub.get("examples", [""])[0] if sub.get("examples") else ""
        default = sub.get("default", "required" if key in schema.get("required", ()) else "")
        rows.append((dotted, str(default), sub.get("description", ""), str(example)))
        if sub.get("type") == "object":
            rows.extend(_reference_rows(sub, dotted + "."))
        elif sub.get("type") == "array" and sub.get("items", {}).get("type") == "object":
            rows.extend(_reference_rows(sub["items"], dotted + "[]."))
    return rows


def policy_reference() -> str:
    """Markdown reference of every policy key, its default and an example (from POLICY_SCHEMA)."""
    lines = ["| key | default | meaning | example |", "| --- | --- | --- | --- |"]
    for key, default, meaning, example in _reference_rows(POLICY_SCHEMA, ""):
        lines.append(f"| `{key}` | {default} | {meaning} | `{example}` |" if example else
                     f"| `{key}` | {default} | {meaning} | |")
    return "\n".join(lines) + "\n"
