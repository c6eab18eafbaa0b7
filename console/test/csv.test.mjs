// The console's bulk CSV reader and dead-letter writer against the corpus the Rust CLI is tested
// with (tests/fixtures/bulk-csv/, see the tests of src/bulk_cli/input.rs and dead_letter.rs):
// both must read every file the same way, with the same messages, and write the same bytes.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { consoleDir, importBundled } from "./bundle.mjs";

const corpus = join(consoleDir, "..", "tests", "fixtures", "bulk-csv");
const m = await importBundled(`
  export { parseBulkCsv } from "./src/csv.ts";
  export { deadLetterCsv } from "./src/deadLetter.ts";
  export { ISO_4217_CODES, rustDebug } from "./src/validate.ts";
  export { create, fromJson, toJson } from "@bufbuild/protobuf";
  export { BulkJobResultSchema, CreateRefundRequestSchema } from "./src/gen/refunds/v1/refund_service_pb.ts";
`);

const readJson = (path) => JSON.parse(readFileSync(path, "utf8"));
// What the browser hands over: the file decoded as UTF-8 (the BOM kept here, so that the
// reader's own BOM handling is what is tested; `Blob.text()` would already have dropped it).
const decode = (bytes) => new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);

const cases = readdirSync(corpus)
  .filter((f) => f.endsWith(".csv"))
  .map((f) => f.slice(0, -".csv".length))
  .sort();

test("the corpus has a case for every rule", () => {
  assert.ok(cases.length >= 40, `only ${cases.length} cases`);
});

for (const name of cases) {
  const expected = readJson(join(corpus, `${name}.expected.json`));
  test(`csv corpus: ${name}`, { skip: expected.rust_only }, () => {
    const result = m.parseBulkCsv("refunds.csv", decode(readFileSync(join(corpus, `${name}.csv`))));
    if (expected.problems) {
      assert.deepEqual(result, { ok: false, problems: expected.problems });
    } else {
      assert.ok(result.ok, `refused:\n${result.ok ? "" : result.problems.join("\n")}`);
      const actual = {
        headers: result.headers,
        rows: result.rows.map((r) => ({
          line: r.line,
          record: r.record,
          job: m.toJson(m.CreateRefundRequestSchema, m.create(m.CreateRefundRequestSchema, r.job)),
        })),
      };
      assert.deepEqual(actual, { headers: expected.headers, rows: expected.rows });
    }
  });
}

test("the currency table is the service's", () => {
  assert.deepEqual([...m.ISO_4217_CODES].sort(), readJson(join(corpus, "iso4217-codes.json")));
});

test("strings are quoted as Rust's Debug quotes them", () => {
  assert.equal(m.rustDebug('a"b\\c\n\r\t\0'), '"a\\"b\\\\c\\n\\r\\t\\0"');
  assert.equal(m.rustDebug("é e\u0301 \u00a0 \u200b \u{7f} \u{1f600} \u{e000}"), '"é e\\u{301} \\u{a0} \\u{200b} \\u{7f} \u{1f600} \\u{e000}"');
});

// --- the dead-letter file ---

const deadLetterDir = join(corpus, "dead-letter");
const deadLetterCases = readdirSync(deadLetterDir)
  .filter((f) => f.endsWith(".json"))
  .map((f) => f.slice(0, -".json".length))
  .sort();

test("the dead-letter corpus has cases for both sources", () => {
  const sources = deadLetterCases.map((n) => readJson(join(deadLetterDir, `${n}.json`)).source === null);
  assert.ok(sources.includes(true) && sources.includes(false));
});

for (const name of deadLetterCases) {
  test(`dead-letter corpus: ${name}`, () => {
    const c = readJson(join(deadLetterDir, `${name}.json`));
    const source =
      c.source === null
        ? null
        : {
            headers: c.source.headers,
            rows: c.source.rows.map((r) => ({
              line: r.line ?? 0,
              record: r.record,
              job: m.fromJson(m.CreateRefundRequestSchema, r.job ?? {}),
            })),
          };
    const failures = new Map(c.failures.map(([i, r]) => [i, m.fromJson(m.BulkJobResultSchema, r)]));
    const expected = readFileSync(join(deadLetterDir, `${name}.expected.csv`), "utf8");
    assert.equal(m.deadLetterCsv(source, failures), expected);
  });
}
