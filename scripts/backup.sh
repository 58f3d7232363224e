#!/usr/bin/env bash
# Backs up the panel database and every bot database with `pg_dump -Fc`, verifies each dump
# (pg_dump's exit code, a non-empty file, `pg_restore --list`, and a full read with
# `pg_restore --file=/dev/null`), then rotates: keeps BACKUP_KEEP_DAILY runs under daily/
# and the first good run of each ISO week under weekly/ (BACKUP_KEEP_WEEKLY of them).
#
# A database that fails does not stop the others; at the end the script prints one
# "BACKUP FAILED: ..." line per failure plus a summary line and exits 1. Run daily by
# deploy/botvisor-backup.timer; see docs/operations.md ("Backups").
#
# Layout: $BACKUP_DIR/daily/<YYYY-MM-DD_HHMMSS>/<database>.dump (a FAILED file inside a run
# lists what is missing from it), $BACKUP_DIR/weekly/<YYYY-Www>/ (hard links to a daily run).
#
# Settings (environment):
#   BOTVISOR_PANEL_URL   the panel database URL (or DATABASE_URL); required.
#   BOTVISOR__BOT_DATABASE__SERVER_URL  server of the bot databases; default: the panel's.
#   BACKUP_DIR           default /var/backups/botvisor
#   BACKUP_KEEP_DAILY    default 7;  BACKUP_KEEP_WEEKLY  default 4
#   BACKUP_DATABASES     bot database names (space separated) instead of asking
#                        `botvisor bot list --json`; set but empty: the panel only.
#   BOTVISOR             the botvisor binary, default /usr/local/bin/botvisor
#   BOTVISOR_CONFIG      its settings file, default /etc/botvisor/botvisor.toml (if present)
#   PG_DUMP, PG_RESTORE, PSQL   the PostgreSQL client programs
#   BACKUP_DATE          the time the run is filed under (a `date -d` string); default now.
#
# Passwords are passed to the PostgreSQL tools in PGPASSWORD, never on their command line,
# and never logged. Tested by tests/ops_scripts.rs (backup_then_restore_*, backup_fails_*,
# backup_rotation_*).
set -euo pipefail

BACKUP_DIR=${BACKUP_DIR:-/var/backups/botvisor}
BACKUP_KEEP_DAILY=${BACKUP_KEEP_DAILY:-7}
BACKUP_KEEP_WEEKLY=${BACKUP_KEEP_WEEKLY:-4}
BOTVISOR=${BOTVISOR:-/usr/local/bin/botvisor}
BOTVISOR_CONFIG=${BOTVISOR_CONFIG:-/etc/botvisor/botvisor.toml}
PG_DUMP=${PG_DUMP:-pg_dump}
PG_RESTORE=${PG_RESTORE:-pg_restore}
PSQL=${PSQL:-psql}
BACKUP_DATE=${BACKUP_DATE:-now}

# Under journald a "<3>" prefix files the line at priority "err".
ERR_PREFIX=""
if [[ -n ${JOURNAL_STREAM:-} ]]; then ERR_PREFIX="<3>"; fi

log() { printf 'backup: %s\n' "$*"; }
failures=()
fail() {
  failures+=("$1")
  printf '%sBACKUP FAILED: %s\n' "$ERR_PREFIX" "$1" >&2
}

# shellcheck source=scripts/lib/pg.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pg.sh"


PANEL_URL=${BOTVISOR_PANEL_URL:-${DATABASE_URL:-}}
if [[ -z $PANEL_URL ]]; then
  fail "BOTVISOR_PANEL_URL is not set (put it in /etc/botvisor/env)"
  exit 1
fi
db_of_url "$PANEL_URL" >/dev/null || {
  fail "BOTVISOR_PANEL_URL has no database name"
  exit 1
}
BOT_SERVER_URL=${BOTVISOR__BOT_DATABASE__SERVER_URL:-$PANEL_URL}

mkdir -p "$BACKUP_DIR/daily" "$BACKUP_DIR/weekly"
exec 9>"$BACKUP_DIR/.lock"
if ! flock -n 9; then
  fail "another backup is running (lock $BACKUP_DIR/.lock)"
  exit 1
fi

stamp=$(date -d "$BACKUP_DATE" +%Y-%m-%d_%H%M%S)
week=$(date -d "$BACKUP_DATE" +%G-W%V)
run="$BACKUP_DIR/daily/$stamp"
n=1
while [[ -e $run || -e $run.partial ]]; do
  n=$((n + 1))
  run="$BACKUP_DIR/daily/${stamp}_$n"
done
# Leftovers of an interrupted run (we hold the lock, so none is in progress).
find "$BACKUP_DIR/daily" -mindepth 1 -maxdepth 1 -type d -name '*.partial' -exec rm -rf {} +
mkdir "$run.partial"
errfile="$run.partial/.stderr"

