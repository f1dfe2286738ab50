#!/usr/bin/env bash
# Where the CPU goes under an end-to-end load of `tally standalone` (release,
# its managed Apache Kafka broker, private ports): the CPU seconds of the
# standalone, its broker and the load generator over the measured window,
# by thread group (/proc/PID/task), and with a working `perf` a sampled
# profile (cpu-clock, by process, thread group, shared object and symbol).
#
#   loadtest/scripts/profile.sh   # RATE=100 BATCH=1000 DURATION=30 WARMUP_LOAD=10 PERF_SECONDS=20
#   QUERY_RATE=10000 RATE=10 loadtest/scripts/profile.sh   # also 10,000 queries/s (GET /v1/videos/{id}/views)
#
# An unmeasured warm-up load of WARMUP_LOAD seconds first (the broker's JIT
# compiles under it), then RATE requests/s of BATCH events for DURATION
# seconds, open loop, VIDEOS videos (zipf ZIPF), DUPLICATES resends, with
# the exactness check; perf samples PERF_SECONDS from WARMUP seconds in.
# Writes RESULTS/profile-*/{run.json,loadgen.json,profile.txt}.
source "$(dirname "$0")/../lib.sh"
source "$ROOT/loadtest/procstat.sh"
RATE=${RATE:-100} BATCH=${BATCH:-1000} DURATION=${DURATION:-30} WARMUP_LOAD=${WARMUP_LOAD:-10} WARMUP=${WARMUP:-5}
VIDEOS=${VIDEOS:-1000} ZIPF=${ZIPF:-1.2} DUPLICATES=${DUPLICATES:-0.05} PERF_SECONDS=${PERF_SECONDS:-20}
QUERY_RATE=${QUERY_RATE:-0}
COMMAND="QUERY_RATE=$QUERY_RATE RATE=$RATE BATCH=$BATCH DURATION=$DURATION WARMUP_LOAD=$WARMUP_LOAD VIDEOS=$VIDEOS ZIPF=$ZIPF DUPLICATES=$DUPLICATES PERF_SECONDS=$PERF_SECONDS loadtest/scripts/profile.sh"
build
DIR=$(results_dir profile)
start_standalone "$DIR"
LOAD=(--ingest "$INGEST" --query "$QUERY" --rate "$RATE" --batch "$BATCH" --videos "$VIDEOS" --zipf "$ZIPF" --duplicates "$DUPLICATES")
if ((WARMUP_LOAD > 0)); then
    log "warm-up load, $WARMUP_LOAD s"
    "$LOADGEN" "${LOAD[@]}" --duration "$WARMUP_LOAD" --max-requests $((RATE * WARMUP_LOAD)) --no-exactness \
        --out "$DIR/warmup.json" >/dev/null 2>"$DIR/warmup.log"
    sleep 3
fi
PROCS=(standalone="$STANDALONE_PID" broker="$(broker_pid)")
load_before=$(cut -d' ' -f1 /proc/loadavg)
cpu_snapshot "${PROCS[@]}" >"$DIR/cpu-before.tsv"
started=$(date +%s.%N)
log "measured load: $((RATE * BATCH)) events/s for $DURATION s"
/usr/bin/time -o "$DIR/loadgen.time" -f '{"wall_s":%e,"user_s":%U,"sys_s":%S,"max_rss_kib":%M}' \
    "$LOADGEN" "${LOAD[@]}" --duration "$DURATION" --warmup "$WARMUP" --max-requests $((RATE * DURATION)) \
    --query-rate "$QUERY_RATE" --out "$DIR/loadgen.json" --plot "$DIR/loadgen.svg" >/dev/null 2>"$DIR/loadgen.log" &
LOADGEN_PID=$!
if ((PERF_SECONDS > 0)) && perf_works; then
    sleep "$WARMUP"
    gen=$(pgrep -P "$LOADGEN_PID" || true)
    perf_profile "$DIR/profile" "$PERF_SECONDS" "${PROCS[@]}" ${gen:+loadgen="${gen%%$'\n'*}"}
fi
wait "$LOADGEN_PID"
elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }')
cpu_snapshot "${PROCS[@]}" >"$DIR/cpu-after.tsv"
peak_rss=$(peak_rss_json "${PROCS[@]}")
stop_standalone
jq -n --argjson machine "$(machine_json)" --arg command "$COMMAND" --argjson elapsed "$elapsed" \
    --argjson cpu "$(cpu_json "$DIR/cpu-before.tsv" "$DIR/cpu-after.tsv")" --argjson rss "$peak_rss" \
    --slurpfile time "$DIR/loadgen.time" --slurpfile loadgen "$DIR/loadgen.json" \
    --argjson la0 "$load_before" --argjson la1 "$(cut -d' ' -f1 /proc/loadavg)" \
    '{figure: "where the CPU goes, tally standalone end to end", command: $command, machine: $machine,
      window_s: $elapsed, load_average_1m: {before: $la0, after: $la1},
      processes: ($cpu | with_entries(.value += {peak_rss_kib: $rss[.key]})
        + {loadgen: {cpu_s: ($time[0].user_s + $time[0].sys_s), peak_rss_kib: $time[0].max_rss_kib}}),
      ingest: ($loadgen[0].ingest | {events_per_s, steady: .steady | {events_per_s, latency_ms}, statuses: .answers.statuses}),
      query: $loadgen[0].query,
      exactness: $loadgen[0].exactness}' | tee "$DIR/run.json"
