"""`encode`'s lines, byte for byte, against the reference documents of `render`.

`encode` builds a connection event's line from pieces it reuses (per flow,
process, listener and host); `render` builds the document as one nested dict.
For every kind of record the capture makes (from kernel records through
decode and enrich) and the others the agent writes, the line must be
`render`'s document serialised: the same keys in the same order, the same
values. Only `event.created` (the time of rendering) may differ.
"""

from __future__ import annotations

import dataclasses
import re

import orjson
import pytest

from monitor.capture import decode as d
from monitor.capture.enrich import Enricher, ProcessTable
from monitor.ecs import encode, render
from monitor.events import Action, BlockEvent, Container, ConnectionEvent, Direction, Listener, Outcome
from tests import sample_records as S
from tests.test_capture_decode import OFFSET, exec_rec, record
from tests.test_ecs import HOST, _records

CREATED = re.compile(rb'"created":"[^"]*"')


def _same_line(record_: object) -> None:
    line = encode(record_, HOST)
    reference = orjson.dumps(render(record_, HOST), option=orjson.OPT_APPEND_NEWLINE)
    assert CREATED.sub(b"", line) == CREATED.sub(b"", reference), type(record_).__name__


def _relay_records() -> list[bytes]:
    """A fork relay's life: exec, accept (IPv4 and IPv6), the child's connect, both closes, a refusal,
    a failed connect, the child's exit with a status and by a signal."""
    relay = dict(pid=100, ppid=1, lport=8080, lfamily=d.AF_INET, laddr="127.0.0.2")
    child = dict(relay, pid=101, ppid=100, cookie=10_000)
    flow = dict(sport=40000, dport=8080, saddr="127.0.0.1", daddr="127.0.0.2", cookie=10_000)
    backend = dict(sport=50000, dport=443, saddr="127.0.0.1", daddr="127.0.0.3")
    v6 = dict(family=d.AF_INET6, sport=40001, dport=8080, saddr="2001:db8::7", daddr="2001:db8::1",
              lfamily=d.AF_INET6, laddr="::")
    return [
        exec_rec(),
        record(d.EV_ACCEPT, flags=d.F_INGRESS, ts=10_000, **{**relay, **flow}),
        record(d.EV_CONNECT, ts=11_000, **{**child, **backend}),
        record(d.EV_CLOSE, flags=d.F_INGRESS, ts=12_000, duration=2_000, bytes_in=12, bytes_out=3400,
               **{**child, **flow}),
        record(d.EV_CLOSE, ts=13_000, duration=2_000, bytes_in=3400, bytes_out=12, **{**child, **backend}),
        record(d.EV_ACCEPT, flags=d.F_INGRESS, ts=14_000, **{**relay, **flow, "sport": 40002}),
        record(d.EV_CLOSE, flags=d.F_INGRESS | d.F_REFUSED, ts=15_000, duration=10,
               **{**relay, **flow, "sport": 40002}),
        record(d.EV_CONNECT, flags=d.F_FAILED, err=111, ts=16_000, **{**child, **backend, "sport": 50001}),
        record(d.EV_ACCEPT, flags=d.F_INGRESS, ts=17_000, **{**relay, **v6, "cookie": 17_000}),
        record(d.EV_EXIT, family=0, flags=d.F_EXITED, err=1, ts=18_000, pid=101, ppid=100),
        record(d.EV_EXIT, family=0, sig=9, ts=19_000, pid=100, ppid=1),
    ]


@pytest.mark.parametrize("byte_counts", [False, True])
def test_every_captured_record_encodes_as_its_reference_document(tmp_path, byte_counts):
    enrich = Enricher(ProcessTable(size=8, offset_ns=OFFSET, proc=str(tmp_path)), OFFSET, "boot", byte_counts)
    events = [enrich(d.decode(raw)) for raw in _relay_records()]
    assert {ev.action for ev in events} == {Action.PROCESS_STARTED, Action.ACCEPTED, Action.ATTEMPTED,
                                            Action.CLOSED, Action.DENIED, Action.PROCESS_ENDED}
    for ev in events + events:   # twice: the second time from the reused pieces
        _same_line(ev)


def test_every_other_record_encodes_as_its_reference_document():
    partial = dataclasses.replace(S.connection(3), source_ip="2001:db8:1:2::", source_partial=True)
    named = dataclasses.replace(S.connection(4), listener=Listener("0.0.0.0", 8443, "web \"front\""))
    contained = dataclasses.replace(S.SOCAT, netns=4026531840, netns_name="lab", cgroup="/docker/ab12",
                                    container=Container(id="ab12" * 16, name="web", runtime="docker"))
    in_container = dataclasses.replace(S.connection(9), process=contained)
    bare = ConnectionEvent(Action.CLOSED, 1, "192.0.2.1", 1, "192.0.2.1", 2)   # no process, listener, session
    blocked = BlockEvent(action=Action.BLOCKED, timestamp_ns=1, target="198.51.100.7", ttl_s=60.0,
                         rule_id="anomaly.scan", alert_id="a-1")
    for rec in _records() + [partial, named, in_container, bare, blocked, S.closed(7), S.egress(8)]:
        _same_line(rec)
        _same_line(rec)


