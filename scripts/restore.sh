#!/usr/bin/env bash
# Restores one database (a bot's or the panel's) from a `pg_dump -Fc` file made by
# scripts/backup.sh into a NEW database, and checks it: pg_restore succeeded and the restored
# database has as many tables as the dump lists. The live database is not touched.
#
# With --swap the restored copy then replaces the live database:
#   a bot:    `botvisor bot disable ID`, wait until `bot show ID --json` says stopped, close
#             the daemon's idle connections to it, rename live -> <db>_old_<ts> and
#             restored -> <db> in one transaction, `botvisor bot enable ID` (if it was enabled).
#   --panel:  `systemctl stop botvisor`, the same renames, `systemctl start botvisor`.
# The old database is never dropped; the script prints the command to drop it (with the
# server's URL, its password left out: psql asks for it).
#
# Usage:
#   restore.sh [--bot ID | --panel] [--into NAME] [--swap] DUMP_FILE
#     --bot ID     the dump is bot ID's database (needed for --swap of a bot database)
#     --panel      the dump is the panel database
#     --into NAME  the new database's name; default <db>_restored_<YYYYmmdd_HHMMSS>, where
#                  <db> is the dump file's name without .dump
#     --swap       replace the live database with the restored one (see above)
#
# Settings (environment): BOTVISOR_PANEL_URL (or DATABASE_URL) as for the daemon;
# BOTVISOR__BOT_DATABASE__SERVER_URL; BOTVISOR (default /usr/local/bin/botvisor);
# BOTVISOR_CONFIG (default /etc/botvisor/botvisor.toml, if present); SYSTEMCTL (default
# systemctl) and SERVICE (default botvisor) for --panel --swap; RESTORE_STOP_TIMEOUT seconds
# to wait for the bot to stop (default 30); RESTORE_NO_OWNER=1 restores without the dump's
# ownership (objects then belong to the connecting role); PG_RESTORE, PSQL.
#
# Tested by tests/ops_scripts.rs (backup_then_restore_gives_equal_content,
# restore_swap_replaces_live_bot_database).
set -euo pipefail

BOTVISOR=${BOTVISOR:-/usr/local/bin/botvisor}
BOTVISOR_CONFIG=${BOTVISOR_CONFIG:-/etc/botvisor/botvisor.toml}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
SERVICE=${SERVICE:-botvisor}
RESTORE_STOP_TIMEOUT=${RESTORE_STOP_TIMEOUT:-30}
PG_RESTORE=${PG_RESTORE:-pg_restore}
PSQL=${PSQL:-psql}

log() { printf 'restore: %s\n' "$*"; }
die() {
  printf 'RESTORE FAILED: %s\n' "$*" >&2
  exit 1
}
usage() { sed -n '/^# Usage:/,/^#     --swap/p' "$0" | sed 's/^# \{0,1\}//'; }

bot_id=""
panel=0
into=""
swap=0
dump=""
while (($# > 0)); do
  case $1 in
  --bot) bot_id=${2:?--bot needs an id}; shift 2 ;;
  --panel) panel=1; shift ;;
  --into) into=${2:?--into needs a name}; shift 2 ;;
  --swap) swap=1; shift ;;
  -h | --help) usage; exit 0 ;;
  -*) usage >&2; die "unknown option $1" ;;
  *) [[ -z $dump ]] || die "one dump file only"; dump=$1; shift ;;
  esac
done
[[ -n $dump ]] || { usage >&2; die "no dump file given"; }
[[ -s $dump ]] || die "$dump is missing or empty"
[[ -z $bot_id || $panel == 0 ]] || die "--bot and --panel exclude each other"
[[ $swap == 0 || -n $bot_id || $panel == 1 ]] || die "--swap needs --bot ID or --panel"

# shellcheck source=scripts/lib/pg.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pg.sh"


# sql ARGS...: runs the SQL on stdin in the server's maintenance database (psql variables
# given as -v name=value), printing unaligned rows.
sql() { pg "$MAINT_URL" "$PSQL" -X -A -t -q -v ON_ERROR_STOP=1 "$@"; }

db_exists() { [[ -n $(sql -v name="$1" <<<"SELECT 1 FROM pg_database WHERE datname = :'name'") ]]; }

botvisor() {
  local config_args=()
  if [[ -f $BOTVISOR_CONFIG ]]; then config_args=(--config "$BOTVISOR_CONFIG"); fi
  "$BOTVISOR" "${config_args[@]}" "$@"
}

