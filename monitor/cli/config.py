"""`socat-monitor config`: validate a config file, show the effective config."""

from __future__ import annotations

import json

import click
import yaml

from ..config import config_schema, load_config, place_state, to_dict
from ..enforce.operator import check_table_owner
from ..policy import load_policy
from ..redact import redact_settings


@click.group()
def command():
    """Validate or show the agent configuration (YAML)."""


@command.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def check(path):
    """Validate PATH and the policy file it names, as `run` and a reload do: exit 0 when valid,
    2 with file:line errors when not. As root it also looks at the live ruleset: a table of the
    configured name that socat-monitor did not make is refused."""
    config = load_config(path)
    if config.agent.policy:
        load_policy(config.agent.policy)
    note = check_table_owner(config.enforce, path)
    if note:
        click.echo(f"{path}: note: {note}", err=True)
    click.echo(f"{path}: ok" + (f" (policy {config.agent.policy}: ok)" if config.agent.policy else ""))


@command.command("show")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml")
def show(path, fmt):
    """Print the effective configuration (PATH merged over defaults), secrets hidden."""
    data = redact_settings(to_dict(place_state(load_config(path))))
    click.echo(json.dumps(data, indent=2) if fmt == "json" else yaml.safe_dump(data, sort_keys=False).rstrip())


@command.command("schema")
def schema():
    """Print the JSON schema of the config file."""
    click.echo(json.dumps(config_schema(), indent=2))
