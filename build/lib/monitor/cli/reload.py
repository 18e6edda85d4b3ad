"""`socat-monitor reload`: ask a running agent to re-read config and policy, and say what changed."""

from __future__ import annotations

import json

import click

from ..control import DEFAULT_SOCKET, request
from ..errors import EXIT_FINDINGS
from ..status import ReloadResult, from_json


@click.command()
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True, help="The agent's control socket.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def command(socket_path, fmt):
    """Re-read the config file (with the flags the agent was started with)
    and the policy of a running agent, like SIGHUP, and say what changed.

    A bad config or policy is rejected as a whole and nothing changes; a
    setting that needs a restart keeps its old value. Either is exit 1, with
    the reason. Exit 3 when no agent answers.
    """
    data = request(socket_path, "reload", timeout=15.0)
    result = from_json(ReloadResult, data, f"{socket_path}: reload")
    if fmt == "json":
        click.echo(json.dumps(data))
    elif result.error:
        click.echo(f"reload rejected, nothing changed:\n{result.error}", err=True)
    else:
        changed = ", ".join(result.changed) or "no setting"
        click.echo(f"reloaded (policy: {result.policy or 'none'}); changed: {changed}")
        for line in result.rejected:
            click.echo(f"not applied: {line}", err=True)
    if not result.ok:
        raise SystemExit(EXIT_FINDINGS)
