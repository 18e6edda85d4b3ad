"""`socat-monitor config`: validate a config file, show the effective config."""

from __future__ import annotations

import json

import click
import yaml


@click.group()
def command():
    """Validate or show the agent configuration (YAML)."""


@command.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def check(path):
    """Validate PATH: exit 0 when valid, 2 with file:line errors when not."""
    from ..config import load_config
    from ..enforce.operator import check_table_owner

    config = load_config(path)
    note = check_table_owner(config.enforce, path)   # live: a table of that name that is not ours is refused
    if note:
        click.echo(f"{path}: note: {note}", err=True)
    click.echo(f"{path}: ok")


@command.command("show")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml")
def show(path, fmt):
    """Print the effective configuration (PATH merged over defaults)."""
    from ..config import load_config, place_state, to_dict

    data = to_dict(place_state(load_config(path)))
    click.echo(json.dumps(data, indent=2) if fmt == "json" else yaml.safe_dump(data, sort_keys=False).rstrip())


@command.command("schema")
def schema():
    """Print the JSON schema of the config file."""
    from ..config import config_schema

    click.echo(json.dumps(config_schema(), indent=2))
