"""The socat command-line parser and the static audit (pure logic, no processes)."""

from __future__ import annotations

import subprocess

import pytest

from monitor.errors import InputError
from monitor.events import Severity
from monitor.policy import audit_command, finding_to_alert, parse_command_line, parse_policy
from monitor.policy.audit import FINDINGS, version_findings
from monitor.socat.build import SocatBuild, binary_build, parse_version
from monitor.socat.keywords import SOCAT_VERSION
from monitor.socat.tables import BUILTIN, address_feature, parse_help
from tests.lab import require


def ids(findings) -> list[str]:
    return sorted(f.id for f in findings)


def one(findings, rule: str):
    found = [f for f in findings if f.id == rule]
    assert len(found) == 1, (rule, [(f.id, f.token) for f in findings])
    return found[0]


# -- grammar ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("keyword, kind", [
    ("TCP4-L", "tcp4-listen"), ("tcp-listen", "tcp-listen"), ("Tcp-Listen", "tcp-listen"),
    ("TCP-L", "tcp-listen"), ("INET6-LISTEN", "tcp6-listen"), ("ssl-l", "openssl-listen"),
    ("OPENSSL-LISTEN", "openssl-listen"), ("UDP-L", "udp-listen"),
])
def test_listener_aliases_resolve(keyword, kind):
    cmd = parse_command_line(["socat", f"{keyword}:8443,fork", "STDIO"])
    listener = cmd.addresses[0]
    assert listener.kind == kind
    assert listener.is_listener and listener.listen_port == 8443


def test_options_params_and_values():
    cmd = parse_command_line(["socat", "TCP-LISTEN:80,fork,max-children=10,range=10.0.0.0/8", "TCP:10.0.0.5:443"])
    listener, backend = cmd.addresses
    assert listener.params == ("80",)
    assert [(o.canonical, o.value) for o in listener.options] == [
        ("fork", None), ("max-children", "10"), ("range", "10.0.0.0/8")]
    assert backend.kind == "tcp-connect" and backend.connect_target == ("10.0.0.5", 443)
    assert backend.position == 2


def test_option_aliases_and_case():
    cmd = parse_command_line(["socat", "TCP-L:80,REUSEADDR,MaxChildren=3,su=nobody,tcpwrap=socat", "-"])
    names = [o.canonical for o in cmd.addresses[0].options]
    assert names == ["so-reuseaddr", "max-children", "substuser", "tcpwrappers"]
    assert cmd.addresses[1].kind == "stdio"


def test_option_value_keeps_colons():
    cmd = parse_command_line(["socat", "TCP-L:80,range=10.0.0.0:255.0.0.0,bind=127.0.0.1", "-"])
    listener = cmd.addresses[0]
    assert listener.option("range").value == "10.0.0.0:255.0.0.0"
    assert listener.bind_address == "127.0.0.1"


def test_ipv6_brackets():
    cmd = parse_command_line(["socat", "TCP6-LISTEN:8080,bind=[::1],range=[fd00::]/8", "TCP6:[2001:db8::5]:80"])
    listener, backend = cmd.addresses
    assert listener.bind_address == "::1"
    assert listener.option("range").value == "[fd00::]/8"
    assert backend.params == ("[2001:db8::5]", "80")
    assert backend.connect_target == ("2001:db8::5", 80)


def test_dual_address():
    cmd = parse_command_line(["socat", "TCP-L:9000,fork", "OPEN:/tmp/in,rdonly!!OPEN:/tmp/out,creat,append"])
    read, write = cmd.addresses[1:]
    assert (read.side, write.side) == ("read", "write")
    assert read.params == ("/tmp/in",) and write.params == ("/tmp/out",)
    assert [o.canonical for o in write.options] == ["o-create", "append"]
    assert read.position == write.position == 2


def test_exec_with_quoted_commas_and_colons():
    cmd = parse_command_line(["socat", "TCP-L:80", "EXEC:\"sh -c 'echo a,b:c'\",pty,stderr"])
    exe = cmd.addresses[1]
    assert exe.kind == "exec"
    assert exe.params == ("sh -c 'echo a,b:c'",)
    assert [o.canonical for o in exe.options] == ["pty", "stderr"]


