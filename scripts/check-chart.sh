#!/usr/bin/env bash
# Checks the Helm chart helm/refund-service offline, and says what it checks:
#
#   1. helm lint --strict, with the default values and with each value set in ci/*.yaml;
#   2. helm template of each of them (and of one more set, postgres without the migration Job),
#      and NOTES.txt through helm install --dry-run=client;
#   3. every rendered manifest against Kubernetes' schemas with kubernetes-validate --strict,
#      for each version in K8S_VERSIONS; the ServiceMonitor (a CRD, which kubernetes-validate
#      has no schema for) against the prometheus-operator CRD schema instead. Both validators
#      are first shown to reject a broken manifest;
#   4. value sets the chart must refuse, each failing to render with the chart's own message
#      (values.schema.json type, enum and unknown-key errors; SQLite with several replicas or an
#      autoscaler; a terminationGracePeriodSeconds too short for drain + grace; ...), each beside
#      a control that renders;
#   5. properties of the renders (scripts/check_chart.py assert): hook annotations of the
#      migration Job, gRPC probes, REFUND_SKIP_MIGRATIONS on postgres, the security context, ...;
#   6. README.md beside the chart lists every leaf value of values.yaml with its default.
#
# Needs scripts/install-tools.sh helm kubernetes-validate. Exit status 1 on any failure.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart=$root/helm/refund-service
helm=$root/.tools/bin/helm
kubernetes_validate=$root/.tools/bin/kubernetes-validate
python=$root/.tools/venv/bin/python
helper=$root/scripts/check_chart.py
# The oldest Kubernetes the chart is checked against, and the one helm v4.1 is built for.
K8S_VERSIONS=(1.30.0 1.35.0)

for tool in "$helm" "$kubernetes_validate" "$python"; do
  [[ -x $tool ]] || { echo "check-chart: $tool is missing: run scripts/install-tools.sh helm kubernetes-validate" >&2; exit 2; }
