#!/usr/bin/env bash
# Install socat-monitor as a systemd service: a root-owned copy of the code, the
# unit, a default config, and the command on PATH. Safe to run again: the copy is
# replaced by the checkout's committed or working-tree state, an existing config
# is never overwritten.
#
# The unit runs /opt/socat-monitor (a non-editable install: Python code and the
# BPF C sources copied, owned by root, not writable by anyone else), never the
# checkout: a checkout writable by another user must not mean code run as root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${SOCAT_MONITOR_PREFIX:-/opt/socat-monitor}"
UNIT=/etc/systemd/system/socat-monitor.service
CONF_DIR=/etc/socat-monitor
log() { printf 'install-service: %s\n' "$*" >&2; }

case "${1:-}" in
  -h|--help)
    echo "usage: scripts/install-service.sh   (root; runs scripts/setup.sh first, then installs a root-owned"
    echo "       copy in $PREFIX, $UNIT and $CONF_DIR/config.yaml; enable with: systemctl enable --now socat-monitor)"
    exit 0 ;;
  "") ;;
  *) log "unknown argument $1"; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 3; }

install_copy() {
  # a venv of Debian's python that sees bcc and nftables, with socat-monitor copied in (no -e)
  if [ ! -x "$PREFIX/bin/python" ] || ! "$PREFIX/bin/python" -c "import bcc, nftables" 2>/dev/null; then
    rm -rf "$PREFIX"
    /usr/bin/python3 -m venv --system-site-packages "$PREFIX"
  fi
  "$PREFIX/bin/pip" install -q --disable-pip-version-check "$ROOT" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  "$PREFIX/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$ROOT" 2>&1 \
    | { grep -v "is ignored: it is neither" || true; }
  chown -R root:root "$PREFIX"
  chmod -R go-w "$PREFIX"
  ln -sfn "$PREFIX/bin/socat-monitor" /usr/local/bin/socat-monitor
  log "installed a root-owned copy in $PREFIX ($("$PREFIX/bin/socat-monitor" --version))"
}

bash "$ROOT/scripts/setup.sh"
install_copy
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
"$PREFIX/bin/socat-monitor" config check "$CONF_DIR/config.yaml"
sed "s#/opt/socat-monitor/#$PREFIX/#g" "$ROOT/scripts/socat-monitor.service" >"$UNIT"
chmod 0644 "$UNIT"
log "installed $UNIT"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  log "enable and start it with: systemctl enable --now socat-monitor; watch it: socat-monitor top"
else
  log "systemd is not running here: the unit is installed for the next boot with systemd"
fi
