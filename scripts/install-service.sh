#!/usr/bin/env bash
# Install socat-monitor as a systemd service: the unit, a default config, and the
# command on PATH. Safe to run again: an existing config is never overwritten.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UNIT=/etc/systemd/system/socat-monitor.service
CONF_DIR=/etc/socat-monitor
log() { printf 'install-service: %s\n' "$*" >&2; }

case "${1:-}" in
  -h|--help)
    echo "usage: scripts/install-service.sh   (root; runs scripts/setup.sh first, then installs"
    echo "       $UNIT and $CONF_DIR/config.yaml; enable with: systemctl enable --now socat-monitor)"
    exit 0 ;;
  "") ;;
  *) log "unknown argument $1"; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 3; }

bash "$ROOT/scripts/setup.sh"
install -d -m 0755 "$CONF_DIR"
if [ ! -e "$CONF_DIR/config.yaml" ]; then
  cat >"$CONF_DIR/config.yaml" <<'YAML'
# socat-monitor agent configuration. Every setting and its default:
#   socat-monitor config show        validate: socat-monitor config check /etc/socat-monitor/config.yaml
# After editing: systemctl reload socat-monitor (SIGHUP re-reads this file and the policy).
output: /var/log/socat-monitor         # NDJSON events*.ndjson and alerts*.ndjson
state_dir: /var/lib/socat-monitor      # blocks, baselines, Elasticsearch spool
control_socket: /run/socat-monitor/control.sock   # socat-monitor top / reload
# policy: /etc/socat-monitor/policy.yaml   # start one with: socat-monitor policy suggest
enforce:
  dry_run: true      # log the blocks it would make; set to false once the policy is right
# elasticsearch:
#   urls: ["http://127.0.0.1:9200"]
YAML
  chmod 0640 "$CONF_DIR/config.yaml"
  log "wrote $CONF_DIR/config.yaml (enforce.dry_run: true)"
else
  log "kept the existing $CONF_DIR/config.yaml"
fi
/usr/local/bin/socat-monitor config check "$CONF_DIR/config.yaml"
install -m 0644 "$ROOT/scripts/socat-monitor.service" "$UNIT"
log "installed $UNIT"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  log "enable and start it with: systemctl enable --now socat-monitor; watch it: socat-monitor top"
else
  log "systemd is not running here: the unit is installed for the next boot with systemd"
fi
