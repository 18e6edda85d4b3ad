"""socat-monitor's own nftables table: its skeleton, its set elements, its listing.

The skeleton (sets, chain, rules) is written in one libnftables transaction
that deletes and recreates only our table, optionally with the elements that
must survive a restart, so there is no moment without them. At run time only
set elements change, through pyroute2 netlink batches (never a process per
block). Listing uses libnftables JSON, which dumps every element (pyroute2's
element `get` is truncated). Everything runs on a `NetnsWorker`, so it acts in
the chosen network namespace and every call has a deadline.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import EnvironmentProblem, InputError
from .netns import NetnsWorker
from .safety import Network, is_host, target_text

NFPROTO_INET = 1
NFT_SET_ELEM_INTERVAL_END = 1
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_TIMEOUT = 1, 3, 4
NFTA_DATA_VALUE = 1
CHUNK = 1000                      # elements per netlink message (attributes are capped at 64 KiB)

# set name for (ip version, single host?)
BLOCK_SETS = {(4, True): "block4", (6, True): "block6", (4, False): "block4_net", (6, False): "block6_net"}
ALLOW_SETS = {4: "allow4", 6: "allow6"}


def block_set(net: Network) -> str:
    return BLOCK_SETS[(net.version, is_host(net))]


@dataclass(frozen=True, slots=True)
class KernelElement:
    """One element as the kernel holds it now."""

    set: str
    target: str
    timeout_s: float | None
    expires_s: float | None


def _ttl(seconds: float) -> str:
    return f"{max(int(seconds * 1000), 1)}ms"


def skeleton_script(table: str, *, scope: str, ports: Iterable[int],
                    blocks: Sequence[tuple[Network, float]] = (),
                    allow: Iterable[Network] = ()) -> str:
    """The nft script that recreates our table atomically (pure, for tests and review)."""
    if scope not in ("listeners", "host"):
        raise InputError("enforce.scope", f"{scope!r} is not 'listeners' or 'host'")
    port_match = "th dport @ports " if scope == "listeners" else ""
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  comment \"owned by socat-monitor: blocks have timeouts; do not edit by hand\"",
        "  set allow4 { type ipv4_addr; flags interval; auto-merge; }",
        "  set allow6 { type ipv6_addr; flags interval; auto-merge; }",
        "  set block4 { type ipv4_addr; flags timeout; }",
        "  set block6 { type ipv6_addr; flags timeout; }",
        "  set block4_net { type ipv4_addr; flags interval, timeout; }",
        "  set block6_net { type ipv6_addr; flags interval, timeout; }",
        "  set ports { type inet_service; }",
        "  chain input {",
        "    type filter hook input priority filter - 10; policy accept;",
        "    ip saddr @allow4 accept",
        "    ip6 saddr @allow6 accept",
        f"    ct state new meta l4proto {{ tcp, udp }} {port_match}ip saddr @block4 counter drop",
        f"    ct state new meta l4proto {{ tcp, udp }} {port_match}ip saddr @block4_net counter drop",
        f"    ct state new meta l4proto {{ tcp, udp }} {port_match}ip6 saddr @block6 counter drop",
        f"    ct state new meta l4proto {{ tcp, udp }} {port_match}ip6 saddr @block6_net counter drop",
        "  }",
        "}",
    ]
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


def _nla(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def encode_element(key: bytes, timeout_ms: int | None = None, end: bool = False) -> bytes:
    """One NFTA_LIST_ELEM attribute: key, optional timeout, optional interval-end flag.

    Encoded here with struct (pyroute2's generic attribute encoder costs about
    90 us per element); pyroute2 still carries the batch and its acks."""
    body = _nla(NFTA_SET_ELEM_KEY, _nla(NFTA_DATA_VALUE, key))
    if timeout_ms is not None:
        body += _nla(NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", timeout_ms))
    if end:
        body += _nla(NFTA_SET_ELEM_FLAGS, struct.pack(">I", NFT_SET_ELEM_INTERVAL_END))
    return _nla(NFTA_LIST_ELEM, body)


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
        if not s or s["name"] == "ports":
            continue
        for raw in s.get("elem", []):
            elem = raw["elem"] if isinstance(raw, dict) and "elem" in raw else raw
            if isinstance(elem, dict) and "val" in elem:
                out.append(KernelElement(s["name"], parse_value(elem["val"]), elem.get("timeout"), elem.get("expires")))
            else:
                out.append(KernelElement(s["name"], parse_value(elem), None, None))
    return out


class NftTable:
    """Our table in one network namespace: skeleton, element batches, listing."""

    def __init__(self, table: str, netns: str | None, timeout_s: float = 5.0) -> None:
        if not table.replace("_", "").isalnum():
            raise InputError("enforce.table", f"{table!r} is not a valid nftables table name")
        self.table = table
        self.netns = netns
        self.timeout_s = timeout_s
        self._worker = NetnsWorker(netns, name=f"nft-{table}")
        self._nft = None
        self._ctx = None
        self._worker.call(self._open, timeout_s, "nftables")

    def _open(self) -> None:
        import nftables  # Debian python3-nftables (libnftables), seen through --system-site-packages
        from pyroute2.nftables.main import NFTables

        self._ctx = nftables.Nftables()
        self._ctx.set_json_output(True)
        self._ctx.set_handle_output(False)
        self._nft = NFTables(nfgen_family=NFPROTO_INET)

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

    def exists(self) -> bool:
        def go() -> bool:
            rc, out, _ = self._ctx.cmd("list tables inet")
            return rc == 0 and any(t.get("table", {}).get("name") == self.table
                                   for t in json.loads(out or '{"nftables": []}')["nftables"])
        return self._worker.call(go, self.timeout_s, "nftables")

    def create(self, *, scope: str, ports: Iterable[int], blocks: Sequence[tuple[Network, float]] = (),
               allow: Iterable[Network] = ()) -> None:
        """Delete and recreate our table (only ours) with its elements, in one transaction."""
        self._run(skeleton_script(self.table, scope=scope, ports=ports, blocks=blocks, allow=allow), "nftables skeleton")

    def set_ports(self, ports: Iterable[int]) -> None:
        port_list = sorted({int(p) for p in ports})
        script = f"flush set inet {self.table} ports\n"
        if port_list:
            script += f"add element inet {self.table} ports {{ {', '.join(map(str, port_list))} }}\n"
        self._run(script, "nftables ports")

    def list_elements(self) -> list[KernelElement]:
        def go() -> list[KernelElement]:
            rc, out, err = self._ctx.cmd(f"list table inet {self.table}")
            if rc != 0:
                raise EnvironmentProblem("nftables", f"cannot list table inet {self.table}: {err.strip()}",
                                         "start the agent (or `socat-monitor blocks add`) to create it")
            return parse_listing(json.loads(out))
        return self._worker.call(go, self.timeout_s, "nftables list")

    def holds(self, net: Network) -> bool:
        """Whether the kernel holds a block element for `net` now (one `get element`)."""
        def go() -> bool:
            rc, _, _ = self._ctx.cmd(f"get element inet {self.table} {block_set(net)} {{ {target_text(net)} }}")
            return rc == 0
        return self._worker.call(go, self.timeout_s, "nftables get")

    def add(self, items: Sequence[tuple[Network, float]]) -> None:
        """Add (or refresh) block elements with their timeouts, in one netlink transaction."""
        per_set: dict[str, list[bytes]] = {}
        for net, ttl_s in items:
            per_set.setdefault(block_set(net), []).extend(netlink_elements(net, max(int(ttl_s * 1000), 1)))
        self._batch("add", per_set)

    def delete(self, nets: Sequence[Network]) -> bool:
        """Delete elements; False if (some) were not there (already expired)."""
        per_set: dict[str, list[bytes]] = {}
        for net in nets:
            per_set.setdefault(block_set(net), []).extend(netlink_elements(net, None))
        try:
            self._batch("del", per_set)
        except FileNotFoundError:
            return False
        return True

    def _batch(self, cmd: str, per_set: dict[str, list[bytes]]) -> None:
        if not per_set:
            return
        self._worker.call(lambda: self._send(cmd, per_set), self.timeout_s, "nftables write")

    def _send(self, cmd: str, per_set: dict[str, list[bytes]]) -> None:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
        from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM

        class elem_list_msg(nfgen_msg):
            nla_map = (("NFTA_SET_ELEM_LIST_UNSPEC", "none"),
                       ("NFTA_SET_ELEM_LIST_TABLE", "asciiz"),
                       ("NFTA_SET_ELEM_LIST_SET", "asciiz"),
                       ("NFTA_SET_ELEM_LIST_ELEMENTS", "cdata"))

        msg_type = NFT_MSG_NEWSETELEM if cmd == "add" else NFT_MSG_DELSETELEM
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if cmd == "add" else 0)
        messages = [self._marker(nfgen_msg, NFNL_SUBSYS_NFTABLES, 0x10, NLM_F_REQUEST)]
        for set_name, elems in per_set.items():
            for i in range(0, len(elems), CHUNK):
                msg = elem_list_msg()
                msg["attrs"] = [["NFTA_SET_ELEM_LIST_TABLE", self.table],
                                ["NFTA_SET_ELEM_LIST_SET", set_name],
                                ["NFTA_SET_ELEM_LIST_ELEMENTS", b"".join(elems[i:i + CHUNK])]]
                msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
                msg["header"]["flags"] = flags
                msg["nfgen_family"] = NFPROTO_INET
                messages.append(msg)
        messages.append(self._marker(nfgen_msg, NFNL_SUBSYS_NFTABLES, 0x11, NLM_F_REQUEST))

        async def run() -> None:
            async for _ in self._nft.asyncore.nlm_request_batch(messages):
                pass

        try:
            self._nft._run_with_cleanup(run)
        except NetlinkError as exc:
            if exc.code == 2:
                raise FileNotFoundError(exc.code, "element or table not found") from None
            raise EnvironmentProblem("nftables write", f"kernel refused {cmd} of set elements: {exc}") from None

    @staticmethod
    def _marker(msg_class, subsys: int, msg_type: int, flags: int):
        msg = msg_class()
        msg["res_id"] = subsys
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        return msg

    def close(self) -> None:
        def go() -> None:
            if self._nft is not None:
                self._nft.close()
        try:
            self._worker.call(go, 1.0, "nftables close")
        finally:
            self._worker.close()