done
command -v node >/dev/null || { echo "check-chart: node is missing" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
ok() { printf '  ok    %s\n' "$*"; passed=$((passed + 1)); }
bad() { printf '  FAIL  %s\n' "$*"; failed=$((failed + 1)); }
# Shows a command's output, indented, after a failure.
show() { sed 's/^/        | /' "$1"; }
section() { printf '\n== %s\n' "$*"; }

# The value sets: "default" and each ci/*.yaml, by name.
sets=(default)
for f in "$chart"/ci/*.yaml; do
  sets+=("$(basename "$f" .yaml)")
done
set_args() {
  if [[ $1 == default ]]; then
    return
  fi
  printf '%s\n' -f "$chart/ci/$1.yaml"
}

section "helm lint --strict ($("$helm" version --template '{{.Version}}'))"
for s in "${sets[@]}"; do
  mapfile -t args < <(set_args "$s")
  if "$helm" lint --strict "$chart" "${args[@]}" >"$work/lint.out" 2>&1; then
    ok "lint $s"
  else
    bad "lint $s"
    show "$work/lint.out"
  fi
done

section "helm template"
render() { # NAME ARGS...: renders into $work/NAME.yaml
  local name=$1
  shift
  "$helm" template refund-service "$chart" --namespace default "$@" >"$work/$name.yaml" 2>"$work/$name.err"
}
for s in "${sets[@]}"; do
  mapfile -t args < <(set_args "$s")
  if render "$s" "${args[@]}"; then
    ok "template $s: $(grep -c '^kind:' "$work/$s.yaml") manifests ($(grep '^kind:' "$work/$s.yaml" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s%s ", $2, ($1 > 1 ? "(" $1 ")" : "")}' | sed 's/ $//'))"
  else
    bad "template $s"
    show "$work/$s.err"
  fi
done
extra_sets=(postgres-no-job)
if render postgres-no-job --set database.type=postgres --set secrets.existingSecret=s \
  --set migrations.job.enabled=false; then
  ok "template postgres-no-job (database.type=postgres, migrations.job.enabled=false)"
else
  bad "template postgres-no-job"
  show "$work/postgres-no-job.err"
fi

section "NOTES.txt (helm template leaves it out: helm install --dry-run=client renders it)"
for s in "${sets[@]}"; do
  mapfile -t args < <(set_args "$s")
  if "$helm" install refund-service "$chart" --namespace default --dry-run=client "${args[@]}" >"$work/notes.out" 2>&1 &&
    sed -n '/^NOTES:/,$p' "$work/notes.out" >"$work/notes.txt" &&
    grep -q 'keys create --account acct_default --scopes admin' "$work/notes.txt" &&
    grep -q 'refunds.v1.RefundService/ListProviders' "$work/notes.txt"; then
    ok "NOTES $s: how to reach it, the first key, a grpcurl call"
  else
    bad "NOTES $s"
    show "$work/notes.out"
  fi
done

section "kubernetes-validate --strict (Kubernetes ${K8S_VERSIONS[*]}; ServiceMonitor against the prometheus-operator CRD)"
# First, that the validators can fail: a Deployment with a field Kubernetes does not have, and
# a ServiceMonitor with a port of the wrong type.
"$python" "$helper" spoil "$work/default.yaml" "$work/spoiled.yaml"
for k in "${K8S_VERSIONS[@]}"; do
  if "$kubernetes_validate" --strict -k "$k" "$work/spoiled.yaml" >"$work/kv.out" 2>&1; then
    bad "kubernetes-validate -k $k rejects a Deployment with an unknown field"
    show "$work/kv.out"
  elif grep -q "livenesProbe" "$work/kv.out"; then
    ok "kubernetes-validate -k $k rejects a Deployment with an unknown field (livenesProbe)"
  else
    bad "kubernetes-validate -k $k failed on the spoiled Deployment for another reason"
    show "$work/kv.out"
  fi
done
echo '[{"apiVersion":"monitoring.coreos.com/v1","kind":"ServiceMonitor","metadata":{"name":"x"},"spec":{"selector":{},"endpoints":[{"port":5}]}}]' >"$work/bad-sm.json"
if node "$root/scripts/validate-servicemonitor.mjs" "$work/bad-sm.json" >"$work/sm.out" 2>&1; then
  bad "the ServiceMonitor validator rejects a numeric endpoint port"
  show "$work/sm.out"
elif grep -q "port must be string" "$work/sm.out"; then
  ok "the ServiceMonitor validator rejects a numeric endpoint port"
else
  bad "the ServiceMonitor validator failed for another reason"
  show "$work/sm.out"
fi
for s in "${sets[@]}" "${extra_sets[@]}"; do
  [[ -s $work/$s.yaml ]] || continue
  read -r n_k8s n_sm < <("$python" "$helper" split "$work/$s.yaml" "$work/$s")
  for k in "${K8S_VERSIONS[@]}"; do
    # Every manifest must be checked: a kind without a schema is only a warning to it.
    if "$kubernetes_validate" --strict -k "$k" "$work/$s.k8s.yaml" >"$work/kv.out" 2>&1 &&
      [[ $(grep -c ' passed for resource ' "$work/kv.out") == "$n_k8s" ]] &&
      ! grep -q "Couldn't find schema" "$work/kv.out"; then
      ok "$s: $n_k8s manifests valid for Kubernetes $k"
    else
      bad "$s: Kubernetes $k"
      show "$work/kv.out"
    fi
  done
  if ((n_sm > 0)); then
    if node "$root/scripts/validate-servicemonitor.mjs" "$work/$s.servicemonitors.json" >"$work/sm.out" 2>&1; then
      ok "$s: $n_sm ServiceMonitor valid against the prometheus-operator CRD schema"
    else
      bad "$s: ServiceMonitor"
      show "$work/sm.out"
    fi
  fi
done

section "value sets the chart refuses (each beside a control that renders)"
# refuse WHAT EXPECTED_MESSAGE -- CONTROL_ARGS... -- BAD_ARGS...: the control renders, the bad
# set does not, and its error carries the message.
refuse() {
  local what=$1 expected=$2
  shift 3
  local control=() bad_args=()
  while [[ $1 != -- ]]; do control+=("$1"); shift; done
  shift
  bad_args=("$@")
  if ! "$helm" template r "$chart" "${control[@]}" >/dev/null 2>"$work/control.err"; then
    bad "$what: the control (${control[*]:-default values}) does not render"
    show "$work/control.err"
    return
  fi
  if "$helm" template r "$chart" "${bad_args[@]}" >/dev/null 2>"$work/refused.err"; then
    bad "$what: rendered, but must be refused (${bad_args[*]})"
  elif grep -qF -- "$expected" "$work/refused.err"; then
    ok "$what: refused: $(grep -F -- "$expected" "$work/refused.err" | head -1 | sed 's/^Error: execution error at ([^)]*): //; s/^ *//' | cut -c1-160)"
  else
    bad "$what: refused, but not with \"$expected\""
    show "$work/refused.err"
  fi
}
PG=(--set database.type=postgres --set secrets.existingSecret=s)
refuse "schema: replicaCount of the wrong type" "at '/replicaCount': got string, want integer" \
  -- --set replicaCount=1 -- --set replicaCount=three
refuse "schema: config.drainDelaySeconds of the wrong type" "at '/config/drainDelaySeconds': got string, want integer" \
  -- --set config.drainDelaySeconds=7 -- --set-string config.drainDelaySeconds=7
refuse "schema: database.type outside its enum" "at '/database/type': value must be one of 'sqlite', 'postgres'" \
  -- --set database.type=sqlite -- --set database.type=mysql
