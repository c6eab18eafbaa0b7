// The service's own rules for one refund request, ported from `NewRefund::parse` and the types it
// uses (`src/domain/request.rs`, `src/domain/money.rs`): the same checks, in the same order, with
// the same descriptions, so that the console refuses exactly what the CLI and the server refuse.

/** One thing wrong with one field of a request (Rust `FieldViolation`). */
export interface FieldViolation {
  field: string;
  description: string;
}

/** The request before any field is checked (Rust `RawRefundRequest`, the reason aside). */
export interface RawRefundRequest {
  paymentId: string;
  provider: string;
  amount: bigint | undefined;
  currency: string;
  reasonDetail: string;
  metadata: Map<string, string>;
  idempotencyKey: string;
}

export const MAX_PAYMENT_ID_LEN = 255;
export const MAX_PROVIDER_LEN = 64;
export const MAX_IDEMPOTENCY_KEY_LEN = 255;
export const MAX_REASON_DETAIL_LEN = 500;
export const MAX_METADATA_ENTRIES = 50;
export const MAX_METADATA_KEY_LEN = 40;
export const MAX_METADATA_VALUE_LEN = 500;
/** `MAX_AMOUNT`: 10^15 minor units. */
export const MAX_AMOUNT = 1_000_000_000_000_000n;
export const I64_MAX = 9_223_372_036_854_775_807n;
export const I64_MIN = -9_223_372_036_854_775_808n;

/**
 * The ISO 4217 codes the service accepts: every code of the `iso_currency` crate (0.7.1, its
 * `isodata.tsv`), which `Currency::parse` looks codes up in. The corpus test checks this list
 * against `tests/fixtures/bulk-csv/iso4217-codes.json`, which the Rust test checks against the
 * crate for every three-letter code.
 */
export const ISO_4217_CODES: ReadonlySet<string> = new Set(
  (
    "AED AFN ALL AMD XCG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN " +
    "BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP " +
    "ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IQD IRR " +
    "ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD " +
    "MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR " +
    "PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL " +
    "THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAD " +
    "XAF XAG XAU XBA XBB XBC XBD XCD XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWL ZWG"
  ).split(" "),
);

// --- Rust string semantics -------------------------------------------------------------------

const encoder = new TextEncoder();

/** `str::len`: the length in UTF-8 bytes. */
export function utf8Len(s: string): number {
  return encoder.encode(s).length;
}

/** `str::chars().count()`: the number of Unicode scalar values (not UTF-16 units). */
export function charCount(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/**
 * `char::is_whitespace` (the Unicode White_Space property). Not JavaScript's `trim`, which also
 * strips U+FEFF and keeps U+0085.
 */
function isRustWhitespace(c: number): boolean {
  return (
    (c >= 0x09 && c <= 0x0d) ||
    c === 0x20 ||
    c === 0x85 ||
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000
  );
}

/** `str::trim`. Every White_Space character is in the BMP, so UTF-16 units suffice. */
export function rustTrim(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && isRustWhitespace(s.charCodeAt(start))) start++;
  while (end > start && isRustWhitespace(s.charCodeAt(end - 1))) end--;
  return s.slice(start, end);
}

/** `str::to_ascii_lowercase`. */
export function asciiLower(s: string): string {
  return s.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/** `str::to_ascii_uppercase`. */
export function asciiUpper(s: string): string {
  return s.replace(/[a-z]/g, (c) => c.toUpperCase());
}

/** Rust's string order (`BTreeMap<String, _>`): by UTF-8 bytes, i.e. by code point. */
export function compareRustStrings(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i]!.codePointAt(0)! - y[i]!.codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

const GRAPHEME_EXTEND = /^\p{Grapheme_Extend}$/u;
// `core::unicode::printable`: a character is shown as `\u{…}` when its category is one of these
// (the space aside).
const NOT_PRINTABLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]$/u;

/**
 * `format!("{s:?}")` for a string: in double quotes, with `\"`, `\\`, `\n`, `\r`, `\t`, `\0`,
 * and `\u{hex}` for grapheme extenders and characters that are not printable. (The Unicode
 * version of the tables may differ between Rust's and the browser's for rare characters.)
 */
export function rustDebug(s: string): string {
  let out = '"';
  for (const ch of s) {
    switch (ch) {
      case '"':
        out += '\\"';
        continue;
      case "\\":
        out += "\\\\";
        continue;
      case "\n":
        out += "\\n";
        continue;
      case "\r":
        out += "\\r";
        continue;
      case "\t":
        out += "\\t";
        continue;
      case "\0":
        out += "\\0";
        continue;
    }
    const cp = ch.codePointAt(0)!;
    if (cp >= 0x20 && cp < 0x7f) {
      out += ch;
    } else if (GRAPHEME_EXTEND.test(ch) || (NOT_PRINTABLE.test(ch) && ch !== " ")) {
      out += `\\u{${cp.toString(16)}}`;
    } else {
      out += ch;
    }
  }
  return out + '"';
}

