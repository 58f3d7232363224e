#!/usr/bin/env bash
# Runs botvisor locally in the foreground: PostgreSQL up, a dev panel database migrated, the
# Bot API sandbox on 127.0.0.1:8081 (any well-formed token accepted), a demo bot registered,
# and `botvisor serve` pointed at the sandbox. Ctrl-C stops everything.
#
# Talk to the demo bot from another terminal:
#   curl -s -XPOST localhost:8081/sandbox/updates -H 'content-type: application/json' \
#        -d '{"token": "'"$DEMO_TOKEN"'", "chat_id": 1, "text": "/start"}'
#   curl -s 'localhost:8081/sandbox/sent?token='"$DEMO_TOKEN"'&chat_id=1'
set -euo pipefail
cd "$(dirname "$0")/.."

DEV_DB=${DEV_DB:-botvisor_dev}
SANDBOX_ADDR=${SANDBOX_ADDR:-127.0.0.1:8081}
DEMO_TOKEN=${DEMO_TOKEN:-123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0}

scripts/pg-up.sh
if ! psql -h 127.0.0.1 -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DEV_DB'" postgres | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE \"$DEV_DB\"" postgres
fi

cargo build --locked --bin botvisor
bin=target/debug/botvisor

export BOTVISOR_PANEL_URL="postgres://postgres@127.0.0.1:5432/$DEV_DB"
export BOTVISOR_TELEGRAM_API_URL="http://$SANDBOX_ADDR"
export BOTVISOR__SUPERVISOR__SHUTDOWN_DEADLINE_SECS=${BOTVISOR__SUPERVISOR__SHUTDOWN_DEADLINE_SECS:-5}

"$bin" migrate

"$bin" sandbox --listen "$SANDBOX_ADDR" --accept-any-token &
sandbox_pid=$!
trap 'kill "$sandbox_pid" 2>/dev/null || true' EXIT

if ! "$bin" bot list --json | grep -q '"name": "demo"'; then
  id=$("$bin" bot add --name demo --token "$DEMO_TOKEN" --manifest docs/manifest.example.json)
  "$bin" text import "$id" docs/demo-texts.json >/dev/null
  echo "dev: registered the demo bot (id $id, token ${DEMO_TOKEN%%:*}:****)"
fi

echo "dev: panel $BOTVISOR_PANEL_URL, sandbox http://$SANDBOX_ADDR; starting botvisor serve (Ctrl-C stops)"
"$bin" serve
