#!/usr/bin/env bash
# The one "run" command: set the machine up, then either the demo lab or the
# agent watching this host's real socat relays.
set -euo pipefail

usage() {
  cat <<'EOF2'
usage: scripts/run.sh [--lab | --host] [-- FLAGS FOR socat-monitor run]

Runs scripts/setup.sh (idempotent: packages, headers, mounts, venv), then:

  --lab    the demo lab (scripts/demo.sh): namespaces, socat relays, good and bad
           clients, the agent alerting and blocking; about a minute; leaves nothing behind.
  --host   the agent on this host, watching the socat processes running here:
           socat-monitor run --follow, with --config /etc/socat-monitor/config.yaml when
           that file exists (scripts/install-service.sh writes one), plus your FLAGS.
           Runs until Ctrl-C. Without a config it observes and alerts; it blocks only
           what a policy (--policy FILE) or the config says to.

Without --lab or --host: --host when a socat process runs in this machine's own
network namespace (a real relay), --lab otherwise (a fresh machine).
EOF2
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lab) MODE=lab; shift ;;
    --host) MODE=host; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "run: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run: must run as root (BPF, nftables, namespaces): sudo $0" >&2; exit 3; }

# socat processes in our own network namespace: real relays, not some lab's or test's.
host_socat_pids() {
  local self pid
  self="$(readlink /proc/self/ns/net)"
  for pid in $(pgrep -x socat || true); do
    [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$self" ] && echo "$pid"
  done
}

if [ -z "$MODE" ]; then
  if [ -n "$(host_socat_pids)" ]; then MODE=host; else MODE=lab; fi
  echo "run: mode $MODE ($(host_socat_pids | wc -l) socat process(es) on this host; --lab/--host to choose)" >&2
fi

bash "$ROOT/scripts/setup.sh"

if [ "$MODE" = lab ]; then
  [ $# -eq 0 ] || { echo "run: flags after -- are for --host only" >&2; exit 2; }
  exec bash "$ROOT/scripts/demo.sh"
fi
CONFIG=()
[ -e /etc/socat-monitor/config.yaml ] && CONFIG=(--config /etc/socat-monitor/config.yaml)
exec "$ROOT/.venv/bin/socat-monitor" run "${CONFIG[@]}" --follow "$@"
