// End-to-end browser test of the operator console against a real refund-service
// (scripts/test-browser.sh starts the service and runs this). Headless Chromium, driven by
// playwright-core; every wait is on a condition, never a fixed sleep.
//
// Environment (set by scripts/test-browser.sh):
//   CONSOLE_BASE   http://127.0.0.1:PORT  the service's HTTP port (console and gRPC-Web)
//   GRPC_BASE      http://127.0.0.1:PORT  the gRPC port (the test's own client, for the truth)
//   KEY_A          operator key: refunds:read, refunds:write, refunds:approve, bulk:write
//   KEY_B          approver key: refunds:read, refunds:approve
//   REFUND_BIN     the service binary (its `bulk` command's CSV messages are the reference)
//   ARTIFACTS      where screenshots go
//   CHROMIUM       the browser (default /usr/bin/chromium)
//   APPROVAL_THRESHOLD  the account's USD approval threshold in minor units (default 50000)

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { build } from "esbuild";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const consoleDir = resolve(here, "..");

function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined) {
    console.error(`e2e: ${name} is not set (run scripts/test-browser.sh)`);
    process.exit(2);
  }
  return v;
}

const BASE = env("CONSOLE_BASE");
const GRPC = env("GRPC_BASE");
const KEY_A = env("KEY_A");
const KEY_B = env("KEY_B");
const BIN = env("REFUND_BIN");
const ARTIFACTS = resolve(env("ARTIFACTS"));
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const THRESHOLD = Number(env("APPROVAL_THRESHOLD", "50000"));
const TIMEOUT = 30_000;

for (const url of [BASE, GRPC]) {
  const host = new URL(url).hostname;
  if (host !== "127.0.0.1") throw new Error(`test traffic stays on 127.0.0.1, not ${host}`);
}

// ---- helpers ----

