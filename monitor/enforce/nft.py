"""socat-monitor's own nftables table: its skeleton, its set elements, its listing.

The skeleton (sets, counters, chain, rules) is written in one libnftables
transaction that deletes and recreates only our table, optionally with the
elements that must survive a restart, so there is no moment without them.
Our table carries `OWNER_COMMENT`; a table of the same name without it is
never touched (`ownership`), and a replaced table is deleted by its handle,
so a table someone else made in between makes the transaction fail instead
of being wiped. Block sets count per element and per set (`drops_<set>`).
A policy's drop listeners (`DropListener`) get allow sets and a SYN drop rule
each (with a named counter, `listener_drops<i>_<v>`), which fills a dynamic
`dropped` map: every dropped source, the port of its first dropped SYN and a
counter of its packets.

At run time only set elements change, through netlink batches on raw
sockets (`netlink`; never a process per block), opened in the table's
namespace and used from the calling thread. Listing uses libnftables JSON,
which dumps every element (pyroute2's element `get` is truncated); the
libnftables calls run on a `NetnsWorker`, so they act in the chosen network
namespace and every call has a deadline.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..addresses import Network, is_host, target_text, unmapped_network
from ..errors import EnvironmentProblem, InputError
from .netlink import ElementSocket, nla
from .netns import NetnsWorker

NFT_SET_ELEM_INTERVAL_END = 1
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_TIMEOUT = 1, 3, 4
NFTA_DATA_VALUE = 1
CHUNK = 1000                      # elements per netlink message (attributes are capped at 64 KiB)
OWNER_COMMENT = "owned by socat-monitor: blocks have timeouts; do not edit by hand"
CHAIN = "input"
PROBE_SET = "refresh_probe"       # no rule reads it: where `refresh_in_place` tries the kernel's behaviour
PROBE_ADDR = ipaddress.ip_network("192.0.2.1/32")
RETRIES = (0.05, 0.2)             # pauses before the 2nd and 3rd try of a write that failed transiently
TRANSIENT_ERRNOS = {4, 11, 16, 105}   # EINTR, EAGAIN, EBUSY, ENOBUFS

# set name for (ip version, single host?)
BLOCK_SETS = {(4, True): "block4", (6, True): "block6", (4, False): "block4_net", (6, False): "block6_net"}
ALLOW_SETS = {4: "allow4", 6: "allow6"}
SCOPES = ("listeners", "host")
# tables other software owns: socat-monitor deletes and recreates its own table, so it must never be one of these
FOREIGN_TABLES = ("filter", "nat", "mangle", "raw", "security", "firewalld")
DROPPED_TTL = "1h"                # a source that stopped knocking leaves the dropped sets after this
DROPPED_SIZE = 65536              # sources remembered per drop listener and IP version (more are dropped
                                  # and counted, not remembered)
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_table_name(name: str) -> None:
    """ValueError unless `name` can only be a table of our own."""
    if not _TABLE_NAME.fullmatch(name):
        raise ValueError("expected a table name: letters, digits and _, starting with a letter")
    if name.lower() in FOREIGN_TABLES:
        raise ValueError("that is a standard table of other software, which the agent would delete and recreate: "
                         "use a name of socat-monitor's own, such as socat_monitor")


def block_set(net: Network) -> str:
    return BLOCK_SETS[(net.version, is_host(net))]


@dataclass(frozen=True, slots=True)
class KernelElement:
    """One element as the kernel holds it now (block sets: with what it dropped)."""

    set: str
    target: str
    timeout_s: float | None
    expires_s: float | None
    packets: int | None = None
    bytes: int | None = None


@dataclass(frozen=True, slots=True)
class SetCounter:
    """What the drop rule of one block set dropped since the table was made."""

    set: str
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Listing:
    elements: list[KernelElement]
    counters: list[SetCounter]


@dataclass(frozen=True, slots=True)
class Ownership:
    """Whether a table of our name exists and carries our mark; its handle and shape (use count, rule handles)."""

    exists: bool
    ours: bool
    handle: int | None = None
    shape: tuple = ()


@dataclass(frozen=True, slots=True)
class DropListener:
    """A policy listener with `action: drop`: new TCP connections to it from outside `sources` are dropped."""

    name: str
    port: int
    address: str | None          # None or unspecified: every local address
    sources: tuple[Network, ...]

    def versions(self) -> tuple[int, ...]:
        """The IP versions the rule matches: the declared address's, or both (IPv4-mapped counts as IPv4)."""
        if self.address is None or ipaddress.ip_address(self.address).is_unspecified:
            return (4, 6)
        return (unmapped_network(ipaddress.ip_network(self.address)).version,)

    def elements(self, version: int) -> list[str]:
        """The allowlist of one IP version; IPv4-mapped networks arrive as IPv4 packets, so they join the v4 set."""
        return [target_text(n) for n in map(unmapped_network, self.sources) if n.version == version]