def test_a_changed_process_or_host_is_encoded_anew():
    first = S.connection(1)
    su = dataclasses.replace(first, process=dataclasses.replace(first.process, uid=65534, user_name="nobody",
                                                                 netns=1, cgroup="/su"))
    other_host = dataclasses.replace(HOST, name="other")
    for rec, host in ((first, HOST), (su, HOST), (su, other_host), (first, HOST)):
        line = encode(rec, host)
        assert CREATED.sub(b"", line) == CREATED.sub(b"", orjson.dumps(render(rec, host)) + b"\n")


def test_reused_pieces_follow_what_changed():
    """Events that share a flow, listener, session or process with one encoded before, but differ in
    what the piece holds, each encode as their own document (a piece keyed on too little fails here)."""
    first = S.connection(5)
    unnamed = dataclasses.replace(first, listener=Listener(first.listener.ip, first.listener.port))
    changed = [
        unnamed,
        dataclasses.replace(unnamed, listener=Listener(first.listener.ip, first.listener.port, "renamed")),
        dataclasses.replace(first, direction=Direction.EGRESS),
        dataclasses.replace(first, action=Action.DENIED, outcome=Outcome.FAILURE, refused=True),
        dataclasses.replace(first, action=Action.ATTEMPTED, error="ECONNREFUSED", outcome=Outcome.FAILURE),
        dataclasses.replace(first, session_id="s-other"),
        dataclasses.replace(first, session_id=None),
        dataclasses.replace(first, action=Action.CLOSED, bytes_in=5, bytes_out=7, duration_ns=9),
        dataclasses.replace(first, action=Action.CLOSED, bytes_in=6, bytes_out=None, duration_ns=9),
        dataclasses.replace(first, action=Action.CLOSED, direction=Direction.EGRESS, bytes_in=5, bytes_out=7),
        dataclasses.replace(first, source_port=first.source_port + 1),
        dataclasses.replace(first, process=dataclasses.replace(first.process, netns=7, netns_name="other")),
        dataclasses.replace(first, process=None),
    ]
    for rec in [first] + changed + [first]:
        _same_line(rec)


def _fork_child(parent, pid: int, **changes):
    """A fork child the way the enricher makes one: the parent's program and namespaces, its own ids, no start."""
    return dataclasses.replace(parent, pid=pid, tid=pid, ppid=parent.pid, start_ns=None, **changes)


def test_fork_children_flows_and_listeners_encode_from_their_templates():
    """The pieces `encode` fills in per document (a fork child's ids into its kind's process members; ports,
    byte counts and community id into its address pair's flow; times and ids into the document) hold
    everything else as `render` does: children of a parent seen before, in a container and a named namespace,
    with quotes, `%` and non-ASCII in their arguments, under another uid; IPv4 and IPv6 flows both ways; flows
    between two ports of one address in either order; a listener with a name to escape."""
    parent = dataclasses.replace(
        S.SOCAT, args=("socat", 'TCP-LISTEN:8443,fork', 'SYSTEM:echo "100%" é\\'), netns=4026531840,
        netns_name="lab", cgroup="/docker/ab12", container=Container(id="ab12" * 16, name="web", runtime="docker"))
    children = [_fork_child(parent, 5000), _fork_child(parent, 5001),
                _fork_child(parent, 5002, uid=65534, gid=65534, user_name="nobody"), _fork_child(parent, 5005, uid=0),
                _fork_child(S.SOCAT, 5003), _fork_child(dataclasses.replace(S.SOCAT, container=None), 5004)]
    listener = Listener("::", 8443, 'web "%d" ünï')
    flows = [("192.0.2.9", 40000, "10.20.0.1", 8443, Direction.INGRESS),
             ("10.20.0.1", 50000, "10.20.0.5", 443, Direction.EGRESS),
             ("2001:db8::7", 40001, "2001:db8::1", 8443, Direction.INGRESS),
             ("2001:db8::1", 50001, "2001:db8:ffff::5", 443, Direction.EGRESS),
             ("2001:db8::9", 443, "2001:db8::1", 8443, Direction.EGRESS),
             ("127.0.0.1", 60000, "127.0.0.1", 8443, Direction.INGRESS),
             ("127.0.0.1", 80, "127.0.0.1", 8443, Direction.INGRESS)]
    events = []
    for i, (src, sport, dst, dport, direction) in enumerate(flows):
        for process in [parent, *children]:
            opened = ConnectionEvent(Action.ACCEPTED if direction is Direction.INGRESS else Action.ATTEMPTED,
                                     1_700_000_000_123_456_789 + i, src, sport, dst, dport, direction,
                                     process=process, listener=listener, session_id=f"s-{i}", ktime_ns=i)
            events += [opened, dataclasses.replace(opened, action=Action.CLOSED, duration_ns=5, bytes_in=7 + i,
                                                   bytes_out=1 << 40)]
    for ev in events + events:
        _same_line(ev)


def test_the_community_ids_kept_stay_bounded_across_flows():
    """A flow's community id is kept for its close; many ports of few address pairs keep at most `MAX` in all."""
    from monitor.ecs import _PIECES, _Pieces

    for port in range(1, 2 * _Pieces.MAX + 2):
        for src in ("192.0.2.1", "192.0.2.2"):
            ev = ConnectionEvent(Action.ACCEPTED, 1, src, port, "10.20.0.1", 8443, process=S.SOCAT)
            if port % 997 == 0:
                _same_line(ev)
            else:
                encode(ev, HOST)
    assert sum(len(shape.ids) for shape in _PIECES.flows.values()) <= _Pieces.MAX
