# Shared by backup.sh and restore.sh: PostgreSQL URL helpers. Sourced, not run.
# shellcheck shell=bash

# url_with_db URL NAME: the URL with its database part replaced by NAME.
url_with_db() {
  local url=$1 name=$2 query="" scheme rest
  if [[ $url == *\?* ]]; then
    query="?${url#*\?}"
    url=${url%%\?*}
  fi
  scheme=${url%%://*}
  rest=${url#*://}
  printf '%s://%s/%s%s' "$scheme" "${rest%%/*}" "$name" "$query"
}

# db_of_url URL: the database name in a URL.
db_of_url() {
  local rest=${1#*://}
  rest=${rest%%\?*}
  if [[ $rest != */* ]]; then
    return 1
  fi
  printf '%s' "${rest#*/}"
}

# pg URL PROGRAM ARGS...: runs a PostgreSQL client with --dbname=URL, the URL's password
# moved to PGPASSWORD (percent-decoded) so it never shows in `ps` or in a log line.
pg() {
  local url=$1 scheme rest authority auth host pw=""
  shift
  scheme=${url%%://*}
  rest=${url#*://}
  authority=${rest%%/*}
  if [[ $authority == *@* ]]; then
    auth=${authority%@*}
    host=${authority##*@}
    if [[ $auth == *:* ]]; then
      pw=${auth#*:}
      auth=${auth%%:*}
    fi
    url="$scheme://$auth@$host${rest#"$authority"}"
  fi
  if [[ -n $pw ]]; then
    PGPASSWORD=$(printf '%b' "${pw//%/\\x}") "$@" --dbname="$url"
  else
    "$@" --dbname="$url"
  fi
}

# drop_hint URL DB: a ready-to-paste command that drops DB on URL's server (through its
# maintenance database "postgres"). The password is left out of the printed URL: psql asks
# for it (or takes PGPASSWORD / ~/.pgpass), and it never lands in a log.
drop_hint() {
  local url scheme rest authority
  url=$(url_with_db "$1" postgres)
  scheme=${url%%://*}
  rest=${url#*://}
  authority=${rest%%/*}
  if [[ $authority == *@* && ${authority%@*} == *:* ]]; then
    local user=${authority%@*}
    url="$scheme://${user%%:*}@${authority##*@}${rest#"$authority"}"
  fi
  printf "psql '%s' -c 'DROP DATABASE \"%s\"'" "$url" "$2"
}
