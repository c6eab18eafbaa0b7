// Formatting: money in integer minor units (never through floating point), statuses, times.

import { timestampDate, type Timestamp, type Duration } from "@bufbuild/protobuf/wkt";
import {
  BulkItemStatus,
  BulkRefundState,
  RefundReason,
  RefundStatus,
} from "./gen/refunds/v1/refund_service_pb.js";

const digitsCache = new Map<string, number | null>();

/** The currency's minor-unit digits (2 for USD, 0 for JPY, 3 for KWD), or null if unknown. */
export function minorDigits(currency: string): number | null {
  const code = currency.toUpperCase();
  if (digitsCache.has(code)) return digitsCache.get(code) ?? null;
  let digits: number | null = null;
  try {
    digits = new Intl.NumberFormat("en", { style: "currency", currency: code }).resolvedOptions()
      .maximumFractionDigits ?? null;
  } catch {
    digits = null;
  }
  digitsCache.set(code, digits);
  return digits;
}

/** `minor` as an exact decimal string in major units: 12345n, 2 → "123.45". */
export function minorToDecimal(minor: bigint, digits: number): string {
  const negative = minor < 0n;
  const abs = negative ? -minor : minor;
  const scale = 10n ** BigInt(digits);
  const whole = (abs / scale).toString();
  const fraction = digits > 0 ? "." + (abs % scale).toString().padStart(digits, "0") : "";
  return `${negative ? "-" : ""}${whole}${fraction}`;
}

/** "$123.45": the amount in minor units of `currency`, formatted for the operator's locale. */
export function formatMoney(minor: bigint | number | undefined, currency: string): string {
  if (minor === undefined) return `all that remains (${currency})`;
  const value = typeof minor === "bigint" ? minor : BigInt(minor);
  const digits = minorDigits(currency);
  if (digits === null) return `${value.toString()} ${currency} (minor units)`;
  const decimal = minorToDecimal(value, digits) as Intl.StringNumericLiteral;
  return new Intl.NumberFormat(undefined, {
    style: "currency",
    currency: currency.toUpperCase(),
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  }).format(decimal);
}

const integer = new Intl.NumberFormat();
export function formatCount(n: number | bigint): string {
  return integer.format(n);
}

/** REFUND_STATUS_SUCCEEDED → "SUCCEEDED" (the names the API documents). */
function enumName(e: Record<number, string>, prefix: string, value: number): string {
  const name = e[value];
  if (!name) return `UNKNOWN (${value})`;
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase().replace(prefix, "");
}

export const refundStatusName = (s: RefundStatus): string => enumName(RefundStatus, "REFUND_STATUS_", s);
export const itemStatusName = (s: BulkItemStatus): string => enumName(BulkItemStatus, "BULK_ITEM_STATUS_", s);
export const batchStateName = (s: BulkRefundState): string => enumName(BulkRefundState, "BULK_REFUND_STATE_", s);
export const reasonName = (r: RefundReason): string => enumName(RefundReason, "REFUND_REASON_", r);

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

export function formatTimestamp(ts: Timestamp | undefined): string {
  return ts ? dateTime.format(timestampDate(ts)) : "—";
}

export function formatTime(date: Date): string {
  return timeOnly.format(date);
}

export function isoTimestamp(ts: Timestamp | undefined): string {
  return ts ? timestampDate(ts).toISOString() : "";
}

/** A duration for people: "4.2 s", "3 min 20 s", "1 h 5 min". */
export function formatSeconds(totalSeconds: number): string {
  if (!Number.isFinite(totalSeconds) || totalSeconds < 0) return "—";
  if (totalSeconds < 10) return `${totalSeconds.toFixed(1)} s`;
  const s = Math.round(totalSeconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function durationSeconds(d: Duration | undefined): number | null {
  if (!d) return null;
  return Number(d.seconds) + d.nanos / 1e9;
}