// --- the field rules -------------------------------------------------------------------------

/** `PaymentRef::parse`. */
export function checkPaymentId(s: string): string | null {
  if (s === "") return "payment_id is required";
  if (utf8Len(s) > MAX_PAYMENT_ID_LEN) return `payment_id is longer than ${MAX_PAYMENT_ID_LEN} bytes`;
  if (!/^[A-Za-z0-9_\-.:]*$/.test(s)) return "payment_id may contain only letters, digits and _ - . :";
  return null;
}

/** `ProviderName::parse`. */
export function checkProvider(s: string): string | null {
  const valid = s !== "" && utf8Len(s) <= MAX_PROVIDER_LEN && /^[a-z0-9_-]*$/.test(s);
  return valid ? null : `provider must be 1 to ${MAX_PROVIDER_LEN} lower-case letters, digits, _ or -`;
}

/** `Amount::new` (`AmountError`'s messages). */
export function checkAmount(n: bigint): string | null {
  if (n <= 0n) return `amount must be greater than zero, got ${n}`;
  if (n > MAX_AMOUNT) return `amount must be at most ${MAX_AMOUNT}, got ${n}`;
  return null;
}

/** `Currency::parse` (`CurrencyError`'s message). */
export function checkCurrency(code: string): string | null {
  const upper = asciiUpper(rustTrim(code));
  if (utf8Len(upper) !== 3 || !ISO_4217_CODES.has(upper)) {
    return `${rustDebug(code)} is not an ISO 4217 currency code (e.g. USD, EUR, JPY)`;
  }
  return null;
}

/** `IdempotencyKey::parse`: 1 to 255 printable ASCII characters (`is_ascii_graphic`). */
export function checkIdempotencyKey(s: string): string | null {
  if (s === "" || utf8Len(s) > MAX_IDEMPOTENCY_KEY_LEN || !/^[\x21-\x7e]*$/.test(s)) {
    return `idempotency_key must be 1 to ${MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces`;
  }
  return null;
}

/** `parse_metadata`: entries in key order (a `BTreeMap`'s). */
function checkMetadata(metadata: Map<string, string>, v: FieldViolation[]): void {
  if (metadata.size > MAX_METADATA_ENTRIES) {
    v.push({
      field: "metadata",
      description: `metadata has ${metadata.size} entries; at most ${MAX_METADATA_ENTRIES} are allowed`,
    });
  }
  const keys = [...metadata.keys()].sort(compareRustStrings);
  for (const key of keys) {
    const value = metadata.get(key)!;
    if (key === "" || charCount(key) > MAX_METADATA_KEY_LEN) {
      v.push({
        field: `metadata[${key}]`,
        description: `metadata keys must be 1 to ${MAX_METADATA_KEY_LEN} characters`,
      });
    }
    if (charCount(value) > MAX_METADATA_VALUE_LEN) {
      v.push({
        field: `metadata[${key}]`,
        description: `metadata values must be at most ${MAX_METADATA_VALUE_LEN} characters`,
      });
    }
  }
}

/**
 * `NewRefund::parse` with an empty field prefix: every violation, in the Rust order. The reason
 * is not checked here (the CSV reader checks it itself); an empty provider is the default one.
 */
export function refundViolations(raw: RawRefundRequest): FieldViolation[] {
  const v: FieldViolation[] = [];
  const check = (field: string, problem: string | null) => {
    if (problem !== null) v.push({ field, description: problem });
  };
  check("payment_id", checkPaymentId(raw.paymentId));
  if (raw.provider !== "") check("provider", checkProvider(raw.provider));
  if (raw.amount !== undefined) check("amount", checkAmount(raw.amount));
  if (raw.currency === "") {
    v.push({ field: "currency", description: "currency is required (ISO 4217, e.g. USD)" });
  } else {
    check("currency", checkCurrency(raw.currency));
  }
  if (charCount(raw.reasonDetail) > MAX_REASON_DETAIL_LEN) {
    v.push({
      field: "reason_detail",
      description: `reason_detail must be at most ${MAX_REASON_DETAIL_LEN} characters`,
    });
  }
  checkMetadata(raw.metadata, v);
  if (raw.idempotencyKey !== "") check("idempotency_key", checkIdempotencyKey(raw.idempotencyKey));
  return v;
}
