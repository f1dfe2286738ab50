#!/usr/bin/env bash
# Side by side on one Apache Kafka broker (`tally broker`), one pre-filled
# views topic and the same data: Tally's counter, Kafka Streams (exactly_once_v2
# and at_least_once), Flink (exactly-once and at-least-once), quixstreams and
# the naive baseline (one Redis INCR per record). Each reads the whole topic
# from offset 0 with a fresh consumer group until every record is counted;
# the runs are interleaved (tally, kstreams-eos, kstreams-alos, flink-eos,
# flink-alos, quix, naive, then again), RUNS times.
#
#   loadtest/scripts/peers.sh     # RUNS=3 EVENTS=2000000 VIDEOS=100000
#
# The topic is filled once through `tally ingest`, as Tally's gateway keys it:
# EVENTS events over VIDEOS videos (zipf ZIPF) from tally-loadgen, RESENDS of
# them resending an earlier event id, plus HOT_EVENTS events of HOT_VIDEOS
# videos listed in `ingest.salting.hot-videos` (keys `video_id~salt`), with
# the same share of resends. An oracle (tally.peers.Oracle) folds the topic
# itself: records per (video, event-time minute), and distinct events per
# video. Only Tally deduplicates by event id, so its output is checked against
# the distinct events; every peer counts records and is checked against those
# (see loadtest/README.md).
#
# Per counter and run: wall-clock events/s (first record to done), events per
# CPU-second of the counter's own process (user + system, whole process life,
# from wait4 via GNU time; and without the CPU it had used before its first
# record, as the process reports it, or for Tally's counter as its
# /proc/PID/stat said when it owned its first partition), peak RSS of that
# process, the broker's CPU over the run, the load average, and whether its
# output was exact.
#
# Settings (environment): RUNS EVENTS VIDEOS ZIPF RESENDS HOT_VIDEOS HOT_EVENTS
# COMMIT_MS (Kafka Streams commit.interval.ms = Flink checkpoint interval)
# THREADS (Kafka Streams stream threads = Flink parallelism) JVM_HEAP
# RUN_TIMEOUT (seconds a counter may take) COUNTERS (which to run, in order).
# JVM peers are built by Maven from loadtest/peers/{check,kstreams,flink}
# into ~/.cache/tally/tools/peers-jvm (again only when a source is newer
# than the jar); quixstreams is installed into ~/.cache/tally/tools/peers-venv.
# Prints the medians and ratios, writes RESULTS/peers-*/summary.json.
source "$(dirname "$0")/../lib.sh"
RUNS=${RUNS:-3} EVENTS=${EVENTS:-2000000} VIDEOS=${VIDEOS:-100000} ZIPF=${ZIPF:-1.2} RESENDS=${RESENDS:-0.1}
HOT_VIDEOS=${HOT_VIDEOS:-2} HOT_EVENTS=${HOT_EVENTS:-$((EVENTS / 50))}
COMMIT_MS=${COMMIT_MS:-1000} THREADS=${THREADS:-2} JVM_HEAP=${JVM_HEAP:-1g} RUN_TIMEOUT=${RUN_TIMEOUT:-1200}
COUNTERS=${COUNTERS:-tally kstreams-eos kstreams-alos flink-eos flink-alos quix naive}
QUIX_VERSION=${QUIX_VERSION:-3.28.1}
VENV=$HOME/.cache/tally/tools/peers-venv
PEERS_JVM=$HOME/.cache/tally/tools/peers-jvm
export JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
JAVA=$JAVA_HOME/bin/java
REDIS_PORT=$((BASE_PORT + 3))
# Flink on Java 17: the module flags of Flink's own config.yaml (env.java.opts.all).
FLINK_JVM_FLAGS=(--add-exports=java.base/sun.net.util=ALL-UNNAMED --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED --add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED --add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED
    --add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
    --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED
    --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.text=ALL-UNNAMED
    --add-opens=java.base/java.time=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent=ALL-UNNAMED --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED)
JVM_FLAGS=("-Xmx$JVM_HEAP" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn)
build
NAIVE=$TARGET/release/tally-naive-counter
DIR=$(results_dir peers)

