#!/usr/bin/env bash
# Soak test: the demo lab with steady traffic for a bounded time, printing the
# agent's memory (RSS) at start, every minute and at the end.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/soak.sh [--minutes N] [--rate R] [--output DIR]

Builds the demo lab (scripts/demo/lab.sh: namespaces smdemo-*, removed on exit),
starts the agent on it, and for N minutes (default 10, at most 120) drives
steady traffic: a fourth relay (pool-relay, :8446) from a pool of 5000 distinct IPv6 sources
(2001:db8:3::/48, one /64 each, so per-source caches and baselines are exercised) at about R
connections/s (default 20), plus two fixed IPv4/IPv6 clients and, once a
minute, a burst from a disallowed source. Every minute it prints the agent's
RSS (from /proc) next to its counters; at the end the growth from minute 1
(after warm-up) to the end. Memory must stay flat: caches and baselines are
bounded. All traffic stays inside the lab's namespaces.
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$ROOT/scripts/demo"
SM="${SOCAT_MONITOR:-$ROOT/.venv/bin/socat-monitor}"
PY=/usr/bin/python3
MINUTES=10
RATE=20
OUT=""
POLICY="$DEMO/soak-policy.yaml"
LEARN=60

while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="${2:?--minutes needs a number}"; shift 2 ;;
    --rate) RATE="${2:?--rate needs a number}"; shift 2 ;;
    --output) OUT="${2:?--output needs a directory}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "soak: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$MINUTES" =~ ^[0-9]+$ ]] && [ "$MINUTES" -ge 1 ] && [ "$MINUTES" -le 120 ] \
  || { echo "soak: --minutes must be 1..120" >&2; exit 2; }
[[ "$RATE" =~ ^[0-9]+$ ]] && [ "$RATE" -ge 1 ] && [ "$RATE" -le 500 ] \
  || { echo "soak: --rate must be 1..500 connections/s" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "soak: must run as root" >&2; exit 3; }
[ -x "$SM" ] || { echo "soak: $SM is missing: run scripts/setup.sh" >&2; exit 3; }

# shellcheck source=demo/lab.sh
. "$DEMO/lab.sh"
OUT="${OUT:-/tmp/socat-monitor-soak-$TAG}"
mkdir -p "$OUT/lab"
OUT="$(cd "$OUT" && pwd)"
SOCK="$OUT/control.sock"
SECONDS_TOTAL=$((MINUTES * 60))

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$AGENT_PID/status" 2>/dev/null || echo 0; }

sample() {  # label: one table line from /proc and the agent's status
  local label="$1" rss status
  rss="$(rss_kib)"
  status="$("$SM" top --once --format json --socket "$SOCK" 2>/dev/null || echo '{}')"
  "$PY" - "$label" "$rss" "$status" <<'PYEOF' | tee -a "$OUT/soak.tsv"
import json, sys
label, rss, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = json.loads(raw).get("counters", {})
ev = c.get("events", {})
print(f"{label:<8} {rss / 1024:>8.1f} {ev.get('connection_accepted', 0):>9} {sum(c.get('alerts', {}).values()):>7} "
      f"{c.get('blocks_active', 0):>7} {c.get('queue_depth', 0):>6} {c.get('kernel_lost', 0):>6} {c.get('user_lost', 0):>6}")
PYEOF
}

build_network
add_source_pool
start_agent $((SECONDS_TOTAL + 120)) "$LEARN"
start_relays
start_bg "$NS_RELAY" "$OUT/lab/pool-relay.log" socat \
  TCP6-LISTEN:8446,fork,reuseaddr,max-children=64,backlog=128 "TCP6:[2001:db8:ff::2]:9000"
wait_listening "$NS_RELAY" 8446
info "pool-relay :8446 for the 5000-source client pool"
step "soak: ${MINUTES} min, about ${RATE} conn/s over 5000 sources, learning ${LEARN}s"
start_bg "$NS_CLIENTS" "$OUT/lab/pool.json" "$PY" "$DEMO/traffic.py" steady --source 2001:db8:3::1 --sources 5000 --one-per-64 \
  --target 2001:db8:1::1 --port 8446 --count $((SECONDS_TOTAL * RATE)) --rate "$RATE" --seconds "$SECONDS_TOTAL"
start_bg "$NS_CLIENTS" "$OUT/lab/good-v4.json" "$PY" "$DEMO/traffic.py" steady --source 198.51.100.10 \
  --target 198.51.100.1 --port 8445 --count "$SECONDS_TOTAL" --rate 1 --seconds "$SECONDS_TOTAL"
start_bg "$NS_CLIENTS" "$OUT/lab/good-v6.json" "$PY" "$DEMO/traffic.py" steady --source 2001:db8:1::10 \
  --target 2001:db8:1::1 --port 8444 --count "$SECONDS_TOTAL" --rate 1 --seconds "$SECONDS_TOTAL"
printf '%-8s %8s %9s %7s %7s %6s %6s %6s\n' time rss_MiB accepted alerts blocks queue k_lost u_lost | tee "$OUT/soak.tsv"
sample start
for minute in $(seq "$MINUTES"); do
  in_ns "$NS_CLIENTS" "$PY" "$DEMO/traffic.py" steady --source 203.0.113.66 --target 198.51.100.1 --port 8443 \
    --count 3 --rate 5 --seconds 5 --timeout 0.5 >>"$OUT/lab/attacker.json" 2>&1 || true
  sleep 55
  sample "${minute}m"
done
kill -INT "$AGENT_PID"
FINAL_RSS="$(rss_kib)"
rc=0; wait "$AGENT_PID" || rc=$?
AGENT_PID=""
"$PY" - "$OUT/soak.tsv" "$FINAL_RSS" "$rc" <<'PYEOF'
import sys
rows = [line.split() for line in open(sys.argv[1]).read().splitlines()[1:]]
rss = {r[0]: float(r[1]) for r in rows}
first, last = rss.get("1m", rss["start"]), float(rows[-1][1])
print(f"end      {int(sys.argv[2]) / 1024:>8.1f}   (at SIGINT; agent exit status {sys.argv[3]})")
growth = (last - first) / first * 100 if first else 0.0
print(f"RSS start {rss['start']:.1f} MiB, after 1 min {first:.1f} MiB, last sample {last:.1f} MiB: "
      f"{growth:+.1f}% after warm-up")
PYEOF
info "agent console: $OUT/agent.out, samples: $OUT/soak.tsv"
