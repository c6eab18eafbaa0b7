//! Reading the CSV file into refund jobs, checked with the service's own request rules, every
//! problem tied to the file line it is on (the header is line 1).

use std::fmt;

use crate::api::pb;
use crate::domain::{FieldViolation, NewRefund, ProviderName, RawRefundRequest, RefundReason};

/// Columns the dead-letter file adds. They are ignored on input, so that a dead-letter file can
/// be corrected and sent again as it is.
pub(super) const DEAD_LETTER_COLUMNS: [&str; 4] =
    ["error_code", "error_message", "retryable", "status"];

const EXPECTED_COLUMNS: &str = "payment_id, currency, amount, reason, reason_detail, provider, \
     idempotency_key or metadata.<key>";

/// At most this many problems are listed; a file with more is usually wholly wrong (e.g. the
/// wrong delimiter), and the first few say why.
const MAX_LISTED_PROBLEMS: usize = 20;

/// The file, parsed: its header and one job per row.
#[derive(Debug)]
pub(super) struct Input {
    /// The header row as written (trimmed).
    pub headers: csv::StringRecord,
    pub rows: Vec<Row>,
    /// The line each row had in releases before rows were numbered by physical line
    /// (`legacy_lines[i]` is `rows[i]`'s): the `csv` crate's `Position::line`, the count of `\n`
    /// before the byte where reading of the row began. A CRLF file's rows are a line early by
    /// it, a row after blank lines is at the first of them, and a file with bare `\r` endings is
    /// all line 1. Kept only to match what those releases sent (their derived `:line-N` keys
    /// and batch metadata); messages use [`Row::line`]. Beside the rows rather than in [`Row`],
    /// which the dead-letter writer's tests build from a line alone.
    pub legacy_lines: Vec<u64>,
}

#[derive(Debug)]
pub(super) struct Row {
    /// Line of the file the row starts on (a quoted field may span lines).
    pub line: u64,
    /// The row as read, for the dead-letter file.
    pub record: csv::StringRecord,
    pub job: pb::CreateRefundRequest,
}

/// Everything wrong with a file, each problem with its line.
#[derive(Debug)]
pub(super) struct InputError {
    file: String,
    /// `None` for problems of the whole file (e.g. no rows).
    problems: Vec<(Option<u64>, String)>,
    unlisted: usize,
}

impl InputError {
    fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            problems: Vec::new(),
            unlisted: 0,
        }
    }

    fn push(&mut self, line: Option<u64>, problem: impl Into<String>) {
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push((line, problem.into()));
        } else {
            self.unlisted += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (line, problem)) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match line {
                Some(line) => write!(f, "{} line {line}: {problem}", self.file)?,
                None => write!(f, "{}: {problem}", self.file)?,
            }
        }
        if self.unlisted > 0 {
            write!(f, "\n… and {} more problems", self.unlisted)?;
        }
        Ok(())
    }
}

impl std::error::Error for InputError {}

/// What a header names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    PaymentId,
    Currency,
    Amount,
    Reason,
    ReasonDetail,
    Provider,
    IdempotencyKey,
    Metadata(String),
    /// One of the dead-letter file's own columns.
    Ignored,
}

/// Parses a whole file. `file` names it in messages. Reports every problem (up to a limit), not
/// just the first, so that one round of fixes is usually enough.
pub(super) fn parse(file: &str, bytes: &[u8]) -> Result<Input, InputError> {
    let mut errors = InputError::new(file);
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(e) => {
            errors.push(Some(1), csv_problem(&e));
            return Err(errors);
        }
    };
    let columns = columns(&headers, &mut errors);
    if !errors.is_empty() {
        // Rows cannot be read without knowing what their columns are.
        return Err(errors);
    }

    let mut rows = Vec::new();
    let mut legacy_lines = Vec::new();
    let mut lines = Lines::new(bytes);
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let line = e.position().map(|p| lines.of(p));
                errors.push(line, csv_problem(&e));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| lines.of(p));
        let legacy_line = record.position().map_or(0, csv::Position::line);
        match job(&columns, &record) {
            Ok(job) => {
                rows.push(Row { line, record, job });
                legacy_lines.push(legacy_line);
            }
            Err(problems) => {
                for problem in problems {
                    errors.push(Some(line), problem);
                }
            }
        }
    }
    if errors.is_empty() && rows.is_empty() {
        errors.push(None, "has no rows to refund (only a header)");
    }
    if errors.is_empty() {
        Ok(Input {
            headers,
            rows,
            legacy_lines,
        })
    } else {
        Err(errors)
    }
}

