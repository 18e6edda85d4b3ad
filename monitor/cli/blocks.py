"""`socat-monitor blocks`: list, add or remove blocked sources in socat-monitor's nftables table."""

from __future__ import annotations

import json

import click

from ..errors import EXIT_FINDINGS
from ..events import Action, BlockEvent


def _config(config_path, netns, table, never_block, state_file):
    """The enforce settings: the agent's config file (or defaults) with these flags on top, checked as at load."""
    from ..config import load_config, with_overrides

    config = load_config(config_path)
    added = tuple(config.enforce.never_block) + tuple(never_block) if never_block else None
    return with_overrides(config, enforce={"netns": netns, "table": table, "state_file": state_file,
                                           "never_block": added}).enforce


def _common(fn):
    for option in reversed([
        click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="Agent config file (its enforce section: table, never_block, state_file, netns)."),
        click.option("--netns", default=None, help="Act in this network namespace (ip netns name)."),
        click.option("--table", default=None, help="Our nftables table name (default socat_monitor)."),
        click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True),
    ]):
        fn = option(fn)
    return fn


def _show_event(ev: BlockEvent, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps({"action": ev.action.value, "target": ev.target, "ttl_s": ev.ttl_s,
                               "reason": ev.reason, "id": ev.id}))
    elif ev.action is Action.BLOCK_REFUSED:
        click.echo(f"refused {ev.target}: {ev.reason}", err=True)
    elif ev.action is Action.BLOCKED:
        click.echo(f"blocked {ev.target} for {ev.ttl_s:g}s" + (f" ({ev.reason})" if ev.reason else ""))
    else:
        click.echo(f"unblocked {ev.target}" + (f" ({ev.reason})" if ev.reason else ""))


@click.group()
def command():
    """List, add or remove blocked sources (socat-monitor's own nftables table only).

    Exit codes: 0 done, 1 a block was refused by the safety rules, 2 bad
    input, 3 the host cannot do it (no CAP_NET_ADMIN, no nftables).
    """


@command.command("list")
@_common
def list_cmd(config_path, netns, table, fmt):
    """Every blocked address and range as the kernel holds it now, with the time left."""
    from ..enforce.operator import list_blocks

    listing = list_blocks(_config(config_path, netns, table, (), None))
    elements = listing.elements
    if fmt == "json":
        click.echo(json.dumps([{"target": e.target, "set": e.set, "timeout_s": e.timeout_s, "expires_s": e.expires_s,
                                "dropped_packets": e.packets, "dropped_bytes": e.bytes} for e in elements]))
        return
    if not elements:
        click.echo("no blocks")
    for e in elements:
        left = "" if e.expires_s is None else f"  expires in {e.expires_s}s (of {e.timeout_s}s)"
        dropped = "" if e.packets is None else f"  dropped {e.packets} packets ({e.bytes} bytes)"
        kind = "allow" if e.set.startswith("allow") else "block"
        click.echo(f"{kind:5} {e.target:<40}{left}{dropped}")
    click.echo("dropped by set since the table was made: " +
               ", ".join(f"{c.set} {c.packets} packets ({c.bytes} bytes)" for c in listing.counters))


@command.command("add")
@click.argument("target")
@click.option("--ttl", default="10m", show_default=True, help="How long the block lasts (90, 30s, 10m, 1h).")
@click.option("--never-block", multiple=True, metavar="CIDR", help="Extra networks that must never be blocked.")
@click.option("--state-file", default=None, help="Block state journal (default from config).")
@_common
def add_cmd(target, ttl, never_block, state_file, config_path, netns, table, fmt):
    """Block IP or CIDR (a /24 or /64 blocks the range) for --ttl.

    The agent's safety rules apply: loopback, this host's addresses, its
    default gateway, SSH peers and never_block networks are refused.
    """
    from ..durations import parse_duration
    from ..enforce.operator import add_block

    ev = add_block(_config(config_path, netns, table, never_block, state_file), target, parse_duration(ttl, "--ttl", positive=True))
    _show_event(ev, fmt)
    if ev.action is Action.BLOCK_REFUSED:
        raise SystemExit(EXIT_FINDINGS)


@command.command("remove")
@click.argument("target")
@click.option("--state-file", default=None, help="Block state journal (default from config).")
@_common
def remove_cmd(target, state_file, config_path, netns, table, fmt):
    """Remove the block of IP or CIDR now."""
    from ..enforce.operator import remove_block

    _show_event(remove_block(_config(config_path, netns, table, (), state_file), target), fmt)
