#!/usr/bin/env bash
# Starts localstripe (a fake Stripe API, PyPI `localstripe`) on 127.0.0.1 in the background,
# installing it into .tools/venv first if needed, waits until it answers, and prints its base URL.
#
#   scripts/localstripe.sh [PORT]     # default 8420; e.g. STRIPE_API_BASE=$(scripts/localstripe.sh)
#
# Its state lives in /tmp/localstripe.pickle; its log goes to .tools/localstripe-PORT.log.
# Stop it with: kill "$(cat .tools/localstripe-PORT.pid)"
set -euo pipefail

port=${1:-8420}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$root/.tools/venv/bin/python

if ! "$py" -c 'import localstripe' 2>/dev/null; then
  "$root/scripts/install-tools.sh" localstripe
fi

# localstripe's own entry point listens on every interface; bind loopback only.
nohup "$py" -c 'import sys
from aiohttp import web
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)' "$port" \
  >"$root/.tools/localstripe-$port.log" 2>&1 &
echo $! >"$root/.tools/localstripe-$port.pid"

for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null -u sk_test_localstripe: "http://127.0.0.1:$port/v1/charges" 2>/dev/null; then
    echo "http://127.0.0.1:$port"
    exit 0
  fi
  sleep 0.1
done
echo "localstripe did not answer on 127.0.0.1:$port (see .tools/localstripe-$port.log)" >&2
exit 1
