#!/usr/bin/env bash
# Bulk refund benchmark: prints figures, asserts nothing (it is not a test).
#
#   scripts/bench-bulk.sh            # the full set below (about 5 minutes on 2 cores)
#   scripts/bench-bulk.sh quick      # N=2000 on SQLite only
#   scripts/bench-bulk.sh outage     # N=1000 through a 20 s provider outage, and without one
#
# Each line: store, jobs N, provider latency L, rate limit R (the sandbox's, and ours), batch
# concurrency C, wall time, jobs/s, the bound min(R, C/L), our ratio to it, and the service's
# peak RSS. The sequential line is the seed's loop: one CreateRefund at a time.
# PostgreSQL runs need a server; set BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pg=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
cargo build --release --quiet --bin refund-service --example bench_bulk
bin=target/release/refund-service
bench=target/release/examples/bench_bulk

run() { "$bench" --bin "$bin" "$@"; }

if [[ "${1:-}" == outage ]]; then
  # A batch through a provider outage (every request 500 for 20 s, a quarter of the way in),
  # against the same batch without one. Goal: no job fails; the batch takes about the outage
  # longer, rounded up to the circuit breaker's probe (every 30 s by default).
  run --store sqlite --jobs 1000 --latency-ms 20 --rate 40 --concurrency 16
  run --store sqlite --jobs 1000 --latency-ms 20 --rate 40 --concurrency 16 --outage-at 0.25 --outage-secs 20
  exit 0
fi

if [[ "${1:-}" == quick ]]; then
  run --store sqlite --jobs 2000 --latency-ms 20 --rate 1000 --concurrency 64 --sequential 50
  exit 0
fi

echo "# N=10,000, L=20 ms, R=1,000/s (target: >= 90% of min(R, C/L)); C=64 and C=128"
for c in 64 128; do
  seq=0
  [[ $c == 64 ]] && seq=200
  run --store sqlite --jobs 10000 --latency-ms 20 --rate 1000 --concurrency "$c" --sequential "$seq"
  run --store "$pg" --jobs 10000 --latency-ms 20 --rate 1000 --concurrency "$c" --sequential "$seq"
done

echo "# peak RSS as N grows (L=20 ms, R=5,000/s, C=128): flat in N, target < 200 MB at N=100,000"
for n in 10000 100000; do
  run --store sqlite --jobs "$n" --latency-ms 20 --rate 5000 --concurrency 128
done
