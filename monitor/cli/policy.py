"""`socat-monitor policy`: check, suggest and document policy files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import EXIT_OK, EXIT_USAGE, InputError


@click.group(name="policy")
def command() -> None:
    """Validate policy files, suggest one from what runs and what was recorded, show the reference."""


@command.command(name="check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: {\"ok\": bool, \"errors\": [{\"where\", \"message\"}], \"listeners\": N, \"notes\": [...]}.")
def check(file: Path, fmt: str) -> None:
    """Validate a policy FILE: every problem is printed as FILE:LINE: key: what is expected.

    Exit status: 0 valid, 2 invalid or unreadable.
    """
    from ..host.identity import netns_names
    from ..policy import load_policy
    from ..yamlfile import InputErrors

    try:
        policy = load_policy(file)
    except InputError as exc:
        problems = exc.problems if isinstance(exc, InputErrors) else [exc]
        if fmt == "json":
            click.echo(json.dumps({"ok": False, "errors": [{"where": p.where, "message": p.message}
                                                          for p in problems]}))
        else:
            for problem in problems:
                click.echo(f"{problem}", err=True)
            click.echo(f"{file}: {len(problems)} problem(s)", err=True)
        sys.exit(EXIT_USAGE)
    notes = policy.notes(set(netns_names().values()))
    if fmt == "json":
        click.echo(json.dumps({"ok": True, "errors": [], "listeners": len(policy.listeners), "notes": notes}))
    else:
        for note in notes:
            click.echo(f"{file}: note: {note}")
        click.echo(f"{file}: ok ({len(policy.listeners)} listener(s))")
    sys.exit(EXIT_OK)


@command.command(name="suggest")
@click.option("--events", "event_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Recorded NDJSON event file (the agent's ECS output; plain or .gz). Repeatable.")
@click.option("--processes/--no-processes", default=True, show_default=True,
              help="Learn listeners from the socat processes running now.")
@click.option("--headroom", type=click.FloatRange(min=1.0), default=2.0, show_default=True,
              help="Multiply observed rates and concurrency by this.")
@click.option("--min-rate", type=click.IntRange(min=1), default=10, show_default=True,
              help="Lowest max_rate_per_source written (per minute).")
@click.option("--v4-prefix", type=click.IntRange(8, 32), default=24, show_default=True,
              help="Two or more IPv4 sources in one such prefix are allowed as the prefix.")
@click.option("--v6-prefix", type=click.IntRange(16, 128), default=64, show_default=True,
              help="Same for IPv6.")
@click.option("--include-refused", is_flag=True, help="Also allow sources socat itself refused (range=, tcpwrap).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the policy here instead of stdout.")
def suggest(event_files, processes, headroom, min_rate, v4_prefix, v6_prefix, include_refused, output) -> None:
    """Write a starting policy from running socat processes and recorded events.

    The result passes `policy check` and, applied to the traffic it learned from,
    raises no alerts. Malformed event lines are reported on stderr and skipped.
    """
    from ..replay.reader import ReadStats, read_events
    from ..host.processes import socat_processes
    from ..socat.grammar import parse_command_line
    from ..policy.suggest import suggest_policy
    from ..enforce.netns import netns_inode

    commands = []
    if processes:
        for facts in socat_processes():
            try:
                commands.append(parse_command_line(facts.argv))
            except InputError as exc:
                click.echo(f"socat-monitor: pid {facts.pid}: skipped: {exc}", err=True)
    stats = ReadStats()
    events = read_events(event_files, stats) if event_files else iter(())
    text = suggest_policy(commands, events, headroom=headroom, min_rate=min_rate, v4_prefix=v4_prefix,
                          v6_prefix=v6_prefix, include_refused=include_refused, home=netns_inode(None))
    for bad in stats.bad_lines[:20]:
        click.echo(f"socat-monitor: malformed: {bad}", err=True)
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@command.command(name="reference")
@click.option("--format", "fmt", type=click.Choice(["markdown", "schema"]), default="markdown", show_default=True,
              help="markdown: a table of every key; schema: the JSON schema.")
def reference(fmt: str) -> None:
    """Print the policy file reference: every key, its default and an example."""
    from ..policy.model import POLICY_SCHEMA, policy_reference

    if fmt == "schema":
        click.echo(json.dumps(POLICY_SCHEMA, indent=2))
    else:
        click.echo(policy_reference(), nl=False)
