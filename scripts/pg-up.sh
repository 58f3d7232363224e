#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 (trust auth, user postgres), starting the
# local cluster if it is down. Used by scripts/test.sh, scripts/dev.sh and .ci/run.
# With PG_SECOND=1 (scripts/test.sh sets it) it also makes sure two more clusters answer, each
# created with trust auth if missing:
# - `second` on 127.0.0.1:5433: the tests of bot databases on several servers
#   (tests/db_servers.rs);
# - `locks` on 127.0.0.1:5434, with the smallest lock table PostgreSQL allows
#   (max_connections 20 × max_locks_per_transaction 10), which one test fills on purpose
#   (tests/resilience_instances.rs, a full lock table); no other test may use it.
set -euo pipefail

PGHOST_ADDR=${PGHOST_ADDR:-127.0.0.1}
PGPORT_NUM=${PGPORT_NUM:-5432}

ready() { pg_isready -q -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -U postgres; }

# extra NAME PORT [initdb option ...]: makes sure cluster NAME answers on PORT.
extra() {
  local name=$1 port=$2
  shift 2
  if pg_isready -q -h "$PGHOST_ADDR" -p "$port" -U postgres; then
    return 0
  fi
  local version
  version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$name"; then
    echo "pg-up: creating the PostgreSQL cluster $name on port $port" >&2
    pg_createcluster "$version" "$name" -p "$port" "$@" -- --auth=trust >&2
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
  for _ in $(seq 1 60); do
    if pg_isready -q -h "$PGHOST_ADDR" -p "$port" -U postgres; then
      return 0
    fi
    sleep 0.5
  done
  echo "pg-up: the PostgreSQL cluster $name did not become ready within 30 s" >&2
  return 1
}

second() {
  [ "${PG_SECOND:-0}" = 1 ] || return 0
  extra second "${PG_SECOND_PORT:-5433}"
  extra locks "${PG_LOCKS_PORT:-5434}" -o max_connections=20 -o max_locks_per_transaction=10 \
    -o shared_buffers=16MB
}

if ready; then
  second
  exit 0
fi
echo "pg-up: PostgreSQL is not answering on $PGHOST_ADDR:$PGPORT_NUM; starting it" >&2
version=""
for dir in /etc/postgresql/*/; do
  [ -d "$dir" ] && version=$(basename "$dir")
done
if [ -z "$version" ]; then
  echo "pg-up: no PostgreSQL cluster under /etc/postgresql; install postgresql first" >&2
  exit 1
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start
for _ in $(seq 1 60); do
  if ready; then
    second
    exit 0
  fi
  sleep 0.5
done
echo "pg-up: PostgreSQL did not become ready within 30 s" >&2
exit 1
