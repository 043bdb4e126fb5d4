#!/usr/bin/env bash
# CI's check of README's first command: run integration/dev-stack.sh as a newcomer would, wait
# until it says it is ready, and at that very moment (no sleep) check that a Socket.IO connection
# is ACCEPTED through the gateway: log in, open an Engine.IO session, send the Socket.IO CONNECT
# and receive the connect ack `40` (a `44` connect_error is a failure). Then check what the
# newcomer would check (the page, the session, the JWKS) through the real ports, that a second
# start says the stack is already running, stop it with Ctrl-C (SIGINT), and check that it
# stopped cleanly and freed its ports. Last, check that it refuses to start on a busy port.
#
#   integration/dev-stack-smoke.sh                  (SMOKE_TIMEOUT: seconds for build + start, default 2400)
#   SMOKE_REPEAT=10 integration/dev-stack-smoke.sh  start, ready, socket accepted, stop: 10 times in
#                                                   a row (rounds after the first reuse the build)
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
REPEAT=${SMOKE_REPEAT:-1}
LOG=$(mktemp -t dev-stack-smoke.XXXXXX)
CURL=(curl -sk --noproxy '*')
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

# --- helpers ----------------------------------------------------------------------------------------
# Starts dev-stack.sh as README says and returns once it printed "ready" (polled every 0.1 s, so
# the checks that follow run right after it). Exits the smoke test if it never gets there.
start_stack() {
  local label=$1 deadline
  echo "# $label: starting integration/dev-stack.sh (log: $LOG)"
  # Under `set -m` the script gets its own process group and keeps SIGINT (a plain `&` job of a
  # script starts with SIGINT ignored), so the Ctrl-C below is what a terminal would send.
  # Emptied here, not by the background job's redirection: that runs after the fork, and the
  # loop below could meanwhile read the previous round's "ready".
  : >"$LOG"
  set -m
  bash integration/dev-stack.sh >>"$LOG" 2>&1 &
  STACK_PID=$!
  set +m
  deadline=$((SECONDS + TIMEOUT))
  until grep -q '\[dev-stack\].* ready$' "$LOG"; do
    if ! kill -0 "$STACK_PID" 2>/dev/null; then
      tail -n 60 "$LOG"
      not_ok "$label: dev-stack.sh came up (it exited first)"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 60 "$LOG"
      not_ok "$label: dev-stack.sh came up within ${TIMEOUT}s"
      exit 1
    fi
    sleep 0.1
  done
  ok "$label: dev-stack.sh came up"
}

# Logs $1 in through the gateway; prints the session cookie (`id=...`).
login() {
  "${CURL[@]}" --max-time 10 -D - -o /dev/null -H 'content-type: application/json' \
    -d "{\"username\":\"$1\",\"password\":\"$1-pass\"}" "$URL/api/auth/login" |
    sed -n 's/^[Ss]et-[Cc]ookie: \(id=[^;]*\).*/\1/p' | tr -d '\r'
}

# One Socket.IO connection through the gateway with cookie $1, once, no retry: Engine.IO polling
# handshake, Socket.IO CONNECT (`40`), then the answer must hold the connect ack `40{"sid":..}`.
# Sets ACCEPT to what happened.
ACCEPT=
socket_accepted() {
  local cookie=$1 open sid query posted body packet
  open=$("${CURL[@]}" --max-time 10 -H "cookie: $cookie" "$URL/socket.io/?EIO=4&transport=polling")
  sid=$(sed -n 's/^0{.*"sid":"\([^"]*\)".*/\1/p' <<<"$open")
  [ -n "$sid" ] || { ACCEPT="no Engine.IO handshake: ${open:0:100}"; return 1; }
  query="EIO=4&transport=polling&sid=$sid"
  posted=$("${CURL[@]}" --max-time 10 -H 'content-type: text/plain;charset=UTF-8' --data-binary 40 \
    "$URL/socket.io/?$query")
  [ "$posted" = ok ] || { ACCEPT="CONNECT not taken: ${posted:0:100}"; return 1; }
  body=$("${CURL[@]}" --max-time 10 "$URL/socket.io/?$query")
  "${CURL[@]}" --max-time 10 -o /dev/null -H 'content-type: text/plain;charset=UTF-8' \
    --data-binary 1 "$URL/socket.io/?$query"
  ACCEPT="no connect ack: ${body:0:100}"
  while IFS= read -r -d $'\x1e' packet || [ -n "$packet" ]; do
    case "$packet" in
      40*) ACCEPT="connect ack ${packet:0:60}"; return 0 ;;
      44*) ACCEPT="refused: $packet"; return 1 ;;
    esac
  done < <(printf '%s' "$body")
  return 1
}

