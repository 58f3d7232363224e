#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 (trust auth, user postgres), starting the
# local cluster if it is down. Used by scripts/test.sh, scripts/dev.sh and .ci/run.
set -euo pipefail

PGHOST_ADDR=${PGHOST_ADDR:-127.0.0.1}
PGPORT_NUM=${PGPORT_NUM:-5432}

ready() { pg_isready -q -h "$PGHOST_ADDR" -p "$PGPORT_NUM" -U postgres; }

if ready; then
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
    exit 0
  fi
  sleep 0.5
done
echo "pg-up: PostgreSQL did not become ready within 30 s" >&2
exit 1
