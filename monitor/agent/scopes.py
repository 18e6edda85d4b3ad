"""`Enforcers`: one `Enforcer` per network namespace the agent enforces in
(`enforce.netns`, or the list `enforce.namespaces`, `--netns` repeated), each
with its own table and block journal, used by the agent as one.

Blocks are routed by the decider (`Decider(blockers=...)`, by namespace
inode) to the namespace of the relay that caused them; drop listeners go to
the namespaces their policy entry means (its `netns`, by inode, else every
one enforced), and one meaning none enforced in, or sharing a port with
another in one namespace, is logged as a warning; everything else (ports, counters, alerts, errors, settings,
closing) is done for each and gathered.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable

from ..addresses import same_address
from ..config import member_journal
from ..enforce import Enforcer
from ..enforce.enforcer import DropTotal, EnforceConfig
from ..enforce.netns import named_inode, netns_inode
from ..enforce.nft import DropListener
from ..events import Alert, BlockEvent, DropEvent, PipelineError
from ..metrics import Sample
from ..policy import Policy
from ..policy.selector import netns_inode_of
from ..enforce.state import ActiveBlock
from ..errors import InputError

log = logging.getLogger(__name__)
Resolve = Callable[[str], "int | None"]   # an `ip netns` name -> its namespace's inode (None: none now)


def enforced_namespaces(config: EnforceConfig) -> tuple[str | None, ...]:
    """The namespaces enforced in, by name (None: the agent's own)."""
    return config.namespaces or (config.netns,)


def member_config(config: EnforceConfig, netns: str | None) -> EnforceConfig:
    """The settings of the enforcer of `netns`: its namespace and (when there are several) its own journal."""
    if not config.namespaces:
        return config
    return dataclasses.replace(config, netns=netns, namespaces=(), state_file=member_journal(config, netns))


def drop_listeners(policy: Policy | None, inode: int, resolve: Resolve = named_inode) -> list[DropListener]:
    """The listeners of `policy` whose disallowed sources the kernel drops before the handshake, in the
    namespace of inode `inode`: those naming it (by any of its names, or net:[INODE]), or naming none."""
    if policy is None:
        return []
    return [DropListener(lp.name, lp.port, lp.address, lp.allow_sources) for lp in policy.listeners
            if lp.drops and _means(lp.selector.netns, inode, resolve)]


def unenforced_drops(policy: Policy | None, inodes: Collection[int], resolve: Resolve = named_inode) -> list[str]:
    """A warning for each drop entry naming a namespace the agent does not enforce in (no kernel rule)."""
    if policy is None:
        return []
    return [f"policy listener {lp.name!r} (action drop) names netns {lp.selector.netns!r}, which the agent does "
            "not enforce in: no kernel rule drops its sources" for lp in policy.listeners
            if lp.drops and not any(_means(lp.selector.netns, inode, resolve) for inode in inodes)]


def shared_drop_ports(drops: Iterable[DropListener], netns: str | None) -> list[str]:
    """A warning for each drop listener on a port an earlier one of the same namespace drops on (entries naming
    one namespace by two names, which `policy check` cannot tell apart): a client must be in both allowlists."""
    out, first = [], {}
    for drop in drops:
        for (port, address), other in first.items():
            if port == drop.port and (address is None or drop.address is None or same_address(address, drop.address)):
                out.append(f"policy listeners {other!r} and {drop.name!r} (action drop) both drop on port {port} in "
                           f"{_shown(netns)}: a client is dropped unless both allow it; merge them into one entry")
        first.setdefault((drop.port, drop.address), drop.name)
    return out


def _means(wanted: str | None, inode: int, resolve: Resolve) -> bool:
    if wanted is None:
        return True
    by_inode = netns_inode_of(wanted)
    return (by_inode if by_inode is not None else resolve(wanted)) == inode


def _refuse_alias(netns: str | None, inode: int, seen: dict[str | None, int]) -> None:
    """InputError when namespace `netns` (inode `inode`) is one already in `seen` (repeated, or another name)."""
    for other, known in seen.items():
        if known == inode:
            raise InputError("--netns", f"{_shown(other)} and {_shown(netns)} are the same network namespace")


def _shown(netns: str | None) -> str:
    return repr(netns) if netns is not None else "the agent's own namespace"


class Enforcers:
    """The enforcers of every namespace enforced in, as one."""

    def __init__(self, config: EnforceConfig) -> None:
        self.members: dict[str | None, Enforcer] = {}
        self.inodes: dict[str | None, int] = {}
        try:
            for netns in enforced_namespaces(config):
                inode = netns_inode(netns)
                _refuse_alias(netns, inode, self.inodes)
                self.inodes[netns] = inode
                self.members[netns] = Enforcer(member_config(config, netns))
        except BaseException:
            self.close()
            raise

    def by_inode(self) -> dict[int, Enforcer]:
        """inode -> enforcer: where the decider sends a relay's blocks."""
        return {self.inodes[netns]: enforcer for netns, enforcer in self.members.items()}

    def start(self, ports: Iterable[int], policy: Policy | None) -> list[BlockEvent]:
        ports = tuple(ports)
        self._warn_unenforced(policy)
        return [event for netns, enforcer in self.members.items()
                for event in enforcer.start(ports, self._drops(policy, netns))]

    def set_ports(self, ports: Iterable[int]) -> None:
        ports = tuple(ports)
        for enforcer in self.members.values():
            enforcer.set_ports(ports)

    def set_drops(self, policy: Policy | None) -> None:
        self._warn_unenforced(policy)
        for netns, enforcer in self.members.items():
            enforcer.set_drops(self._drops(policy, netns))

    def _drops(self, policy: Policy | None, netns: str | None) -> list[DropListener]:
        """The drop listeners of `netns`'s enforcer, each port shared by two of them warned of."""
        drops = drop_listeners(policy, self.inodes[netns])
        for warning in shared_drop_ports(drops, netns):
            log.warning("%s", warning)
        return drops

    def _warn_unenforced(self, policy: Policy | None) -> None:
        for warning in unenforced_drops(policy, self.inodes.values()):
            log.warning("%s", warning)

    def reconfigure(self, config: EnforceConfig, now_ns: int) -> list[BlockEvent]:
        return [event for netns, enforcer in self.members.items()
                for event in enforcer.reconfigure(member_config(config, netns), now_ns)]

    def drop_events(self, now_ns: int) -> list[DropEvent]:
        return [event for enforcer in self.members.values() for event in enforcer.drop_events(now_ns)]

    def drop_totals(self) -> tuple[DropTotal, ...]:
        return tuple(total for enforcer in self.members.values() for total in enforcer.drop_totals())

    def counter_events(self, now_ns: int) -> list[BlockEvent]:
        return [event for enforcer in self.members.values() for event in enforcer.counter_events(now_ns)]

    def drain_alerts(self) -> list[Alert]:
        return [alert for enforcer in self.members.values() for alert in enforcer.drain_alerts()]

    def drain_errors(self) -> list[PipelineError]:
        return [error for enforcer in self.members.values() for error in enforcer.drain_errors()]

    def active(self) -> list[ActiveBlock]:
        return [block for enforcer in self.members.values() for block in enforcer.active()]

    def samples(self) -> list[Sample]:
        return self._labelled(lambda enforcer: enforcer.samples())

    def block_samples(self) -> list[Sample]:
        return self._labelled(lambda enforcer: enforcer.block_samples())

    def drop_samples(self) -> list[Sample]:
        return self._labelled(lambda enforcer: enforcer.drop_samples())

    def _labelled(self, read) -> list[Sample]:
        """Each enforcer's samples; labelled with their namespace when there are several."""
        if len(self.members) == 1:
            return read(next(iter(self.members.values())))
        return [dataclasses.replace(sample, labels=(*sample.labels, ("netns", netns or "host")))
                for netns, enforcer in self.members.items() for sample in read(enforcer)]

    def close(self) -> None:
        for enforcer in self.members.values():
            enforcer.close()
