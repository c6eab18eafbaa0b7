#!/usr/bin/env bash
# Makes sure the local PostgreSQL the PostgreSQL-backed tests use is accepting connections at
# 127.0.0.1:5432 (user postgres, trust auth). Starts the Debian cluster if it is down.
#
# Exit 0 when it is ready; non-zero with a message on stderr otherwise.
set -euo pipefail

host=127.0.0.1
port=5432
wait_seconds=30

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }

ready() { pg_isready -q -h "$host" -p "$port" -t 2 >/dev/null 2>&1; }

if ! command -v pg_isready >/dev/null; then
  log "error: pg_isready not found; install the PostgreSQL client (Debian: postgresql-client)"
  exit 1
fi

if ready; then
  exit 0
fi

log "PostgreSQL is not accepting connections at $host:$port; trying to start it"
if ! command -v pg_ctlcluster >/dev/null; then
  log "error: pg_ctlcluster not found, so PostgreSQL cannot be started here; start a server at $host:$port (user postgres, trust auth)"
  exit 1
fi
shopt -s nullglob
versions=(/etc/postgresql/*/)
shopt -u nullglob
if ((${#versions[@]} != 1)); then
  log "error: expected exactly one PostgreSQL version under /etc/postgresql, found ${#versions[@]}; start a server at $host:$port yourself"
  exit 1
fi
version=$(basename "${versions[0]}")
log "running: pg_ctlcluster --skip-systemctl-redirect $version main start"
# "already running" (exit 2) is not an error here; readiness is checked below either way.
pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || log "pg_ctlcluster exited with status $?"

deadline=$((SECONDS + wait_seconds))
while ((SECONDS < deadline)); do
  if ready; then
    log "PostgreSQL is ready at $host:$port"
    exit 0
  fi
  sleep 1
done
log "error: PostgreSQL did not accept connections at $host:$port within ${wait_seconds}s (see /var/log/postgresql/)"
exit 1
