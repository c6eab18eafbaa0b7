// The bulk CSV reader of `refund-service bulk --file`, ported from `src/bulk_cli/input.rs`: the
// same columns, the same rules (those of the service, see validate.ts) and the same
// line-numbered messages, so that a file the console accepts is one the CLI accepts, and the
// other way round. `tests/fixtures/bulk-csv/` holds the corpus both implementations are tested
// against.
//
// The tokenizer is a port of the `csv` crate's reader (csv-core's state machine) rather than
// papaparse: papaparse cannot say on which line a record starts, settles on one line ending for
// the whole file (csv-core takes each of \r\n, \n and \r as a record end, mixed), skips a line
// holding only `""` as empty (csv-core reads it as one empty field), and handles text after a
// closing quote differently. The line a record starts on is the line its first field is on, as
// an editor numbers it (`\r\n`, `\n` and a lone `\r` each end a line, also inside quoted fields),
// as the CLI numbers it too: not the `csv` crate's `Position::line`, which counts only `\n` and
// where reading the record began (before the `\n` of the previous record's `\r\n` and before
// skipped blank lines).
//
// The input is a JavaScript string: the browser decoded the file (UTF-8) before this sees it, so
// the CLI's "is not valid UTF-8" problem cannot occur here (invalid bytes have become U+FFFD).

import type { MessageInitShape } from "@bufbuild/protobuf";
import { CreateRefundRequestSchema, RefundReason } from "./gen/refunds/v1/refund_service_pb.js";
import {
  type FieldViolation,
  I64_MAX,
  I64_MIN,
  asciiLower,
  compareRustStrings,
  refundViolations,
  rustDebug,
  rustTrim,
} from "./validate.js";

export type JobInit = MessageInitShape<typeof CreateRefundRequestSchema>;
export interface CsvRow {
  /** Line of the file the row starts on (a quoted field may span lines). */
  line: number;
  /** The row as read (trimmed), for the dead-letter file. */
  record: string[];
  job: JobInit;
}
export type ParseResult =
  | { ok: true; headers: string[]; rows: CsvRow[] }
  | { ok: false; problems: string[] };

/** Columns the dead-letter file adds; ignored on input. */
export const DEAD_LETTER_COLUMNS = ["error_code", "error_message", "retryable", "status"] as const;

const EXPECTED_COLUMNS =
  "payment_id, currency, amount, reason, reason_detail, provider, idempotency_key or metadata.<key>";

/** At most this many problems are listed. */
export const MAX_LISTED_PROBLEMS = 20;

// --- tokenizer (csv-core, default options: `,`, `"`, doubled quotes, CRLF/LF/CR terminators) ----

interface RawRecord {
  line: number;
  fields: string[];
}

const enum St {
  StartRecord,
  StartField,
  InField,
  InQuoted,
  InDoubleEscapedQuote,
  /** After a `\r` that ended a record: a following `\n` belongs to it. */
  Crlf,
}

class Tokenizer {
  private pos = 0;
  private line = 1;
  private state = St.StartRecord;

  constructor(private readonly text: string) {
    // csv-core strips one UTF-8 byte-order mark at the very start.
    if (text.startsWith("\uFEFF")) this.pos = 1;
  }

  /** The next record, or null at the end. */
  next(): RawRecord | null {
    const { text } = this;
    // Set where the first field starts, past the blank lines skipped before it.
    let line = this.line;
    const fields: string[] = [];
    let field = "";
    let state = this.state;
    while (this.pos < text.length) {
      const c = text[this.pos]!;
      const term = c === "\n" || c === "\r";
      switch (state) {
        case St.Crlf:
          if (c === "\n") this.consume();
          state = St.StartRecord;
          continue;
        case St.StartRecord:
          if (term) {
            this.consume(); // an empty line
            continue;
          }
          line = this.line;
          state = St.StartField;
          continue;
        case St.StartField:
          if (c === '"') {
            this.consume();
            state = St.InQuoted;
            continue;
          }
          break;
        case St.InQuoted:
          this.consume();
          if (c === '"') state = St.InDoubleEscapedQuote;
          else field += c;
          continue;
        case St.InDoubleEscapedQuote:
          if (c === '"') {
            this.consume();
            field += c;
            state = St.InQuoted;
            continue;
          }
          break;
        case St.InField:
          break;
      }
      // StartField (not a quote), InField, InDoubleEscapedQuote (not a quote): the same moves.
      if (c === ",") {
        this.consume();
        fields.push(field);
        field = "";
        state = St.StartField;
      } else if (term) {
        this.consume();
        fields.push(field);
        this.state = c === "\r" ? St.Crlf : St.StartRecord;
        return { line, fields };
      } else {
        this.consume();
        field += c;
        state = St.InField;
      }
    }
    this.state = state;
    if (state === St.StartRecord || state === St.Crlf) return null;
    // The input ended inside a record: it is the last one.
    fields.push(field);
    this.state = St.StartRecord;
    return { line, fields };
  }

