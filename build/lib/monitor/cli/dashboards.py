"""`socat-monitor dashboards`: export or import the Kibana saved objects and the Elastic Security rules."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import ModuleType
from typing import Callable

import click

from .. import dashboards, detection_rules
from ..kibana import KibanaTarget, auth_header, import_ndjson


@click.group()
def command():
    """Kibana dashboards over the socat-monitor indices (saved objects for Kibana 7.9 and later),
    and the Elastic Security detection rules (`dashboards rules`)."""


@command.group("rules")
def rules():
    """Elastic Security detection rules that turn socat-monitor alerts into signals (Kibana 7.9+)."""


def _kibana_options(fn: Callable) -> Callable:
    """--kibana, --space, TLS and authentication options; the command gets `target`."""
    @click.option("--kibana", required=True, metavar="URL", help="Kibana base URL, e.g. https://kibana:5601")
    @click.option("--space", default=None, help="Kibana space id (default space if not given).")
    @click.option("--ca-file", type=click.Path(exists=True, dir_okay=False),
                  help="CA certificate(s) to verify an https:// Kibana with.")
    @click.option("--insecure", is_flag=True, help="https:// without verifying Kibana's certificate.")
    @click.option("--username", envvar="KIBANA_USERNAME", help="Basic auth user (env KIBANA_USERNAME).")
    @click.option("--password", envvar="KIBANA_PASSWORD", help="Basic auth password (env KIBANA_PASSWORD).")
    @click.option("--api-key", envvar="KIBANA_API_KEY", help="Base64 API key id:key (env KIBANA_API_KEY).")
    @functools.wraps(fn)
    def wrapper(kibana, space, ca_file, insecure, username, password, api_key, **kwargs):
        target = KibanaTarget(kibana, space=space, authorization=auth_header(username, password, api_key),
                              ca_file=ca_file, insecure=insecure)
        return fn(target=target, **kwargs)
    return wrapper


def _add_commands(group: click.Group, source: ModuleType, what: str, filename: str, contents: str) -> None:
    """`export` and `import` of one NDJSON file of Kibana objects (`source.export_ndjson()`)."""

    @group.command("export", help=f"Write the {what} ({contents}) as NDJSON.")
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
                  help="Write the NDJSON here (default: standard output).")
    def export(output: Path | None):
        text = source.export_ndjson()
        if output is None:
            click.echo(text, nl=False)
        else:
            output.write_text(text)
            click.echo(f"wrote {text.count(chr(10))} {what} to {output}", err=True)

    @group.command("import", help=f"Post the {what} to Kibana's import API, overwriting earlier versions.\n\n"
                                  "Exit 3 when Kibana cannot be reached or refuses one.")
    @_kibana_options
    @click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help=f"Import this NDJSON instead of the built-in {what}.")
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
    def import_(target: KibanaTarget, path: Path | None, fmt: str):
        ndjson = path.read_text() if path else source.export_ndjson()
        count, answer = import_ndjson(target, source.IMPORT_PATH, filename, ndjson, what)
        if fmt == "json":
            click.echo(json.dumps(answer))
        else:
            click.echo(f"imported {count} {what} into {target.url}"
                       + (f" (space {target.space})" if target.space else ""))


_add_commands(command, dashboards, "saved objects", "socat-monitor.ndjson",
              "index pattern, visualizations, dashboards")
_add_commands(rules, detection_rules, "detection rules", "socat-monitor-rules.ndjson",
              "the detection-engine import format")
