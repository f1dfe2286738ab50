#!/usr/bin/env bash
# Query latency at a fixed offered rate (open loop, from the intended send
# time) while ingest runs at a fixed rate; `tally standalone` (release, the
# in-process cache) on private ports. The generator shares the machine.
#
#   loadtest/scripts/query-during-ingest.sh   # RUNS=3 DURATION=20 QUERY_RATE=20000 RATE=60 BATCH=10
#   QUERY_KIND=trending loadtest/scripts/query-during-ingest.sh   # GET /v1/trending?window=1h&limit=100 instead
#
# p99 is over the steady part (after WARMUP seconds). Prints the medians and
# writes RESULTS/query-during-ingest-*/summary.json.
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-3} DURATION=${DURATION:-20} QUERY_RATE=${QUERY_RATE:-20000} RATE=${RATE:-60} BATCH=${BATCH:-10} WARMUP=${WARMUP:-3}
QUERY_KIND=${QUERY_KIND:-views}
case $QUERY_KIND in
    views) query_flags=() ;;
    trending) query_flags=(--query-trending) ;;
    *) echo "QUERY_KIND is views or trending, not $QUERY_KIND" >&2; exit 2 ;;
esac
build
DIR=$(results_dir query-during-ingest)
start_standalone "$DIR"
for i in $(seq 1 "$RUNS"); do
    log "run $i/$RUNS: queries at $QUERY_RATE req/s, ingest $((RATE * BATCH)) events/s, $DURATION s"
    "$LOADGEN" --ingest "$INGEST" --query "$QUERY" --rate "$RATE" --batch "$BATCH" --duration "$DURATION" --warmup "$WARMUP" \
        --query-rate "$QUERY_RATE" "${query_flags[@]}" --no-exactness --out "$DIR/run-$i.json" >/dev/null
    jq -c '{query_rps: .query.steady.requests_per_s, p50: .query.steady.latency_ms.p50, p99: .query.steady.latency_ms.p99, failures: .query.failures, ingest_events_per_s: .ingest.events_per_s}' "$DIR/run-$i.json" >&2
done
stop_standalone
med() { for f in "$DIR"/run-*.json; do jq "$1" "$f"; done | median; }
jq -n --argjson machine "$(machine_json)" \
    --arg command "RUNS=$RUNS DURATION=$DURATION QUERY_RATE=$QUERY_RATE RATE=$RATE BATCH=$BATCH QUERY_KIND=$QUERY_KIND loadtest/scripts/query-during-ingest.sh" \
    --argjson rps "$(med .query.steady.requests_per_s)" --argjson p50 "$(med .query.steady.latency_ms.p50)" \
    --argjson p99 "$(med .query.steady.latency_ms.p99)" --argjson failures "$(med .query.failures)" \
    --argjson ingest "$(med .ingest.events_per_s)" --argjson runs "$RUNS" --argjson offered "$QUERY_RATE" \
    --arg kind "$QUERY_KIND" \
    '{figure: "query latency at a fixed rate during ingest", query_kind: $kind, runs: $runs, offered_rps: $offered, median_served_rps: $rps,
      median_p50_ms: $p50, median_p99_ms: $p99, median_failures: $failures, ingest_events_per_s: $ingest, command: $command, machine: $machine}' \
    | tee "$DIR/summary.json"