# Ctrl-C to dev-stack.sh's process group, as a terminal sends it; then its exit code and ports.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
stop_stack() {
  local label=$1 stop_started=$SECONDS stop_deadline code port
  kill -INT -- "-$STACK_PID" # the whole foreground group, as a terminal's Ctrl-C does
  stop_deadline=$((SECONDS + 40))
  while kill -0 "$STACK_PID" 2>/dev/null && [ "$SECONDS" -lt "$stop_deadline" ]; do sleep 0.2; done
  if kill -0 "$STACK_PID" 2>/dev/null; then
    not_ok "$label: Ctrl-C stopped dev-stack.sh within 40 s"
    return
  fi
  wait "$STACK_PID"
  code=$?
  STACK_PID=
  check "$label: Ctrl-C stopped dev-stack.sh in $((SECONDS - stop_started)) s with exit code 0 (was $code)" test "$code" = 0
  for port in $PORTS; do check "$label: port $port is free again" port_free "$port"; done
  check "$label: var/dev-stack.pid is gone" test ! -e var/dev-stack.pid
}

# --- round 1: start as README says, and check what a newcomer checks ------------------------------------
start_stack "round 1/$REPEAT"
# First, at once: a socket is accepted end to end (the promise behind "ready").
cookie=$(login alice)
check "alice logs in (session cookie set)" test -n "$cookie"
if socket_accepted "$cookie"; then ok "right after ready, alice's socket is accepted ($ACCEPT)"; else
  not_ok "right after ready, alice's socket is accepted ($ACCEPT)"; fi

check "it printed the URL" grep -q "$URL/" "$LOG"
check "it printed the demo logins" grep -q "alice / alice-pass" "$LOG"
page=$("${CURL[@]}" -f "$URL/")
check "the page is served through TLS" grep -q '<div id="root">' <<<"$page"
asset=$(sed -n 's/.*src="\(\/assets\/[^"]*\.js\)".*/\1/p' <<<"$page" | head -n 1)
check "its script is served" "${CURL[@]}" -f -o /dev/null "$URL$asset"
check "/dashboard (a client route) gets the page" bash -c "curl -fsSk '$URL/dashboard' | grep -q '<div id=\"root\">'"
check "anonymous /api/auth/user is 401" test "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$URL/api/auth/user")" = 401
check "anonymous Socket.IO handshake is 401" \
  test "$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$URL/socket.io/?EIO=4&transport=polling")" = 401
check "the session is restored with the cookie" \
  bash -c "curl -fsSk -H 'cookie: $cookie' '$URL/api/auth/user' | grep -q '\"id\":\"alice\"'"

jwks=$(curl -fsS --noproxy '*' "$ADMIN/.well-known/jwks.json")
check "the JWKS has an Ed25519 key" node -e '
  const jwks = JSON.parse(process.argv[1]);
  process.exit(jwks.keys.some((k) => k.kty === "OKP" && k.crv === "Ed25519" && k.kid && k.x) ? 0 : 1);' "$jwks"
check "the gateway is ready" curl -fsS --noproxy '*' -o /dev/null "$ADMIN/readyz"

# A second start while this one runs: one clear sentence, and the running stack is left alone.
second=$(SKIP_BUILD=1 timeout 60 bash integration/dev-stack.sh 2>&1)
code=$?
check "a second start fails (exit $code)" test "$code" != 0 -a "$code" != 124
check "it says the dev stack is already running (pid $STACK_PID)" \
  grep -q "the dev stack is already running (pid $STACK_PID)" <<<"$second"
check "it says how to stop it" grep -q "kill $STACK_PID" <<<"$second"
check "it prints no port lines" bash -c '! grep -q "is taken by" <<<"$1"' _ "$second"
check "the running stack still accepts sockets" socket_accepted "$cookie"

stop_stack "round 1/$REPEAT"

# --- rounds 2..N: start, ready, a socket accepted at once, stop ---------------------------------------
for ((round = 2; round <= REPEAT; round++)); do
  label="round $round/$REPEAT"
  SKIP_BUILD=1 start_stack "$label"
  cookie=$(login alice)
  ACCEPT="alice's login set no cookie"
  if [ -n "$cookie" ] && socket_accepted "$cookie"; then ok "$label: right after ready, a socket is accepted ($ACCEPT)"
  else not_ok "$label: right after ready, a socket is accepted ($ACCEPT)"; fi
  stop_stack "$label"
done

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
check "a refused start leaves no var/dev-stack.pid" test ! -e var/dev-stack.pid
[ "$failed" = 0 ] || { echo "---- dev-stack log ----"; tail -n 40 "$LOG"; }
