// The dead-letter file of `refund-service bulk`, ported from `src/bulk_cli/dead_letter.rs`: every
// row whose job did not succeed, in file order, with why, byte for byte as the CLI writes it (the
// `csv` crate's default writer: a field is quoted only when it holds `,`, `"`, `\r` or `\n`;
// records end with `\n`). Its extra columns are ones the reader ignores, so the file can be
// corrected and sent again as it is.
//
// For the file source, each row's `job.idempotencyKey` must be the key the job was sent with
// (the CLI gives rows without a key of their own `<run key>:line-N` before sending), as in Rust.

import {
  BulkItemStatus,
  RefundReason,
  RefundStatus,
  type BulkJobResult,
} from "./gen/refunds/v1/refund_service_pb.js";
import { type CsvRow, DEAD_LETTER_COLUMNS } from "./csv.js";
import { asciiLower, compareRustStrings } from "./validate.js";

/**
 * The dead-letter CSV of `failures`, keyed by row index: the position in `source.rows`, or the
 * job index when there is no file (`source` null: the jobs as the results tell them).
 */
export function deadLetterCsv(
  source: { headers: string[]; rows: CsvRow[] } | null,
  failures: Map<number, BulkJobResult>,
): string {
  const out: string[] = [];
  const write = (fields: string[]) => out.push(fields.map(csvField).join(",") + "\n");
  // A `BTreeMap<usize, _>`: in index order.
  const ordered = [...failures].sort(([a], [b]) => a - b);
  if (source !== null) {
    const { headers, rows } = source;
    // A dead-letter file sent again already has the error columns: replace them.
    const kept = headers
      .map((_, i) => i)
      .filter((i) => !(DEAD_LETTER_COLUMNS as readonly string[]).includes(asciiLower(headers[i]!)));
    // The key each job was sent with goes into the row (a column of its own when the file had
    // none), so that sending the file again replays a refund that exists.
    const keyColumn = kept.findIndex((i) => asciiLower(headers[i]!) === "idempotency_key");
    write([
      ...kept.map((i) => headers[i]!),
      ...(keyColumn === -1 ? ["idempotency_key"] : []),
      ...DEAD_LETTER_COLUMNS,
    ]);
    for (const [index, result] of ordered) {
      const row = rows[index];
      if (row === undefined) throw new Error(`job ${index} has no row in the file`);
      const key = resendKey(row.job.idempotencyKey ?? "", result);
      const original = kept.map((i) => row.record[i] ?? "");
      if (keyColumn === -1) original.push(key);
      else if (original[keyColumn] === "") original[keyColumn] = key;
      write([...original, ...errorColumns(result)]);
    }
  } else {
    // The jobs as the server accepted them; a job refused by validation has only what its
    // result tells.
    const metadataKeys = [
      ...new Set(ordered.flatMap(([, r]) => (r.job ? Object.keys(r.job.metadata) : []))),
    ].sort(compareRustStrings);
    write([
      "payment_id",
      "provider",
      "currency",
      "amount",
      "reason",
      "reason_detail",
      "idempotency_key",
      ...metadataKeys.map((k) => `metadata.${k}`),
      ...DEAD_LETTER_COLUMNS,
    ]);
    for (const [, result] of ordered) {
      const job = result.job;
      const metadata: { [key: string]: string } = job?.metadata ?? {};
      write([
        job ? job.paymentId : result.paymentId,
        job ? job.provider : result.provider,
        job?.currency ?? "",
        job?.amount === undefined ? "" : job.amount.toString(),
        reasonName(job?.reason ?? RefundReason.UNSPECIFIED),
        job?.reasonDetail ?? "",
        resendKey(job?.idempotencyKey ?? "", result),
        ...metadataKeys.map((k) => (Object.hasOwn(metadata, k) ? metadata[k]! : "")),
        ...errorColumns(result),
      ]);
    }
  }
  return out.join("");
}

/** The `csv` crate's `QuoteStyle::Necessary` with its default quote, delimiter and terminator. */
function csvField(field: string): string {
  return /[",\r\n]/.test(field) ? `"${field.replaceAll('"', '""')}"` : field;
}

/**
 * The key a dead-letter row is sent again with: the one its job was sent with, unless the refund
 * failed at the provider or was canceled (nothing was refunded; a retry needs a new key).
 */
export function resendKey(sentWith: string, result: BulkJobResult): string {
  const status = result.refund?.status;
  const nothingDone = status === RefundStatus.FAILED || status === RefundStatus.CANCELED;
  return nothingDone ? "" : sentWith;
}

/** `error_code`, `error_message`, `retryable`, `status`. */
export function errorColumns(result: BulkJobResult): [string, string, string, string] {
  const e = result.error;
  if (e) return [e.code, e.message, String(e.retryable), statusName(result.status)];
  // A refund the provider rejected carries its own reason.
  return [result.refund?.failureCode ?? "", result.refund?.failureReason ?? "", "false", statusName(result.status)];
}

/** A reason as the input file spells it (`requested_by_customer`); empty for none. */
export function reasonName(reason: number): string {
  const name = RefundReason[reason];
  return reason === RefundReason.UNSPECIFIED || name === undefined ? "" : name.toLowerCase();
}

/** `failed`, `skipped`, `canceled`, …: the proto name without its prefix, in lower case. */
export function statusName(status: number): string {
  const name = BulkItemStatus[status];
  return name === undefined ? `status ${status}` : name.toLowerCase();
}
