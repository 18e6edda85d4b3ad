"""Relay identity (issue 16): reading it (cgroup path, container, netns names, sshd ports), selecting
policy entries by it, and blocks landing in the relay's own namespace (pure logic and fake /proc trees)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitor.decide import DecideConfig, Decider
from monitor.ecs import HostInfo, parse_connection, render
from monitor.events import Container, ProcessInfo
from monitor.host import identity
from monitor.policy import EngineConfig, PolicyEngine, parse_policy
from monitor.policy.suggest import suggest_policy
from monitor.yamlfile import InputErrors
from tests.test_decide import FakeBlocker, accept

A, B, HOST = 4026532001, 4026532002, 4026531840
DOCKER_ID = "3f" * 32


def relay(netns: int, name: str | None = None, *, uid: int = 0, pid: int = 10, cgroup: str | None = None,
          container: Container | None = None) -> ProcessInfo:
    return ProcessInfo(pid=pid, comm="socat", uid=uid, started_uid=uid, netns=netns, netns_name=name,
                       userns_owner=0, cgroup=cgroup, container=container)


# -- reading who a relay is --------------------------------------------------------------------------

@pytest.mark.parametrize("path, runtime, cid, name", [
    (f"/system.slice/docker-{DOCKER_ID}.scope", "docker", DOCKER_ID, None),
    (f"/docker/{DOCKER_ID}", "docker", DOCKER_ID, None),
    (f"/system.slice/containerd.service/kubepods-besteffort-pod1.slice:cri-containerd:x/"
     f"cri-containerd-{DOCKER_ID}.scope", "containerd", DOCKER_ID, None),
    (f"/kubepods/besteffort/pod0c1d/{DOCKER_ID}", "containerd", DOCKER_ID, None),
    (f"/machine.slice/libpod-{DOCKER_ID}.scope/container", "podman", DOCKER_ID, None),
    ("/machine.slice/machine-web\\x2dbox.scope/payload", "systemd-nspawn", "web-box", "web-box"),
])
def test_the_container_is_read_from_the_cgroup_path(path, runtime, cid, name):
    assert identity.container_of(path) == Container(cid, name, runtime)


@pytest.mark.parametrize("path", [None, "/", "/user.slice/user-1000.slice/session-3.scope",
                                  f"/machine.slice/libpod-conmon-{DOCKER_ID}.scope",
                                  # made by a local user under their own slice: no container identity
                                  "/user.slice/user-1000.slice/user@1000.service/machine.slice/"
                                  "machine-web\\x2dproxy.scope",
                                  f"/user.slice/user-1000.slice/user@1000.service/docker-{DOCKER_ID}.scope",
                                  f"/user.slice/user-1000.slice/user@1000.service/docker/{DOCKER_ID}",
                                  f"/user.slice/user-1000.slice/user@1000.service/kubepods/{DOCKER_ID}",
                                  f"/user.slice/user-1000.slice/user@1000.service/user.slice/"
                                  f"libpod-{DOCKER_ID}.scope",
                                  "/machine.slice/machine-evil\\x0aname.scope"])
def test_no_container_outside_one(path):
    assert identity.container_of(path) is None


def _fake_proc(tmp_path: Path, pid: int, cgroup: str) -> str:
    (tmp_path / str(pid)).mkdir(parents=True)
    (tmp_path / str(pid) / "cgroup").write_text(cgroup)
    return str(tmp_path)


def test_cgroup_path_prefers_v2_and_falls_back_to_systemds_v1(tmp_path):
    proc = _fake_proc(tmp_path, 1, "12:memory:/x\n1:name=systemd:/system.slice/relay.service\n0::/\n")
    assert identity.cgroup_path(1, proc) == "/system.slice/relay.service"
    proc = _fake_proc(tmp_path, 2, "0::/system.slice/relay.service\n")
    assert identity.cgroup_path(2, proc) == "/system.slice/relay.service"
    assert identity.cgroup_path(3, proc) is None


def test_a_docker_containers_name_comes_from_its_config(tmp_path):
    (tmp_path / DOCKER_ID).mkdir()
    (tmp_path / DOCKER_ID / "config.v2.json").write_text('{"Name": "/web-proxy"}')
    ids = identity.Identities(docker_dir=str(tmp_path))
    assert ids.container(f"/docker/{DOCKER_ID}") == Container(DOCKER_ID, "web-proxy", "docker")


def test_netns_names_are_only_mounted_namespaces(tmp_path):
    (tmp_path / "left-behind").write_text("")
    assert identity.netns_names(str(tmp_path)) == {}


def test_sshd_ports_from_its_config_when_no_sshd_runs(tmp_path):
    config = tmp_path / "sshd_config"
    config.write_text("# Port 22\nPort 2222\nport 2200  # second\nListenAddress 0.0.0.0\n")
    assert identity.sshd_ports(str(_fake_proc(tmp_path / "proc", 1, "0::/\n")), str(config)) == (2200, 2222)
    assert identity.sshd_ports(str(tmp_path / "proc"), str(tmp_path / "missing")) == (22,)


def test_events_carry_the_identity_in_ecs_and_read_it_back():
    proc = relay(A, "lab-a", cgroup=f"/docker/{DOCKER_ID}", container=Container(DOCKER_ID, "web", "docker"))
    doc = render(accept("192.0.2.5", 8443, 0, 40000, proc), HostInfo("h", "0" * 32))
    assert doc["socat"]["netns"] == {"inode": A, "name": "lab-a"} and doc["socat"]["cgroup"] == proc.cgroup
    assert doc["container"] == {"id": DOCKER_ID, "name": "web", "runtime": "docker"}
    assert doc["user"]["id"] == "0" and doc["socat"]["listener"]["port"] == 8443
    back = parse_connection(doc).process
    assert (back.netns, back.netns_name, back.container) == (A, "lab-a", Container(DOCKER_ID, "web", "docker"))


# -- selecting policy entries ------------------------------------------------------------------------

POLICY = parse_policy(f"""
version: 1
listeners:
  - {{name: plain, port: 8443, allow_sources: [192.0.2.0/24], action: block}}
  - {{name: in-a, port: 8443, netns: lab-a, allow_sources: [198.51.100.0/24], action: block}}
  - {{name: in-b, port: 8443, netns: "net:[{B}]", allow_sources: [203.0.113.0/24], action: block}}
  - {{name: boxed, port: 8443, container: web, allow_sources: [192.0.2.7]}}
  - {{name: by-id, port: 8443, container: "{DOCKER_ID[:12]}", cgroup: /docker, allow_sources: []}}
  - {{name: as-nobody, port: 8443, user: 65534, allow_sources: []}}
