"""The enforcer: turns block decisions into nftables set elements, safely.

It owns the order of checks for every block (target valid, not protected,
circuit breaker closed, dry run or real), keeps the active blocks and the
state file in step with the kernel, and reports every change or refusal as
a `BlockEvent`. It never decides who is bad.

After `start` nothing it does ends the agent: a watchdog thread looks at
the table every `WATCH_INTERVAL_S` and rebuilds it (one transaction, every
active block with its remaining TTL) when someone removed or changed it;
kernel errors become refused blocks and `PipelineError`s (`drain_errors`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..addresses import Network, parse_target, target_text
from ..errors import EnvironmentProblem, InputError
from ..events import Action, Alert, BlockEvent, DropEvent, Listener, Outcome, PipelineError
from ..host import facts as hostfacts
from ..metrics import Sample
from ..settings import setting
from .netns import NetnsWorker, require_cap_net_admin
from .nft import SCOPES, DropListener, DropReading, KernelElement, Listing, NftTable, Ownership, check_table_name
from .safety import CircuitBreaker, SafetyRules
from ..rules import new_alert
from .sessions import MODES, end_sessions
from .journal import CLOSE_WAIT_S, JournalWriter
from .state import ActiveBlock, StateFile

log = logging.getLogger(__name__)

FACTS_MAX_AGE_S = 10.0   # host facts (addresses, gateways, SSH peers) older than this are re-read (by the
                         # watchdog in the agent, before a block in the CLI)
WATCH_INTERVAL_S = 0.5   # how often the watchdog looks at the table (a removed table is back within ~1 s)
LISTING_MAX_AGE_S = 5.0  # counters listed for metrics are reused this long


def check_networks(targets: list[str]) -> None:
    """ValueError naming the first entry that is not an address or CIDR."""
    for text in targets:
        try:
            parse_target(text)
        except InputError:
            raise ValueError(f"{text!r} is not an IP address or CIDR (without host bits)") from None


@dataclass
class EnforceConfig:
    enabled: bool = setting(True, live=False)
    dry_run: bool = setting(False, live=False)
    default_ttl_s: float = setting(600, above=0)
    scope: str = setting("listeners", choices=SCOPES, live=False)   # listeners: their ports only; host: every port
    never_block: tuple[str, ...] = setting((), check=check_networks)
    max_blocks_per_minute: int = setting(60, minimum=1)
    kill_established: str = setting("none", choices=MODES)
    state_file: str = setting("/var/lib/socat-monitor/blocks.json", live=False)
    netns: str | None = setting(None, live=False)
    namespaces: tuple[str, ...] = setting((), live=False, excludes="netns")   # several, one table and journal each
    table: str = setting("socat_monitor", check=check_table_name, live=False)


@dataclass(frozen=True, slots=True)
class DropTotal:
    """What one drop listener's rules dropped (or, dry run, counted) since the table was made, and from
    how many sources its map remembers now."""

    listener: str
    port: int
    packets: int
    sources: int
    dry_run: bool
    netns: str | None = None     # the namespace of the rules (`ip netns` name; None: the agent's own)


class Enforcer:
    def __init__(self, config: EnforceConfig) -> None:
        self.config = config
        self._safety = SafetyRules.build(never_block=config.never_block)
        if config.enabled and not config.dry_run:
            require_cap_net_admin("enforce")
        self._table = NftTable(config.table, config.netns)
        self._facts = NetnsWorker(config.netns, name="enforce-facts")   # slow /proc reads stay off the nft worker
        self._state = StateFile(config.state_file)
        self._journal = JournalWriter(self._state, self._journal_failed)
        self._breaker = CircuitBreaker(config.max_blocks_per_minute)
        self._active: dict[str, ActiveBlock] = {}
        self._ports: tuple[int, ...] = ()
        self._drops: tuple[DropListener, ...] = ()
        self._dropped: dict[tuple[str, str], int] = {}   # (listener name, source) -> packets last reported
        self._drop_totals: tuple[DropTotal, ...] = ()   # as of the last read of the dropped maps
        self._alerts: list[Alert] = []
        self._errors: list[PipelineError] = []
        self._lock = threading.RLock()
        self._facts_at = float("-inf")
        self._owner: Ownership | None = None      # the table as we last made it
        self._refresh_in_place = True
        self._listing: tuple[float, Listing] | None = None
        self._reported: dict[str, int] = {}       # target -> dropped packets in its last BLOCK_COUNTERS event
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.rebuilds = 0
        self.errors = 0

    # -- lifecycle -----------------------------------------------------------------

    def refresh_safety(self) -> None:
        """Re-read the host facts the safety rules protect (addresses, gateways, SSH peers)."""
        facts = self._facts.call(hostfacts.gather, self._table.timeout_s, "host facts")
        self._safety = SafetyRules.build(never_block=self.config.never_block, own_addresses=facts.own_addresses,
                                         gateways=facts.gateways, ssh_peers=facts.ssh_peers)
        self._facts_at = time.monotonic()

    def start(self, listener_ports: Iterable[int], drops: Sequence[DropListener] = ()) -> list[BlockEvent]:
        """Create our table in one transaction, re-applying blocks still due (state file and kernel)."""
        self.refresh_safety()
        self._ports = tuple(sorted(set(listener_ports)))
        self._drops = tuple(drops)
        if not self._journal.flush(self._table.timeout_s):   # our own changes still queued are read too
            self._error(f"the block journal {self.config.state_file} did not take the last changes within "
                        f"{self._table.timeout_s:g}s: the blocks are restored from what it and the kernel hold")
        now = time.time_ns()
        events, keep = self._restorable(now)
        if self._state.bad_lines:
            self._error(f"{self._state.bad_lines} unreadable line(s) of {self.config.state_file} set aside in "
                        f"{self.config.state_file}.bad (a write torn by a crash, or damage); the other blocks are "
                        "restored", count=self._state.bad_lines)
        if self.config.dry_run and self.config.enabled and self._drops:
            self._start_counting(keep, now)
        if self.config.dry_run or not self.config.enabled:
            return events
        with self._lock:
            self._active = {b.target: b for _, b in keep}
            self._create(now)
            self._state.replace(list(self._active.values()))
        self._refresh_in_place = self._table.refresh_in_place()
        log.info("enforce: re-adding an element %s its timeout on this kernel",
                 "resets" if self._refresh_in_place else "does not reset (refreshes delete and re-add)")
        self._watchdog = threading.Thread(target=self._watch, name="enforce-watchdog", daemon=True)
        self._watchdog.start()
        for _, b in keep:
            events.append(BlockEvent(Action.BLOCKED, now, b.target, ttl_s=round(b.remaining_s(now), 3),
                                     rule_id=b.rule_id, alert_id=b.alert_id, reason="restored at start"))
        return events

    def _restorable(self, now: int) -> tuple[list[BlockEvent], list[tuple[Network, ActiveBlock]]]:
        """The blocks still due (journal and kernel) the safety rules allow, and a refusal for each other."""
        wanted = {b.target: b for b in self._state.load(now)}
        if self._table.require_ours().exists:
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
        return events, keep

    def _start_counting(self, keep: list[tuple[Network, ActiveBlock]], now_ns: int) -> None:
        """--dry-run with drop listeners: the table is made with their rules count-only ("would drop"),
        and the blocks it already held are kept as they were; nothing new is blocked."""
        try:
            with self._lock:
                self._active = {b.target: b for _, b in keep}
                self._create(now_ns)
        except EnvironmentProblem as exc:
            self._error(f"--dry-run: the drop listeners' count-only rules were not installed: {exc}")
            return
        self._watchdog = threading.Thread(target=self._watch, name="enforce-watchdog", daemon=True)
        self._watchdog.start()

    def _create(self, now_ns: int) -> None:
        """(Re)make our table with every active block and its remaining TTL, in one transaction."""
        blocks = [(parse_target(b.target), b.remaining_s(now_ns)) for b in self._active.values()
                  if b.expires_ns > now_ns]
        self._owner = self._table.create(scope=self.config.scope, ports=self._ports, blocks=blocks,
                                         allow=[parse_target(t) for t in self.config.never_block],
                                         drops=self._drops, count_only=self.config.dry_run)

    # -- self-healing -----------------------------------------------------------------

    def _watch(self) -> None:
        """Every WATCH_INTERVAL_S: the table check; host facts and counters re-read off the block path."""
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.heal()
                if time.monotonic() - self._facts_at > FACTS_MAX_AGE_S:
                    self._facts_at = time.monotonic()   # a read that times out is not queued again at once
                    self.refresh_safety()
                if self._listing is None or time.monotonic() - self._listing[0] > LISTING_MAX_AGE_S:
                    self._relist()
            except Exception as exc:   # the watchdog reports and goes on; it never ends the agent
                self._error(f"table check failed: {exc}")

    def heal(self) -> bool:
        """Rebuild our table if someone removed or changed it since we made it; True if rebuilt."""
        with self._lock:
            now = self._table.ownership()
            if self._owner is not None and now.exists and now.handle == self._owner.handle \
                    and now.shape == self._owner.shape:
                return False
            if now.exists and not now.ours:
                self._error(f"table inet {self.config.table} was replaced by one socat-monitor did not make: "
                            "left alone, blocks are NOT enforced until it is removed")
                self._owner = now   # reported once per change
                return False
            self._rebuild("removed" if not now.exists else "changed")
            return True

    def _rebuild(self, how: str) -> None:
        with self._lock:
            self._create(time.time_ns())
            self.rebuilds += 1
            self._error(f"table inet {self.config.table} was {how} by someone else: rebuilt with "
                        f"{len(self._active)} active blocks", count=max(len(self._active), 1))

    def _journal_failed(self, exc: OSError) -> None:
        """A disk fault of the journal's writer: reported, never fatal (the kernel holds the change)."""
        self._error(f"cannot write the block journal {self.config.state_file}: {exc.strerror or exc} "
                    "(the kernel holds the change; a restart of the agent restores it from the kernel, "
                    "a reboot of the host would not)")

    def flush_journal(self, timeout_s: float) -> bool:
        """Wait until every change so far is in the block journal, synced; False if not within `timeout_s`."""
        return self._journal.flush(timeout_s)

    def _error(self, message: str, count: int = 1) -> None:
        log.error("enforce: %s", message)
        with self._lock:
            self.errors += 1
            self._errors.append(PipelineError("enforce", message, time.time_ns(), count=count))

    def drain_errors(self) -> list[PipelineError]:
        """Enforcement faults since the last call (table rebuilt, kernel errors), once each."""
        with self._lock:
            out, self._errors = self._errors, []
        return out

    def attach(self) -> None:
        """Join the table as it is (operators' CLI): keep its elements and scope.

        A missing table is created host-wide (the listener ports are not known
        here); the agent narrows it to its listeners when it starts."""
        self.refresh_safety()
        if not self._table.require_ours().exists:
            self._table.create(scope="host", ports=())
        now = time.time_ns()
        with self._lock:
            self._active = {e.target: ActiveBlock(e.target, now + int((e.expires_s or 0) * 1e9),
                                                  float(e.timeout_s or 0), now)
                            for e in self._table.list_elements() if e.set.startswith("block")}

    def kernel_elements(self) -> list[KernelElement]:
        """Every element of our table as the kernel holds it now (a full dump)."""
        return self._table.list_elements()

    def listing(self) -> Listing:
        """Elements with their counters and the per-set drop counters, about LISTING_MAX_AGE_S old at most.

        With the watchdog running, it lists them (a full dump: seconds with
        100,000 blocks) and this returns its last listing without waiting."""
        cached = self._listing
        if self._watchdog is None and (cached is None or time.monotonic() - cached[0] > LISTING_MAX_AGE_S):
            self._relist()
            cached = self._listing
        return cached[1] if cached else Listing([], [])

    def _relist(self) -> None:
        try:
            self._listing = (time.monotonic(), self._table.listing())
        except EnvironmentProblem as exc:   # e.g. the table is being rebuilt: the last figures stand
            log.warning("enforce: counters not listed: %s", exc)

    def samples(self) -> list[Sample]:
        """Health and per-set drop counters (few, fixed names: fit for the heartbeat)."""
        listing = self.listing()
        out = [Sample("enforce_dropped_packets_total", "counter", "New connections dropped, by block set.",
                      c.packets, (("set", c.set),)) for c in listing.counters]
        out += [Sample("enforce_dropped_bytes_total", "counter", "Bytes of the dropped packets, by block set.",
                       c.bytes, (("set", c.set),)) for c in listing.counters]
        return out + [
            Sample("enforce_table_rebuilds_total", "counter", "Times our table was found removed or changed "
                   "and rebuilt.", self.rebuilds),
            Sample("enforce_netlink_retries_total", "counter", "Kernel writes tried again after a transient error.",
                   self.retries),
            Sample("enforce_errors_total", "counter", "Enforcement faults reported as pipeline errors.", self.errors),
        ]

    def counter_events(self, now_ns: int) -> list[BlockEvent]:
        """A BLOCK_COUNTERS event for each active block that dropped more since the last call (periodic document)."""
        with self._lock:
            active = dict(self._active)
        out = []
        for e in self.listing().elements:
            block = active.get(e.target)
            if block is None or e.packets is None or self._reported.get(e.target) == e.packets:
                continue
            self._reported[e.target] = e.packets
            out.append(BlockEvent(Action.BLOCK_COUNTERS, now_ns, e.target, ttl_s=block.ttl_s, rule_id=block.rule_id,
                                  alert_id=block.alert_id, dropped_packets=e.packets, dropped_bytes=e.bytes))
        self._reported = {t: n for t, n in self._reported.items() if t in active}
        return out

    def drop_events(self, now_ns: int) -> list[DropEvent]:
        """CONNECTION_DROPPED for each source a drop rule dropped for the first time, DROP_COUNTERS for one that
        was dropped again since the last call (read each second: one listing of the dropped sets)."""
        with self._lock:
            drops = self._drops
        if not drops or not self.config.enabled or self._owner is None:
            return []
        try:
            reading = self._table.dropped(drops)
        except EnvironmentProblem as exc:
            self._error(f"dropped sources not read (the table check rebuilds a table that is gone): {exc}")
            return []
        self._drop_totals = self._totals(drops, reading)
        out = []
        seen: dict[tuple[str, str], int] = {}
        for dropped in reading.sources:
            listener = drops[dropped.index]
            key = (listener.name, dropped.source)
            seen[key] = dropped.packets
            last = self._dropped.get(key)
            if last == dropped.packets:
                continue
            out.append(DropEvent(Action.CONNECTION_DROPPED if last is None else Action.DROP_COUNTERS, now_ns,
                                 dropped.source, Listener(listener.address or "::", listener.port, listener.name),
                                 dropped.packets, dry_run=self.config.dry_run, source_port=dropped.port,
                                 netns=self.config.netns))
        self._dropped = seen
        return out

    def _totals(self, drops: Sequence[DropListener], reading: DropReading) -> tuple[DropTotal, ...]:
        sources = [0] * len(drops)
        for dropped in reading.sources:
            sources[dropped.index] += 1
        return tuple(DropTotal(d.name, d.port, reading.packets.get(i, 0), sources[i], self.config.dry_run,
                               self.config.netns) for i, d in enumerate(drops))

    def drop_totals(self) -> tuple[DropTotal, ...]:
        """Each drop listener's counts as of the last `drop_events` (read every second by the agent)."""
        return self._drop_totals

    def drop_samples(self) -> list[Sample]:
        """Per drop listener: SYNs its rules dropped (counted, dry run) and the sources it remembers."""
        totals = self._drop_totals
        return [Sample("enforce_listener_dropped_packets_total", "counter", "New connections (SYNs) a drop "
                       "listener's kernel rule dropped (dry run: would have dropped), by listener.", t.packets,
                       (("listener", t.listener),)) for t in totals] + \
               [Sample("enforce_listener_dropped_sources", "gauge", "Sources a drop listener's rule dropped in "
                       "the last hour (its dropped map), by listener.", t.sources, (("listener", t.listener),))
                for t in totals]

    def block_samples(self) -> list[Sample]:
        """Packets and bytes dropped by each active block (one series per target: Prometheus, not the heartbeat)."""
        elements = [e for e in self.listing().elements if e.set.startswith("block") and e.packets is not None]
        return [Sample("enforce_block_dropped_packets", "counter", "Packets dropped by one active block.",
                       e.packets, (("target", e.target),)) for e in elements] + \
               [Sample("enforce_block_dropped_bytes", "counter", "Bytes dropped by one active block.",
                       e.bytes, (("target", e.target),)) for e in elements]

    def set_ports(self, ports: Iterable[int]) -> None:
        new = tuple(sorted(set(ports)))
        old, self._ports = self._ports, new    # a rebuild uses the new ports even if this write fails
        if new != old and not self.config.dry_run and self.config.enabled:
            try:
                self._table.set_ports(new)
            except EnvironmentProblem as exc:
                self._error(f"listener ports not updated (the table check will rebuild it): {exc}")

    def set_drops(self, drops: Sequence[DropListener]) -> None:
        """Put the policy's drop listeners in force: the same listeners get new allow sets in one transaction,
        other changes rebuild the table (one transaction too, blocks kept)."""
        new = tuple(drops)
        with self._lock:
            old, self._drops = self._drops, new
            if not new:
                self._drop_totals = ()
            if new and self.config.dry_run and self.config.enabled and self._owner is None:
                self._count_from_now()
                return
            if new == old or not self.config.enabled or self._owner is None:
                return
            try:
                if [(d.name, d.port, d.address) for d in new] == [(d.name, d.port, d.address) for d in old]:
                    self._table.set_drop_sources(new)
                else:
                    self._create(time.time_ns())
            except EnvironmentProblem as exc:
                self._error(f"drop listeners not updated, the previous ones stay in force: {exc}")

    def _count_from_now(self) -> None:
        """--dry-run, a reload brought the first drop listener: its count-only rules are installed now."""
        now = time.time_ns()
        try:
            keep = self._restorable(now)[1]
        except (EnvironmentProblem, InputError) as exc:
            self._error(f"--dry-run: the drop listeners' count-only rules were not installed: {exc}")
            return
        self._start_counting(keep, now)

    @property
    def retries(self) -> int:
        """Kernel writes tried again after a transient error."""
        return self._table.retries

    def reconfigure(self, config: EnforceConfig, now_ns: int) -> list[BlockEvent]:
        """Apply the settings a reload may change, never_block first; blocks it now protects are lifted."""
        self.config = config
        self.refresh_safety()
        if config.enabled and not config.dry_run:
            self._table.set_allow([parse_target(t) for t in config.never_block])
        lifted = [self.unblock(b.target, reason=f"protected now: {reason}", now_ns=now_ns)
                  for b in self.active() if (reason := self._safety.refusal(parse_target(b.target)))]
        with self._lock:
            self._breaker.limit = config.max_blocks_per_minute
        return lifted

    def close(self) -> None:
        """Leave the table and its blocks in place (they time out); the state file is made current."""
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5.0)
        if not self._journal.close():
            self._error(f"the block journal {self.config.state_file} was not written within {CLOSE_WAIT_S:g}s: "
                        "its last changes may be missing (the kernel holds them)")
        self._table.close()
        self._facts.close()
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
        if time.monotonic() - self._facts_at > FACTS_MAX_AGE_S and self._watchdog is None:
            try:
                self.refresh_safety()   # new SSH sessions, addresses or routes since the last look
            except EnvironmentProblem as exc:
                return refused(text, f"host facts unreadable, so the safety rules cannot be checked: {exc}")
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
            block = ActiveBlock(text, now_ns + int(ttl * 1e9), ttl, now_ns, rule_id, alert_id)
            problem = self._write(net, block, is_new)
            if problem:
                self._error(f"block of {text} not applied: {problem}")
                return refused(text, f"nftables: {problem}")
            self._journal.record([block])   # queued under the lock: the journal has changes in the kernel's order
        event = BlockEvent(Action.BLOCKED, now_ns, text, ttl_s=ttl, rule_id=rule_id, alert_id=alert_id,
                           reason=None if is_new else "refreshed")
        if self.config.kill_established != "none":
            try:
                error = self._table.call(lambda: end_sessions(self.config.kill_established, net,
                                                              self._ports_for_kill()), "end sessions")
            except EnvironmentProblem as exc:
                error = exc.message
            if error:
                log.warning("block of %s: open sessions not ended: %s", text, error)
                event.reason = f"open sessions not ended: {error}"
        return event

    def _write(self, net: Network, block: ActiveBlock, is_new: bool) -> str | None:
        """Put one block in the kernel (lock held); None when done, else what went wrong.

        A missing table is rebuilt at once with this block in it; a refresh on
        a kernel that keeps old expiries deletes and re-adds in one batch."""
        try:
            if is_new or self._refresh_in_place:
                self._table.add([(net, block.ttl_s)])
            else:
                self._table.replace([(net, block.ttl_s)])
        except FileNotFoundError:
            self._active[block.target] = block
            try:
                self._rebuild("removed")
            except Exception as exc:   # InputError (a foreign table took the name), EnvironmentProblem
                del self._active[block.target]
                return f"table inet {self.config.table} is gone and cannot be rebuilt: {exc}"
        except EnvironmentProblem as exc:
            return exc.message
        self._active[block.target] = block
        return None

    def _ports_for_kill(self) -> tuple[int, ...]:
        return self._ports if self.config.scope == "listeners" else ()

    def unblock(self, target: str, *, reason: str, now_ns: int) -> BlockEvent:
        net = parse_target(target)
        text = target_text(net)
        with self._lock:
            present = self.config.dry_run or self._table.delete([net])
            self._active.pop(text, None)
            self._journal.record([text])
        return BlockEvent(Action.UNBLOCKED, now_ns, text, reason=reason if present else f"{reason} (it had already expired)")

    def expire(self, now_ns: int) -> list[BlockEvent]:
        """UNBLOCKED events for blocks whose TTL ran out (the kernel removed them itself)."""
        with self._lock:
            done = [b for b in self._active.values() if b.expires_ns <= now_ns]
            for b in done:
                del self._active[b.target]
            self._journal.record([b.target for b in done])
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
        try:
            if self._table.holds(net):
                return True
        except (EnvironmentProblem, OSError) as exc:   # cannot ask the kernel now: assume it holds
            self._error(f"cannot tell whether {text} is still blocked: {exc}")
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
