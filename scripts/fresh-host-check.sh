#!/usr/bin/env bash
# Proves the README's run command on a bare Debian 12 root: builds (once, then
# cached as a tarball) a minimal bookworm root holding only what a stock cloud
# image has, clones the committed tree into it, runs `scripts/run.sh` there in a
# chroot (which, on such a root, installs everything and runs the demo lab) and
# checks the demo's own report: connections, alerts and at least one block.
# Always unmounts and removes what it made; its last line says PASS or the
# first error, with the time each phase took. Exit 0 on pass, 1 on fail.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/fresh-host-check.sh [--rebuild] [--debian-sys] [--timeout SECONDS]

  --rebuild          build the Debian root again even when its cached tarball exists
  --debian-sys       /sys as a systemd-booted Debian 12 has it (cgroup2 at /sys/fs/cgroup), and
                     tracefs, debugfs and bpffs left for setup.sh to mount; default: this
                     machine's /sys with everything mounted below it
  --timeout SECONDS  limit for scripts/run.sh inside the root (default 1200)

Needs root and a Debian host (mmdebstrap is installed with apt when missing).
The root tarball is cached under /var/cache/socat-monitor/ (FRESH_ROOT_CACHE),
keyed by the suite, the package list, the mirror and the apt options.
EOF
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE=bookworm
INCLUDE=ca-certificates,git,sudo,python3,iproute2,procps,curl,netbase
CACHE_DIR="${FRESH_ROOT_CACHE:-/var/cache/socat-monitor}"
RUN_TIMEOUT=1200
BUILD_TIMEOUT=900
REBUILD=0
DEBIAN_SYS=0
CHECKOUT=/root/socat-monitor          # where the user's clone lives inside the root

while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild) REBUILD=1; shift ;;
    --debian-sys) DEBIAN_SYS=1; shift ;;
    --timeout) RUN_TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fresh-host-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$RUN_TIMEOUT" =~ ^[0-9]+$ ]] && [ "$RUN_TIMEOUT" -ge 60 ] \
  || { echo "fresh-host-check: --timeout must be at least 60 seconds" >&2; exit 2; }

log() { printf 'fresh-host-check: %s\n' "$*" >&2; }

START=$SECONDS
PHASE_START=$SECONDS
TIMES=()                 # "phase Ns" in order
FIRST_ERROR=""
RESULT=""
ROOT=""                  # the unpacked root (a temp dir)
WORK=""                  # logs and scratch beside it
RUN_PID=""
BEFORE_NETNS="" BEFORE_VETH="" BEFORE_NFT="" BEFORE_PINS=""

PHASE="unpack"           # the phase under way, named in the verdict if it never finished
phase_done() { TIMES+=("$PHASE $((SECONDS - PHASE_START))s${1:+ ($1)}"); PHASE="$2"; PHASE_START=$SECONDS; }
fail() { [ -n "$FIRST_ERROR" ] || FIRST_ERROR="$*"; log "error: $*"; exit 1; }

# ---- what the demo may leave on the host (compared before and after) ----------------
demo_netns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^smdemo-' || true; }
demo_veths() {
  ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 \
    | grep -E '^smd[0-9a-f]{6}[a-z]$' || true
}
agent_nft_tables() { nft list tables 2>/dev/null | grep -E ' socat_monitor$' || true; }
agent_pins() {
  [ -d /sys/fs/bpf ] || return 0
  find /sys/fs/bpf -mindepth 1 -maxdepth 3 \( -iname '*socat*' -o -iname '*smdemo*' \) 2>/dev/null || true
}
new_lines() { comm -13 <(printf '%s\n' "$1" | sort -u) <(printf '%s\n' "$2" | sort -u) | grep . || true; }

# Processes whose root directory is our root: only this script put anything there.
root_pids() {
  find /proc -mindepth 2 -maxdepth 2 -name root -lname "$ROOT" -printf '%h\n' 2>/dev/null | cut -d/ -f3
}

