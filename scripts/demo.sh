#!/usr/bin/env bash
# socat-monitor demo lab: three network namespaces, real socat relays, good
# clients, an attacker, and the agent watching, alerting and blocking.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/demo.sh [--learning-period SECONDS] [--output DIR] [--no-agent] [--keep-output]

Builds a lab of network namespaces (smdemo-relay-*, smdemo-clients-*,
smdemo-backend-*), all removed on exit, Ctrl-C included:

  clients ns                         relay ns                                   backend ns
  198.51.100.10, .11, .99  (good) -- web-relay   socat TCP4-LISTEN:8443     -- echo server
  2001:db8:1::10           (good)    v6-relay    socat TCP6-LISTEN:8444,range=   192.0.2.2:9000
  203.0.113.66, .67        (bad)     admin-relay socat TCP4-LISTEN:8445,range=   [2001:db8:ff::2]:9000
  2001:db8:2::66           (bad)

then runs `socat-monitor run --netns <relay ns> --policy scripts/demo/policy.yaml`
and drives traffic: good clients all along; after the learning period a
disallowed source (blocked in nftables, then shown to time out), a disallowed
IPv6 source, a port scan across the relays and a flood. It shows the agent's
alerts and blocks as they happen, a `socat-monitor top` frame, the nftables
table, and at the end the agent's report and where its files are.

All addresses are documentation ranges used only on the lab's own veths; all
traffic is bounded in count and time. About 60 s. Needs root and scripts/setup.sh.

  --learning-period S  seconds of good traffic before the attacks (default 15)
  --output DIR         where events, alerts and the report go
                       (default /tmp/socat-monitor-demo-<tag>)
  --no-agent           only the lab and its traffic (checks the lab itself)
Exit status: 0 when the demo showed connections, an alert and a block
(with --no-agent: when the lab's traffic behaved as designed), 1 otherwise.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$ROOT/scripts/demo"
SM="${SOCAT_MONITOR:-$ROOT/.venv/bin/socat-monitor}"
PY=/usr/bin/python3
LEARN=15
OUT=""
AGENT=1
AGENT_CAP_S=180

while [ $# -gt 0 ]; do
  case "$1" in
    --learning-period) LEARN="${2:?--learning-period needs seconds}"; shift 2 ;;
    --output) OUT="${2:?--output needs a directory}"; shift 2 ;;
    --no-agent) AGENT=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$LEARN" =~ ^[0-9]+$ ]] && [ "$LEARN" -ge 5 ] && [ "$LEARN" -le 300 ] \
  || { echo "demo: --learning-period must be 5..300 seconds" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "demo: must run as root (namespaces, BPF, nftables)" >&2; exit 3; }
for bin in ip socat nft ss "$PY"; do
  command -v "$bin" >/dev/null || { echo "demo: $bin is missing: run scripts/setup.sh" >&2; exit 3; }
done
[ "$AGENT" = 0 ] || [ -x "$SM" ] || { echo "demo: $SM is missing: run scripts/setup.sh" >&2; exit 3; }

# shellcheck source=demo/lab.sh
. "$DEMO/lab.sh"
mkdir -p "$OUT/lab"
OUT="$(cd "$OUT" && pwd)"
SOCK="$OUT/control.sock"

