// Batches: start one from a CSV file (or pasted rows), open one by id, and list recent ones.

import { sha256 } from "@noble/hashes/sha2";
import { bytesToHex } from "@noble/hashes/utils";
import { client, triage } from "../api.js";
import { setPendingStart, type CsvSource } from "../batchStore.js";
import { parseBulkCsv } from "../csv.js";
import { h, replace, uid } from "../dom.js";
import { batchStateName, formatCount, formatTimestamp } from "../format.js";
import { create } from "@bufbuild/protobuf";
import {
  BulkRefundRequestSchema,
  BulkRefundState,
  CreateRefundRequestSchema,
  type BulkRefundBatch,
} from "../gen/refunds/v1/refund_service_pb.js";
import { paths, type ViewContext } from "../paths.js";
import { badge, field, heading, problemBox, scrollTable } from "../ui.js";

/** Longest batch key the CLI takes; leaves room for the `:line-N` suffix of each row's key. */
const MAX_KEY_LEN = 200;

export function batchesView(root: HTMLElement, _params: string[], ctx: ViewContext): void {
  root.append(
    heading("Batches"),
    ...(ctx.flash ? [h("p", { class: "notice", role: "status" }, ctx.flash)] : []),
    newBatchForm(ctx),
    openByIdForm(ctx),
    recentBatches(ctx),
  );
}

/** The SHA-256 of the content, in hex: computed here, so that it is the same on any page (the
 * browser's crypto.subtle exists only in a secure context, and a random key instead would let
 * the same file, sent twice, refund its rows twice). */
function sha256Hex(bytes: Uint8Array): string {
  return bytesToHex(sha256(bytes));
}

