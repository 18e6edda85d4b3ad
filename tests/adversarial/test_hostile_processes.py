"""Hostile local processes: what a process named socat can make the agent print or serve.

Real processes, a real agent: the argv a process chooses reaches the console
(`run --follow`), the log and `audit` escaped, never as raw control
characters; the metrics endpoint survives clients that connect and say nothing.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

from monitor.metrics import MAX_CLIENTS, REQUEST_TIMEOUT_S, MetricsServer, Sample
from tests.lab import PYTHON, AgentProcess, connect, free_port, require, socat_monitor, start_echo, wait_for

TITLE = "\x1b]0;pwned\x07"      # retitles a terminal
RESET = "\x1bc"                 # resets it


def test_hostile_argv_is_escaped_on_the_console_and_in_the_log(tmp_path, procs):
    require("socat")
    agent = AgentProcess(tmp_path, "--follow", "--no-enforce")
    try:
        agent.wait_ready()
        hostile = f"TCP-LISTEN:{free_port()},bind=127.0.0.1,{TITLE}=1"
        relay = procs.start(["socat", "-u", hostile, f"OPEN:/dev/null{RESET}"])
        relay.wait(10)   # socat refuses the unknown option at once
        wait_for(lambda: any(d.get("rule", {}).get("id") == "audit.invalid_option" for d in agent.documents()),
                 timeout=20)
    finally:
        code, console = agent.stop()
    log = agent.text_log()
    for text in (console, log):
        assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07" in console
    assert code in (0, 1)


def test_audit_escapes_what_it_prints():
    done = socat_monitor("audit", "--cmdline", f"socat TCP-L:80,fork,{TITLE}=1 {RESET}")
    assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout + done.stderr
    assert "\\x1b]0;pwned\\x07" in done.stdout


def test_metrics_endpoint_outlives_silent_clients():
    port = free_port()
    server = MetricsServer(f"127.0.0.1:{port}", lambda: [Sample("events_total", "counter", "events", 7)])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CLIENTS + 4)]
    try:
        wait_for(lambda: server.server.refused >= 4, timeout=5)
        time.sleep(REQUEST_TIMEOUT_S + 1)   # the silent ones are dropped by the request timeout
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "socat_monitor_events_total 7.0" in body
        assert "socat_monitor_metrics_refused_total 4.0" in body
    finally:
        for sock in silent:
            sock.close()
        server.close()


def named_socat(tmp_path) -> str:
    """A Python interpreter whose process name (comm) is `socat`: the agent watches it like a relay."""
    link = tmp_path / "bin" / "socat"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(PYTHON)
    return str(link)


BIND_FLOOD = """
import socket, sys
first, count = int(sys.argv[1]), int(sys.argv[2])
for port in range(first, first + count):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        pass
    s.close()
"""

THREAD_EXECS = """
import os, sys, threading
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        threading.Thread(target=os.execv, args=("/usr/bin/socat", ["socat", "-V"])).start()
        threading.Event().wait(5)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_bind_flood_and_thread_execs_fill_no_kernel_table(tmp_path, procs):
    """6,000 binds and 300 execs from non-leader threads by processes named socat: the agent keeps
    capturing a real relay's connections, and every exec with its argv."""
    require("socat")
    hostile = named_socat(tmp_path)
    agent = AgentProcess(tmp_path, "--no-enforce")
    try:
        agent.wait_ready()
        flood = subprocess.run([hostile, "-c", BIND_FLOOD, "20000", "6000"], timeout=120)
        assert flood.returncode == 0
        execs = subprocess.run([hostile, "-c", THREAD_EXECS, "300"], timeout=300)
        assert execs.returncode == 0
        port = free_port()
        backend = free_port()
        start_echo(procs, backend)
        relay = procs.socat(f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"TCP:127.0.0.1:{backend}", port=port)
        _, client_port = connect(port)

        def accepted():
            return [d for d in agent.documents() if d["event"].get("action") == "connection_accepted"
                    and d["source"]["port"] == client_port]
        wait_for(accepted, timeout=20)
        versions = wait_for(lambda: [d for d in agent.documents() if d["event"].get("action") == "process_started"
                                     and d["process"].get("args") == ["socat", "-V"]], timeout=20)
        assert len(versions) >= 300   # each with the argv the kernel copied, though socat -V is gone at once
        assert agent.proc.poll() is None, agent.text_log()[-2000:]
        procs.stop(relay)
    finally:
        code, _ = agent.stop()
    assert code in (0, 1), agent.text_log()[-2000:]


RENAMED_LISTENER = """
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"socat", 0, 0, 0)   # PR_SET_NAME after exec: /proc cmdline stays huge
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
for _ in range(3):
    conn, _ = s.accept()
    conn.close()
"""


def test_renamed_process_with_a_huge_argv_gives_small_events(tmp_path, procs):
    """A process that names itself socat after exec, with a 480 KB argv: its events carry at most
    8 KiB of command line, not the whole argv in every document."""
    agent = AgentProcess(tmp_path, "--no-enforce")
    try:
        agent.wait_ready()
        port = free_port()
        ballast = ["x" * 120_000] * 4
        proc = procs.start([PYTHON, "-c", RENAMED_LISTENER, str(port), *ballast], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(3):
            connect(port, payload=b"")
        proc.wait(10)
        accepted = wait_for(lambda: [d for d in agent.documents()
                                     if d["event"].get("action") == "connection_accepted"
                                     and d["destination"]["port"] == port], timeout=20)
    finally:
        agent.stop()
    for doc in accepted:
        assert len(doc["process"].get("command_line", "")) <= 8192 + 64
    lines = [line for path in agent.output.glob("events-*.ndjson") for line in path.read_bytes().splitlines()]
    assert max(map(len, lines)) < 32_000


PAUSE = "#include <unistd.h>\nint main(void) { pause(); return 0; }\n"


def paused_socat(tmp_path) -> str:
    """A program named socat that only waits: its argv stays readable in /proc for as long as it runs."""
    source = tmp_path / "pause.c"
    source.write_text(PAUSE)
    binary = tmp_path / "paused" / "socat"
    binary.parent.mkdir()
    subprocess.run([require("gcc"), "-o", str(binary), str(source)], check=True, timeout=60)
    return str(binary)


def test_thousands_of_bad_options_give_bounded_findings_fast(tmp_path, procs):
    """A process named socat with 4,000 unknown options: a handful of alerts and a count, in well under
    a second of audit, and its EXEC: is still reported behind them."""
    fake = paused_socat(tmp_path)
    agent = AgentProcess(tmp_path, "--no-enforce")
    try:
        agent.wait_ready()
        bogus = ",".join(f"bogus{i}=1" for i in range(4000))
        started = time.monotonic()
        procs.start([fake, f"TCP-LISTEN:{free_port()},bind=127.0.0.1,{bogus}", "EXEC:/bin/true"])
        truncated = wait_for(lambda: [d for d in agent.documents()
                                      if d.get("rule", {}).get("id") == "audit.findings_truncated"], timeout=20)
        elapsed = time.monotonic() - started
    finally:
        agent.stop()
    alerts = [d for d in agent.documents() if d["event"]["kind"] == "alert"]
    invalid = [d for d in alerts if d["rule"]["id"] == "audit.invalid_option"]
    assert len(invalid) == 5 and "audit.invalid_option x3995" in truncated[0]["message"]
    assert any(d["rule"]["id"] == "audit.exec_address" for d in alerts)
    assert len(alerts) < 20 and elapsed < 15
