#!/usr/bin/env bash
# Presence bench (not a test). One run prints, for N idle clients: connect rate, time for one
# presence change to reach all N (p50/p99/max), bytes per change, server RSS per idle socket,
# in diff mode (N, default 9000) and compat mode (N_COMPAT, default 1000: compat sends the whole
# list to everyone on every change, O(N^2) per change, so the ramp alone is O(N^3) bytes),
# then the seed's Node design at N_SEED for comparison.
#   integration/bench/presence/run.sh [N] [N_COMPAT] [N_SEED]
set -euo pipefail
cd "$(dirname "$0")/../../.."
N=${1:-9000}; N_COMPAT=${2:-1000}; N_SEED=${3:-1000}
ulimit -n 20000
cargo build --release -p presence-service --bin presence-service --example presence_bench
./target/release/examples/presence_bench ./target/release/presence-service diff "$N"
./target/release/examples/presence_bench ./target/release/presence-service compat "$N_COMPAT"
if [ -d /work/shared/anchors/seed-node ] || [ -d ../shared/anchors/seed-node ]; then
  SEED_SRC=$( [ -d ../shared/anchors/seed-node ] && echo ../shared/anchors/seed-node || echo /work/shared/anchors/seed-node )
  SEED=/tmp/seed-node-bench
  [ -d "$SEED/node_modules" ] || { rm -rf "$SEED"; cp -r "$SEED_SRC" "$SEED"; (cd "$SEED" && npm install --no-audit --no-fund >/dev/null); }
  node integration/bench/presence/seed_bench.mjs "$SEED" "$N_SEED"
fi
