#!/usr/bin/env bash
# The whole system on one machine, with one command (README's first):
#
#   integration/dev-stack.sh
#
# Builds the gateway, the presence service, the demo login service and the web app, then starts
# them on their embedded defaults: the gateway on https://localhost:8443 (dev certificate and
# signing key made on first run in certs/dev/), the demo service and the presence service on
# loopback behind it, sessions in var/sessions.db (SQLite), presence in memory.
# Ctrl-C (or SIGTERM) stops everything. Logs go to var/log/<service>.log.
#
# The first build compiles a few hundred crates: several minutes (about 10 on 2 cores); cargo
# prints its progress as it goes. Later starts rebuild only what changed.
#
# "ready" is printed only once a real Socket.IO connection is accepted end to end: a demo user
# logs in through the gateway, opens a Socket.IO connection through it (Engine.IO polling) and
# receives the presence service's connect ack (`40`). Until then a refusal (`44`) is retried.
#
# One stack per checkout: var/dev-stack.pid names the running one, and a second start says so
# (and how to stop it) instead of failing on busy ports.
#
# Prerequisites: cargo, node + npm, curl, cmake (for the gateway's build), ss (iproute2; optional,
# to name the process that holds a busy port).
#
# Environment (all optional):
#   GATEWAY_CONFIG   (config/gateway.toml)     PRESENCE_CONFIG (config/presence.toml)
#   SESSIONS_DB      (var/sessions.db)         DEMO_LISTEN     (127.0.0.1:3000)
#   SKIP_BUILD=1     start what is already built
#   READY_TIMEOUT    seconds to wait for each service, and for the first accepted socket (60)
#   READY_USER / READY_PASSWORD   demo login used by the readiness probe (dave / dave-pass)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

GATEWAY_CONFIG=${GATEWAY_CONFIG:-config/gateway.toml}
PRESENCE_CONFIG=${PRESENCE_CONFIG:-config/presence.toml}
SESSIONS_DB=${SESSIONS_DB:-var/sessions.db}
DEMO_LISTEN=${DEMO_LISTEN:-127.0.0.1:3000}
READY_TIMEOUT=${READY_TIMEOUT:-60}
READY_USER=${READY_USER:-dave}
READY_PASSWORD=${READY_PASSWORD:-dave-pass}
LOG_DIR=var/log
PID_FILE=var/dev-stack.pid
BIN=target/debug

say() { printf '\033[1m[dev-stack]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[dev-stack] error:\033[0m %s\n' "$*" >&2; exit 1; }

# --- prerequisites --------------------------------------------------------------------------------
for tool in cargo node npm curl; do
  command -v "$tool" >/dev/null || die "'$tool' is not installed (needed: cargo, node + npm, curl, cmake)"
done
if [ "${SKIP_BUILD:-0}" != 1 ] && ! command -v cmake >/dev/null; then
  die "'cmake' is not installed: the gateway's build needs it (Debian: apt-get install cmake build-essential)"
fi
[ -f "$GATEWAY_CONFIG" ] || die "$GATEWAY_CONFIG not found"
[ -f "$PRESENCE_CONFIG" ] || die "$PRESENCE_CONFIG not found"

# --- one stack at a time ------------------------------------------------------------------------------
# var/dev-stack.pid holds the pid of the running dev-stack.sh, from before its build until it has
# stopped everything. It is created atomically (noclobber), so two starts cannot both take it; a
# file left by a killed run (its pid gone, or reused by something else) is replaced.
is_dev_stack() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'dev-stack\.sh'; }
already_running() {
  local pid=$1
  printf '\033[1;31m[dev-stack] error:\033[0m the dev stack is already running (pid %s)\n' "$pid" >&2
  echo "  Stop it with Ctrl-C in its terminal, or: kill $pid   (then run this again)" >&2
  echo "  It is at https://localhost:${GATEWAY_PORT_HINT:-8443}/ (logs: var/log/)" >&2
  exit 1
}
take_pid_file() {
  local other tries=0
  mkdir -p "$(dirname "$PID_FILE")"
  until (set -C; echo "$$" >"$PID_FILE") 2>/dev/null; do
    other=$(head -n 1 "$PID_FILE" 2>/dev/null | tr -dc 0-9)
    if [ -n "$other" ] && [ "$other" != "$$" ] && kill -0 "$other" 2>/dev/null && is_dev_stack "$other"; then
      already_running "$other"
    fi
    tries=$((tries + 1))
    [ "$tries" -lt 5 ] || die "cannot take $PID_FILE (remove it if no dev stack is running)"
    rm -f "$PID_FILE" # stale: its dev-stack.sh is gone
  done
  OWN_PID_FILE=1
}
release_pid_file() {
  if [ "${OWN_PID_FILE:-0}" = 1 ] && [ "$(head -n 1 "$PID_FILE" 2>/dev/null)" = "$$" ]; then
    rm -f "$PID_FILE"
  fi
  OWN_PID_FILE=0
}
GATEWAY_PORT_HINT=$(sed -n '/^\[\[listener\]\]/,/^\[/s/^[[:space:]]*listen[[:space:]]*=[[:space:]]*".*:\([0-9]*\)".*/\1/p' "$GATEWAY_CONFIG" | head -n 1)
take_pid_file
trap 'release_pid_file' EXIT
trap 'exit 130' INT TERM # Ctrl-C during the build: the EXIT trap still gives the pid file back

