"""Pure parts of enforcement: targets, safety rules, circuit breaker, nft script, state journal."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from monitor.addresses import parse_target, target_text
from monitor.durations import parse_duration
from monitor.enforce.netlink import attributes, nla
from monitor.enforce.nft import (OWNER_COMMENT, DropListener, DroppedSource, netlink_elements, parse_counters,
                                 parse_dropped, parse_listing, skeleton_script)
from monitor.enforce.journal import JournalWriter
from monitor.enforce.safety import CircuitBreaker, SafetyRules
from monitor.enforce.state import ActiveBlock, StateFile
from monitor.errors import InputError

S = 10**9


@pytest.mark.parametrize("text,expected", [
    ("10.0.0.1", "10.0.0.1"),
    (" 10.0.0.1 ", "10.0.0.1"),
    ("10.1.2.0/24", "10.1.2.0/24"),
    ("10.1.2.3/32", "10.1.2.3"),
    ("::ffff:10.9.8.7", "10.9.8.7"),
    ("::ffff:10.9.8.0/120", "10.9.8.0/24"),
    ("2001:DB8::1", "2001:db8::1"),
    ("2001:db8:1::/64", "2001:db8:1::/64"),
])
def test_target_normalisation(text: str, expected: str) -> None:
    assert target_text(parse_target(text)) == expected


@pytest.mark.parametrize("text", ["", "host.example", "10.0.0.1/24", "10.0.0.300", "10.0.0.0/33"])
def test_bad_targets_name_the_problem(text: str) -> None:
    with pytest.raises(InputError) as err:
        parse_target(text, "alert.block_target")
    assert err.value.where == "alert.block_target" and repr(text) in err.value.message


def test_safety_rules() -> None:
    rules = SafetyRules.build(never_block=["192.0.2.0/28"], own_addresses=["198.51.100.7", "2001:db8::7"],
                              gateways=["198.51.100.1"], ssh_peers=["203.0.113.9"])

    def why(text: str) -> str | None:
        return rules.refusal(parse_target(text))

    assert why("203.0.113.10") is None
    assert why("2001:db8:5::/64") is None
    assert "loopback" in why("127.0.0.2")
    assert "loopback" in why("::1")
    assert "never_block" in why("192.0.2.5")
    assert "never_block" in why("192.0.2.0/24")          # a range covering a protected one
    assert "own address" in why("198.51.100.7")
    assert "own address" in why("2001:db8::/64")
    assert "default gateway" in why("198.51.100.1")
    assert "SSH session peer" in why("203.0.113.9")
    assert "broader than /16" in why("10.0.0.0/8")
    assert "broader than /48" in why("2001:db8::/32")
    assert why("0.0.0.0") and why("224.0.0.1") and why("fe80::1")


def test_bad_never_block_entry_is_an_input_error() -> None:
    with pytest.raises(InputError) as err:
        SafetyRules.build(never_block=["10.0.0.0/8", "nonsense"])
    assert err.value.where == "never_block[1]"


def test_circuit_breaker_window() -> None:
    breaker = CircuitBreaker(limit=3, window_s=60)
    t = 1_000 * S
    assert [breaker.allow(t + i) for i in range(4)] == [True, True, True, False]
    assert breaker.trip() and not breaker.trip()          # one alert per burst
    assert not breaker.allow(t + 59 * S)
    assert breaker.allow(t + 60 * S + 1)                  # the oldest left the window
    breaker.reset_if_quiet(t + 200 * S)
    assert not breaker.tripped


def test_skeleton_scopes_and_elements() -> None:
    nets = [(ipaddress.ip_network("192.0.2.4/32"), 30), (ipaddress.ip_network("2001:db8:1::/64"), 1.5)]
    script = skeleton_script("socat_monitor", scope="listeners", ports=[8443, 80, 80], blocks=nets)
    assert script.startswith(f'create table inet socat_monitor {{ comment "{OWNER_COMMENT}"; }}\n'
                             "table inet socat_monitor {\n")
    assert 'th dport @ports ip saddr @block4 counter name "drops_block4" drop' in script
    assert "set block4 { type ipv4_addr; flags timeout; counter; }" in script
    assert "counter drops_block6_net {}" in script
    replace = skeleton_script("socat_monitor", scope="listeners", ports=[], replace_handle=7)
    assert replace.startswith(f'delete table inet handle 7\ntable inet socat_monitor {{ comment "{OWNER_COMMENT}"; }}\n')
    assert "add element inet socat_monitor ports { 80, 8443 }" in script
    assert "add element inet socat_monitor block4 { 192.0.2.4 timeout 30000ms }" in script
    assert "add element inet socat_monitor block6_net { 2001:db8:1::/64 timeout 1500ms }" in script
    host = skeleton_script("t", scope="host", ports=[])
    assert "@ports ip" not in host and 'ip saddr @block4 counter name "drops_block4" drop' in host
    with pytest.raises(InputError):
        skeleton_script("t", scope="everything", ports=[])


def test_drop_listener_rules_sets_and_counters() -> None:
    web = DropListener("web", 8443, None, (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("::ffff:198.51.100.7/128"),
                                          ipaddress.ip_network("2001:db8::/32")))
    lone = DropListener("lone", 9000, "::ffff:10.0.0.1", ())
    script = skeleton_script("t", scope="listeners", ports=[], drops=[web, lone])
    assert ('iif != "lo" tcp dport 8443 tcp flags & (syn | ack) == syn ip saddr != @dropallow0_4 '
            'update @dropped0_4 { ip saddr counter : tcp sport } counter name "listener_drops0_4" drop '
            'comment "drop web"') in script
    assert "ip6 saddr != @dropallow0_6 update @dropped0_6 { ip6 saddr counter : tcp sport }" in script
    assert "map dropped0_4 { type ipv4_addr : inet_service; flags dynamic, timeout; timeout 1h; size 65536; }" in script
    assert "counter listener_drops1_4 {}" in script
    assert "add element inet t dropallow0_4 { 192.0.2.0/24, 198.51.100.7 }" in script, "IPv4-mapped: the v4 set"
    assert "add element inet t dropallow0_6 { 2001:db8::/32 }" in script
    assert "tcp dport 9000 ip daddr 10.0.0.1 " in script and "dropallow1_6 " not in script.split("chain")[1]
    assert "dropallow1" not in "".join(line for line in script.splitlines() if line.startswith("add element")), \
        "an empty list: no element, everyone dropped"
    assert ('iif != "lo" tcp dport 8443 tcp flags & (syn | ack) == syn ip saddr != @dropallow0_4 '
            'counter name "listener_drops0_4" drop comment "drop web (dropped map full)"') in script
    counting = skeleton_script("t", scope="listeners", ports=[], drops=[web], count_only=True)
    assert 'counter name "listener_drops0_4" accept comment "drop web"' in counting
    assert 'counter name "listener_drops0_4" comment "drop web (dropped map full)"' in counting
    assert " drop comment" not in counting


def test_parse_dropped_map() -> None:
    doc = {"nftables": [{"metainfo": {}}, {"map": {"name": "dropped0_4", "elem": [
        [{"elem": {"val": "192.0.2.9", "expires": 3599, "counter": {"packets": 3, "bytes": 180}}}, 59360],
        ["192.0.2.10", 41000]]}}]}
    assert parse_dropped(doc, 2) == [DroppedSource(2, "192.0.2.9", 59360, 3), DroppedSource(2, "192.0.2.10", 41000, 0)]


def test_interval_elements() -> None:
    start, end = netlink_elements(ipaddress.ip_network("10.1.2.0/24"), 5000)
    # NFTA_LIST_ELEM { KEY { DATA_VALUE 10.1.2.0 }, TIMEOUT 5000 ms }
    assert start == (struct.pack("=HH", 28, 1) + struct.pack("=HH", 12, 1) + struct.pack("=HH", 8, 1)
                     + bytes([10, 1, 2, 0]) + struct.pack("=HH", 12, 4) + struct.pack(">Q", 5000))
    # the end element: next address, the interval-end flag, no timeout
    assert end == (struct.pack("=HH", 24, 1) + struct.pack("=HH", 12, 1) + struct.pack("=HH", 8, 1)
                   + bytes([10, 1, 3, 0]) + struct.pack("=HH", 8, 3) + struct.pack(">I", 1))
    assert len(netlink_elements(ipaddress.ip_network("255.255.255.0/24"), 5000)) == 1
    assert len(netlink_elements(ipaddress.ip_network("10.1.2.3/32"), 5000)) == 1
    assert len(netlink_elements(ipaddress.ip_network("2001:db8::/64"), None)[0]) == 4 + 4 + 4 + 16


def test_parse_listing() -> None:
    doc = {"nftables": [
        {"metainfo": {}},
        {"set": {"name": "block4", "elem": [{"elem": {"val": "192.0.2.4", "timeout": 30, "expires": 29,
                                                      "counter": {"packets": 3, "bytes": 180}}}]}},
        {"counter": {"name": "drops_block4", "table": "t", "packets": 5, "bytes": 300}},
        {"set": {"name": "refresh_probe", "elem": [{"elem": {"val": "192.0.2.1", "timeout": 1, "expires": 1}}]}},
        {"set": {"name": "block6_net", "elem": [{"elem": {"val": {"prefix": {"addr": "2001:db8::", "len": 64}},
                                                          "timeout": 9, "expires": 3}}]}},
        {"set": {"name": "allow4", "elem": ["10.0.0.1", {"range": ["10.1.0.0", "10.1.0.255"]}]}},
        {"set": {"name": "ports", "elem": [80]}},
    ]}
    got = [(e.set, e.target, e.expires_s) for e in parse_listing(doc)]
    assert got == [("block4", "192.0.2.4", 29), ("block6_net", "2001:db8::/64", 3),
                   ("allow4", "10.0.0.1", None), ("allow4", "10.1.0.0/24", None)]
    first = parse_listing(doc)[0]
    assert (first.packets, first.bytes) == (3, 180)
    assert [(c.set, c.packets, c.bytes) for c in parse_counters(doc)] == [("block4", 5, 300)]


def test_netlink_attributes() -> None:
    raw = nla(3, struct.pack(">I", 7)) + nla(4, struct.pack(">Q", 12)) + nla(6 | 0x8000, b"udata")
    attrs = attributes(raw)
    assert struct.unpack(">I", attrs[3])[0] == 7 and struct.unpack(">Q", attrs[4])[0] == 12
    assert attrs[6] == b"udata"   # the NESTED flag is masked


def test_a_ttl_is_a_positive_duration() -> None:
    assert parse_duration("10m", positive=True) == 600 and parse_duration("90", positive=True) == 90
    assert parse_duration("500ms", positive=True) == 0.5
    for bad in ("", "0", "-5s", "10 minutes"):
        with pytest.raises(InputError, match="--ttl"):
            parse_duration(bad, "--ttl", positive=True)


def test_state_journal(tmp_path) -> None:
    state = StateFile(str(tmp_path / "sub" / "blocks.json"))
    now = 5_000 * S
    live = ActiveBlock("192.0.2.4", now + 60 * S, 60, now, "r1", "a1")
    gone = ActiveBlock("192.0.2.5", now + 1 * S, 1, now)
    state.record([live, gone])
    state.record([live])                               # a refresh: no duplicate
    assert state.load(now + 2 * S) == [live]           # expired entries are left out
    state.record(["192.0.2.4"])
    assert state.load(now) == [gone]
    state.replace([live])
    assert state.load(now) == [live]
    (tmp_path / "sub" / "blocks.json").write_text('{"add": {"target": "x"}}\n')
    assert state.load(now) == [] and state.bad_lines == 1         # set aside, never fatal
    assert (tmp_path / "sub" / "blocks.json.bad").read_text().startswith("1\t")


def test_journal_writer_keeps_the_order_and_reports_faults(tmp_path) -> None:
    state = StateFile(str(tmp_path / "blocks.json"))
    faults: list[OSError] = []
    writer = JournalWriter(state, faults.append)
    now = 5_000 * S
    a = ActiveBlock("192.0.2.4", now + 60 * S, 60, now)
    b = ActiveBlock("192.0.2.5", now + 60 * S, 60, now)
    for changes in ([a], [b], ["192.0.2.4"], [a], ["192.0.2.5"], []):
        writer.record(changes)
    assert writer.flush(10.0)
    assert state.load(now) == [a] and faults == []   # removed after added, added again: in the order queued
    assert writer.close()
    writer.record(["192.0.2.4"])                       # after close: written all the same
    assert writer.close() and state.load(now) == []
    (tmp_path / "gone").write_text("")
    broken = JournalWriter(StateFile(str(tmp_path / "gone" / "blocks.json")), faults.append)
    broken.record([a])
    assert broken.close() and len(faults) == 1         # a disk fault is reported, never raised to the blocker


def test_egress_rule_keys() -> None:
    from monitor.enforce.egress import EgressRule, rule_keys

    keys = rule_keys(EgressRule(8443, (("10.0.0.0/8", 443), ("::ffff:192.0.2.1", None), ("2001:db8::/32", 80))))
    assert [(k.prefixlen, k.listener, k.port, k.family) for k in keys] == [
        (48, 8443, 443, 4), (72, 8443, 0, 4), (72, 8443, 80, 6)]
    assert bytes(keys[1].addr)[:4] == bytes([192, 0, 2, 1])
    with pytest.raises(InputError) as err:
        rule_keys(EgressRule(1, (("backend.example", None),)))
    assert "allow_backends[0]" in err.value.where


def test_egress_rule_from_policy() -> None:
    from monitor.enforce.egress import EgressRule
    from monitor.policy.model import Backend, ListenerPolicy

    lp = ListenerPolicy(name="api", port=8443, address="10.0.0.1", action="block",
                        allow_backends=(Backend.parse("10.1.0.0/16:443"), Backend.parse("[2001:db8::5]:*")))
    rule = EgressRule.from_policy(lp)
    assert rule == EgressRule(8443, (("10.1.0.0/16", 443), ("2001:db8::5/128", None)), "10.0.0.1", "api")
