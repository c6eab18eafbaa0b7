#!/usr/bin/env bash
# The operator console's end-to-end browser test: starts refund-service (a temporary SQLite
# database, free loopback ports, two API keys of one account, an approval threshold), runs
# console/test/e2e.mjs in headless Chromium (playwright-core), and stops the service.
#
#   scripts/test-browser.sh [--bin PATH] [--console-dir DIR]
#
#   --bin PATH         the service binary (default target/release/refund-service if present,
#                      else target/debug/refund-service)
#   --console-dir DIR  serve the console from DIR (e.g. console/dist) instead of the copy built
#                      into the binary
#
# Installs what it needs: Chromium (/usr/bin/chromium; the Debian package `chromium`, with
# apt-get when run as root) and the console's npm packages (npm ci). Screenshots and the
# service's log go to target/browser-test/. Exit status: 0 passed, 1 failed, 2 set-up error.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chromium=/usr/bin/chromium
artifacts=$root/target/browser-test
threshold=50000

log() { printf 'test-browser: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 2
}

bin=""
console_dir=""
while (($#)); do
  case "$1" in
    --bin)
      bin=${2:?--bin needs a path}
      shift 2
      ;;
    --console-dir)
      console_dir=${2:?--console-dir needs a directory}
      shift 2
      ;;
    -h | --help)
      sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument $1" ;;
  esac
done

if [[ -z $bin ]]; then
  if [[ -x $root/target/release/refund-service ]]; then
    bin=$root/target/release/refund-service
  else
    bin=$root/target/debug/refund-service
  fi
fi
[[ -x $bin ]] || die "no service binary at $bin: run cargo build (or pass --bin PATH)"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
if [[ -n $console_dir ]]; then
  [[ -f $console_dir/index.html ]] || die "--console-dir $console_dir has no index.html"
  console_dir=$(cd "$console_dir" && pwd)
fi

command -v node >/dev/null || die "node not found (Node.js 20 or newer)"

if [[ ! -x $chromium ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing chromium (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    die "$chromium is missing: install the Debian package chromium (sudo apt-get install --no-install-recommends chromium)"
  fi
fi
[[ -x $chromium ]] || die "$chromium is still missing after installing chromium"

log "npm ci (console)"
(cd "$root/console" && npm ci --silent --no-audit --no-fund --no-update-notifier --loglevel=error >/dev/null)

rm -rf "$artifacts"
mkdir -p "$artifacts"
work=$(mktemp -d "${TMPDIR:-/tmp}/test-browser.XXXXXX")
pid=""
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two free loopback ports (asked of the kernel, then released for the service).
read -r grpc_port http_port < <(node -e '
  const net = require("node:net");
  const free = () => new Promise((ok) => { const s = net.createServer(); s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); }); });
  (async () => { const a = await free(); let b = await free(); while (b === a) b = await free(); console.log(a, b); })();
')

db="sqlite://$work/refund-service.db?mode=rwc"
"$bin" migrate --database-url "$db" >/dev/null
key_a=$("$bin" keys create --database-url "$db" --account acct_default \
  --scopes refunds:read,refunds:write,refunds:approve,bulk:write --name "console e2e operator" | tail -1)
key_b=$("$bin" keys create --database-url "$db" --account acct_default \
  --scopes refunds:read,refunds:approve --name "console e2e approver" | tail -1)
"$bin" accounts set-approval-threshold --database-url "$db" --account acct_default \
  --currency USD --amount "$threshold" >/dev/null

serve=("$bin" serve --grpc-addr "127.0.0.1:$grpc_port" --http-addr "127.0.0.1:$http_port"
  --database-url "$db" --log-format json)
[[ -n $console_dir ]] && serve+=(--console-dir "$console_dir")
log "starting $(basename "$bin") (gRPC 127.0.0.1:$grpc_port, HTTP 127.0.0.1:$http_port)"
(cd "$work" && exec "${serve[@]}") >"$artifacts/service.log" 2>&1 &
pid=$!

base=http://127.0.0.1:$http_port
ready=false
for _ in $(seq 1 300); do
  kill -0 "$pid" 2>/dev/null || { tail -20 "$artifacts/service.log" >&2; die "the service exited at start-up (log: $artifacts/service.log)"; }
  if node -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$base/readyz"; then
    ready=true
    break
  fi
  sleep 0.1
done
$ready || die "the service was not ready within 30 s (log: $artifacts/service.log)"

# The console the binary serves should be this checkout's build.
if [[ -z $console_dir ]] && ! node -e '
  const fs = require("node:fs");
  fetch(process.argv[1]).then((r) => r.text()).then((t) => process.exit(t === fs.readFileSync(process.argv[2], "utf8") ? 0 : 1), () => process.exit(1));
' "$base/console/app.js" "$root/console/dist/app.js"; then
  log "warning: the binary embeds another build of the console than console/dist (rebuild it, or pass --console-dir console/dist)"
fi

status=0
CONSOLE_BASE=$base GRPC_BASE=http://127.0.0.1:$grpc_port KEY_A=$key_a KEY_B=$key_b \
  REFUND_BIN=$bin ARTIFACTS=$artifacts CHROMIUM=$chromium APPROVAL_THRESHOLD=$threshold \
  node "$root/console/test/e2e.mjs" || status=$?
log "service log: $artifacts/service.log"
if ((status != 0)); then
  log "FAILED (exit $status)"
  exit 1
fi
log "passed"