/// The line of the file each record starts on, as an editor numbers it: `\r\n`, `\n` and a
/// lone `\r` each end a line, also inside quoted fields.
///
/// The `csv` crate's own `Position::line` will not do: it counts only `\n`, and where reading of
/// the record began, which is before the `\n` of a `\r\n` that ended the previous record and
/// before any blank lines. With it, a CRLF file's rows were each a line early, a file with bare
/// `\r` endings was all line 1, and two rows could share a line and so a derived
/// `<run key>:line-N` key. Lines are counted here instead, from the byte where reading began
/// (`Position::byte`), carried forward from one record to the next so that the file is scanned
/// once.
struct Lines<'a> {
    bytes: &'a [u8],
    /// How far line breaks have been counted.
    counted_to: usize,
    /// Line breaks in `bytes[..counted_to]`.
    breaks: u64,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            counted_to: 0,
            breaks: 0,
        }
    }

    /// The line of the record whose reading began at `position`: the line its first field is
    /// on, past the line terminators the reader skips first (the `\n` of a `\r\n` that ended the
    /// previous record, blank lines). Records must be asked about in file order.
    fn of(&mut self, position: &csv::Position) -> u64 {
        let bytes = self.bytes;
        let began = usize::try_from(position.byte()).map_or(bytes.len(), |b| b.min(bytes.len()));
        let skipped = bytes[began..]
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        // Never behind what is counted already (it cannot be, records come in order).
        let start = (began + skipped).max(self.counted_to);
        // `start` is never between the `\r` and `\n` of a `\r\n`: the terminators before it were
        // all skipped.
        let breaks = (self.counted_to..start)
            .filter(|&i| ends_line(bytes, i))
            .count();
        self.breaks += breaks as u64;
        self.counted_to = start;
        self.breaks + 1
    }
}

/// Whether a line ends at `bytes[i]`: a `\n`, or a `\r` not followed by one (a `\r\n` is one
/// line break, counted at its `\n`).
fn ends_line(bytes: &[u8], i: usize) -> bool {
    match bytes[i] {
        b'\n' => true,
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        _ => false,
    }
}

fn columns(headers: &csv::StringRecord, errors: &mut InputError) -> Vec<Column> {
    let mut columns = Vec::with_capacity(headers.len());
    let mut unknown = Vec::new();
    for (i, name) in headers.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        let column = match lower.as_str() {
            "payment_id" => Column::PaymentId,
            "currency" => Column::Currency,
            "amount" => Column::Amount,
            "reason" => Column::Reason,
            "reason_detail" => Column::ReasonDetail,
            "provider" => Column::Provider,
            "idempotency_key" => Column::IdempotencyKey,
            _ if DEAD_LETTER_COLUMNS.contains(&lower.as_str()) => Column::Ignored,
            // Metadata keys keep their case: they are passed on to the provider as written.
            _ if lower.starts_with("metadata.") => match name.get("metadata.".len()..) {
                Some(key) if !key.trim().is_empty() => Column::Metadata(key.trim().to_owned()),
                _ => {
                    errors.push(
                        Some(1),
                        format!("column {} ({name:?}) names no metadata key", i + 1),
                    );
                    continue;
                }
            },
            "" => {
                errors.push(Some(1), format!("column {} has no name", i + 1));
                continue;
            }
            _ => {
                unknown.push(format!("{name:?}"));
                continue;
            }
        };
        if column != Column::Ignored && columns.contains(&column) {
            errors.push(Some(1), format!("column {name:?} appears more than once"));
        }
        columns.push(column);
    }
    if !unknown.is_empty() {
        let noun = if unknown.len() == 1 {
            "column"
        } else {
            "columns"
        };
        errors.push(
            Some(1),
            format!(
                "unknown {noun} {}; expected {EXPECTED_COLUMNS}",
                unknown.join(", ")
            ),
        );
    }
    for (required, name) in [
        (Column::PaymentId, "payment_id"),
        (Column::Currency, "currency"),
    ] {
        if !columns.contains(&required) {
            errors.push(Some(1), format!("missing required column {name:?}"));
        }
    }
    columns
}

