#!/usr/bin/env bash
# Counter memory per active key: `tally counter` (release, its own process)
# counts the same number of events spread over few and over many videos
# (uniform ids), each from a pre-filled topic of an Apache Kafka broker
# (`tally broker`); the difference in peak RSS (VmHWM) divided by the difference in
# distinct videos is the memory one more active key costs (the events, and
# so the dedup window, are the same in both). Also reports the counter's own
# dedup estimate (tally_counter_dedup_bytes / entries).
#
#   loadtest/scripts/memory.sh    # RUNS=3 EVENTS=500000 FEW=1000 MANY=200000
#
# Prints the medians and writes RESULTS/memory-*/summary.json.
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-3} EVENTS=${EVENTS:-500000} FEW=${FEW:-1000} MANY=${MANY:-200000}
build
DIR=$(results_dir memory)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; stop_broker; }
trap cleanup EXIT
start_broker "$DIR/broker"
KAFKA=(--set "kafka.brokers=$BROKER")
declare -A RECORDS
for videos in "$FEW" "$MANY"; do
    topic=tally.views.v$videos
    log "filling $topic: $EVENTS events, uniform over $videos videos"
    "$TALLY" --set log.level=warn "${KAFKA[@]}" --set "kafka.topics.views=$topic" --set ingest.salting.detect-threshold-per-sec=0 \
        --set "ingest.listen=$INGEST" --set "ingest.admin-listen=$ADMIN" ingest >"$DIR/ingest-$videos.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://$ADMIN/readyz" 60
    "$LOADGEN" --ingest "$INGEST" --mode closed --connections 4 --batch 1000 --duration 600 --duplicates 0 --zipf 0 \
        --videos "$videos" --max-requests $((EVENTS / 1000)) --broker "$BROKER" --topic "$topic" --out "$DIR/fill-$videos.json" >/dev/null
    kill -TERM "$pid"
    wait "$pid" || true
    RECORDS[$videos]=$(jq '.partitions.spread.per_partition | add' "$DIR/fill-$videos.json")
done
metric_sum() { curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk -v m="$1" 'index($1, m) == 1 { s += $2 } END { print s + 0 }' || true; }
for i in $(seq 1 "$RUNS"); do
    for videos in "$FEW" "$MANY"; do
        "$TALLY" --set log.level=warn "${KAFKA[@]}" --set "kafka.topics.views=tally.views.v$videos" \
            --set "kafka.topics.counts=tally.counts.m$i.v$videos" --set "counter.group-id=tally-memory-$i-$videos-$RANDOM" \
            --set "counter.admin-listen=$ADMIN" counter >"$DIR/counter-$i-$videos.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        deadline=$((SECONDS + 300))
        until (($(metric_sum tally_counter_events_total) >= RECORDS[$videos])) || ((SECONDS > deadline)); do sleep 0.1; done
        sleep 2 # one more flush: the rows' memory has been used and the dedup gauges are published
        hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
        rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
        jq -n --argjson videos "$videos" --argjson records "${RECORDS[$videos]}" --argjson hwm_kib "$hwm" --argjson rss_kib "$rss" \
            --argjson dedup_entries "$(metric_sum tally_counter_dedup_entries)" --argjson dedup_bytes "$(metric_sum tally_counter_dedup_bytes)" \
            --argjson counted "$(metric_sum tally_counter_events_total)" \
            '{videos: $videos, records: $records, counted: $counted, peak_rss_kib: $hwm_kib, rss_kib: $rss_kib, dedup_entries: $dedup_entries, dedup_bytes_estimate: $dedup_bytes}' \
            | tee "$DIR/run-$i-$videos.json" >&2
        kill -TERM "$pid"
        wait "$pid" || true
    done
done
cleanup
trap - EXIT
per_key() {
    for i in $(seq 1 "$RUNS"); do
        jq -n --slurpfile few "$DIR/run-$i-$FEW.json" --slurpfile many "$DIR/run-$i-$MANY.json" \
            '(($many[0].peak_rss_kib - $few[0].peak_rss_kib) * 1024) / ($many[0].videos - $few[0].videos)'
    done | median
}
med() { for f in "$DIR"/run-*-"$1".json; do jq "$2" "$f"; done | median; }
jq -n --argjson machine "$(machine_json)" --argjson runs "$RUNS" --argjson events "$EVENTS" --argjson few "$FEW" --argjson many "$MANY" \
    --arg command "RUNS=$RUNS EVENTS=$EVENTS FEW=$FEW MANY=$MANY loadtest/scripts/memory.sh" \
    --argjson per_key "$(per_key)" --argjson hwm_few "$(med "$FEW" .peak_rss_kib)" --argjson hwm_many "$(med "$MANY" .peak_rss_kib)" \
    --argjson dedup_per_entry "$(med "$FEW" '.dedup_bytes_estimate / (.dedup_entries | if . == 0 then 1 else . end)')" \
    '{figure: "counter memory per active key (marginal peak RSS)", runs: $runs, events: $events,
      median_peak_rss_kib: {($few | tostring): $hwm_few, ($many | tostring): $hwm_many},
      median_bytes_per_active_key: $per_key, dedup_estimate_bytes_per_event_id: $dedup_per_entry, command: $command, machine: $machine}' \
    | tee "$DIR/summary.json"
