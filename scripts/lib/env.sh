# Shared by the ops scripts: reading a systemd EnvironmentFile. Sourced, not run.
# shellcheck shell=bash

# load_env_file FILE: exports the KEY=value lines of FILE as systemd's EnvironmentFile= reads
# them (blank lines and lines starting with # or ; are skipped, one pair of surrounding
# quotes is removed; nothing is executed), so the scripts see what the units see. Keys
# already in the environment win, so one run can override a value. Fails when FILE cannot
# be read or has a line that is not KEY=value.
load_env_file() {
  local file=$1 line key value n=0
  [[ -r $file ]] || {
    printf 'cannot read %s\n' "$file" >&2
    return 1
  }
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    line=${line#"${line%%[![:space:]]*}"}
    [[ -z $line || $line == \#* || $line == \;* ]] && continue
    key=${line%%=*}
    value=${line#*=}
    key=${key%"${key##*[![:space:]]}"}
    if [[ $line != *=* || ! $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
      printf '%s line %d is not KEY=value\n' "$file" "$n" >&2
      return 1
    fi
    value=${value#"${value%%[![:space:]]*}"}
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value=${BASH_REMATCH[1]}; fi
    [[ -n ${!key+set} ]] || export "$key=$value"
  done <"$file"
}