show_agent_console() {
  # Show the agent's console: the first connections, then alerts, blocks, refusals and losses only.
  # The lab's own lines (its addresses and ports); each audit finding once; alerts, blocks and losses
  # always; the first few connections. Other socat processes on this host are the agent's business
  # too, but not this demo's.
  tail -n +1 -f "$OUT/agent.out" 2>/dev/null | awk -v y="$Y" -v r="$R" -v n="$N" '
    /^\{/ { next }
    / ALERT / && / audit\./ { rule = $5; if (seen[rule]++) next; print "   " r "agent| " $0 n; fflush(); next }
    / LOSS / { print "   " y "agent| " $0 n; fflush(); next }
    !/198\.51\.100\.|203\.0\.113\.|2001:db8:|192\.0\.2\.|:844[345]/ { next }
    / ALERT / { print "   " r "agent| " $0 n; fflush(); next }
    / (BLOCK|NO-BLOCK|DRY-BLOCK|UNBLOCK) / { print "   " y "agent| " $0 n; fflush(); next }
    / (ACCEPT|REFUSED|EXEC) / && shown < 8 { shown++; print "   agent| " $0; fflush() }' &
  FOLLOW_PID=$!
}

good_clients() {
  local seconds=$((LEARN + 40))
  start_bg "$NS_CLIENTS" "$OUT/lab/good-v4.json" "$PY" "$DEMO/traffic.py" steady --source 198.51.100.10 \
    --target 198.51.100.1 --port 8443 --count "$seconds" --rate 1 --seconds "$seconds"
  start_bg "$NS_CLIENTS" "$OUT/lab/good-admin.json" "$PY" "$DEMO/traffic.py" steady --source 198.51.100.11 \
    --target 198.51.100.1 --port 8445 --count "$((seconds / 2))" --rate 0.5 --seconds "$seconds"
  start_bg "$NS_CLIENTS" "$OUT/lab/good-v6.json" "$PY" "$DEMO/traffic.py" steady --source 2001:db8:1::10 \
    --target 2001:db8:1::1 --port 8444 --count "$seconds" --rate 1 --seconds "$seconds"
  GOOD_PIDS=("${BG_PIDS[@]: -3}")
}

# The disallowed source probes until its connections time out (dropped), at most `tries` times.
until_blocked() {
  local tries="$1" i outcome
  for i in $(seq "$tries"); do
    outcome="$(in_ns "$NS_CLIENTS" "$PY" "$DEMO/traffic.py" probe --source 203.0.113.66 --target 198.51.100.1 \
                 --port 8443 --timeout 1)"
    if [[ "$outcome" == *'"timeout"'* ]]; then
      info "${G}203.0.113.66 is now dropped by nftables in $NS_RELAY (probe $i timed out)${N}"
      echo "{\"blocked_after_probes\": $i}" >"$OUT/lab/attacker-blocked.json"
      return 0
    fi
    sleep 0.5
  done
  info "${R}203.0.113.66 still connects after $tries probes${N}"
  echo '{"blocked_after_probes": null}' >"$OUT/lab/attacker-blocked.json"
}

attacks() {
  step "attacks"
  info "a disallowed source, 203.0.113.66, uses web-relay (:8443)"
  traffic attacker-v4 steady --source 203.0.113.66 --target 198.51.100.1 --port 8443 --count 3 --rate 5 --seconds 10
  [ "$AGENT" = 1 ] && until_blocked 20
  info "a disallowed IPv6 source, 2001:db8:2::66, tries v6-relay (:8444; socat's range= refuses it)"
  traffic attacker-v6 steady --source 2001:db8:2::66 --target 2001:db8:1::1 --port 8444 --count 3 --rate 5 --seconds 10
  info "203.0.113.67 scans ports 8400-8460 of the relay"
  traffic scan scan --source 203.0.113.67 --target 198.51.100.1 --ports 8400-8460 --timeout 0.5 --seconds 30
  info "198.51.100.99 (an allowed address) floods web-relay: up to 400 connections in 8 s"
  traffic flood flood --source 198.51.100.99 --target 198.51.100.1 --port 8443 --count 400 --concurrency 4 \
    --seconds 8 --timeout 1
}

show_live() {
  sleep 2
  step "socat-monitor top --once (the live view of the running agent)"
  COLUMNS=120 LINES=34 "$SM" top --once --socket "$SOCK" 2>&1 | sed 's/^/   /' || true
  step "nftables in $NS_RELAY (the agent's table)"
  in_ns "$NS_RELAY" nft list ruleset | sed 's/^/   /'
}

stop_agent() {
  step "stopping the agent (SIGINT: it flushes and reports)"
  kill -INT "$AGENT_PID"
  local rc=0
  wait "$AGENT_PID" || rc=$?
  AGENT_PID=""
  sleep 0.3
  kill "$FOLLOW_PID" 2>/dev/null || true
  FOLLOW_PID=""
  info "agent exit status $rc (1 = it raised alerts)"
  [ "$rc" -le 1 ] || { cat "$OUT/agent.err" >&2; return 1; }
}

report() {
  "$PY" - "$OUT" "$AGENT" <<'EOF'
import glob, json, os, sys
out, with_agent = sys.argv[1], sys.argv[2] == "1"
def load(path):
    try:
        with open(path) as fh:
            return json.loads(fh.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
lab = {os.path.basename(p)[:-5]: load(p) for p in sorted(glob.glob(f"{out}/lab/*.json"))}
report = {"output": out, "lab": lab}
good = [lab.get(k) or {} for k in ("good-v4", "good-admin", "good-v6")]
lab_ok = (all(g.get("ok", 0) > 0 for g in good)
          and (lab.get("attacker-v6") or {}).get("closed", 0) > 0
          and (lab.get("flood") or {}).get("ok", 0) + (lab.get("flood") or {}).get("timeout", 0) > 0)
report["lab_ok"] = lab_ok
ok = lab_ok
if with_agent:
    summary = load(f"{out}/agent.out") or {}
    files = {pattern: sorted(glob.glob(f"{out}/{pattern}")) for pattern in ("events*.ndjson", "alerts*.ndjson")}
    lines = {p: sum(1 for f in fs for _ in open(f)) for p, fs in files.items()}
    report.update(connections_seen=summary.get("connections_seen", 0), alerts=summary.get("alerts", {}),
                  sources_blocked=summary.get("sources_blocked", []), files=files, lines=lines)
    ok = lab_ok and report["connections_seen"] > 0 and sum(report["alerts"].values()) > 0 \
        and len(report["sources_blocked"]) > 0
    alerts = ", ".join(f"{k}={v}" for k, v in sorted(report["alerts"].items())) or "none"
    print(f"   connections seen: {report['connections_seen']}")
    print(f"   alerts raised:    {sum(report['alerts'].values())} ({alerts})")
    print(f"   sources blocked:  {len(report['sources_blocked'])} ({', '.join(report['sources_blocked']) or 'none'})")
    print(f"   events:           {lines['events*.ndjson']} lines in {', '.join(files['events*.ndjson']) or '-'}")
    print(f"   alerts:           {lines['alerts*.ndjson']} lines in {', '.join(files['alerts*.ndjson']) or '-'}")
    print(f"   agent console:    {out}/agent.out (stderr: {out}/agent.err)")
for name, tally in lab.items():
    print(f"   lab {name}: {json.dumps(tally)}")
report["ok"] = ok
with open(f"{out}/demo-report.json", "w") as fh:
    json.dump(report, fh, indent=2)
print(f"   report:           {out}/demo-report.json")
sys.exit(0 if ok else 1)
EOF
}

build_network
if [ "$AGENT" = 1 ]; then
  start_agent "$AGENT_CAP_S" "$LEARN" --follow
  show_agent_console
fi
start_relays
step "learning: good clients for ${LEARN}s"
good_clients
sleep "$LEARN"
attacks
[ "$AGENT" = 1 ] && show_live
step "waiting for the good clients to finish"
for pid in "${GOOD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${GOOD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
[ "$AGENT" = 1 ] && stop_agent
step "report"
report
