// Validates ServiceMonitor manifests (JSON array files, one per argument) against the
// prometheus-operator CRD schema carried by the npm package @kubernetes-models/prometheus-operator,
// installed under .tools/chart-node by scripts/install-tools.sh. kubernetes-validate has no
// schema for this CRD. Exit status 1 when any manifest does not validate.
//
//   node scripts/validate-servicemonitor.mjs rendered-servicemonitors.json...
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const models = join(root, ".tools/chart-node/node_modules/@kubernetes-models/prometheus-operator");
const { ServiceMonitor } = await import(
  pathToFileURL(join(models, "monitoring.coreos.com/v1/ServiceMonitor.js")).href
);

let bad = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of JSON.parse(readFileSync(file, "utf8"))) {
    const name = `${file}: servicemonitor/${doc.metadata?.name}`;
    try {
      if (doc.apiVersion !== "monitoring.coreos.com/v1" || doc.kind !== "ServiceMonitor") {
        throw new Error(`not a monitoring.coreos.com/v1 ServiceMonitor: ${doc.apiVersion} ${doc.kind}`);
      }
      new ServiceMonitor(doc).validate();
      console.log(`INFO ${name} passed against the prometheus-operator CRD schema`);
    } catch (e) {
      bad++;
      console.log(`ERROR ${name} did not validate: ${e.message}`);
    }
  }
}
process.exit(bad ? 1 : 0);