  /** Moves past one character, counting a line at a `\n` or a `\r` not followed by one. */
  private consume(): void {
    const c = this.text[this.pos];
    if (c === "\n" || (c === "\r" && this.text[this.pos + 1] !== "\n")) this.line++;
    this.pos++;
  }
}

// --- the reader ------------------------------------------------------------------------------

type Column =
  | { kind: "payment_id" | "currency" | "amount" | "reason" | "reason_detail" | "provider" }
  | { kind: "idempotency_key" | "ignored" }
  | { kind: "metadata"; key: string };

class Problems {
  readonly lines: string[] = [];
  unlisted = 0;
  constructor(private readonly file: string) {}

  push(line: number | null, problem: string): void {
    if (this.lines.length < MAX_LISTED_PROBLEMS) {
      this.lines.push(line === null ? `${this.file}: ${problem}` : `${this.file} line ${line}: ${problem}`);
    } else {
      this.unlisted++;
    }
  }

  get empty(): boolean {
    return this.lines.length === 0;
  }

  all(): string[] {
    return this.unlisted > 0 ? [...this.lines, `… and ${this.unlisted} more problems`] : [...this.lines];
  }
}

/**
 * Parses a whole file. `fileName` names it in messages. Reports every problem (up to 20, then
 * how many more), not just the first.
 */
export function parseBulkCsv(fileName: string, text: string): ParseResult {
  const problems = new Problems(fileName);
  const tokenizer = new Tokenizer(text);
  const headerRecord = tokenizer.next();
  const headers = headerRecord ? headerRecord.fields.map(rustTrim) : [];
  const columns = readColumns(headers, problems);
  if (!problems.empty) return { ok: false, problems: problems.all() };

  const rows: CsvRow[] = [];
  for (let raw = tokenizer.next(); raw !== null; raw = tokenizer.next()) {
    const record = raw.fields.map(rustTrim);
    if (record.length !== headers.length) {
      const len = record.length;
      problems.push(
        raw.line,
        `has ${len} ${len === 1 ? "field" : "fields"}, but the header has ${headers.length}`,
      );
      continue;
    }
    const job = readJob(columns, record);
    if (Array.isArray(job)) {
      for (const problem of job) problems.push(raw.line, problem);
    } else {
      rows.push({ line: raw.line, record, job });
    }
  }
  if (problems.empty && rows.length === 0) problems.push(null, "has no rows to refund (only a header)");
  return problems.empty ? { ok: true, headers, rows } : { ok: false, problems: problems.all() };
}

function sameColumn(a: Column, b: Column): boolean {
  return a.kind === b.kind && (a.kind !== "metadata" || a.key === (b as { key: string }).key);
}

function readColumns(headers: string[], problems: Problems): Column[] {
  const columns: Column[] = [];
  const unknown: string[] = [];
  headers.forEach((name, i) => {
    const lower = asciiLower(name);
    let column: Column;
    switch (lower) {
      case "payment_id":
      case "currency":
      case "amount":
      case "reason":
      case "reason_detail":
      case "provider":
      case "idempotency_key":
        column = { kind: lower };
        break;
      default:
        if ((DEAD_LETTER_COLUMNS as readonly string[]).includes(lower)) {
          column = { kind: "ignored" };
        } else if (lower.startsWith("metadata.")) {
          // Metadata keys keep their case.
          const key = rustTrim(name.slice("metadata.".length));
          if (key === "") {
            problems.push(1, `column ${i + 1} (${rustDebug(name)}) names no metadata key`);
            return;
          }
          column = { kind: "metadata", key };
        } else if (lower === "") {
          problems.push(1, `column ${i + 1} has no name`);
          return;
        } else {
          unknown.push(rustDebug(name));
          return;
        }
    }
    if (column.kind !== "ignored" && columns.some((c) => sameColumn(c, column))) {
      problems.push(1, `column ${rustDebug(name)} appears more than once`);
    }
    columns.push(column);
  });
  if (unknown.length > 0) {
    const noun = unknown.length === 1 ? "column" : "columns";
    problems.push(1, `unknown ${noun} ${unknown.join(", ")}; expected ${EXPECTED_COLUMNS}`);
  }
  for (const name of ["payment_id", "currency"] as const) {
    if (!columns.some((c) => c.kind === name)) problems.push(1, `missing required column "${name}"`);
  }
  return columns;
}

