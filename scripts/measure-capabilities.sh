#!/usr/bin/env bash
# Measure which Linux capabilities `socat-monitor run` really needs.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/measure-capabilities.sh [--caps "cap_a cap_b ..."]

Runs the agent as it runs under systemd (root uid, enforcing in the network
namespace it lives in) inside two throw-away namespaces (smcap-*): a socat
relay running as nobody (started before the agent, as on a real host), an
allowed client (198.51.100.10) and a denied one (203.0.113.66); the policy
declares the relay's backend, so the cgroup egress guard is loaded too. First with every capability, then once per candidate with that
candidate dropped in turn from the bounding set (capsh --drop; broad ones
first, keeping the narrowest set that works), then with only the minimal set
and with each of its members dropped. Each run checks: the agent starts, sees
connections, reads the relay's /proc (command line), blocks the denied source
in nftables, and exits cleanly. Prints one line per run and the minimal set.
Root only; all traffic and nftables changes stay inside the smcap-* namespaces.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SM="${SOCAT_MONITOR:-$ROOT/.venv/bin/socat-monitor}"
PY=/usr/bin/python3
TRAFFIC="$ROOT/scripts/demo/traffic.py"
# Broadest first: the greedy pass drops these before the narrow ones they overlap with.
CANDIDATES="cap_sys_admin cap_dac_override cap_sys_ptrace cap_dac_read_search cap_sys_resource cap_ipc_lock cap_fowner cap_chown cap_setuid cap_setgid cap_kill cap_net_raw cap_net_admin cap_perfmon cap_bpf"

while [ $# -gt 0 ]; do
  case "$1" in
    --caps) CANDIDATES="${2:?--caps needs a list}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "measure-capabilities: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "measure-capabilities: run as root" >&2; exit 3; }
for bin in capsh nsenter socat nft setpriv; do
  command -v "$bin" >/dev/null || { echo "measure-capabilities: $bin missing (scripts/setup.sh)" >&2; exit 3; }
done

TAG="$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
NS_AGENT="smcap-agent-$TAG"
NS_CLIENT="smcap-client-$TAG"
WORK="$(mktemp -d /tmp/smcap-XXXXXX)"
chmod 755 "$WORK"
MADE_NS=()
AGENT_PID=""