""")


@pytest.mark.parametrize("process, home, name", [
    (relay(HOST), {HOST}, "plain"),
    (relay(A, "lab-a"), {HOST}, "in-a"),
    (relay(B), {HOST}, "in-b"),
    (relay(A, "lab-other"), {HOST}, None),                    # not home, no entry names it
    (relay(A, "lab-other"), {HOST, A}, "plain"),
    (relay(HOST, container=Container("x" * 64, "web")), {HOST}, "boxed"),
    (relay(HOST, cgroup=f"/docker/{DOCKER_ID}", container=Container(DOCKER_ID)), {HOST}, "by-id"),
    (relay(HOST, uid=65534), {HOST}, "as-nobody"),
    (None, {HOST}, "plain"),                                 # unknown relay: by port
    (relay(A, "lab-other"), None, "plain"),                  # offline: by port
])
def test_the_entry_is_the_one_that_means_the_relay(process, home, name):
    entry = POLICY.listener(8443, "0.0.0.0", process, home)
    assert (entry.name if entry else None) == name


def test_a_relay_no_entry_means_is_alerted_on_as_unknown_and_says_who_it_is():
    engine = PolicyEngine(POLICY, EngineConfig(), home={HOST})
    [alert] = engine.check(accept("198.51.100.9", 8443, 0, 40000, relay(A, "lab-other", uid=1000)))
    assert alert.rule_id == "policy.unknown_listener" and alert.listener_action is None
    assert "relay pid 10 (started by uid 1000) in network namespace net:[4026532001] (lab-other)" in alert.description
    assert "only for other relays (plain, in-a, in-b, boxed, by-id, as-nobody)" in alert.description


@pytest.mark.parametrize("line, where, problem", [
    ("netns: 'a b'", 4, "listeners[0].netns"),
    ("container: '-x'", 4, "listeners[0].container"),
    ("cgroup: system.slice", 4, "listeners[0].cgroup"),
    ("user: no-such-user-here", 4, "no user 'no-such-user-here'"),
    ("user: -1", 4, "listeners[0].user"),
])
def test_bad_selector_values_are_file_line_errors(line, where, problem):
    text = f"version: 1\nlisteners:\n  - name: x\n    {line}\n    port: 80\n"
    with pytest.raises(InputErrors) as err:
        parse_policy(text, "p.yaml")
    message = str(err.value)
    assert f"p.yaml:{where}:" in message and problem in message, message


def test_one_port_may_be_declared_once_per_identity():
    parse_policy("version: 1\nlisteners:\n  - {name: a, port: 80, netns: x}\n  - {name: b, port: 80, netns: y}\n")
    with pytest.raises(InputErrors, match="already declared by listeners\\[0\\] for the same relays"):
        parse_policy("version: 1\nlisteners:\n  - {name: a, port: 80, netns: x}\n  - {name: b, port: 80, netns: x}\n")


def test_suggest_gives_each_namespace_and_container_an_entry_naming_it():
    events = [accept("198.51.100.9", 8443, 0, 40000, relay(HOST)),
              accept("198.51.100.9", 8443, 1, 40001, relay(A, "lab-a")),
              accept("198.51.100.9", 8443, 2, 40002, relay(B)),
              accept("198.51.100.9", 8443, 3, 40003, relay(HOST, container=Container(DOCKER_ID, None, "docker")))]
    text = suggest_policy([], events, home=HOST)
    policy = parse_policy(text)
    chosen = {(e.selector.netns, e.selector.container) for e in policy.listeners}
    assert chosen == {(None, None), ("lab-a", None), (f"net:[{B}]", None), (None, DOCKER_ID[:12])}, text
    for ev in events:
        assert policy.listener(8443, "10.0.0.1", ev.process, {HOST}) is not None


def test_suggest_never_names_a_namespace_or_container_the_policy_could_not_hold():
    odd = Container("ab" * 32, "-odd name", "docker")
    nspawn = Container("bad name", "bad name", "systemd-nspawn")
    events = [accept("198.51.100.9", 8443, 0, 40000, relay(A, "-odd", container=odd)),
              accept("198.51.100.9", 8443, 1, 40001, relay(B, "b\u00e9", container=nspawn))]
    text = suggest_policy([], events, home=HOST)
    policy = parse_policy(text)
    chosen = {(e.selector.netns, e.selector.container) for e in policy.listeners}
    assert chosen == {(f"net:[{A}]", "ab" * 6), (f"net:[{B}]", None)}, text
    for ev in events:
        assert policy.listener(8443, "10.0.0.1", ev.process, {HOST}) is not None


# -- blocks land in the relay's own namespace --------------------------------------------------------

def test_each_relays_block_lands_in_its_own_namespace_and_history():
    in_a, in_b = FakeBlocker(), FakeBlocker()
    d = Decider(DecideConfig(), default_ttl_s=60, blockers={A: in_a, B: in_b})
    engine = PolicyEngine(POLICY, EngineConfig(), home={A, B})
    for t, (source, process) in enumerate((("192.0.2.66", relay(A, "lab-a")), ("192.0.2.77", relay(B)))):
        out = d.decide(engine.check(accept(source, 8443, t, 40000 + t, process)))
        assert out[0].block
    assert [c[0] for c in in_a.calls] == ["192.0.2.66"] and [c[0] for c in in_b.calls] == ["192.0.2.77"]
    [alert] = d.decide(engine.check(accept("192.0.2.66", 8443, 5, 40009, relay(HOST + 7))))
    assert alert.rule_id == "policy.unknown_listener" and not alert.block


def test_a_relay_outside_every_enforced_namespace_never_blocks():
    d = Decider(DecideConfig(), default_ttl_s=60, blockers={A: FakeBlocker(), B: FakeBlocker()})
    engine = PolicyEngine(POLICY, EngineConfig())                     # offline engine: judged by port
    [alert] = d.decide(engine.check(accept("203.0.113.5", 8443, 0, 40000, relay(HOST))))
    assert not alert.block and "not net:[4026532001], net:[4026532002] where this agent enforces" in alert.block_skipped


def test_the_agent_reads_its_own_identity():
    own = identity.cgroup_path(os.getpid())
    assert own is None or own.startswith("/")


# -- several namespaces: one journal each, drop listeners where their entry means ----------------------

def test_each_enforced_namespace_gets_its_own_journal():
    from monitor.agent.scopes import enforced_namespaces, member_config
    from monitor.enforce import EnforceConfig

    several = EnforceConfig(namespaces=("lab-a", "lab-b"), state_file="/var/lib/sm/blocks-lab-a.json")
    assert enforced_namespaces(several) == ("lab-a", "lab-b")
    assert [member_config(several, ns).state_file for ns in ("lab-a", "lab-b")] == \
        ["/var/lib/sm/blocks-lab-a.json", "/var/lib/sm/blocks-lab-b.json"]
    assert member_config(several, "lab-b").netns == "lab-b" and member_config(several, "lab-b").namespaces == ()
    chosen = EnforceConfig(namespaces=("lab-a", "lab-b"), state_file="/srv/journal.json")
    assert member_config(chosen, "lab-b").state_file == "/srv/journal-lab-b.json"
    one = EnforceConfig(netns="lab-a", state_file="/srv/journal.json")
    assert enforced_namespaces(one) == ("lab-a",) and member_config(one, "lab-a") == one


def test_drop_listeners_go_to_the_namespaces_their_entry_means():
    from monitor.agent.scopes import drop_listeners

    policy = parse_policy(f"""