function newBatchForm(ctx: ViewContext): HTMLElement {
  const fileInput = h("input", { id: uid("csv-file"), type: "file", accept: ".csv,text/csv" });
  const pasteInput = h("textarea", {
    id: uid("csv-text"),
    rows: 8,
    spellcheck: "false",
    placeholder: "payment_id,currency,amount,reason\nch_…,USD,2500,requested_by_customer",
  });
  const fromFile = h("input", { type: "radio", name: "csv-source", value: "file", id: uid("src-file"), checked: true });
  const fromPaste = h("input", { type: "radio", name: "csv-source", value: "paste", id: uid("src-paste") });
  const fileField = field(
    "CSV file",
    fileInput,
    "The format of refund-service bulk: a header row, payment_id and currency required; amount in minor units (empty: all that remains), reason, reason_detail, provider, idempotency_key, metadata.<key>.",
  );
  const pasteField = field("CSV rows", pasteInput, "Paste the file's content, header row first.");
  pasteField.hidden = true;
  const syncSource = () => {
    const paste = fromPaste.checked;
    fileField.hidden = paste;
    pasteField.hidden = !paste;
  };
  fromFile.addEventListener("change", syncSource);
  fromPaste.addEventListener("change", syncSource);

  const abort = h("input", { type: "checkbox", id: uid("abort-on-error") });
  const concurrency = h("input", {
    type: "number",
    id: uid("concurrency"),
    min: "1",
    max: "256",
    step: "1",
    inputmode: "numeric",
  });
  const batchKey = h("input", { type: "text", id: uid("batch-key"), autocomplete: "off", spellcheck: "false", maxlength: String(MAX_KEY_LEN) });
  const check = h("div", { class: "form-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Start batch");

  const form = h(
    "form",
    { class: "card", novalidate: true, "aria-labelledby": "new-batch-title" },
    h("h2", { id: "new-batch-title" }, "New batch"),
    h(
      "fieldset",
      { class: "choice" },
      h("legend", null, "Jobs from"),
      h("div", null, fromFile, h("label", { for: fromFile.id }, "Upload a file")),
      h("div", null, fromPaste, h("label", { for: fromPaste.id }, "Paste rows")),
    ),
    fileField,
    pasteField,
    h("div", { class: "field checkbox" }, abort, h("label", { for: abort.id }, "Abort on the first job that fails (the rest are skipped)")),
    field("Concurrency", concurrency, "Jobs in flight at once; empty: the service's default."),
    field(
      "Batch key (optional)",
      batchKey,
      "Names the run: sending the same rows with the same key re-attaches to the batch instead of refunding again. Default: derived from the rows' content.",
    ),
    h("div", { class: "actions" }, submit),
    check,
  );

  async function readInput(): Promise<{ name: string; text: string; bytes: Uint8Array } | string> {
    if (fromPaste.checked) {
      const text = pasteInput.value;
      if (!text.trim()) return "Paste the CSV rows first (header row included).";
      return { name: "pasted rows", text, bytes: new TextEncoder().encode(text) };
    }
    const file = fileInput.files?.[0];
    if (!file) return "Choose a CSV file first.";
    const bytes = new Uint8Array(await file.arrayBuffer());
    try {
      const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      return { name: file.name, text, bytes };
    } catch {
      return `${file.name}: the file is not UTF-8 text.`;
    }
  }

  /** Checks the input and shows the result; returns the parsed rows when they are good. */
  async function validate(): Promise<{ input: { name: string; text: string; bytes: Uint8Array }; source: CsvSource } | null> {
    const input = await readInput();
    if (typeof input === "string") {
      replace(check, h("p", { class: "error", role: "alert" }, input));
      return null;
    }
    const parsed = parseBulkCsv(input.name, input.text);
    if (!parsed.ok) {
      const list = h(
        "div",
        { class: "problem csv-problems", role: "alert", tabindex: "-1" },
        h(
          "p",
          { class: "problem-title" },
          h("strong", null, `${parsed.problems.length} ${parsed.problems.length === 1 ? "problem" : "problems"} in ${input.name}`),
          "; nothing was sent.",
        ),
        h("ul", { class: "csv-problem-list" }, parsed.problems.map((p) => h("li", null, p))),
      );
      replace(check, list);
      return null;
    }
    if (parsed.rows.length === 0) {
      replace(check, h("p", { class: "error", role: "alert" }, `${input.name}: no rows after the header.`));
      return null;
    }
    replace(
      check,
      h("p", { class: "ok", role: "status" }, `${input.name}: ${formatCount(parsed.rows.length)} ${parsed.rows.length === 1 ? "row" : "rows"} checked, ready to send.`),
    );
    return { input, source: { fileName: input.name, headers: parsed.headers, rows: parsed.rows } };
  }

  fileInput.addEventListener("change", () => void validate());

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void start();
  });

  async function start(): Promise<void> {
    submit.disabled = true;
    try {
      const checked = await validate();
      if (!checked) {
        check.querySelector<HTMLElement>("[tabindex='-1']")?.focus();
        return;
      }
      const n = concurrency.value.trim() === "" ? 0 : Number(concurrency.value);
      if (!Number.isInteger(n) || n < 0 || n > 1_000_000) {
        replace(check, h("p", { class: "error", role: "alert" }, "Concurrency must be a whole number of jobs."));
        concurrency.focus();
        return;
      }
      let key = batchKey.value.trim();
      if (key && (key.length > MAX_KEY_LEN || !/^[\x21-\x7e]+$/.test(key))) {
        replace(check, h("p", { class: "error", role: "alert" }, `The batch key must be 1 to ${MAX_KEY_LEN} printable ASCII characters without spaces.`));
        batchKey.focus();
        return;
      }
      if (!key) {
        // The content names the run, as `refund-service bulk` does (with a prefix of its own).
        key = `console-${sha256Hex(checked.input.bytes).slice(0, 32)}`;
      }
      const { source } = checked;
      const rows = source.rows;
      const jobs = rows.map((row) => {
        const job = create(CreateRefundRequestSchema, row.job);
        // Rows without a key get `<batch key>:line-N`, so that re-sending replays, never repeats.
        if (!job.idempotencyKey) job.idempotencyKey = `${key}:line-${row.line}`;
        row.job = job;
        return job;
      });
      const request = create(BulkRefundRequestSchema, {
        jobs,
        abortOnError: abort.checked,
        maxConcurrency: n,
        idempotencyKey: key,
        metadata: {
          source: "console",
          csv_first_line: String(rows[0]?.line ?? ""),
          csv_last_line: String(rows[rows.length - 1]?.line ?? ""),
        },
      });
      setPendingStart({ request, source });
      ctx.navigate(paths.newBatch());
    } finally {
      submit.disabled = false;
    }
  }
  return form;
}

