#!/usr/bin/env bash
# Runs botvisor locally in the foreground: PostgreSQL up, a dev panel database migrated, the
# Bot API sandbox on $SANDBOX_ADDR (any well-formed token accepted), a demo bot registered
# (menus, and the assistant answering /ask from the sandbox's model), the web panel on
# $PANEL_ADDR with a local owner (its URL and credentials printed), and `botvisor serve`
# pointed at the sandbox. Ctrl-C stops everything.
#
# Every run (the first and every later one) prints ready-to-paste curl commands for the
# sandbox's control API (docs/sandbox.md), with the demo bot's real sandbox token: send
# /start, read the answers (waiting for them with wait_ms), press a menu button, read only
# what came after it, ask the assistant.
#
# Needs psql and curl (the printed commands use curl too).
#
# Settings (environment):
#   DEV_DB        the panel database, default botvisor_dev (created if missing)
#   SANDBOX_ADDR  where the sandbox listens, default 127.0.0.1:8081
#   PANEL_ADDR    where the web panel listens, default 127.0.0.1:8080
#   DEV_OWNER     the local owner's login, default admin; DEV_PASSWORD its password
#                 (default botvisor-dev-password; set again on every run)
#   DEMO_TOKEN    the demo bot's token (a local sandbox token, not a Telegram one)
#   BOTVISOR_MASTER_KEY_FILE  the master key sealing tokens and secrets; default
#                 <cargo target dir>/dev-master.key, created by `botvisor keys init` when missing
#                 (a new key cannot open what the old one sealed: drop DEV_DB with it)
#   CARGO         default cargo. The binary is taken from where cargo builds it
#                 (`cargo metadata`), so CARGO_TARGET_DIR and build.target-dir work.
#
# Tested by tests/ops_scripts.rs (dev_prints_commands_that_talk_to_the_demo_bot).
set -euo pipefail
cd "$(dirname "$0")/.."

DEV_DB=${DEV_DB:-botvisor_dev}
SANDBOX_ADDR=${SANDBOX_ADDR:-127.0.0.1:8081}
PANEL_ADDR=${PANEL_ADDR:-127.0.0.1:8080}
DEV_OWNER=${DEV_OWNER:-admin}
DEV_PASSWORD=${DEV_PASSWORD:-botvisor-dev-password}
DEMO_TOKEN=${DEMO_TOKEN:-123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0}
CARGO=${CARGO:-cargo}

# shellcheck source=scripts/lib/cargo.sh
source scripts/lib/cargo.sh

die() {
  printf 'dev: %s\n' "$*" >&2
  exit 1
}

scripts/pg-up.sh
if ! psql -h 127.0.0.1 -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DEV_DB'" postgres | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE \"$DEV_DB\"" postgres
fi

"$CARGO" build --locked --bin botvisor
target_dir=$(cargo_target_dir) || die "cannot tell where cargo put the build (cargo metadata failed)"
bin=$target_dir/debug/botvisor
[[ -x $bin ]] || die "the build left no $bin"

export BOTVISOR_PANEL_URL="postgres://postgres@127.0.0.1:5432/$DEV_DB"
export BOTVISOR_TELEGRAM_API_URL="http://$SANDBOX_ADDR"
export BOTVISOR__SUPERVISOR__SHUTDOWN_DEADLINE_SECS=${BOTVISOR__SUPERVISOR__SHUTDOWN_DEADLINE_SECS:-5}
# Plain HTTP on loopback: the session cookie cannot be Secure here.
export BOTVISOR__PANEL_HTTP__COOKIE_SECURE=false
export BOTVISOR_MASTER_KEY_FILE=${BOTVISOR_MASTER_KEY_FILE:-$target_dir/dev-master.key}
[[ -f $BOTVISOR_MASTER_KEY_FILE ]] || "$bin" keys init --file "$BOTVISOR_MASTER_KEY_FILE"

"$bin" migrate

"$bin" sandbox --listen "$SANDBOX_ADDR" --accept-any-token &
sandbox_pid=$!
panel_pid=""
trap 'kill "$sandbox_pid" $panel_pid 2>/dev/null || true' EXIT

# The commands printed below must work as soon as they are pasted, before the daemon has
# polled: wait (up to 10 s) until the sandbox answers, and register the demo token with it
# (updates for a token the sandbox has not seen yet are refused). Ours must still be running:
# another sandbox on the same address makes it exit.
registered=0
for _ in $(seq 1 100); do
  kill -0 "$sandbox_pid" 2>/dev/null || die "the sandbox exited; is $SANDBOX_ADDR already in use? (set SANDBOX_ADDR)"
  if curl -sf -XPOST "http://$SANDBOX_ADDR/sandbox/bots" -H 'content-type: application/json' \
    -d "{\"token\": \"$DEMO_TOKEN\"}" >/dev/null 2>&1; then
    registered=1
    break
  fi
  sleep 0.1
