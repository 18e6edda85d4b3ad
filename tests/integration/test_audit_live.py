"""`socat-monitor audit` against real socat relays started here (loopback, free ports).

Other tests may run socat processes at the same time: only the pids started
here are checked, and the findings for them must be exactly the expected ones.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

from monitor.socat.keywords import SOCAT_VERSION
from tests.lab import free_port, require, socat_monitor, wait_for, wait_listening


def _findings(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _by_pid(findings: list[dict], pid: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for finding in findings:
        if finding["pid"] == pid:
            out.setdefault(finding["id"], []).append(finding)
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return kids


def test_audit_finds_risky_relays_started_here(procs, tmp_path):
    require("socat")
    plain, sloppy, backend = free_port(), free_port(), free_port()
    relay = procs.socat(f"TCP-LISTEN:{plain},bind=127.0.0.1,fork,reuseaddr", f"TCP:127.0.0.1:{backend}", port=plain)
    risky_env = dict(os.environ, SOCAT_DEFAULT_LISTEN_IP="127.0.0.1", SSL_CERT_FILE=str(tmp_path / "ca.pem"))
    shell = procs.start([require("socat"), "-s", f"TCP-LISTEN:{sloppy},bind=127.0.0.1,rnage=127.0.0.0/8,fork,"
                         "max-children=4", "EXEC:cat"], env=risky_env)
    wait_listening(sloppy)
    with socket.create_connection(("127.0.0.1", sloppy), timeout=5) as client:   # makes a fork child
        client.sendall(b"hello")
        assert client.recv(5) == b"hello"
        children = wait_for(lambda: _children(shell.pid), timeout=5)
        result = socat_monitor("audit", "--format", "json")
    assert result.returncode == 1, result.stderr
    findings = _findings(result)

    assert set(_by_pid(findings, relay.pid)) == {"audit.no_source_restriction", "audit.unbounded_fork",
                                                 "audit.runs_as_root"}
    assert _by_pid(findings, relay.pid)["audit.unbounded_fork"][0]["token"] == "fork"

    found = _by_pid(findings, shell.pid)
    assert set(found) == {"audit.sloppy_mode", "audit.exec_address", "audit.no_source_restriction",
                          "audit.runs_as_root", "audit.risky_environment"}
    assert found["audit.sloppy_mode"][0]["token"] == "rnage=127.0.0.0/8"
    assert found["audit.exec_address"][0]["severity"] == "critical"
    assert sorted(f["token"].split("=")[0] for f in found["audit.risky_environment"]) == [
        "SOCAT_DEFAULT_LISTEN_IP", "SSL_CERT_FILE"]
    for finding in findings:
        assert {"id", "severity", "pid", "token", "message", "fix"} <= set(finding)
    assert not any(f["pid"] in children for f in findings), "fork children are reported with their parent"
    assert any(f["id"] == "audit.vulnerable_version" and f["pid"] is None for f in findings)


def test_audit_pid_with_policy_and_fail_on(procs, tmp_path):
    port, undeclared, backend = free_port(), free_port(), free_port()
    relay = procs.socat(f"TCP-LISTEN:{port},bind=127.0.0.1,fork,max-children=2,range=127.0.0.0/8,su=nobody",
                        f"TCP:127.0.0.1:{backend}", port=port)
    other = procs.socat(f"TCP-LISTEN:{undeclared},bind=127.0.0.1,range=127.0.0.1/32,su=nobody",
                        f"TCP:127.0.0.1:{backend}", port=undeclared)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nlisteners:\n"
                      f"  - name: relay\n    port: {port}\n    address: 127.0.0.2\n"
                      "    allow_sources: [127.0.0.1]\n    allow_backends: [\"127.0.0.1:1\"]\n")

    result = socat_monitor("audit", "--pid", str(relay.pid), "--policy", str(policy), "--format", "json",
                           "--ignore", "audit.vulnerable_version")
    assert result.returncode == 1, result.stderr
    found = {(f["id"], f["token"]) for f in _findings(result)}
    assert found == {
        ("audit.policy_mismatch", "bind=127.0.0.1"),
        ("audit.policy_mismatch", "range=127.0.0.0/8"),
        ("audit.policy_mismatch", f"TCP:127.0.0.1:{backend}"),
    }

    result = socat_monitor("audit", "--pid", str(other.pid), "--policy", str(policy), "--format", "json",
                           "--ignore", "audit.vulnerable_version")
    [finding] = _findings(result)
    assert finding["id"] == "audit.policy_mismatch" and "not declared" in finding["message"]
    assert finding["severity"] == "medium"

    quiet = socat_monitor("audit", "--pid", str(other.pid), "--policy", str(policy), "--fail-on", "high",
                          "--ignore", "audit.vulnerable_version")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr

    gone = socat_monitor("audit", "--pid", "0")
    assert gone.returncode == 2 and "no such process" in gone.stderr and "Traceback" not in gone.stderr
    not_socat = socat_monitor("audit", "--pid", str(os.getpid()))
    assert not_socat.returncode == 2 and "not a socat process" in not_socat.stderr


def test_audit_cmdline_exit_codes():
    clean = socat_monitor("audit", "--cmdline", "socat TCP-L:80,bind=127.0.0.1,range=127.0.0.1/32 TCP:127.0.0.1:81",
                          "--ignore", "audit.vulnerable_version")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    risky = socat_monitor("audit", "--cmdline", "socat TCP-L:80,fork EXEC:/bin/sh", "--format", "json")
    assert risky.returncode == 1
    assert {"audit.exec_address", "audit.unbounded_fork"} <= {f["id"] for f in _findings(risky)}
    bad = socat_monitor("audit", "--cmdline", "socat 'TCP-L:80")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_policy_suggest_learns_running_relays(procs, tmp_path):
    from monitor.policy import parse_policy

    port, backend = free_port(), free_port()
    procs.socat(f"TCP-LISTEN:{port},bind=127.0.0.1,range=127.0.0.0/8,fork,max-children=3",
                f"TCP:127.0.0.1:{backend}", port=port)
    out = tmp_path / "suggested.yaml"
    result = socat_monitor("policy", "suggest", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert socat_monitor("policy", "check", str(out)).returncode == 0
    entry = parse_policy(out.read_text()).listener(port)
    assert (entry.name, entry.address) == (f"tcp-{port}", "127.0.0.1")
    assert [str(n) for n in entry.allow_sources] == ["127.0.0.0/8"]
    assert [b.text for b in entry.allow_backends] == [f"127.0.0.1:{backend}"]
    clean = socat_monitor("audit", "--pid", str(procs.procs[-1].pid), "--policy", str(out), "--format", "json",
                          "--ignore", "audit.vulnerable_version", "--ignore", "audit.runs_as_root")
    assert clean.returncode == 0, clean.stdout


def _exe_is_socat(pid: int) -> bool:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "socat"
    except OSError:
        return False


def test_audit_judges_each_process_by_its_own_socat(procs, tmp_path):
    socat = require("socat")
    udp, tcp, backend = free_port(), free_port(), free_port()
    receiver = procs.start([socat, "-u", f"UDP4-RECV:{udp},bind=127.0.0.1", "OPEN:/dev/null"])
    sock = tmp_path / "relay.sock"
    unix = procs.start([socat, f"UNIX-LISTEN:{sock},fork", f"TCP:127.0.0.1:{backend}"])
    copy = tmp_path / "bin" / "socat"      # a socat others may overwrite: the audit must not run it
    copy.parent.mkdir()
    shutil.copy(socat, copy)
    copy.chmod(0o777)
    writable = procs.start([str(copy), f"TCP-LISTEN:{tcp},bind=127.0.0.1,range=127.0.0.1/32",
                            f"TCP:127.0.0.1:{backend}"])
    contained = procs.start([require("unshare"), "--mount", socat, "-u",   # as if in a container
                             f"UDP4-RECV:{free_port()},bind=127.0.0.1,range=127.0.0.1/32", "OPEN:/dev/null"])
    wait_listening(tcp)
    wait_for(lambda: sock.exists() and all(_exe_is_socat(p.pid) for p in (receiver, unix, writable, contained)),
             timeout=10)
    installed = f"socat {SOCAT_VERSION} ({os.path.realpath(socat)})"

    def audit(pid: int) -> dict[str, list[dict]]:
        result = socat_monitor("audit", "--pid", str(pid), "--format", "json")
        assert result.returncode == 1, result.stdout + result.stderr
        return _by_pid(_findings(result), pid) | {"version": [f for f in _findings(result) if f["pid"] is None]}

    found = audit(receiver.pid)
    assert set(found) == {"audit.no_source_restriction", "audit.runs_as_root", "version"}
    assert found["audit.no_source_restriction"][0]["token"] == f"UDP4-RECV:{udp},bind=127.0.0.1"
    assert found["audit.no_source_restriction"][0]["severity"] == "low"
    assert {f["socat"] for fs in found.values() for f in fs} == {installed}

    found = audit(unix.pid)
    assert set(found) == {"audit.unbounded_fork", "audit.runs_as_root", "version"}
    assert str(sock) in found["audit.unbounded_fork"][0]["message"]

    found = audit(writable.pid)
    assert set(found) == {"audit.runs_as_root", "version"} and found["version"] == []
    assert "built-in table" in found["audit.runs_as_root"][0]["socat"]
    assert "not run: writable by group or others" in found["audit.runs_as_root"][0]["socat"]

    found = audit(contained.pid)
    assert set(found) == {"audit.runs_as_root", "version"} and found["version"] == []
    assert "not run: it is in another mount namespace" in found["audit.runs_as_root"][0]["socat"]


READLINE_LINE = "socat READLINE,history=/tmp/h,noprompt TCP:127.0.0.1:80"


def test_audit_cmdline_judges_build_dependent_keywords_by_the_named_socat(tmp_path):
    """READLINE: refused by this host's socat (built without readline), accepted by a build with it.

    The build with readline is this socat behind a wrapper that reports WITH_READLINE and the READLINE
    keywords in its -V and -hhh, as socat built with readline prints them."""
    socat, sed = require("socat"), require("sed")
    result = socat_monitor("audit", "--cmdline", READLINE_LINE, "--format", "json")
    assert result.returncode == 1, result.stderr
    [invalid] = [f for f in _findings(result) if f["id"] == "audit.invalid_address"]
    assert invalid["token"] == "READLINE" and "WITH_READLINE" in invalid["message"]
    assert invalid["socat"] == f"socat {SOCAT_VERSION} ({shutil.which('socat')})"

    readline_socat = tmp_path / "socat"
    readline_socat.write_text(
        "#!/bin/sh\n"
        "case \"$1\" in\n"
        f"-V) {socat} -V | {sed} 's/#undef WITH_READLINE/#define WITH_READLINE 1/' ;;\n"
        f"-hhh) {socat} -hhh; printf '   bi-address:\\n      readline[,<opts>]\\tgroups=FD,READLINE,TERMIOS\\n"
        "   opts:\\n      history-file\\tgroups=READLINE\\tphase=LATE\\ttype=FILENAME\\n"
        "      history is an alias for history-file\\n      noprompt\\tgroups=READLINE\\tphase=LATE\\ttype=BOOL\\n' ;;\n"
        "esac\n")
    readline_socat.chmod(0o755)
    accepted = socat_monitor("audit", "--cmdline", READLINE_LINE, "--socat", str(readline_socat), "--format", "json",
                             "--ignore", "audit.vulnerable_version")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr

    wrong = socat_monitor("audit", "--pid", str(os.getpid()), "--socat", socat)
    assert wrong.returncode == 2 and "--socat goes with --cmdline" in wrong.stderr
    missing = socat_monitor("audit", "--cmdline", READLINE_LINE, "--socat", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