def drop_set(index: int, version: int) -> str:
    return f"dropallow{index}_{version}"


def dropped_set(index: int, version: int) -> str:
    """The dynamic map the drop rule fills: source -> port of its first dropped SYN, counting its packets."""
    return f"dropped{index}_{version}"


def drop_counter(index: int, version: int) -> str:
    """The named counter of one drop rule: every SYN it dropped (or counted, dry run) since the table was made."""
    return f"listener_drops{index}_{version}"


@dataclass(frozen=True, slots=True)
class DroppedSource:
    """One source a drop rule remembers: which listener (index), its first dropped port, its packets so far."""

    index: int
    source: str
    port: int | None
    packets: int


@dataclass(frozen=True, slots=True)
class DropReading:
    """One read of every drop listener: the sources remembered, and each rule's counter (index -> packets)."""

    sources: list[DroppedSource]
    packets: dict[int, int]


def _drop_rules(drops: Sequence[DropListener], count_only: bool) -> list[str]:
    """Two rules per drop listener and IP version: a SYN from outside the set, not on loopback, is dropped.

    The first also remembers the source in the dropped map; when the map is
    full the kernel ends that rule at the `update`, so the second drops (and
    counts) without remembering: a flood of new sources never gets in.
    `count_only` (dry run): the first accepts what it counted (this chain
    only: other tables still decide), the second counts and lets it go on."""
    rules = []
    for index, listener in enumerate(drops):
        for version in listener.versions():
            family = "ip" if version == 4 else "ip6"
            daddr = ""
            if listener.address is not None and not ipaddress.ip_address(listener.address).is_unspecified:
                daddr = f"{family} daddr {unmapped_network(ipaddress.ip_network(listener.address)).network_address} "
            match = (f"    iif != \"lo\" tcp dport {listener.port} {daddr}tcp flags & (syn | ack) == syn "
                     f"{family} saddr != @{drop_set(index, version)} ")
            count = f"counter name \"{drop_counter(index, version)}\""
            rules.append(f"{match}update @{dropped_set(index, version)} {{ {family} saddr counter : tcp sport }} "
                         f"{count} {'accept' if count_only else 'drop'} comment \"drop {listener.name}\"")
            rules.append(f"{match}{count}{'' if count_only else ' drop'} "
                         f"comment \"drop {listener.name} (dropped map full)\"")
    return rules


def drop_elements(table: str, drops: Sequence[DropListener]) -> list[str]:
    """The nft commands that fill every drop listener's allow sets."""
    lines = []
    for index, listener in enumerate(drops):
        for version in (4, 6):
            elems = listener.elements(version)
            if elems:
                lines.append(f"add element inet {table} {drop_set(index, version)} {{ {', '.join(elems)} }}")
    return lines


def _ttl(seconds: float) -> str:
    return f"{max(int(seconds * 1000), 1)}ms"


