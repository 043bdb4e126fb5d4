#!/usr/bin/env bash
# Drain bench: N idle Socket.IO clients (official socket.io-client, websocket transport, default
# reconnection) through the gateway to two Redis-backed presence nodes, then
#   1. a gateway binary upgrade (new process with --upgrade, SIGQUIT to the old one), and
#   2. SIGTERM to one presence node;
# each paced (the configured drain) and unpaced (everything at once), side by side: when the
# clients were closed, the peak reconnect rate the survivors took, and how long until every
# client was back. Not a test; release build.
#   integration/bench/drain-bench.sh                      # N=3000, drain 10 s at 500/s
#   BENCH_SOCKETS=6000 BENCH_DRAIN_SECS=20 BENCH_DRAIN_RATE=400 integration/bench/drain-bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -p gateway -p presence-service
(cd integration/gateway-tests && { [ -d node_modules ] || npm ci --no-audit --no-fund; })
GATEWAY_BIN=target/release/gateway PRESENCE_BIN=target/release/presence-service \
  exec node integration/bench/drain-bench.mjs
