#!/usr/bin/env bash
# End-to-end freshness: post one event of a new video, poll the query API
# until it shows 1 view; p50/p99 of that time, while background ingest load
# runs. `tally standalone` (release) on private ports, a fresh data directory.
#
#   loadtest/scripts/freshness.sh            # RUNS=3 DURATION=30 RATE=60 BATCH=10 EVERY_MS=200
#
# Prints the medians and writes RESULTS/freshness-*/summary.json.
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-3} DURATION=${DURATION:-30} RATE=${RATE:-60} BATCH=${BATCH:-10} EVERY_MS=${EVERY_MS:-200}
build
DIR=$(results_dir freshness)
start_standalone "$DIR"
for i in $(seq 1 "$RUNS"); do
    log "run $i/$RUNS: $((RATE * BATCH)) events/s background, a probe every $EVERY_MS ms, $DURATION s"
    "$LOADGEN" --ingest "$INGEST" --query "$QUERY" --rate "$RATE" --batch "$BATCH" --duration "$DURATION" \
        --freshness-every-ms "$EVERY_MS" --no-exactness --out "$DIR/run-$i.json" --plot "$DIR/run-$i.svg" >/dev/null
    jq -c '{probes: .freshness.probes_visible, problems: .freshness.problems, p50: .freshness.latency_ms.p50, p99: .freshness.latency_ms.p99, ingest_events_per_s: .ingest.events_per_s}' "$DIR/run-$i.json" >&2
done
stop_standalone
med() { for f in "$DIR"/run-*.json; do jq "$1" "$f"; done | median; }
jq -n --argjson machine "$(machine_json)" \
    --arg command "RUNS=$RUNS DURATION=$DURATION RATE=$RATE BATCH=$BATCH EVERY_MS=$EVERY_MS loadtest/scripts/freshness.sh" \
    --argjson p50 "$(med .freshness.latency_ms.p50)" --argjson p99 "$(med .freshness.latency_ms.p99)" \
    --argjson ingest "$(med .ingest.events_per_s)" --argjson runs "$RUNS" \
    --argjson problems "$(jq -s '[.[].freshness.problems | to_entries[].value] | add // 0' "$DIR"/run-*.json)" \
    '{figure: "freshness (post -> visible through the query API)", runs: $runs, median_p50_ms: $p50, median_p99_ms: $p99,
      background_events_per_s: $ingest, probes_with_problems: $problems, command: $command, machine: $machine}' \
    | tee "$DIR/summary.json"