def test_single_quotes_and_backslash_escapes():
    cmd = parse_command_line(["socat", "-", "SYSTEM:'echo x,y:z',pipes"])
    assert cmd.addresses[1].params == ("echo x,y:z",)
    cmd = parse_command_line(["socat", "-", r"SYSTEM:echo a\,b\:c,nofork"])
    assert cmd.addresses[1].params == ("echo a,b:c",)
    assert cmd.addresses[1].options[0].canonical == "nofork"


def test_brackets_nest_and_are_kept():
    cmd = parse_command_line(["socat", "-", "SYSTEM:echo (a,b) [c:d] {e,f}"])
    assert cmd.addresses[1].params == ("echo (a,b) [c:d] {e,f}",)
    cmd = parse_command_line(["socat", "-", "SYSTEM:cat;echo [a!!b]"])
    assert len(cmd.addresses) == 2 and cmd.addresses[1].params == ("cat;echo [a!!b]",)


def test_bare_number_is_fd_and_slash_is_gopen():
    cmd = parse_command_line(["socat", "3", "/dev/ttyS0,raw,echo=0"])
    fd, gopen = cmd.addresses
    assert (fd.kind, fd.params) == ("fd", ("3",))
    assert (gopen.kind, gopen.params) == ("gopen", ("/dev/ttyS0",))
    assert [o.canonical for o in gopen.options] == ["raw", "echo"]


def test_stdio_dash_with_options():
    cmd = parse_command_line(["socat", "-,ignoreeof", "TCP:127.0.0.1:80"])
    assert cmd.addresses[0].kind == "stdio"
    assert cmd.addresses[0].options[0].canonical == "ignoreeof"


def test_leading_options():
    cmd = parse_command_line(["socat", "-d", "-dd", "-s", "-T", "10", "-lf", "/var/log/s.log", "-lpname", "-b8192",
                              "-u", "-L", "/run/lock", "-v", "-4", "TCP-L:80", "TCP:10.0.0.1:80"])
    assert cmd.sloppy and cmd.total_timeout == "10"
    assert {"d", "s", "T", "lf", "lp", "b", "u", "L", "v", "4"} <= cmd.flags
    assert cmd.dump_options == ("-v",)
    assert len(cmd.addresses) == 2


def test_command_line_string_is_shell_split():
    cmd = parse_command_line("/usr/bin/socat -d 'TCP-LISTEN:80,range=10.0.0.0/8' \"EXEC:cat file\"")
    assert cmd.addresses[0].option("range").value == "10.0.0.0/8"
    assert cmd.addresses[1].params == ("cat file",)


def test_version_and_help_need_no_addresses():
    assert parse_command_line(["socat", "-V"]).info_only
    assert parse_command_line(["socat", "-hhh"]).info_only


@pytest.mark.parametrize("argv, problem", [
    (["socat", "TCP-L:80"], "exactly 2 addresses"),
    (["socat", "TCP-L:80", "-", "-"], "exactly 2 addresses"),
    (["socat", "-Q", "TCP-L:80", "-"], "unknown option '-Q'"),
    (["socat", "-uv", "TCP-L:80", "-"], "do not merge"),
    (["socat", "-T"], "needs a value"),
    (["socat", "TCP-L:80", "EXEC:\"echo"], "unclosed quote"),
    (["socat", "TCP6:[::1:80", "-"], "unclosed bracket"),
    (["socat", "-", "SYSTEM:a!!b!!c"], "more than one '!!'"),
    ([], "empty command line"),
])
def test_bad_syntax_raises_input_error(argv, problem):
    with pytest.raises(InputError) as err:
        parse_command_line(argv)
    assert problem in str(err.value)


# -- audit -----------------------------------------------------------------------------------------

def test_clean_restricted_relay_has_no_findings():
    cmd = parse_command_line(["socat", "TCP-LISTEN:8443,bind=127.0.0.1,fork,max-children=10,range=127.0.0.0/8,"
                              "su=nobody", "TCP:127.0.0.1:80"])
    assert audit_command(cmd, uid=0, environ={"PATH": "/usr/bin"}) == []


def test_no_source_restriction_and_unbounded_fork():
    cmd = parse_command_line(["socat", "TCP-LISTEN:80,fork,reuseaddr", "TCP:10.0.0.5:443"])
    findings = audit_command(cmd)
    assert ids(findings) == ["audit.no_source_restriction", "audit.unbounded_fork"]
    assert one(findings, "audit.unbounded_fork").token == "fork"
    assert one(findings, "audit.no_source_restriction").severity is Severity.MEDIUM


