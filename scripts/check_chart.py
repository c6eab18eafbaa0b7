"""Helpers of scripts/check-chart.sh (run with .tools/venv/bin/python, which has PyYAML).

  check_chart.py split RENDER.yaml OUT_PREFIX   the manifests of a `helm template`, as
                                                OUT_PREFIX.k8s.yaml (Kubernetes' own kinds) and
                                                OUT_PREFIX.servicemonitors.json (the CRD's);
                                                prints the two counts
  check_chart.py spoil RENDER.yaml OUT.yaml     a copy whose Deployment has a field Kubernetes
                                                does not know (the validator's self-test)
  check_chart.py readme VALUES SCHEMA README    every leaf value in README's table with its
                                                default, and values.yaml and the schema agree
  check_chart.py assert RENDER_DIR              properties of the renders of check-chart.sh

Each check prints one line (ok / FAIL); the exit status is 1 when any failed.
"""

import json
import sys
from pathlib import Path

import yaml

failures = 0


def check(ok, what):
    global failures
    print(f"  {'ok  ' if ok else 'FAIL'}  {what}")
    if not ok:
        failures += 1
    return ok


def docs(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def split(render, prefix):
    all_docs = docs(render)
    crd = [d for d in all_docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    k8s = [d for d in all_docs if d not in crd]
    Path(f"{prefix}.k8s.yaml").write_text(yaml.safe_dump_all(k8s, sort_keys=False))
    Path(f"{prefix}.servicemonitors.json").write_text(json.dumps(crd))
    print(len(k8s), len(crd))


def spoil(render, out):
    all_docs = docs(render)
    for d in all_docs:
        if d["kind"] == "Deployment":
            d["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"tcpSocket": {"port": 1}}
    Path(out).write_text(yaml.safe_dump_all(all_docs, sort_keys=False))


# --- README ---------------------------------------------------------------------------------


def leaves(values, schema, prefix=""):
    """(dotted key, default) of every value a user sets: a key whose schema has properties of
    its own is a section, anything else (a scalar, a list, a Kubernetes object passed as is) is
    a leaf."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        sub = schema.get("properties", {}).get(key)
        if sub is None:
            check(False, f"values.yaml key `{path}` is in values.schema.json")
            continue
        if isinstance(value, dict) and "properties" in sub:
            yield from leaves(value, sub, path + ".")
        else:
            yield path, value


def schema_keys(schema, values, prefix=""):
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if key == "global" and not prefix:
            continue
        if not isinstance(values, dict) or key not in values:
            check(False, f"values.schema.json property `{path}` has a default in values.yaml")
            continue
        if "properties" in sub:
            yield from schema_keys(sub, values[key], path + ".")


def shown(value):
    """A default as README's table writes it."""
    if value is None:
        return "`null`"
    if value == "":
        return '`""`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, separators=(', ', ': '))}`"
    return f"`{value}`"


def readme(values_path, schema_path, readme_path):
    values = yaml.safe_load(Path(values_path).read_text())
    schema = json.loads(Path(schema_path).read_text())
    rows = {}
    for line in Path(readme_path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = cells
    found = list(leaves(values, schema))
    for path, default in found:
        row = rows.get(path)
        if check(row is not None, f"README.md lists `{path}`") and row is not None:
            check(
                row[1] == shown(default),
                f"README.md gives `{path}` its default {shown(default)}"
                + ("" if row[1] == shown(default) else f" (it says {row[1]})"),
            )
            check(len(row[2]) > 0, f"README.md says what `{path}` means")
    known = {p for p, _ in found}
    for extra in sorted(set(rows) - known):
        check(False, f"README.md's `{extra}` is a value of values.yaml")
    list(schema_keys(schema, values))
    print(f"  ({len(found)} values)")


# --- rendered properties --------------------------------------------------------------------


def load(render_dir, name):
    return docs(Path(render_dir) / f"{name}.yaml")


def one(ds, kind, suffix=None):
    found = [d for d in ds if d["kind"] == kind and (suffix is None or d["metadata"]["name"].endswith(suffix))]
    return found[0] if len(found) == 1 else None


def kinds(ds):
    return sorted(d["kind"] for d in ds)


def container(dep):
    return dep["spec"]["template"]["spec"]["containers"][0]


def env(dep):
    return {e["name"]: e for e in container(dep).get("env", [])}


def config(ds):
    return one(ds, "ConfigMap")["data"]


def secure(pod_spec, what, tmp=True):
    c = pod_spec["containers"][0]
    sc, psc = c["securityContext"], pod_spec["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True, f"{what}: readOnlyRootFilesystem true")
    check(sc.get("allowPrivilegeEscalation") is False, f"{what}: allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{what}: capabilities drop ALL")
    check(
        psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532 and sc.get("runAsUser") == 65532,
        f"{what}: runAsNonRoot, runAsUser 65532",
    )
    check(
        psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{what}: seccompProfile RuntimeDefault",
    )
    check(pod_spec.get("automountServiceAccountToken") is False, f"{what}: no service account token")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod_spec.get("volumes", [])}
    if tmp:
        check("emptyDir" in vols.get(mounts.get("/tmp"), {}), f"{what}: /tmp is an emptyDir")


def grace_ok(ds, dep):
    data = config(ds)
    needed = int(data["REFUND_DRAIN_DELAY"].rstrip("s")) + int(data["REFUND_SHUTDOWN_GRACE"].rstrip("s"))
    got = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    check(got > needed, f"terminationGracePeriodSeconds {got} > drain delay + shutdown grace {needed}")


def assert_default(ds):
    print(" default values (SQLite, one pod):")
    dep = one(ds, "Deployment")
    c = container(dep)
    spec = dep["spec"]["template"]["spec"]
    selector = dep["spec"]["selector"]["matchLabels"]
    check(dep["spec"]["replicas"] == 1, "Deployment has 1 replica")
    check(dep["spec"]["strategy"]["type"] == "Recreate", "SQLite: strategy Recreate (one process per file)")
    check(c["args"] == ["serve"], "container runs `serve`")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"grpc": 50051, "http": 8080}, "container ports grpc 50051, http 8080")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check("grpc" in c[probe] and c[probe]["grpc"]["port"] == 50051, f"{probe} is a native gRPC probe on 50051")
    check(c["readinessProbe"]["grpc"].get("service") == "refunds.v1.RefundService", "readiness asks about refunds.v1.RefundService")
    secure(spec, "Deployment")
    data = config(ds)
    check(data.get("REFUND_GRPC_ADDR") == "0.0.0.0:50051", "ConfigMap: REFUND_GRPC_ADDR 0.0.0.0:50051")
    check(data.get("REFUND_HTTP_ADDR") == "0.0.0.0:8080", "ConfigMap: REFUND_HTTP_ADDR 0.0.0.0:8080")
    check(data.get("REFUND_DRAIN_DELAY") == "5s", "ConfigMap: REFUND_DRAIN_DELAY 5s")
    check(data.get("REFUND_LOG_FORMAT") == "json", "ConfigMap: REFUND_LOG_FORMAT json")
    check(
        data.get("DATABASE_URL") == "sqlite:///var/lib/refund-service/refund-service.db?mode=rwc",
        "ConfigMap: DATABASE_URL is the SQLite file in the data volume",
    )
    check(c["envFrom"] == [{"configMapRef": {"name": one(ds, "ConfigMap")["metadata"]["name"]}}], "envFrom the ConfigMap")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    check("emptyDir" in vols.get(mounts.get("/var/lib/refund-service"), {}), "SQLite data dir is an emptyDir")
    check("REFUND_SKIP_MIGRATIONS" not in env(dep), "SQLite: no REFUND_SKIP_MIGRATIONS (the pod migrates itself)")
    check(one(ds, "Job") is None, "SQLite: no migration Job")
    grace_ok(ds, dep)
    tsc = spec.get("topologySpreadConstraints", [])
    check(
        sorted(t["topologyKey"] for t in tsc) == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"],
        "topologySpreadConstraints by zone and by hostname",
    )
    check(all(t["labelSelector"]["matchLabels"] == selector for t in tsc), "spread constraints select the Deployment's pods")
    check(selector.get("app.kubernetes.io/component") == "server", "the Deployment selects component=server only")
    svc = one(ds, "Service")
    check(svc["spec"]["selector"] == selector, "Service selects the Deployment's pods")
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    check(sports["grpc"].get("appProtocol") == "grpc" and sports["grpc"]["targetPort"] == "grpc", "Service: grpc port, appProtocol grpc")
    check(sports["http"]["port"] == 8080 and sports["http"]["targetPort"] == "http", "Service: http port 8080")
    sa = one(ds, "ServiceAccount")
    check(sa is not None and sa.get("automountServiceAccountToken") is False, "ServiceAccount without token automount")
    check(spec["serviceAccountName"] == sa["metadata"]["name"], "the pods use the chart's ServiceAccount")
    test = one(ds, "Pod")
    check(test is not None and test["metadata"]["annotations"].get("helm.sh/hook") == "test", "a helm test Pod")
    if test:
        tc = test["spec"]["containers"][0]
        svc_host = f"http://{svc['metadata']['name']}.default.svc:50051"
        check(
            tc["args"][:5] == ["health", "--server", svc_host, "--service", "refunds.v1.RefundService"],
            f"test runs `health --server {svc_host} --service refunds.v1.RefundService`",
        )
        check(tc["image"] == c["image"], "test uses the service's image")
        check(test["spec"]["restartPolicy"] == "Never", "test pod does not restart")
        secure(test["spec"], "test Pod", tmp=False)
    for absent in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "Secret", "PersistentVolumeClaim"):
        check(one(ds, absent) is None and not any(d["kind"] == absent for d in ds), f"no {absent} by default")


def assert_postgres(ds):
    print(" ci/postgres-hpa-pdb-values.yaml:")
    dep = one(ds, "Deployment")
    e = env(dep)
    selector = dep["spec"]["selector"]["matchLabels"]
    check(e.get("REFUND_SKIP_MIGRATIONS", {}).get("value") == "true", "Deployment: REFUND_SKIP_MIGRATIONS=true (the Job migrates)")
    db = e.get("DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
    check(db == {"name": "refund-service-secrets", "key": "DATABASE_URL"}, "Deployment: DATABASE_URL from the existing Secret's configured key")
    check("DATABASE_URL" not in config(ds), "ConfigMap has no DATABASE_URL on postgres")
    check("replicas" not in dep["spec"], "autoscaling: the Deployment leaves replicas to the HPA")
    check(dep["spec"]["strategy"]["type"] == "RollingUpdate", "postgres: RollingUpdate")
    job = one(ds, "Job")
    check(job is not None, "a migration Job")
    if job:
        ann = job["metadata"]["annotations"]
        check(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", "Job: helm.sh/hook pre-install,pre-upgrade")
        check(ann.get("helm.sh/hook-delete-policy") == "before-hook-creation,hook-succeeded", "Job: hook-delete-policy before-hook-creation,hook-succeeded")
        check("helm.sh/hook-weight" in ann, "Job: hook-weight")
        jspec = job["spec"]["template"]["spec"]
        jc = jspec["containers"][0]
        check(jc["args"] == ["migrate"], "Job runs `migrate`")
        check(jc["image"] == container(dep)["image"], "Job uses the service's image")
        jdb = {x["name"]: x for x in jc["env"]}.get("DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef")
        check(jdb == db, "Job reads the same DATABASE_URL secret key")
        check(jc["securityContext"] == container(dep)["securityContext"], "Job has the service's container securityContext")
        check(jspec["securityContext"] == dep["spec"]["template"]["spec"]["securityContext"], "Job has the service's pod securityContext")
        check(jspec["restartPolicy"] == "Never", "Job pods do not restart in place")
        check(job["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "migrations", "Job pods are not selected by the Service")
        secure(jspec, "migration Job")
    hpa = one(ds, "HorizontalPodAutoscaler")
    check(hpa is not None and hpa["apiVersion"] == "autoscaling/v2", "HPA autoscaling/v2")
    if hpa:
        check(hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}, "HPA scales the Deployment")
        check(sorted(m["resource"]["name"] for m in hpa["spec"]["metrics"]) == ["cpu", "memory"], "HPA on CPU and memory")
    pdb = one(ds, "PodDisruptionBudget")
    check(pdb is not None and pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"].get("minAvailable") == 2 and "maxUnavailable" not in pdb["spec"], "PDB minAvailable 2 over the Deployment's pods")
    spec = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    items = {i["path"]: i["key"] for i in vols.get("secret-files", {}).get("secret", {}).get("items", [])}
    check(
        items == {"stripe-secret-key": "stripe-secret-key", "adyen-api-key": "adyen-api-key", "secrets-key": "secrets-key", "previous-secrets-key": "previous-secrets-key"},
        "enabled providers' credentials and the master keys are mounted as files",
    )
    check(e.get("STRIPE_SECRET_KEY_FILE", {}).get("value") == "/etc/refund-service/secrets/stripe-secret-key", "STRIPE_SECRET_KEY_FILE points at the mounted key")
    check(e.get("STRIPE_WEBHOOK_SECRET", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("optional") is True, "webhook secrets are optional Secret keys")
    check("MERCADOPAGO_ACCESS_TOKEN_FILE" not in e, "a provider not enabled gets nothing")
    data = config(ds)
    check(data.get("ADYEN_MERCHANT_ACCOUNT") == "ExampleShopECOM" and data.get("REFUND_STRIPE_RATE_LIMIT") == "60", "ConfigMap: provider settings")
    check(data.get("REFUND_PLATFORM_ACCOUNTS") == "acct_shop_eu,acct_shop_us", "ConfigMap: REFUND_PLATFORM_ACCOUNTS")
    check(data.get("REFUND_BULK_LEASE") == "30s", "ConfigMap: config.extraEnv")
    check(spec["terminationGracePeriodSeconds"] == 60, "terminationGracePeriodSeconds as set (60)")
    grace_ok(ds, dep)
    check("@sha256:" in container(dep)["image"], "image by digest")


def assert_headless(ds):
    print(" ci/headless-values.yaml:")
    dep = one(ds, "Deployment")
    check(dep["spec"]["replicas"] == 3, "3 replicas on postgres")
    hl = one(ds, "Service", "-headless")
    check(hl is not None and hl["spec"].get("clusterIP") == "None", "a headless Service")
    if hl:
        check(hl["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"], "headless Service selects the Deployment's pods")
    sec = one(ds, "Secret")
    job = one(ds, "Job")
    check(sec is not None and sec["metadata"]["annotations"].get("helm.sh/hook") == "pre-install,pre-upgrade", "secrets.create: the Secret is a pre-install,pre-upgrade hook")
    if sec and job:
        check(
            int(sec["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"]),
            "the created Secret's hook weight is below the migration Job's (it exists first)",
        )
        check(set(sec["stringData"]) == {"database-url", "bootstrap-api-key", "stripe-secret-key"}, "the created Secret holds only the values given")
    check(env(dep).get("REFUND_SKIP_MIGRATIONS", {}).get("value") == "true", "REFUND_SKIP_MIGRATIONS=true")
    tsc = {t["topologyKey"]: t["whenUnsatisfiable"] for t in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]}
    check(tsc.get("kubernetes.io/hostname") == "DoNotSchedule", "topologySpread.hostname.whenUnsatisfiable applied")
    check("checksum/secret" in dep["spec"]["template"]["metadata"]["annotations"], "pods roll when the created Secret changes")


def assert_tls(ds):
    print(" ci/tls-values.yaml:")
    dep = one(ds, "Deployment")
    c = container(dep)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check(c[probe].get("httpGet", {}).get("scheme") == "HTTPS", f"TLS: {probe} is HTTPS (the kubelet's gRPC probe has no TLS)")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "TLS: readiness on /readyz (503 while draining)")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    check(mounts.get("tls", {}).get("readOnly") is True, "TLS Secret mounted read-only")
    data = config(ds)
    check(data.get("REFUND_TLS_CERT") == "/etc/refund-service/tls/tls.crt" and data.get("REFUND_TLS_KEY") == "/etc/refund-service/tls/tls.key", "REFUND_TLS_CERT / REFUND_TLS_KEY point at the mount")
    check(data.get("REFUND_CORS_ALLOWED_ORIGINS") == "https://ops.example.com", "config.corsAllowedOrigins becomes REFUND_CORS_ALLOWED_ORIGINS")
    pvc = one(ds, "PersistentVolumeClaim")
    check(pvc is not None and pvc["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "SQLite persistence: a PVC kept on uninstall")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    check(pvc is not None and vols["data"].get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"], "the data volume is that PVC")
    test = one(ds, "Pod")
    check(test is not None and "--ca-cert" in test["spec"]["containers"][0]["args"] and test["spec"]["containers"][0]["args"][2].startswith("https://"), "TLS: helm test uses https with --ca-cert")


def assert_mtls(ds):
    print(" ci/mtls-values.yaml:")
    c = container(one(ds, "Deployment"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check("tcpSocket" in c[probe], f"mTLS: {probe} is TCP (no probe presents a client certificate)")
    check(config(ds).get("REFUND_TLS_CLIENT_CA") == "/etc/refund-service/client-ca/ca.crt", "mTLS: REFUND_TLS_CLIENT_CA")
    check(one(ds, "Pod") is None, "mTLS: no helm test pod (health has no client certificate)")


def assert_minimal(ds):
    print(" ci/minimal-values.yaml:")
    dep = one(ds, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    check(one(ds, "ServiceAccount") is None and spec["serviceAccountName"] == "payments", "existing ServiceAccount used, none created")
    check("topologySpreadConstraints" not in spec, "topologySpread.enabled false: no constraints")
    check(one(ds, "Pod") is None, "tests.enabled false: no test pod")
    secure(spec, "Deployment")


def assert_netpol(ds):
    print(" ci/networkpolicy-servicemonitor-values.yaml:")
    dep = one(ds, "Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    np = one(ds, "NetworkPolicy")
    check(np is not None, "a NetworkPolicy")
    if np:
        check(np["spec"]["podSelector"]["matchLabels"] == selector, "NetworkPolicy selects the service's pods only")
        check(sorted(np["spec"]["policyTypes"]) == ["Egress", "Ingress"], "NetworkPolicy restricts ingress and egress")
        ing = np["spec"]["ingress"][0]
        check(sorted(p["port"] for p in ing["ports"]) == ["grpc", "http"], "ingress to the grpc and http ports")
        check(any(p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "test" for p in ing["from"]), "ingress allows the helm test pod")
        eg = np["spec"]["egress"]
        ports = sorted((p["port"], p["protocol"]) for r in eg for p in r["ports"])
        check(ports == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (443, "TCP"), (4317, "TCP"), (5432, "TCP")], "egress: DNS, PostgreSQL, providers, webhooks, OTLP")
        hooks = [t["ipBlock"] for r in eg for t in r["to"] if t.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"]
        check(len(hooks) == 1 and {"10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"} <= set(hooks[0].get("except", [])), "webhook egress: any address but private, loopback and link-local (metadata)")
        dns = eg[0]["to"][0]
        check(dns.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"}, "DNS egress to kube-dns")
        pg = [r for r in eg if r["ports"][0]["port"] == 5432][0]
        check(pg["to"] == [{"ipBlock": {"cidr": "10.20.0.0/24"}}], "PostgreSQL egress by CIDR")
    sm = one(ds, "ServiceMonitor")
    check(sm is not None, "a ServiceMonitor")
    if sm:
        check(sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor scrapes http /metrics")
        svc_labels = one(ds, "Service")["metadata"]["labels"]
        sel = sm["spec"]["selector"]["matchLabels"]
        check(all(svc_labels.get(k) == v for k, v in sel.items()), "ServiceMonitor selects the chart's Service")
        check(sel.get("app.kubernetes.io/component") == "server", "ServiceMonitor does not select the headless Service (no double scrape)")
        check(sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", "ServiceMonitor carries serviceMonitor.labels")
    data = config(ds)
    check(data.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability.svc:4317" and data.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc", "ConfigMap: OTLP exporter")


def assert_no_job(ds):
    print(" postgres with migrations.job.enabled=false:")
    dep = one(ds, "Deployment")
    check(one(ds, "Job") is None, "no migration Job")
    check("REFUND_SKIP_MIGRATIONS" not in env(dep), "no REFUND_SKIP_MIGRATIONS: the pods migrate at start")


def assert_all(render_dir):
    assert_default(load(render_dir, "default"))
    assert_postgres(load(render_dir, "postgres-hpa-pdb-values"))
    assert_headless(load(render_dir, "headless-values"))
    assert_tls(load(render_dir, "tls-values"))
    assert_mtls(load(render_dir, "mtls-values"))
    assert_minimal(load(render_dir, "minimal-values"))
    assert_netpol(load(render_dir, "networkpolicy-servicemonitor-values"))
    assert_no_job(load(render_dir, "postgres-no-job"))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"split": split, "spoil": spoil, "readme": readme, "assert": assert_all}[cmd](*args)
    sys.exit(1 if failures else 0)
