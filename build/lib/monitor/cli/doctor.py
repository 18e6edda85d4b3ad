"""`socat-monitor doctor`: can this host run the agent, and how to fix it."""

from __future__ import annotations

import json
import sys

import click

from ..config import load_config
from ..doctor import render_text, run_checks
from ..errors import EXIT_ENVIRONMENT, EXIT_OK


@click.command("doctor")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="The agent's config file: its Elasticsearch is checked too.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format.")
def command(config_path: str | None, fmt: str) -> None:
    """Check that `socat-monitor run` can start here, and say how to fix what is missing.

    Checks kernel features, mounts, headers, privileges, socat and nft; imports
    every Python module the agent needs; compiles and loads the capture
    programs (then unloads them); creates and deletes an nftables table in a
    throwaway network namespace (the host's ruleset is never touched); and asks
    the configured Elasticsearch, if any. Takes a few seconds. Exit 0 when the
    agent can run here, 3 when it cannot.
    """
    config = load_config(config_path)
    es = config.elasticsearch if config.elasticsearch is not None and config.elasticsearch.urls else None
    report = run_checks(es_config=es)
    if fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(render_text(report))
    sys.exit(EXIT_OK if report.ok else EXIT_ENVIRONMENT)