# Every process this script starts and has not yet reaped, by PID; cleanup
# kills each with its descendants. The broker runner is stopped by stop_broker.
PIDS=()
forget() { # PID: reaped, so no longer ours to kill (its PID may be reused)
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
kill_tree() { # PID: SIGKILL PID's descendants (deepest first), then PID
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do kill_tree "$child"; done
    kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill_tree "$pid"; wait "$pid" 2>/dev/null || true; done
    PIDS=()
    stop_broker
}
trap cleanup EXIT
trap 'exit 143' INT TERM # so that the EXIT trap runs

build_jvm() { # NAME: Maven package of loadtest/peers/NAME unless its jar is newer than every source
    local src=$ROOT/loadtest/peers/$1 jar=$PEERS_JVM/$1/peer.jar
    if [[ -f $jar && -z $(find "$src" -type f -newer "$jar" | head -1) ]]; then return 0; fi
    log "building the $1 peer with Maven into $PEERS_JVM/$1"
    if ! mvn -B -q -Dstyle.color=never -f "$src/pom.xml" -Dpeers.out="$PEERS_JVM/$1" clean package >"$DIR/mvn-$1.log" 2>&1; then
        tail -30 "$DIR/mvn-$1.log" >&2
        return 1
    fi
}
classpath() { echo "$PEERS_JVM/$1/peer.jar:$PEERS_JVM/$1/lib/*"; }
for peer in check kstreams flink; do build_jvm "$peer"; done
if [[ " $COUNTERS " == *" quix "* ]] &&
    ! "$VENV/bin/python" -c "import quixstreams, sys; sys.exit(quixstreams.__version__ != '$QUIX_VERSION')" 2>/dev/null; then
    log "installing quixstreams $QUIX_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "quixstreams==$QUIX_VERSION"
fi

start_broker "$DIR/broker"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$DIR/redis.log" 2>&1 &
PIDS+=($!)
KAFKA=(--set "kafka.brokers=$BROKER")

# --- the topic -------------------------------------------------------------
HOT_LIST=$(seq -f 'peers-hot-%g' 0 $((HOT_VIDEOS - 1)) | paste -sd, | sed 's/,/, /g')
log "filling tally.views through tally ingest: $EVENTS events over $VIDEOS videos (zipf $ZIPF, resends $RESENDS), $HOT_EVENTS of hot videos [$HOT_LIST]"
"$TALLY" --set log.level=warn "${KAFKA[@]}" --set ingest.salting.detect-threshold-per-sec=0 \
    --set "ingest.salting.hot-videos=[$HOT_LIST]" \
    --set "ingest.listen=$INGEST" --set "ingest.admin-listen=$ADMIN" ingest >"$DIR/ingest.log" 2>&1 &
INGEST_PID=$!
PIDS+=("$INGEST_PID")
wait_http "http://$ADMIN/readyz" 60
"$JAVA" "${JVM_FLAGS[@]}" -cp "$(classpath check)" tally.peers.TopicReady "$BROKER" tally.views 60
"$LOADGEN" --ingest "$INGEST" --mode closed --connections 4 --batch 1000 --duration 900 --duplicates "$RESENDS" \
    --zipf "$ZIPF" --videos "$VIDEOS" --max-requests $((EVENTS / 1000)) --broker "$BROKER" --out "$DIR/fill.json" >/dev/null
# Hot videos: batches of 1,000 events with fixed ids, RESENDS of them an earlier id again (same video).
for ((b = 0; b * 1000 < HOT_EVENTS; b++)); do
    awk -v b="$b" -v hot="$HOT_VIDEOS" -v resend="$RESENDS" 'BEGIN {
        srand(4242 + b); printf "["
        for (i = 0; i < 1000; i++) {
            id = b * 1000 + i
            if (id > 0 && rand() < resend) id = int(rand() * id)
            printf "%s{\"video_id\":\"peers-hot-%d\",\"event_id\":\"hot-%d\"}", (i ? "," : ""), id % hot, id
        }
        print "]" }' >"$DIR/hot-batch.json"
    curl -fsS --retry 5 --retry-all-errors -o /dev/null -H 'content-type: application/json' \
        --data-binary @"$DIR/hot-batch.json" "http://$INGEST/v1/events"
done
kill -TERM "$INGEST_PID"
wait "$INGEST_PID" || true
forget "$INGEST_PID"
log "through the gateway: $(jq .ingest.events_per_s "$DIR/fill.json") events/s; folding the oracle"
"$JAVA" "${JVM_FLAGS[@]}" -cp "$(classpath check)" tally.peers.Oracle "$BROKER" tally.views "$DIR/oracle" \
    2>"$DIR/oracle.log" | tee "$DIR/oracle.json" >&2
