"""Address spelling: the fast C-converter paths agree with `ipaddress` everywhere."""

from __future__ import annotations

import ipaddress
import random

import pytest

from monitor.addresses import network_of, normalize_ip, packed_text


def reference(text: str) -> str:
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


TRICKY = ["1.2.3.4", "255.255.255.255", "0.0.0.0", "::", "::1", "::ffff:1.2.3.4", "::FFFF:1.2.3.4", "::1.2.3.4",
          "::ffff:0:1.2.3.4", "64:ff9b::1.2.3.4", "2001:DB8::1", "2001:db8:0:0:1:0:0:1", "1:0:0:0:0:0:0:8",
          "fe80::1%eth0", "::ffff:0:0", "::0.0.1.0"]


def random_addresses(n: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(4)
        v4 = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        if kind == 0:
            out.append(v4)
        elif kind == 1:
            out.append("::ffff:" + v4)
        elif kind == 2:        # runs of zero groups, upper case, uncompressed
            out.append(ipaddress.IPv6Address(rng.getrandbits(128) & ~((1 << rng.randrange(128)) - 1)).exploded.upper())
        else:
            out.append("::" + v4)
    return out


def test_normalize_ip_spells_as_ipaddress_does():
    for text in TRICKY + random_addresses(3000):
        assert normalize_ip(text) == reference(text), text


@pytest.mark.parametrize("text", ["01.2.3.4", "256.1.1.1", "1.2.3", " 1.2.3.4", "1.2.3.4\x00", "abc", "", "1::2::3"])
def test_normalize_ip_refuses_what_ipaddress_refuses(text):
    with pytest.raises(ValueError):
        normalize_ip(text)


def test_network_of_matches_ipaddress():
    for text in TRICKY + random_addresses(3000, seed=6):
        ip = normalize_ip(text)
        for bits in ((0, 1, 48, 64, 96, 112, 127, 128) if ":" in ip else (0, 1, 8, 16, 24, 31, 32)):
            assert network_of(ip, bits) == str(ipaddress.ip_network(f"{ip}/{bits}", strict=False)), (ip, bits)


def test_packed_text_spells_as_ipaddress_does():
    for text in TRICKY + random_addresses(3000, seed=7):
        if "%" in text:
            continue
        raw = ipaddress.ip_address(text).packed
        assert packed_text(raw) == reference(text), text
