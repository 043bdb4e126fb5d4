#!/usr/bin/env bash
# Presence bench (not a test). One run prints, for N idle clients: connect rate, time for a
# presence change to reach all N (p50/p99/max) with the server's CPU time per change, bytes per
# change, server RSS per idle socket (after the ramp, 5 s later, and the marginal cost per socket):
#   1. diff mode, N sockets of N distinct users (the issue's case, default N = 9000);
#   2. diff mode, N sockets of 10 users: the online list stays tiny, so this is what a socket
#      itself costs (without the snapshot bytes it received);
#   3. compat mode at N_COMPAT (default 300): the whole list to everyone on every change is
#      O(N^2) per change and the ramp alone O(N^3) bytes, so it is run smaller;
#   4. the seed's Node design at N_SEED (default 1000; it collapses at a few thousand users).
#   integration/bench/presence/run.sh [N] [N_COMPAT] [N_SEED]
# PIN=1 pins the server to CPU 1 and the bench client to CPU 0 (both share the machine otherwise).
set -euo pipefail
cd "$(dirname "$0")/../../.."
N=${1:-9000}; N_COMPAT=${2:-300}; N_SEED=${3:-1000}
ulimit -n 20000
cargo build --release -p presence-service --bin presence-service --example presence_bench
BENCH=(./target/release/examples/presence_bench ./target/release/presence-service)
if [ "${PIN:-0}" = 1 ]; then export SERVER_CPUS=1; BENCH=(taskset -c 0 "${BENCH[@]}"); fi
echo "host: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); client and server on this host${SERVER_CPUS:+ (server pinned to CPU 1, client to CPU 0)}"
"${BENCH[@]}" diff "$N"
"${BENCH[@]}" diff "$N" 10
echo "(compat and seed at smaller N: they send the whole list on every change)"
"${BENCH[@]}" compat "$N_COMPAT"
if [ -d /work/shared/anchors/seed-node ] || [ -d ../shared/anchors/seed-node ]; then
  SEED_SRC=$( [ -d ../shared/anchors/seed-node ] && echo ../shared/anchors/seed-node || echo /work/shared/anchors/seed-node )
  SEED=/tmp/seed-node-bench
  [ -d "$SEED/node_modules" ] || { rm -rf "$SEED"; cp -r "$SEED_SRC" "$SEED"; (cd "$SEED" && npm install --no-audit --no-fund >/dev/null); }
  node integration/bench/presence/seed_bench.mjs "$SEED" "$N_SEED"
fi
