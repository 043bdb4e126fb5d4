#!/usr/bin/env bash
# CI's check of README's first command: run integration/dev-stack.sh as a newcomer would, wait
# until it says it is ready, check what the newcomer would check (the page, a login, a Socket.IO
# handshake, the JWKS) through the real ports, stop it with Ctrl-C (SIGINT), and check that it
# stopped cleanly and freed its ports. Then check that it refuses to start on a busy port.
#
#   integration/dev-stack-smoke.sh            (SMOKE_TIMEOUT: seconds for build + start, default 2400)
#
# It checks the default ports. To try it beside another running stack, point dev-stack.sh at
# other configs (GATEWAY_CONFIG, PRESENCE_CONFIG, DEMO_LISTEN, SESSIONS_DB) and set SMOKE_URL,
# SMOKE_ADMIN, SMOKE_PORTS and SMOKE_PRESENCE_PORT to match.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
URL=${SMOKE_URL:-https://localhost:8443}
ADMIN=${SMOKE_ADMIN:-http://127.0.0.1:9180}
PORTS=${SMOKE_PORTS:-8443 9180 3000 3001}
PRESENCE_PORT=${SMOKE_PRESENCE_PORT:-3001}
TIMEOUT=${SMOKE_TIMEOUT:-2400}
LOG=$(mktemp -t dev-stack-smoke.XXXXXX)
passed=0
failed=0
STACK_PID=

ok() { echo "ok - $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else not_ok "$what"; fi; }
finish() {
  if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
    kill -TERM "$STACK_PID" 2>/dev/null
    wait "$STACK_PID" 2>/dev/null
  fi
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ] && rm -f "$LOG"
  [ "$failed" = 0 ]
}
trap 'finish; exit $?' EXIT
trap 'exit 130' INT TERM

# --- start, as README says ------------------------------------------------------------------------
echo "# starting integration/dev-stack.sh (log: $LOG)"
# Under `set -m` the script gets its own process group and keeps SIGINT (a plain `&` job of a
# script starts with SIGINT ignored), so the Ctrl-C below is what a terminal would send.
set -m
bash integration/dev-stack.sh >"$LOG" 2>&1 &
STACK_PID=$!
set +m
deadline=$((SECONDS + TIMEOUT))
until grep -q '\[dev-stack\].* ready$' "$LOG"; do
  if ! kill -0 "$STACK_PID" 2>/dev/null; then
    tail -n 60 "$LOG"
    not_ok "dev-stack.sh came up (it exited first)"
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    tail -n 60 "$LOG"
    not_ok "dev-stack.sh came up within ${TIMEOUT}s"
    exit 1
  fi
  sleep 1
done
ok "dev-stack.sh came up"
check "it printed the URL" grep -q "$URL/" "$LOG"
check "it printed the demo logins" grep -q "alice / alice-pass" "$LOG"

# --- what a newcomer checks -------------------------------------------------------------------------
page=$(curl -fsSk "$URL/")
check "the page is served through TLS" grep -q '<div id="root">' <<<"$page"
asset=$(sed -n 's/.*src="\(\/assets\/[^"]*\.js\)".*/\1/p' <<<"$page" | head -n 1)
check "its script is served" curl -fsSk -o /dev/null "$URL$asset"
check "/dashboard (a client route) gets the page" bash -c "curl -fsSk '$URL/dashboard' | grep -q '<div id=\"root\">'"
check "anonymous /api/auth/user is 401" test "$(curl -sk -o /dev/null -w '%{http_code}' "$URL/api/auth/user")" = 401
check "anonymous Socket.IO handshake is 401" \
  test "$(curl -sk -o /dev/null -w '%{http_code}' "$URL/socket.io/?EIO=4&transport=polling")" = 401

cookie=$(curl -sk -D - -o /dev/null -H 'content-type: application/json' \
  -d '{"username":"alice","password":"alice-pass"}' "$URL/api/auth/login" |
  sed -n 's/^[Ss]et-[Cc]ookie: \(id=[^;]*\).*/\1/p' | tr -d '\r')
check "alice logs in (session cookie set)" test -n "$cookie"
check "the session is restored with the cookie" \
  bash -c "curl -fsSk -H 'cookie: $cookie' '$URL/api/auth/user' | grep -q '\"id\":\"alice\"'"
handshake=$(curl -sk -H "cookie: $cookie" "$URL/socket.io/?EIO=4&transport=polling")
check "alice's Socket.IO handshake is accepted" grep -q '"sid"' <<<"$handshake"

jwks=$(curl -fsS "$ADMIN/.well-known/jwks.json")
check "the JWKS has an Ed25519 key" node -e '
  const jwks = JSON.parse(process.argv[1]);
  process.exit(jwks.keys.some((k) => k.kty === "OKP" && k.crv === "Ed25519" && k.kid && k.x) ? 0 : 1);' "$jwks"
check "the gateway is ready" curl -fsS -o /dev/null "$ADMIN/readyz"

# --- Ctrl-C stops everything ------------------------------------------------------------------------
stop_started=$SECONDS
kill -INT -- "-$STACK_PID" # the whole foreground group, as a terminal's Ctrl-C does
stop_deadline=$((SECONDS + 40))
while kill -0 "$STACK_PID" 2>/dev/null && [ "$SECONDS" -lt "$stop_deadline" ]; do sleep 0.2; done
if kill -0 "$STACK_PID" 2>/dev/null; then
  not_ok "Ctrl-C stopped dev-stack.sh within 40 s"
else
  wait "$STACK_PID"
  code=$?
  STACK_PID=
  check "Ctrl-C stopped dev-stack.sh in $((SECONDS - stop_started)) s with exit code 0 (was $code)" test "$code" = 0
fi
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $PORTS; do check "port $port is free again" port_free "$port"; done

# --- a busy port is refused clearly -----------------------------------------------------------------
python3 -c 'import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(120)' "$PRESENCE_PORT" &
BLOCKER=$!
until ! port_free "$PRESENCE_PORT"; do sleep 0.1; done
refusal=$(SKIP_BUILD=1 timeout 60 bash integration/dev-stack.sh 2>&1)
code=$?
kill "$BLOCKER" 2>/dev/null
wait "$BLOCKER" 2>/dev/null
check "a busy port makes dev-stack.sh fail (exit $code)" test "$code" != 0
check "the refusal names the port and the process" grep -q "port $PRESENCE_PORT (needed by presence-service) is taken by python" <<<"$refusal"
[ "$failed" = 0 ] || { echo "---- dev-stack log ----"; tail -n 40 "$LOG"; }