# --- ports ------------------------------------------------------------------------------------------
# The ports come from the same configs the services read, so editing a config moves the check too.
listen_ports() { sed -n 's/^[[:space:]]*listen[[:space:]]*=[[:space:]]*"\(.*\):\([0-9]*\)".*/\2/p' "$1"; }
declare -a PORTS=() PORT_OWNERS=()
for p in $(listen_ports "$GATEWAY_CONFIG"); do PORTS+=("$p"); PORT_OWNERS+=("gateway"); done
for p in $(listen_ports "$PRESENCE_CONFIG"); do PORTS+=("$p"); PORT_OWNERS+=("presence-service"); done
PORTS+=("${DEMO_LISTEN##*:}"); PORT_OWNERS+=("demo-service")

# Prints who listens on TCP port $1 ("name (pid N): command line"), or nothing if it is free.
port_holder() {
  local port=$1 line pid name
  if command -v ss >/dev/null; then
    line=$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 1)
    [ -n "$line" ] || return 0
    pid=$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line")
    name=$(sed -n 's/.*users:(("\([^"]*\)".*/\1/p' <<<"$line")
    if [ -n "$pid" ]; then
      echo "${name:-?} (pid $pid): $(ps -o args= -p "$pid" 2>/dev/null | cut -c1-120)"
    else
      echo "a process this user cannot see ($(awk '{print $4}' <<<"$line"))"
    fi
  elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "an unknown process (install iproute2's 'ss' to see which)"
  fi
}

# The dev-stack.sh that started the process holding port $1, if that is what holds it.
port_stack_pid() {
  local pid ppid
  command -v ss >/dev/null || return 0
  pid=$(ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1)
  [ -n "$pid" ] || return 0
  ppid=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')
  if [ -n "$ppid" ] && [ "$ppid" != "$$" ] && is_dev_stack "$ppid"; then echo "$ppid"; fi
}

check_ports() {
  local i holder busy=0 stack
  # Every port held by the services of one other dev stack: say that, not four port lines.
  stack=$(for p in "${PORTS[@]}"; do port_stack_pid "$p"; done | sort -u)
  if [ -n "$stack" ] && [ "$(wc -l <<<"$stack")" = 1 ]; then already_running "$stack"; fi
  for i in "${!PORTS[@]}"; do
    holder=$(port_holder "${PORTS[$i]}")
    if [ -n "$holder" ]; then
      printf '\033[1;31m[dev-stack] error:\033[0m port %s (needed by %s) is taken by %s\n' \
        "${PORTS[$i]}" "${PORT_OWNERS[$i]}" "$holder" >&2
      busy=1
    fi
  done
  [ "$busy" = 0 ] || die "stop the process(es) above, or change the port in the config, then run again"
}

check_ports

# --- build ------------------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  first_build=0
  for b in gateway presence-service demo-service; do [ -x "$BIN/$b" ] || first_build=1; done
  if [ "$first_build" = 1 ]; then
    say "first build: this takes several minutes (about 10 on 2 cores); cargo shows its progress below"
  fi
  say "building the gateway, the presence service and the demo service (cargo, debug)"
  cargo build -p gateway -p presence-service -p demo-service
  say "building the web app (integration/web)"
  (
    cd integration/web
    # npm ci wipes node_modules; skip it when the installed tree already matches the lock file.
    if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
      npm ci --no-audit --no-fund
    fi
    npm run build
  )
fi
for b in gateway presence-service demo-service; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run without SKIP_BUILD=1"
done

# --- run --------------------------------------------------------------------------------------------
mkdir -p "$LOG_DIR" "$(dirname "$SESSIONS_DB")"
declare -a PIDS=() NAMES=()
STOPPING=0

