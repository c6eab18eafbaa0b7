#!/usr/bin/env bash
# Builds the operator console (console/, served at /console and embedded in the binary at compile
# time) into console/dist, from console/src and the generated client code in console/src/gen.
#
#   scripts/build-console.sh          # npm ci, buf generate, typecheck (tsc), build (esbuild)
#   scripts/build-console.sh --check  # the same in a temporary copy; fails when the committed
#                                     # console/src/gen or console/dist differ from what the
#                                     # sources produce (CI)
#
# Needs node/npm; buf is installed into .tools/ by scripts/install-tools.sh when missing. The
# registry (npm) must be reachable unless console/node_modules is already what the lock says.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
console=$root/console
check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  -h | --help)
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "build-console: unknown argument $1 (use --check or nothing)" >&2
    exit 2
    ;;
esac

log() { printf 'build-console: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

command -v node >/dev/null || die "node not found (Node.js 20 or newer)"
command -v npm >/dev/null || die "npm not found"

buf=$root/.tools/bin/buf
if ! "$buf" --version >/dev/null 2>&1; then
  log "installing buf"
  "$root/scripts/install-tools.sh" buf
fi

log "npm ci"
(cd "$console" && npm ci --silent --no-audit --no-fund --no-update-notifier --loglevel=error >/dev/null)

# Generates, typechecks and builds the console in $1 (a directory laid out as console/, next to
# a proto/ directory).
build_in() {
  local dir=$1
  log "buf generate ($dir/src/gen)"
  rm -rf "$dir/src/gen"
  (cd "$dir" && PATH="$root/.tools/bin:$PATH" npm run --silent generate)
  log "typecheck (tsc --noEmit)"
  (cd "$dir" && node_modules/.bin/tsc --noEmit)
  log "build (esbuild)"
  (cd "$dir" && node build.mjs)
}

if ! $check; then
  build_in "$console"
  log "console/dist is up to date"
  exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/build-console.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/console"
# The sources, without what the build makes (and the installed packages, linked instead).
tar -C "$console" --exclude=./node_modules --exclude=./dist --exclude=./src/gen -cf - . |
  tar -C "$tmp/console" -xf -
ln -s "$console/node_modules" "$tmp/console/node_modules"
cp -R "$root/proto" "$tmp/proto"
build_in "$tmp/console"

stale=()
for part in src/gen dist; do
  if [[ ! -d $console/$part ]]; then
    stale+=("console/$part is missing")
  elif ! diff -r "$console/$part" "$tmp/console/$part" >"$tmp/$(basename "$part").diff" 2>&1; then
    stale+=("console/$part differs from what the sources produce:")
    stale+=("$(sed -n '1,20p' "$tmp/$(basename "$part").diff" | cut -c1-200)")
  fi
done
if ((${#stale[@]})); then
  printf '%s\n' "${stale[@]}" >&2
  die "the committed console build is stale: run scripts/build-console.sh and commit console/src/gen and console/dist"
fi
log "console/src/gen and console/dist match their sources"
