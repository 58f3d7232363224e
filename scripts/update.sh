#!/usr/bin/env bash
# Updates botvisor on this server: the one command an operator runs (as root: `bash
# scripts/update.sh`). In order:
#   1. refuses a dirty tree or a branch that has diverged from its upstream, and checks the
#      setup: cargo and jq present, a binary installed at INSTALL_PATH (the rollback needs
#      one), the units it will start or restart installed;
#   2. stops here when there is nothing new: no incoming commit and the checkout's commit is
#      the one installed (recorded as the git ref refs/botvisor/installed) — nothing is
#      built, installed or restarted;
#   3. `git pull --ff-only`; `cargo build --release --locked` (on failure the checkout goes
#      back to the old commit and nothing else has changed); the binary is taken from where
#      cargo builds (`cargo metadata`: CARGO_TARGET_DIR is honoured). A build identical to
#      the installed binary ends the update there (and, in any case, never replaces .prev);
#   4. backs up every database first (`systemctl start botvisor-backup.service`, backup.sh as
#      the service user) and stops if that fails — the old system's rule, back up before
#      migrating; BACKUP_BEFORE_MIGRATE=0 skips it;
#   5. applies panel and bot migrations with the NEW binary (`migrate`, `migrate --all-bots`)
#      while the old daemon keeps running (migrations only add, so it copes);
#   6. keeps the installed binary as <install path>.prev, installs the new one atomically
#      (copy next to it, then rename);
#   7. restarts botvisor, the web panel (PANEL_UNIT, when that unit is installed) and
#      ADMIN_PANEL_UNIT if set, then waits until each is active and running (the daemon is
#      Type=notify: READY=1 was sent) without restarting, for HEALTH_TIMEOUT seconds;
#   8. if it is not healthy: puts the .prev binary back, restarts, says so loudly, exits 1;
#   9. prints a summary: old -> new commit, time taken, bots running.
# `--dry-run` runs the checks of step 1, prints the plan (after a `git fetch`) and changes
# nothing else; it exits 1 when a check failed.
#
# Settings: the environment, or KEY=value lines in $UPDATE_CONFIG (default
# /etc/botvisor/update.env; the environment wins):
#   REPO_DIR            the checkout; default: this script's repository
#   INSTALL_PATH        default /usr/local/bin/botvisor
#   SERVICE             default botvisor;  ADMIN_PANEL_UNIT  another unit to restart (none)
#   PANEL_UNIT          the web panel (`botvisor panel`), default botvisor-panel; restarted
#                       when installed, skipped with a note when not; empty: never
#   SYSTEMCTL           default systemctl;  CARGO  default cargo (or ~/.cargo/bin/cargo)
#   HEALTH_TIMEOUT      seconds to wait for health, default 90
#   HEALTH_SETTLE       seconds it must then stay up without a restart, default 5
#   ENV_FILE            secrets for migrations, default /etc/botvisor/env
#   BOTVISOR_CONFIG     settings file, default /etc/botvisor/botvisor.toml (if present)
#   BACKUP_BEFORE_MIGRATE  default 1 (0: no backup before migrating);
#                       BACKUP_UNIT  default botvisor-backup.service
#   ALLOW_BOT_MIGRATION_FAILURES=1  go on when `migrate --all-bots` fails (those bots
#                       then fail to start and show it in `bot list`)
#   UPDATE_LOCK         lock file, default /run/lock/botvisor-update.lock
#
# Tested by tests/ops_scripts.rs (update_*).
set -euo pipefail

