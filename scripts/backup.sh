#!/usr/bin/env bash
# Backs up the panel database and every bot database with `pg_dump -Fc`, verifies each dump
# (pg_dump's exit code, a non-empty file, `pg_restore --list`, and a full read with
# `pg_restore --file=/dev/null`), then rotates: keeps BACKUP_KEEP_DAILY runs under daily/
# and the first good run of each ISO week under weekly/ (BACKUP_KEEP_WEEKLY of them).
#
# Which bot databases: those of the bots `botvisor bot list --json` reports, and every other
# database on the bot server whose name fits bot_database.name_template (read from
# `botvisor config check`): an ORPHAN, left behind by a bot removed from the panel. Orphans
# are saved like the rest and flagged ("orphan" in the log, listed in the run's ORPHANS file).
#
# Progress is one line per database ("backup: 12/45 ..."). A database that fails does not
# stop the others; at the end the script prints one "BACKUP FAILED: ..." line per failure
# and a one-line summary, and exits 1 (0 and "backup: OK: ..." when everything was saved).
# Run daily by deploy/botvisor-backup.timer; see docs/operations.md ("Backups").
#
# Usage:
#   backup.sh [--env-file FILE]...
#     --env-file FILE  read KEY=value settings from FILE as systemd does (e.g. the daemon's
#                      /etc/botvisor/env); the environment wins over it
#     -h, --help       this text (and exit)
#
# Layout: $BACKUP_DIR/daily/<YYYY-MM-DD_HHMMSS>/<database>.dump (a FAILED file inside a run
# lists what is missing from it, an ORPHANS file the orphans saved), $BACKUP_DIR/weekly/<YYYY-Www>/
# (hard links to a daily run).
#
# Settings (environment):
#   BOTVISOR_PANEL_URL   the panel database URL (or DATABASE_URL); required.
#   BOTVISOR__BOT_DATABASE__SERVER_URL  server of the bot databases; default: the panel's.
#   BACKUP_DIR           default /var/backups/botvisor
#   BACKUP_KEEP_DAILY    default 7;  BACKUP_KEEP_WEEKLY  default 4
#   BACKUP_DATABASES     bot database names (space separated) instead of asking botvisor
#                        and the server; set but empty: the panel only.
#   BOTVISOR             the botvisor binary, default /usr/local/bin/botvisor
#   BOTVISOR_CONFIG      its settings file, default /etc/botvisor/botvisor.toml (if present)
#   PG_DUMP, PG_RESTORE, PSQL   the PostgreSQL client programs
#   BACKUP_DATE          the time the run is filed under (a `date -d` string); default now.
#
# Passwords are passed to the PostgreSQL tools in PGPASSWORD, never on their command line,
# and never logged. Tested by tests/ops_scripts.rs (backup_*, restore_*).
set -euo pipefail

# --help: this file's opening comment.
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# shellcheck source=scripts/lib/pg.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pg.sh"
# shellcheck source=scripts/lib/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/env.sh"

while (($# > 0)); do
  case $1 in
  --env-file)
    [[ -n ${2:-} ]] || { printf 'backup: --env-file needs a file (try --help)\n' >&2; exit 2; }
    load_env_file "$2" || exit 2
    shift 2
    ;;
  -h | --help) usage; exit 0 ;;
  *) printf 'backup: unknown argument %s (try --help)\n' "$1" >&2; exit 2 ;;
  esac
done

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
# Databases not saved, and other problems (the bot list could not be read, ...): both fail
# the run, but only the first are counted as databases in the summary.
failures=()
db_failures=0
problem() {
  failures+=("$1")
  printf '%sBACKUP FAILED: %s\n' "$ERR_PREFIX" "$1" >&2
}
fail() {
  db_failures=$((db_failures + 1))
  problem "$1"
}

PANEL_URL=${BOTVISOR_PANEL_URL:-${DATABASE_URL:-}}
if [[ -z $PANEL_URL ]]; then
  problem "BOTVISOR_PANEL_URL is not set (put it in /etc/botvisor/env; by hand: --env-file /etc/botvisor/env)"
  exit 1