PANEL_URL=${BOTVISOR_PANEL_URL:-${DATABASE_URL:-}}
[[ -n $PANEL_URL ]] || die "BOTVISOR_PANEL_URL is not set (put it in /etc/botvisor/env)"
panel_db=${PANEL_URL#*://}
panel_db=${panel_db%%\?*}
panel_db=${panel_db#*/}
BOT_SERVER_URL=${BOTVISOR__BOT_DATABASE__SERVER_URL:-$PANEL_URL}

# Which live database the dump belongs to, and on which server.
was_enabled=""
if [[ -n $bot_id ]]; then
  show=$(botvisor bot show "$bot_id" --json) || die "botvisor bot show $bot_id failed"
  live=$(jq -r '.database' <<<"$show")
  override=$(jq -r '.database_override // ""' <<<"$show")
  was_enabled=$(jq -r '.enabled' <<<"$show")
  [[ $override != *://* ]] ||
    die "bot $bot_id's database is on another server ($override); restore it there with pg_restore"
  server_url=$BOT_SERVER_URL
  if [[ $(basename "$dump" .dump) != "$live" ]]; then
    log "note: $dump is not named after bot $bot_id's database $live; make sure it is the right dump"
  fi
elif ((panel)); then
  live=$panel_db
  server_url=$PANEL_URL
else
  live=$(basename "$dump" .dump)
  if [[ $live == "$panel_db" ]]; then server_url=$PANEL_URL; else server_url=$BOT_SERVER_URL; fi
fi
MAINT_URL=$(url_with_db "$server_url" postgres)

ts=$(date +%Y%m%d_%H%M%S)
target=${into:-${live}_restored_$ts}
((${#target} <= 63)) || die "database name $target is longer than 63 bytes; choose one with --into"
if db_exists "$target"; then die "database $target already exists; choose another with --into"; fi

# The restored database belongs to whoever owns the live one (the daemon's role), when known.
owner=$(sql -v name="$live" <<<"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :'name'")
if [[ -n $owner ]]; then
  sql -v name="$target" -v owner="$owner" <<<'CREATE DATABASE :"name" OWNER :"owner"'
else
  sql -v name="$target" <<<'CREATE DATABASE :"name"'
fi
log "created database $target${owner:+ (owner $owner)}"

restore_args=(--exit-on-error)
if [[ ${RESTORE_NO_OWNER:-0} == 1 ]]; then restore_args+=(--no-owner --no-acl); fi
if ! pg "$(url_with_db "$server_url" "$target")" "$PG_RESTORE" "${restore_args[@]}" "$dump"; then
  die "pg_restore into $target failed; the live database $live is untouched. Drop the partial copy with: $(drop_hint "$server_url" "$target")"
fi

# Verify: every table the dump lists exists in the copy.
expected=$("$PG_RESTORE" --list "$dump" | awk '$4 == "TABLE" && $5 != "DATA"' | wc -l)
actual=$(pg "$(url_with_db "$server_url" "$target")" "$PSQL" -X -A -t -q -c \
  "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
     AND n.nspname NOT LIKE 'pg_toast%'")
((expected == actual)) || die "restored $target has $actual tables, the dump lists $expected"
log "restored $dump into $target: $actual tables, verified"

if ((!swap)); then
  if [[ -n $bot_id ]]; then which="--bot $bot_id"; elif ((panel)); then which="--panel"; else which="--bot <ID>"; fi
  log "the live database $live is untouched. To put the copy in its place: $0 $which --swap $dump"
  log "(or compare first, then drop the copy: $(drop_hint "$server_url" "$target"))"
  exit 0
fi

# --swap from here on.
old=${live}_old_$ts
((${#old} <= 63)) || die "database name $old is longer than 63 bytes; rename by hand"
db_exists "$live" || log "live database $live does not exist; the copy just takes its name"

# Puts the bot or the daemon back as it was; called on every exit from here on.
resume() {
  if [[ -n $bot_id && $was_enabled == true ]]; then
    botvisor bot enable "$bot_id" >/dev/null && log "bot $bot_id enabled again"
  elif ((panel)); then
    "$SYSTEMCTL" start "$SERVICE" && log "$SERVICE started again"
  fi
}
trap resume EXIT

if [[ -n $bot_id ]]; then
  if [[ $was_enabled == true ]]; then
    botvisor bot disable "$bot_id" >/dev/null
    log "bot $bot_id disabled; waiting up to ${RESTORE_STOP_TIMEOUT}s for it to stop"
  fi
  deadline=$((SECONDS + RESTORE_STOP_TIMEOUT))
  while :; do
    state=$(botvisor bot show "$bot_id" --json | jq -r '.state // "none"')
    [[ $state == stopped || $state == none ]] && break
    ((SECONDS < deadline)) ||
      die "bot $bot_id still $state after ${RESTORE_STOP_TIMEOUT}s (is the daemon running?); nothing swapped, the copy is $target"
    sleep 0.5
  done
else
  "$SYSTEMCTL" stop "$SERVICE"
  log "$SERVICE stopped"
fi

# The daemon keeps idle pool connections for a while after a bot stops; a rename needs none.
for _ in $(seq 1 20); do
  n=$(sql -v name="$live" <<<"SELECT count(*) FROM pg_stat_activity WHERE datname = :'name'")
  ((n == 0)) && break
  sleep 0.5
done
if ((n > 0)); then
  log "closing $n remaining connection(s) to $live"
  sql -v name="$live" <<<"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :'name' AND pid <> pg_backend_pid()" >/dev/null
fi

if db_exists "$live"; then
  sql -v live="$live" -v old="$old" -v target="$target" <<'SQL'
BEGIN;
ALTER DATABASE :"live" RENAME TO :"old";
ALTER DATABASE :"target" RENAME TO :"live";
COMMIT;
SQL
  log "swapped: $live is now the restored copy; the previous one is kept as $old"
else
  sql -v live="$live" -v target="$target" <<<'ALTER DATABASE :"target" RENAME TO :"live"'
  log "swapped: $target renamed to $live"
  old=""
fi

resume
trap - EXIT
if [[ -n $old ]]; then
  log "when you are sure, drop the previous database: $(drop_hint "$server_url" "$old")"
fi
