#!/usr/bin/env bash
# Gateway bench: handshakes/s and added latency (direct vs through the gateway), and RSS per
# idle proxied WebSocket over TLS. Prints a side-by-side table; not a test.
#   integration/bench/gateway-bench.sh            # defaults: 32 connections, 5 s, 5000 sockets
#   BENCH_WS=8000 BENCH_CONCURRENCY=64 integration/bench/gateway-bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -p gateway --bin gateway --example edge_bench
GATEWAY_BIN=target/release/gateway exec target/release/examples/edge_bench
