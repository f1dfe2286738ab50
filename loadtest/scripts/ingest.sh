#!/usr/bin/env bash
# Gateway throughput, single events and batches, with nothing else between
# the gateway and the broker: `tally ingest` (release) alone against an Apache
# Kafka broker (`tally broker`, one KRaft node), private ports.
# Every 202 still waits for the broker's acknowledgement of every event.
#
#   loadtest/scripts/ingest.sh    # RUNS=3 DURATION=10 SINGLE_CONNECTIONS=32 BATCH_CONNECTIONS=8
#
# Four measurements per run: wrk (closed loop) single events (SINGLE_CONNECTIONS)
# and 1,000-event NDJSON batches (BATCH_CONNECTIONS); tally-loadgen closed loop,
# the same with JSON arrays. A single event waits for the producer's linger
# (ingest.linger, 5 ms) and the broker's ack, so single-event throughput is
# about connections / latency: raise SINGLE_CONNECTIONS to see more.
# Prints the medians and writes RESULTS/ingest-*/summary.json.
source "$(dirname "$0")/../lib.sh"
command -v wrk >/dev/null || { log "ingest.sh needs wrk (Debian: apt-get install wrk)"; exit 1; }
RUNS=${RUNS:-3} DURATION=${DURATION:-10}
SINGLE_CONNECTIONS=${SINGLE_CONNECTIONS:-32} BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-8}
build
DIR=$(results_dir ingest)
start_broker "$DIR/broker"
"$TALLY" --set log.level=warn --set "kafka.brokers=$BROKER" \
    --set "ingest.listen=$INGEST" --set "ingest.admin-listen=$ADMIN" ingest >"$DIR/ingest.log" 2>&1 &
INGEST_PID=$!
cleanup() {
    kill -TERM "$INGEST_PID" 2>/dev/null || true
    sleep 1
    kill -KILL "$INGEST_PID" 2>/dev/null || true
    wait "$INGEST_PID" 2>/dev/null || true
    stop_broker
}
trap cleanup EXIT
log "tally ingest pid $INGEST_PID on $INGEST"
wait_http "http://$ADMIN/readyz" 60
curl -fsS -o /dev/null -H 'content-type: application/json' -d '{"video_id":"warmup"}' "http://$INGEST/v1/events"
wrk_rps() { # wrk output -> requests/s
    awk '/^Requests\/sec:/ { print $2 }'
}
wrk_p99() { # wrk --latency output -> p99 in ms
    awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } print v }'
}
for i in $(seq 1 "$RUNS"); do
    log "run $i/$RUNS"
    wrk -t2 -c"$SINGLE_CONNECTIONS" -d"${DURATION}s" --latency -s "$ROOT/loadtest/wrk/single.lua" "http://$INGEST/v1/events" >"$DIR/wrk-single-$i.txt"
    BATCH=1000 wrk -t2 -c"$BATCH_CONNECTIONS" -d"${DURATION}s" --latency -s "$ROOT/loadtest/wrk/batch.lua" "http://$INGEST/v1/events" >"$DIR/wrk-batch-$i.txt"
    "$LOADGEN" --ingest "$INGEST" --mode closed --connections "$SINGLE_CONNECTIONS" --batch 1 --duration "$DURATION" \
        --out "$DIR/loadgen-single-$i.json" --plot "$DIR/loadgen-single-$i.svg" >/dev/null
    "$LOADGEN" --ingest "$INGEST" --mode closed --connections "$BATCH_CONNECTIONS" --batch 1000 --duration "$DURATION" \
        --out "$DIR/loadgen-batch-$i.json" --plot "$DIR/loadgen-batch-$i.svg" >/dev/null
    for kind in single batch; do
        non2xx=$(awk '/Non-2xx/ { print $NF }' "$DIR/wrk-$kind-$i.txt")
        log "wrk $kind: $(wrk_rps <"$DIR/wrk-$kind-$i.txt") req/s, p99 $(wrk_p99 <"$DIR/wrk-$kind-$i.txt") ms, non-2xx ${non2xx:-0}"
        jq -c '{mode: .ingest.mode, batch: .ingest.batch, events_per_s: .ingest.events_per_s, p99: .ingest.latency_ms.p99, statuses: .ingest.answers.statuses}' "$DIR/loadgen-$kind-$i.json" >&2
    done
done
cleanup
trap - EXIT
wrk_med() { for f in "$DIR"/wrk-"$1"-*.txt; do "$2" <"$f"; done | median; }
lg_med() { for f in "$DIR"/loadgen-"$1"-*.json; do jq "$2" "$f"; done | median; }
errors() { cat "$DIR"/wrk-*.txt | awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }'; }
jq -n --argjson machine "$(machine_json)" --argjson runs "$RUNS" \
    --arg command "RUNS=$RUNS DURATION=$DURATION SINGLE_CONNECTIONS=$SINGLE_CONNECTIONS BATCH_CONNECTIONS=$BATCH_CONNECTIONS loadtest/scripts/ingest.sh" \
    --argjson ws "$(wrk_med single wrk_rps)" --argjson wsp "$(wrk_med single wrk_p99)" \
    --argjson wb "$(wrk_med batch wrk_rps)" --argjson wbp "$(wrk_med batch wrk_p99)" \
    --argjson ls "$(lg_med single .ingest.events_per_s)" --argjson lsp "$(lg_med single .ingest.latency_ms.p99)" \
    --argjson lb "$(lg_med batch .ingest.events_per_s)" --argjson lbp "$(lg_med batch .ingest.latency_ms.p99)" \
    --argjson wrk_error_lines "$(errors)" \
    '{figure: "gateway throughput (tally ingest alone, Apache Kafka)", runs: $runs,
      wrk_single: {events_per_s: $ws, p99_ms: $wsp}, wrk_batch_1000: {events_per_s: ($wb * 1000), requests_per_s: $wb, p99_ms: $wbp},
      loadgen_closed_single: {events_per_s: $ls, p99_ms: $lsp}, loadgen_closed_batch_1000: {events_per_s: $lb, p99_ms: $lbp},
      wrk_outputs_with_errors: $wrk_error_lines, command: $command, machine: $machine}' \
    | tee "$DIR/summary.json"
