"""What `socat-monitor blocks` does: list, add and remove blocks by hand,
through the same Enforcer (and so the same safety rules) as the agent."""

from __future__ import annotations

import dataclasses
import time

from ..addresses import parse_target, target_text
from ..errors import InputError
from ..events import BlockEvent
from .enforcer import EnforceConfig, Enforcer
from .netns import require_cap_net_admin
from .nft import KernelElement, NftTable

def list_blocks(config: EnforceConfig) -> list[KernelElement]:
    """The kernel's real elements of our table (all of them), with remaining timeouts."""
    require_cap_net_admin("blocks list")
    table = NftTable(config.table, config.netns)
    try:
        return table.list_elements()
    finally:
        table.close()


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


__all__ = ["list_blocks", "add_block", "remove_block"]
