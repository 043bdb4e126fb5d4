#!/usr/bin/env bash
# Writes the compose stack's secrets into DIR (files it finds there are kept) and prints the
# variables the compose file requires:
#
#   integration/docker/make-secrets.sh /srv/edge/secrets
#   eval "$(integration/docker/make-secrets.sh /srv/edge/secrets)"   # export them
#
#   session_secret   express-session's secret (the Express app signs, the gateway verifies)
#   redis_password   Redis `requirepass`
#   redis_url        redis://:<redis_password>@redis:6379, for the gateway and presence
#
# Random 32-byte hex values (no characters that need quoting in a URL or the Redis config).
# The directory is 0700; the files are 0644 because the services read them as unprivileged
# users (compose bind-mounts each file at /run/secrets/<name>; the directory keeps others out).
set -euo pipefail
dir=${1:?usage: make-secrets.sh DIR}
mkdir -p "$dir"
chmod 700 "$dir"
dir=$(cd "$dir" && pwd)
random() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
[[ -s $dir/session_secret ]] || random >"$dir/session_secret"
[[ -s $dir/redis_password ]] || random >"$dir/redis_password"
if [[ ! -s $dir/redis_url ]] || ! grep -qF ":$(cat "$dir/redis_password")@" "$dir/redis_url"; then
  printf 'redis://:%s@redis:6379\n' "$(cat "$dir/redis_password")" >"$dir/redis_url"
fi
chmod 644 "$dir/session_secret" "$dir/redis_password" "$dir/redis_url"
printf 'export SESSION_SECRET_FILE=%q\n' "$dir/session_secret"
printf 'export REDIS_PASSWORD_FILE=%q\n' "$dir/redis_password"
printf 'export REDIS_URL_FILE=%q\n' "$dir/redis_url"