function openByIdForm(ctx: ViewContext): HTMLElement {
  const input = h("input", { id: uid("bulk-id"), type: "text", autocomplete: "off", spellcheck: "false", required: true });
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "open-batch-title" },
    h("h2", { id: "open-batch-title" }, "Open a batch"),
    field("Bulk id", input, "Re-attach to a running batch, or see a finished one."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Open")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = input.value.trim();
    if (id) ctx.navigate(paths.batch(id));
  });
  return form;
}

function batchRow(b: BulkRefundBatch): HTMLTableRowElement {
  const done = b.succeeded + b.failed + b.skipped + b.canceled;
  return h(
    "tr",
    { "data-bulk-id": b.id },
    h("th", { scope: "row" }, h("a", { href: paths.batch(b.id) }, b.id)),
    h("td", { "data-label": "State" }, badge(batchStateName(b.state))),
    h("td", { class: "num", "data-label": "Done" }, `${formatCount(done)} / ${formatCount(b.total)}`),
    h("td", { class: "num", "data-label": "Succeeded" }, formatCount(b.succeeded)),
    h("td", { class: "num", "data-label": "Failed" }, formatCount(b.failed)),
    h("td", { "data-label": "Created" }, formatTimestamp(b.createdAt)),
  );
}

function recentBatches(ctx: ViewContext): HTMLElement {
  const tbody = h("tbody");
  const status = h("div", { "aria-live": "polite", class: "list-status" }, "Loading…");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  let token = "";
  let count = 0;

  async function load(reset: boolean): Promise<void> {
    if (reset) {
      token = "";
      count = 0;
      tbody.replaceChildren();
    }
    replace(status, "Loading…");
    try {
      const res = await client.listBulkRefunds({ pageSize: 20, pageToken: token, state: BulkRefundState.UNSPECIFIED }, { signal: ctx.signal });
      for (const b of res.batches) tbody.append(batchRow(b));
      count += res.batches.length;
      token = res.nextPageToken;
      more.hidden = token === "";
      replace(status, count === 0 ? "No batches yet." : `${formatCount(count)} ${count === 1 ? "batch" : "batches"} shown, newest first.`);
    } catch (err) {
      if (ctx.signal.aborted) return;
      const p = triage(err);
      if (p) replace(status, problemBox(p, "Could not list batches"));
    }
  }
  more.addEventListener("click", () => void load(false));
  refresh.addEventListener("click", () => void load(true));
  void load(true);

  const table = h(
    "table",
    { class: "data stack" },
    h("caption", { class: "visually-hidden" }, "Recent batches"),
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        h("th", { scope: "col" }, "Bulk id"),
        h("th", { scope: "col" }, "State"),
        h("th", { scope: "col", class: "num" }, "Done"),
        h("th", { scope: "col", class: "num" }, "Succeeded"),
        h("th", { scope: "col", class: "num" }, "Failed"),
        h("th", { scope: "col" }, "Created"),
      ),
    ),
    tbody,
  );
  return h(
    "section",
    { class: "card", "aria-labelledby": "recent-title" },
    h("div", { class: "section-head" }, h("h2", { id: "recent-title" }, "Recent batches"), refresh),
    scrollTable("Recent batches", table),
    status,
    h("div", { class: "actions" }, more),
  );
}
