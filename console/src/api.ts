// The service's client over gRPC-Web (same origin as the console), the API key kept for the
// browser tab (sessionStorage only), and errors turned into what an operator can act on.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { RefundService } from "./gen/refunds/v1/refund_service_pb.js";

const KEY_STORAGE = "refund-console.api-key";

/** The API key of this tab, in sessionStorage: gone when the tab closes, never in localStorage. */
export const session = {
  key(): string | null {
    try {
      return window.sessionStorage.getItem(KEY_STORAGE);
    } catch {
      return null;
    }
  },
  signIn(key: string): void {
    window.sessionStorage.setItem(KEY_STORAGE, key);
  },
  signOut(): void {
    window.sessionStorage.removeItem(KEY_STORAGE);
  },
};

const bearer: Interceptor = (next) => async (req) => {
  const key = session.key();
  if (key && !req.header.has("authorization")) req.header.set("authorization", `Bearer ${key}`);
  return next(req);
};

export type RefundClient = Client<typeof RefundService>;

export const client: RefundClient = createClient(
  RefundService,
  createGrpcWebTransport({
    baseUrl: window.location.origin,
    useBinaryFormat: true,
    interceptors: [bearer],
  }),
);

/** `PERMISSION_DENIED` for Code.PermissionDenied: the names the server and the CLI print. */
export function codeName(code: Code): string {
  const name = Code[code] ?? `CODE_${code}`;
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** An error as the console shows it. */
export interface Problem {
  code: Code;
  /** `NOT_FOUND`, `PERMISSION_DENIED`, … */
  codeName: string;
  /** The google.rpc.ErrorInfo reason (domain refunds.v1), e.g. SELF_APPROVAL. */
  reason: string | null;
  /** The server's own message. */
  message: string;
  /** What it means for the operator, when the console knows. */
  explanation: string | null;
  /** BadRequest field violations (INVALID_ARGUMENT). */
  violations: { field: string; description: string }[];
  /** RetryInfo: when it is worth trying again, in ms. */
  retryAfterMs: number | null;
  /** ErrorInfo metadata (e.g. remaining_amount for OVER_REFUND). */
  metadata: Record<string, string>;
}

const EXPLANATIONS: Record<string, string> = {
  SELF_APPROVAL: "You created this refund; another key must approve it.",
  NOT_AWAITING_APPROVAL: "This refund is no longer waiting for approval: another operator approved or rejected it.",
  MISSING_SCOPE: "This API key does not have the scope this action needs.",
  OVER_REFUND: "The amount is more than what remains refundable on the payment.",
  ALREADY_REFUNDED: "Nothing remains to refund on this payment.",
  PAYMENT_NOT_REFUNDABLE: "The payment cannot be refunded (not captured).",
  IDEMPOTENCY_KEY_REUSED:
    "This batch key was already used for other jobs or other options (abort on error, concurrency). Re-send with the original options to re-attach, or give a new batch key to start a new run (which refunds its rows again).",
  PROVIDER_UNAVAILABLE: "The payment provider is unavailable; nothing was stored. Try again later.",
  CAPTURE_NOT_NOTIFIED: "The provider has not notified a capture for this payment yet.",
};

const CODE_EXPLANATIONS: Partial<Record<Code, string>> = {
  [Code.Unauthenticated]: "The API key was refused (unknown or revoked). Sign in again.",
  [Code.NotFound]: "Not found (or it belongs to another account).",
  [Code.ResourceExhausted]: "Too many requests with this key; wait a moment.",
  [Code.Unavailable]: "The service cannot be reached right now.",
};

export function problem(err: unknown): Problem {
  const e = ConnectError.from(err);
  const info = e.findDetails(ErrorInfoSchema).find((i) => i.domain === "refunds.v1") ?? e.findDetails(ErrorInfoSchema)[0];
  const bad = e.findDetails(BadRequestSchema)[0];
  const retry = e.findDetails(RetryInfoSchema)[0];
  const reason = info?.reason || null;
  let retryAfterMs: number | null = null;
  if (retry?.retryDelay) {
    retryAfterMs = Number(retry.retryDelay.seconds) * 1000 + Math.round(retry.retryDelay.nanos / 1e6);
  }
  return {
    code: e.code,
    codeName: codeName(e.code),
    reason,
    message: e.rawMessage,
    explanation: (reason && EXPLANATIONS[reason]) || CODE_EXPLANATIONS[e.code] || null,
    violations: (bad?.fieldViolations ?? []).map((v) => ({ field: v.field, description: v.description })),
    retryAfterMs,
    metadata: info ? { ...info.metadata } : {},
  };
}

/** Errors of the connection rather than answers of the service: worth re-opening a stream for. */
export function transient(code: Code): boolean {
  return (
    code === Code.Unavailable ||
    code === Code.Unknown ||
    code === Code.Canceled ||
    code === Code.DeadlineExceeded ||
    code === Code.Internal
  );
}

type UnauthenticatedHandler = (message: string) => void;
let onUnauthenticated: UnauthenticatedHandler = () => {};

/** Set by the app: where an UNAUTHENTICATED answer sends the operator (back to sign-in). */
export function setUnauthenticatedHandler(handler: UnauthenticatedHandler): void {
  onUnauthenticated = handler;
}

/**
 * Returns the problem, or null after handing an UNAUTHENTICATED answer to the sign-in view.
 * Views call this in their catch blocks.
 */
export function triage(err: unknown): Problem | null {
  return triageProblem(problem(err));
}

export function triageProblem(p: Problem): Problem | null {
  if (p.code === Code.Unauthenticated) {
    onUnauthenticated(`${p.codeName}: ${p.message}`);
    return null;
  }
  return p;
}

export function isAbort(err: unknown, signal?: AbortSignal): boolean {
  if (signal?.aborted) return true;
  return err instanceof DOMException && err.name === "AbortError";
}

export { Code, ConnectError };