/// One row as a job, or everything wrong with it.
fn job(
    columns: &[Column],
    record: &csv::StringRecord,
) -> Result<pb::CreateRefundRequest, Vec<String>> {
    let mut problems = Vec::new();
    let mut raw = RawRefundRequest::default();
    let mut reason = pb::RefundReason::Unspecified;
    // The reader refuses rows with a different number of fields than the header, so the zip
    // covers every field.
    for (column, value) in columns.iter().zip(record.iter()) {
        match column {
            Column::PaymentId => raw.payment_id = value.to_owned(),
            Column::Currency => raw.currency = value.to_owned(),
            // Empty: refund whatever remains of the payment.
            Column::Amount if value.is_empty() => {}
            Column::Amount => match value.parse::<i64>() {
                Ok(n) => raw.amount = Some(n),
                Err(e) if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) => {
                    problems.push(format!("amount {value:?} is too large"));
                }
                Err(_) => problems.push(format!(
                    "amount {value:?} is not a whole number of minor units"
                )),
            },
            Column::Reason => match parse_reason(value) {
                Some(r) => reason = r,
                None => problems.push(format!(
                    "reason {value:?} is not one of duplicate, fraudulent, \
                     requested_by_customer, other (or empty)"
                )),
            },
            Column::ReasonDetail => raw.reason_detail = value.to_owned(),
            Column::Provider => raw.provider = value.to_owned(),
            Column::IdempotencyKey => raw.idempotency_key = value.to_owned(),
            // An empty cell means "no such entry" for this row, not an empty value.
            Column::Metadata(_) if value.is_empty() => {}
            Column::Metadata(key) => {
                raw.metadata.insert(key.clone(), value.to_owned());
            }
            Column::Ignored => {}
        }
    }
    // The reason was checked above (and is sent as parsed there); this only satisfies the rules.
    raw.reason = Some(RefundReason::Unspecified);
    // The service's own rules, so that a bad row stops the file before anything is sent rather
    // than failing as a job half-way through. The default provider is the server's to choose;
    // any name does here, as it is not sent.
    let any_provider = ProviderName::from_trusted("default".to_owned());
    if let Err(violations) = NewRefund::parse(raw.clone(), &any_provider, "") {
        problems.extend(violations.iter().map(violation_problem));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(pb::CreateRefundRequest {
        payment_id: raw.payment_id,
        provider: raw.provider,
        amount: raw.amount,
        currency: raw.currency,
        reason: reason.into(),
        reason_detail: raw.reason_detail,
        metadata: raw.metadata.into_iter().collect(),
        idempotency_key: raw.idempotency_key,
    })
}

fn parse_reason(value: &str) -> Option<pb::RefundReason> {
    Some(match value.to_ascii_lowercase().as_str() {
        "" | "unspecified" => pb::RefundReason::Unspecified,
        "duplicate" => pb::RefundReason::Duplicate,
        "fraudulent" => pb::RefundReason::Fraudulent,
        "requested_by_customer" => pb::RefundReason::RequestedByCustomer,
        "other" => pb::RefundReason::Other,
        _ => return None,
    })
}

/// A field violation in the file's terms, in one style (`amount "12.50" is not …`,
/// `currency "ZZZ" is not …`): `metadata[k]` is the column `metadata.k`, and the field is named
/// only when the description does not already start with it.
fn violation_problem(v: &FieldViolation) -> String {
    if let Some(key) = v
        .field
        .strip_prefix("metadata[")
        .and_then(|k| k.strip_suffix(']'))
    {
        return format!("metadata.{key}: {}", v.description);
    }
    if v.description.starts_with(v.field.as_str()) {
        v.description.clone()
    } else if v.description.starts_with('"') {
        // The description opens with the value it refuses.
        format!("{} {}", v.field, v.description)
    } else {
        format!("{}: {}", v.field, v.description)
    }
}