let stepNo = 0;
const screenshots = [];
function log(...args) {
  console.log("e2e:", ...args);
}
async function step(name, fn) {
  stepNo += 1;
  const started = Date.now();
  log(`${stepNo}. ${name}`);
  await fn();
  log(`   ok (${Date.now() - started} ms)`);
}
function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}
function equal(actual, expected, message) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`check failed: ${message}\n  expected: ${e}\n  actual:   ${a}`);
}
/** Polls `fn` until it returns a truthy value (returned), or fails after `timeout`. */
async function until(description, fn, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${description} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
async function shot(page, name) {
  const path = join(ARTIFACTS, `${String(screenshots.length + 1).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  screenshots.push(path);
}

// The generated client, bundled for Node with the transport (one copy of @bufbuild/protobuf).
async function loadClient(workDir) {
  const outfile = join(workDir, "client.mjs");
  await build({
    stdin: {
      contents: `
        export * from "./src/gen/refunds/v1/refund_service_pb.ts";
        export { createClient } from "@connectrpc/connect";
        export { createGrpcTransport } from "@connectrpc/connect-node";
      `,
      resolveDir: consoleDir,
      loader: "ts",
      sourcefile: "e2e-client.ts",
    },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    outfile,
    logLevel: "warning",
    banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  });
  return import(pathToFileURL(outfile).href);
}

async function sandbox(path, body, method = "POST") {
  const res = await fetch(`${BASE}/sandbox${path}`, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`sandbox ${method} ${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

async function seed(amount, count, extra = {}) {
  const res = await sandbox("/payments", { amount, currency: "USD", count, ...extra });
  return res.payments.map((p) => (typeof p === "string" ? p : p.id));
}

function csvLine(cells) {
  return cells.map((c) => (/[",\n\r]/.test(c) ? `"${c.replace(/"/g, '""')}"` : c)).join(",");
}

async function counters(page) {
  const out = {};
  for (const name of ["total", "succeeded", "failed", "skipped", "canceled"]) {
    const text = await page.locator(`[data-count="${name}"]`).first().textContent();
    out[name] = Number((text ?? "").replace(/[^0-9]/g, ""));
  }
  return out;
}

async function failureRows(page, status) {
  return page.locator(`#failure-table tbody tr[data-status="${status}"]`).evaluateAll((rows) =>
    rows.map((r) => ({ index: Number(r.getAttribute("data-index")), code: r.getAttribute("data-code") })),
  );
}

async function signIn(page, key) {
  await page.goto(`${BASE}/console/`);
  await page.getByRole("heading", { level: 1, name: "Sign in" }).waitFor();
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { level: 1, name: "Batches" }).waitFor();
}

// ---- the test ----

const work = await mkdtemp(join(tmpdir(), "console-e2e-"));
await mkdir(ARTIFACTS, { recursive: true });
const pb = await loadClient(work);
const transport = pb.createGrpcTransport({ baseUrl: GRPC, httpVersion: "2" });
const api = pb.createClient(pb.RefundService, transport);
const as = (key) => ({ headers: { authorization: `Bearer ${key}` } });

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    // A name for the service that is not loopback to the browser (so its pages are not a
    // secure context), resolved to 127.0.0.1: traffic stays on this machine.
    "--host-resolver-rules=MAP console.test 127.0.0.1",
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true, locale: "en-US" });
context.setDefaultTimeout(TIMEOUT);
const page = await context.newPage();
const consoleErrors = [];
page.on("console", (m) => {
  if (m.type() === "error") consoleErrors.push(m.text());
});
page.on("pageerror", (e) => consoleErrors.push(`pageerror: ${e.message}`));
// Nothing but the service: no CDN, no other host.
const foreign = [];
page.on("request", (r) => {
  const u = new URL(r.url());
  if (!["data:", "blob:"].includes(u.protocol) && u.origin !== BASE) foreign.push(r.url());
});

let failed = false;
try {
  await step("sign-in refuses an unknown key with the server's reason", async () => {
    await page.goto(`${BASE}/console/batches`);
    await page.waitForURL(/\/console\/signin\?next=/);
    await shot(page, "signin");
    await page.getByLabel("API key").fill("rsk_not_a_key_of_this_service_0000000000");
    await page.getByRole("button", { name: "Sign in" }).click();
    const alert = page.locator('.problem[data-code="UNAUTHENTICATED"]');
    await alert.waitFor();
    check((await alert.textContent()).includes("UNAUTHENTICATED"), "the refusal names UNAUTHENTICATED");
  });

  await step("sign in with the operator key", async () => {
    await page.getByLabel("API key").fill(KEY_A);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { level: 1, name: "Batches" }).waitFor();
    const stored = await page.evaluate(() => ({ session: Object.keys(sessionStorage), local: Object.keys(localStorage) }));
    check(stored.session.length === 1 && stored.local.length === 0, "the key is in sessionStorage only");
  });

  await step("a CSV with errors: the CLI's line-numbered messages, nothing sent", async () => {
    const bad = [
      "payment_id,currency,amount,reason,metadata.order_id",
      "ch_ok_1,USD,2500,requested_by_customer,o-1",
      "ch_ok_2,USD,12.50,,o-2",
      ",USD,100,,o-3",
      "ch_ok_4,USD,100,bogus,o-4",
      "ch_ok_5,ZZZ,-5,duplicate,o-5",
    ].join("\n") + "\n";
    await writeFile(join(work, "bad.csv"), bad);
    // The reference: the CLI's own messages for the same file (it checks before connecting).
    const cli = await promisify(execFile)(BIN, ["bulk", "--file", "bad.csv", "--api-key", "x", "--server", "http://127.0.0.1:9"], { cwd: work }).then(
      () => {
        throw new Error("the CLI accepted a bad file");
      },
      (e) => e.stderr,
    );
    const expected = cli
      .split("\n")
      .map((l) => l.replace(/^error: /, "").trim())
      .filter((l) => l.startsWith("bad.csv line "));
    check(expected.length >= 3, `the CLI reported line-numbered problems: ${cli}`);
    const before = (await api.listBulkRefunds({ pageSize: 100 }, as(KEY_A))).batches.length;
    await page.getByLabel("CSV file", { exact: true }).setInputFiles({ name: "bad.csv", mimeType: "text/csv", buffer: Buffer.from(bad) });
    await page.locator(".csv-problem-list li").first().waitFor();
    const shown = await page.locator(".csv-problem-list li").allTextContents();
    equal(shown, expected, "the console lists the CLI's messages");
    await page.getByRole("button", { name: "Start batch" }).click();
    await page.locator(".csv-problems").waitFor();
    check(page.url().endsWith("/console/batches"), "no batch was started");
    const after = (await api.listBulkRefunds({ pageSize: 100 }, as(KEY_A))).batches.length;
    equal(after, before, "no batch was made");
    await shot(page, "csv-errors");
  });

  // 40 jobs: 33 plain refunds, 1 above the approval threshold (34 succeed), 3 unknown payments
  // (NOT_FOUND), 1 over-refund (OVER_REFUND), 2 refused by the provider (FAILED refunds): 6 fail.
  const good = await seed(10_000, 34);
  const [big] = await seed(THRESHOLD * 2, 1);
  const refusing = await seed(5_000, 2, { fail_refunds: true });
  const over = good.pop();
  const rows = [["payment_id", "currency", "amount", "reason", "metadata.order_id"]];
  good.forEach((p, i) => rows.push([p, "USD", "2500", "requested_by_customer", `order-${i + 1}`]));
  rows.splice(10, 0, ["ch_unknown_1", "USD", "100", "", "missing-1"]);
  rows.splice(20, 0, [over, "USD", "20000", "duplicate", "over"]);
  rows.splice(25, 0, ["ch_unknown_2", "USD", "100", "", "missing-2"]);
  rows.splice(30, 0, [big, "USD", String(THRESHOLD + 10_000), "other", "big"]);
  rows.push(["ch_unknown_3", "USD", "", "", "missing-3"]);
  for (const p of refusing) rows.push([p, "USD", "", "fraudulent", "refused"]);
  const csv = rows.map(csvLine).join("\n") + "\n";
  const jobs = rows.length - 1;
  check(jobs === 40, `40 jobs (${jobs})`);
  let bulkId = "";

  await step(`start a batch of ${jobs} jobs from a CSV file, watch it live`, async () => {
    // Slow the sandbox a little so that the batch is seen running.
    await sandbox("/faults", { latency_ms: 120 }, "PUT");
    await page.getByLabel("CSV file", { exact: true }).setInputFiles({ name: "refunds.csv", mimeType: "text/csv", buffer: Buffer.from(csv) });
    await page.getByText(`refunds.csv: ${jobs} rows checked, ready to send.`).waitFor();
    await page.getByLabel("Concurrency").fill("4");
    await page.getByRole("button", { name: "Start batch" }).click();
    await page.waitForURL(/\/console\/batches\/(?!new)[^/]+$/);
    bulkId = decodeURIComponent(page.url().split("/").pop());
    log(`   bulk id ${bulkId}`);
    await page.getByRole("heading", { level: 1, name: `Batch ${bulkId}` }).waitFor();
    await until("some results", async () => (await counters(page)).succeeded > 0);
    await shot(page, "batch-running");
  });

  let batch;
  await step("the summary, counters and failure list agree with GetBulkRefund / ListBulkRefundItems", async () => {
    await page.locator("#summary-text").waitFor({ timeout: 120_000 });
    await sandbox("/faults", {}, "PUT");
    batch = await api.getBulkRefund({ bulkId }, as(KEY_A));
    equal(pb.BulkRefundState[batch.state], "COMPLETED", "the batch completed");
    const shown = await counters(page);
    equal(
      shown,
      { total: batch.total, succeeded: batch.succeeded, failed: batch.failed, skipped: batch.skipped, canceled: batch.canceled },
      "counters shown = GetBulkRefund",
    );
    equal({ total: batch.total, succeeded: batch.succeeded, failed: batch.failed }, { total: 40, succeeded: 34, failed: 6 }, "the batch's expected outcome");
    // The batch is named by its content, so the same file sent again re-attaches to it.
    const digest = createHash("sha256").update(csv).digest("hex").slice(0, 32);
    equal(batch.idempotencyKey, `console-${digest}`, "the batch key is the content's SHA-256");
    const items = [];
    let pageToken = "";
    do {
      const res = await api.listBulkRefundItems({ bulkId, status: pb.BulkItemStatus.FAILED, pageSize: 1000, pageToken }, as(KEY_A));
      items.push(...res.items);
      pageToken = res.nextPageToken;
    } while (pageToken);
    const truth = items
      .map((r) => ({ index: r.index, code: r.error?.code || r.refund?.failureCode || "FAILED" }))
      .sort((a, b) => a.index - b.index);
    const listed = (await failureRows(page, "FAILED")).sort((a, b) => a.index - b.index);
    equal(listed, truth, "failure list shown = ListBulkRefundItems(FAILED)");
    const codes = new Set(truth.map((t) => t.code));
    check(codes.has("NOT_FOUND") && codes.has("OVER_REFUND"), `NOT_FOUND and OVER_REFUND among ${[...codes]}`);
    const summary = await page.locator("#summary-text").textContent();
    check(summary.includes("34 succeeded") && summary.includes("6 failed"), `summary text: ${summary}`);
    await shot(page, "batch-summary");
  });

  await step("filter the failures by code, then by text", async () => {
    await page.getByLabel("Code", { exact: true }).selectOption("NOT_FOUND");
    await until("3 NOT_FOUND rows", async () => (await page.locator("#failure-table tbody tr").count()) === 3);
    await page.getByLabel("Code", { exact: true }).selectOption("");
    await page.getByLabel("Filter", { exact: true }).fill("ch_unknown_2");
    await until("1 row", async () => (await page.locator("#failure-table tbody tr").count()) === 1);
    await page.getByLabel("Filter", { exact: true }).fill("");
    await until("all rows", async () => (await page.locator("#failure-table tbody tr").count()) === 6);
  });

  await step("download the failures: the dead-letter CSV with the original rows", async () => {
    const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download failures (CSV)" }).click()]);
    equal(download.suggestedFilename(), "refunds.failed.csv", "the dead-letter file's name");
    const path = join(work, "dead.csv");
    await download.saveAs(path);
    const lines = (await readFile(path, "utf8")).trimEnd().split("\n");
    check(lines[0].startsWith("payment_id,currency,amount,reason,metadata.order_id,idempotency_key,error_code,error_message,retryable,status"), `header: ${lines[0]}`);
    equal(lines.length, 7, "a header and 6 rows");
    check(lines.some((l) => l.startsWith("ch_unknown_1,USD,100,,missing-1,") && l.includes(",NOT_FOUND,")), "an unknown payment's row as it was in the file");
  });

  await step("reload on the batch's URL: re-attaches and shows the same final counts", async () => {
    const before = await counters(page);
    await page.reload();
    await page.getByRole("heading", { level: 1, name: `Batch ${bulkId}` }).waitFor();
    await page.locator("#summary-text").waitFor();
    equal(await counters(page), before, "the same counts after a reload");
    equal((await failureRows(page, "FAILED")).length, 6, "the same 6 failures after a reload");
    await shot(page, "batch-reattached");
  });

  await step("the batch is in the recent batches list", async () => {
    await page.getByRole("link", { name: "Batches", exact: true }).click();
    await page.locator(`tr[data-bulk-id="${bulkId}"]`).waitFor();
    await page.getByRole("link", { name: bulkId }).click();
    await page.locator("#summary-text").waitFor();
  });

  await step("paste rows, start a slow batch and cancel it: CANCELED jobs agree with the server", async () => {
    await page.getByRole("link", { name: "Batches", exact: true }).click();
    const payments = await seed(1_000, 15);
    const pasted = ["payment_id,currency,amount", ...payments.map((p) => `${p},USD,500`)].join("\n") + "\n";
    await sandbox("/faults", { latency_ms: 300 }, "PUT");
    await page.getByLabel("Paste rows").check();
    await page.getByLabel("CSV rows", { exact: true }).fill(pasted);
    await page.getByLabel("Concurrency").fill("1");
    await page.getByRole("button", { name: "Start batch" }).click();
    await page.waitForURL(/\/console\/batches\/(?!new)[^/]+$/);
    const id = decodeURIComponent(page.url().split("/").pop());
    check(id !== bulkId, "a second batch");
    await until("two results", async () => (await counters(page)).succeeded >= 2);
    await page.getByRole("button", { name: "Cancel batch" }).click();
    await page.getByRole("button", { name: "Yes, cancel the batch" }).click();
    await page.locator('.summary-card[data-state="CANCELED"]').waitFor();
    await sandbox("/faults", {}, "PUT");
    const b = await api.getBulkRefund({ bulkId: id }, as(KEY_A));
    equal(pb.BulkRefundState[b.state], "CANCELED", "the batch was canceled");
    check(b.canceled > 0, "some jobs were canceled");
    equal(await counters(page), { total: b.total, succeeded: b.succeeded, failed: b.failed, skipped: b.skipped, canceled: b.canceled }, "counters shown = GetBulkRefund");
    equal((await failureRows(page, "CANCELED")).length, b.canceled, "every canceled job is listed");
    await shot(page, "batch-canceled");
  });

  const waiting = (await api.listRefunds({ status: pb.RefundStatus.REQUIRES_APPROVAL }, as(KEY_A))).refunds;
  equal(waiting.length, 1, "one refund waits for approval");
  const approvalId = waiting[0].id;

  await step("approving with the key that made the refund: SELF_APPROVAL shown", async () => {
    await page.getByRole("link", { name: "Approvals", exact: true }).click();
    const row = page.locator(`[data-refund-id="${approvalId}"]`);
    await row.waitFor();
    await row.getByRole("button", { name: `Approve ${approvalId}` }).click();
    const refusal = row.locator('.problem[data-reason="SELF_APPROVAL"]');
    await refusal.waitFor();
    const text = await refusal.textContent();
    check(text.includes("You created this refund; another key must approve it"), `refusal text: ${text}`);
    check(text.includes("PERMISSION_DENIED"), "the code is shown");
    const still = await api.getRefund({ id: approvalId }, as(KEY_A));
    equal(pb.RefundStatus[still.status], "REQUIRES_APPROVAL", "still waiting");
    await shot(page, "self-approval");
    await page.setViewportSize({ width: 390, height: 844 });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 390, `the approvals inbox fits 390 px (scrollWidth ${width})`);
    await shot(page, "narrow-self-approval");
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  await step("sign out, sign in with a second key, approve: the refund leaves REQUIRES_APPROVAL", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("heading", { level: 1, name: "Sign in" }).waitFor();
    check((await page.evaluate(() => sessionStorage.length)) === 0, "the key is gone from sessionStorage");
    await page.getByLabel("API key").fill(KEY_B);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { level: 1, name: "Batches" }).waitFor();
    // Refunds settle 4 s after the provider accepts them: the look-up below sees the change live.
    await sandbox("/faults", { settle_delay_ms: 4000 }, "PUT");
    await page.getByRole("link", { name: "Approvals", exact: true }).click();
    const row = page.locator(`[data-refund-id="${approvalId}"]`);
    await row.getByRole("button", { name: `Approve ${approvalId}` }).click();
    await row.getByText(`${approvalId} approved; it is now`).waitFor();
    const now = await api.getRefund({ id: approvalId }, as(KEY_A));
    check(pb.RefundStatus[now.status] !== "REQUIRES_APPROVAL", `the refund left REQUIRES_APPROVAL (${pb.RefundStatus[now.status]})`);
    check(now.approvedByKeyId !== "" && now.approvedByKeyId !== now.createdByKeyId, "approved by the other key");
    await shot(page, "approved");
  });

  await step("look up the refund and watch its status change live", async () => {
    await page.getByRole("link", { name: "Look up a refund" }).click();
    await page.getByLabel("Refund id").fill(approvalId);
    await page.getByRole("button", { name: "Look up" }).click();
    await page.getByRole("heading", { level: 2, name: approvalId }).waitFor();
    await shot(page, "refund-pending");
    await page.locator("#refund-status .badge-succeeded").waitFor({ timeout: 60_000 });
    const seen = await page.locator(".timeline .badge").allTextContents();
    equal(seen, ["PENDING", "SUCCEEDED"], "the status change was seen live");
    const truth = await api.getRefund({ id: approvalId }, as(KEY_A));
    equal(pb.RefundStatus[truth.status], "SUCCEEDED", "the server agrees");
    await sandbox("/faults", {}, "PUT");
    await shot(page, "refund-succeeded");
  });

  await step("a narrow screen (390 px): no horizontal scrolling, screenshots", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    for (const [path, name] of [
      [`/console/batches/${encodeURIComponent(bulkId)}`, "narrow-batch"],
      ["/console/approvals", "narrow-approvals"],
      ["/console/batches", "narrow-batches"],
    ]) {
      await page.goto(`${BASE}${path}`);
      await page.locator("h1").waitFor();
      if (name === "narrow-batch") await page.locator("#summary-text").waitFor();
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      check(width <= 390, `${path} fits 390 px (scrollWidth ${width})`);
      await shot(page, name);
    }
  });

  await step("on a plain-http origin (not a secure context) a batch is still named by its content", async () => {
    // Defect: the batch key came from crypto.subtle, which such a page does not have; it fell
    // back to a random key, so the same file sent twice would have refunded its rows twice.
    const plain = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
    plain.setDefaultTimeout(TIMEOUT);
    try {
      const p = await plain.newPage();
      const base = BASE.replace("127.0.0.1", "console.test");
      await p.goto(`${base}/console/`);
      equal(await p.evaluate(() => window.isSecureContext), false, "the page is not a secure context");
      await p.getByLabel("API key").fill(KEY_A);
      await p.getByRole("button", { name: "Sign in" }).click();
      await p.getByRole("heading", { level: 1, name: "Batches" }).waitFor();
      const [payment] = await seed(1_000, 1);
      const text = `payment_id,currency,amount\n${payment},USD,100\n`;
      await p.getByLabel("CSV file", { exact: true }).setInputFiles({ name: "one.csv", mimeType: "text/csv", buffer: Buffer.from(text) });
      await p.getByText("one.csv: 1 row checked, ready to send.").waitFor();
      await p.getByRole("button", { name: "Start batch" }).click();
      await p.waitForURL(/\/console\/batches\/(?!new)[^/]+$/);
      const id = decodeURIComponent(p.url().split("/").pop());
      const b = await api.getBulkRefund({ bulkId: id }, as(KEY_A));
      const digest = createHash("sha256").update(text).digest("hex").slice(0, 32);
      equal(b.idempotencyKey, `console-${digest}`, "the batch key is the content's SHA-256");
    } finally {
      await plain.close();
    }
  });

  await step("no request left the service's origin, no script errors", async () => {
    equal(foreign, [], "requests to other origins");
    equal(consoleErrors.filter((e) => !/status of 4\d\d|ERR_ABORTED/.test(e)), [], "console errors");
  });
} catch (err) {
  failed = true;
  console.error(`e2e: FAILED: ${err.stack ?? err}`);
  try {
    await shot(page, "failure");
  } catch {
    /* the browser may be gone */
  }
} finally {
  await browser.close();
  await rm(work, { recursive: true, force: true });
  console.log("e2e: screenshots:");
  for (const s of screenshots) console.log(`  ${s}`);
}
process.exit(failed ? 1 : 0);
