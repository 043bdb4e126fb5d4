#!/bin/sh
# Starts redis-server with `requirepass` read from REDIS_PASSWORD_FILE (a compose secret). The
# password goes to redis-server on stdin (`redis-server -`) as a config line, so it is neither on the command line
# (ps) nor in the environment nor in a file the container writes. Without a password file Redis
# refuses to start: the compose stack never runs an open Redis.
set -eu
file=${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}
if [ ! -r "$file" ]; then
  echo "redis-entrypoint: no readable password file at $file (set REDIS_PASSWORD_FILE)" >&2
  exit 1
fi
password=$(cat "$file")
if [ -z "$password" ]; then
  echo "redis-entrypoint: $file is empty" >&2
  exit 1
fi
exec redis-server - "$@" <<CONF
requirepass "$password"
CONF
