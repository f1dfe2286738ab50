#!/usr/bin/env bash
# Hot-key skew: how the views topic's partitions fill under zipf 1.2, without
# salting and with it. Each configuration runs on a fresh `tally standalone`
# (release, private ports); the records each partition gained are read from
# the broker's high watermarks before and after; imbalance = max / mean.
#
#   loadtest/scripts/imbalance.sh   # RUNS=3 DURATION=20 RATE=60 BATCH=10 ZIPF=1.2 THRESHOLD=50 SUB_SHARDS=4
#
# THRESHOLD is the run-time detector's rate (events/s per gateway) above which
# a video was salted; SUB_SHARDS how many partitions it spreads over at once.
# Since issue 15 the detector only reports hot videos and only configured
# `hot-videos` are salted: the "salted" run below no longer salts anything
# (see BENCHMARKS.md, hot-key skew).
# Prints the medians and writes RESULTS/imbalance-*/summary.json.
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-3} DURATION=${DURATION:-20} RATE=${RATE:-60} BATCH=${BATCH:-10} ZIPF=${ZIPF:-1.2}
THRESHOLD=${THRESHOLD:-50} SUB_SHARDS=${SUB_SHARDS:-4}
build
DIR=$(results_dir imbalance)
for config in unsalted salted; do
    if [[ $config == unsalted ]]; then
        sets=(--set ingest.salting.detect-threshold-per-sec=0)
    else
        sets=(--set "ingest.salting.detect-threshold-per-sec=$THRESHOLD" --set "ingest.salting.sub-shards=$SUB_SHARDS")
    fi
    start_standalone "$DIR/$config" "${sets[@]}"
    for i in $(seq 1 "$RUNS"); do
        log "$config run $i/$RUNS: zipf $ZIPF, $((RATE * BATCH)) events/s, $DURATION s"
        "$LOADGEN" --ingest "$INGEST" --rate "$RATE" --batch "$BATCH" --duration "$DURATION" --zipf "$ZIPF" \
            --broker "$BROKER" --metrics "$ADMIN" --out "$DIR/$config-$i.json" >/dev/null
        jq -c '{imbalance: .partitions.spread.max_over_mean, per_partition: .partitions.spread.per_partition, salted: .salting.events_salted}' "$DIR/$config-$i.json" >&2
    done
    stop_standalone
done
med() { for f in "$DIR"/"$1"-*.json; do jq "$2" "$f"; done | median; }
jq -n --argjson machine "$(machine_json)" \
    --arg command "RUNS=$RUNS DURATION=$DURATION RATE=$RATE BATCH=$BATCH ZIPF=$ZIPF THRESHOLD=$THRESHOLD SUB_SHARDS=$SUB_SHARDS loadtest/scripts/imbalance.sh" \
    --argjson unsalted "$(med unsalted .partitions.spread.max_over_mean)" --argjson salted "$(med salted .partitions.spread.max_over_mean)" \
    --argjson salted_share "$(med salted '.salting.events_salted / .ingest.events_acknowledged')" \
    --argjson partitions "$(jq '.partitions.spread.per_partition | length' "$DIR/unsalted-1.json")" --argjson runs "$RUNS" \
    '{figure: "partition imbalance (max / mean records per partition)", runs: $runs, partitions: $partitions,
      median_unsalted: $unsalted, median_salted: $salted, salted_share_of_events: $salted_share, command: $command, machine: $machine}' \
    | tee "$DIR/summary.json"
