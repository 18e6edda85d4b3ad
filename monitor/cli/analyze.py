"""`socat-monitor analyze`: replay recorded event files through policy and the detectors."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click
import orjson
import yaml

from ..errors import InputError

_MAX_BAD_SHOWN = 20


@click.command(name="analyze")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check every connection against this policy file.")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Start from this learned baseline (e.g. the agent's) instead of learning from the files.")
@click.option("--save-baseline", "save_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the baseline learned (or loaded and extended) here.")
@click.option("--learning-period", default=None, metavar="D",
              help="Event time spent learning before anomalies are raised: 20s, 15m, 1h (default 1h).")
@click.option("--open-idle-timeout", default=None, metavar="D",
              help="With --policy: forget an open connection nothing was seen of for D of event time, "
                   "so lost closes cannot inflate max_concurrent_per_source (default 1h, 0: never).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The agent's config file: its detect and decide sections and enforce.default_ttl apply, "
                   "so the decisions are the agent's (--set on top).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A detector setting, as in the config file's detect section (repeatable), "
                   "e.g. --set source_rate_min=50 --set cooldown_s=10m.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: readable; json: one ECS alert document per line, then one {\"summary\": ...} line.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write there instead of stdout.")
@click.option("--no-columnar", is_flag=True,
              help="Read a period's NDJSON file even where its Parquet segment is (a segment named is still read).")
def command(files, policy_path, baseline_path, save_path, learning_period, open_idle_timeout, config_path, settings, fmt,
            output, no_columnar) -> None:
    """Analyse event FILES: NDJSON (plain or .gz; the agent's, or any with @timestamp,
    event.action, source.ip/port, destination.ip/port) and the agent's Parquet segments.
    A period's segment (events-S-N.parquet beside events-S-N.ndjson) is read in place
    of its NDJSON file when it was made from that file as it is now; each period is read once.

    Files are replayed oldest first (by their first event), events in time order;
    each listener learns for the learning period of event time from its own first
    event (one whose learning the --baseline finished is ready at once) and raises anomalies
    afterwards, one per rule and source per cooldown.

    Exit status: 0 no alerts, 1 alerts raised, 2 bad input (missing file, bad flag,
    bad policy or baseline). Malformed lines are counted and listed on stderr, never fatal.
    """
    from ..replay.analyze import analyze
    from ..config import load_config, section_from_flags
    from ..decide import Decider
    from ..detect import Baseline, DetectConfig
    from ..durations import parse_duration
    from ..ecs import HostInfo, render

    agent_config = load_config(config_path)
    config = section_from_flags(DetectConfig, _settings(settings), "--set", base=agent_config.detect)
    if learning_period is not None:
        config = config.with_learning_period(parse_duration(learning_period, "--learning-period"))
    baseline = Baseline.load(baseline_path) if baseline_path else None
    policy = _load_policy(policy_path) if policy_path else None
    decider = Decider(agent_config.decide, default_ttl_s=agent_config.enforce.default_ttl_s,
                      block_rules=config.block_rules)
    result = analyze(files, policy=policy, config=config, baseline=baseline, decider=decider,
                     engine_config=_engine_config(open_idle_timeout, agent_config.policy_engine),
                     columnar=not no_columnar)
    if save_path:
        result.baseline.prune(config.max_tracked)
        try:
            result.baseline.save(save_path)
        except OSError as exc:
            raise InputError(f"--save-baseline {save_path}", f"cannot write: {exc.strerror or exc}") from None
    for bad in result.bad_lines[:_MAX_BAD_SHOWN]:
        click.echo(f"socat-monitor: malformed: {bad}", err=True)
    if result.malformed:
        more = result.malformed - min(len(result.bad_lines), _MAX_BAD_SHOWN)
        click.echo(f"socat-monitor: {result.malformed} malformed line(s)" + (f" ({more} not shown)" if more else ""),
                   err=True)
    try:
        out = open(output, "wb") if output else sys.stdout.buffer
    except OSError as exc:
        raise InputError(f"--output {output}", f"cannot write: {exc.strerror or exc}") from None
    try:
        if fmt == "json":
            host = HostInfo.detect()
            for alert in result.alerts:
                out.write(orjson.dumps(render(alert, host)) + b"\n")
            out.write(orjson.dumps({"summary": result.summary()}) + b"\n")
        else:
            out.write(_table(result).encode())
    finally:
        if output:
            out.close()
        else:
            out.flush()
    sys.exit(result.exit_code)


def _settings(pairs: tuple[str, ...]) -> dict:
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InputError("--set", f"expected KEY=VALUE, got {pair!r}")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise InputError(f"--set {key.strip()}", f"cannot read value {text!r}") from None
    return values


def _engine_config(open_idle_timeout: str | None, base):
    """The config's policy_engine section, with --open-idle-timeout on top."""
    from ..durations import parse_duration

    if open_idle_timeout is None:
        return base
    return dataclasses.replace(base, open_idle_timeout_s=parse_duration(open_idle_timeout, "--open-idle-timeout"))