refuse "schema: a CORS origin with a path" "at '/config/corsAllowedOrigins/0'" \
  -- --set 'config.corsAllowedOrigins[0]=https://ops.example.com' -- --set 'config.corsAllowedOrigins[0]=https://ops.example.com/console'
refuse "schema: an unknown top-level key" "additional properties 'replicas' not allowed" \
  -- --set replicaCount=1 -- --set replicas=1
refuse "schema: an unknown nested key" "additional properties 'secretKey' not allowed" \
  -- --set providers.stripe.enabled=false -- --set providers.stripe.secretKey=sk_live
refuse "sqlite with replicaCount 3" "replicaCount is 3, but database.type is sqlite" \
  -- "${PG[@]}" --set replicaCount=3 -- --set replicaCount=3
refuse "sqlite with autoscaling" "autoscaling.enabled is true, but database.type is sqlite" \
  -- "${PG[@]}" --set autoscaling.enabled=true -- --set autoscaling.enabled=true
refuse "terminationGracePeriodSeconds below drain + grace" "terminationGracePeriodSeconds (20) must be greater than config.drainDelaySeconds + config.shutdownGraceSeconds (25)" \
  -- --set terminationGracePeriodSeconds=26 -- --set terminationGracePeriodSeconds=20
refuse "terminationGracePeriodSeconds equal to drain + grace" "terminationGracePeriodSeconds (25) must be greater than" \
  -- --set terminationGracePeriodSeconds=26 -- --set terminationGracePeriodSeconds=25
refuse "a longer drain makes the default grace period too short" "terminationGracePeriodSeconds (35) must be greater than config.drainDelaySeconds + config.shutdownGraceSeconds (40)" \
  -- --set terminationGracePeriodSeconds=35 -- --set terminationGracePeriodSeconds=35 --set config.drainDelaySeconds=20
refuse "postgres without a Secret for its URL" "database.type is postgres, whose URL comes from a Secret" \
  -- "${PG[@]}" -- --set database.type=postgres
refuse "a provider without a Secret" "providers.stripe.enabled needs its credential from a Secret" \
  -- --set providers.stripe.enabled=true --set secrets.existingSecret=s -- --set providers.stripe.enabled=true
refuse "Adyen without a merchant account" "providers.adyen.enabled needs providers.adyen.merchantAccount" \
  -- --set providers.adyen.enabled=true --set secrets.existingSecret=s --set providers.adyen.merchantAccount=M \
  -- --set providers.adyen.enabled=true --set secrets.existingSecret=s
refuse "TLS without a Secret" "tls.enabled needs tls.secretName" \
  -- --set tls.enabled=true --set tls.secretName=t -- --set tls.enabled=true
refuse "a variable the chart sets, in config.extraEnv" "config.extraEnv.DATABASE_URL is set by the chart itself" \
  -- --set config.extraEnv.REFUND_BULK_LEASE=30s -- --set config.extraEnv.DATABASE_URL=sqlite://x.db
refuse "a NetworkPolicy that shuts PostgreSQL out" "needs networkPolicy.egress.postgres.cidrs or .peers" \
  -- "${PG[@]}" --set networkPolicy.enabled=true --set 'networkPolicy.egress.postgres.cidrs={10.0.0.0/24}' \
  -- "${PG[@]}" --set networkPolicy.enabled=true
refuse "a PDB that no eviction could satisfy" "podDisruptionBudget.minAvailable (1) is not below replicaCount (1)" \
  -- --set podDisruptionBudget.enabled=true -- --set podDisruptionBudget.enabled=true --set podDisruptionBudget.minAvailable=1

section "rendered properties"
# count_lines PATTERN FILE: how many lines match (0 when none).
count_lines() { grep -c "$1" "$2" || true; }
# tally FILE RC: adds a helper's ok and FAIL lines to the counts; a helper that failed without
# a FAIL line (it crashed) counts as one failure.
tally() {
  local oks fails
  oks=$(count_lines '^  ok' "$1")
  fails=$(count_lines '^  FAIL' "$1")
  if (($2 != 0 && fails == 0)); then
    fails=1
  fi
  passed=$((passed + oks))
  failed=$((failed + fails))
}
rc=0
"$python" "$helper" assert "$work" >"$work/assert.out" 2>&1 || rc=$?
cat "$work/assert.out"
tally "$work/assert.out" "$rc"

section "README.md lists every value of values.yaml, with its default"
rc=0
"$python" "$helper" readme "$chart/values.yaml" "$chart/values.schema.json" "$chart/README.md" >"$work/readme.out" 2>&1 || rc=$?
# Only the failures and the count, not one line per value.
grep -v '^  ok' "$work/readme.out" || true
tally "$work/readme.out" "$rc"

printf '\ncheck-chart: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
