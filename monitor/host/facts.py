"""Facts about the host that the safety rules protect: its own addresses,
its default gateways and the peers of its SSH sessions (to the ports the
host's sshd listens on, `identity.sshd_ports`, not only 22), read in the
network namespace the enforcer acts in (call these on that namespace's
worker thread).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from . import tcp
from .identity import sshd_ports


@dataclass(frozen=True, slots=True)
class HostFacts:
    own_addresses: tuple[str, ...]
    gateways: tuple[str, ...]
    ssh_peers: tuple[str, ...]


def ssh_peers(ports: tuple[int, ...]) -> list[str]:
    """Remote ends of established TCP sessions to the SSH port(s), this thread's namespace."""
    peers = []
    for cols in tcp.rows("/proc/thread-self/net", (tcp.ESTABLISHED,)):
        if len(cols) > 3 and cols[3] == tcp.ESTABLISHED and tcp.hex_address(cols[1])[1] in ports:
            peers.append(tcp.hex_address(cols[2])[0])
    return sorted(set(peers))


def gather() -> HostFacts:
    from pyroute2 import IPRoute  # noqa: PLC0415 (about 250 ms: only where the enforcer needs it)

    with IPRoute() as ipr:
        own = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]
        gateways = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family):
                gw = route.get_attr("RTA_GATEWAY")
                if gw and route["dst_len"] == 0:
                    gateways.append(gw)
    return HostFacts(tuple(sorted({a.split("%")[0] for a in own if a})), tuple(sorted(set(gateways))), tuple(ssh_peers(sshd_ports())))
