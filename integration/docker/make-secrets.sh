#!/usr/bin/env bash
# Writes the compose stack's secrets into DIR (files it finds there are kept) and prints the
# variables the compose file requires:
#
#   integration/docker/make-secrets.sh /srv/edge/secrets
#   eval "$(integration/docker/make-secrets.sh /srv/edge/secrets)"   # export them
#
#   session_secret            express-session's secret (the Express app signs, the gateway verifies)
#   redis_<user>_password     the Redis ACL user's password (redis-users.acl), for each user:
#                             admin (operators, Redis's health check), gateway, presence, express
#   redis_gateway_url         redis://gateway:<password>@redis:6379, for the gateway
#   redis_presence_url        redis://presence:<password>@redis:6379, for the presence instances
#
# Random 32-byte hex values (no characters that need quoting in a URL or the Redis config). A URL
# file is written again when it no longer carries its user's password (after a rotation).
# The directory is 0700; the files are 0644 because the services read them as unprivileged
# users (compose bind-mounts each file at /run/secrets/<name>; the directory keeps others out).
set -euo pipefail
dir=${1:?usage: make-secrets.sh DIR}
mkdir -p "$dir"
chmod 700 "$dir"
dir=$(cd "$dir" && pwd)
random() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
keep_or_make() { [[ -s $dir/$1 ]] || random >"$dir/$1"; }

keep_or_make session_secret
for user in admin gateway presence express; do
  keep_or_make "redis_${user}_password"
done
for user in gateway presence; do
  password=$(tr -d '\n' <"$dir/redis_${user}_password")
  url="redis://$user:$password@redis:6379"
  if [[ ! -s $dir/redis_${user}_url ]] || [[ $(cat "$dir/redis_${user}_url") != "$url" ]]; then
    printf '%s\n' "$url" >"$dir/redis_${user}_url"
  fi
done
chmod 644 "$dir"/session_secret "$dir"/redis_*_password "$dir"/redis_*_url

printf 'export SESSION_SECRET_FILE=%q\n' "$dir/session_secret"
for user in admin gateway presence express; do
  printf 'export REDIS_%s_PASSWORD_FILE=%q\n' "${user^^}" "$dir/redis_${user}_password"
done
for user in gateway presence; do
  printf 'export REDIS_%s_URL_FILE=%q\n' "${user^^}" "$dir/redis_${user}_url"
done