# dump LABEL URL: dumps one database into the run and verifies the dump.
dump() {
  local label=$1 url=$2 db file
  db=$(db_of_url "$url")
  file="$run.partial/$db.dump"
  if ! pg "$url" "$PG_DUMP" --format=custom --file="$file.part" 2>"$errfile"; then
    fail "$label: pg_dump of $db exited non-zero: $(tail -n 3 "$errfile" | tr '\n' ' ')"
    rm -f "$file.part"
    return 0
  fi
  if [[ ! -s $file.part ]]; then
    fail "$label: dump of $db is empty"
    rm -f "$file.part"
    return 0
  fi
  if ! "$PG_RESTORE" --list "$file.part" >/dev/null 2>"$errfile" ||
    ! "$PG_RESTORE" --file=/dev/null "$file.part" 2>"$errfile"; then
    fail "$label: dump of $db does not read back: $(tail -n 3 "$errfile" | tr '\n' ' ')"
    rm -f "$file.part"
    return 0
  fi
  mv "$file.part" "$file"
  log "$label: $db OK ($(du -h "$file" | cut -f1))"
}

started=$SECONDS
attempted=0
dump "panel" "$PANEL_URL"
attempted=$((attempted + 1))

bot_dbs=()
if [[ -n ${BACKUP_DATABASES+set} ]]; then
  read -r -a bot_dbs <<<"$BACKUP_DATABASES"
else
  config_args=()
  if [[ -f $BOTVISOR_CONFIG ]]; then config_args=(--config "$BOTVISOR_CONFIG"); fi
  if ! listing=$("$BOTVISOR" "${config_args[@]}" bot list --json 2>"$errfile"); then
    fail "could not list bots ($BOTVISOR bot list --json): $(tail -n 3 "$errfile" | tr '\n' ' ')"
    listing="[]"
  fi
  existing=$(pg "$(url_with_db "$BOT_SERVER_URL" postgres)" "$PSQL" -AtX \
    -c 'SELECT datname FROM pg_database' 2>"$errfile") || {
    fail "could not list the databases on the bot server: $(tail -n 3 "$errfile" | tr '\n' ' ')"
    existing=""
  }
  rows=$(jq -r '.[] | [(.id | tostring), .name, .database, (.database_override // "")] | @tsv' \
    <<<"$listing" 2>"$errfile") || {
    fail "could not read the bot list: $(tail -n 3 "$errfile" | tr '\n' ' ')"
    rows=""
  }
  while IFS=$'\t' read -r id name database override; do
    [[ -n $id ]] || continue
    if [[ $override == *://* ]]; then
      printf '%sBACKUP SKIPPED: bot %s (%s): its database is on another server (%s); back it up there\n' \
        "$ERR_PREFIX" "$id" "$name" "$override" >&2
      continue
    fi
    if ! grep -qxF -- "$database" <<<"$existing"; then
      log "bot $id ($name): database $database does not exist yet (bot never started); nothing to save"
      continue
    fi
    bot_dbs+=("$database")
  done <<<"$rows"
fi

for db in "${bot_dbs[@]}"; do
  dump "bot database" "$(url_with_db "$BOT_SERVER_URL" "$db")"
  attempted=$((attempted + 1))
done
rm -f "$errfile"

if ((${#failures[@]} > 0)); then
  printf '%s\n' "${failures[@]}" >"$run.partial/FAILED"
fi
mv "$run.partial" "$run"

# A run counts for rotation only when it has no FAILED file. Failed runs older than the
# oldest kept good run go with it.
rotate() {
  local dir=$1 keep=$2 runs=() good=() r cutoff
  mapfile -t runs < <(find "$dir" -mindepth 1 -maxdepth 1 -type d ! -name '*.partial' -printf '%f\n' | sort)
  for r in "${runs[@]}"; do
    [[ -e $dir/$r/FAILED ]] || good+=("$r")
  done
  if ((${#good[@]} <= keep)); then
    return 0
  fi
  cutoff=${good[${#good[@]} - keep]}
  for r in "${runs[@]}"; do
    if [[ $r < $cutoff ]]; then
      rm -rf "${dir:?}/$r"
      log "rotated out $dir/$r"
    fi
  done
}

if ((${#failures[@]} == 0)) && [[ ! -e $BACKUP_DIR/weekly/$week ]]; then
  cp -al "$run" "$BACKUP_DIR/weekly/$week" 2>/dev/null || cp -a "$run" "$BACKUP_DIR/weekly/$week"
  log "kept as the weekly backup $BACKUP_DIR/weekly/$week"
fi
rotate "$BACKUP_DIR/daily" "$BACKUP_KEEP_DAILY"
rotate "$BACKUP_DIR/weekly" "$BACKUP_KEEP_WEEKLY"

took=$((SECONDS - started))
if ((${#failures[@]} > 0)); then
  printf '%sBACKUP FAILED: %d of %d databases not saved in %s (%d s); see the lines above\n' \
    "$ERR_PREFIX" "${#failures[@]}" "$attempted" "$run" "$took" >&2
  exit 1
fi
log "OK: $attempted databases saved in $run ($(du -sh "$run" | cut -f1), $took s)"
