"""Facts about the host that the safety rules protect: its own addresses,
its default gateways and the peers of its SSH sessions, read in the network
namespace the enforcer acts in (call these on that namespace's worker thread).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

SSH_PORTS = (22,)
TCP_ESTABLISHED = "01"


@dataclass(frozen=True, slots=True)
class HostFacts:
    own_addresses: tuple[str, ...]
    gateways: tuple[str, ...]
    ssh_peers: tuple[str, ...]


def _hex_addr(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped or addr)


def ssh_peers(ports: tuple[int, ...] = SSH_PORTS) -> list[str]:
    """Remote ends of established TCP sessions to the SSH port(s), this thread's namespace."""
    peers = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/thread-self/net/{name}", encoding="ascii") as fh:
                next(fh)
                for line in fh:
                    cols = line.split()
                    local, remote, state = cols[1], cols[2], cols[3]
                    if state == TCP_ESTABLISHED and int(local.split(":")[1], 16) in ports:
                        peers.append(_hex_addr(remote.split(":")[0]))
        except FileNotFoundError:
            continue
    return sorted(set(peers))


def gather() -> HostFacts:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        own = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]
        gateways = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family):
                gw = route.get_attr("RTA_GATEWAY")
                if gw and route["dst_len"] == 0:
                    gateways.append(gw)
    return HostFacts(tuple(sorted({a.split("%")[0] for a in own if a})), tuple(sorted(set(gateways))), tuple(ssh_peers()))