def test_tcpwrap_counts_as_source_restriction():
    cmd = parse_command_line(["socat", "TCP-LISTEN:80,tcpwrap=socat,fork,max-children=4", "-"])
    assert audit_command(cmd) == []


def test_loopback_listener_without_range_is_low():
    cmd = parse_command_line(["socat", "TCP-LISTEN:80,bind=127.0.0.1", "-"])
    assert one(audit_command(cmd), "audit.no_source_restriction").severity is Severity.LOW


@pytest.mark.parametrize("address", ["EXEC:/bin/sh", "SYSTEM:'cat /etc/passwd'", "exec:\"sh -c 'id,whoami'\""])
def test_exec_address_behind_listener_is_critical(address):
    cmd = parse_command_line(["socat", "TCP-LISTEN:4444,range=10.0.0.0/8", address])
    finding = one(audit_command(cmd), "audit.exec_address")
    assert finding.severity is Severity.CRITICAL
    assert finding.token == address


def test_exec_without_network_is_high():
    cmd = parse_command_line(["socat", "-", "EXEC:cat"])
    assert one(audit_command(cmd), "audit.exec_address").severity is Severity.HIGH


def test_sloppy_mode_with_misspelled_range():
    cmd = parse_command_line(["socat", "-s", "TCP-LISTEN:80,rnage=10.0.0.0/8", "-"])
    findings = audit_command(cmd)
    sloppy = one(findings, "audit.sloppy_mode")
    assert sloppy.token == "rnage=10.0.0.0/8" and "range" in sloppy.fix
    assert "audit.no_source_restriction" in ids(findings)


def test_unknown_option_without_sloppy_is_refused():
    cmd = parse_command_line(["socat", "TCP-LISTEN:80,rnage=10.0.0.0/8", "-"])
    finding = one(audit_command(cmd), "audit.invalid_option")
    assert "refuses to start" in finding.message and finding.severity is Severity.HIGH


def test_option_not_for_this_address_type():
    cmd = parse_command_line(["socat", "TCP:10.0.0.1:80,range=10.0.0.0/8", "-"])
    assert "not supported by TCP-CONNECT" in one(audit_command(cmd), "audit.invalid_option").message
    cmd = parse_command_line(["socat", "-s", "STDOUT,fork", "-"])
    assert one(audit_command(cmd), "audit.sloppy_mode").token == "fork"
    cmd = parse_command_line(["socat", "-g", "STDOUT,fork", "-"])
    assert audit_command(cmd) == []


def test_process_and_appl_options_fit_every_address():
    cmd = parse_command_line(["socat", "STDOUT,crnl,setsid,su=nobody,lockfile=/tmp/x", "-"])
    assert audit_command(cmd) == []


def test_min_proto_version_is_unknown_in_1744():
    cmd = parse_command_line(["socat", "OPENSSL-LISTEN:443,cert=/c.pem,cafile=/ca.pem,min-proto-version=TLS1.2,"
                              "range=10.0.0.0/8", "TCP:10.0.0.5:80"])
    assert one(audit_command(cmd), "audit.invalid_option").token == "min-proto-version=TLS1.2"


def test_unknown_address_and_wrong_parameter_count():
    cmd = parse_command_line(["socat", "TCP-LISTN:80", "TCP:10.0.0.1"])
    findings = [f for f in audit_command(cmd) if f.id == "audit.invalid_address"]
    assert [f.token for f in findings] == ["TCP-LISTN", "TCP:10.0.0.1"]
    assert "did you mean TCP-LISTEN" in findings[0].fix


@pytest.mark.parametrize("argv, severity", [
    (["socat", "OPENSSL-LISTEN:443,cert=/c.pem,verify=0,range=10.0.0.0/8", "TCP:10.0.0.5:80"], Severity.HIGH),
    (["socat", "SSL-L:443,cert=/c.pem,range=10.0.0.0/8", "TCP:10.0.0.5:80"], Severity.MEDIUM),
    (["socat", "-", "OPENSSL:example.org:443,verify=0"], Severity.HIGH),
])
def test_tls_no_verify(argv, severity):
    assert one(audit_command(parse_command_line(argv)), "audit.tls_no_verify").severity is severity


