#!/usr/bin/env bash
# The compose integration suite in one command: base images (cached), host binaries (built once),
# images, `up` until healthy, the tests from the host (node --test with socket.io-client, pytest
# with python-socketio), then `down -v` always. Exits non-zero on any failure and prints the
# containers' logs when something failed.
#
#   integration/docker/run-suite.sh
#
# Env (all optional):
#   IMAGES_FROM=local     local: base images from prepare-base-images.sh (no registry needed),
#                         binaries and node_modules built on the host and copied in (CI, offline).
#                         registry: ordinary images pulled, everything compiled inside the images.
#   PROFILE=debug         cargo profile of the host-built binaries. debug: the binaries the
#                         earlier suites of run-all-tests.sh built (`cargo build -p gateway
#                         -p presence-service -p demo-service`), so CI compiles nothing here;
#                         release costs 7-10 more minutes of compiling on 2 cores.
#   SKIP_HOST_BUILD=1     use the binaries already in target/$PROFILE.
#   KEEP_STACK=1          leave the stack running afterwards (then: docker-compose -p ... down -v).
#   TEST_FILTER=...       passed to node --test-name-pattern and pytest -k.
#   SAVE_LOGS=<file>      write every container's log there before `down` (pass or fail).
#   IMAGE_BUDGET_MB_<svc> size budget per image (svc: gateway, presence_service, demo_service,
#                         express_service, redis); defaults below, set from measured sizes.
#
# Besides the tests in integration/compose-tests, the runner itself checks that compose refuses
# to start without each of its secrets, and that the images stay within their size budget.
set -euo pipefail

started=$(date +%s)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export IMAGES_FROM=${IMAGES_FROM:-local}
export PROFILE=${PROFILE:-debug}

log() { printf '\n[run-suite %s] %s\n' "$(date +%T)" "$*" >&2; }
elapsed() { echo $(($(date +%s) - started)); }

