# The demo lab, sourced by scripts/demo.sh and scripts/soak.sh (not run by itself).
#
# Expects ROOT, DEMO, SM, PY, OUT (may be empty) and POLICY (may be empty: the demo
# policy) set by the caller; defines the
# namespace names, a cleanup trap that stops exactly what it started and
# removes the namespaces (Ctrl-C included), build_network,
# start_relays, start_agent and helpers. Start the agent before the relays: it then
# sees them bind (their listeners live in another network namespace).

TAG="$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
NS_RELAY="smdemo-relay-$TAG"
NS_CLIENTS="smdemo-clients-$TAG"
NS_BACKEND="smdemo-backend-$TAG"
OUT="${OUT:-/tmp/socat-monitor-demo-$TAG}"

if [ -t 1 ]; then B=$'\e[1m'; G=$'\e[32m'; R=$'\e[31m'; Y=$'\e[33m'; N=$'\e[0m'; else B= G= R= Y= N=; fi
step() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
info() { printf '   %s\n' "$*"; }

MADE_NS=()
BG_PIDS=()
AGENT_PID=""
FOLLOW_PID=""

cleanup() {
  set +e
  trap - EXIT INT TERM
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -INT "$AGENT_PID"
    for _ in $(seq 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.2; done
    kill -TERM "$AGENT_PID" 2>/dev/null
    wait "$AGENT_PID" 2>/dev/null
  fi
  [ -n "$FOLLOW_PID" ] && kill "$FOLLOW_PID" 2>/dev/null
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for ns in "${MADE_NS[@]}"; do
    # Everything still running in our own namespaces was started by this script.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
  done
  sleep 0.2
  for ns in "${MADE_NS[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, cleaning up" >&2; exit 130' INT TERM

in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

add_ns() {
  ip netns add "$1"
  MADE_NS+=("$1")
  in_ns "$1" ip link set lo up
}

# veth pair: link NS_A DEV_A "addrs..." NS_B DEV_B "addrs..."
link() {
  local ns_a="$1" dev_a="$2" addrs_a="$3" ns_b="$4" dev_b="$5" addrs_b="$6" addr
  ip link add "$dev_a" type veth peer name "$dev_b"
  ip link set "$dev_a" netns "$ns_a"
  ip link set "$dev_b" netns "$ns_b"
  for addr in $addrs_a; do in_ns "$ns_a" ip addr add "$addr" dev "$dev_a" nodad 2>/dev/null \
                          || in_ns "$ns_a" ip addr add "$addr" dev "$dev_a"; done
  for addr in $addrs_b; do in_ns "$ns_b" ip addr add "$addr" dev "$dev_b" nodad 2>/dev/null \
                          || in_ns "$ns_b" ip addr add "$addr" dev "$dev_b"; done
  in_ns "$ns_a" ip link set "$dev_a" up
  in_ns "$ns_b" ip link set "$dev_b" up
}

wait_listening() {  # ns port
  for _ in $(seq 100); do
    [ -n "$(in_ns "$1" ss -Hltn "sport = :$2")" ] && return 0
    sleep 0.05
  done
  echo "demo: nothing listens on port $2 in $1" >&2
  return 1
}

start_bg() {  # ns logfile argv...
  local ns="$1" log="$2"; shift 2
  ip netns exec "$ns" "$@" >"$log" 2>&1 &
  BG_PIDS+=("$!")
}

traffic() {  # name argv... : runs the client helper in the clients namespace, its JSON tally in lab/NAME.json
  local name="$1"; shift
  in_ns "$NS_CLIENTS" "$PY" "$DEMO/traffic.py" "$@" >"$OUT/lab/$name.json" 2>"$OUT/lab/$name.err"
  info "$name: $(cat "$OUT/lab/$name.json")"
}

# The namespaces, their veths and the echo backend.
build_network() {
  step "building the lab (namespaces *-$TAG)"
  add_ns "$NS_CLIENTS"; add_ns "$NS_RELAY"; add_ns "$NS_BACKEND"
  link "$NS_CLIENTS" "smd${TAG}c" "198.51.100.10/24 198.51.100.11/24 198.51.100.99/24 203.0.113.66/24 203.0.113.67/24 2001:db8:1::10/64 2001:db8:2::66/64" \
       "$NS_RELAY" "smd${TAG}r" "198.51.100.1/24 203.0.113.1/24 2001:db8:1::1/64 2001:db8:2::1/64"
  link "$NS_RELAY" "smd${TAG}b" "192.0.2.1/24 2001:db8:ff::1/64" \
       "$NS_BACKEND" "smd${TAG}k" "192.0.2.2/24 2001:db8:ff::2/64"
  start_bg "$NS_BACKEND" "$OUT/lab/backend.log" "$PY" "$DEMO/echo.py" 9000
  wait_listening "$NS_BACKEND" 9000
  info "backend $NS_BACKEND: echo 192.0.2.2:9000, [2001:db8:ff::2]:9000"
  info "clients $NS_CLIENTS: good 198.51.100.10/.11/.99, 2001:db8:1::10; bad 203.0.113.66/.67, 2001:db8:2::66"
}

# The three socat relays in the relay namespace.
start_relays() {
  step "starting the socat relays in $NS_RELAY"
  start_bg "$NS_RELAY" "$OUT/lab/web-relay.log" socat \
    TCP4-LISTEN:8443,fork,reuseaddr,max-children=64,backlog=128 TCP4:192.0.2.2:9000
  start_bg "$NS_RELAY" "$OUT/lab/v6-relay.log" socat \
    "TCP6-LISTEN:8444,fork,reuseaddr,max-children=16,range=[2001:db8:1::]/64" "TCP6:[2001:db8:ff::2]:9000"
  start_bg "$NS_RELAY" "$OUT/lab/admin-relay.log" socat \
    TCP4-LISTEN:8445,fork,reuseaddr,max-children=8,range=198.51.100.0/24 TCP4:192.0.2.2:9000
  for port in 8443 8444 8445; do wait_listening "$NS_RELAY" "$port"; done
  info "web-relay :8443, v6-relay :8444 (range 2001:db8:1::/64), admin-relay :8445 (range 198.51.100.0/24)"
}

# A pool of client addresses, 2001:db8:3::/48, any of which the clients namespace can bind
# (local route + ip_nonlocal_bind) and the relay routes back: many distinct sources, one /64 each
# (the detectors count an IPv6 /64 as one source).
add_source_pool() {
  in_ns "$NS_CLIENTS" ip -6 route add local 2001:db8:3::/48 dev lo
  in_ns "$NS_CLIENTS" sysctl -qw net.ipv6.ip_nonlocal_bind=1
  in_ns "$NS_RELAY" ip -6 route add 2001:db8:3::/48 via 2001:db8:1::10
}

# start_agent CAP_SECONDS LEARN_SECONDS [extra run flags...]: the agent on the lab, enforcing in the
# relay namespace, console in $OUT/agent.out (JSON summary as its last line); waits until it answers.
start_agent() {
  local cap_s="$1" learn_s="$2"; shift 2
  step "starting the agent (enforcing in $NS_RELAY)"
  sed "s|@STATE@|$OUT|g" "$DEMO/config.yaml" >"$OUT/config.yaml"
  cp "${POLICY:-$DEMO/policy.yaml}" "$OUT/policy.yaml"
  info "$SM run --config $OUT/config.yaml --policy $OUT/policy.yaml --netns $NS_RELAY --output $OUT --learning-period ${learn_s}s $*"
  "$SM" run --config "$OUT/config.yaml" --policy "$OUT/policy.yaml" --netns "$NS_RELAY" --output "$OUT" \
    --duration "$cap_s" --learning-period "${learn_s}s" --control-socket "$SOCK" --format json "$@" \
    >"$OUT/agent.out" 2>"$OUT/agent.err" &
  AGENT_PID=$!
  for _ in $(seq 120); do
    "$SM" top --once --format json --socket "$SOCK" >/dev/null 2>&1 && break
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "demo: the agent exited at start:" >&2; cat "$OUT/agent.err" >&2; exit 1; }
    sleep 0.25
  done
  "$SM" top --once --format json --socket "$SOCK" >/dev/null || { echo "demo: the agent never answered on $SOCK" >&2; exit 1; }
  info "agent pid $AGENT_PID is up; its console: $OUT/agent.out"
}

