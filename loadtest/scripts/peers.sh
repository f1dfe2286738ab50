#!/usr/bin/env bash
# Side by side on the same broker, topic and data: Tally's counter, a real
# peer (quixstreams: tumbling one-minute count per key) and the naive
# baseline (one Redis INCR per event), each reading the same pre-filled views
# topic from offset 0 with a fresh consumer group until every record is counted.
#
#   loadtest/scripts/peers.sh     # RUNS=3 EVENTS=300000 VIDEOS=100000
#
# The topic is filled once through `tally ingest` (salting off, no resends, so
# every counter has the same work). A record counts as counted for Tally when
# its flush is sealed (flush interval 250 ms here, so the granularity is small);
# for the others when it was processed. Apache Kafka, redis-server and the counter under
# test share the machine's cores. quixstreams is installed into a venv under
# ~/.cache/tally/tools/peers-venv on first use.
# Prints the medians and ratios, writes RESULTS/peers-*/summary.json.
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-3} EVENTS=${EVENTS:-300000} VIDEOS=${VIDEOS:-100000}
QUIX_VERSION=${QUIX_VERSION:-3.28.1}
VENV=$HOME/.cache/tally/tools/peers-venv
REDIS_PORT=$((BASE_PORT + 3))
build
NAIVE=$TARGET/release/tally-naive-counter
if ! "$VENV/bin/python" -c "import quixstreams, sys; sys.exit(quixstreams.__version__ != '$QUIX_VERSION')" 2>/dev/null; then
    log "installing quixstreams $QUIX_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "quixstreams==$QUIX_VERSION"
fi
DIR=$(results_dir peers)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    stop_broker
}
trap cleanup EXIT
start_broker "$DIR/broker"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$DIR/redis.log" 2>&1 &
PIDS+=($!)
KAFKA=(--set "kafka.brokers=$BROKER")

log "filling tally.views with $EVENTS events over $VIDEOS videos (zipf 1.2) through tally ingest"
"$TALLY" --set log.level=warn "${KAFKA[@]}" --set ingest.salting.detect-threshold-per-sec=0 \
    --set "ingest.listen=$INGEST" --set "ingest.admin-listen=$ADMIN" ingest >"$DIR/ingest.log" 2>&1 &
INGEST_PID=$!
PIDS+=("$INGEST_PID")
wait_http "http://$ADMIN/readyz" 60
"$LOADGEN" --ingest "$INGEST" --mode closed --connections 4 --batch 1000 --duration 600 --duplicates 0 \
    --videos "$VIDEOS" --max-requests $((EVENTS / 1000)) --broker "$BROKER" --out "$DIR/fill.json" >/dev/null
kill -TERM "$INGEST_PID"
wait "$INGEST_PID" || true
RECORDS=$(jq '.partitions.spread.per_partition | add' "$DIR/fill.json")
log "tally.views holds $RECORDS records ($(jq .ingest.events_per_s "$DIR/fill.json") events/s through the gateway)"

counter_events() { # events the tally counter has read, from its metrics
    curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk '/^tally_counter_events_total/ { s += $2 } END { print s + 0 }' || true
}
run_tally() { # $1 = run number; prints JSON
    "$TALLY" --set log.level=warn "${KAFKA[@]}" --set "kafka.topics.counts=tally.counts.peers$1" \
        --set "counter.group-id=tally-peers-$1-$RANDOM" --set "counter.admin-listen=$ADMIN" --set counter.flush-interval=250ms counter >"$DIR/counter-$1.log" 2>&1 &
    local pid=$! start first="" done="" n now
    PIDS+=("$pid")
    start=$(date +%s.%N)
    while :; do
        now=$(date +%s.%N)
        n=$(counter_events)
        if [[ -z $first && $n -gt 0 ]]; then first=$now; fi
        if ((n >= RECORDS)); then done=$now; break; fi
        if (($(echo "$now - $start > 600" | bc) == 1)); then break; fi
        sleep 0.05
    done
    kill -TERM "$pid"
    wait "$pid" || true
    jq -n --argjson records "$RECORDS" --arg start "$start" --arg first "$first" --arg done "$done" \
        '{counter: "tally counter (separate process, flush every 250 ms, deltas to tally.counts)", records: $records,
          seconds_from_first_record: (($done | tonumber) - ($first | tonumber)),
          seconds_with_group_join: (($done | tonumber) - ($start | tonumber)),
          events_per_s: ($records / (($done | tonumber) - ($first | tonumber)))}'
}
for i in $(seq 1 "$RUNS"); do
    log "run $i/$RUNS: tally counter"
    run_tally "$i" >"$DIR/tally-$i.json"
    log "run $i/$RUNS: quixstreams"
    "$VENV/bin/python" "$ROOT/loadtest/peers/quix_count.py" "$BROKER" tally.views "$RECORDS" "$DIR/quix-state-$i" \
        2>"$DIR/quix-$i.log" | tail -1 >"$DIR/quix-$i.json"
    log "run $i/$RUNS: naive Redis INCR"
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    "$NAIVE" --broker "$BROKER" --redis "redis://127.0.0.1:$REDIS_PORT/" --expect "$RECORDS" >"$DIR/naive-$i.json"
    for c in tally quix naive; do jq -c '{counter, events_per_s, seconds_from_first_record}' "$DIR/$c-$i.json" >&2; done
done
cleanup
trap - EXIT
med() { for f in "$DIR"/"$1"-[0-9]*.json; do jq .events_per_s "$f"; done | median; }
jq -n --argjson machine "$(machine_json)" --argjson runs "$RUNS" --argjson records "$RECORDS" \
    --arg command "RUNS=$RUNS EVENTS=$EVENTS VIDEOS=$VIDEOS loadtest/scripts/peers.sh" \
    --argjson tally "$(med tally)" --argjson quix "$(med quix)" --argjson naive "$(med naive)" \
    '{figure: "counters side by side on one pre-filled topic (Apache Kafka)", runs: $runs, records: $records,
      events_per_s: {tally_counter: $tally, quixstreams: $quix, naive_redis_incr: $naive},
      ratio_tally_over_quixstreams: ($tally / $quix), ratio_tally_over_naive: ($tally / $naive),
      command: $command, machine: $machine}' \
    | tee "$DIR/summary.json"
