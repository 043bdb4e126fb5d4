#!/usr/bin/env bash
# Full-stack connection-storm bench (not a test): N users reconnect at once, with ~200 handshakes
# in flight over WebSocket, straight to the presence service (diff mode) and through the gateway
# (TLS, express sessions in Redis written by integration/express-service, an assertion per
# handshake), side by side in one run. Prints connects/s, connect p50/p99/max, when every
# client's online list was complete and correct, CPU per connect of each process, the bench
# client's own CPU share (is it the bottleneck?), and frames and bytes received per connect.
# Then, with every list complete, STORM_CHANGES presence changes (a new user comes online, its
# socket straight to presence on both paths): the time until all N clients have read it
# (p50/p99/max, the gateway's p99 over the direct one) and each process's CPU per change.
# Last, the reconnect storm: every client drops at once and comes back through the same gateway
# with its TLS session from the first visit (STORM_RECONNECT=0 skips it). Then the floor: the
# first storm and its changes through a bare TLS relay (TLS and a byte copy, nothing else) in
# place of the gateway, what two TCP hops and TLS cost here (STORM_FLOOR=0 skips it).
#   integration/bench/storm-bench.sh                 # N = 9000
#   STORM_N=2000 integration/bench/storm-bench.sh    # smaller; STORM_CONCURRENCY (200),
#                                                    # STORM_GW_THREADS (2), STORM_TIMEOUT_SECS,
#                                                    # STORM_CHANGES (10), STORM_FLOOR (1), GATEWAY_BIN (to compare
#                                                    # a build kept from another commit)
# Needs redis-server and Node.js (the Express app's packages are installed on first use).
set -euo pipefail
cd "$(dirname "$0")/../.."
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $(( ${STORM_N:-9000} * 2 + 200 )) ]; then
  echo "the gateway holds two sockets per client: raise the open-files limit (ulimit -n) to more than $(( ${STORM_N:-9000} * 2 + 200 ))" >&2
  exit 1
fi
[ -d integration/express-service/node_modules ] ||
  (cd integration/express-service && npm ci --no-audit --no-fund >/dev/null)
cargo build --release -p gateway --bin gateway --example storm_bench
cargo build --release -p presence-service --bin presence-service
GATEWAY_BIN=${GATEWAY_BIN:-target/release/gateway} PRESENCE_BIN=target/release/presence-service \
  exec target/release/examples/storm_bench
