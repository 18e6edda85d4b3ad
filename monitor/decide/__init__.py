"""The decision stage: what to do about each alert, in one place.

Rule producers (policy engine, detectors, audit, egress guard) only describe
what they saw. `Decider` turns their alerts into decisions, driven by the
config's `decide:` section (`DecideConfig`) and the rule catalogue: alert or
block, the block's target (the address or its network) and TTL, longer TTLs
for repeat offenders, and a block again for a source that offends while no
longer blocked even when its alert is deduplicated. The live agent and the
offline `analyze` run the same `Decider`.
"""

from .config import DecideConfig, RuleSetting, rule_settings
from .decider import Blocker, BlockState, Decision, Decider

__all__ = ["Blocker", "BlockState", "DecideConfig", "Decider", "Decision", "RuleSetting", "rule_settings"]
