"""Synthetic connection streams with labelled anomalies, for detector tests and benchmarks.

Normal traffic: many sources with their own rates and a day-like sine
variation, connecting to a few listeners (accept, then close after a
log-normal duration), and a listener that only starts after the learning
period (watched from the stream's start, it has learned "idle": its first
clients are new sources, an alert that is right but not required). Injected incidents after the learning period:
floods, slow ramps, scans (many listeners and short sessions), new sources,
distributed floods and refused bursts (a refused connection is ACCEPTED then
DENIED, as capture reports it), each labelled with the rule that should flag it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

from monitor.ecs import HostInfo, iso_timestamp, render
from monitor.events import Action, ConnectionEvent, Listener

T0 = 1_767_225_600 * 10**9          # 2026-01-01T00:00:00Z
S = 10**9
LISTENERS = (8080, 8443, 5432)
LATE_LISTENER = 9000                # starts a sixth of the way after the learning period
LISTEN_IP = "127.0.0.1"
_ACTIONS = (Action.ACCEPTED, Action.CLOSED, Action.DENIED)


@dataclass
class Incident:
    rule: str
    key: str              # source IP, or "listener:<port>", or "<port>:<prefix>" for new_source
    start_ns: int
    end_ns: int
    required: bool = True   # False: an alert for it is right, but missing it is no miss

    def __post_init__(self) -> None:
        self.start_ns = self.start_ns // 1000 * 1000


@dataclass
class Stream:
    t: np.ndarray         # int64 ns, sorted
    kind: np.ndarray      # 0 accepted, 1 closed, 2 denied
    src: list[str]
    sport: np.ndarray
    lst: np.ndarray
    duration: np.ndarray  # ns for closes, -1 otherwise
    incidents: list[Incident] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)

    def events(self) -> list[ConnectionEvent]:
        out = []
        for i in range(len(self.t)):
            lst = int(self.lst[i])
            out.append(ConnectionEvent(
                action=_ACTIONS[int(self.kind[i])], timestamp_ns=int(self.t[i]), source_ip=self.src[i],
                source_port=int(self.sport[i]), destination_ip=LISTEN_IP, destination_port=lst,
                listener=Listener(LISTEN_IP, lst), duration_ns=int(self.duration[i]) if self.duration[i] >= 0 else None,
                refused=self.kind[i] == 2, id=f"ev-{i}",
            ))
        return out

    def write_ndjson(self, path, host: HostInfo = HostInfo("synth", "0" * 32), minimal: bool = False) -> None:
        with open(path, "wb") as fh:
            for ev in self.events():
                fh.write(orjson.dumps(minimal_doc(ev) if minimal else render(ev, host)) + b"\n")


def minimal_doc(ev: ConnectionEvent) -> dict:
    """Only the fields another tool would have."""
    return {"@timestamp": iso_timestamp(ev.timestamp_ns), "event": {"action": ev.action.value},
            "source": {"ip": ev.source_ip, "port": ev.source_port},
            "destination": {"ip": ev.destination_ip, "port": ev.destination_port}}


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.parts: list[tuple] = []

    def connections(self, times: np.ndarray, ip: str, lst, durations_s: np.ndarray | None = None,
                    denied: bool = False) -> None:
        n = len(times)
        if n == 0:
            return
        lst_arr = np.broadcast_to(np.asarray(lst, dtype=np.int64), (n,)).copy()
        sport = self.rng.integers(20000, 60000, n)
        if denied:      # socat accepts, sees the range= mismatch and closes at once
            dur = np.full(n, S // 1000, dtype=np.int64)
            self.parts.append((times, np.zeros(n, dtype=np.int64), [ip] * n, sport, lst_arr, np.full(n, -1)))
            self.parts.append((times + dur, np.full(n, 2), [ip] * n, sport, lst_arr, dur))
            return
        if durations_s is None:
            durations_s = self.rng.lognormal(np.log(8.0), 0.8, n)
        dur = (durations_s * S).astype(np.int64)
        self.parts.append((times, np.zeros(n, dtype=np.int64), [ip] * n, sport, lst_arr, np.full(n, -1)))
        self.parts.append((times + dur, np.ones(n, dtype=np.int64), [ip] * n, sport, lst_arr, dur))

    def build(self, incidents: list[Incident]) -> Stream:
        t = np.concatenate([p[0] for p in self.parts]).astype(np.int64)
        kind = np.concatenate([p[1] for p in self.parts]).astype(np.int8)
        src = [ip for p in self.parts for ip in p[2]]
        sport = np.concatenate([p[3] for p in self.parts])
        lst = np.concatenate([p[4] for p in self.parts])
        dur = np.concatenate([p[5] for p in self.parts]).astype(np.int64)
        order = np.argsort(t, kind="stable")
        t = t // 1000 * 1000   # files carry microseconds
        return Stream(t[order], kind[order], [src[i] for i in order], sport[order], lst[order], dur[order], incidents)


def poisson_times(rng, rate_per_s: float, start_ns: int, end_ns: int, period_s: float = 5400.0,
                  amplitude: float = 0.5, phase: float = 0.0) -> np.ndarray:
    """Event times of a Poisson process with a sine-modulated rate (thinning)."""
    span = (end_ns - start_ns) / S
    peak = rate_per_s * (1 + amplitude)
    n = rng.poisson(peak * span)
    times = np.sort(rng.uniform(0, span, n))
    keep = rng.uniform(0, 1, n) < (1 + amplitude * np.sin(2 * np.pi * times / period_s + phase)) / (1 + amplitude)
    return start_ns + (times[keep] * S).astype(np.int64)


def normal_sources(n: int, seed: int = 1) -> list[tuple[str, tuple[int, ...], float]]:
    """(ip, listeners it uses, connections per second) of the regular clients."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ip = f"10.1.{i % 8}.{10 + i // 8}"
        home = LISTENERS[i % len(LISTENERS)]
        uses = (home,) if i % 5 else (home, LISTENERS[(i + 1) % len(LISTENERS)])
        rate = float(np.clip(rng.lognormal(np.log(1 / 30), 1.0), 1 / 600, 1.0))
        out.append((ip, uses, rate))
    return out


def generate(hours: float = 3.0, learn_s: float = 3600.0, sources: int = 200, seed: int = 7,
             incidents: bool = True, late_listener: bool = True) -> Stream:
    """The labelled test stream: normal traffic for `hours`, incidents after learning."""
    rng = np.random.default_rng(seed)
    b = _Builder(seed)
    end = T0 + int(hours * 3600 * S)
    regulars = normal_sources(sources, seed)
    for ip, uses, rate in regulars:
        for lst in uses:
            b.connections(poisson_times(rng, rate / len(uses), T0, end, phase=rng.uniform(0, 0.3)), ip, lst)
    found: list[Incident] = []
    learn_end = T0 + int(learn_s * S)
    if late_listener:
        _late_listener(b, rng, found, learn_end + (end - learn_end) // 6, learn_s, end, incidents)
    if incidents:
        _inject(b, rng, found, learn_end, end, regulars)
    return b.build(found)


def _late_listener(b: _Builder, rng, found: list[Incident], start: int, learn_s: float, end: int,
                   incidents: bool) -> None:
    """A relay started after the learning period, with 40 clients of its own (unseen /24s):
    they are no new sources. Once it has learned: a flood and a new source on it."""
    regulars = [(f"10.2.{i % 8}.{10 + i // 8}", float(np.clip(rng.lognormal(np.log(1 / 30), 1.0), 1 / 300, 1.0)))
                for i in range(40)]
    for ip, rate in regulars:
        times = poisson_times(rng, rate, start, end)
        b.connections(times, ip, LATE_LISTENER)
        if len(times):   # replayed, it learned "idle" from the stream's start: its first clients are new
            found.append(Incident("anomaly.new_source", f"{LATE_LISTENER}:{ip.rsplit('.', 1)[0]}.0/24",
                                  int(times[0]), int(times[0]) + S, required=False))
    learned = start + int(learn_s * S)
    if not incidents or learned + 60 * S >= end:
        return
    ip = regulars[3][0]
    at = learned + 20 * S
    b.connections(at + np.sort(rng.uniform(0, 4, 200) * S).astype(np.int64), ip, LATE_LISTENER)
    found.append(Incident("anomaly.source_rate", ip, at, at + 14 * S))
    found.append(Incident("anomaly.listener_rate", f"listener:{LATE_LISTENER}", at, at + 14 * S, required=False))
    at = learned + 40 * S
    b.connections(at + np.sort(rng.uniform(0, 10, 3) * S).astype(np.int64), "172.20.9.7", LATE_LISTENER)
    found.append(Incident("anomaly.new_source", f"{LATE_LISTENER}:172.20.9.0/24", at, at + 11 * S))


def _inject(b: _Builder, rng, found: list[Incident], start: int, end: int, regulars) -> None:
    span = end - start
    # a benign busy spell (not an incident): every regular client 1.8x busier for 15 minutes
    busy = start + span // 3
    for ip, uses, rate in regulars:
        for lst in uses:
            b.connections(poisson_times(rng, 0.8 * rate / len(uses), busy, busy + 900 * S, amplitude=0.0), ip, lst)
    slots = iter(np.linspace(start + 60 * S, end - 300 * S, 40).astype(np.int64))
    # floods from known sources: 50 connections/s for 4 s
    for k in range(5):
        ip, uses, _ = regulars[k * 7]
        at = int(next(slots))
        b.connections(at + np.sort(rng.uniform(0, 4, 200) * S).astype(np.int64), ip, uses[0])
        found.append(Incident("anomaly.source_rate", ip, at, at + 14 * S))
        found.append(Incident("anomaly.listener_rate", f"listener:{uses[0]}", at, at + 14 * S, required=False))
    # slow ramps: a known source climbs quadratically to ~6/s over 10 minutes
    for k in range(3):
        ip, uses, rate = regulars[k * 11 + 3]
        at = int(next(slots))
        t = np.sort(rng.uniform(0, 600, 4000))
        keep = rng.uniform(0, 1, 4000) < (t / 600) ** 2
        b.connections(at + (t[keep] * S).astype(np.int64), ip, uses[0])
        found.append(Incident("anomaly.source_rate", ip, at, at + 610 * S))
        found.append(Incident("anomaly.listener_rate", f"listener:{uses[0]}", at, at + 610 * S, required=False))
    # scans: new hosts touch every listener with short connections
    for k in range(4):
        ip = f"198.51.{100 + k}.20"
        at = int(next(slots))
        t = at + np.sort(rng.uniform(0, 30, 45) * S).astype(np.int64)
        lst = np.array([LISTENERS[j % len(LISTENERS)] for j in range(45)])
        b.connections(t, ip, lst, durations_s=rng.uniform(0.001, 0.2, 45))
        found.append(Incident("anomaly.scan", ip, at, at + 90 * S))
        for port in LISTENERS:
            found.append(Incident("anomaly.new_source", f"{port}:198.51.{100 + k}.0/24", at, at + 31 * S))
    # a slow scan: one connection per listener, a few seconds apart
    ip = "198.51.110.9"
    at = int(next(slots))
    b.connections(at + np.array([0, 7, 15]) * S, ip, np.array(LISTENERS), durations_s=np.array([0.05, 0.05, 0.05]))
    found.append(Incident("anomaly.scan", ip, at, at + 20 * S))
    for port in LISTENERS:
        found.append(Incident("anomaly.new_source", f"{port}:198.51.110.0/24", at, at + 20 * S))
    # new sources: a few ordinary connections from hosts in unseen /24s
    for k in range(8):
        ip = f"172.16.{40 + k}.7"
        at = int(next(slots))
        lst = LISTENERS[k % len(LISTENERS)]
        b.connections(at + np.sort(rng.uniform(0, 120, 4) * S).astype(np.int64), ip, lst)
        found.append(Incident("anomaly.new_source", f"{lst}:172.16.{40 + k}.0/24", at, at + 121 * S))
    # new hosts inside known /24s are not new sources (no incident)
    for k in range(5):
        at = int(next(slots))
        b.connections(at + np.sort(rng.uniform(0, 60, 3) * S).astype(np.int64), f"10.1.{k}.250", LISTENERS[0])
    # distributed floods: 300 hosts of one unseen /24 and one /16, 3 connections each within 10 s
    for k in range(2):
        at = int(next(slots))
        port = LISTENERS[k]
        for h in range(300):
            ip = f"203.0.{113 + k}.{h % 250 + 1}" if h < 250 else f"203.0.{120 + k}.{h - 249}"
            b.connections(at + np.sort(rng.uniform(0, 10, 3) * S).astype(np.int64), ip, port,
                          durations_s=rng.uniform(2, 5, 3))
        found.append(Incident("anomaly.listener_rate", f"listener:{port}", at, at + 20 * S))
        found.append(Incident("anomaly.new_source", f"{port}:203.0.{113 + k}.0/24", at, at + 11 * S))
        found.append(Incident("anomaly.new_source", f"{port}:203.0.{120 + k}.0/24", at, at + 11 * S))
    # refused bursts: a known source hammering a listener whose range= excludes it
    for k in range(4):
        ip, uses, _ = regulars[k * 13 + 5]
        at = int(next(slots))
        b.connections(at + np.sort(rng.uniform(0, 40, 25) * S).astype(np.int64), ip, uses[0], denied=True)
        found.append(Incident("anomaly.refused_burst", ip, at, at + 41 * S))
    assert span > 0


IDLE_LISTENERS = tuple(range(8001, 8011))   # ten relays; only 8001 has a (benign) client
BENIGN = "10.0.0.5"
SCANNER = "198.51.100.7"
FLOODER = "203.0.113.9"
ROTATING = "2001:db8:bad:1::/64"


def attack_stream(scenario: str, learn_s: float = 300.0, seed: int = 5) -> Stream:
    """Ten relays watched from T0, idle but one a benign client trickles to (2/s), and attacks:

    - `idle`: after learning, a connect scan of all ten relays, then a flood through an idle one;
    - `early`: the same in the agent's first minute (relays first seen under attack);
    - `poison`: attackers present from the start of learning, ramping: one crosses the floor while
      learning, one stays just under it until learning ends and then climbs to a flood;
    - `rotate`: the scan and the flood from an IPv6 /64, every connection from another address.
    """
    rng = np.random.default_rng(seed)
    b = _Builder(seed)
    learn_end = T0 + int(learn_s * S)
    end = learn_end + 600 * S
    b.connections(T0 + np.arange(0, (end - T0) // (S // 2)) * (S // 2), BENIGN, IDLE_LISTENERS[0],
                  durations_s=np.full((end - T0) // (S // 2), 0.05))    # short requests: no scan
    found: list[Incident] = []
    if scenario == "poison":
        _poisoners(b, rng, found, learn_end, end)
        return b.build(found)
    at = T0 + 20 * S if scenario == "early" else learn_end + 60 * S
    if scenario == "rotate":
        hosts = [f"2001:db8:bad:1:{rng.integers(1, 65535):x}::{rng.integers(1, 65535):x}" for _ in range(2010)]
        key, scanner, flooder = ROTATING, hosts[:10], hosts[10:]
    else:
        key, scanner, flooder = None, [SCANNER] * 10, [FLOODER] * 2000
    for k, port in enumerate(IDLE_LISTENERS):     # nmap -sT: one short connection per port, 10 ms apart
        b.connections(np.array([at + k * S // 100]), scanner[k], port, durations_s=np.array([0.001]))
    found.append(Incident("anomaly.scan", key or SCANNER, at, at + 2 * S))
    flood_at = at + 30 * S
    times = flood_at + np.arange(2000) * (S // 100)        # ab: 100 connections/s for 20 s
    for k in range(2000):
        b.connections(times[k: k + 1], flooder[k], IDLE_LISTENERS[3], durations_s=np.array([0.005]))
    found.append(Incident("anomaly.source_rate", key or FLOODER, flood_at, flood_at + 2 * S))
    found.append(Incident("anomaly.listener_rate", f"listener:{IDLE_LISTENERS[3]}", flood_at, flood_at + 20 * S,
                          required=False))
    found.append(Incident("anomaly.scan", key or FLOODER, flood_at, flood_at + 20 * S, required=False))  # short sessions
    if scenario != "early":     # after learning, an idle relay's every client is new
        for ip, port, t in [(scanner[k], port, at) for k, port in enumerate(IDLE_LISTENERS)] + \
                           [(flooder[0], IDLE_LISTENERS[3], flood_at)]:
            found.append(Incident("anomaly.new_source", f"{port}:{_prefix(ip)}", t, t + 20 * S,
                                  required=key is None or ip != flooder[0]))   # the /64 scanned 8004 already
    return b.build(found)


def _poisoners(b: _Builder, rng, found: list[Incident], learn_end: int, end: int) -> None:
    """From T0, two sources on relay 8002 whose rate climbs linearly: 'fast' from 0.2/s to 20/s over
    the learning period (it reaches the floor of 3/s while learning); 'slow' from 0.2/s to 2.5/s at
    the end of learning (under the floor), then on to 20/s within five minutes."""
    for ip, top_s, top_rate in (("192.0.2.50", (learn_end - T0) / S, 20.0),
                                ("192.0.2.60", (learn_end - T0) / S, 2.5)):
        span = top_s
        t, rate = 0.0, 0.2
        times = []
        while T0 + t * S < end:
            times.append(T0 + int(t * S))
            rate = 0.2 + (top_rate - 0.2) * min(t / span, 1.0) if t < span else \
                min(20.0, top_rate + (20.0 - top_rate) * (t - span) / 300.0)
            t += 1.0 / rate
        b.connections(np.array(times, dtype=np.int64), ip, IDLE_LISTENERS[1], durations_s=np.full(len(times), 2.0))
    found.append(Incident("anomaly.source_rate", "192.0.2.50", T0, end))
    found.append(Incident("anomaly.source_rate", "192.0.2.60", learn_end, end))
    found.append(Incident("anomaly.listener_rate", f"listener:{IDLE_LISTENERS[1]}", T0, end, required=False))


def _prefix(ip: str) -> str:
    import ipaddress
    return str(ipaddress.ip_network(f"{ip}/{64 if ':' in ip else 24}", strict=False))