done
((registered)) || die "the sandbox on $SANDBOX_ADDR did not accept the demo token within 10 s"

id=$("$bin" bot list | awk '$2 == "demo" && !found { print $1; found = 1 }')
if [[ -z $id ]]; then
  id=$("$bin" bot add --name demo --token "$DEMO_TOKEN" --manifest docs/manifest.example.json)
  "$bin" text import "$id" docs/demo-texts.json >/dev/null
  echo "dev: registered the demo bot (id $id)"
else
  # The CLI only shows tokens masked; setting it makes the commands below right even when
  # DEMO_TOKEN changed since the bot was registered.
  "$bin" bot set-token "$id" "$DEMO_TOKEN" >/dev/null
fi

# The web panel, with a local owner whose password is (re)set on every run.
if "$bin" operator list | awk 'NR > 1 { print $1 }' | grep -qx "$DEV_OWNER"; then
  printf '%s\n' "$DEV_PASSWORD" | "$bin" operator passwd "$DEV_OWNER" >/dev/null
else
  printf '%s\n' "$DEV_PASSWORD" | "$bin" operator add --login "$DEV_OWNER" --role owner --password-stdin >/dev/null
fi
"$bin" panel --listen "$PANEL_ADDR" &
panel_pid=$!
for _ in $(seq 1 100); do
  kill -0 "$panel_pid" 2>/dev/null || die "the web panel exited; is $PANEL_ADDR already in use? (set PANEL_ADDR)"
  if curl -sf "http://$PANEL_ADDR/login" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
# The assistant module on the demo bot, answering /ask through the sandbox's deterministic
# OpenAI-compatible model (docs/assistant.md); its API key is a bot secret like a real one.
# Set on every run: the sandbox address may have changed.
assistant_patch=$(mktemp)
cat >"$assistant_patch" <<JSON
{"assistant": {"base_url": "http://$SANDBOX_ADDR/v1", "model": "sandbox-echo",
  "api_key_secret": "openai", "system_prompt": "assistant_prompt", "trigger": "command",
  "daily_limit_per_user": 50}}
JSON
"$bin" config patch "$id" "$assistant_patch" >/dev/null
rm -f "$assistant_patch"
printf 'sk-sandbox-dev' | "$bin" secret set "$id" openai --stdin >/dev/null

api="http://$SANDBOX_ADDR/sandbox"
json="-H 'content-type: application/json'"
cat <<EOF

dev: talk to the demo bot (id $id) from another terminal, through the sandbox (docs/sandbox.md);
dev: pipe a read into jq for readable JSON.

  # send /start as user 1 in chat 1: the bot answers with a greeting and its main menu
  curl -s -XPOST $api/updates $json -d '{"token": "$DEMO_TOKEN", "chat_id": 1, "text": "/start"}'; echo
  # read what the bot sent to chat 1 (waits up to 10 s for the first answer)
  curl -s '$api/sent?token=$DEMO_TOKEN&chat_id=1&wait_ms=10000'; echo

  # press the menu's "About" button (row 0, column 1) on the bot's latest message in chat 1,
  # then read only what came after (after=: the last seq seen; waits up to 10 s)
  after=\$(curl -s '$api/sent?token=$DEMO_TOKEN&chat_id=1' | grep -o '"seq":[0-9]*' | tail -n 1 | cut -d: -f2)
  curl -s -XPOST $api/updates $json -d '{"token": "$DEMO_TOKEN", "chat_id": 1, "callback_data": "b|main|0|1"}'; echo
  curl -s "$api/sent?token=$DEMO_TOKEN&chat_id=1&after=\${after:-0}&wait_ms=10000"; echo

  # ask the assistant (the sandbox's model echoes the question), then read its answer
  after=\$(curl -s '$api/sent?token=$DEMO_TOKEN&chat_id=1' | grep -o '"seq":[0-9]*' | tail -n 1 | cut -d: -f2)
  curl -s -XPOST $api/updates $json -d '{"token": "$DEMO_TOKEN", "chat_id": 1, "text": "/ask What is botvisor?"}'; echo
  curl -s "$api/sent?token=$DEMO_TOKEN&chat_id=1&after=\${after:-0}&wait_ms=10000"; echo

EOF

echo "dev: web panel http://$PANEL_ADDR/ - sign in as $DEV_OWNER / $DEV_PASSWORD (docs/panel-web.md)"
echo "dev: panel $BOTVISOR_PANEL_URL, sandbox http://$SANDBOX_ADDR; starting botvisor serve (Ctrl-C stops)"
"$bin" serve