def test_tls_listener_with_cafile_is_fine():
    cmd = parse_command_line(["socat", "OPENSSL-LISTEN:443,cert=/c.pem,cafile=/ca.pem,range=10.0.0.0/8",
                              "TCP:10.0.0.5:80"])
    assert audit_command(cmd) == []


def test_runs_as_root():
    argv = ["socat", "TCP-LISTEN:80,range=10.0.0.0/8", "TCP:10.0.0.5:80"]
    assert one(audit_command(parse_command_line(argv), uid=0), "audit.runs_as_root").severity is Severity.HIGH
    assert audit_command(parse_command_line(argv), uid=1000) == []
    dropped = parse_command_line(["socat", "TCP-LISTEN:80,range=10.0.0.0/8,su=nobody", "TCP:10.0.0.5:80"])
    assert audit_command(dropped, uid=0) == []
    setuid_only = parse_command_line(["socat", "TCP-LISTEN:80,range=10.0.0.0/8,setuid=65534", "TCP:10.0.0.5:80"])
    finding = one(audit_command(setuid_only, uid=0), "audit.runs_as_root")
    assert finding.severity is Severity.LOW and "group 0" in finding.message


def test_risky_environment():
    cmd = parse_command_line(["socat", "TCP-LISTEN:80,range=10.0.0.0/8", "TCP:10.0.0.5:80"])
    environ = {"LD_PRELOAD": "/tmp/x.so", "SSL_CERT_FILE": "/tmp/evil.pem", "SOCAT_DEFAULT_LISTEN_IP": "0.0.0.0",
               "SOCAT_FORK_WAIT": "1", "SOCAT_PID": "12", "SOCAT_PEERADDR": "1.2.3.4", "PATH": "/usr/bin",
               "SSL_CERT_DIR": "/etc/ssl/certs"}
    found = {f.token.split("=")[0]: f.severity for f in audit_command(cmd, environ=environ)}
    assert found == {"LD_PRELOAD": Severity.HIGH, "SSL_CERT_FILE": Severity.MEDIUM,
                     "SOCAT_DEFAULT_LISTEN_IP": Severity.MEDIUM, "SOCAT_FORK_WAIT": Severity.LOW}


def test_vulnerable_version_table():
    assert [f.message.split()[5].rstrip(":") for f in version_findings("1.7.4.4")] == ["CVE-2024-54661"]
    assert version_findings("1.8.0.2") == []
    old = {f.message.split()[5].rstrip(":") for f in version_findings("1.7.2.1")}
    assert {"CVE-2013-3571", "CVE-2014-0019", "CVE-2015-1379", "CVE-2024-54661"} == old


def test_installed_socat_is_the_one_the_tables_describe():
    out = subprocess.run([require("socat"), "-V"], capture_output=True, text=True, check=True).stdout
    assert f"socat version {SOCAT_VERSION} " in out


def test_extras_udp_fork_duplicates_and_dumps():
    cmd = parse_command_line(["socat", "-x", "UDP-LISTEN:53,fork,max-children=5,range=10.0.0.0/8,range=0.0.0.0/0",
                              "UDP:10.0.0.5:53"])
    assert ids(audit_command(cmd)) == ["audit.duplicate_option", "audit.traffic_dump", "audit.udp_fork_no_timeout"]


POLICY = """\
version: 1
listeners:
  - name: web-relay
    port: 8443
    address: 10.1.1.1
    allow_sources: [192.0.2.0/24, "2001:db8::/32"]
    allow_backends: ["10.0.0.5:443"]
    action: block
defaults:
  unknown_listener: alert
"""


def test_policy_mismatch_findings():
    policy = parse_policy(POLICY)
    cmd = parse_command_line(["socat", "TCP-LISTEN:8443,fork,max-children=5,range=192.0.0.0/16",
                              "TCP:10.0.0.6:443"])
    findings = audit_command(cmd, policy=policy)
    assert ids(findings) == ["audit.all_interfaces", "audit.policy_mismatch", "audit.policy_mismatch"]
    tokens = {f.token for f in findings if f.id == "audit.policy_mismatch"}
    assert tokens == {"range=192.0.0.0/16", "TCP:10.0.0.6:443"}
    assert all(f.listener.name == "web-relay" for f in findings)


