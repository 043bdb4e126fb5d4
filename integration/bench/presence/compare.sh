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
# QUEUED=1 adds a third build: the base with base-queued.patch, which stops the server from
# handing its sockets to the transport. A base that wrote frames straight to the raw socket (the
# design before the fan-out module) then sends every frame through its queue and codec: what
# the base costs without writing around the codec. (Built from the base's copy with the patch
# applied for the build and taken back after it, so only the service crate is built twice.)
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
build_base() {
  (cd "$src" && cargo build --release -p presence-service --bin presence-service \
    --target-dir "$ROOT/target/compare-$short")
}
declare -A server=([this]=./target/release/presence-service [$short]="$ROOT/target/compare-$short/release/presence-service")
builds=(this "$short")
if [ "${QUEUED:-0}" = 1 ]; then
  qpatch="$ROOT/integration/bench/presence/base-queued.patch"
  patch -s -d "$src" -p1 --dry-run <"$qpatch" >/dev/null ||
    { echo "QUEUED=1: base-queued.patch does not apply to $short (no raw-socket hand-over there?)" >&2; exit 2; }
  patch -s -d "$src" -p1 <"$qpatch"
  trap 'patch -s -R -d "$src" -p1 <"$qpatch"' EXIT
  build_base
  cp "${server[$short]}" "$ROOT/target/compare-$short/presence-service-queued"
  patch -s -R -d "$src" -p1 <"$qpatch"
  trap - EXIT
  server[$short-queued]="$ROOT/target/compare-$short/presence-service-queued"
  builds+=("$short-queued")
fi
build_base
bench=./target/release/examples/presence_bench
run=("$bench")
if [ "${PIN:-0}" = 1 ]; then export SERVER_CPUS=1; run=(taskset -c 0 "$bench"); fi
echo "host: $(nproc) cores; this tree ($(git rev-parse --short HEAD)$(git diff --quiet || echo ', uncommitted changes')) vs $short"
for round in $(seq "$ROUNDS"); do
  for which in "${builds[@]}"; do
    for users in "$N" 10; do
      echo "== round $round, $which, diff mode, $N sockets of $users users (load average $(cut -d' ' -f1-3 /proc/loadavg))"
      "${run[@]}" "${server[$which]}" diff "$N" "$users"
    done
  done
done
