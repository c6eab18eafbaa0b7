// Node cannot import the console's TypeScript: bundle an entry (TypeScript modules and the
// packages they import) with esbuild into a temporary .mjs and import that.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { build } from "esbuild";

export const consoleDir = join(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * Imports `contents` (an ES module's source, paths relative to console/) once bundled.
 * `platform: "node"` for code that needs Node's built-ins (connect's Node transport).
 */
export async function importBundled(contents, { platform = "neutral" } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "console-test-"));
  try {
    const result = await build({
      stdin: { contents, resolveDir: consoleDir, loader: "ts", sourcefile: "test-entry.ts" },
      bundle: true,
      format: "esm",
      platform,
      target: platform === "node" ? "node20" : "es2022",
      write: false,
      logLevel: "silent",
    });
    const file = join(dir, "bundle.mjs");
    writeFileSync(file, result.outputFiles[0].contents);
    return await import(pathToFileURL(file).href);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