def _load_policy(path: Path):
    from ..policy import load_policy   # the policy stage's loader; imported only when asked for

    return load_policy(path)


def _table(result) -> str:
    from ..ecs import iso_timestamp

    lines = []
    lines.append(f"{len(result.alerts)} alert(s) from {result.connection_events} connection events "
                 f"({result.lines} lines, {result.other_documents} other documents, {result.malformed} malformed, "
                 f"{len(result.files)} file(s), {result.elapsed_s:.1f}s)")
    for note in result.handovers:
        lines.append(note)
    if result.late_events:
        lines.append(f"{result.late_events} event(s) older than events before them were counted at the latest "
                     "time seen (give rotated files oldest first)")
    counts = result.policy_counts
    if counts is not None and (counts.forgotten.total or counts.repeated):
        f = counts.forgotten
        lines.append(f"policy: {f.total} open connection(s) forgotten without their close ({f.expired} idle, "
                     f"{f.reused} whose 4-tuple was reused, {f.evicted} over the table's size); "
                     f"{counts.repeated} repeated record(s) of a connection ignored")
    base = result.baseline
    if base.learning_start_ns is not None:
        state = "complete" if base.complete else "still learning at the end of the data: no anomalies raised"
        lines.append(f"learning: {iso_timestamp(base.learning_start_ns)} .. {iso_timestamp(base.learning_end_ns)} "
                     f"({state})")
    if result.alerts:
        lines.append("")
        rows = [("TIME (UTC)", "RULE", "SEVERITY", "SOURCE", "LISTENER", "OBSERVED", "THRESHOLD", "DESCRIPTION")]
        for a in result.alerts:
            rows.append((
                iso_timestamp(a.timestamp_ns), a.rule_id, a.severity.name.lower(), a.source_ip or "-",
                str(a.listener.port) if a.listener else "-", _num(a.observed), _num(a.threshold), a.description,
            ))
        lines += _columns(rows)
    if result.listeners:
        lines.append("")
        rows = [("LISTENER", "CONNECTIONS", "REFUSED", "SOURCES", "ALERTS", "LEARNED UNTIL (its own period)")]
        rows += [(str(s.port), str(s.connections), str(s.refused), str(s.sources), str(s.alerts),
                  _learned_until(base, s.port)) for s in result.listeners]
        lines += _columns(rows)
    if result.sources:
        lines.append("")
        rows = [("SOURCE", "CONNECTIONS", "REFUSED", "LISTENERS", "ALERTS")]
        rows += [(s.ip, str(s.connections), str(s.refused), str(s.listeners), str(s.alerts)) for s in result.sources]
        lines += _columns(rows)
    return "\n".join(lines) + "\n"


def _learned_until(base, port: int) -> str:
    from ..ecs import iso_timestamp

    end = base.listener_learning_end(port)
    return "-" if end is None else iso_timestamp(end)


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}"


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]
