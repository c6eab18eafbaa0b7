#!/usr/bin/env bash
# Fault soak: the release binary under provider faults and kill -9, then a money check.
#
#   scripts/soak.sh [--minutes N] [--store sqlite|postgres] [--replicas N] [--seed S] [--refunds N]
#                   [--workers N] [--kill-every SECS] [--settle-timeout SECS] [--run-dir DIR]
#
# Builds the release binary and the driver (examples/soak/), then the driver starts a standalone
# sandbox and the service (N replicas on one PostgreSQL database with --replicas), turns faults on,
# drives refunds, batches, cancellations and approvals for --minutes while killing a replica about
# every 30 s, turns faults off, waits for PENDING refunds and batches to finish, runs the checker
# and prints a summary. Exit status: 0 no violation, 1 violations, 2 set-up error, 130 interrupted.
# PostgreSQL runs use SOAK_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres) to create
# a fresh database (dropped after a passing run, kept after a failing one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin refund-service --example soak
exec "$target/release/examples/soak" --bin "$target/release/refund-service" "$@"