RECORDS=$(jq .records "$DIR/oracle.json")
jq -e ".salted_records > 0 or $HOT_EVENTS == 0" "$DIR/oracle.json" >/dev/null || { log "no salted record in the topic"; exit 1; }

# --- measuring one process -------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
proc_cpu_s() { # PID: user + system CPU seconds so far
    awk -v hz="$CLK_TCK" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
loadavg() { cut -d' ' -f1 /proc/loadavg; }
# start_timed NAME CMD...: CMD under GNU time (wait4: CPU and peak RSS of the
# process, whole life) and a hard time bound, stdout to NAME.out, stderr to
# NAME.log; sets TIMED_PID. wait_timed reaps it.
start_timed() {
    local name=$1
    shift
    /usr/bin/time -o "$DIR/$name.time" -f '{"wall_s":%e,"cpu_user_s":%U,"cpu_sys_s":%S,"max_rss_kib":%M,"exit_status":%x}' \
        timeout --kill-after=10 "$RUN_TIMEOUT" "$@" >"$DIR/$name.out" 2>>"$DIR/$name.log" &
    TIMED_PID=$!
    PIDS+=("$TIMED_PID")
}
wait_timed() {
    wait "$TIMED_PID" || true
    forget "$TIMED_PID"
}
json_line() { grep '^{' "$DIR/$1.out" | tail -1 || true; } # NAME: the program's JSON line
# the process under test: the child of `timeout` (under `time`)
timed_child() {
    local t c
    for _ in $(seq 1 100); do
        t=$(pgrep -P "$TIMED_PID" | head -1) && c=$(pgrep -P "$t" | head -1) && { echo "$c"; return; }
        sleep 0.05
    done
    return 1
}

counter_progress() { # "RECORDS OWNED": records the tally counter has counted (flush sealed) and partitions it owns
    curl -fsS "http://$ADMIN/metrics" 2>/dev/null | awk '/^tally_counter_events_total/ { s += $2 }
        /^tally_counter_owned_partitions / { o = $2 } END { print s + 0, o + 0 }' || echo "0 0"
}
run_tally() { # NAME RUN: prints the counter's JSON; its totals go to NAME.totals.tsv
    local name=$1 counts=tally.counts.peers$2 start first="" done="" n owned now cpu_first=null
    start_timed "$name" "$TALLY" --set log.level=warn "${KAFKA[@]}" --set "kafka.topics.counts=$counts" \
        --set "counter.group-id=tally-peers-$2-$RANDOM" --set "counter.admin-listen=$ADMIN" --set counter.flush-interval=250ms counter
    local counter
    counter=$(timed_child) || { log "the counter did not start"; counter=$TIMED_PID; }
    start=$(date +%s.%N)
    while :; do
        now=$(date +%s.%N)
        read -r n owned < <(counter_progress)
        # Its records flow once it owns a partition (claimed, recovered): the
        # start of the clock and of the processing CPU. Polled every 50 ms, so
        # both start up to 50 ms late: at most 50 ms of CPU moves to start-up.
        if [[ -z $first ]] && ((owned > 0 || n > 0)); then first=$now; cpu_first=$(proc_cpu_s "$counter"); fi
        if ((n >= RECORDS)); then done=$now; break; fi
        if (($(echo "$now - $start > $RUN_TIMEOUT" | bc) == 1)) || ! kill -0 "$counter" 2>/dev/null; then break; fi
        sleep 0.05
    done
    kill -TERM "$counter" 2>/dev/null || true
    wait_timed
    "$TALLY" --set log.level=warn "${KAFKA[@]}" --set "kafka.topics.counts=$counts" verify-counts --top 0 \
        >"$DIR/$name.verify.json" 2>>"$DIR/$name.log" || true
    jq -r '.totals | to_entries[] | "\(.key)\t\(.value)"' "$DIR/$name.verify.json" >"$DIR/$name.totals.tsv"
    if [[ -z $done ]]; then done=$(date +%s.%N); fi
    jq -n --argjson records "$n" --argjson done_ok "$( ((n >= RECORDS)) && echo true || echo false)" \
        --arg start "$start" --arg first "${first:-$start}" --arg done "$done" --argjson cpu_first "$cpu_first" \
        '{counter: "tally counter (flush every 250 ms, deltas to tally.counts, dedup by event id)", done: $done_ok,
          records: $records, seconds_from_first_record: (($done | tonumber) - ($first | tonumber)),
          seconds_with_start: (($done | tonumber) - ($start | tonumber)),
          events_per_s: ($records / (($done | tonumber) - ($first | tonumber))),
          cpu_s_at_first_record: $cpu_first}'
}
run_jvm() { # NAME MODULE CLASS ARGS...: the program's JSON line
    local name=$1 module=$2 class=$3
    shift 3
    local extra=()
    [[ $module == flink ]] && extra=("${FLINK_JVM_FLAGS[@]}")
    start_timed "$name" "$JAVA" "${JVM_FLAGS[@]}" "${extra[@]}" -cp "$(classpath "$module")" "$class" "$@"
    wait_timed
    json_line "$name"
}
run_counter() { # COUNTER RUN: one measurement, written to DIR/COUNTER-RUN.json
    local c=$1 i=$2 name=$1-$2 broker_cpu load_before out check
    broker_cpu=$(proc_cpu_s "$BROKER_PID")
    load_before=$(loadavg)
    case $c in
        tally) run_tally "$name" "$i" >"$DIR/$name.result" ;;
        kstreams-eos | kstreams-alos)
            local g=exactly_once_v2
            [[ $c == kstreams-alos ]] && g=at_least_once
            run_jvm "$name" kstreams tally.peers.KStreamsCount "$BROKER" tally.views "peers.$name" "$g" "$COMMIT_MS" \
                "$DIR/$name.state" "$THREADS" >"$DIR/$name.result" 2>>"$DIR/$name.log" ;;
        flink-eos | flink-alos)
            local g=exactly_once
            [[ $c == flink-alos ]] && g=at_least_once
            run_jvm "$name" flink tally.peers.FlinkCount "$BROKER" tally.views "peers.$name" "$g" "$COMMIT_MS" \
                "$DIR/$name.checkpoints" "$THREADS" >"$DIR/$name.result" 2>>"$DIR/$name.log" ;;
        quix)
            start_timed "$name" "$VENV/bin/python" "$ROOT/loadtest/peers/quix_count.py" "$BROKER" tally.views "peers.$name" \
                "$RECORDS" "$DIR/$name.state" "$RUN_TIMEOUT"
            wait_timed
            json_line "$name" >"$DIR/$name.result" ;;
        naive)
            redis-cli -p "$REDIS_PORT" flushall >/dev/null
            start_timed "$name" "$NAIVE" --broker "$BROKER" --redis "redis://127.0.0.1:$REDIS_PORT/" --expect "$RECORDS" \
                --timeout "$RUN_TIMEOUT"
            wait_timed
            json_line "$name" | jq -c '. + {done: true}' >"$DIR/$name.result"
            # naive:KEY:MINUTE -> KEY<TAB>count
            redis-cli -p "$REDIS_PORT" --raw eval \
                "local r = {} for _, k in ipairs(redis.call('KEYS', 'naive:*')) do r[#r + 1] = k .. '=' .. redis.call('GET', k) end return r" 0 \
                | awk -F'[:=]' 'NF == 4 { print $2 "\t" $4 }' >"$DIR/$name.totals.tsv" ;;
        *) log "unknown counter $c"; return 1 ;;
    esac
    broker_cpu=$(echo "$(proc_cpu_s "$BROKER_PID") - $broker_cpu" | bc)
    out=$(cat "$DIR/$name.result")
    [[ -n $out ]] || out='{"done": false}'
    case $c in
        tally) check=(totals "$DIR/oracle" distinct "$DIR/$name.totals.tsv") ;;
        naive) check=(totals "$DIR/oracle" records "$DIR/$name.totals.tsv") ;;
        *) check=(windows "$DIR/oracle" "$BROKER" "peers.$name") ;;
    esac
    "$JAVA" "${JVM_FLAGS[@]}" -cp "$(classpath check)" tally.peers.Check "${check[@]}" >"$DIR/$name.check.json" 2>>"$DIR/$name.log" || true
    [[ -s $DIR/$name.check.json ]] || echo '{"exact": false, "error": "the check failed, see the log"}' >"$DIR/$name.check.json"
    jq -n --arg c "$c" --argjson run "$i" --argjson out "$out" --argjson time "$(tail -1 "$DIR/$name.time")" \
        --argjson check "$(cat "$DIR/$name.check.json")" --argjson broker_cpu "$broker_cpu" \
        --argjson load_before "$load_before" --argjson load_after "$(loadavg)" \
        '$out + {name: $c, run: $run, process: $time, cpu_s: ($time.cpu_user_s + $time.cpu_sys_s),
          events_per_cpu_s: (if ($out.records // 0) > 0 then $out.records / ($time.cpu_user_s + $time.cpu_sys_s) else null end),
          cpu_s_from_first_record: (if $out.cpu_s_at_first_record then
              $time.cpu_user_s + $time.cpu_sys_s - $out.cpu_s_at_first_record else null end),
          events_per_cpu_s_from_first_record: (if ($out.records // 0) > 0 and $out.cpu_s_at_first_record then
              $out.records / ($time.cpu_user_s + $time.cpu_sys_s - $out.cpu_s_at_first_record) else null end),
          max_rss_kib: $time.max_rss_kib, broker_cpu_s: $broker_cpu, loadavg_1m: [$load_before, $load_after],
          exact: ($check.exact and ($out.done // false)), check: $check}' >"$DIR/$name.json"
    jq -c '{name, run, done, exact, events_per_s, events_per_cpu_s, events_per_cpu_s_from_first_record, max_rss_kib,
            broker_cpu_s, loadavg_1m}' "$DIR/$name.json" >&2
}

for i in $(seq 1 "$RUNS"); do
    for c in $COUNTERS; do
        log "run $i/$RUNS: $c"
        run_counter "$c" "$i"
    done
done
cleanup
trap - EXIT

run_files() { for i in $(seq 1 "$RUNS"); do echo "$DIR/$1-$i.json"; done; } # COUNTER: its runs' JSON files
median_of() { # COUNTER FIELD: median over the runs
    for f in $(run_files "$1"); do jq ".$2 // empty" "$f"; done | median
}
per_counter=$(for c in $COUNTERS; do
    jq -n --arg c "$c" --argjson eps "$(median_of "$c" events_per_s)" --argjson cpu "$(median_of "$c" events_per_cpu_s)" \
        --argjson cpu_first "$(median_of "$c" events_per_cpu_s_from_first_record)" \
        --argjson rss "$(median_of "$c" max_rss_kib)" --argjson broker "$(median_of "$c" broker_cpu_s)" \
        --argjson exact "$(jq -s '[.[] | select(.exact)] | length' $(run_files "$c"))" \
        --argjson runs "$(jq -s '[.[] | {events_per_s, events_per_cpu_s, events_per_cpu_s_from_first_record, max_rss_kib,
            broker_cpu_s, exact}]' $(run_files "$c"))" \
        '{($c): {events_per_s: $eps, events_per_cpu_s: $cpu, events_per_cpu_s_from_first_record: $cpu_first,
                 max_rss_kib: $rss, broker_cpu_s: $broker,
                 exact_runs: $exact, runs: $runs}}'
done | jq -s add)
jq -n --argjson machine "$(machine_json)" --argjson runs "$RUNS" --argjson oracle "$(cat "$DIR/oracle.json")" \
    --argjson fill "$(jq '{events_per_s: .ingest.events_per_s, statuses: .ingest.statuses}' "$DIR/fill.json")" \
    --arg command "RUNS=$RUNS EVENTS=$EVENTS VIDEOS=$VIDEOS ZIPF=$ZIPF RESENDS=$RESENDS HOT_VIDEOS=$HOT_VIDEOS HOT_EVENTS=$HOT_EVENTS COMMIT_MS=$COMMIT_MS THREADS=$THREADS JVM_HEAP=$JVM_HEAP loadtest/scripts/peers.sh" \
    --argjson counters "$per_counter" \
    '{figure: "counters side by side on one pre-filled topic (Apache Kafka)", runs: $runs, topic: $oracle, fill: $fill,
      medians: $counters,
      ratio_tally_over: ($counters.tally as $t | if $t == null then null else
          ($counters | to_entries | map(select(.key != "tally") | {key,
              value: {events_per_s: (if .value.events_per_s then $t.events_per_s / .value.events_per_s else null end),
                      events_per_cpu_s: (if .value.events_per_cpu_s then $t.events_per_cpu_s / .value.events_per_cpu_s
                                         else null end),
                      events_per_cpu_s_from_first_record: (if .value.events_per_cpu_s_from_first_record then
                          $t.events_per_cpu_s_from_first_record / .value.events_per_cpu_s_from_first_record
                          else null end)}}) | from_entries) end),
      command: $command, machine: $machine}' \
    | tee "$DIR/summary.json"