fn csv_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "has {len} {}, but the header has {expected_len}",
            if *len == 1 { "field" } else { "fields" }
        ),
        csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Input {
        parse("refunds.csv", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        parse("refunds.csv", text.as_bytes())
            .expect_err("should not parse")
            .to_string()
    }

    #[test]
    fn maps_columns_in_any_order_and_case() {
        let input = ok(
            "Currency,AMOUNT,payment_id,Reason,reason_detail,provider,idempotency_key\n\
             usd,1250,ch_1,Requested_By_Customer,late delivery,sandbox,order-1\n\
             EUR,,ch_2,,,,\n",
        );
        assert_eq!(input.rows.len(), 2);
        let first = &input.rows[0];
        assert_eq!(first.line, 2);
        assert_eq!(
            first.job,
            pb::CreateRefundRequest {
                payment_id: "ch_1".into(),
                provider: "sandbox".into(),
                amount: Some(1250),
                currency: "usd".into(),
                reason: pb::RefundReason::RequestedByCustomer.into(),
                reason_detail: "late delivery".into(),
                metadata: Default::default(),
                idempotency_key: "order-1".into(),
            }
        );
        let second = &input.rows[1].job;
        assert_eq!(second.amount, None, "an empty amount refunds the rest");
        assert_eq!(second.reason, i32::from(pb::RefundReason::Unspecified));
        assert_eq!(second.idempotency_key, "");
        assert_eq!(&input.headers[0], "Currency", "headers are kept as written");
    }

    #[test]
    fn metadata_columns_become_entries_and_empty_cells_are_skipped() {
        let input = ok("payment_id,currency,metadata.order_id,Metadata.Ticket\n\
             ch_1,USD,o-1,T-9\n\
             ch_2,USD,,T-10\n");
        let m = |i: usize| {
            let mut entries: Vec<_> = input.rows[i].job.metadata.clone().into_iter().collect();
            entries.sort();
            entries
        };
        assert_eq!(
            m(0),
            [
                ("Ticket".to_owned(), "T-9".to_owned()),
                ("order_id".to_owned(), "o-1".to_owned())
            ]
        );
        assert_eq!(m(1), [("Ticket".to_owned(), "T-10".to_owned())]);
    }

    #[test]
    fn fields_are_trimmed_and_a_byte_order_mark_is_ignored() {
        let input = ok("\u{feff}payment_id , currency\n ch_1 , USD \n");
        assert_eq!(input.rows[0].job.payment_id, "ch_1");
        assert_eq!(input.rows[0].job.currency, "USD");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let text = "payment_id,currency,amount\n\
                    ch_1,USD,100\n\
                    ch_2,USD,\n\
                    ch_3,USD,12.50\n";
        assert_eq!(
            err(text),
            r#"refunds.csv line 4: amount "12.50" is not a whole number of minor units"#
        );
    }

    #[test]
    fn line_numbers_count_quoted_line_breaks() {
        let text = "payment_id,currency,reason_detail,amount\n\
                    ch_1,USD,\"two\nlines\",1\n\
                    ch_2,USD,,x\n";
        assert!(err(text).starts_with("refunds.csv line 4: amount \"x\""));
        let input = ok("payment_id,currency,reason_detail\nch_1,USD,\"a\nb\"\nch_2,USD,\n");
        assert_eq!(
            input.rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            [2, 4]
        );
    }

    /// Defect: rows were numbered with the `csv` crate's `Position::line`, the count of `\n`
    /// where reading began, so a CRLF file's rows were one line early, every row of a file with
    /// bare `\r` endings was line 1 and a row after blank lines was at the first of them. The
    /// derived `<run key>:line-N` keys of two rows could then be the same.
    #[test]
    fn rows_are_numbered_with_the_physical_line_they_start_on_under_any_line_endings() {
        let lines = |text: &str| ok(text).rows.iter().map(|r| r.line).collect::<Vec<_>>();
        assert_eq!(
            lines("payment_id,currency\r\nch_1,USD\r\nch_2,USD\r\n"),
            [2, 3]
        );
        assert_eq!(lines("payment_id,currency\rch_1,USD\rch_2,USD\r"), [2, 3]);
        assert_eq!(
            lines("payment_id,currency\nch_1,USD\r\nch_2,USD\rch_3,USD"),
            [2, 3, 4]
        );
        assert_eq!(
            lines("payment_id,currency\n\nch_1,USD\r\n\r\n\rch_2,USD\r\r\nch_3,USD\n"),
            [3, 6, 8]
        );
        // A byte-order mark is no line; quoted line breaks count as any other.
        assert_eq!(
            lines(
                "\u{feff}payment_id,currency,reason_detail\r\nch_1,USD,\"a\rb\r\nc\"\r\nch_2,USD,\r\n"
            ),
            [2, 5]
        );
        // Errors of the reader itself (here a ragged row) are numbered the same way.
        assert_eq!(
            err("payment_id,currency\r\n\r\nch_1,USD\r\nch_2,USD,7\r\n"),
            "refunds.csv line 4: has 3 fields, but the header has 2"
        );
        assert_eq!(
            err("payment_id,currency\rch_1,USD\r\rch_2\r"),
            "refunds.csv line 4: has 1 field, but the header has 2"
        );
    }

    /// What releases before the physical numbering numbered each row: the `csv` crate's
    /// `Position::line`. Their derived row keys were made of it, so it must not change.
    #[test]
    fn rows_keep_the_line_earlier_releases_numbered_them_with() {
        let legacy = |text: &str| ok(text).legacy_lines;
        assert_eq!(legacy("payment_id,currency\nch_1,USD\nch_2,USD\n"), [2, 3]);
        // A line early under CRLF; at the first blank line before a row.
        assert_eq!(
            legacy("payment_id,currency\r\nch_1,USD\r\nch_2,USD\r\n"),
            [1, 2]
        );
        assert_eq!(
            legacy("payment_id,currency\n\n\nch_1,USD\n\nch_2,USD\n"),
            [2, 5]
        );
        // All line 1 under bare `\r`.
        assert_eq!(legacy("payment_id,currency\rch_1,USD\rch_2,USD\r"), [1, 1]);
        // One per row, rows with problems aside.
        let input = ok("payment_id,currency,reason_detail\r\nch_1,USD,\"a\nb\"\r\nch_2,USD,\r\n");
        assert_eq!(input.legacy_lines.len(), input.rows.len());
        assert_eq!(input.legacy_lines, [1, 3]);
    }

    #[test]
    fn every_bad_row_is_reported_with_the_service_rules() {
        let text = "payment_id,currency,amount,reason,metadata.k\n\
                    ch_1,XYZ,0,,\n\
                    ,USD,99999999999999999999,sorry,\n\
                    ch 3,USD,5,other,\n";
        let message = err(text);
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(
            lines,
            [
                r#"refunds.csv line 2: amount must be greater than zero, got 0"#,
                r#"refunds.csv line 2: currency "XYZ" is not an ISO 4217 currency code (e.g. USD, EUR, JPY)"#,
                r#"refunds.csv line 3: amount "99999999999999999999" is too large"#,
                r#"refunds.csv line 3: reason "sorry" is not one of duplicate, fraudulent, requested_by_customer, other (or empty)"#,
                r#"refunds.csv line 3: payment_id is required"#,
                r#"refunds.csv line 4: payment_id may contain only letters, digits and _ - . :"#,
            ],
            "{message}"
        );
    }

    #[test]
    fn metadata_violations_name_the_column() {
        let long = "v".repeat(501);
        let message = err(&format!(
            "payment_id,currency,metadata.note\nch_1,USD,{long}\n"
        ));
        assert_eq!(
            message,
            "refunds.csv line 2: metadata.note: metadata values must be at most 500 characters"
        );
    }

    #[test]
    fn header_problems_are_on_line_one() {
        assert_eq!(
            err("payment_id,amount\nch_1,100\n"),
            r#"refunds.csv line 1: missing required column "currency""#
        );
        assert_eq!(
            err("payment_id,currency,amt,Notes\nch_1,USD,1,x\n"),
            "refunds.csv line 1: unknown columns \"amt\", \"Notes\"; expected payment_id, \
             currency, amount, reason, reason_detail, provider, idempotency_key or metadata.<key>"
        );
        assert_eq!(
            err("payment_id,currency,Amount,amount\nch_1,USD,1,1\n"),
            r#"refunds.csv line 1: column "amount" appears more than once"#
        );
        assert_eq!(
            err("payment_id,currency,metadata.\nch_1,USD,1\n"),
            r#"refunds.csv line 1: column 3 ("metadata.") names no metadata key"#
        );
        assert_eq!(
            err("payment_id,currency,\nch_1,USD,\n"),
            "refunds.csv line 1: column 3 has no name"
        );
    }

    #[test]
    fn ragged_rows_and_empty_files_are_refused() {
        assert_eq!(
            err("payment_id,currency\nch_1,USD\nch_2,USD,7\n"),
            "refunds.csv line 3: has 3 fields, but the header has 2"
        );
        assert_eq!(
            err("payment_id,currency
ch_1
"),
            "refunds.csv line 2: has 1 field, but the header has 2"
        );
        assert_eq!(
            err("payment_id,currency\n"),
            "refunds.csv: has no rows to refund (only a header)"
        );
        assert_eq!(
            err(""),
            r#"refunds.csv line 1: missing required column "payment_id"
refunds.csv line 1: missing required column "currency""#
        );
    }

    #[test]
    fn a_dead_letter_file_reads_back_as_input() {
        let input = ok(
            "payment_id,currency,amount,error_code,error_message,retryable,status\n\
             ch_1,USD,100,NOT_FOUND,no such payment,false,failed\n",
        );
        assert_eq!(input.rows[0].job.payment_id, "ch_1");
        assert_eq!(input.rows[0].job.amount, Some(100));
    }

    #[test]
    fn the_number_of_listed_problems_is_capped() {
        let mut text = "payment_id,currency,amount\n".to_owned();
        for i in 0..25 {
            text.push_str(&format!("ch_{i},USD,x\n"));
        }
        let message = err(&text);
        assert_eq!(message.lines().count(), MAX_LISTED_PROBLEMS + 1);
        assert!(message.ends_with("… and 5 more problems"), "{message}");
    }

    // --- The corpus shared with the console's reader (console/src/csv.ts) ---

    use std::path::{Path, PathBuf};

    use serde_json::{Value, json};

    fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bulk-csv")
    }

    /// A job as protobuf JSON in its canonical proto3 form (fields left out at their default
    /// value), as the console's test writes it with `toJson`.
    fn job_json(job: &pb::CreateRefundRequest) -> Value {
        let mut m = serde_json::Map::new();
        let mut text = |name: &str, value: &str| {
            if !value.is_empty() {
                m.insert(name.to_owned(), json!(value));
            }
        };
        text("paymentId", &job.payment_id);
        text("provider", &job.provider);
        text("currency", &job.currency);
        text("reasonDetail", &job.reason_detail);
        text("idempotencyKey", &job.idempotency_key);
        if let Some(amount) = job.amount {
            m.insert("amount".to_owned(), json!(amount.to_string()));
        }
        if job.reason != 0 {
            let name = pb::RefundReason::try_from(job.reason)
                .map_or_else(|_| json!(job.reason), |r| json!(r.as_str_name()));
            m.insert("reason".to_owned(), name);
        }
        if !job.metadata.is_empty() {
            m.insert("metadata".to_owned(), json!(job.metadata));
        }
        Value::Object(m)
    }

    /// Every case of `tests/fixtures/bulk-csv/`: `NAME.csv` read as `refunds.csv` gives
    /// `NAME.expected.json`, either `{"problems": [...]}` (the message's lines) or
    /// `{"headers": [...], "rows": [{"line", "record", "job"}]}`. The console's test reads the
    /// same files, so the two readers accept and refuse the same files with the same words.
    #[test]
    fn the_shared_corpus_reads_as_expected() {
        let dir = corpus_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("the corpus directory")
            .map(|e| e.expect("a corpus entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 40,
            "only {} cases in {}",
            files.len(),
            dir.display()
        );
        let mut wrong = Vec::new();
        for path in &files {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("a file name");
            let expected_path = dir.join(format!("{name}.expected.json"));
            let expected: Value = serde_json::from_str(
                &std::fs::read_to_string(&expected_path)
                    .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display())),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
            let bytes = std::fs::read(path).expect("the case's input");
            match parse("refunds.csv", &bytes) {
                Ok(input) => {
                    let actual = json!({
                        "headers": input.headers.iter().collect::<Vec<_>>(),
                        "rows": input.rows.iter().map(|r| json!({
                            "line": r.line,
                            "record": r.record.iter().collect::<Vec<_>>(),
                            "job": job_json(&r.job),
                        })).collect::<Vec<_>>(),
                    });
                    if expected.get("headers") != Some(&actual["headers"])
                        || expected.get("rows") != Some(&actual["rows"])
                    {
                        wrong.push(format!("{name}: read as {actual:#}"));
                    }
                }
                Err(e) => {
                    let lines: Option<Vec<&str>> = expected
                        .get("problems")
                        .and_then(Value::as_array)
                        .map(|p| p.iter().filter_map(Value::as_str).collect());
                    if lines.map(|l| l.join("\n")) != Some(e.to_string()) {
                        wrong.push(format!("{name}: refused with\n{e}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    }

    /// The console keeps its own copy of the service's currency table; the corpus's list is
    /// checked here against every three-letter code, and there against the console's copy.
    #[test]
    fn the_corpus_currency_list_is_the_services() {
        let path = corpus_dir().join("iso4217-codes.json");
        let codes: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("the code list"))
                .expect("a list of codes");
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'A'..=b'Z' {
                    let code = String::from_utf8(vec![a, b, c]).expect("ASCII");
                    assert_eq!(
                        crate::domain::Currency::parse(&code).is_ok(),
                        codes.contains(&code),
                        "{code}"
                    );
                }
            }
        }
    }
}
