#!/usr/bin/env bash
# The benchmark suite: prints a table of figures beside their targets and writes them to JSON.
# Not a test (nothing here runs in `cargo test` or CI); the numbers depend on the machine and on
# what else runs on it. Ratios are taken within one run, so they travel better than absolutes.
#
#   scripts/bench.sh run [--quick] [--store sqlite|postgres|both] [--bin PATH] [--out FILE]
#                        [--pg-url URL] [--keep] [--no-tracing] [--no-memory] [--no-pgbench]
#   scripts/bench.sh compare A.json B.json     # every figure of A and B, and B/A
#   scripts/bench.sh table results.json        # the table of a results file again
#
# `run` builds the release binary and the two drivers (examples/bench_bulk.rs,
# examples/bench_db.rs) unless --bin names a prebuilt refund-service (the drivers are then taken
# from the examples/ beside it, or built). --quick: SQLite only, shorter runs, N=2,000 batches
# (about 3 minutes); the full run (both stores) takes about 15 to 20 minutes on 2 cores.
# PostgreSQL: --pg-url or BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres), a
# fresh database per service (dropped at the end, as is every process started, whatever the exit).
#
# What is measured, per store (scripts/bench/bench.py has the details):
# 1. Unary load. CreateRefund (k6, scripts/bench/create_refund.js: a distinct payment and
#    idempotency key per request): the most it sustains with 32 callers back to back, p50/p95/p99
#    and error rate; then p99 at half that rate (open model). Hot payment: 64 callers partially
#    refunding one payment; and a race of 1,500 one-cent refunds by 64 callers on a payment of
#    1,000 cents, checked against the provider's ledger and ours (no over-refund). GetRefund,
#    ListRefunds and grpc.health.v1 Check with h2load (fixed requests). h2load counts a gRPC
#    error as HTTP 200: each request is first sent with a real gRPC client and must be OK, and a
#    run's DATA bytes must come to one whole answer per request (a gRPC error carries none).
#    The service runs with --api-key-rate-limit 0 (the load is one key's), against a standalone
#    sandbox at latency 0 (so that the service's memory is its own, not the sandbox's ledger).
# 2. The database ceiling: examples/bench_db.rs makes the same store calls as one CreateRefund
#    (key look-up, find_idempotent, begin_refund, settle) with 16 workers, and as a batch
#    (create_bulk, then claim_items / begin_refund / settle / complete_items as the bulk runner
#    does), through the store's public API, with no gRPC and no provider: the statements cannot
#    drift from the code's. It runs just before and just after the load it is compared with
#    (their mean is the ceiling). On PostgreSQL, also the SQL itself: bench_db's `once` makes one
#    CreateRefund's store calls on a database with log_statement = 'all', between two marker
#    statements; the statements between the markers in the server's log (/var/log/postgresql,
#    so a local server), with their parameters in place and fresh ids per transaction, are
#    replayed by pgbench -c 16 (--no-pgbench skips it). CreateRefund's RPS is a ratio to both.
# 3. Bulk drain (examples/bench_bulk.rs): N jobs at L=20 ms, R=1,000/s, C=64, as a ratio to
#    min(R, C/L), with the sequential loop beside it; and with no provider limit (L=0), as a
#    ratio to the ceiling of a batch's store calls.
# 4. Memory (VmRSS/VmHWM of the service): idle, under the unary load, and the peak during a
#    batch of 10,000 and of 100,000 jobs (their ratio: flat in N).
# 5. Start-up to SERVING (grpc.health.v1): on a fresh database (migrations) and an existing one.
# 6. The cost of tracing (the same CreateRefund load, exporting every span over OTLP to
#    scripts/otlp_receiver.py) and of the outbox (the database-bound batch with a webhook
#    subscriber taking every event, against without), each as a ratio.
#
# Tools: k6 and grpcio come from scripts/install-tools.sh (k6, otlp) into .tools/; h2load is
# Debian's nghttp2-client (installed here when running as root); psql for PostgreSQL.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

die() { printf 'bench: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

py=$root/.tools/venv/bin/python

ensure_python() {
  scripts/install-tools.sh k6 otlp >&2 || die "cannot install k6/grpcio (scripts/install-tools.sh)"
}

cmd=${1:-}
[[ -n $cmd ]] || usage
shift
case $cmd in
  compare)
    (($# == 2)) || usage
    [[ -x $py ]] || ensure_python
    exec "$py" scripts/bench/bench.py compare "$1" "$2"
    ;;
  table)
    (($# == 1)) || usage
    [[ -x $py ]] || ensure_python
    exec "$py" scripts/bench/bench.py table "$1"
    ;;
  run) ;;
  -h | --help) usage ;;
  *) usage ;;
esac

bin="" out="bench-results.json" store="" quick=0 pass=()
while (($#)); do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --quick) quick=1; pass+=(--quick); shift ;;
    --pg-url) pass+=(--pg-url "$2"); shift 2 ;;
    --keep | --no-tracing | --no-memory | --no-pgbench) pass+=("$1"); shift ;;
    -h | --help) usage ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ -n $store ]] || { ((quick)) && store=sqlite || store=both; }
case $store in sqlite | postgres | both) ;; *) die "--store sqlite|postgres|both" ;; esac

ensure_python
if ! command -v h2load >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "bench: installing h2load (Debian nghttp2-client)" >&2
    apt-get install -y -qq nghttp2-client >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; } ||
      die "cannot install nghttp2-client"
  else
    die "h2load not found: apt-get install nghttp2-client"
  fi
fi
if [[ $store != sqlite ]]; then
  command -v psql >/dev/null || die "psql not found (needed for --store $store)"
fi

target=${CARGO_TARGET_DIR:-$root/target}
if [[ -z $bin ]]; then
  echo "bench: cargo build --release (refund-service, bench_bulk, bench_db)" >&2
  cargo build --release --quiet --bin refund-service --example bench_bulk --example bench_db
  bin=$target/release/refund-service
  examples=$target/release/examples
else
  [[ -x $bin ]] || die "--bin $bin is not an executable"
  examples=$(dirname "$bin")/examples
  if [[ ! -x $examples/bench_bulk || ! -x $examples/bench_db ]]; then
    echo "bench: building the drivers (bench_bulk, bench_db)" >&2
    cargo build --release --quiet --example bench_bulk --example bench_db
    examples=$target/release/examples
  fi
fi

exec "$py" scripts/bench/bench.py run --bin "$bin" --bench-bulk "$examples/bench_bulk" \
  --bench-db "$examples/bench_db" --k6 "$root/.tools/bin/k6" --store "$store" --out "$out" \
  ${pass[@]+"${pass[@]}"}