def skeleton_script(table: str, *, scope: str, ports: Iterable[int],
                    blocks: Sequence[tuple[Network, float]] = (),
                    allow: Iterable[Network] = (), replace_handle: int | None = None,
                    drops: Sequence[DropListener] = (), count_only: bool = False) -> str:
    """The nft script that (re)creates our table atomically (pure, for tests and review).

    `drops`: the policy's drop listeners, each with its allow sets and rule
    (after the never_block accepts); `count_only`: their rules count, never drop.
    `replace_handle`: the handle of our table to delete first; None when there
    is none, and then the script fails if a table of that name appears meanwhile."""
    if scope not in SCOPES:
        raise InputError("enforce.scope", f"{scope!r} is not 'listeners' or 'host'")
    port_match = "th dport @ports " if scope == "listeners" else ""
    mark = f"{{ comment \"{OWNER_COMMENT}\"; }}"   # set when the table is made (a later block cannot add it)
    first = [f"create table inet {table} {mark}"] if replace_handle is None else \
        [f"delete table inet handle {replace_handle}", f"table inet {table} {mark}"]
    drop_rules = [f"    ct state new meta l4proto {{ tcp, udp }} {port_match}{'ip' if version == 4 else 'ip6'} "
                  f"saddr @{name} counter name \"drops_{name}\" drop"
                  for (version, _), name in sorted(BLOCK_SETS.items(), key=lambda kv: (not kv[0][1], kv[0][0]))]
    lines = [
        *first,
        f"table inet {table} {{",
        "  set allow4 { type ipv4_addr; flags interval; auto-merge; }",
        "  set allow6 { type ipv6_addr; flags interval; auto-merge; }",
        *(f"  set {name} {{ type ipv{version}_addr; flags {'timeout' if host else 'interval, timeout'}; counter; }}"
          for (version, host), name in BLOCK_SETS.items()),
        *(f"  counter drops_{name} {{}}" for name in BLOCK_SETS.values()),
        "  set ports { type inet_service; }",
        f"  set {PROBE_SET} {{ type ipv4_addr; flags timeout; }}",
        *(f"  set {drop_set(i, v)} {{ type ipv{v}_addr; flags interval; auto-merge; }}"
          for i in range(len(drops)) for v in (4, 6)),
        *(f"  map {dropped_set(i, v)} {{ type ipv{v}_addr : inet_service; flags dynamic, timeout; "
          f"timeout {DROPPED_TTL}; size {DROPPED_SIZE}; }}" for i in range(len(drops)) for v in (4, 6)),
        *(f"  counter {drop_counter(i, v)} {{}}" for i in range(len(drops)) for v in (4, 6)),
        "  chain input {",
        "    type filter hook input priority filter - 10; policy accept;",
        "    ip saddr @allow4 accept",
        "    ip6 saddr @allow6 accept",
        *drop_rules,
        *_drop_rules(drops, count_only),
        "  }",
        "}",
    ]
    lines += drop_elements(table, drops)
    port_list = sorted({int(p) for p in ports})
    if port_list:
        lines.append(f"add element inet {table} ports {{ {', '.join(map(str, port_list))} }}")
    for version, name in ALLOW_SETS.items():
        nets = [target_text(n) for n in allow if n.version == version]
        if nets:
            lines.append(f"add element inet {table} {name} {{ {', '.join(nets)} }}")
    per_set: dict[str, list[str]] = {}
    for net, ttl_s in blocks:
        per_set.setdefault(block_set(net), []).append(f"{target_text(net)} timeout {_ttl(ttl_s)}")
    for name, elems in per_set.items():
        lines.append(f"add element inet {table} {name} {{ {', '.join(elems)} }}")
    return "\n".join(lines) + "\n"