def test_policy_conforming_command_has_no_findings():
    policy = parse_policy(POLICY)
    cmd = parse_command_line(["socat", "TCP-LISTEN:8443,bind=10.1.1.1,fork,max-children=5,range=192.0.2.128/25",
                              "TCP:10.0.0.5:443"])
    assert audit_command(cmd, policy=policy) == []


def test_policy_other_bind_unknown_port_and_hostname_backend():
    policy = parse_policy(POLICY)
    wrong_bind = parse_command_line(["socat", "TCP-LISTEN:8443,bind=10.1.1.2,range=192.0.2.0/24", "TCP:10.0.0.5:443"])
    assert one(audit_command(wrong_bind, policy=policy), "audit.policy_mismatch").token == "bind=10.1.1.2"
    unknown = parse_command_line(["socat", "TCP-LISTEN:9999,range=192.0.2.0/24", "TCP:10.0.0.5:443"])
    assert "not declared" in one(audit_command(unknown, policy=policy), "audit.policy_mismatch").message
    named = parse_command_line(["socat", "TCP-LISTEN:8443,bind=10.1.1.1,range=192.0.2.0/24", "TCP:db.internal:443"])
    assert one(audit_command(named, policy=policy), "audit.policy_mismatch").severity is Severity.LOW
    no_range = parse_command_line(["socat", "TCP-LISTEN:8443,bind=10.1.1.1", "TCP:10.0.0.5:443"])
    assert one(audit_command(no_range, policy=policy), "audit.no_source_restriction").severity is Severity.HIGH


def test_finding_to_alert():
    cmd = parse_command_line(["socat", "TCP-LISTEN:80,range=10.0.0.0/8", "EXEC:/bin/sh"])
    finding = one(audit_command(cmd, pid=42), "audit.exec_address")
    alert = finding_to_alert(finding, 123, None)
    assert (alert.rule_id, alert.ruleset, alert.token, alert.timestamp_ns) == (
        "audit.exec_address", "audit", "EXEC:/bin/sh", 123)
    assert alert.rule_name == FINDINGS["audit.exec_address"] and alert.fix
    assert finding.to_dict()["pid"] == 42


def test_tcpwrap_without_tables_fails_open():
    cmd = parse_command_line(["socat", "TCP-LISTEN:80,tcpwrap=socat,fork,max-children=4", "-"])
    finding = one(audit_command(cmd, file_exists=lambda path: False), "audit.tcpwrap_fails_open")
    assert finding.token == "tcpwrap=socat" and "/etc/hosts.deny" in finding.message
    assert audit_command(cmd, file_exists=lambda path: path == "/etc/hosts.deny") == []
    custom = parse_command_line(["socat", "TCP-LISTEN:80,tcpwrap,tcpwrap-etc=/srv/wrap,max-children=4", "-"])
    seen = []
    audit_command(custom, file_exists=lambda path: seen.append(path) or False)
    assert seen == ["/srv/wrap/hosts.allow", "/srv/wrap/hosts.deny"]


def test_policy_alert_renders_as_ecs():
    from monitor.ecs import HostInfo, render
    from monitor.events import Action, ConnectionEvent, Listener
    from monitor.decide import DecideConfig, Decider
    from monitor.policy import PolicyEngine

    policy = parse_policy(POLICY)
    ev = ConnectionEvent(Action.ACCEPTED, 1_700_000_000 * 10**9, "203.0.113.9", 40000, "10.1.1.1", 8443,
                         listener=Listener("10.1.1.1", 8443))
    [alert] = Decider(DecideConfig(), default_ttl_s=600).decide(PolicyEngine(policy).check(ev))
    doc = render(alert, HostInfo("h", "0" * 32))
    assert doc["rule"]["id"] == "policy.source_denied" and doc["rule"]["ruleset"] == "policy"
    assert doc["source"]["ip"] == "203.0.113.9" and doc["socat"]["block"] == {"target": "203.0.113.9", "ttl_s": 600}
    assert doc["socat"]["listener"]["name"] == "web-relay" and doc["socat"]["trigger_event_ids"] == [ev.id]


def test_proxy_addresses_connect_to_the_proxy_server():
    socks = parse_command_line(["socat", "-", "SOCKS4A:10.0.0.9:example.org:443,socksport=9050"]).addresses[1]
    assert socks.connect_target == ("10.0.0.9", 9050)
    proxy = parse_command_line(["socat", "-", "PROXY:10.0.0.8:example.org:443"]).addresses[1]
    assert proxy.connect_target == ("10.0.0.8", 8080)