mounted_below() { awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo; }

cleanup() {
  local rc=$? left=() pid name
  set +e
  trap - EXIT INT TERM
  [ -z "$PHASE" ] || phase_done "unfinished" ""
  if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
    kill -TERM "$RUN_PID"        # timeout(1) passes it to its whole process group
    for _ in $(seq 40); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 0.5; done
    ! kill -0 "$RUN_PID" 2>/dev/null || kill -KILL -- "-$RUN_PID"   # its group, while it leads it
    wait "$RUN_PID" 2>/dev/null
  fi
  if [ -n "$ROOT" ] && [ -d "$ROOT" ]; then
    for pid in $(root_pids); do left+=("process $pid"); kill -TERM "$pid" 2>/dev/null; done
    [ "${#left[@]}" -eq 0 ] || sleep 1
    for pid in $(root_pids); do kill -KILL "$pid" 2>/dev/null; done
    for name in "$ROOT"/run/netns/*; do
      [ -e "$name" ] || continue
      left+=("netns ${name##*/}")
      umount "$name" 2>/dev/null || umount -l "$name" 2>/dev/null
    done
    # The root is a tmpfs: unmounting it (and all below) removes it; nothing is deleted file by file.
    umount -R "$ROOT" 2>/dev/null
    [ -z "$(mounted_below)" ] || { log "cleanup: umount -R failed, detaching lazily"; umount -R -l "$ROOT"; }
    if [ -n "$(mounted_below)" ]; then
      log "cleanup: still mounted below $ROOT: $(mounted_below | tr '\n' ' ')"
      [ -n "$FIRST_ERROR" ] || FIRST_ERROR="could not unmount $ROOT"
    else
      rmdir "$ROOT"
    fi
  fi
  for name in $(new_lines "$BEFORE_NETNS" "$(demo_netns)"); do left+=("netns $name"); ip netns del "$name"; done
  for name in $(new_lines "$BEFORE_VETH" "$(demo_veths)"); do left+=("veth $name"); ip link del "$name"; done
  while read -r _ family name; do
    [ -n "$name" ] || continue
    left+=("nft table $family $name"); nft delete table "$family" "$name"
  done <<<"$(new_lines "$BEFORE_NFT" "$(agent_nft_tables)")"
  for name in $(new_lines "$BEFORE_PINS" "$(agent_pins)"); do left+=("bpffs pin $name"); rm -rf "$name"; done
  [ -n "$WORK" ] && rm -rf "$WORK"
  if [ "${#left[@]}" -gt 0 ]; then
    log "removed what the run left behind: ${left[*]}"
    [ -n "$FIRST_ERROR" ] || FIRST_ERROR="the run left behind: ${left[*]}"
  fi
  [ -n "$FIRST_ERROR" ] || [ "$rc" = 0 ] || FIRST_ERROR="stopped (exit $rc)"
  PHASE=cleanup
  phase_done "" ""
  local times="" t
  for t in "${TIMES[@]}"; do times+="$t, "; done
  times+="total $((SECONDS - START))s"
  if [ -z "$FIRST_ERROR" ]; then
    echo "fresh-host-check: PASS: $RESULT ($times)"
    exit 0
  fi
  echo "fresh-host-check: FAIL: $FIRST_ERROR ($times)"
  exit 1
}
trap cleanup EXIT
trap 'FIRST_ERROR="${FIRST_ERROR:-interrupted}"; exit 130' INT TERM