/** `str::parse::<i64>`: an optional sign and ASCII digits; the error kinds the reader tells. */
export function parseI64(s: string): bigint | "invalid" | "pos_overflow" | "neg_overflow" {
  if (s === "") return "invalid";
  let digits = s;
  let negative = false;
  if (s[0] === "+" || s[0] === "-") {
    if (s.length === 1) return "invalid";
    negative = s[0] === "-";
    digits = s.slice(1);
  }
  let n = 0n;
  for (const c of digits) {
    // A non-digit is found before an overflow that the same character would cause.
    if (c < "0" || c > "9") return "invalid";
    const d = BigInt(c.charCodeAt(0) - 48);
    n = negative ? n * 10n - d : n * 10n + d;
    if (n > I64_MAX) return "pos_overflow";
    if (n < I64_MIN) return "neg_overflow";
  }
  return n;
}

function parseReason(value: string): RefundReason | null {
  switch (asciiLower(value)) {
    case "":
    case "unspecified":
      return RefundReason.UNSPECIFIED;
    case "duplicate":
      return RefundReason.DUPLICATE;
    case "fraudulent":
      return RefundReason.FRAUDULENT;
    case "requested_by_customer":
      return RefundReason.REQUESTED_BY_CUSTOMER;
    case "other":
      return RefundReason.OTHER;
    default:
      return null;
  }
}

/** A field violation in the file's terms (`violation_problem`). */
function violationProblem(v: FieldViolation): string {
  if (v.field.startsWith("metadata[") && v.field.endsWith("]") && v.field.length >= "metadata[]".length) {
    return `metadata.${v.field.slice("metadata[".length, -1)}: ${v.description}`;
  }
  if (v.description.startsWith(v.field)) return v.description;
  if (v.description.startsWith('"')) return `${v.field} ${v.description}`;
  return `${v.field}: ${v.description}`;
}

/** One row as a job, or everything wrong with it. */
function readJob(columns: Column[], record: string[]): JobInit | string[] {
  const problems: string[] = [];
  let paymentId = "";
  let currency = "";
  let provider = "";
  let reasonDetail = "";
  let idempotencyKey = "";
  let amount: bigint | undefined;
  let reason = RefundReason.UNSPECIFIED;
  const metadata = new Map<string, string>();
  columns.forEach((column, i) => {
    const value = record[i]!;
    switch (column.kind) {
      case "payment_id":
        paymentId = value;
        break;
      case "currency":
        currency = value;
        break;
      case "amount": {
        if (value === "") break; // refund whatever remains of the payment
        const n = parseI64(value);
        if (typeof n === "bigint") amount = n;
        else if (n === "pos_overflow") problems.push(`amount ${rustDebug(value)} is too large`);
        else problems.push(`amount ${rustDebug(value)} is not a whole number of minor units`);
        break;
      }
      case "reason": {
        const r = parseReason(value);
        if (r === null) {
          problems.push(
            `reason ${rustDebug(value)} is not one of duplicate, fraudulent, requested_by_customer, other (or empty)`,
          );
        } else {
          reason = r;
        }
        break;
      }
      case "reason_detail":
        reasonDetail = value;
        break;
      case "provider":
        provider = value;
        break;
      case "idempotency_key":
        idempotencyKey = value;
        break;
      case "metadata":
        // An empty cell means "no such entry" for this row.
        if (value !== "") metadata.set(column.key, value);
        break;
      case "ignored":
        break;
    }
  });
  const violations = refundViolations({
    paymentId,
    provider,
    amount,
    currency,
    reasonDetail,
    metadata,
    idempotencyKey,
  });
  problems.push(...violations.map(violationProblem));
  if (problems.length > 0) return problems;
  const entries = [...metadata].sort(([a], [b]) => compareRustStrings(a, b));
  const job: JobInit = {
    paymentId,
    provider,
    currency,
    reason,
    reasonDetail,
    metadata: Object.fromEntries(entries),
    idempotencyKey,
  };
  if (amount !== undefined) job.amount = amount;
  return job;
}