stop_all() {
  local i pid deadline
  trap '' INT TERM # a second Ctrl-C must not leave services running without us
  [ "${#PIDS[@]}" -gt 0 ] || return 0
  say "stopping ${NAMES[*]}"
  # All at once: each service drains its own connections (the gateway for shutdown_grace_secs).
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  deadline=$((SECONDS + 20))
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[$i]}
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "${NAMES[$i]} (pid $pid) did not stop within 20 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  say "stopped"
}
trap 'STOPPING=1' INT TERM
trap 'stop_all; release_pid_file' EXIT

# Each service is started under `set -m`, which gives it its own process group: a terminal's Ctrl-C
# then reaches only this script, which stops the services itself (and waits for them) instead of
# them all racing on the same signal while the script exits.
start() {
  local name=$1 pid; shift
  set -m
  "$@" >"$LOG_DIR/$name.log" 2>&1 &
  pid=$!
  set +m
  PIDS+=("$pid"); NAMES+=("$name")
  say "started $name (pid $pid), log: $LOG_DIR/$name.log"
}

# Waits until $2 answers 2xx, or fails if the process ($3) died or READY_TIMEOUT passed.
wait_ready() {
  local name=$1 url=$2 pid=$3 deadline=$((SECONDS + READY_TIMEOUT))
  until curl -fsSk -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    if [ "$STOPPING" = 1 ]; then exit 130; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "---- last lines of $LOG_DIR/$name.log ----" >&2
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name exited during startup (see above)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name not ready at $url after ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
}

check_ports # again: the build may have taken minutes

start demo-service "$BIN/demo-service" --listen "$DEMO_LISTEN" --sessions-db "$SESSIONS_DB" \
  --web-dist integration/web/dist
# The demo service creates the sessions table; the gateway reads it, so it goes first.
wait_ready demo-service "http://$DEMO_LISTEN/healthz" "${PIDS[0]}"
start presence-service "$BIN/presence-service" --config "$PRESENCE_CONFIG"
start gateway "$BIN/gateway" --config "$GATEWAY_CONFIG"

PRESENCE_PORT=$(listen_ports "$PRESENCE_CONFIG" | head -n 1)
ADMIN_ADDR=$(sed -n '/^\[admin\]/,/^\[/s/^[[:space:]]*listen[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$GATEWAY_CONFIG" | head -n 1)
ADMIN_ADDR=${ADMIN_ADDR:-127.0.0.1:9180}
GATEWAY_PORT=$(sed -n '/^\[\[listener\]\]/,/^\[/s/^[[:space:]]*listen[[:space:]]*=[[:space:]]*".*:\([0-9]*\)".*/\1/p' "$GATEWAY_CONFIG" | head -n 1)
wait_ready presence-service "http://127.0.0.1:${PRESENCE_PORT:-3001}/healthz" "${PIDS[1]}"
wait_ready gateway "http://$ADMIN_ADDR/readyz" "${PIDS[2]}"
URL=https://localhost:${GATEWAY_PORT:-8443}/
# The dev CA sits beside the server certificate (relative paths in the config are from its folder).
CERT=$(sed -n 's/\(^\|.*[[:space:]{,]\)cert[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\2/p' "$GATEWAY_CONFIG" | head -n 1)
case "$CERT" in /*) ;; *) CERT="$(dirname "$GATEWAY_CONFIG")/$CERT" ;; esac
CA=$(realpath -m --relative-to="$ROOT" "$(dirname "$CERT")/ca.crt" 2>/dev/null || echo "$(dirname "$CERT")/ca.crt")
wait_ready gateway "$URL" "${PIDS[2]}"

# --- ready = a socket is accepted ---------------------------------------------------------------------
# Every service answering its health check is not enough: the presence service may still refuse
# sockets (say, before it has the gateway's signing key). So the last check is what a browser
# does: log in through the gateway, open a Socket.IO connection through it (Engine.IO long-polling:
# GET the handshake `0{"sid":..}`, POST the Socket.IO CONNECT `40`, GET the answer) and wait for
# the connect ack `40{"sid":..}`. A `44` connect_error (refused) is retried until READY_TIMEOUT.
CURL=(curl -sk --noproxy '*')
PROBE_COOKIE=
SOCKET_VERDICT=
probe_socket() {
  local base=$1 answer status sid query body packet
  if [ -z "$PROBE_COOKIE" ]; then
    PROBE_COOKIE=$("${CURL[@]}" --max-time 5 -D - -o /dev/null -H 'content-type: application/json' \
      -d "{\"username\":\"$READY_USER\",\"password\":\"$READY_PASSWORD\"}" "$base/api/auth/login" |
      sed -n 's/^[Ss]et-[Cc]ookie: \([^=;]*=[^;]*\).*/\1/p' | head -n 1 | tr -d '\r')
    [ -n "$PROBE_COOKIE" ] || { SOCKET_VERDICT="login as $READY_USER through the gateway failed"; return 1; }
  fi
  answer=$("${CURL[@]}" --max-time 5 -w '\n%{http_code}' -H "cookie: $PROBE_COOKIE" \
    "$base/socket.io/?EIO=4&transport=polling")
  status=${answer##*$'\n'}
  body=${answer%$'\n'*}
  if [ "$status" != 200 ]; then
    SOCKET_VERDICT="the Engine.IO handshake through the gateway answered ${status/#000/no response}"
    return 1
  fi
  sid=$(sed -n 's/^0{.*"sid":"\([^"]*\)".*/\1/p' <<<"$body")
  [ -n "$sid" ] || { SOCKET_VERDICT="the Engine.IO handshake has no sid: ${body:0:80}"; return 1; }
  query="EIO=4&transport=polling&sid=$sid"
  answer=$("${CURL[@]}" --max-time 5 -H 'content-type: text/plain;charset=UTF-8' --data-binary 40 \
    "$base/socket.io/?$query")
  if [ "$answer" != ok ]; then
    SOCKET_VERDICT="the Socket.IO CONNECT was not taken: ${answer:0:80}"
    return 1
  fi
  body=$("${CURL[@]}" --max-time 10 "$base/socket.io/?$query")
  # Close this Engine.IO session at once (a `1` packet), rather than leave it to the ping timeout.
  "${CURL[@]}" --max-time 5 -o /dev/null -H 'content-type: text/plain;charset=UTF-8' \
    --data-binary 1 "$base/socket.io/?$query" || true
  # A polling answer may hold several packets, separated by 0x1e.
  SOCKET_VERDICT="no connect answer: ${body:0:80}"
  while IFS= read -r -d $'\x1e' packet || [ -n "$packet" ]; do
    case "$packet" in
      40*) SOCKET_VERDICT="accepted"; return 0 ;;
      44*) SOCKET_VERDICT="refused by the presence service: $packet" ;;
    esac
  done < <(printf '%s' "$body")
  return 1
}

