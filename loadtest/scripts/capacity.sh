#!/usr/bin/env bash
# What each service costs, as separate processes on one machine: the
# measurement behind CAPACITY.md (loadtest/capacity.py turns its results
# into the capacity table).
#
#   loadtest/scripts/capacity.sh   # RATE=20 BATCH=1000 DURATION=60 QUERY_RATE=2000 VIDEOS=10000
#   CASSANDRA=127.0.0.1:9042 loadtest/scripts/capacity.sh   # also a run on that Cassandra node
#
# One Apache Kafka broker (`tally broker`), a redis-server, and `tally ingest`,
# `tally counter`, `tally writer` and `tally query` each in its own process
# (the embedded SQLite store, shared by the writer and the query service
# through its file; Redis as the cache), all fresh, on private loopback ports
# (LOADTEST_BASE_PORT: ingest, query, broker, redis, controller, then the
# admin ports of ingest, counter, writer and query). `tally-loadgen` offers an
# open-loop load (after WARMUP_LOAD seconds of the same load, not measured)
# for DURATION seconds: RATE requests/s of BATCH events (zipf
# ZIPF over VIDEOS videos, DUPLICATES resending an earlier id) and QUERY_RATE
# queries/s, then checks exactness through the query API (lost, duplicated).
#
# With TRACES=RATIO (e.g. 0.01), the embedded-store configuration runs again
# with call-chain tracing on at that sample ratio ("sqlite-traced"), its
# spans exported over OTLP/HTTP to loadtest/otlp_sink.py (on
# LOADTEST_BASE_PORT + 10), which counts the exports and their bytes.
#
# With VIEWERS=N (e.g. 1000000), the embedded-store configuration runs again
# with a `viewer_id` on every event, drawn from N viewers ("sqlite-viewers"):
# what the unique-viewer sketches cost each process (the gateway
# pseudonymises, the counter sketches, the writer merges).
#
# With CASSANDRA=HOST:PORT (a running Cassandra node, e.g. the one
# `tally-test-servers` starts for scripts/test), everything is started again
# fresh with the writer and the query service on that node instead (keyspace
# of the run's own, replication factor 1) for CASSANDRA_DURATION seconds.
#
# For each process (the broker's JVM, redis-server, each service, the load
# generator, the Cassandra JVM when its PID can be found by its port): the
# CPU seconds (utime + stime, /proc/PID/stat) from just before the load to
# the end of the exactness check, by thread group too (/proc/PID/task), and
# over IDLE seconds with no load just before it (the fixed costs), the
# peak RSS (VmHWM), and the work it did (events accepted, events counted,
# deltas written, queries answered, from each service's /metrics); the views
# topic's bytes on disk per record. With PERF_SECONDS=N and a working
# `perf`, also a sampled profile (cpu-clock) of every process for N seconds
# from WARMUP seconds into the load. Bounded: the load runs DURATION seconds
# (at most RATE * DURATION requests), every start waits at most 120 s, and
# only processes this script started are stopped, by PID.
#
# Writes RESULTS/capacity-TIMESTAMP/NAME/{run.json,loadgen.json,profile.txt}
# and summary.json (every configuration, the command, the machine).
source "$(dirname "$0")/../lib.sh"
source "$ROOT/loadtest/procstat.sh"
RATE=${RATE:-20} BATCH=${BATCH:-1000} DURATION=${DURATION:-60} QUERY_RATE=${QUERY_RATE:-2000}
VIDEOS=${VIDEOS:-10000} ZIPF=${ZIPF:-1.2} DUPLICATES=${DUPLICATES:-0.05} WARMUP=${WARMUP:-5}
WARMUP_LOAD=${WARMUP_LOAD:-15} IDLE=${IDLE:-20} CASSANDRA=${CASSANDRA:-} CASSANDRA_DURATION=${CASSANDRA_DURATION:-20} PERF_SECONDS=${PERF_SECONDS:-0}
TRACES=${TRACES:-} OTLP_SINK=127.0.0.1:$((BASE_PORT + 10)) VIEWERS=${VIEWERS:-}
# Viewer ids per event in the configuration being run (0: none).
RUN_VIEWERS=0
REDIS_PORT=$((BASE_PORT + 3))
INGEST_ADMIN=127.0.0.1:$((BASE_PORT + 5)) COUNTER_ADMIN=127.0.0.1:$((BASE_PORT + 6))
WRITER_ADMIN=127.0.0.1:$((BASE_PORT + 7)) QUERY_ADMIN=127.0.0.1:$((BASE_PORT + 8))
COMMAND="RATE=$RATE BATCH=$BATCH DURATION=$DURATION QUERY_RATE=$QUERY_RATE VIDEOS=$VIDEOS ZIPF=$ZIPF DUPLICATES=$DUPLICATES"
COMMAND+=" WARMUP_LOAD=$WARMUP_LOAD IDLE=$IDLE CASSANDRA=$CASSANDRA CASSANDRA_DURATION=$CASSANDRA_DURATION PERF_SECONDS=$PERF_SECONDS TRACES=$TRACES VIEWERS=$VIEWERS loadtest/scripts/capacity.sh"
build
DIR=$(results_dir capacity)

