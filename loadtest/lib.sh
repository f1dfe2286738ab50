# Shared by the load-test scripts (source it): build, start and stop a Tally
# on private loopback ports, medians, result directories.
#
# Environment:
#   CARGO_TARGET_DIR       where the release binaries are (default: ./target)
#   RESULTS                results root (default: loadtest/results, gitignored)
#   LOADTEST_BASE_PORT     first of the private ports (default 18400): ingest,
#                          query, broker, redis, broker controller, ..., admin = base + 9
#   NO_BUILD=1             use the binaries as they are

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cache/tally/tools/bin:$PATH"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TALLY=$TARGET/release/tally
LOADGEN=$TARGET/release/tally-loadgen
RESULTS_ROOT=${RESULTS:-$ROOT/loadtest/results}
BASE_PORT=${LOADTEST_BASE_PORT:-18400}
INGEST=127.0.0.1:$BASE_PORT
QUERY=127.0.0.1:$((BASE_PORT + 1))
BROKER_PORT=$((BASE_PORT + 2))
BROKER=127.0.0.1:$BROKER_PORT
CONTROLLER_PORT=$((BASE_PORT + 4))
ADMIN=127.0.0.1:$((BASE_PORT + 9))

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build() {
    if [[ ${NO_BUILD:-} != 1 ]]; then
        log "building release binaries"
        (cd "$ROOT" && cargo build --release --quiet -p tally -p tally-loadgen)
    fi
}

# results_dir NAME: a fresh directory for one script's run; prints its path.
results_dir() {
    local dir
    dir=$RESULTS_ROOT/$1-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$dir"
    echo "$dir"
}

# median: the median of the numbers on stdin, one per line.
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "null" } else if (NR % 2) { print v[(NR + 1) / 2] } else { print (v[NR / 2] + v[NR / 2 + 1]) / 2 } }'
}

# machine_json: what the figures were measured on.
machine_json() {
    jq -n --arg nproc "$(nproc)" --arg cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
        --arg date "$(date -u +%Y-%m-%d)" --arg commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        '{nproc: ($nproc | tonumber), cpu: $cpu, date: $date, commit: $commit}'
}

STANDALONE_PID=
STANDALONE_DIR=

# wait_http URL SECONDS: until URL answers 2xx.
wait_http() {
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            log "$1 not ready within $2 s"
            return 1
        fi
        sleep 0.2
    done
}

# start_standalone DIR [--set KEY=VALUE ...]: `tally standalone` with its data
# in DIR/data, on the private ports; returns when it is ready.
start_standalone() {
    STANDALONE_DIR=$1
    shift
    mkdir -p "$STANDALONE_DIR"
    "$TALLY" --set log.level=warn \
        --set "ingest.listen=$INGEST" --set "query.listen=$QUERY" \
        --set "standalone.admin-listen=$ADMIN" --set "standalone.broker-port=$BROKER_PORT" \
        --set "standalone.controller-port=$CONTROLLER_PORT" \
        --set "standalone.data-dir=$STANDALONE_DIR/data" "$@" standalone \
        >>"$STANDALONE_DIR/standalone.log" 2>&1 &
    STANDALONE_PID=$!
    log "tally standalone pid $STANDALONE_PID (ingest $INGEST, query $QUERY, admin $ADMIN, broker $BROKER)"
    wait_http "http://$ADMIN/readyz" 120
    wait_http "http://$QUERY/v1/videos/warmup/views" 30
}

# broker_pid: the Apache Kafka child of the standalone we started, if alive.
broker_pid() {
    local pidfile=$STANDALONE_DIR/data/broker/kafka.pid pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if grep -qa kafka.Kafka "/proc/$pid/cmdline" 2>/dev/null; then echo "$pid"; fi
}

# start_broker DIR: Apache Kafka alone (`tally broker`, the broker standalone
# manages) with its data in DIR/data on $BROKER; sets BROKER_RUNNER_PID and
# returns when the broker serves clients.
start_broker() {
    mkdir -p "$1"
    "$TALLY" --set log.level=warn --set "standalone.data-dir=$1/data" --set "standalone.broker-port=$BROKER_PORT" \
        --set "standalone.controller-port=$CONTROLLER_PORT" broker >"$1/broker-runner.log" 2>&1 &
    BROKER_RUNNER_PID=$!
    local deadline=$((SECONDS + 120))
    until grep -q 'tally broker: Apache Kafka' "$1/broker-runner.log" 2>/dev/null; do
        if ! kill -0 "$BROKER_RUNNER_PID" 2>/dev/null || ((SECONDS > deadline)); then
            log "the broker did not start; see $1/broker-runner.log"
            return 1
        fi
        sleep 0.2
    done
    BROKER_PID=$(cat "$1/data/broker/kafka.pid")
    log "Apache Kafka pid $BROKER_PID on $BROKER (tally broker pid $BROKER_RUNNER_PID)"
}

# stop_broker: SIGTERM to `tally broker`, which stops Kafka cleanly.
stop_broker() {
    [[ -n ${BROKER_RUNNER_PID:-} ]] || return 0
    kill -TERM "$BROKER_RUNNER_PID" 2>/dev/null || true
    wait "$BROKER_RUNNER_PID" 2>/dev/null || true
    BROKER_RUNNER_PID=
}

# stop_standalone [KILL|KILL_PROCESS]: SIGTERM the standalone we started
# (it stops its broker); KILL: SIGKILL it and its broker, as a machine crash
# would; KILL_PROCESS: SIGKILL the Tally process alone, leaving its broker
# running for the next standalone to adopt.
stop_standalone() {
    [[ -n $STANDALONE_PID ]] || return 0
    local broker
    broker=$(broker_pid)
    if [[ ${1:-} == KILL || ${1:-} == KILL_PROCESS ]]; then
        kill -KILL "$STANDALONE_PID" 2>/dev/null || true
    else
        kill -TERM "$STANDALONE_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$STANDALONE_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$STANDALONE_PID" 2>/dev/null || true
    fi
    wait "$STANDALONE_PID" 2>/dev/null || true
    # The broker dies with a graceful standalone; after SIGKILL it is left behind.
    if [[ ${1:-} != KILL_PROCESS && -n $broker ]] && kill -0 "$broker" 2>/dev/null; then
        kill -KILL "$broker" 2>/dev/null || true
    fi
    STANDALONE_PID=
}

trap 'stop_standalone' EXIT
