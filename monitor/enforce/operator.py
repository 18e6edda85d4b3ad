"""What `socat-monitor blocks` does: list, add and remove blocks by hand,
through the same Enforcer (and so the same safety rules) as the agent."""

from __future__ import annotations

import dataclasses
import time

from ..addresses import parse_target, target_text
from ..errors import EnvironmentProblem, InputError
from ..events import BlockEvent
from .enforcer import EnforceConfig, Enforcer
from ..host.processes import has_capability
from .netns import CAP_NET_ADMIN, require_cap_net_admin
from .nft import Listing, NftTable


def list_blocks(config: EnforceConfig) -> Listing:
    """The kernel's real elements of our table (all of them), with remaining timeouts and what they dropped."""
    require_cap_net_admin("blocks list")
    table = NftTable(config.table, config.netns)
    try:
        table.require_ours()
        return table.listing()
    finally:
        table.close()


def check_table_owner(config: EnforceConfig, where: str) -> str | None:
    """InputError if a table of the configured name exists and is not ours; or why it could not be looked at."""
    if not config.enabled:
        return None
    if not has_capability(CAP_NET_ADMIN):
        return f"not checked whether table inet {config.table} is socat-monitor's own: needs root (CAP_NET_ADMIN)"
    try:
        table = NftTable(config.table, config.netns)
    except EnvironmentProblem as exc:
        return f"table inet {config.table} not checked: {exc}"
    try:
        table.require_ours()
    except InputError as exc:
        raise InputError(f"{where}: {exc.where}", exc.message) from None
    except EnvironmentProblem as exc:
        return f"table inet {config.table} not checked: {exc}"
    finally:
        table.close()
    return None


def add_block(config: EnforceConfig, target: str, ttl_s: float | None) -> BlockEvent:
    """Block `target` now; refused (with the reason) exactly when the agent would refuse it."""
    parse_target(target)
    enforcer = Enforcer(dataclasses.replace(config, dry_run=False))
    try:
        enforcer.attach()
        return enforcer.block(target, ttl_s=ttl_s, rule_id="operator", alert_id=None, now_ns=time.time_ns())
    finally:
        enforcer.close()


def remove_block(config: EnforceConfig, target: str) -> BlockEvent:
    text = target_text(parse_target(target))
    enforcer = Enforcer(dataclasses.replace(config, dry_run=False))
    try:
        enforcer.attach()
        if text not in {b.target for b in enforcer.active()}:
            raise InputError(target, f"{text} is not blocked in table inet {config.table}")
        return enforcer.unblock(text, reason="removed by operator", now_ns=time.time_ns())
    finally:
        enforcer.close()


__all__ = ["list_blocks", "add_block", "remove_block", "check_table_owner"]
