#!/usr/bin/env bash
# Presence bench, this tree against another commit, back to back in one run (the machine's load
# changes by the minute; figures from different runs do not compare).
#   integration/bench/presence/compare.sh <commit> [N] [ROUNDS]
# Builds both in release (the other commit from `git archive` under var/compare-<commit>, in its
# own target directory: the vendored crates have the same relative paths and would otherwise
# share build artifacts), then runs ROUNDS rounds (default 2) of, for each build in turn:
# diff mode with N sockets of N users (a change's p99 to all N, server CPU per change, RSS per
# idle socket), then N sockets of 10 users (what a socket itself costs). The load average is
# printed before each run. PIN=1 pins the server to CPU 1 and the bench client to CPU 0.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=$PWD
BASE=${1:?usage: compare.sh <commit> [N] [ROUNDS]}
N=${2:-9000}; ROUNDS=${3:-2}
ulimit -n 20000
short=$(git rev-parse --short "$BASE")
src="$ROOT/var/compare-$short"
if [ ! -d "$src" ]; then
  mkdir -p "$src"
  git archive "$BASE" | tar -x -C "$src"
fi
cargo build --release -p presence-service --bin presence-service --example presence_bench
(cd "$src" && cargo build --release -p presence-service --bin presence-service \
  --target-dir "$ROOT/target/compare-$short")
bench=./target/release/examples/presence_bench
declare -A server=([this]=./target/release/presence-service [$short]="$ROOT/target/compare-$short/release/presence-service")
run=("$bench")
if [ "${PIN:-0}" = 1 ]; then export SERVER_CPUS=1; run=(taskset -c 0 "$bench"); fi
echo "host: $(nproc) cores; this tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo ', uncommitted changes')) vs $short"
for round in $(seq "$ROUNDS"); do
  for which in this "$short"; do
    for users in "$N" 10; do
      echo "== round $round, $which, diff mode, $N sockets of $users users (load average $(cut -d' ' -f1-3 /proc/loadavg))"
      "${run[@]}" "${server[$which]}" diff "$N" "$users"
    done
  done
done