# -- gaps found on real-world command lines (issue 22) ----------------------------------------------

@pytest.mark.parametrize("address", ["UDP-RECV:8125", "UDP4-RECV:8125", "UDP6-RECV:8125", "IP-RECV:47",
                                     "IP4-RECV:47", "IP6-RECV:47", "UDP-RECVFROM:8125", "IP4-RECVFROM:6"])
def test_receiving_ip_addresses_need_a_range(address):
    cmd = parse_command_line(["socat", "-u", address, "OPEN:/dev/null"])
    assert one(audit_command(cmd), "audit.no_source_restriction").token == address
    restricted = parse_command_line(["socat", "-u", address + ",range=10.0.0.0/8", "OPEN:/dev/null"])
    assert "audit.no_source_restriction" not in ids(audit_command(restricted))


def test_udp_recv_from_the_issue_and_unix_recv_is_not_ip():
    cmd = parse_command_line("socat -s -u UDP-RECV:8125 UNIX-SENDTO:/var/run/app.sock")
    assert ids(audit_command(cmd)) == ["audit.no_source_restriction"]
    assert audit_command(parse_command_line("socat -u UNIX-RECV:/run/in.sock OPEN:/dev/null")) == []


@pytest.mark.parametrize("value", ["127.0.0.1/0", "0.0.0.0/0", "10.0.0.0:0.0.0.0", "[::]/0", "::/0", "[fd00::1]/0"])
def test_a_slash_zero_range_restricts_nothing(value):
    listener = "TCP6-LISTEN:8080" if ":" in value.split("/")[0] and "." not in value else "TCP4-LISTEN:8080"
    cmd = parse_command_line(["socat", f"{listener},range={value}", "TCP:127.0.0.1:80"])
    finding = one(audit_command(cmd), "audit.no_source_restriction")
    assert finding.token == f"range={value}" and "restricts nothing" in finding.message


def test_raw_ip_parameter_is_a_protocol_not_a_port():
    cmd = parse_command_line(["socat", "IP4-RECVFROM:6,range=127.0.0.1/0,fork,max-children=2", "-"])
    address = cmd.addresses[0]
    assert (address.protocol, address.listen_port) == (6, None)
    finding = one(audit_command(cmd), "audit.no_source_restriction")
    assert "IP protocol 6" in finding.message and "port" not in finding.message and finding.listener is None


@pytest.mark.parametrize("listener, words", [
    ("UNIX-LISTEN:/run/relay.sock", "/run/relay.sock"), ("ABSTRACT-LISTEN:relay", "network namespace"),
    ("VSOCK-LISTEN:1234", "every guest VM"), ("UNIX-RECVFROM:/run/relay.sock", "/run/relay.sock"),
])
def test_fork_without_max_children_beyond_ip_listeners(listener, words):
    cmd = parse_command_line(["socat", f"{listener},fork", "TCP:127.0.0.1:80"])
    finding = one(audit_command(cmd), "audit.unbounded_fork")
    assert finding.token == "fork" and words in finding.message
    bounded = parse_command_line(["socat", f"{listener},fork,max-children=8", "TCP:127.0.0.1:80"])
    assert audit_command(bounded) == []


def test_fork_on_a_connecting_address():
    cmd = parse_command_line("socat openssl:host:443,fork,forever,verify=0 tcp6:[::1]:22")
    findings = audit_command(cmd, uid=0)
    assert ids(findings) == ["audit.runs_as_root", "audit.tls_no_verify", "audit.unbounded_fork"]
    assert "connects again" in one(findings, "audit.unbounded_fork").message
    bounded = parse_command_line("socat openssl:host:443,fork,forever,max-children=4 tcp6:[::1]:22")
    assert "audit.unbounded_fork" not in ids(audit_command(bounded))


def test_fork_that_socat_ignores_is_not_unbounded():
    assert audit_command(parse_command_line(["socat", "-g", "STDOUT,fork", "-"])) == []


@pytest.mark.parametrize("argv, ip", [
    (["TCP6-LISTEN:8080"], "::"), (["UDP6-LISTEN:5353"], "::"), (["TCP-LISTEN:8080"], "0.0.0.0"),
    (["-6", "TCP-LISTEN:8080"], "::"), (["TCP-LISTEN:8080,pf=ip6"], "::"), (["TCP6-LISTEN:8080,bind=[::1]"], "::1"),
])
def test_unbound_listener_address_per_family(argv, ip):
    cmd = parse_command_line(["socat", *argv, "TCP:127.0.0.1:80"])
    assert one(audit_command(cmd), "audit.no_source_restriction").listener.ip == ip