version: 1
listeners:
  - {{name: every, port: 80, allow_sources: [192.0.2.1], action: drop}}
  - {{name: only-a, port: 81, netns: lab-a, allow_sources: [192.0.2.1], action: drop}}
  - {{name: only-b, port: 82, netns: "net:[{B}]", allow_sources: [192.0.2.1], action: drop}}
""")
    names = {"lab-a": A, "lab-b": B}.get
    assert [d.name for d in drop_listeners(policy, A, names)] == ["every", "only-a"]
    assert [d.name for d in drop_listeners(policy, B, names)] == ["every", "only-b"]


def test_a_drop_entry_means_its_namespace_by_inode_and_one_not_enforced_in_is_warned_of():
    from monitor.agent.scopes import drop_listeners, unenforced_drops

    policy = parse_policy("""
version: 1
listeners:
  - {name: in-a, port: 81, netns: lab-a, allow_sources: [192.0.2.1], action: drop}
  - {name: in-z, port: 82, netns: lab-z, allow_sources: [192.0.2.1], action: drop}
""")
    names = {"lab-a": A, "alias-of-a": A}.get
    # the agent runs inside lab-a (enforces in its own namespace, no name): the entry still lands there
    assert [d.name for d in drop_listeners(policy, A, names)] == ["in-a"]
    [warning] = unenforced_drops(policy, [A, B], names)
    assert "'in-z'" in warning and "'lab-z'" in warning and "no kernel rule" in warning


def test_two_drop_entries_naming_one_namespace_by_two_names_are_warned_of():
    from monitor.agent.scopes import drop_listeners, shared_drop_ports

    policy = parse_policy(f"""
