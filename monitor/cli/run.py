"""`socat-monitor run`: the agent, configured from a file with flags on top."""

from __future__ import annotations

import json

import click

from ..agent import Agent, RunOptions
from ..config import ConfigSource
from ..durations import parse_duration
from ..errors import EXIT_FINDINGS, EXIT_OK
from ..status import RunSummary, to_json


def _summary_text(summary: RunSummary) -> str:
    alerts = ", ".join(f"{rule}={n}" for rule, n in sorted(summary.alerts.items())) or "none"
    blocked = ", ".join(summary.sources_blocked) or "none"
    lost = summary.kernel_lost + summary.user_lost
    return (
        f"connections seen: {summary.connections_seen}\n"
        f"alerts raised:    {sum(summary.alerts.values())} ({alerts})\n"
        f"sources blocked:  {len(summary.sources_blocked)} ({blocked})\n"
        f"events lost:      {lost} (kernel {summary.kernel_lost}, agent {summary.user_lost})\n"
        f"output:           {summary.output}"
    )


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="Config file (YAML).")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Directory for NDJSON events and alerts.")
@click.option("-p", "--policy", type=click.Path(dir_okay=False), help="Policy file to apply live.")
@click.option("--duration", type=float, help="Stop by itself after this many seconds.")
@click.option("--learning-period", help="Anomaly learning period in event time, e.g. 20s, 15m, 1h.")
@click.option("--baseline", type=click.Path(dir_okay=False), help="Baseline file (learned state) to load and save.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Home of baseline, block state and spool.")
@click.option("--comm", "comms", multiple=True, help="Process names to watch (default socat); repeatable.")
@click.option("--netns", "namespaces", multiple=True,
              help="Enforce in this network namespace (ip netns name); repeatable: one table and journal each.")
@click.option("--dry-run", is_flag=True, default=None, help="Log blocks it would make; change nothing.")
@click.option("--no-enforce", is_flag=True, help="Never touch the firewall.")
@click.option("--elasticsearch", "es_urls", multiple=True, help="Elasticsearch URL; repeatable.")
@click.option("--alert-feed", type=click.Path(dir_okay=False), help="Also append alerts to this JSON-lines file.")
@click.option("--metrics", help="Prometheus endpoint HOST:PORT (default 127.0.0.1:9464); 'off' disables.")
@click.option("--control-socket", type=click.Path(), help="Unix socket for top/reload.")
@click.option("--follow", "-f", is_flag=True, help="Print one line per event on the console.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="Summary format at exit.")
def command(config_path, output, policy, duration, learning_period, baseline, state_dir, comms, namespaces, dry_run, no_enforce,
            es_urls, alert_feed, metrics, control_socket, follow, fmt):
    """Run the agent: capture every socat connection, check it against the
    policy, flag anomalies, block offenders, and write ECS events and alerts.

    Stops after --duration, or on SIGINT/SIGTERM with everything flushed.
    SIGHUP reloads the config file with these flags on top, and the policy.
    Exit status: 0 no alerts, 1 alerts were raised, 2 bad input, 3 the host
    cannot run the agent.
    """
    overrides = dict(
        agent={"output": output, "policy": policy, "control_socket": control_socket, "baseline": baseline,
               "state_dir": state_dir,
               "metrics": None if metrics is None else ("" if metrics == "off" else metrics)},
        ndjson={"directory": output},
        capture={"comms": tuple(comms) or None},
        detect={"learning_period_s": parse_duration(learning_period, "--learning-period") if learning_period else None},
        enforce={"netns": namespaces[0] if len(namespaces) == 1 else None,
                 "namespaces": namespaces if len(namespaces) > 1 else None, "dry_run": dry_run, "enabled": False if no_enforce else None},
        elasticsearch={"urls": tuple(es_urls) or None},
        alert_feed={"path": alert_feed},
    )
    source = ConfigSource(config_path, overrides)
    echo = (lambda line: click.echo(line)) if follow else None
    agent = Agent(source.load(), RunOptions(source=source, duration_s=duration, follow=echo))
    agent.install_signal_handlers()
    summary = agent.run()
    if fmt == "json":
        click.echo(json.dumps(to_json(summary)))
    else:
        click.echo(_summary_text(summary), err=follow)
    raise SystemExit(EXIT_FINDINGS if summary.alerts else EXIT_OK)
