#!/usr/bin/env bash
# The highest ingest rate `tally standalone` sustains (release, its managed
# Apache Kafka broker, private ports, a fresh data directory), open loop,
# latency from the intended send time:
#
#   loadtest/scripts/sustained.sh     # RATES="100 150 200" BATCH=1000 RUNS=3 DURATION=20 VIDEOS=1000 ZIPF=1.2 DUPLICATES=0.05
#   BATCH=1 RATES="10000 15000 20000 30000" loadtest/scripts/sustained.sh   # single-event requests
#
# RATES are requests/s of BATCH events. Every rate gets RUNS runs of DURATION
# seconds, interleaved (each rate once, then each rate again), against one
# standalone, each with the exactness check through the query API (the
# generator names its videos per run). A run is sustained when nothing was
# lost or duplicated, every request was answered 202 without a retry, its
# steady throughput (after WARMUP seconds, counted by acknowledgement time,
# so the window's edges move it by a few percent) is at least 95 % of the
# offered rate, its steady p50 is at most MAX_P50_MS (default 100 ms: a
# request that does not queue takes 10-30 ms here), and its latency is
# flat: the median of the per-second p99 over the last third of the run is
# at most twice the median over the first steady third plus 20 ms (a run
# falling behind grows its latency from the intended send time second after
# second). A rate is sustained when most of its runs are. Bounded: at most
# RATE * DURATION requests a run (retries included), CONCURRENCY requests in
# flight.
#
# Prints a line per rate (medians over its runs) and the highest sustained
# rate; writes RESULTS/sustained-*/{run-RATE-I.json,verdict-RATE-I.json,summary.json}.
# SUMMARIZE=RESULTS/sustained-... judges the runs of an earlier sweep again
# (with this script's rules and RATES) without running anything.
source "$(dirname "$0")/../lib.sh"
RATES=${RATES:-100 150 200} BATCH=${BATCH:-1000} RUNS=${RUNS:-3} DURATION=${DURATION:-20} WARMUP=${WARMUP:-3}
VIDEOS=${VIDEOS:-1000} ZIPF=${ZIPF:-1.2} DUPLICATES=${DUPLICATES:-0.05} CONCURRENCY=${CONCURRENCY:-4096}
MAX_P50_MS=${MAX_P50_MS:-100} SUMMARIZE=${SUMMARIZE:-}
COMMAND="RATES=\"$RATES\" BATCH=$BATCH RUNS=$RUNS DURATION=$DURATION WARMUP=$WARMUP VIDEOS=$VIDEOS ZIPF=$ZIPF DUPLICATES=$DUPLICATES CONCURRENCY=$CONCURRENCY MAX_P50_MS=$MAX_P50_MS loadtest/scripts/sustained.sh"

# verdict FILE: one run's figures and whether it was sustained, as JSON.
verdict() {
    jq -c --argjson offered "$1" --argjson max_p50 "$MAX_P50_MS" '
        def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
        .ingest as $i
        | ($i.timeline | map(select(.t >= $i.steady.from_s))) as $steady
        | ($steady | length / 3 | floor) as $third
        | ($steady[:$third] | map(.p99_ms) | median) as $early
        | ($steady[-$third:] | map(.p99_ms) | median) as $late
        | {offered_events_per_s: ($offered * $i.batch), steady_events_per_s: $i.steady.events_per_s,
           p50_ms: $i.steady.latency_ms.p50, p99_ms: $i.steady.latency_ms.p99,
           early_p99_ms: $early, late_p99_ms: $late, statuses: $i.answers.statuses, retries: $i.answers.retries,
           lost: .exactness.lost, duplicated: .exactness.duplicated}
        | .flat = ($third > 0 and .late_p99_ms <= 2 * .early_p99_ms + 20)
        | .sustained = (.lost == 0 and .duplicated == 0 and .retries == 0
            and ((.statuses | to_entries | map(select(.key != "202") | .value) | add) // 0) == 0
            and .steady_events_per_s >= 0.95 * .offered_events_per_s and .p50_ms <= $max_p50 and .flat)' "$2"
}

if [[ -n $SUMMARIZE ]]; then
    DIR=$SUMMARIZE
    for run in "$DIR"/run-*-*.json; do
        name=$(basename "$run" .json)
        rate=${name#run-}
        verdict "${rate%-*}" "$run" >"$DIR/verdict-${name#run-}.json"
    done
else
    build
    DIR=$(results_dir sustained)
    start_standalone "$DIR"
    trap stop_standalone EXIT

    for i in $(seq 1 "$RUNS"); do
        for rate in $RATES; do
            log "run $i/$RUNS: $rate requests/s of $BATCH events, $DURATION s"
            out=$DIR/run-$rate-$i.json
            "$LOADGEN" --ingest "$INGEST" --query "$QUERY" --mode open --rate "$rate" --batch "$BATCH" \
                --duration "$DURATION" --warmup "$WARMUP" --max-requests $((rate * DURATION)) \
                --concurrency "$CONCURRENCY" --videos "$VIDEOS" --zipf "$ZIPF" --duplicates "$DUPLICATES" \
                --out "$out" >/dev/null 2>"$DIR/run-$rate-$i.log"
            verdict "$rate" "$out" | tee "$DIR/verdict-$rate-$i.json" >&2
            sleep 3
        done
    done
    stop_standalone
    trap - EXIT
fi

rates_json=$(for rate in $RATES; do
    jq -s --argjson rate "$rate" '
        def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
        {requests_per_s: $rate, offered_events_per_s: .[0].offered_events_per_s,
         steady_events_per_s: (map(.steady_events_per_s) | median), p50_ms: (map(.p50_ms) | median),
         p99_ms: (map(.p99_ms) | median), lost: (map(.lost) | add), duplicated: (map(.duplicated) | add),
         runs_sustained: (map(select(.sustained)) | length), runs: length}
        | .sustained = (.runs_sustained * 2 > .runs)' "$DIR"/verdict-"$rate"-*.json
done | jq -s .)
jq -n --argjson machine "$(machine_json)" --arg command "$COMMAND" --argjson rates "$rates_json" \
    '{figure: "highest sustained ingest rate, tally standalone, open loop", command: $command, machine: $machine,
      rates: $rates, highest_sustained_events_per_s: ([$rates[] | select(.sustained) | .offered_events_per_s] | max)}' \
    | tee "$DIR/summary.json"
