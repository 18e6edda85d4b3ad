"""Enforcement: socat-monitor's nftables table, safe blocking, and the
in-kernel egress guard for socat's backend connections."""

from .egress import EgressGuard, EgressRule
from .enforcer import EnforceConfig, Enforcer
from .state import ActiveBlock

__all__ = ["EnforceConfig", "Enforcer", "ActiveBlock", "EgressGuard", "EgressRule"]