# A docker CLI that can build with BuildKit: Debian's docker.io client has it built in; a newer
# CLI needs the buildx plugin for that.
if [[ -z ${DOCKER:-} ]]; then
  if docker buildx version >/dev/null 2>&1; then DOCKER=docker
  elif [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker
  else DOCKER=docker
  fi
fi
export DOCKER DOCKER_BUILDKIT=1
if command -v docker-compose >/dev/null 2>&1; then COMPOSE="docker-compose"
else COMPOSE="$DOCKER compose"
fi
export COMPOSE

"$DOCKER" info >/dev/null 2>&1 || { echo "the Docker engine is not reachable (start dockerd)" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

export COMPOSE_FILE="$repo/integration/docker-compose.yml"
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-edgesuite}
export IMAGE_PREFIX=${IMAGE_PREFIX:-edge}
export IMAGE_TAG=${IMAGE_TAG:-dev}
export GATEWAY_BIND=127.0.0.1
export GATEWAY_PORT=${GATEWAY_PORT:-$(free_port)}
export GATEWAY_URL="https://127.0.0.1:$GATEWAY_PORT"
# Fresh secrets for this run (compose has no defaults): SESSION_SECRET_FILE, REDIS_*_PASSWORD_FILE
# (one per Redis ACL user), REDIS_*_URL_FILE, files under the run's own directory.
run_dir=$(mktemp -d /tmp/compose-suite.XXXXXX)
eval "$("$here/make-secrets.sh" "$run_dir/secrets")"

# ---- images ---------------------------------------------------------------------------------
"$here/build-images.sh"
if [[ $IMAGES_FROM == local ]]; then
  export REDIS_IMAGE=edge-local/redis:bookworm
fi
log "images ready after $(elapsed) s"

# ---- image size budget ------------------------------------------------------------------------
# Measured with stripped binaries (PROFILE=debug, offline bases without curl): gateway 158,
# presence-service 140, demo-service 131, express-service 208, redis 120 MB (with curl in the
# bases: 163, 145, 135, 213, 125; before stripping the binaries: 375, 285, 228); the budget is
# that plus ~10%.
# A release build is smaller still. Raise a budget deliberately, never by accident.
declare -A budget_mb=(
  [gateway]=${IMAGE_BUDGET_MB_gateway:-175}
  [presence-service]=${IMAGE_BUDGET_MB_presence_service:-155}
  [demo-service]=${IMAGE_BUDGET_MB_demo_service:-145}
  [express-service]=${IMAGE_BUDGET_MB_express_service:-230}
  [redis]=${IMAGE_BUDGET_MB_redis:-132}
)
over=0
for svc in gateway presence-service demo-service express-service redis; do
  mb=$(( $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE_PREFIX/$svc:$IMAGE_TAG") / 1000000 ))
  verdict=ok
  if (( mb > budget_mb[$svc] )); then verdict="OVER BUDGET"; over=1; fi
  printf '  %-18s %5d MB  (budget %d MB)  %s\n' "$svc" "$mb" "${budget_mb[$svc]}" "$verdict" >&2
done
if [[ $over != 0 ]]; then
  log "an image exceeds its size budget"
  rm -rf "$run_dir"
  exit 1
fi

# ---- test clients on the host ---------------------------------------------------------------
log "test clients: npm ci (socket.io-client), venv (python-socketio, pytest)"
(cd "$repo/integration/compose-tests" && npm ci --no-audit --no-fund --loglevel=error)
venv="$repo/integration/compose-tests/.venv"
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$repo/integration/compose-tests/requirements.txt"

# ---- stack ----------------------------------------------------------------------------------
export CA_FILE="$run_dir/ca.crt"
failed=0
cleanup() {
  local rc=$?
  [[ $rc != 0 ]] && failed=1
  if [[ $failed != 0 ]]; then
    log "FAILED: container states and logs follow"
    $COMPOSE ps || true
    $COMPOSE logs --no-color --timestamps --tail=300 || true
  fi
  if [[ -n ${SAVE_LOGS:-} ]]; then
    $COMPOSE logs --no-color --timestamps >"$SAVE_LOGS" 2>&1 || true
  fi
  if [[ ${KEEP_STACK:-0} == 1 ]]; then
    log "KEEP_STACK=1: stack left running ($COMPOSE -p $COMPOSE_PROJECT_NAME down -v to remove)"
  else
    log "down -v"
    $COMPOSE down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    local left
    left=$( { "$DOCKER" ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
              "$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
              "$DOCKER" network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"; } | wc -l)
    if [[ $left != 0 ]]; then
      log "down -v left $left containers/volumes/networks behind"
      failed=1
    fi
  fi
  rm -rf "$run_dir"
  log "total wall time $(elapsed) s"
  if [[ $failed != 0 ]]; then
    log "suite FAILED"
    exit 1
  fi
  log "suite passed"
  exit 0
}
trap cleanup EXIT

# A stack left by an interrupted run would hold the names and volumes.
$COMPOSE down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true

# Secrets are required: without any one of them compose refuses to start, names the variable,
# and creates nothing.
# The variables are the compose file's required ones (`${VAR:?...}`); make-secrets.sh must export
# each of them, or a deployment following the docs would not start.
secret_vars=$(grep -o '\${[A-Z_]*_FILE:?' "$COMPOSE_FILE" | tr -d '${:?' | sort -u)
made_vars=$("$here/make-secrets.sh" "$run_dir/secrets" | grep -o '^export [A-Z_]*_FILE' | cut -d' ' -f2 | sort -u)
if [[ -z $secret_vars || $secret_vars != "$made_vars" ]]; then
  log "the compose file requires [$(echo $secret_vars)] but make-secrets.sh exports [$(echo $made_vars)]"
  exit 1
fi
for var in $secret_vars; do
  out=$(env -u "$var" $COMPOSE up -d --no-build 2>&1) && {
    log "compose started without $var: $out"
    failed=1
    exit 1
  }
  if ! grep -q "set $var" <<<"$out"; then
    log "compose refused to start without $var, but its message does not name it: $out"
    exit 1
  fi
  if [[ -n $($COMPOSE ps -q 2>/dev/null) ]]; then
    log "compose created containers without $var"
    exit 1
  fi
  printf '  without %-20s refused: %s\n' "$var" "$(grep -m1 "set $var" <<<"$out")" >&2
done
log "compose refuses to start without each secret"

log "up (gateway on $GATEWAY_URL)"
$COMPOSE up -d --no-build

# `up --wait` is Compose v2 only; polling the health states works with both.
wait_healthy() {
  local deadline=$(($(date +%s) + $1)) ids unhealthy
  while :; do
    ids=$($COMPOSE ps -q)
    unhealthy=$(for id in $ids; do
      "$DOCKER" inspect --format '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
    done | grep -v -E ' (healthy)$' || true)
    if [[ -z $unhealthy && $(echo "$ids" | wc -w) -ge 6 ]]; then return 0; fi
    if (($(date +%s) > deadline)); then
      echo "not healthy in time:" >&2
      echo "$unhealthy" >&2
      return 1
    fi
    sleep 1
  done
}
wait_healthy 180
log "stack healthy after $(elapsed) s"
"$DOCKER" cp "$($COMPOSE ps -q gateway):/var/lib/gateway/tls/ca.crt" "$CA_FILE"

# ---- tests ----------------------------------------------------------------------------------
# Python first: it only connects clients. The node files run in name order, one at a time,
# the ones that kill containers last.
log "pytest (python-socketio)"
pytest_args=(-q -p no:cacheprovider --tb=short)
[[ -n ${TEST_FILTER:-} ]] && pytest_args+=(-k "$TEST_FILTER")
# pytest exits 5 when a TEST_FILTER selects none of its tests: not a failure then.
rc=0
(cd "$repo/integration/compose-tests" && "$venv/bin/python" -m pytest "${pytest_args[@]}" py) || rc=$?
[[ $rc == 0 || ( $rc == 5 && -n ${TEST_FILTER:-} ) ]] || failed=1

log "node --test (socket.io-client)"
node_test_args=(--test --test-concurrency=1 --test-timeout=180000 --test-reporter=spec)
[[ -n ${TEST_FILTER:-} ]] && node_test_args+=("--test-name-pattern=$TEST_FILTER")
(cd "$repo/integration/compose-tests" && node "${node_test_args[@]}" js/*.test.mjs) || failed=1

[[ $failed == 0 ]]
