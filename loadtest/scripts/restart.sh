#!/usr/bin/env bash
# Restart to caught up: `tally standalone` (release, private ports) under
# steady open-loop ingest is killed with SIGKILL, stays down DOWN seconds
# (the generator keeps retrying its batches with the same ids), and is
# started again. Measured from the restart command: the admin /readyz, the
# counter owning its partitions again (group rejoin), and the counter caught up (it owns its partitions and its lag is at most one
# second: tally_counter_owned_lag_seconds <= 1, read every 100 ms,
# the counter publishing lag every 250 ms). The generator's exactness check
# afterwards says whether the crash lost or repeated any view.
#
#   loadtest/scripts/restart.sh   # CRASH=process RUNS=3 RATE=60 BATCH=10 KILL_AT=10 DOWN=5 DURATION=40
#
# CRASH=process kills the Tally process alone (its broker runs on and the
# restarted standalone adopts it); CRASH=machine kills the broker with it.
#
# Prints the medians and writes RESULTS/restart-*/summary.json.
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-3} RATE=${RATE:-60} BATCH=${BATCH:-10} KILL_AT=${KILL_AT:-10} DOWN=${DOWN:-5} DURATION=${DURATION:-40}
CRASH=${CRASH:-process}
case $CRASH in
    process) KILL_MODE=KILL_PROCESS ;; # the Tally process dies; its broker runs on and is adopted
    machine) KILL_MODE=KILL ;;         # the Tally process and its broker die together
    *) echo "restart.sh: CRASH is process or machine, not $CRASH" >&2; exit 2 ;;
esac
build
DIR=$(results_dir restart)
SETS=(--set counter.lag-interval=250ms)
metric() { curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk -v m="$1" '$1 == m { print $2 }' || true; }
owned() { curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk '/^tally_counter_owned_partitions/ { s += $2 } END { print s + 0 }' || true; }
for i in $(seq 1 "$RUNS"); do
    start_standalone "$DIR/run-$i" "${SETS[@]}"
    log "run $i/$RUNS: $((RATE * BATCH)) events/s for $DURATION s, kill -9 ($CRASH) at $KILL_AT s, down $DOWN s"
    "$LOADGEN" --ingest "$INGEST" --query "$QUERY" --rate "$RATE" --batch "$BATCH" --duration "$DURATION" \
        --out "$DIR/run-$i.json" --plot "$DIR/run-$i.svg" >/dev/null 2>"$DIR/loadgen-$i.log" &
    LOADGEN_PID=$!
    sleep "$KILL_AT"
    stop_standalone "$KILL_MODE"
    sleep "$DOWN"
    restarted=$(date +%s.%N)
    start_standalone "$DIR/run-$i" "${SETS[@]}"
    ready=$(date +%s.%N)
    caught="" owned_at=""
    deadline=$((SECONDS + 300))
    while ((SECONDS < deadline)); do
        if [[ -z $owned_at ]] && (($(owned) > 0)); then owned_at=$(date +%s.%N); fi
        lag=$(metric tally_counter_owned_lag_seconds)
        lines=$(curl -fsS "http://$ADMIN/metrics" 2>/dev/null | grep -c '^tally_counter_consumer_lag_records{' || true)
        if (($(owned) > 0 && lines > 0)) && [[ -n $lag ]] && ((lag <= 1)); then caught=$(date +%s.%N); break; fi
        sleep 0.1
    done
    wait "$LOADGEN_PID" || true
    stop_standalone
    jq --arg r "$restarted" --arg ready "$ready" --arg c "$caught" --arg o "$owned_at" \
        '. + {restart: {ready_s: (($ready | tonumber) - ($r | tonumber)),
                        owns_partitions_s: (if $o == "" then null else ($o | tonumber) - ($r | tonumber) end),
                        caught_up_s: (if $c == "" then null else ($c | tonumber) - ($r | tonumber) end)}}' \
        "$DIR/run-$i.json" >"$DIR/run-$i.tmp" && mv "$DIR/run-$i.tmp" "$DIR/run-$i.json"
    jq -c '{restart, exactness, ingest_p99_ms: .ingest.latency_ms.p99}' "$DIR/run-$i.json" >&2
done
med() { for f in "$DIR"/run-*.json; do jq "$1" "$f"; done | median; }
jq -n --argjson machine "$(machine_json)" --argjson runs "$RUNS" \
    --arg command "CRASH=$CRASH RUNS=$RUNS RATE=$RATE BATCH=$BATCH KILL_AT=$KILL_AT DOWN=$DOWN DURATION=$DURATION loadtest/scripts/restart.sh" \
    --argjson ready "$(med .restart.ready_s)" --argjson caught "$(med .restart.caught_up_s)" --argjson owned "$(med .restart.owns_partitions_s)" \
    --argjson lost "$(jq -s '[.[].exactness.lost] | add' "$DIR"/run-*.json)" \
    --argjson duplicated "$(jq -s '[.[].exactness.duplicated] | add' "$DIR"/run-*.json)" \
    '{figure: "restart (kill -9) to caught up", runs: $runs, median_ready_s: $ready, median_owns_partitions_s: $owned, median_caught_up_s: $caught,
      lost_over_all_runs: $lost, duplicated_over_all_runs: $duplicated, command: $command, machine: $machine}' \
    | tee "$DIR/summary.json"