def encode_element(key: bytes, timeout_ms: int | None = None, end: bool = False) -> bytes:
    """One NFTA_LIST_ELEM attribute: key, optional timeout, optional interval-end flag.

    Encoded here with struct (pyroute2's generic attribute encoder costs about
    90 us per element)."""
    body = nla(NFTA_SET_ELEM_KEY, nla(NFTA_DATA_VALUE, key))
    if timeout_ms is not None:
        body += nla(NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", timeout_ms))
    if end:
        body += nla(NFTA_SET_ELEM_FLAGS, struct.pack(">I", NFT_SET_ELEM_INTERVAL_END))
    return nla(NFTA_LIST_ELEM, body)


def netlink_elements(net: Network, timeout_ms: int | None) -> list[bytes]:
    """Encoded element(s) for a target: one key, or start + end for a CIDR."""
    if is_host(net):
        return [encode_element(net.network_address.packed, timeout_ms)]
    start = [encode_element(net.network_address.packed, timeout_ms)]
    after = int(net.broadcast_address) + 1
    if after >= 1 << net.max_prefixlen:
        return start
    return start + [encode_element(after.to_bytes(net.max_prefixlen // 8, "big"), end=True)]


def parse_value(val) -> str:
    """A libnftables JSON element value as target text."""
    if isinstance(val, str):
        return val
    if "prefix" in val:
        return f"{val['prefix']['addr']}/{val['prefix']['len']}"
    if "range" in val:
        lo, hi = (ipaddress.ip_address(x) for x in val["range"])
        nets = list(ipaddress.summarize_address_range(lo, hi))
        return target_text(nets[0]) if len(nets) == 1 else f"{lo}-{hi}"
    raise ValueError(f"unexpected element value {val!r}")


def parse_listing(doc: dict) -> list[KernelElement]:
    out = []
    for item in doc.get("nftables", []):
        s = item.get("set")
        if not s or s["name"] in ("ports", PROBE_SET):
            continue
        for raw in s.get("elem", []):
            elem = raw["elem"] if isinstance(raw, dict) and "elem" in raw else raw
            if isinstance(elem, dict) and "val" in elem:
                counter = elem.get("counter") or {}
                out.append(KernelElement(s["name"], parse_value(elem["val"]), elem.get("timeout"), elem.get("expires"),
                                         counter.get("packets"), counter.get("bytes")))
            else:
                out.append(KernelElement(s["name"], parse_value(elem), None, None))
    return out


def parse_dropped(doc: dict, index: int) -> list[DroppedSource]:
    """The elements of one listing of a dropped map: source, first dropped port, packets."""
    out = []
    for item in doc.get("nftables", []):
        for raw in (item.get("map") or {}).get("elem", []):
            key, port = raw if isinstance(raw, list) else (raw, None)
            elem = key["elem"] if isinstance(key, dict) and "elem" in key else {"val": key}
            out.append(DroppedSource(index, parse_value(elem["val"]), port if isinstance(port, int) else None,
                                     (elem.get("counter") or {}).get("packets", 0)))
    return out


def parse_counters(doc: dict) -> list[SetCounter]:
    """The per-set drop counters (`drops_<set>`) of a listing."""
    return [SetCounter(c["name"].removeprefix("drops_"), c.get("packets", 0), c.get("bytes", 0))
            for item in doc.get("nftables", []) if (c := item.get("counter")) and c["name"].startswith("drops_")]



class _Transient(EnvironmentProblem):
    """A netlink error worth one more try (EBUSY, ENOBUFS, ...)."""


def _per_set(items: Sequence[tuple[Network, float]], set_name: str | None,
             timeouts: bool = True) -> dict[str, list[bytes]]:
    per_set: dict[str, list[bytes]] = {}
    for net, ttl_s in items:
        timeout_ms = max(int(ttl_s * 1000), 1) if timeouts else None
        per_set.setdefault(set_name or block_set(net), []).extend(netlink_elements(net, timeout_ms))
    return per_set


class NftTable:
    """Our table in one network namespace: skeleton, element batches, listing."""

    def __init__(self, table: str, netns: str | None, timeout_s: float = 5.0) -> None:
        try:
            check_table_name(table)
        except ValueError as exc:
            raise InputError("enforce.table", f"{exc}, got {table!r}") from None
        self.table = table
        self.netns = netns
        self.timeout_s = timeout_s
        self._worker = NetnsWorker(netns, name=f"nft-{table}")
        self._sock: ElementSocket | None = None
        self._ctx = None
        self._query: ElementSocket | None = None
        self._query_lock = threading.Lock()
        self.retries = 0          # writes tried again after a transient error
        self._write_lock = threading.Lock()
        self._worker.call(self._open, timeout_s, "nftables")

    def _open(self) -> None:
        import nftables  # Debian python3-nftables (libnftables), seen through --system-site-packages

        self._ctx = nftables.Nftables()
        self._ctx.set_json_output(True)
        self._ctx.set_handle_output(False)
        self._sock = ElementSocket(self.timeout_s)
        self._query = ElementSocket(self.timeout_s)

    def _run(self, script: str, what: str) -> str:
        def go() -> str:
            rc, out, err = self._ctx.cmd(script)
            if rc != 0:
                raise EnvironmentProblem(what, f"nftables refused the change: {err.strip().splitlines()[0] if err.strip() else rc}")
            return out
        return self._worker.call(go, self.timeout_s, what)

    def call(self, fn, what: str):
        """Run `fn` in the table's namespace (facts, subprocesses), with the table's deadline."""
        return self._worker.call(fn, self.timeout_s, what)

    def ownership(self) -> Ownership:
        """Is there a table of our name, and is it ours (cheap: no set element is read; any thread)."""
        try:
            with self._query_lock:
                found = self._query.table_shape(self.table, CHAIN)
        except OSError as exc:   # socket.timeout included
            raise EnvironmentProblem("nftables", f"cannot look at table inet {self.table}: {exc}") from None
        if found is None:
            return Ownership(exists=False, ours=False)
        handle, use, userdata, rules = found
        return Ownership(exists=True, ours=OWNER_COMMENT.encode() in userdata, handle=handle, shape=(use, rules))

    def require_ours(self) -> Ownership:
        """The ownership, or InputError if a table of our name exists without our mark."""
        owner = self.ownership()
        if owner.exists and not owner.ours:
            raise InputError("enforce.table", f"table inet {self.table} exists and was not made by socat-monitor "
                             f"(it lacks the comment {OWNER_COMMENT!r}); it is left alone: set enforce.table "
                             "to a name of socat-monitor's own, e.g. socat_monitor")
        return owner

    def create(self, *, scope: str, ports: Iterable[int], blocks: Sequence[tuple[Network, float]] = (),
               allow: Iterable[Network] = (), drops: Sequence[DropListener] = (),
               count_only: bool = False) -> Ownership:
        """Delete and recreate our table (only ours) with its elements, in one transaction; its new ownership."""
        owner = self.require_ours()
        self._run(skeleton_script(self.table, scope=scope, ports=ports, blocks=blocks, allow=allow,
                                  replace_handle=owner.handle if owner.exists else None, drops=drops,
                                  count_only=count_only), "nftables skeleton")
        return self.ownership()

    def refresh_in_place(self) -> bool:
        """Does re-adding an element that exists give it the new timeout on this kernel?

        Tried on the probe set (no rule reads it): add with 1 s, add again with
        an hour, see what the kernel kept. Some kernels keep the old expiry."""
        self.add([(PROBE_ADDR, 1.0)], set_name=PROBE_SET)
        self.add([(PROBE_ADDR, 3600.0)], set_name=PROBE_SET)

        def go() -> list:
            rc, out, err = self._ctx.cmd(f"list set inet {self.table} {PROBE_SET}")
            if rc != 0:
                raise EnvironmentProblem("nftables", f"cannot list set {PROBE_SET}: {err.strip()}")
            return [item["set"] for item in json.loads(out)["nftables"] if "set" in item]
        sets = self._worker.call(go, self.timeout_s, "nftables list")
        self.delete([PROBE_ADDR], set_name=PROBE_SET)
        expires = [e["elem"].get("expires", 0) for s in sets for e in s.get("elem", []) if isinstance(e, dict)]
        return bool(expires) and expires[0] > 2

    def set_ports(self, ports: Iterable[int]) -> None:
        port_list = sorted({int(p) for p in ports})
        script = f"flush set inet {self.table} ports\n"
        if port_list:
            script += f"add element inet {self.table} ports {{ {', '.join(map(str, port_list))} }}\n"
        self._run(script, "nftables ports")

    def set_allow(self, allow: Iterable[Network]) -> None:
        """Replace the never-block sets in one transaction."""
        script = "".join(f"flush set inet {self.table} {name}\n" for name in ALLOW_SETS.values())
        for version, name in ALLOW_SETS.items():
            nets = [target_text(n) for n in allow if n.version == version]
            if nets:
                script += f"add element inet {self.table} {name} {{ {', '.join(nets)} }}\n"
        self._run(script, "nftables never_block")

    def set_drop_sources(self, drops: Sequence[DropListener]) -> None:
        """Replace the allow sets of the same drop listeners in one transaction (no moment with an empty set)."""
        script = "".join(f"flush set inet {self.table} {drop_set(i, v)}\n" for i in range(len(drops)) for v in (4, 6))
        self._run(script + "".join(line + "\n" for line in drop_elements(self.table, drops)), "nftables drop sources")

    def dropped(self, drops: Sequence[DropListener]) -> DropReading:
        """Every source the drop rules remember and each rule's counter; only the drop listeners'
        maps and counters are read, never the block sets."""
        pairs = [(i, v) for i in range(len(drops)) for v in (4, 6)]

        def listed(what: str) -> dict:
            rc, text, err = self._ctx.cmd(f"list {what}")
            if rc != 0:
                raise EnvironmentProblem("nftables", f"cannot list {what}: {err.strip()}")
            return json.loads(text)

        def go() -> DropReading:
            sources: list[DroppedSource] = []
            packets: dict[int, int] = {}
            for index, version in pairs:
                sources += parse_dropped(listed(f"map inet {self.table} {dropped_set(index, version)}"), index)
                doc = listed(f"counter inet {self.table} {drop_counter(index, version)}")
                packets[index] = packets.get(index, 0) + sum(
                    item["counter"].get("packets", 0) for item in doc.get("nftables", []) if "counter" in item)
            return DropReading(sources, packets)
        return self._worker.call(go, self.timeout_s, "nftables list")

    def listing(self) -> Listing:
        """Every set element (with its counters) and the per-set drop counters: a full dump.

        Sets and counters are listed, not the table: libnftables 1.0.6 cannot
        write the drop rules' map update as JSON and warns on stderr at each try."""
        def go() -> Listing:
            docs = []
            for what in ("sets", "counters"):
                rc, out, err = self._ctx.cmd(f"list {what} table inet {self.table}")
                if rc != 0:
                    raise EnvironmentProblem("nftables", f"cannot list table inet {self.table}: {err.strip()}",
                                             "start the agent (or `socat-monitor blocks add`) to create it")
                docs.append(json.loads(out))
            return Listing(parse_listing(docs[0]), parse_counters(docs[1]))
        return self._worker.call(go, self.timeout_s, "nftables list")

    def list_elements(self) -> list[KernelElement]:
        return self.listing().elements

    def holds(self, net: Network) -> bool:
        """Whether the kernel holds a block element for `net` now (one `get element`)."""
        def go() -> bool:
            rc, _, _ = self._ctx.cmd(f"get element inet {self.table} {block_set(net)} {{ {target_text(net)} }}")
            return rc == 0
        return self._worker.call(go, self.timeout_s, "nftables get")

    def add(self, items: Sequence[tuple[Network, float]], *, set_name: str | None = None) -> None:
        """Add (or refresh) block elements with their timeouts, in one netlink transaction."""
        self._batch([("add", _per_set(items, set_name))])

    def replace(self, items: Sequence[tuple[Network, float]]) -> None:
        """Add, delete and add again in one transaction: the new timeout on any kernel, whether it was there or not."""
        per_set = _per_set(items, None)
        self._batch([("add", per_set), ("del", _per_set([(n, 0) for n, _ in items], None, timeouts=False)),
                     ("add", per_set)])

    def delete(self, nets: Sequence[Network], *, set_name: str | None = None) -> bool:
        """Delete elements; False if (some) were not there (already expired)."""
        try:
            self._batch([("del", _per_set([(n, 0) for n in nets], set_name, timeouts=False))])
        except FileNotFoundError:
            return False
        return True

    def _batch(self, steps: list[tuple[str, dict[str, list[bytes]]]]) -> None:
        """One netlink transaction, tried again (counted in `retries`) after a transient error or a missed deadline.

        Sent from the calling thread: the socket was opened in the table's
        namespace and stays there, and its timeout is the deadline, so a block
        costs no hand-over to the namespace thread."""
        if not any(per_set for _, per_set in steps):
            return
        for pause in (*RETRIES, None):
            try:
                with self._write_lock:
                    return self._send(steps)
            except _Transient:
                if pause is None:
                    raise
                self.retries += 1
                time.sleep(pause)

    def _send(self, steps: list[tuple[str, dict[str, list[bytes]]]]) -> None:
        messages = [(cmd == "add", set_name, b"".join(elems[i:i + CHUNK]))
                    for cmd, per_set in steps for set_name, elems in per_set.items()
                    for i in range(0, len(elems), CHUNK)]
        try:
            self._sock.send(self.table, messages)
        except socket.timeout:
            raise _Transient("nftables write", f"no acknowledgement within {self.timeout_s:g}s") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise FileNotFoundError(exc.errno, "element or table not found") from None
            if exc.errno in TRANSIENT_ERRNOS:
                raise _Transient("nftables write", f"kernel busy: {exc}") from None
            what = "/".join(dict.fromkeys(cmd for cmd, _ in steps))
            raise EnvironmentProblem("nftables write", f"kernel refused {what} of set elements: {exc}") from None

    def close(self) -> None:
        def go() -> None:
            for sock in (self._sock, self._query):
                if sock is not None:
                    sock.close()
        try:
            self._worker.call(go, 1.0, "nftables close")
        finally:
            self._worker.close()
