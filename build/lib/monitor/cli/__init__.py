"""The `socat-monitor` command line: a thin click group.

Each subcommand lives in its own module here (`monitor/cli/<name>.py`,
exposing `command`) and calls one public function of the stage it drives.
Subcommands are imported only when used, so `--help` stays fast and a
command that needs bcc does not make the others need it.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from .. import __version__
from ..dependencies import fix_for
from ..errors import EXIT_ENVIRONMENT, EXIT_INTERNAL, MonitorError
from ..terminal import SafeFormatter, safe_text
from ..yamlfile import InputErrors

SUBCOMMANDS = {
    "run": "run the agent: capture, check, detect, block, ship",
    "doctor": "check that this host can run the agent, and say how to fix what is missing",
    "audit": "audit socat command lines for risky options",
    "policy": "validate or suggest policy files",
    "analyze": "replay recorded events through policy and detectors",
    "blocks": "list, add or remove blocked sources",
    "dashboards": "import or export the Kibana dashboards",
    "config": "validate or show the agent configuration",
    "top": "live terminal view of a running agent",
    "reload": "make a running agent re-read its config and policy",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module = importlib.import_module(f"{__name__}.{name}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(sorted(SUBCOMMANDS.items()))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="socat-monitor")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Watch socat relays: every connection, checked against policy, anomalies
    flagged, offenders dropped in nftables, everything shipped as ECS."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), handlers=[handler])


def main() -> None:
    """Entry point: every MonitorError becomes one line on stderr and its exit code."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except InputErrors as exc:   # every problem of a file, one line each
        for line in exc.lines():
            click.echo(f"socat-monitor: error: {safe_text(line)}", err=True)
        sys.exit(exc.exit_code)
    except MonitorError as exc:
        click.echo(f"socat-monitor: error: {safe_text(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except ModuleNotFoundError as exc:
        _missing_module(exc)
    except Exception as exc:  # a bug: one line for the user, the traceback with -vv
        _internal_error(exc)


def _missing_module(exc: ModuleNotFoundError) -> None:
    """A dependency the host lacks is the host's problem (exit 3, with the fix), not a bug."""
    fix = fix_for(exc.name)
    if fix is None:
        _internal_error(exc)
    click.echo(f"socat-monitor: error: the Python module {exc.name!r} is missing (fix: {fix})", err=True)
    sys.exit(EXIT_ENVIRONMENT)


def _internal_error(exc: Exception) -> None:
    logging.getLogger("monitor").debug("internal error", exc_info=exc)
    click.echo(f"socat-monitor: internal error: {type(exc).__name__}: {safe_text(str(exc))} "
               "(run with -vv for the traceback)", err=True)
    sys.exit(EXIT_INTERNAL)
