"""`socat-monitor doctor`: can this host run the agent, and how to fix it."""

from __future__ import annotations

import json
import sys

import click

from ..doctor import render_text, run_checks
from ..errors import EXIT_ENVIRONMENT, EXIT_OK


@click.command("doctor")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format.")
def command(fmt: str) -> None:
    """Check kernel features, mounts, headers, bcc, privileges, socat and nft.

    Prints each missing piece with the command that fixes it. Exit 0 when the
    agent can run here, 3 when it cannot.
    """
    report = run_checks()
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(render_text(report))
    sys.exit(EXIT_OK if report.ok else EXIT_ENVIRONMENT)
