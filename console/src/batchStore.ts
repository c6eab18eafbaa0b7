// What this page knows about batches beyond the server: the batch being started (handed from the
// form to the batch view) and the CSV rows each batch started here came from (for the dead-letter
// download with the original rows). In memory only: a reload keeps only the bulk id in the URL.

import type { BulkRefundRequest } from "./gen/refunds/v1/refund_service_pb.js";
import type { CsvRow } from "./csv.js";

export type { CsvRow };

export interface CsvSource {
  fileName: string;
  headers: string[];
  rows: CsvRow[];
}

export interface PendingStart {
  request: BulkRefundRequest;
  source: CsvSource;
}

let pending: PendingStart | null = null;
const sources = new Map<string, CsvSource>();

export function setPendingStart(start: PendingStart): void {
  pending = start;
}

/** The batch to start, once: a reload of /console/batches/new finds none. */
export function takePendingStart(): PendingStart | null {
  const p = pending;
  pending = null;
  return p;
}

export function rememberSource(bulkId: string, source: CsvSource): void {
  sources.set(bulkId, source);
}

export function sourceOf(bulkId: string): CsvSource | null {
  return sources.get(bulkId) ?? null;
}
