"""IP addresses and networks: one spelling, one parser, one arithmetic.

Every stage spells an address the way `ipaddress` does, with IPv4-mapped
IPv6 (`::ffff:1.2.3.4`) unwrapped to plain IPv4 (`normalize_ip`,
`packed_text`); the hot paths (decoding kernel records, reading recorded
files, the detectors' /24 and /64 prefixes) use the C converters, which
`tests/test_addresses.py` holds equal to `ipaddress`. Networks given by the
operator or a policy are parsed here too: `parse_target` (a block target or
protected range: address or CIDR, no host bits, mapped unwrapped) and
`parse_network` (a policy's address or CIDR), spelled back by `target_text`.
"""

from __future__ import annotations

import ipaddress
import socket

from .errors import InputError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"      # the first 12 bytes of an IPv4-mapped IPv6 address


def normalize_ip(text: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 becomes plain IPv4. ValueError if it is not one.

    The C converters take the common spellings (about 10x faster than
    `ipaddress`, which matters for files with many sources); `ipaddress` takes
    the rest (scoped addresses, IPv4-compatible forms) and the errors."""
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except (OSError, TypeError, ValueError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, TypeError, ValueError):
        return str(unmapped(ipaddress.ip_address(text)))
    if packed[:12] == V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    canonical = socket.inet_ntop(socket.AF_INET6, packed)
    return str(unmapped(ipaddress.ip_address(text))) if "." in canonical else canonical


def packed_text(raw: bytes) -> str:
    """Canonical text of 4 or 16 address bytes in network order; IPv4-mapped IPv6 becomes IPv4."""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if raw[:12] == V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    text = socket.inet_ntop(socket.AF_INET6, raw)
    return str(ipaddress.IPv6Address(raw)) if "." in text else text     # C spells some with a dotted tail


def packed(text: str) -> bytes:
    """Network-order bytes of an address (fast path of `ipaddress.ip_address(text).packed`)."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 address") from None


def unmapped(address: Address) -> Address:
    """The IPv4 address inside an IPv4-mapped IPv6 one; any other address as it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def unmapped_network(net: Network) -> Network:
    """`::ffff:10.0.0.0/104` as `10.0.0.0/8`; any other network as it is."""
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        return ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{max(net.prefixlen - 96, 0)}")
    return net


def same_address(a: str, b: str) -> bool:
    """True when two spellings (brackets allowed) name one address; False when either is not an address."""
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return False


def network_of(ip: str, bits: int) -> str:
    """The network of `bits` around a canonical address, spelled as `ipaddress` spells it."""
    family, size = (socket.AF_INET6, 128) if ":" in ip else (socket.AF_INET, 32)
    try:
        value = int.from_bytes(socket.inet_pton(family, ip), "big")
    except OSError:          # a scoped address: ipaddress knows those
        return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
    text = socket.inet_ntop(family, (value >> (size - bits) << (size - bits)).to_bytes(size // 8, "big"))
    if "." in text and family == socket.AF_INET6:      # C spells some IPv6 networks with a dotted tail
        return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
    return f"{text}/{bits}"


def parse_network(text: str) -> Network:
    """A policy's IP address or CIDR (brackets allowed; strict: no host bits) as a network; ValueError if not."""
    bare = text.strip().strip("[]")
    try:
        return ipaddress.ip_network(bare, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueError(f"host bits set in {text!r}: did you mean {ipaddress.ip_network(bare, strict=False)}?") from None
        raise ValueError(f"not an IP address or CIDR: {text!r}") from None


def parse_target(text: str, where: str = "target") -> Network:
    """An address or CIDR to block or protect, as a network; IPv4-mapped IPv6 becomes IPv4.

    Host bits set in a CIDR are an error (`10.0.0.1/24` is ambiguous)."""
    raw = text.strip()
    try:
        if "/" in raw:
            net = ipaddress.ip_network(raw, strict=True)
        else:
            net = ipaddress.ip_network(ipaddress.ip_address(raw))
    except ValueError as exc:
        raise InputError(where, f"{text!r} is not an IP address or CIDR ({exc})") from None
    return unmapped_network(net)


def is_host(net: Network) -> bool:
    return net.prefixlen == net.max_prefixlen


def target_text(net: Network) -> str:
    """Canonical text of a network: a bare address for a single host."""
    return str(net.network_address) if is_host(net) else str(net)
