#!/usr/bin/env bash
# The project's whole test suite, in one command (README's second):
#
#   integration/run-all-tests.sh            # everything, docker compose suite included
#   SUITES="rust gateway-js" integration/run-all-tests.sh   # a subset, by name
#
# Suites, in order: lint, rust, rust-slow, fuzz, gateway-js, presence-js, presence-py,
# presence-faults, web, e2e, dev-stack, compose. Each runs even if an earlier one failed; the last line is the tally.
# Needs what .ci/run installs: redis-server, chromium, node + npm, python 3, docker (compose).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ALL="lint rust rust-slow fuzz gateway-js presence-js presence-py presence-faults web e2e dev-stack compose"
SUITES=${SUITES:-$ALL}
passed=0; failed=0; failures=()

run() {
  local name=$1; shift
  [[ " $SUITES " == *" $name "* ]] || return 0
  printf '\n\033[1m==== %s\033[0m\n' "$name"
  local t0=$SECONDS
  if "$@"; then
    passed=$((passed + 1)); printf '==== %s: ok (%ss)\n' "$name" $((SECONDS - t0))
  else
    failed=$((failed + 1)); failures+=("$name"); printf '==== %s: FAILED (%ss)\n' "$name" $((SECONDS - t0))
  fi
}

venv() { # venv NAME REQUIREMENTS -> prints the venv's python
  local dir="var/venv-$1"
  if [ ! -x "$dir/bin/python" ]; then python3 -m venv "$dir" >&2 || return 1; fi
  "$dir/bin/pip" install -q -r "$2" >&2 || return 1
  echo "$dir/bin/python"
}

lint() { vendor/regenerate.sh --check && cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings; }
rust() { cargo build --workspace --all-targets && cargo test --workspace; }
rust_slow() { cargo test --workspace -- --ignored; }
fuzz_smoke() { fuzz/run.sh 20000; }
gateway_js() { # zero-drop.test.mjs also runs python-socketio and the presence service
  local py; py=$(venv presence integration/presence-tests/requirements.txt) || return 1
  cargo build -p gateway -p presence-service &&
    (cd integration/gateway-tests && npm ci --no-audit --no-fund && PYTHON="$ROOT/$py" npm test)
}
presence_js() { cargo build -p presence-service && (cd integration/presence-tests && npm ci --no-audit --no-fund && npm test); }
presence_py() {
  local py; py=$(venv presence integration/presence-tests/requirements.txt) || return 1
  cargo build -p presence-service && (cd integration/presence-tests && "$ROOT/$py" -m pytest -q python)
}
presence_faults() { # fault injection, both event modes (~3 min); needs redis-server
  local py; py=$(venv presence integration/presence-tests/requirements.txt) || return 1
  cargo build -p presence-service && (cd integration/presence-tests && "$ROOT/$py" -m pytest -q -s faults)
}
web() { (cd integration/web && npm ci --no-audit --no-fund && npm test && npm run build); }
e2e() {
  cargo build -p gateway -p presence-service -p demo-service &&
    (cd integration/web && npm ci --no-audit --no-fund && npm run build) &&
    (cd integration/e2e && npm ci --no-audit --no-fund && npm test)
}
dev_stack() { integration/dev-stack-smoke.sh; }
compose() { integration/docker/run-suite.sh; }

run lint lint
run rust rust
run rust-slow rust_slow
run fuzz fuzz_smoke
run gateway-js gateway_js
run presence-js presence_js
run presence-py presence_py
run presence-faults presence_faults
run web web
run e2e e2e
run dev-stack dev_stack
run compose compose

printf '\n'
[ ${#failures[@]} -eq 0 ] || printf 'failed suites: %s\n' "${failures[*]}"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