# ---- the cached root ------------------------------------------------------------------
debian_sources() {  # this machine's enabled bookworm sources files
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -v '^[[:space:]]*#' "$f" | grep -q "$SUITE" && echo "$f"
  done
  return 0
}
acquire_options() {  # this machine's apt.conf.d files that accept its dated mirror or name a proxy
  grep -l -i -E '^[[:space:]]*Acquire::(Check-Valid-Until|Check-Date|https?::Proxy)' /etc/apt/apt.conf.d/* \
    2>/dev/null || true
}

cached_root() {  # sets TARBALL, building it when missing
  local sources options key tarball partial args=() f
  mapfile -t sources < <(debian_sources)
  mapfile -t options < <(acquire_options)
  [ "${#sources[@]}" -gt 0 ] || fail "no enabled $SUITE apt source on this machine (/etc/apt/sources.list*)"
  key="$( { echo "$SUITE minbase $INCLUDE"; cat "${sources[@]}" "${options[@]}"; } | sha256sum | cut -c1-12)"
  tarball="$CACHE_DIR/fresh-root-$SUITE-$key.tar"
  if [ "$REBUILD" = 0 ] && [ -s "$tarball" ]; then
    PHASE=unpack
    log "using the cached root $tarball"
    TARBALL="$tarball"
    return 0
  fi
  if ! command -v mmdebstrap >/dev/null; then
    log "installing mmdebstrap"
    command -v apt-get >/dev/null || fail "mmdebstrap is missing and this is not a Debian host (no apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
      || fail "apt-get install mmdebstrap failed"
  fi
  PHASE="build+unpack"
  mkdir -p "$CACHE_DIR"
  partial="$CACHE_DIR/.fresh-root-$SUITE-$key.$$.tar"
  for f in "${options[@]}"; do args+=(--aptopt="$f"); done
  log "building a $SUITE minbase root (+$INCLUDE) with mmdebstrap; mirror: ${sources[*]}; apt options: ${options[*]:-none}"
  if ! timeout "$BUILD_TIMEOUT" mmdebstrap --quiet --variant=minbase --include="$INCLUDE" "${args[@]}" \
         "$SUITE" "$partial" "${sources[@]}" >"$WORK/mmdebstrap.log" 2>&1; then
    tail -n 20 "$WORK/mmdebstrap.log" >&2
    rm -f "$partial"
    fail "mmdebstrap could not build the $SUITE root (log above)"
  fi
  mv -f "$partial" "$tarball"
  find "$CACHE_DIR" -maxdepth 1 -name "fresh-root-$SUITE-*.tar" ! -path "$tarball" -delete
  log "cached $tarball ($(du -m "$tarball" | cut -f1) MiB)"
  TARBALL="$tarball"
}

# ---- the root as a fresh machine ------------------------------------------------------
mount_root() {
  local d
  for d in proc sys dev; do
    if [ "$d" = sys ] && [ "$DEBIAN_SYS" = 1 ]; then
      mount --bind /sys "$ROOT/sys"
      mount --make-rslave "$ROOT/sys"
      mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$ROOT/sys/fs/cgroup"
      continue
    fi
    mount --rbind "/$d" "$ROOT/$d"
    mount --make-rslave "$ROOT/$d"        # nothing mounted inside propagates back to the host
  done
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$ROOT/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$ROOT/tmp"
  mkdir -m 1777 "$ROOT/run/lock"
}

# The network and package-index set-up a user behind a proxy would have made.
carry_in_network() {
  rm -f "$ROOT/etc/resolv.conf"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  [ -s "$ROOT/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    >"$ROOT/etc/hosts"
  [ -f /etc/ssl/certs/ca-certificates.crt ] \
    && cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  [ -d /usr/local/share/ca-certificates ] \
    && cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
  return 0
}

# The environment of a root login on that machine: PATH, HOME, the PIP_* and proxy variables.
inside_env() {
  local name value kept dir
  echo PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  echo HOME=/root
  echo LANG=C.UTF-8
  while IFS='=' read -r name value; do
    case "$name" in
      PIP_FIND_LINKS)
        kept=""
        for dir in $value; do
          if [[ "$dir" == *://* ]] || [ -e "$ROOT/$dir" ]; then kept="${kept:+$kept }$dir"; fi
        done
        [ -z "$kept" ] || echo "PIP_FIND_LINKS=$kept" ;;
      PIP_*|http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY) echo "$name=$value" ;;
    esac
  done < <(env)
}

# socat processes in this machine's own network namespace (what run.sh counts to choose --host).
host_socat_count() {
  local self pid n=0
  self="$(readlink /proc/self/ns/net)"
  for pid in $(pgrep -x socat || true); do
    [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$self" ] && n=$((n + 1))
  done
  echo "$n"
}

# ---- the run -------------------------------------------------------------------------
run_inside() {  # [run.sh args]: runs scripts/run.sh in the root, bounded; sets RUN_RC, RUN_PARTS
  local envs t0=$SECONDS ready=""
  mapfile -t envs < <(inside_env)
  : >"$WORK/run.log"
  # shellcheck disable=SC2016  # $0 and $@ are the inner shell's
  timeout --kill-after=30 "$RUN_TIMEOUT" chroot "$ROOT" /usr/bin/env -i "${envs[@]}" \
    /bin/bash -c 'cd "$0" && exec scripts/run.sh "$@"' "$CHECKOUT" "$@" >"$WORK/run.log" 2>&1 </dev/null &
  RUN_PID=$!
  tail -n +1 -f --pid="$RUN_PID" "$WORK/run.log" | sed -u 's/^/   root| /' &
  local tail_pid=$!
  while kill -0 "$RUN_PID" 2>/dev/null; do
    if grep -q '^run: mode host' "$WORK/run.log"; then
      # A socat started on this machine between our look and run.sh's: it would watch it forever.
      [ "$HOST_RACE" = 1 ] || log "run.sh chose --host (a socat process appeared on this machine meanwhile); stopping it"
      kill -TERM "$RUN_PID"
      HOST_RACE=1
    fi
    [ -n "$ready" ] || ! grep -q '^setup: ready' "$WORK/run.log" || ready=$SECONDS
    sleep 1
  done
  RUN_RC=0
  wait "$RUN_PID" || RUN_RC=$?
  RUN_PID=""
  wait "$tail_pid" 2>/dev/null || true
  if [ -n "$ready" ]; then
    RUN_PARTS="setup.sh $((ready - t0))s, demo $((SECONDS - ready))s"
  else
    RUN_PARTS="setup.sh unfinished"
  fi
}

# The demo's report (demo-report.json, its path printed on the "report:" line): connections, alerts, blocks.
check_report() {
  local path
  path="$(sed -n 's/^ *report: *\(\/[^ ]*demo-report\.json\)$/\1/p' "$WORK/run.log" | tail -n1)"
  [ -n "$path" ] || path="$(find "$ROOT/tmp" -maxdepth 2 -path '*/socat-monitor-demo-*/demo-report.json' \
                              -printf '/tmp/%P\n' 2>/dev/null | head -n1)"
  [ -n "$path" ] && [ -f "$ROOT/${path#/}" ] || return 1
  python3 - "$ROOT/${path#/}" <<'EOF'
import json, sys
try:
    with open(sys.argv[1]) as fh:
        report = json.load(fh)
except (OSError, ValueError) as exc:
    print(f"unreadable {sys.argv[1]}: {exc}")
    sys.exit(1)
connections = int(report.get("connections_seen") or 0)
alerts = sum(int(v) for v in (report.get("alerts") or {}).values())
blocked = report.get("sources_blocked") or []
problems = [what for what, bad in (("no connections", connections <= 0), ("no alerts", alerts <= 0),
                                   ("no block", not blocked), ("lab traffic not as designed",
                                                               not report.get("lab_ok"))) if bad]
summary = f"{connections} connections, {alerts} alerts, {len(blocked)} blocked ({', '.join(blocked)})"
print(("; ".join(problems) + ": " if problems else "") + summary)
sys.exit(1 if problems else 0)
EOF
}

