"""`socat-monitor audit`: risky options, environment and version of socat command lines."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from ..errors import EXIT_FINDINGS, EXIT_OK
from ..terminal import safe_text

_SEVERITIES = ["low", "medium", "high", "critical"]


@click.command(name="audit")
@click.option("--cmdline", help='One command line to audit, e.g. --cmdline "socat TCP-L:80,fork TCP:10.0.0.5:80".')
@click.option("--pid", type=int, help="Audit this running socat process (argv, environment, user from /proc), "
              "judged for its own executable (/proc/PID/exe).")
@click.option("--socat", "socat_path", type=click.Path(exists=True, dir_okay=False),
              help="With --cmdline: judge for this socat binary (its -V and -hhh) instead of the socat on PATH.")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check the command lines against this policy (bind address, range=, backends, ports).")
@click.option("--fail-on", type=click.Choice(_SEVERITIES), default="low", show_default=True,
              help="Exit 1 when a finding of at least this severity is reported.")
@click.option("--ignore", "ignored", multiple=True, metavar="ID",
              help="Leave out findings with this id (repeatable), e.g. --ignore audit.vulnerable_version.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one object per finding (id, severity, pid, token, message, fix, command_line).")
def command(cmdline, pid, socat_path, policy_path, fail_on, ignored, fmt) -> None:
    """Audit socat command lines: by default every socat process running now.

    Which address types and options exist depends on how socat was built, so
    each finding names the socat it is for (json: "socat"): a process's own
    executable, for --cmdline the socat on PATH or --socat, or socat's
    built-in table when there is no binary to ask.

    Exit status: 0 no finding at or above --fail-on, 1 findings, 2 bad usage or input.
    """
    from ..events import Severity
    from ..policy import audit_command, audit_process, audit_running, load_policy, parse_command_line
    from ..policy.audit import cve_findings
    from ..socat.build import binary_build, path_build

    if cmdline is not None and pid is not None:
        raise click.UsageError("give --cmdline or --pid, not both")
    if socat_path is not None and cmdline is None:
        raise click.UsageError("--socat goes with --cmdline (a running process is judged by its own executable)")
    policy = load_policy(policy_path) if policy_path else None
    if cmdline is not None:
        build = binary_build(socat_path) if socat_path else path_build()
        findings = audit_command(parse_command_line(cmdline, build.keywords), policy=policy, build=build,
                                 file_exists=os.path.exists) + cve_findings([build])
    elif pid is not None:
        findings = audit_process(pid, policy)
    else:
        findings = audit_running(policy)
    findings = [f for f in findings if f.id not in set(ignored)]
    findings.sort(key=lambda f: (f.pid or 0, -int(f.severity)))
    for finding in findings:
        if fmt == "json":
            click.echo(json.dumps(finding.to_dict()))
        else:
            who = f"pid {finding.pid}" if finding.pid is not None else "-"
            click.echo(f"{finding.severity.name.lower():8} {finding.id:28} {who:10} {safe_text(finding.token)}\n"
                       f"{'':8} {safe_text(finding.message)}\n{'':8} fix: {safe_text(finding.fix)}")
    threshold = Severity.parse(fail_on)
    failing = [f for f in findings if f.severity >= threshold]
    if fmt == "text":
        judged = sorted({f.socat for f in findings if f.socat})
        click.echo(f"{len(findings)} finding(s), {len(failing)} at or above {fail_on}"
                   + (f"; verdicts for {', '.join(judged)}" if judged else ""), err=True)
    sys.exit(EXIT_FINDINGS if failing else EXIT_OK)
