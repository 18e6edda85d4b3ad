"""Pure safety rules of enforcement: what must never be blocked, and the
circuit breaker that caps new blocks per minute (a block target is parsed
and spelled by `monitor.addresses`).

No I/O here: the facts about the host (its addresses, gateways, SSH peers)
are gathered at the edge (`monitor.host.facts`) and passed in, so these
rules can be unit-tested and replayed offline.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from ..addresses import Network, parse_target, target_text

# The broadest ranges a detector or an operator may block in one element.
MIN_PREFIX = {4: 16, 6: 48}


@dataclass(frozen=True, slots=True)
class Protected:
    """A network that must never be blocked, and why."""

    network: Network
    why: str


@dataclass(slots=True)
class SafetyRules:
    """Refuses blocks that could cut the host off or hit what the operator protected."""

    protected: list[Protected] = field(default_factory=list)

    @classmethod
    def build(cls, *, never_block: Iterable[str] = (), own_addresses: Iterable[str] = (),
              gateways: Iterable[str] = (), ssh_peers: Iterable[str] = ()) -> "SafetyRules":
        rules = cls([Protected(ipaddress.ip_network("127.0.0.0/8"), "loopback"),
                     Protected(ipaddress.ip_network("::1/128"), "loopback")])
        for i, text in enumerate(never_block):
            rules.protected.append(Protected(parse_target(text, f"never_block[{i}]"), f"never_block {text}"))
        for kind, items in (("own address", own_addresses), ("default gateway", gateways),
                            ("SSH session peer", ssh_peers)):
            for text in items:
                net = parse_target(text, kind)
                rules.protected.append(Protected(net, f"{kind} {target_text(net)}"))
        return rules

    def refusal(self, net: Network) -> str | None:
        """Why `net` must not be blocked, or None when it may be."""
        addr = net.network_address
        if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
            return f"{target_text(net)} is a loopback, multicast or unspecified address"
        if isinstance(net, ipaddress.IPv6Network) and addr.is_link_local:
            return f"{target_text(net)} is link-local"
        minimum = MIN_PREFIX[net.version]
        if net.prefixlen < minimum:
            return f"{target_text(net)} is broader than /{minimum}"
        for item in self.protected:
            if item.network.version == net.version and item.network.overlaps(net):
                return f"{target_text(net)} covers a protected network ({item.why})"
        return None


@dataclass(slots=True)
class CircuitBreaker:
    """At most `limit` new blocks in any `window_s` seconds (monotonic ns)."""

    limit: int
    window_s: float = 60.0
    _times: deque = field(default_factory=deque)
    tripped: bool = False

    def allow(self, now_ns: int) -> bool:
        horizon = now_ns - int(self.window_s * 1e9)
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now_ns)
        return True

    def trip(self) -> bool:
        """Mark the breaker open; True only on the first trip of a burst."""
        first = not self.tripped
        self.tripped = True
        return first

    def reset_if_quiet(self, now_ns: int) -> None:
        if self.tripped and (not self._times or now_ns - self._times[-1] > int(self.window_s * 1e9)):
            self.tripped = False