def test_socat2_chain_is_one_invalid_address_without_duplicates():
    cmd = parse_command_line(["socat", "TCP-LISTEN:8443,range=127.0.0.0/8",
                              "OPENSSL,verify=0,commonname=a|TCP:example.org:443,commonname=b"])
    findings = audit_command(cmd)
    assert ids(findings) == ["audit.invalid_address", "audit.tls_no_verify"]
    assert "socat 2 address chain" in one(findings, "audit.invalid_address").message
    socks = parse_command_line(["socat", "-", "SOCKS4:www.example.org:80|TCP:socks.example.org:1080"])
    assert socks.addresses[1].chained and ids(audit_command(socks)) == ["audit.invalid_address"]
    piped = parse_command_line(["socat", "-", "SYSTEM:ps aux|grep tcp"])
    assert not piped.addresses[1].chained


READLINE_LINE = "socat READLINE,history=/tmp/h,noprompt TCP:127.0.0.1:80"


def test_build_dependent_keyword_with_the_builtin_table_is_accepted():
    findings = audit_command(parse_command_line(READLINE_LINE))
    assert findings == []
    assert address_feature("readline") == "WITH_READLINE" and BUILTIN.address("READLINE") == "readline"


def test_build_dependent_keyword_judged_by_the_installed_binary():
    build = binary_build(require("socat"))
    assert build.path is not None and build.lacks("WITH_READLINE") and build.keywords.address("readline") is None
    findings = audit_command(parse_command_line(READLINE_LINE, build.keywords), build=build)
    invalid = one(findings, "audit.invalid_address")
    assert f"socat {SOCAT_VERSION} ({build.path})" in invalid.message and "WITH_READLINE" in invalid.message
    assert all(f.socat == build.label for f in findings)
    assert ids(findings) == ["audit.invalid_address"]
    option = parse_command_line(["socat", "STDIO,prompt=x", "-"], build.keywords)
    assert "built without WITH_READLINE" in one(audit_command(option, build=build), "audit.invalid_option").message


def test_build_dependent_keyword_on_a_build_with_readline():
    build = SocatBuild(keywords=BUILTIN, version="1.7.4.4", path="/opt/socat/bin/socat",
                       features={"WITH_READLINE": True})
    findings = audit_command(parse_command_line(READLINE_LINE, build.keywords), build=build)
    assert findings == []


def test_version_and_help_text_readers():
    version, features = parse_version("socat version 1.8.0.1 on Jan  1 2025\nfeatures:\n  #define WITH_STDIO 1\n"
                                      "  #define WITH_READLINE 1\n  #undef WITH_FIPS\n  #define WITH_MSGLEVEL 0\n")
    assert version == "1.8.0.1" and features["WITH_READLINE"] and features["WITH_FIPS"] is False
    table = parse_help("   bi-address:\n      readline[,<opts>]\tgroups=FD,READLINE,TERMIOS\n   opts:\n"
                       "      history-file\tgroups=READLINE\tphase=LATE\ttype=STRING\n"
                       "      history is an alias for history-file\n")
    assert table.address("ReadLine") == "readline" and table.option("history") == "history-file"


def test_a_binary_others_may_write_is_not_run(tmp_path):
    fake = tmp_path / "socat"
    fake.write_text("#!/bin/sh\necho socat version 9.9.9.9\n")
    fake.chmod(0o777)
    build = binary_build(str(fake))
    assert build.path is None and "not run: writable by group or others" in build.label
    assert build.keywords is BUILTIN


def test_a_drop_listener_is_source_restricted_in_the_kernel():
    policy = parse_policy(POLICY.replace("action: block", "action: drop"))
    assert policy.listener(8443).drops
    no_range = parse_command_line(["socat", "TCP-LISTEN:8443,bind=10.1.1.1", "TCP:10.0.0.5:443"])
    finding = one(audit_command(no_range, policy=policy), "audit.no_source_restriction")
    assert finding.severity is Severity.LOW
    assert "restricts its sources in the kernel" in finding.message and "already applied" in finding.message
