"""`socat-monitor dashboards`: export the Kibana saved objects or import them into Kibana."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import click

from .. import dashboards
from ..errors import InputError


@click.group()
def command():
    """Kibana dashboards over the socat-monitor indices (saved objects for Kibana 7.9 and later)."""


@command.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the NDJSON here (default: standard output).")
def export(output: Path | None):
    """Write the saved objects (index pattern, visualizations, dashboards) as NDJSON."""
    text = dashboards.export_ndjson()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {text.count(chr(10))} saved objects to {output}", err=True)


def _auth(username: str | None, password: str | None, api_key: str | None) -> str | None:
    if api_key and username:
        raise InputError("--api-key", "give either --username/--password or --api-key, not both")
    if api_key:
        return f"ApiKey {api_key}"
    if username:
        return "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
    return None


@command.command("import")
@click.option("--kibana", required=True, metavar="URL", help="Kibana base URL, e.g. http://127.0.0.1:5601")
@click.option("--space", default=None, help="Kibana space id (default space if not given).")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Import this NDJSON instead of the built-in dashboards.")
@click.option("--username", envvar="KIBANA_USERNAME", help="Basic auth user (env KIBANA_USERNAME).")
@click.option("--password", envvar="KIBANA_PASSWORD", help="Basic auth password (env KIBANA_PASSWORD).")
@click.option("--api-key", envvar="KIBANA_API_KEY", help="Base64 API key (env KIBANA_API_KEY).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def import_(kibana: str, space: str | None, path: Path | None, username, password, api_key, fmt: str):
    """Post the saved objects to Kibana's import API, overwriting earlier versions.

    Exit 3 when Kibana cannot be reached or refuses the import.
    """
    ndjson = path.read_text() if path else dashboards.export_ndjson()
    answer = dashboards.import_to_kibana(kibana, ndjson, space=space, auth_header=_auth(username, password, api_key))
    if fmt == "json":
        click.echo(json.dumps(answer))
    else:
        click.echo(f"imported {answer.get('successCount', 0)} saved objects into {kibana}"
                   + (f" (space {space})" if space else ""))
