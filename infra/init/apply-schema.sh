#!/bin/sh
# One-shot ScyllaDB schema for docker-compose.yml's `init-schema` service (the
# scylladb/scylla image, which ships cqlsh). Applies infra/scylla/schema.cql,
# mounted at /schema; the statements there must be idempotent (IF NOT EXISTS).
set -eu

HOST="${SCYLLA_HOST:-scylla}"
SCHEMA=/schema/schema.cql

if [ ! -f "$SCHEMA" ]; then
  echo "init-schema: $SCHEMA is missing (mount infra/scylla at /schema)" >&2
  exit 1
fi
echo "init-schema: applying $SCHEMA to $HOST:9042"
cqlsh "$HOST" 9042 --request-timeout=60 -f "$SCHEMA"
cqlsh "$HOST" 9042 -e 'DESCRIBE KEYSPACES'
echo "init-schema: done"
