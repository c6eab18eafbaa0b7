#!/usr/bin/env bash
# Runs README.md's walk-through exactly as written, against the service started with README's own
# run command, and checks what it printed. Needs ports 50051 and 8080 free.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

work=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The walk-through: every line between the markers except the code fences.
sed -n '/<!-- walkthrough:start -->/,/<!-- walkthrough:end -->/p' README.md \
  | grep -v -e '^<!--' -e '^```' >"$work/walkthrough.sh"
[[ -s "$work/walkthrough.sh" ]] || { echo "check-readme: no walk-through found in README.md" >&2; exit 1; }

# README's run command, with a fresh database so earlier runs do not change the output.
run_cmd=$(grep -m1 -o 'cargo run -- serve$' README.md) || { echo "check-readme: README has no 'cargo run -- serve'" >&2; exit 1; }
cargo build -q
DATABASE_URL="sqlite://$work/refunds.db?mode=rwc" $run_cmd >"$work/server.log" 2>&1 &
server_pid=$!
ready() { python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8080/readyz", timeout=2)' 2>/dev/null; }
for _ in $(seq 1 100); do
  if ready; then break; fi
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "check-readme: service died" >&2; exit 1; }
  sleep 0.2
done
ready || { cat "$work/server.log" >&2; echo "check-readme: service not ready" >&2; exit 1; }

echo "check-readme: running the walk-through" >&2
DATABASE_URL="sqlite://$work/refunds.db?mode=rwc" bash -euo pipefail "$work/walkthrough.sh" >"$work/out.txt" 2>&1 || {
  cat "$work/out.txt" >&2
  echo "check-readme: the walk-through failed" >&2
  exit 1
}
cat "$work/out.txt"

expect() {
  grep -q -- "$1" "$work/out.txt" || { echo "check-readme: expected output to contain: $1" >&2; exit 1; }
}
expect '"status": "REFUND_STATUS_SUCCEEDED"'
expect '"idempotencyKey": "order-1001-refund-1"'
expect '"nextPageToken"\|"refunds": \['
expect 'OVER_REFUND'
expect '"remaining_amount":"7500"'
expect '"amount":2500'
expect '"code": "NOT_FOUND"'
expect '"succeeded": 3'
expect 'BULK_REFUND_STATE_COMPLETED'
expect '"name": "sandbox"'
expect '"circuitState": "CIRCUIT_STATE_CLOSED"'
expect '"type": "refund.succeeded"'
expect '"status": "REFUND_STATUS_PENDING"'
# WatchRefund: PENDING first, then SUCCEEDED (settled by the sandbox's webhook), then the end.
python3 - "$work/out.txt" <<'PY' || { echo "check-readme: WatchRefund did not stream PENDING then SUCCEEDED" >&2; exit 1; }
import re, sys
out = open(sys.argv[1]).read()
tail = out[out.rindex('"status": "REFUND_STATUS_PENDING"'):]
assert '"status": "REFUND_STATUS_SUCCEEDED"' in tail, tail
PY

# SIGTERM drains and exits cleanly.
kill -TERM "$server_pid"
wait "$server_pid" || { cat "$work/server.log" >&2; echo "check-readme: service did not exit cleanly" >&2; exit 1; }
server_pid=
echo "check-readme: ok" >&2