# The run's last error line (or its last line), for the one-line verdict.
last_error() {
  local line
  line="$(grep -i -E 'error|exited|missing|failed|cannot' "$WORK/run.log" | tail -n1)"
  [ -n "$line" ] || line="$(grep -v '^[[:space:]]*$' "$WORK/run.log" | tail -n1)"
  echo "last: $(echo "$line" | tr -s ' ' | cut -c1-240)"
}

# ---- main ----------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "must run as root (chroot, mounts, mmdebstrap): sudo $0"
for bin in git chroot timeout python3 ip nft pgrep; do
  command -v "$bin" >/dev/null || fail "$bin is missing on this machine"
done
WORK="$(mktemp -d /var/tmp/socat-monitor-fresh-work.XXXXXX)"
BEFORE_NETNS="$(demo_netns)"
BEFORE_VETH="$(demo_veths)"
BEFORE_NFT="$(agent_nft_tables)"
BEFORE_PINS="$(agent_pins)"

COMMIT="$(git -C "$REPO" rev-parse HEAD)" || fail "$REPO is not a git checkout"
[ -z "$(git -C "$REPO" status --porcelain --untracked-files=no)" ] \
  || log "note: $REPO has uncommitted changes; the check uses the committed tree $COMMIT only"

TARBALL=""
cached_root
# A tmpfs of its own: unpacking is fast, removing it is one unmount, and the root is a mount point
# (`ip netns exec` remounts / as rslave in its own mount namespace: / must be one). Private: nothing
# mounted below it propagates anywhere.
ROOT="$(mktemp -d /var/tmp/socat-monitor-fresh-root.XXXXXX)"
mount -t tmpfs -o size=8g,mode=0755 tmpfs "$ROOT" || fail "could not mount a tmpfs on $ROOT"
mount --make-private "$ROOT"
tar --numeric-owner -xpf "$TARBALL" -C "$ROOT" || fail "could not unpack $TARBALL"
phase_done "" setup