cleanup() {
  set +e
  trap - EXIT INT TERM
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  for ns in "${MADE_NS[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
  done
  sleep 0.2
  for ns in "${MADE_NS[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ns in "$NS_AGENT" "$NS_CLIENT"; do
  ip netns add "$ns"; MADE_NS+=("$ns"); ip netns exec "$ns" ip link set lo up
done
ip link add "smc${TAG}a" type veth peer name "smc${TAG}c"
ip link set "smc${TAG}a" netns "$NS_AGENT"
ip link set "smc${TAG}c" netns "$NS_CLIENT"
ip netns exec "$NS_AGENT" ip addr add 198.51.100.1/24 dev "smc${TAG}a"
ip netns exec "$NS_AGENT" ip addr add 203.0.113.1/24 dev "smc${TAG}a"
ip netns exec "$NS_CLIENT" ip addr add 198.51.100.10/24 dev "smc${TAG}c"
ip netns exec "$NS_CLIENT" ip addr add 203.0.113.66/24 dev "smc${TAG}c"
ip netns exec "$NS_AGENT" ip link set "smc${TAG}a" up
ip netns exec "$NS_CLIENT" ip link set "smc${TAG}c" up

# The relay runs as nobody, so reading its /proc is a cross-user read, as on a real host.
ip netns exec "$NS_AGENT" setpriv --reuid=65534 --regid=65534 --clear-groups \
  "$PY" "$ROOT/scripts/demo/echo.py" 9000 >/dev/null 2>&1 &
ip netns exec "$NS_AGENT" setpriv --reuid=65534 --regid=65534 --clear-groups \
  socat TCP4-LISTEN:8443,fork,reuseaddr,max-children=16 TCP4:127.0.0.1:9000 >/dev/null 2>&1 &
for _ in $(seq 100); do
  [ -n "$(ip netns exec "$NS_AGENT" ss -Hltn 'sport = :8443')" ] && break; sleep 0.05
done

cat >"$WORK/policy.yaml" <<'EOF'
version: 1
listeners:
  - name: relay
    port: 8443
    allow_sources: [198.51.100.0/24]
    allow_backends: ["127.0.0.1:9000"]
    action: block
EOF

ALL_CAPS="$(capsh --print | sed -n 's/^Bounding set =//p' | tr ',' ' ')"

# One agent run with the bounding set minus $1 (space-separated); prints one result line.
run_once() {
  local label="$1" drop="$2" dir="$WORK/run-$RANDOM" ready=0 blocked="no" rc
  mkdir -p "$dir"
  cat >"$dir/config.yaml" <<EOF
state_dir: $dir/state
metrics: null
enforce:
  state_file: $dir/state/blocks.json
EOF
  nsenter --net="/run/netns/$NS_AGENT" -- capsh ${drop:+--drop=${drop// /,}} -- -c \
    "exec '$SM' -v run --config '$dir/config.yaml' --policy '$WORK/policy.yaml' --output '$dir/out' \
     --control-socket '$dir/c.sock' --duration 60 --format json" >"$dir/stdout" 2>"$dir/stderr" &
  AGENT_PID=$!
  for _ in $(seq 120); do
    if "$SM" top --once --format json --socket "$dir/c.sock" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$AGENT_PID" 2>/dev/null || break
    sleep 0.25
  done
  if [ "$ready" = 1 ]; then
    ip netns exec "$NS_CLIENT" "$PY" "$TRAFFIC" steady --source 198.51.100.10 --target 198.51.100.1 \
      --port 8443 --count 3 --rate 10 --seconds 5 >/dev/null
    ip netns exec "$NS_CLIENT" "$PY" "$TRAFFIC" steady --source 203.0.113.66 --target 198.51.100.1 \
      --port 8443 --count 2 --rate 10 --seconds 5 >/dev/null
    for _ in $(seq 8); do
      if ip netns exec "$NS_CLIENT" "$PY" "$TRAFFIC" probe --source 203.0.113.66 --target 198.51.100.1 \
           --port 8443 --timeout 0.5 | grep -q '"timeout"'; then blocked="yes"; break; fi
      sleep 0.25
    done
    kill -INT "$AGENT_PID" 2>/dev/null
  fi
  rc=0; wait "$AGENT_PID" || rc=$?
  AGENT_PID=""
  # The agent's nftables table stays (blocks survive restarts); each run starts from a clean namespace.
  ip netns exec "$NS_AGENT" nft delete table inet socat_monitor 2>/dev/null || true
  "$PY" - "$label" "$dir" "$ready" "$blocked" "$rc" <<'EOF'
import glob, json, sys
label, d, ready, blocked, rc = sys.argv[1:]
with_cmdline = total = 0
for path in glob.glob(f"{d}/out/events*.ndjson"):
    for line in open(path):
        doc = json.loads(line)
        if doc.get("event", {}).get("action") == "connection_accepted" and doc.get("destination", {}).get("port") == 8443:
            total += 1
            with_cmdline += bool(doc.get("process", {}).get("command_line"))
lines = open(f"{d}/stderr").read().splitlines()
warnings = [l for l in lines if " WARNING " in l or "error" in l.lower()]
first = warnings[0].split(": ", 1)[-1] if warnings else ""
ok = ready == "1" and total > 0 and blocked == "yes" and rc in ("0", "1") and with_cmdline == total
print(f"{label:<26} {'OK' if ok else 'BROKEN':<7} start={'yes' if ready == '1' else 'no':<4} "
      f"accepted={total:<3} cmdline={with_cmdline}/{total:<3} blocked={blocked:<4} exit={rc:<4} "
      f"warnings={len(warnings):<3} {first[:100]}")
EOF
}

drop_all_but() {  # the capabilities to drop so that only "$*" remain
  local cap out=""
  for cap in $ALL_CAPS; do [[ " $* " == *" $cap "* ]] || out+="$cap "; done
  echo "${out% }"
}

echo "socat-monitor capability measurement ($(uname -r), $("$SM" --version 2>/dev/null))"
echo "run                        result  checks"
run_once "all capabilities" ""
# 1. Everything outside the candidates at once; 2. greedily drop each candidate (broad ones first,
# so a narrow one like cap_bpf is kept over cap_sys_admin when either would do); 3. with the
# minimal set, drop each of its members in turn to show what breaks without it.
KEEP=($CANDIDATES)
line="$(run_once "only the candidates" "$(drop_all_but "${KEEP[@]}")")"
echo "$line"
[[ "$line" == *" OK "* ]] || { echo "the candidates are not enough: widen --caps"; exit 1; }
for cap in $CANDIDATES; do
  trial=()
  for c in "${KEEP[@]}"; do [ "$c" = "$cap" ] || trial+=("$c"); done
  line="$(run_once "without $cap" "$(drop_all_but "${trial[@]}")")"
  echo "$line"
  [[ "$line" == *" OK "* ]] && KEEP=("${trial[@]}")
done
echo
echo "minimal set: ${KEEP[*]}"
run_once "only the minimal set" "$(drop_all_but "${KEEP[@]}")"
for cap in "${KEEP[@]}"; do
  trial=()
  for c in "${KEEP[@]}"; do [ "$c" = "$cap" ] || trial+=("$c"); done
  run_once "minimal set - $cap" "$(drop_all_but "${trial[@]}")"
done
echo
echo "systemd: CapabilityBoundingSet=${KEEP[*]^^}"
