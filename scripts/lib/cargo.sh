# Shared by dev.sh and update.sh: where cargo puts what it builds. Sourced, not run.
# shellcheck shell=bash

# cargo_target_dir: prints the directory cargo builds into, as `cargo metadata` reports it
# (CARGO_TARGET_DIR, build.target-dir in a .cargo/config.toml, or <workspace>/target), so a
# binary is found wherever cargo put it. Runs ${CARGO:-cargo} in the current directory.
#
# The JSON is read without jq (dev.sh must not need it): the one line cargo prints holds
# "target_directory":"<path>". A path JSON has to escape (a quote or a backslash in it) is
# refused rather than guessed at.
cargo_target_dir() {
  local meta dir
  meta=$("${CARGO:-cargo}" metadata --format-version 1 --no-deps --locked) || return 1
  dir=$(grep -o '"target_directory":"[^"]*"' <<<"$meta" | head -n 1) || true
  dir=${dir#'"target_directory":"'}
  dir=${dir%'"'}
  if [[ -z $dir || $dir == *\\* ]]; then
    printf 'cargo metadata reported no usable target_directory (a path with a quote or a backslash?)\n' >&2
    return 1
  fi
  printf '%s\n' "$dir"
}