mount_root || fail "could not mount /proc, /sys, /dev, /run, /tmp into $ROOT"
carry_in_network
git clone -q --no-hardlinks "$REPO" "$ROOT$CHECKOUT" || fail "git clone of $REPO failed"
git -C "$ROOT$CHECKOUT" -c advice.detachedHead=false checkout -q "$COMMIT" || fail "checkout of $COMMIT failed"
phase_done "" run.sh

# run.sh picks --host when a socat process runs in this machine's network namespace, and the
# chroot shares this machine's /proc: with other socat processes running here, name --lab, what
# run.sh picks on the fresh machine the root stands for.
ARGS=()
RUN_CMD="scripts/run.sh"
SOCATS="$(host_socat_count)"
if [ "$SOCATS" -gt 0 ]; then
  ARGS=(--lab)
  RUN_CMD="scripts/run.sh --lab"
  log "$SOCATS socat process(es) run in this machine's network namespace, which the chroot shares:" \
      "scripts/run.sh would pick --host; naming --lab, what it picks on the fresh machine the root stands for"
fi
HOST_RACE=0
log "running $RUN_CMD in the root (commit ${COMMIT:0:12}, at most ${RUN_TIMEOUT}s)"
run_inside "${ARGS[@]}"
phase_done "$RUN_PARTS" ""
[ "$HOST_RACE" = 0 ] || fail "a socat process started on this machine during the check and run.sh chose --host; run again"
[ "$RUN_RC" != 124 ] && [ "$RUN_RC" != 137 ] || fail "$RUN_CMD did not finish within ${RUN_TIMEOUT}s"
SUMMARY="$(check_report)" || fail "$RUN_CMD exited $RUN_RC; demo report: ${SUMMARY:-none}; $(last_error)"
[ "$RUN_RC" = 0 ] || fail "$RUN_CMD exited $RUN_RC although its report shows $SUMMARY"
RESULT="$RUN_CMD on a fresh Debian 12 root: $SUMMARY"