fi
panel_db=$(db_of_url "$PANEL_URL") || {
  problem "BOTVISOR_PANEL_URL has no database name"
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

# dump N LABEL URL: dumps the Nth database of the run and verifies the dump; prints one
# progress line "N/TOTAL LABEL: DB OK|FAILED".
dump() {
  local n=$1 label=$2 url=$3 db file failed=$db_failures
  db=$(db_of_url "$url")
  save_one "$label" "$url" "$db"
  if ((db_failures > failed)); then
    log "$n/$total $label: $db FAILED"
  else
    log "$n/$total $label: $db OK ($(du -h "$run.partial/$db.dump" | cut -f1))"
  fi
}

# save_one LABEL URL DB: the dump and its checks; a failure is reported with fail().
save_one() {
  local label=$1 url=$2 db=$3 file
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
}

# host_port URL: the host:port of a postgres:// URL (port 5432 when it names none).
host_port() {
  local rest=${1#*://}
  rest=${rest%%[/?]*}
  rest=${rest##*@}
  [[ $rest == *:* ]] || rest="$rest:5432"
  printf '%s' "$rest"
}

# template_regex TEMPLATE: an anchored regular expression for the database names
# bot_database.name_template gives this panel's bots ({panel_db} filled in, {id} any number).
template_regex() {
  local t=${1//'{panel_db}'/"$panel_db"} re="" c
  while [[ -n $t ]]; do
    if [[ $t == '{id}'* ]]; then
      re+='[0-9]+'
      t=${t:4}
      continue
    fi
    c=${t:0:1}
    t=${t:1}
    case $c in
    [[:alnum:]_]) re+=$c ;;
    '^') re+='\^' ;;
    *) re+="[$c]" ;;
    esac
  done
  printf '^%s$' "$re"
}

started=$SECONDS
# What to save: parallel lists of labels ("bot 7 (shop)", "orphan") and database names.
labels=()
dbs=()
orphans=()
if [[ -n ${BACKUP_DATABASES+set} ]]; then
  read -r -a dbs <<<"$BACKUP_DATABASES"
  for db in "${dbs[@]}"; do labels+=("bot database"); done
else
  config_args=()
  if [[ -f $BOTVISOR_CONFIG ]]; then config_args=(--config "$BOTVISOR_CONFIG"); fi
  if ! listing=$("$BOTVISOR" "${config_args[@]}" bot list --json 2>"$errfile"); then
    problem "could not list bots ($BOTVISOR bot list --json), so bot databases may be missing from this run: $(tail -n 3 "$errfile" | tr '\n' ' ')"
    listing="[]"
  fi
  existing=$(pg "$(url_with_db "$BOT_SERVER_URL" postgres)" "$PSQL" -AtX \
    -c 'SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1' 2>"$errfile") || {
    problem "could not list the databases on the bot server: $(tail -n 3 "$errfile" | tr '\n' ' ')"
    existing=""
  }
  # Fields joined by the unit separator (0x1f), not tabs: `read` would merge empty tab fields.
  rows=$(jq -r '.[] | [(.id | tostring), .name, .database, (.database_override // ""), (.server // "")] | join("\u001f")' \
    <<<"$listing" 2>"$errfile") || {
    problem "could not read the bot list: $(tail -n 3 "$errfile" | tr '\n' ' ')"
    rows=""
  }
  declare -A used=()
  bot_server=$(host_port "$BOT_SERVER_URL")
  while IFS=$'\x1f' read -r id name database override server; do
    [[ -n $id ]] || continue
    if [[ $override == *://* ]]; then
      used[$database]=1
      printf '%sBACKUP SKIPPED: bot %s (%s): its database is on another server (%s); back it up there\n' \
        "$ERR_PREFIX" "$id" "$name" "$override" >&2
      continue
    fi
    # bot_database.servers: a bot placed on or moved to another server (`server`, masked).
    if [[ -n $server && $(host_port "$server") != "$bot_server" ]]; then
      printf '%sBACKUP SKIPPED: bot %s (%s): its database is on another server (%s); back it up there\n' \
        "$ERR_PREFIX" "$id" "$name" "$server" >&2
      continue
    fi
    used[$database]=1
    if ! grep -qxF -- "$database" <<<"$existing"; then
      log "bot $id ($name): database $database does not exist yet (bot never started); nothing to save"
      continue
    fi
    labels+=("bot $id ($name)")
    dbs+=("$database")
  done <<<"$rows"

  # Orphans: databases named like a bot's that no bot in the panel uses.
  if template=$("$BOTVISOR" "${config_args[@]}" config check --offline 2>"$errfile" |
    sed -n 's/^name_template = "\(.*\)"$/\1/p') && [[ -n $template ]]; then
    re=$(template_regex "$template")
    while IFS= read -r database; do
      if [[ -n $database && $database != "$panel_db" && -z ${used[$database]:-} && $database =~ $re ]]; then
        labels+=("orphan (no bot in the panel uses it)")
        dbs+=("$database")
        orphans+=("$database")
      fi
    done <<<"$existing"
  else
    problem "could not read bot_database.name_template ($BOTVISOR config check --offline), so orphaned bot databases were not looked for: $(tail -n 3 "$errfile" | tr '\n' ' ')"
  fi
fi

total=$((1 + ${#dbs[@]}))
dump 1 "panel" "$PANEL_URL"
for i in "${!dbs[@]}"; do
  dump "$((i + 2))" "${labels[$i]}" "$(url_with_db "$BOT_SERVER_URL" "${dbs[$i]}")"
done
rm -f "$errfile"

if ((${#failures[@]} > 0)); then
  printf '%s\n' "${failures[@]}" >"$run.partial/FAILED"
fi
if ((${#orphans[@]} > 0)); then
  printf '%s\n' "${orphans[@]}" >"$run.partial/ORPHANS"
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
orphan_note=""
if ((${#orphans[@]} > 0)); then orphan_note=" (${#orphans[@]} orphan(s): ${orphans[*]})"; fi
if ((${#failures[@]} > 0)); then
  if ((db_failures > 0)); then what="$db_failures of $total databases not saved"; else what="$total of $total databases saved"; fi
  other=$((${#failures[@]} - db_failures))
  if ((other > 0)); then what+="; $other other problem(s)"; fi
  printf '%sBACKUP FAILED: %s%s (run %s, %d s); see the lines above\n' \
    "$ERR_PREFIX" "$what" "$orphan_note" "$run" "$took" >&2
  exit 1
fi
log "OK: $total of $total databases saved$orphan_note in $run ($(du -sh "$run" | cut -f1), $took s)"