# Every process started and not yet reaped (the broker through stop_broker).
PIDS=()
stop_pids() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
SINK_PID=
stop_sink() {
    [[ -n $SINK_PID ]] || return 0
    kill -TERM "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
    SINK_PID=
}
cleanup() { stop_pids; stop_broker; stop_sink; }
trap cleanup EXIT
trap 'exit 143' INT TERM

# metrics ADDR: the admin /metrics text of one service.
metrics() { curl -fsS --max-time 5 "http://$1/metrics"; }
# metric_sum FILE NAME: the sum of every series of NAME in a /metrics text.
metric_sum() { awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }' "$2"; }
# metric_delta NAME SERVICE: the growth of NAME in SERVICE's /metrics over the window.
metric_delta() { echo $(($(metric_sum "$1" "$RUN/metrics-after-$2.txt") - $(metric_sum "$1" "$RUN/metrics-before-$2.txt"))); }
# metric_deltas_json NAME SERVICE: {label value: growth} of every series of NAME (one label).
metric_deltas_json() {
    awk -v m="$1" 'index($1, m "{") == 1 { split($1, p, "\""); v[p[2]] += (FILENAME ~ /after/ ? $2 : -$2) }
        END { for (k in v) printf "%s\t%d\n", k, v[k] }' "$RUN/metrics-before-$2.txt" "$RUN/metrics-after-$2.txt" |
        jq -R -s 'split("\n") | map(select(length > 0) | split("\t") | {key: .[0], value: (.[1] | tonumber)}) | from_entries'
}
# pid_on_port PORT: the PID listening on a loopback TCP port (for a server we did not start).
pid_on_port() { ss -Hltnp "sport = :$1" | grep -o 'pid=[0-9]*' | awk -F= 'NR == 1 { print $2 }'; }
# all_alive NAME=PID ...: fails, naming it and its log's last line, when one has exited.
all_alive() {
    local spec
    for spec in "$@"; do
        kill -0 "${spec#*=}" 2>/dev/null && continue
        log "${spec%%=*} (pid ${spec#*=}) has exited: $(tail -1 "$RUN/${spec%%=*}.log" 2>/dev/null)"
        return 1
    done
}
# log_bytes_per_record TOPIC RECORDS: bytes of the topic's log segments / records.
log_bytes_per_record() {
    local bytes
    bytes=$(find "$RUN/broker/data/broker/data" -path "*/$1-*/*.log" -printf '%s\n' 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    jq -n --argjson b "$bytes" --argjson r "$2" '{log_bytes: $b, records: $r, bytes_per_record: (if $r > 0 then $b / $r else null end)}'
}

# run_configuration NAME DURATION STORE_TOML: one fresh pipeline, one load, NAME/run.json.
run_configuration() {
    local name=$1 duration=$2 store=$3
    RUN=$DIR/$name
    mkdir -p "$RUN"
    log "configuration $name: $((RATE * BATCH)) events/s, $QUERY_RATE queries/s, $duration s"
    # `tally broker` gives the JVM 60 s to serve; a busy machine can need longer.
    local attempt
    for attempt in 1 2 3; do
        start_broker "$RUN/broker-$attempt" && break
        stop_broker
        local pidfile=$RUN/broker-$attempt/data/broker/kafka.pid
        if [[ -f $pidfile ]] && grep -qa kafka.Kafka "/proc/$(cat "$pidfile")/cmdline" 2>/dev/null; then kill -KILL "$(cat "$pidfile")"; fi
        ((attempt < 3)) || return 1
    done
    ln -sfn "broker-$attempt" "$RUN/broker"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$RUN/redis.log" 2>&1 &
    local redis_pid=$!
    PIDS+=("$redis_pid")
    cat >"$RUN/tally.toml" <<EOF
[log]
level = "warn"

[kafka]
brokers = "$BROKER"

[ingest]
listen = "$INGEST"
admin-listen = "$INGEST_ADMIN"
# Used only by events that carry a viewer id (VIEWERS).
viewer-id-key = "00112233445566778899aabbccddeeff"

[counter]
admin-listen = "$COUNTER_ADMIN"

[writer]
admin-listen = "$WRITER_ADMIN"

[query]
listen = "$QUERY"
admin-listen = "$QUERY_ADMIN"

[cache]
redis-url = "redis://127.0.0.1:$REDIS_PORT"

$store
EOF
    declare -A pid
    local service
    # The gateway first: it creates the topics the others check at start.
    for service in ingest counter writer query; do
        "$TALLY" --config "$RUN/tally.toml" "$service" >"$RUN/$service.log" 2>&1 &
        pid[$service]=$!
        PIDS+=("${pid[$service]}")
        [[ $service != ingest ]] || wait_http "http://$INGEST_ADMIN/readyz" 120
    done
    wait_http "http://$COUNTER_ADMIN/readyz" 120
    wait_http "http://$WRITER_ADMIN/readyz" 120
    wait_http "http://$QUERY_ADMIN/readyz" 120
    wait_http "http://$QUERY/v1/videos/warmup/views" 60
    local procs=(broker="$BROKER_PID" redis="$redis_pid" ingest="${pid[ingest]}" counter="${pid[counter]}"
        writer="${pid[writer]}" query="${pid[query]}")
    local cassandra_pid=
    if [[ $name == cassandra ]]; then
        cassandra_pid=$(pid_on_port "${CASSANDRA##*:}")
        if [[ -n $cassandra_pid ]]; then procs+=(cassandra="$cassandra_pid"); else log "no PID for Cassandra at $CASSANDRA: its CPU is not measured"; fi
    fi
    if ((WARMUP_LOAD > 0)); then
        # Unmeasured: the broker's JIT compiles its hot paths under this load, not the measured one.
        log "warm-up load, $WARMUP_LOAD s"
        "$LOADGEN" --ingest "$INGEST" --query "$QUERY" --rate "$RATE" --batch "$BATCH" --duration "$WARMUP_LOAD" \
            --max-requests $((RATE * WARMUP_LOAD)) --videos "$VIDEOS" --zipf "$ZIPF" --duplicates "$DUPLICATES" \
            --viewers "$RUN_VIEWERS" --query-rate "$QUERY_RATE" --no-exactness --out "$RUN/warmup.json" >/dev/null 2>"$RUN/warmup.log"
        sleep 3
    fi
    # Idle: what each process costs per second with no load (polls, heartbeats,
    # timers), so that the model can tell fixed costs from costs per unit.
    log "idle, $IDLE s"
    cpu_snapshot "${procs[@]}" >"$RUN/idle-before.tsv"
    sleep "$IDLE"
    cpu_snapshot "${procs[@]}" >"$RUN/idle-after.tsv"
    all_alive "${procs[@]}"
    for service in ingest counter writer query; do
        local admin_var=${service^^}_ADMIN
        metrics "${!admin_var}" >"$RUN/metrics-before-$service.txt"
    done
    local load_avg_before started
    load_avg_before=$(cut -d' ' -f1 /proc/loadavg)
    local rss_before
    rss_before=$(rss_json "${procs[@]}")
    cpu_snapshot "${procs[@]}" >"$RUN/cpu-before.tsv"
    started=$(date +%s.%N)
    # The generator under GNU time: its own CPU and peak RSS over its whole life.
    /usr/bin/time -o "$RUN/loadgen.time" -f '{"wall_s":%e,"user_s":%U,"sys_s":%S,"max_rss_kib":%M}' \
        "$LOADGEN" --ingest "$INGEST" --query "$QUERY" --rate "$RATE" --batch "$BATCH" --duration "$duration" \
        --warmup "$WARMUP" --max-requests $((RATE * duration)) --videos "$VIDEOS" --zipf "$ZIPF" --duplicates "$DUPLICATES" \
        --viewers "$RUN_VIEWERS" --query-rate "$QUERY_RATE" --out "$RUN/loadgen.json" --plot "$RUN/loadgen.svg" \
        >/dev/null 2>"$RUN/loadgen.log" &
    local loadgen=$!
    PIDS+=("$loadgen")
    if ((PERF_SECONDS > 0)) && perf_works; then
        sleep "$WARMUP"
        local gen
        gen=$(pgrep -P "$loadgen" || true)
        perf_profile "$RUN/profile" "$PERF_SECONDS" "${procs[@]}" ${gen:+loadgen="${gen%%$'\n'*}"}
    fi
    wait "$loadgen" || { log "tally-loadgen failed: $(tail -3 "$RUN/loadgen.log")"; return 1; }
    local elapsed
    elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }')
    all_alive "${procs[@]}"
    cpu_snapshot "${procs[@]}" >"$RUN/cpu-after.tsv"
    for service in ingest counter writer query; do
        local admin_var=${service^^}_ADMIN
        metrics "${!admin_var}" >"$RUN/metrics-after-$service.txt"
    done
    local peak_rss rss_after load_avg_after
    peak_rss=$(peak_rss_json "${procs[@]}")
    rss_after=$(rss_json "${procs[@]}")
    load_avg_after=$(cut -d' ' -f1 /proc/loadavg)
    # Records the window added to the views topic: the gateway's and the
    # broker's work, 503s included (an event refused after the ack timeout
    # may still have been written). The counter reads each record once and
    # the exactness check waited for it to catch up, so its count of records
    # read is that number (the generator's own watermark read, --broker,
    # fails now and then on a busy machine), and since its start the
    # topic's records, for the bytes per record.
    local events_accepted produced topic_records counted deltas queries
    produced=$(metric_delta tally_counter_events_total counter)
    topic_records=$(metric_sum tally_counter_events_total "$RUN/metrics-after-counter.txt")
    events_accepted=$(metric_delta tally_ingest_events_accepted_total ingest)
    counted=$(metric_delta tally_counter_events_total counter)
    deltas=$(metric_delta tally_writer_deltas_total writer)
    queries=$(metric_delta tally_http_requests_total query)
    jq -n --arg name "$name" --argjson duration "$duration" --argjson elapsed "$elapsed" \
        --argjson cpu "$(cpu_json "$RUN/cpu-before.tsv" "$RUN/cpu-after.tsv")" --argjson peak_rss_kib "$peak_rss" \
        --slurpfile loadgen_time "$RUN/loadgen.time" --slurpfile loadgen "$RUN/loadgen.json" \
        --argjson events_accepted "$events_accepted" --argjson counted "$counted" --argjson deltas "$deltas" \
        --argjson queries "$queries" --argjson batches "$(metric_delta tally_writer_batches_total writer)" \
        --argjson flushes "$(metric_delta tally_counter_flushes_total counter)" \
        --argjson dedup_entries "$(metric_sum tally_counter_dedup_entries "$RUN/metrics-after-counter.txt")" \
        --argjson dedup_entries_before "$(metric_sum tally_counter_dedup_entries "$RUN/metrics-before-counter.txt")" \
        --argjson rss_before "$rss_before" --argjson rss_after "$rss_after" \
        --argjson lookups "$(metric_deltas_json tally_query_cache_lookups_total query)" \
        --argjson store_loads "$(metric_deltas_json tally_query_store_loads_total query)" \
        --argjson produced "$produced" \
        --argjson views_log "$(log_bytes_per_record tally.views "$topic_records")" \
        --argjson counts_log "$(log_bytes_per_record tally.counts "$(metric_sum tally_writer_deltas_total "$RUN/metrics-after-writer.txt")")" \
        --argjson idle_s "$IDLE" --argjson idle "$(cpu_json "$RUN/idle-before.tsv" "$RUN/idle-after.tsv")" \
        --argjson la0 "$load_avg_before" --argjson la1 "$load_avg_after" \
        '{configuration: $name, offered: {events_per_s: ($loadgen[0].ingest.offered_rate_rps * $loadgen[0].ingest.batch),
                   queries_per_s: ($loadgen[0].query.offered_rate_rps // null), duration_s: $duration},
          window_s: $elapsed, idle: {window_s: $idle_s, processes: $idle}, load_average_1m: {before: $la0, after: $la1},
          processes: ($cpu | with_entries(.value += {peak_rss_kib: $peak_rss_kib[.key],
                rss_kib_before: $rss_before[.key], rss_kib_after: $rss_after[.key]})
            + {loadgen: {cpu_s: ($loadgen_time[0].user_s + $loadgen_time[0].sys_s), peak_rss_kib: $loadgen_time[0].max_rss_kib}}),
          work: {events_produced: $produced, events_accepted: $events_accepted, events_counted: $counted, counter_flushes: $flushes,
                 deltas_written: $deltas, writer_batches: $batches, queries_answered: $queries,
                 query_cache_lookups: $lookups, query_store_loads: $store_loads,
                 counter_dedup_entries_before: $dedup_entries_before, counter_dedup_entries_at_end: $dedup_entries},
          topics: {views: $views_log, counts: $counts_log},
          loadgen: {ingest_events_per_s: $loadgen[0].ingest.events_per_s, ingest_latency_ms: $loadgen[0].ingest.latency_ms,
                    answers: $loadgen[0].ingest.answers.statuses, query: ($loadgen[0].query | {requests_per_s: .steady.requests_per_s, latency_ms: .steady.latency_ms, failures}),
                    exactness: $loadgen[0].exactness}}' >"$RUN/run.json"
    jq -c '{configuration, cpu_s: (.processes | map_values(.cpu_s)), work, answers: .loadgen.answers, exactness: .loadgen.exactness | {lost, duplicated}}' "$RUN/run.json" >&2
    stop_pids
    stop_broker
}

