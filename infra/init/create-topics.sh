#!/bin/sh
# One-shot topic creation for docker-compose.yml's `init` service (the
# apache/kafka image: kafka-topics.sh and kafka-configs.sh live in
# /opt/kafka/bin). Idempotent: creates what is missing, then sets retention.ms,
# cleanup.policy and message.timestamp.type explicitly on every topic so a
# rerun also repairs them. tally.views carries the broker's clock
# (LogAppendTime): the counter's dedup window trusts it over a gateway clock
# running ahead (counter.max-clock-skew).
# The services run with TALLY_KAFKA__CREATE_TOPICS=false and rely on this.
set -eu

BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
REPLICATION="${REPLICATION:-1}"
# The Helm chart's hook sets them from kafka.viewsPartitions/countsPartitions.
VIEWS_PARTITIONS="${VIEWS_PARTITIONS:-12}"
COUNTS_PARTITIONS="${COUNTS_PARTITIONS:-12}"
# Raw events and deltas: 7 days, well over the counter's dedup window (10 min)
# and its allowed lateness (1 h), so a replay after an outage rebuilds dedup
# state from the log. Dead letters: 30 days, to leave time for a replay.
EVENTS_RETENTION_MS="${EVENTS_RETENTION_MS:-604800000}"
DLQ_RETENTION_MS="${DLQ_RETENTION_MS:-2592000000}"
BIN=/opt/kafka/bin
# Each step is retried: the broker's health check passes before it can
# always create topics (controller election, a slow first start), and a
# failed one-shot job would keep every service after it from starting.
ATTEMPTS="${ATTEMPTS:-30}"
RETRY_DELAY="${RETRY_DELAY:-2}"

retry() { # command...: runs it until it succeeds, ATTEMPTS times at most
  n=1
  until "$@"; do
    if [ "$n" -ge "$ATTEMPTS" ]; then
      echo "init: giving up after $n attempts: $*" >&2
      return 1
    fi
    echo "init: attempt $n failed; retrying in ${RETRY_DELAY}s" >&2
    n=$((n + 1))
    sleep "$RETRY_DELAY"
  done
}

topic() { # name partitions retention.ms cleanup.policy message.timestamp.type
  echo "init: topic $1 (partitions=$2 retention.ms=$3 cleanup.policy=$4 message.timestamp.type=$5)"
  retry "$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$1" --partitions "$2" --replication-factor "$REPLICATION" \
    --config "retention.ms=$3" --config "cleanup.policy=$4" --config "message.timestamp.type=$5"
  retry "$BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --alter \
    --entity-type topics --entity-name "$1" \
    --add-config "retention.ms=$3,cleanup.policy=$4,message.timestamp.type=$5"
}

topic tally.views      "$VIEWS_PARTITIONS"  "$EVENTS_RETENTION_MS" delete LogAppendTime
topic tally.counts     "$COUNTS_PARTITIONS" "$EVENTS_RETENTION_MS" delete CreateTime
topic tally.views.dlq   1 "$DLQ_RETENTION_MS"    delete CreateTime
topic tally.counts.dlq  1 "$DLQ_RETENTION_MS"    delete CreateTime
# The recorded topology (partition counts, topic ids) the counters and
# writers check at start: one partition, compacted, kept for ever.
topic tally.topology    1 -1                      compact CreateTime

retry "$BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --describe \
  --topic 'tally\..*'
echo "init: topics ready"