UPDATE_CONFIG=${UPDATE_CONFIG:-/etc/botvisor/update.env}
if [[ -r $UPDATE_CONFIG ]]; then
  # Values from the file do not override the environment.
  while IFS='=' read -r key value; do
    [[ $key =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
    if [[ -z ${!key+set} ]]; then
      value=${value%\"}
      value=${value#\"}
      export "$key=$value"
    fi
  done <"$UPDATE_CONFIG"
fi

REPO_DIR=${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
INSTALL_PATH=${INSTALL_PATH:-/usr/local/bin/botvisor}
SERVICE=${SERVICE:-botvisor}
ADMIN_PANEL_UNIT=${ADMIN_PANEL_UNIT:-}
PANEL_UNIT=${PANEL_UNIT-botvisor-panel}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-90}
HEALTH_SETTLE=${HEALTH_SETTLE:-5}
ENV_FILE=${ENV_FILE:-/etc/botvisor/env}
BOTVISOR_CONFIG=${BOTVISOR_CONFIG:-/etc/botvisor/botvisor.toml}
BACKUP_BEFORE_MIGRATE=${BACKUP_BEFORE_MIGRATE:-1}
BACKUP_UNIT=${BACKUP_UNIT:-botvisor-backup.service}
ALLOW_BOT_MIGRATION_FAILURES=${ALLOW_BOT_MIGRATION_FAILURES:-0}
UPDATE_LOCK=${UPDATE_LOCK:-/run/lock/botvisor-update.lock}
if [[ -z ${CARGO:-} ]]; then
  if command -v cargo >/dev/null; then CARGO=cargo; else CARGO=$HOME/.cargo/bin/cargo; fi
fi

# shellcheck source=scripts/lib/cargo.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cargo.sh"

dry_run=0
for arg in "$@"; do
  case $arg in
  --dry-run | -n) dry_run=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) printf 'update: unknown argument %s (try --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

started=$SECONDS
step() { printf '==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }
die() {
  printf '\nUPDATE FAILED: %s\n' "$*" >&2
  exit 1
}

# The checkout goes back to the commit it was at; used when we stop before installing.
old_commit=""
restore_checkout() {
  if [[ -n $old_commit && $(git rev-parse HEAD) != "$old_commit" ]]; then
    git reset --quiet --keep "$old_commit" &&
      say "checkout put back at ${old_commit:0:10}"
  fi
}
abort() {
  restore_checkout || true
  die "$* (nothing installed, nothing restarted)"
}

cd "$REPO_DIR"
git rev-parse --git-dir >/dev/null 2>&1 || die "$REPO_DIR is not a git checkout (set REPO_DIR)"

if ((!dry_run)); then
  exec 9>"$UPDATE_LOCK"
  flock -n 9 || die "another update is running (lock $UPDATE_LOCK)"
fi

step "checking $REPO_DIR"
if [[ -n $(git status --porcelain --untracked-files=no) ]]; then
  git status --short --untracked-files=no >&2
  die "the checkout has uncommitted changes; commit, stash or revert them first"
fi
branch=$(git symbolic-ref --quiet --short HEAD) || die "HEAD is detached; check out a branch"
upstream=$(git rev-parse --abbrev-ref --symbolic-full-name '@{upstream}' 2>/dev/null) ||
  die "branch $branch has no upstream; set one with git branch --set-upstream-to"
git fetch --quiet
old_commit=$(git rev-parse HEAD)
new_commit=$(git rev-parse '@{upstream}')
if ! git merge-base --is-ancestor HEAD '@{upstream}'; then
  die "branch $branch has diverged from $upstream (local commits: $(git rev-list --count '@{upstream}..HEAD')); sort it out by hand"
fi
incoming=$(git rev-list --count HEAD..'@{upstream}')
say "$branch at ${old_commit:0:10}; $upstream at ${new_commit:0:10} ($incoming new commit(s))"

# The setup the steps below rely on; every problem is listed before anything changes.
unit_loaded() {
  [[ $("$SYSTEMCTL" show "$1" -p LoadState 2>/dev/null) == *LoadState=loaded* ]]
}
setup_problems=()
command -v "$CARGO" >/dev/null 2>&1 ||
  setup_problems+=("cargo not found ($CARGO): install Rust (docs/operations.md) or set CARGO")
command -v jq >/dev/null 2>&1 || setup_problems+=("jq is not installed (apt-get install jq)")
[[ -x $INSTALL_PATH ]] ||
  setup_problems+=("no botvisor binary at $INSTALL_PATH to roll back to: install the first one by hand (docs/operations.md, \"Install from scratch\") or set INSTALL_PATH")
for unit in "$SERVICE" ${ADMIN_PANEL_UNIT:+"$ADMIN_PANEL_UNIT"}; do
  unit_loaded "$unit" || setup_problems+=("unit $unit is not installed ($SYSTEMCTL show $unit: not loaded)")
done
# The web panel is optional: restarted with the daemon when its unit is installed.
units=("$SERVICE")
if [[ -n $PANEL_UNIT ]]; then
  if unit_loaded "$PANEL_UNIT"; then
    units+=("$PANEL_UNIT")
  else
    say "note: $PANEL_UNIT is not installed; the web panel is not restarted (deploy/botvisor-panel.service)"
  fi
fi
if [[ -n $ADMIN_PANEL_UNIT ]]; then units+=("$ADMIN_PANEL_UNIT"); fi
if [[ $BACKUP_BEFORE_MIGRATE == 1 ]] && ! unit_loaded "$BACKUP_UNIT"; then
  setup_problems+=("backup unit $BACKUP_UNIT is not installed: install deploy/botvisor-backup.service, or set BACKUP_BEFORE_MIGRATE=0 to migrate without a backup")
fi
if ((${#setup_problems[@]} > 0)); then
  for p in "${setup_problems[@]}"; do printf 'problem: %s\n' "$p" >&2; done
  if ((dry_run)); then die "--dry-run found ${#setup_problems[@]} problem(s); fix them before updating"; fi
  die "${#setup_problems[@]} problem(s) with the setup; nothing changed"
fi
say "setup: cargo, jq, $INSTALL_PATH and the units are in place"

# The commit whose build is installed, recorded after every successful update.
INSTALLED_REF=refs/botvisor/installed
installed_commit=$(git rev-parse --quiet --verify "$INSTALLED_REF^{commit}" 2>/dev/null) || installed_commit=""
if ((incoming == 0)) && [[ $installed_commit == "$old_commit" ]]; then
  step "already up to date: ${old_commit:0:10} is built and installed; nothing to do"
  exit 0
fi

all_bots=1
if ((dry_run)); then
  step "plan (--dry-run: nothing below is done)"
  if ((incoming > 0)); then git log --oneline HEAD..'@{upstream}' | sed 's/^/      /'; fi
  n=0
  plan() {
    n=$((n + 1))
    say "$n. $*"
  }
  if ((incoming > 0)); then
    plan "git pull --ff-only"
  else
    plan "no new commit, but the installed binary is not recorded as ${old_commit:0:10}'s: build it, and stop if it is the installed one"
  fi
  plan "(cd $REPO_DIR && $CARGO build --release --locked); the binary from cargo's target directory"
  if [[ $BACKUP_BEFORE_MIGRATE == 1 ]]; then plan "$SYSTEMCTL start $BACKUP_UNIT (backup of every database)"; fi
  plan "<new binary> migrate; <new binary> migrate --all-bots"
  plan "copy $INSTALL_PATH to $INSTALL_PATH.prev; install the new binary at $INSTALL_PATH"
  plan "$SYSTEMCTL restart ${units[*]}; wait up to ${HEALTH_TIMEOUT}s until active and running"
  plan "if unhealthy: put $INSTALL_PATH.prev back and restart"
  exit 0
fi

step "git pull --ff-only"
git pull --quiet --ff-only || abort "git pull --ff-only failed"

step "building (${CARGO} build --release --locked)"
if ! "$CARGO" build --release --locked; then
  abort "the build failed"
fi
target_dir=$(cargo_target_dir) || abort "cannot tell where cargo put the build (cargo metadata failed)"
new_bin=$target_dir/release/botvisor
[[ -x $new_bin ]] || abort "the build produced no $new_bin"
same_binary=0
if cmp -s "$new_bin" "$INSTALL_PATH"; then same_binary=1; fi
if ((same_binary && incoming == 0)); then
  git update-ref "$INSTALLED_REF" "$new_commit"
  step "already up to date: the installed binary is ${new_commit:0:10}'s build; nothing migrated, installed or restarted"
  exit 0
fi

if [[ -r $ENV_FILE ]]; then
  # Secrets the migrations need (BOTVISOR_PANEL_URL); the daemon reads the same file.
  set -a
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  set +a
fi
config_args=()
if [[ -f $BOTVISOR_CONFIG ]]; then config_args=(--config "$BOTVISOR_CONFIG"); fi

if [[ $BACKUP_BEFORE_MIGRATE == 1 ]]; then
  step "backing up every database ($SYSTEMCTL start $BACKUP_UNIT)"
  "$SYSTEMCTL" start "$BACKUP_UNIT" ||
    abort "the backup failed (journalctl -u $BACKUP_UNIT); not migrating without one"
fi

step "applying migrations with the new binary"
"$new_bin" "${config_args[@]}" migrate || abort "panel migrations failed"
if "$new_bin" "${config_args[@]}" migrate --help 2>/dev/null | grep -q -- '--all-bots'; then
  if ! "$new_bin" "${config_args[@]}" migrate --all-bots; then
    if [[ $ALLOW_BOT_MIGRATION_FAILURES == 1 ]]; then
      printf 'WARNING: some bot databases failed to migrate; those bots will show failed in bot list\n' >&2
    else
      abort "bot database migrations failed (set ALLOW_BOT_MIGRATION_FAILURES=1 to go on regardless)"
    fi
  fi
else
  all_bots=0
  say "this build has no 'migrate --all-bots': bot databases migrate when each bot starts"
fi

# install SRC: puts SRC at INSTALL_PATH atomically (same directory, then rename).
install_binary() {
  local tmp
  tmp=$(mktemp "$(dirname "$INSTALL_PATH")/.botvisor.new.XXXXXX")
  cp "$1" "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$INSTALL_PATH"
}

step "installing $INSTALL_PATH"
had_prev=0
if ((same_binary)); then
  # Replacing .prev with the same binary would lose the only way back to the older one.
  had_prev=$([[ -e $INSTALL_PATH.prev ]] && echo 1 || echo 0)
  say "the new build is identical to the installed binary; $INSTALL_PATH.prev left as it was"
elif [[ -e $INSTALL_PATH ]]; then
  tmp=$(mktemp "$(dirname "$INSTALL_PATH")/.botvisor.prev.XXXXXX")
  cp -p "$INSTALL_PATH" "$tmp"
  mv -f "$tmp" "$INSTALL_PATH.prev"
  had_prev=1
  say "previous binary kept as $INSTALL_PATH.prev"
fi
install_binary "$new_bin"

# healthy UNIT: waits until the unit is active/running and stays so (no restart) for
# HEALTH_SETTLE seconds, within HEALTH_TIMEOUT seconds.
healthy() {
  local unit=$1 deadline=$((SECONDS + HEALTH_TIMEOUT)) restarts="" up_since="" state sub n
  while ((SECONDS <= deadline)); do
    state="" sub="" n=""
    while IFS='=' read -r key value; do
      case $key in
      ActiveState) state=$value ;;
      SubState) sub=$value ;;
      NRestarts) n=$value ;;
      esac
    done < <("$SYSTEMCTL" show "$unit" -p ActiveState -p SubState -p NRestarts)
    restarts=${restarts:-$n}
    if [[ $state == failed || $n != "$restarts" ]]; then
      say "$unit: $state/$sub, restarts $n"
      return 1
    fi
    if [[ $state == active && $sub == running ]]; then
      up_since=${up_since:-$SECONDS}
      if ((SECONDS - up_since >= HEALTH_SETTLE)); then return 0; fi
    else
      up_since=""
    fi
    sleep 1
  done
  say "$unit: still $state/$sub after ${HEALTH_TIMEOUT}s"
  return 1
}

restart_and_check() {
  local unit ok=0
  for unit in "${units[@]}"; do
    step "restarting $unit"
    "$SYSTEMCTL" restart "$unit" || say "systemctl restart $unit failed"
  done
  for unit in "${units[@]}"; do
    step "waiting for $unit to be healthy (up to ${HEALTH_TIMEOUT}s)"
    if healthy "$unit"; then say "$unit is active and running"; else ok=1; fi
  done
  return "$ok"
}

if ! restart_and_check; then
  printf '\n!!! the new version is NOT healthy: journalctl -u %s -n 100\n' "$SERVICE" >&2
  if ((had_prev)); then
    printf '!!! ROLLING BACK to the previous binary (%s.prev)\n' "$INSTALL_PATH" >&2
    install_binary "$INSTALL_PATH.prev"
    restore_checkout || true
    if restart_and_check; then
      die "ROLLED BACK: ${new_commit:0:10} did not become healthy; ${old_commit:0:10}'s binary is running again. Migrations applied by the new version stay (they only add)."
    fi
    die "ROLLED BACK to the previous binary, but it is NOT healthy either: look at journalctl -u $SERVICE now"
  fi
  die "no previous binary to roll back to: look at journalctl -u $SERVICE now"
fi

git update-ref "$INSTALLED_REF" "$new_commit"

step "summary"
say "commit:   ${old_commit:0:10} -> ${new_commit:0:10} ($(git log -1 --format=%s "$new_commit"))"
say "took:     $((SECONDS - started))s"
if ((!all_bots)); then say "note:     bot migrations were not run by this script (no migrate --all-bots)"; fi
if listing=$("$INSTALL_PATH" "${config_args[@]}" bot list --json 2>/dev/null) &&
  counts=$(jq -r '"\([.[] | select(.state == "running")] | length) running of \([.[] | select(.enabled)] | length) enabled (\(length) registered)"' <<<"$listing"); then
  say "bots:     $counts"
  problems=$(jq -r '.[] | select(.enabled and .state != null and .state != "running" and .state != "starting") | "\(.id) \(.name): \(.state)"' <<<"$listing")
  if [[ -n $problems ]]; then
    say "not running:"
    while IFS= read -r line; do say "  $line"; done <<<"$problems"
  fi
else
  say "bots:     unknown (botvisor bot list --json failed)"
fi
