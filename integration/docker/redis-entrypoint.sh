#!/bin/sh
# Starts redis-server with one ACL user per service (redis-users.acl) and the `default` user
# off. Each user's password comes from /run/secrets/redis_<user>_password (a compose secret;
# REDIS_SECRETS_DIR to look elsewhere), the file the service itself reads. The users go to
# redis-server on stdin (`redis-server -`) as config lines, so the passwords are neither on the
# command line (ps) nor in the environment nor in a file the container writes. Without a password
# file for every user Redis refuses to start: the compose stack never runs an open Redis.
# Rotating a password happens live with ACL SETUSER (docs/deploy-compose.md); the files are what
# Redis starts with.
set -eu
rules=${REDIS_USERS_ACL:-/etc/redis/users.acl}
secrets=${REDIS_SECRETS_DIR:-/run/secrets}
fail() { echo "redis-entrypoint: $*" >&2; exit 1; }
[ -r "$rules" ] || fail "no readable ACL rules at $rules"

# The default user is off with no password: no client can log in as it, so a client that does not
# log in as one of the users below gets NOAUTH for every command. Its permissions stay "all"
# because Redis 7.0 replays the AOF's MULTI/EXEC blocks (the effects of the presence service's
# Lua scripts) as the default user and re-checks them at EXEC: with `-@all` every such block is
# refused at startup and the presence state in the AOF is lost (the suite's ACL LOG check saw
# `default command hset` etc. after a Redis restart).
conf='user default off resetpass resetkeys resetchannels ~* &* +@all'
users=0
while read -r name acl; do
  case $name in ''|'#'*) continue ;; esac
  file=$secrets/redis_${name}_password
  [ -r "$file" ] || fail "no readable password file for Redis user '$name' at $file"
  # Exactly one password (one non-empty line): the Express app reads this same file whole.
  if [ "$(grep -c . "$file")" != 1 ]; then fail "$file must hold exactly one password"; fi
  pw=$(grep . "$file")
  # Only URL-safe characters: the same password goes into a redis:// URL for the Rust services,
  # and nothing in a config line needs quoting then.
  case $pw in *[!A-Za-z0-9._~-]*) fail "$file: a password may only hold A-Z a-z 0-9 . _ ~ -" ;; esac
  conf="$conf
user $name on resetpass >$pw $acl"
  users=$((users + 1))
done <"$rules"
[ "$users" -gt 0 ] || fail "$rules names no user"

exec redis-server - "$@" <<CONF
$conf
CONF