wait_socket_accepted() {
  local base=$1 deadline=$((SECONDS + READY_TIMEOUT)) delay=0.2 last= i
  say "checking that a Socket.IO connection is accepted through the gateway (as $READY_USER)"
  until probe_socket "$base"; do
    if [ "$STOPPING" = 1 ]; then exit 130; fi
    for i in "${!PIDS[@]}"; do
      if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        tail -n 30 "$LOG_DIR/${NAMES[$i]}.log" >&2 || true
        die "${NAMES[$i]} exited during startup (see above)"
      fi
    done
    if [ "$SOCKET_VERDICT" != "$last" ]; then
      say "not yet: $SOCKET_VERDICT (retrying)"
      last=$SOCKET_VERDICT
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$LOG_DIR/presence-service.log" >&2 || true
      die "no Socket.IO connection accepted within ${READY_TIMEOUT}s (last: $SOCKET_VERDICT); logs: $LOG_DIR/"
    fi
    sleep "$delay"
    case "$delay" in 0.2) delay=0.5 ;; 0.5) delay=1 ;; esac
  done
  # Done with the probe's session: log it out (the gateway passes the logout on to presence).
  "${CURL[@]}" --max-time 5 -o /dev/null -X POST -H "cookie: $PROBE_COOKIE" "$base/api/auth/logout" || true
  say "a Socket.IO connection was accepted (connect ack received)"
}
wait_socket_accepted "${URL%/}"

cat <<EOF

  The stack is up: $URL
  (dev certificate: accept the browser warning, or trust $CA)

  Demo logins (user / password):
    alice / alice-pass     bob / bob-pass     carol / carol-pass     dave / dave-pass

  Log in as one user in one browser window and as another in a private window:
  each sees the other come and go on the dashboard.
  JWKS: http://$ADMIN_ADDR/.well-known/jwks.json     Logs: $LOG_DIR/
  Press Ctrl-C to stop.

EOF
say "ready"

# Runs until Ctrl-C / SIGTERM, or until a service dies (then the others are stopped too).
while [ "$STOPPING" = 0 ]; do
  wait -n "${PIDS[@]}" 2>/dev/null || true
  [ "$STOPPING" = 0 ] || break
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "---- last lines of $LOG_DIR/${NAMES[$i]}.log ----" >&2
      tail -n 30 "$LOG_DIR/${NAMES[$i]}.log" >&2 || true
      die "${NAMES[$i]} (pid ${PIDS[$i]}) exited unexpectedly; stopping the rest"
    fi
  done
done
exit 0
