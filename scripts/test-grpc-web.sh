#!/usr/bin/env bash
# gRPC-Web outside the browser (console/test/grpc-web.mjs): the console's generated client over
# connect's gRPC-Web transport for Node against two real services on loopback, one plaintext
# (with --cors-allowed-origins, for the CORS preflights) and one with TLS (a CA and certificate
# made here with openssl).
#
#   scripts/test-grpc-web.sh [--bin target/debug/refund-service]
#
# Needs node/npm (console/node_modules is installed with `npm ci` when missing) and openssl.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=""
while (($#)); do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    *) echo "usage: $0 [--bin PATH]" >&2; exit 2 ;;
  esac
done
if [[ -z $bin ]]; then
  bin=$root/target/debug/refund-service
  [[ -x $bin ]] || (cd "$root" && cargo build -q --bin refund-service)
fi
command -v openssl >/dev/null || { echo "test-grpc-web: openssl is needed to make the test certificates" >&2; exit 1; }
if [[ ! -d $root/console/node_modules ]]; then
  (cd "$root/console" && npm ci --no-audit --no-fund --loglevel=error)
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A CA and a certificate for localhost / 127.0.0.1 signed by it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=refund-service test CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
key="rsk_grpc_web_test_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
origin="https://ops.example.com"

# start NAME EXTRA_ARGS...: a service on free loopback ports; sets ${NAME}_GRPC and ${NAME}_HTTP.
start() {
  local name=$1
  shift
  local grpc http
  grpc=127.0.0.1:$(free_port)
  http=127.0.0.1:$(free_port)
  "$bin" serve --database-url "sqlite://$work/$name.db" --grpc-addr "$grpc" --http-addr "$http" \
    --bootstrap-api-key "$key" --log-format json "$@" > "$work/$name.log" 2>&1 &
  pids+=($!)
  printf -v "${name}_GRPC" '%s' "$grpc"
  printf -v "${name}_HTTP" '%s' "$http"
}
start PLAIN --cors-allowed-origins "$origin"
start TLS --tls-cert "$work/server.pem" --tls-key "$work/server.key"

# Ready when /readyz answers (over TLS for the second).
for _ in $(seq 1 100); do
  if python3 - "$PLAIN_HTTP" "$TLS_HTTP" "$work/ca.pem" <<'EOF' 2>/dev/null; then break; fi
import ssl, sys, urllib.request
plain, tls, ca = sys.argv[1:]
urllib.request.urlopen(f"http://{plain}/readyz", timeout=1)
ctx = ssl.create_default_context(cafile=ca)
urllib.request.urlopen(f"https://localhost:{tls.split(':')[1]}/readyz", timeout=1, context=ctx)
EOF
  sleep 0.2
done

export PLAIN_GRPC PLAIN_HTTP TLS_GRPC TLS_HTTP TLS_CA="$work/ca.pem" API_KEY="$key" ALLOWED_ORIGIN="$origin"
cd "$root/console"
if ! node --test --test-reporter=spec test/grpc-web.mjs; then
  echo "--- plaintext service log (tail)" >&2; tail -n 30 "$work/PLAIN.log" >&2
  echo "--- TLS service log (tail)" >&2; tail -n 30 "$work/TLS.log" >&2
  exit 1
fi
