// Following one batch's event stream to its summary, through dropped connections: each event is
// handed over exactly once. Re-opening is always safe: WatchBulkRefund is read-only and re-sending
// BulkRefund with the same batch key re-attaches to the stored batch; sequences are gapless, so
// re-opening after the last sequence seen (or skipping what was seen, when the request had to be
// re-sent) misses nothing and repeats nothing. The same rules as `refund-service bulk`.

import { client, Code, ConnectError, problem, transient, type Problem } from "./api.js";
import { sleep } from "./dom.js";
import type {
  BulkAccepted,
  BulkJobResult,
  BulkProgress,
  BulkProviderWaitEnded,
  BulkProviderWaiting,
  BulkRefundEvent,
  BulkRefundRequest,
  BulkSummary,
} from "./gen/refunds/v1/refund_service_pb.js";

export type Open = { create: BulkRefundRequest } | { watch: string };

export type FollowEvent =
  | { kind: "accepted"; accepted: BulkAccepted; sequence: bigint }
  | { kind: "result"; result: BulkJobResult; sequence: bigint }
  | { kind: "progress"; progress: BulkProgress }
  | { kind: "waiting"; waiting: BulkProviderWaiting }
  | { kind: "waitEnded"; ended: BulkProviderWaitEnded }
  | { kind: "summary"; summary: BulkSummary; sequence: bigint }
  | { kind: "reopening"; why: Problem; attempt: number; delayMs: number }
  | { kind: "reopened" };

/** Re-opening attempts in a row before giving up: about half a minute, enough for a restart. */
export const MAX_REOPENS = 10;
const MAX_REOPEN_DELAY_MS = 5_000;

export function reopenDelayMs(attempt: number): number {
  return Math.min(250 * 2 ** (Math.min(attempt, 5) - 1), MAX_REOPEN_DELAY_MS);
}

export class FollowError extends Error {
  constructor(
    readonly problem: Problem,
    readonly bulkId: string | null,
    readonly lastSequence: bigint,
  ) {
    super(`${problem.codeName}: ${problem.message}`);
  }
}

/** Opens the stream: watches after `after` once the bulk id is known, sends the request otherwise. */
function open(how: Open, bulkId: string | null, after: bigint, signal: AbortSignal): AsyncIterable<BulkRefundEvent> {
  if (bulkId !== null) return client.watchBulkRefund({ bulkId, afterSequence: after }, { signal });
  if ("watch" in how) return client.watchBulkRefund({ bulkId: how.watch, afterSequence: after }, { signal });
  return client.bulkRefund(how.create, { signal });
}

/**
 * Follows a batch from `afterSequence` to its summary, calling `onEvent` once per event. Resolves
 * with the summary; rejects with a FollowError (the server's answer, or a connection lost for good)
 * or with the abort reason when `signal` aborts.
 */
export async function follow(
  how: Open,
  onEvent: (event: FollowEvent) => void,
  signal: AbortSignal,
  afterSequence = 0n,
): Promise<BulkSummary> {
  let bulkId: string | null = "watch" in how ? how.watch : null;
  let last = afterSequence;
  let reopens = 0;
  for (;;) {
    let lost: Problem;
    try {
      for await (const event of open(how, bulkId, last, signal)) {
        if (reopens > 0) {
          reopens = 0;
          onEvent({ kind: "reopened" });
        }
        const e = event.event;
        // A keep-alive repeats the latest sequence: counts, not a result.
        if (e.case === "progress") {
          onEvent({ kind: "progress", progress: e.value });
          continue;
        }
        // A re-sent BulkRefund streams from the start again.
        if (event.sequence <= last) continue;
        last = event.sequence;
        switch (e.case) {
          case "accepted":
            bulkId = e.value.bulkId;
            onEvent({ kind: "accepted", accepted: e.value, sequence: event.sequence });
            break;
          case "result":
            onEvent({ kind: "result", result: e.value, sequence: event.sequence });
            break;
          case "providerWaiting":
            onEvent({ kind: "waiting", waiting: e.value });
            break;
          case "providerWaitEnded":
            onEvent({ kind: "waitEnded", ended: e.value });
            break;
          case "summary":
            onEvent({ kind: "summary", summary: e.value, sequence: event.sequence });
            return e.value;
          default:
            // An event kind newer than this console.
            break;
        }
      }
      lost = problem(new ConnectError("the stream ended before the batch's summary", Code.Unavailable));
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      const p = problem(err);
      if (!transient(p.code)) throw new FollowError(p, bulkId, last);
      lost = p;
    }
    reopens += 1;
    if (reopens > MAX_REOPENS) throw new FollowError(lost, bulkId, last);
    const delayMs = reopenDelayMs(reopens);
    onEvent({ kind: "reopening", why: lost, attempt: reopens, delayMs });
    await sleep(delayMs, signal);
  }
}
