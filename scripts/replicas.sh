#!/usr/bin/env bash
# The replica test: three replicas of the release binary on one PostgreSQL database and one
# standalone sandbox; a batch to replica A, `kill -9` of A midway, the stream re-attached on B,
# a fourth replica joining mid-batch; then exactly-once at the provider, every result, shared
# work and the shared provider budget are checked (examples/replicas/main.rs says what).
#
#   scripts/replicas.sh [--rate R] [--jobs N] [--kill-at N] [--bulk-lease DUR] [--latency-ms MS]
#                       [--json PATH] [--pg-url URL]
#
# Exit status: 0 every check passed, 1 a check failed (logs and database kept), 2 set-up error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin refund-service --example replicas
exec "$target/release/examples/replicas" --bin "$target/release/refund-service" "$@"
