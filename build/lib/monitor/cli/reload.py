"""`socat-monitor reload`: ask a running agent to re-read config and policy."""

from __future__ import annotations

import json

import click

from ..control import DEFAULT_SOCKET, request
from ..errors import EXIT_FINDINGS


@click.command()
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True, help="The agent's control socket.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def command(socket_path, fmt):
    """Re-read the config file and the policy of a running agent (like SIGHUP).

    A bad new policy is rejected and the old one stays in force: exit 1
    with the error. Exit 3 when no agent answers.
    """
    reply = request(socket_path, "reload", timeout=15.0)
    if fmt == "json":
        click.echo(json.dumps(reply))
    elif reply.get("ok"):
        click.echo(f"reloaded (policy: {reply.get('policy') or 'none'})")
    else:
        click.echo(f"reload rejected, old policy stays in force: {reply.get('error')}", err=True)
    if not reply.get("ok"):
        raise SystemExit(EXIT_FINDINGS)
