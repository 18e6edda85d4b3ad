"""The enforcer: turns block decisions into nftables set elements, safely.

It owns the order of checks for every block (target valid, not protected,
circuit breaker closed, dry run or real), keeps the active blocks and the
state file in step with the kernel, and reports every change or refusal as
a `BlockEvent`. It never decides who is bad.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterable

from ..errors import InputError
from ..events import Action, Alert, BlockEvent, Outcome
from ..host import facts as hostfacts
from ..rules import new_alert
from .netns import require_cap_net_admin
from .nft import KernelElement, NftTable
from .safety import CircuitBreaker, Network, SafetyRules, parse_target, target_text
from .sessions import MODES, end_sessions
from .state import ActiveBlock, StateFile

log = logging.getLogger(__name__)

FACTS_MAX_AGE_S = 10.0   # host facts (addresses, gateways, SSH peers) older than this are re-read before a block


@dataclass
class EnforceConfig:
    enabled: bool = True
    dry_run: bool = False
    default_ttl_s: float = 600
    scope: str = "listeners"          # or "host"
    never_block: tuple[str, ...] = ()
    max_blocks_per_minute: int = 60
    kill_established: str = "none"    # conntrack | destroy | none
    state_file: str = "/var/lib/socat-monitor/blocks.json"
    netns: str | None = None
    table: str = "socat_monitor"

    def validate(self) -> None:
        if self.scope not in ("listeners", "host"):
            raise InputError("enforce.scope", f"{self.scope!r} is not 'listeners' or 'host'")
        if self.kill_established not in MODES:
            raise InputError("enforce.kill_established", f"{self.kill_established!r} is not one of {', '.join(MODES)}")
        if self.default_ttl_s <= 0:
            raise InputError("enforce.default_ttl_s", f"{self.default_ttl_s} must be > 0")
        if self.max_blocks_per_minute < 1:
            raise InputError("enforce.max_blocks_per_minute", f"{self.max_blocks_per_minute} must be >= 1")


class Enforcer:
    def __init__(self, config: EnforceConfig) -> None:
        config.validate()
        self.config = config
        self._safety = SafetyRules.build(never_block=config.never_block)
        if config.enabled and not config.dry_run:
            require_cap_net_admin("enforce")
        self._table = NftTable(config.table, config.netns)
        self._state = StateFile(config.state_file)
        self._breaker = CircuitBreaker(config.max_blocks_per_minute)
        self._active: dict[str, ActiveBlock] = {}
        self._ports: tuple[int, ...] = ()
        self._alerts: list[Alert] = []
        self._lock = threading.Lock()
        self._facts_at = float("-inf")

    # -- lifecycle -----------------------------------------------------------------

    def refresh_safety(self) -> None:
        """Re-read the host facts the safety rules protect (addresses, gateways, SSH peers)."""
        facts = self._table.call(hostfacts.gather, "host facts")
        self._safety = SafetyRules.build(never_block=self.config.never_block, own_addresses=facts.own_addresses,
                                         gateways=facts.gateways, ssh_peers=facts.ssh_peers)
        self._facts_at = time.monotonic()

    def start(self, listener_ports: Iterable[int]) -> list[BlockEvent]:
        """Create our table in one transaction, re-applying blocks still due (state file and kernel)."""
        self.refresh_safety()
        self._ports = tuple(sorted(set(listener_ports)))
        now = time.time_ns()
        wanted = {b.target: b for b in self._state.load(now)}
        if self._table.exists():
            for elem in self._table.list_elements():
                if elem.set.startswith("block") and elem.expires_s is not None:
                    known = wanted.get(elem.target)
                    expires = now + int(elem.expires_s * 1e9)
                    if known is None or known.expires_ns < expires:
                        wanted[elem.target] = ActiveBlock(elem.target, expires, float(elem.timeout_s or elem.expires_s),
                                                          now, known.rule_id if known else None,
                                                          known.alert_id if known else None)
        events: list[BlockEvent] = []
        keep: list[tuple[Network, ActiveBlock]] = []
        for block in wanted.values():
            net = parse_target(block.target, self.config.state_file)
            refusal = self._safety.refusal(net)
            if refusal:
                events.append(BlockEvent(Action.BLOCK_REFUSED, now, block.target, rule_id=block.rule_id,
                                         reason=f"not restored: {refusal}", alert_id=block.alert_id))
                continue
            keep.append((net, block))
        if self.config.dry_run or not self.config.enabled:
            return events
        self._table.create(scope=self.config.scope, ports=self._ports,
                           blocks=[(net, b.remaining_s(now)) for net, b in keep],
                           allow=[parse_target(t) for t in self.config.never_block])
        with self._lock:
            self._active = {b.target: b for _, b in keep}
            self._state.replace(list(self._active.values()))
        for _, b in keep:
            events.append(BlockEvent(Action.BLOCKED, now, b.target, ttl_s=round(b.remaining_s(now), 3),
                                     rule_id=b.rule_id, alert_id=b.alert_id, reason="restored at start"))
        return events

    def attach(self) -> None:
        """Join the table as it is (operators' CLI): keep its elements and scope.

        A missing table is created host-wide (the listener ports are not known
        here); the agent narrows it to its listeners when it starts."""
        self.refresh_safety()
        if not self._table.exists():
            self._table.create(scope="host", ports=())
        now = time.time_ns()
        with self._lock:
            self._active = {e.target: ActiveBlock(e.target, now + int((e.expires_s or 0) * 1e9),
                                                  float(e.timeout_s or 0), now)
                            for e in self._table.list_elements() if e.set.startswith("block")}

    def kernel_elements(self) -> list[KernelElement]:
        """Every element of our table as the kernel holds it now (a full dump)."""
        return self._table.list_elements()

    def set_ports(self, ports: Iterable[int]) -> None:
        new = tuple(sorted(set(ports)))
        if new != self._ports and not self.config.dry_run and self.config.enabled:
            self._table.set_ports(new)
        self._ports = new

    def close(self) -> None:
        """Leave the table and its blocks in place (they time out); the state file is current."""
        self._table.close()
        self._state.close()

    # -- decisions to kernel -----------------------------------------------------------

    def block(self, target: str, *, ttl_s: float | None, rule_id: str | None, alert_id: str | None,
              now_ns: int) -> BlockEvent:
        ttl = float(ttl_s if ttl_s is not None else self.config.default_ttl_s)

        def refused(text: str, reason: str) -> BlockEvent:
            log.warning("block of %s refused: %s", text, reason)
            return BlockEvent(Action.BLOCK_REFUSED, now_ns, text, ttl_s=ttl, rule_id=rule_id, reason=reason,
                              alert_id=alert_id)

        try:
            net = parse_target(target)
        except InputError as exc:
            return refused(target, exc.message)
        text = target_text(net)
        if not self.config.enabled:
            return refused(text, "enforcement is disabled")
        if ttl <= 0:
            return refused(text, f"ttl {ttl:g}s must be > 0")
        if time.monotonic() - self._facts_at > FACTS_MAX_AGE_S:
            self.refresh_safety()   # new SSH sessions, addresses or routes since the last look
        reason = self._safety.refusal(net)
        if reason:
            return refused(text, reason)
        with self._lock:
            current = self._active.get(text)
            is_new = current is None or current.expires_ns <= now_ns
            self._breaker.reset_if_quiet(now_ns)
            if is_new and not self._breaker.allow(now_ns):
                if self._breaker.trip():
                    self._alerts.append(self._breaker_alert(text, now_ns))
                return refused(text, f"circuit breaker open: more than {self.config.max_blocks_per_minute} new blocks in 60s")
            if self.config.dry_run:
                log.info("dry run: would block %s for %gs", text, ttl)
                return BlockEvent(Action.BLOCK_DRY_RUN, now_ns, text, ttl_s=ttl, rule_id=rule_id, alert_id=alert_id,
                                  reason="dry_run")
            self._table.add([(net, ttl)])
            block = ActiveBlock(text, now_ns + int(ttl * 1e9), ttl, now_ns, rule_id, alert_id)
            self._active[text] = block
        self._state.upsert([block])
        event = BlockEvent(Action.BLOCKED, now_ns, text, ttl_s=ttl, rule_id=rule_id, alert_id=alert_id,
                           reason=None if is_new else "refreshed")
        if self.config.kill_established != "none":
            error = self._table.call(lambda: end_sessions(self.config.kill_established, net, self._ports_for_kill()),
                                     "end sessions")
            if error:
                log.warning("block of %s: open sessions not ended: %s", text, error)
                event.reason = f"open sessions not ended: {error}"
        return event

    def _ports_for_kill(self) -> tuple[int, ...]:
        return self._ports if self.config.scope == "listeners" else ()

    def unblock(self, target: str, *, reason: str, now_ns: int) -> BlockEvent:
        net = parse_target(target)
        text = target_text(net)
        with self._lock:
            present = self.config.dry_run or self._table.delete([net])
            self._active.pop(text, None)
        self._state.remove([text])
        return BlockEvent(Action.UNBLOCKED, now_ns, text, reason=reason if present else f"{reason} (it had already expired)")

    def expire(self, now_ns: int) -> list[BlockEvent]:
        """UNBLOCKED events for blocks whose TTL ran out (the kernel removed them itself)."""
        with self._lock:
            done = [b for b in self._active.values() if b.expires_ns <= now_ns]
            for b in done:
                del self._active[b.target]
        if done:
            self._state.remove([b.target for b in done])
        return [BlockEvent(Action.UNBLOCKED, b.expires_ns, b.target, ttl_s=b.ttl_s, rule_id=b.rule_id,
                           alert_id=b.alert_id, reason="ttl expired") for b in done]

    def is_blocked(self, target: str, now_ns: int) -> bool:
        """Whether `target` is blocked now, as the kernel says: a block removed by someone
        else (`socat-monitor blocks remove`) is not, and is forgotten here."""
        net = parse_target(target)
        text = target_text(net)
        with self._lock:
            current = self._active.get(text)
        if current is None or current.expires_ns <= now_ns:
            return False
        if self._table.holds(net):
            return True
        with self._lock:
            self._active.pop(text, None)
        return False

    def active(self) -> list[ActiveBlock]:
        with self._lock:
            return sorted(self._active.values(), key=lambda b: b.expires_ns)

    def drain_alerts(self) -> list[Alert]:
        """Alerts raised by enforcement itself (circuit breaker trips), once each."""
        with self._lock:
            out, self._alerts = self._alerts, []
        return out

    def _breaker_alert(self, target: str, now_ns: int) -> Alert:
        limit = self.config.max_blocks_per_minute
        return new_alert("enforce.circuit_breaker",
                         description=f"more than {limit} new blocks in 60s: further blocks refused until it calms "
                                     f"down (first refused: {target})",
                         timestamp_ns=now_ns, observed=float(limit + 1), threshold=float(limit), window_s=60.0,
                         outcome=Outcome.FAILURE)


__all__ = ["EnforceConfig", "Enforcer", "ActiveBlock"]
