// Builds the console into dist/: app.js (src/main.ts bundled and minified), app.css and
// index.html, the only three files the service serves. The output is deterministic (no
// timestamps, no absolute paths, no legal comments), so CI can compare it with the committed copy.
//
//   node build.mjs [--outdir DIR]

import { build } from "esbuild";
import { copyFile, mkdir, readdir, rm, stat } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const outIndex = args.indexOf("--outdir");
const outdir = resolve(here, outIndex >= 0 ? args[outIndex + 1] : "dist");

const common = {
  absWorkingDir: here,
  bundle: true,
  minify: true,
  legalComments: "none",
  sourcemap: false,
  charset: "utf8",
  logLevel: "warning",
  write: true,
};

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });

await build({
  ...common,
  entryPoints: ["src/main.ts"],
  outfile: join(outdir, "app.js"),
  format: "iife",
  platform: "browser",
  target: ["es2022", "chrome109", "firefox115", "safari16"],
  define: { "process.env.NODE_ENV": '"production"' },
});

await build({
  ...common,
  entryPoints: ["src/style.css"],
  outfile: join(outdir, "app.css"),
  target: ["chrome109", "firefox115", "safari16"],
});

await copyFile(join(here, "index.html"), join(outdir, "index.html"));

for (const name of (await readdir(outdir)).sort()) {
  const { size } = await stat(join(outdir, name));
  console.log(`  dist/${name}  ${(size / 1024).toFixed(1)} KiB`);
}