version: 1
listeners:
  - {{name: by-name, port: 81, netns: lab-a, allow_sources: [192.0.2.1], action: drop}}
  - {{name: by-inode, port: 81, netns: "net:[{A}]", allow_sources: [192.0.2.2], action: drop}}
  - {{name: other-port, port: 82, netns: lab-a, allow_sources: [192.0.2.2], action: drop}}
""")
    drops = drop_listeners(policy, A, {"lab-a": A}.get)
    [warning] = shared_drop_ports(drops, "lab-a")
    assert "'by-name' and 'by-inode'" in warning and "port 81 in 'lab-a'" in warning
    assert shared_drop_ports(drops[2:], None) == []


@pytest.mark.parametrize("entry, key", [
    ("container: web-proxy", "container"), ("cgroup: /system.slice/relay.service", "cgroup"), ("user: 0", "user")])
def test_a_drop_entry_cannot_be_scoped_by_what_the_kernel_does_not_see(entry, key):
    text = f"version: 1\nlisteners:\n  - {{name: a, port: 80, allow_sources: [192.0.2.1], action: drop, {entry}}}\n"
    with pytest.raises(InputErrors, match=f"<policy>:3: listeners\\[0\\].{key}: the kernel drops by port and "
                                          "namespace only"):
        parse_policy(text)
    parse_policy(text.replace("action: drop", "action: block"))


@pytest.mark.parametrize("first, second", [
    (", netns: x", ""), ("", ", netns: x"), (", address: '::1'", ""),
    (", address: 127.0.0.1", ", netns: x")])
def test_two_drop_entries_on_one_port_of_one_namespace_are_refused(first, second):
    text = (f"version: 1\nlisteners:\n  - {{name: a, port: 80, allow_sources: [192.0.2.1], action: drop {first}}}\n"
            f"  - {{name: b, port: 80, allow_sources: [192.0.2.2], action: drop {second}, cgroup: /x}}\n")
    with pytest.raises(InputErrors, match=r"listeners\[1\]"):
        parse_policy(text)
    text = text.replace(", cgroup: /x", "")
    with pytest.raises(InputErrors, match=r"<policy>:4: listeners\[1\].port: port 80 already has a drop entry .*"
                                          r"listeners\[0\] 'a'"):
        parse_policy(text)
    parse_policy(text.replace("port: 80, allow_sources: [192.0.2.2]", "port: 81, allow_sources: [192.0.2.2]"))


def test_two_drop_entries_on_one_port_of_different_namespaces_or_addresses_are_fine():
    parse_policy("version: 1\nlisteners:\n  - {name: a, port: 80, netns: x, allow_sources: [], action: drop}\n"
                 "  - {name: b, port: 80, netns: y, allow_sources: [], action: drop}\n"
                 "  - {name: c, port: 81, address: 127.0.0.1, allow_sources: [], action: drop}\n"
                 "  - {name: d, port: 81, address: 127.0.0.2, allow_sources: [], action: drop}\n")


class _FakeEnforcer:
    built: list["_FakeEnforcer"] = []

    def __init__(self, config) -> None:
        self.closed = False
        _FakeEnforcer.built.append(self)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("names", [("a", "a"), ("a", "b")])
def test_a_namespace_enforced_in_twice_is_refused_and_nothing_is_left_open(monkeypatch, names):
    from monitor.agent import scopes
    from monitor.enforce import EnforceConfig
    from monitor.errors import InputError

    monkeypatch.setattr(scopes, "netns_inode", lambda name: A)
    monkeypatch.setattr(scopes, "Enforcer", _FakeEnforcer)
    _FakeEnforcer.built = []
    with pytest.raises(InputError, match=f"'a' and '{names[1]}' are the same network namespace"):
        scopes.Enforcers(EnforceConfig(namespaces=names))
    assert len(_FakeEnforcer.built) == 1 and _FakeEnforcer.built[0].closed


def test_policy_check_notes_a_namespace_that_does_not_exist_now():
    policy = parse_policy(f"version: 1\nlisteners:\n  - {{name: a, port: 80, netns: lab-z}}\n"
                          f"  - {{name: b, port: 80, netns: lab-a}}\n  - {{name: c, port: 80, netns: 'net:[{A}]'}}\n")
    [note] = policy.notes({"lab-a"})
    assert note.startswith("listeners[0] 'a': netns 'lab-z' is not a namespace")
    assert policy.notes() == []