SQLITE_STORE="[store]
sqlite-path = \"$DIR/sqlite/counts.db\""
run_configuration sqlite "$DURATION" "$SQLITE_STORE"
if [[ -n $TRACES ]]; then
    mkdir -p "$DIR/sqlite-traced"
    python3 "$ROOT/loadtest/otlp_sink.py" "$OTLP_SINK" "$DIR/sqlite-traced/otlp-sink.json" &
    SINK_PID=$!
    run_configuration sqlite-traced "$DURATION" "[store]
sqlite-path = \"$DIR/sqlite-traced/counts.db\"

[traces]
otlp-endpoint = \"http://$OTLP_SINK/v1/traces\"
sample-ratio = $TRACES"
    stop_sink
    log "OTLP sink: $(cat "$DIR/sqlite-traced/otlp-sink.json")"
fi
if [[ -n $VIEWERS ]]; then
    RUN_VIEWERS=$VIEWERS
    run_configuration sqlite-viewers "$DURATION" "[store]
sqlite-path = \"$DIR/sqlite-viewers/counts.db\""
    RUN_VIEWERS=0
fi
if [[ -n $CASSANDRA ]]; then
    keyspace=capacity_$(date -u +%Y%m%d%H%M%S)
    run_configuration cassandra "$CASSANDRA_DURATION" "[store]
backend = \"scylla\"

[store.scylla]
nodes = [\"$CASSANDRA\"]
keyspace = \"$keyspace\"
create-schema = true"
fi
trap - EXIT
jq -n --argjson machine "$(machine_json)" --arg command "$COMMAND" --arg started "$(basename "$DIR")" \
    --arg kernel "$(uname -r)" --arg memory "$(awk '/^MemTotal/ { print $2 " kB" }' /proc/meminfo)" \
    --slurpfile runs <(cat "$DIR"/*/run.json) \
    '{figure: "cost per service, separate processes on one broker", command: $command,
      machine: ($machine + {kernel: $kernel, memory: $memory}), configurations: $runs}' >"$DIR/summary.json"
log "wrote $DIR/summary.json"
echo "$DIR"
