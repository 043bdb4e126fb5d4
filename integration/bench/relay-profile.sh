#!/usr/bin/env bash
# Profiles the gateway while it relays presence changes to N WebSocket clients (not a test):
# runs the storm bench through the gateway only (STORM_DIRECT=0) and, once every client's list
# is complete, records the gateway with `perf` for the change phase alone (the storm's
# handshakes are left out). Writes the bench's output, perf.data and a flat report to $PERF_OUT.
#   integration/bench/relay-profile.sh     # STORM_N (9000), STORM_CHANGES (40), PERF_SECS (15),
#                                          # PERF_OUT (var/relay-profile)
# Needs perf, redis-server and Node.js, like integration/bench/storm-bench.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${PERF_OUT:-var/relay-profile}
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"
[ -d integration/express-service/node_modules ] ||
  (cd integration/express-service && npm ci --no-audit --no-fund >/dev/null)
cargo build --release -p gateway --bin gateway --example storm_bench
cargo build --release -p presence-service --bin presence-service
: >"$out/bench.err"
STORM_DIRECT=0 STORM_FLOOR=0 STORM_CHANGES=${STORM_CHANGES:-40} \
  GATEWAY_BIN=${GATEWAY_BIN:-target/release/gateway} PRESENCE_BIN=target/release/presence-service \
  target/release/examples/storm_bench >"$out/bench.out" 2>"$out/bench.err" &
bench=$!
trap 'kill "$bench" 2>/dev/null || true' EXIT
until grep -q "change phase starts" "$out/bench.err"; do
  kill -0 "$bench" 2>/dev/null || { cat "$out/bench.err" >&2; exit 1; }
  sleep 0.5
done
pid=$(grep -o 'gateway=[0-9]*' "$out/bench.err" | head -1 | cut -d= -f2)
perf record -F 999 -g -p "$pid" -o "$out/perf.data" -- sleep "${PERF_SECS:-15}" 2>"$out/perf.err"
wait "$bench"
trap - EXIT
perf report -i "$out/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
  grep -v '^$' | grep -v '^#' | grep '%' | head -60 >"$out/report.txt" || true
cat "$out/bench.out"
echo "== the gateway's hottest symbols during the change phase ($out/report.txt):"
head -30 "$out/report.txt"
