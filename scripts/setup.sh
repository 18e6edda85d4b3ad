#!/usr/bin/env bash
# Install everything socat-monitor needs on a Debian host and make it runnable.
# Safe to run again: every step checks before it changes anything.
#   apt packages (bcc, socat, nftables, kernel headers, and the attack tools
#   the tests use), the header links bcc needs, tracefs/debugfs/bpffs mounts,
#   a virtualenv that sees Debian's bcc, and /usr/local/bin/socat-monitor.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SOCAT_MONITOR_VENV:-$ROOT/.venv}"
log() { printf 'setup: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (BPF, nftables and apt need it)"; exit 1; }

# Python modules the agent imports that only Debian packages provide (not PyPI):
# the virtualenv sees them through --system-site-packages. One MODULE=PACKAGE
# each; tests/test_imports.py reads this line to prove every import is installed.
DEBIAN_PYTHON_MODULES=(bcc=python3-bpfcc nftables=python3-nftables)
# Real attack tools the integration tests run against the agent (tests/integration/test_detect_field.py),
# one COMMAND=PACKAGE each. The agent never runs them: doctor does not ask for them.
TEST_TOOLS=(nmap=nmap ab=apache2-utils)

install_packages() {
  local want=(bpfcc-tools libbpfcc socat nftables iproute2 conntrack
              linux-headers-amd64 python3-venv python3-dev procps util-linux)
  want+=("${DEBIAN_PYTHON_MODULES[@]#*=}" "${TEST_TOOLS[@]#*=}")
  local missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

link_headers() {
  local mod="/lib/modules/$(uname -r)"
  [ -e "$mod/build/include" ] && return 0
  local build common
  build="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)"
  common="$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)"
  [ -n "$build" ] || { log "no kernel headers under /usr/src"; exit 1; }
  mkdir -p "$mod"
  ln -sfn "$build" "$mod/build"
  [ -n "$common" ] && ln -sfn "$common" "$mod/source"
  log "linked $mod/build -> $build"
}

mount_fs() {
  mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing
  mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug
  mountpoint -q /sys/fs/bpf || mount -t bpf none /sys/fs/bpf
}

make_venv() {
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import bcc" 2>/dev/null; then
    log "creating virtualenv $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
  fi
  local stamp="$VENV/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
  if [ ! -e "$stamp" ]; then
    log "installing socat-monitor into $VENV"
    # (this image's pip config names local index folders that may be absent: drop that noise only)
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]" 2>&1 \
      | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
  # the command on PATH, unless it names the service's installed copy (scripts/install-service.sh)
  case "$(readlink /usr/local/bin/socat-monitor 2>/dev/null)" in
    /opt/socat-monitor/*) ;;
    *) ln -sfn "$VENV/bin/socat-monitor" /usr/local/bin/socat-monitor ;;
  esac
}

install_packages
link_headers
mount_fs
make_venv
log "ready: $(command -v socat-monitor)"
