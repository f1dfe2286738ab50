#!/bin/sh
# One-shot ScyllaDB schema for docker-compose.yml's `init-schema` service (the
# scylladb/scylla image, which ships cqlsh). Applies infra/scylla/schema.cql,
# mounted at /schema; the statements there must be idempotent (IF NOT EXISTS).
set -eu

HOST="${SCYLLA_HOST:-scylla}"
SCHEMA="${SCHEMA:-/schema/schema.cql}"
# Retried: Scylla answers its health check's query before it always accepts
# schema changes, and a failed one-shot job keeps the writer, query and
# reconciler from starting.
ATTEMPTS="${ATTEMPTS:-30}"
RETRY_DELAY="${RETRY_DELAY:-2}"

retry() { # command...: runs it until it succeeds, ATTEMPTS times at most
  n=1
  until "$@"; do
    if [ "$n" -ge "$ATTEMPTS" ]; then
      echo "init-schema: giving up after $n attempts: $*" >&2
      return 1
    fi
    echo "init-schema: attempt $n failed; retrying in ${RETRY_DELAY}s" >&2
    n=$((n + 1))
    sleep "$RETRY_DELAY"
  done
}

if [ ! -f "$SCHEMA" ]; then
  echo "init-schema: $SCHEMA is missing (mount infra/scylla at /schema)" >&2
  exit 1
fi
echo "init-schema: applying $SCHEMA to $HOST:9042"
retry cqlsh "$HOST" 9042 --request-timeout=60 -f "$SCHEMA"
retry cqlsh "$HOST" 9042 -e 'DESCRIBE KEYSPACES'
echo "init-schema: done"
