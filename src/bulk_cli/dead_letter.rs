//! The dead-letter file: every row whose job did not succeed, in file order, with why.
//!
//! Its extra columns are ones the input reader ignores, so the file can be corrected and sent
//! again with `--file` as it is.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

use super::input::{DEAD_LETTER_COLUMNS, Row};
use crate::api::pb;

/// Where the rows of the dead-letter file come from.
pub(super) enum Source<'a> {
    /// The original rows, as they were in the file.
    File {
        headers: &'a csv::StringRecord,
        rows: &'a [Row],
    },
    /// No file (`--resume` alone): what the results tell.
    Results,
}

/// Writes `failures` (keyed by row index: the position in the file, or the job index without a
/// file) to `path`.
pub(super) fn write(
    path: &Path,
    source: &Source<'_>,
    failures: &BTreeMap<usize, pb::BulkJobResult>,
) -> anyhow::Result<()> {
    let mut out = csv::Writer::from_path(path)
        .with_context(|| format!("cannot create the dead-letter file {}", path.display()))?;
    write_rows(&mut out, source, failures)
        .and_then(|()| Ok(out.flush()?))
        .with_context(|| format!("cannot write the dead-letter file {}", path.display()))
}

fn write_rows(
    out: &mut csv::Writer<std::fs::File>,
    source: &Source<'_>,
    failures: &BTreeMap<usize, pb::BulkJobResult>,
) -> anyhow::Result<()> {
    match source {
        Source::File { headers, rows } => {
            // A dead-letter file sent again already has the error columns: replace them.
            let kept: Vec<usize> = (0..headers.len())
                .filter(|&i| {
                    !DEAD_LETTER_COLUMNS.contains(&headers[i].to_ascii_lowercase().as_str())
                })
                .collect();
            // The key each job was sent with goes into the row (a column of its own when the
            // file had none), so that sending the file again replays a refund that exists
            // instead of making a second one.
            let key_column = kept
                .iter()
                .position(|&i| headers[i].eq_ignore_ascii_case("idempotency_key"));
            let added_key = key_column.is_none().then_some("idempotency_key");
            out.write_record(
                kept.iter()
                    .map(|&i| &headers[i])
                    .chain(added_key)
                    .chain(DEAD_LETTER_COLUMNS),
            )?;
            for (&index, result) in failures {
                let row = rows
                    .get(index)
                    .with_context(|| format!("job {index} has no row in the file"))?;
                let key = resend_key(&row.job.idempotency_key, result);
                let mut original: Vec<String> = kept
                    .iter()
                    .map(|&i| row.record.get(i).unwrap_or_default().to_owned())
                    .collect();
                match key_column.and_then(|k| original.get_mut(k)) {
                    // The file's own key, unless the row had none and its job used a derived one.
                    Some(cell) if cell.is_empty() => *cell = key,
                    Some(_) => {}
                    None => original.push(key),
                }
                out.write_record(original.into_iter().chain(error_columns(result)))?;
            }
        }
        Source::Results => {
            // The jobs as the server accepted them; a job refused by validation has only what
            // its result tells.
            let metadata_keys: std::collections::BTreeSet<&str> = failures
                .values()
                .filter_map(|r| r.job.as_ref())
                .flat_map(|j| j.metadata.keys().map(String::as_str))
                .collect();
            out.write_record(
                [
                    "payment_id",
                    "provider",
                    "currency",
                    "amount",
                    "reason",
                    "reason_detail",
                    "idempotency_key",
                ]
                .into_iter()
                .map(str::to_owned)
                .chain(metadata_keys.iter().map(|k| format!("metadata.{k}")))
                .chain(DEAD_LETTER_COLUMNS.map(str::to_owned)),
            )?;
            for result in failures.values() {
                let job = result
                    .job
                    .clone()
                    .unwrap_or_else(|| pb::CreateRefundRequest {
                        payment_id: result.payment_id.clone(),
                        provider: result.provider.clone(),
                        ..Default::default()
                    });
                let fields = [
                    job.payment_id,
                    job.provider,
                    job.currency,
                    job.amount.map(|a| a.to_string()).unwrap_or_default(),
                    reason_name(job.reason),
                    job.reason_detail,
                    resend_key(&job.idempotency_key, result),
                ];
                let metadata = metadata_keys
                    .iter()
                    .map(|k| job.metadata.get(*k).cloned().unwrap_or_default());
                out.write_record(
                    fields
                        .into_iter()
                        .chain(metadata)
                        .chain(error_columns(result)),
                )?;
            }
        }
    }
    Ok(())
}

/// The key a dead-letter row is sent again with: the one its job was sent with, so that a
/// refund that exists (or may: PENDING, or a result that could not be told) is replayed, never
/// made twice. Only a refund the provider failed or that was canceled — nothing was refunded —
/// gets none, so that sending the row again makes a new attempt.
fn resend_key(sent_with: &str, result: &pb::BulkJobResult) -> String {
    let nothing_done = result.refund.as_ref().is_some_and(|r| {
        matches!(
            pb::RefundStatus::try_from(r.status),
            Ok(pb::RefundStatus::Failed | pb::RefundStatus::Canceled)
        )
    });
    if nothing_done {
        String::new()
    } else {
        sent_with.to_owned()
    }
}

/// `error_code`, `error_message`, `retryable`, `status`.
fn error_columns(result: &pb::BulkJobResult) -> [String; 4] {
    let failed_refund = result.refund.as_ref();
    let (code, message, retryable) = match &result.error {
        Some(e) => (e.code.clone(), e.message.clone(), e.retryable),
        // A refund the provider rejected carries its own reason.
        None => (
            failed_refund
                .map(|r| r.failure_code.clone())
                .unwrap_or_default(),
            failed_refund
                .map(|r| r.failure_reason.clone())
                .unwrap_or_default(),
            false,
        ),
    };
    [
        code,
        message,
        retryable.to_string(),
        status_name(result.status),
    ]
}

/// A reason as the input file spells it (`requested_by_customer`); empty for none.
fn reason_name(reason: i32) -> String {
    match pb::RefundReason::try_from(reason) {
        Ok(pb::RefundReason::Unspecified) | Err(_) => String::new(),
        Ok(r) => r
            .as_str_name()
            .trim_start_matches("REFUND_REASON_")
            .to_ascii_lowercase(),
    }
}

/// `failed`, `skipped`, `canceled`, …: the proto name without its prefix, in lower case.
pub(super) fn status_name(status: i32) -> String {
    pb::BulkItemStatus::try_from(status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("BULK_ITEM_STATUS_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("status {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: u64, fields: &[&str], key: &str) -> Row {
        Row {
            line,
            record: csv::StringRecord::from(fields.to_vec()),
            job: pb::CreateRefundRequest {
                idempotency_key: key.to_owned(),
                ..Default::default()
            },
        }
    }

    fn failed_job(refund_status: Option<pb::RefundStatus>) -> pb::BulkJobResult {
        pb::BulkJobResult {
            status: pb::BulkItemStatus::Failed.into(),
            refund: refund_status.map(|s| pb::Refund {
                id: "rf_1".into(),
                status: s.into(),
                ..Default::default()
            }),
            error: refund_status.is_none().then(|| pb::BulkJobError {
                code: "INTERNAL".into(),
                message: "the result could not be written".into(),
                retryable: true,
            }),
            ..Default::default()
        }
    }

    /// Defect: a row without a key of its own was sent with the derived `<key>:line-N`, but its
    /// dead-letter row left the key out, so sending the dead-letter file again — the documented
    /// way to retry — made a new refund even where the first one existed. The row keeps its key,
    /// unless its refund failed at the provider (nothing was done; a retry needs a new key).
    #[test]
    fn dead_letter_rows_keep_the_key_their_job_was_sent_with_unless_the_refund_failed() {
        let headers = csv::StringRecord::from(vec!["payment_id", "currency"]);
        let rows = [
            row(2, &["ch_1", "USD"], "run:line-2"),
            row(3, &["ch_2", "USD"], "run:line-3"),
        ];
        let failures = BTreeMap::from([
            (0, failed_job(None)),
            (1, failed_job(Some(pb::RefundStatus::Failed))),
        ]);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dead.csv");
        write(
            &path,
            &Source::File {
                headers: &headers,
                rows: &rows,
            },
            &failures,
        )
        .expect("write");
        let mut read = csv::Reader::from_path(&path).expect("read");
        let head = read.headers().expect("headers").clone();
        let key = head
            .iter()
            .position(|h| h == "idempotency_key")
            .expect("an idempotency_key column");
        let keys: Vec<String> = read
            .records()
            .map(|r| r.expect("row")[key].to_owned())
            .collect();
        assert_eq!(keys, ["run:line-2", ""]);
    }

    // --- The corpus shared with the console's writer (console/src/deadLetter.ts) ---

    use serde_json::Value;

    fn text(v: &Value, name: &str) -> String {
        v.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// An enum field of protobuf JSON: its name, or its number (for values the enum lacks).
    fn enum_value(v: &Value, name: &str, from_name: fn(&str) -> Option<i32>) -> i32 {
        match v.get(name) {
            None => 0,
            Some(Value::String(s)) => from_name(s).unwrap_or_else(|| panic!("unknown {name} {s}")),
            Some(n) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or_else(|| panic!("{name}: {n}")),
        }
    }

    fn job_from_json(v: &Value) -> pb::CreateRefundRequest {
        pb::CreateRefundRequest {
            payment_id: text(v, "paymentId"),
            provider: text(v, "provider"),
            amount: v.get("amount").map(|a| {
                a.as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("an int64 text")
            }),
            currency: text(v, "currency"),
            reason: enum_value(v, "reason", |s| {
                pb::RefundReason::from_str_name(s).map(i32::from)
            }),
            reason_detail: text(v, "reasonDetail"),
            metadata: v
                .get("metadata")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            idempotency_key: text(v, "idempotencyKey"),
        }
    }

    /// The fields of a `BulkJobResult` the dead-letter file reads, from protobuf JSON.
    fn result_from_json(v: &Value) -> pb::BulkJobResult {
        pb::BulkJobResult {
            index: v
                .get("index")
                .and_then(Value::as_i64)
                .map_or(0, |i| i32::try_from(i).expect("an index")),
            payment_id: text(v, "paymentId"),
            provider: text(v, "provider"),
            status: enum_value(v, "status", |s| {
                pb::BulkItemStatus::from_str_name(s).map(i32::from)
            }),
            refund: v.get("refund").map(|r| pb::Refund {
                id: text(r, "id"),
                status: enum_value(r, "status", |s| {
                    pb::RefundStatus::from_str_name(s).map(i32::from)
                }),
                failure_code: text(r, "failureCode"),
                failure_reason: text(r, "failureReason"),
                ..Default::default()
            }),
            error: v.get("error").map(|e| pb::BulkJobError {
                code: text(e, "code"),
                message: text(e, "message"),
                retryable: e.get("retryable").and_then(Value::as_bool).unwrap_or(false),
            }),
            job: v.get("job").map(job_from_json),
            ..Default::default()
        }
    }

    /// Every case of `tests/fixtures/bulk-csv/dead-letter/`: `NAME.json` (`source`: the file's
    /// headers and rows, or null for the results alone; `failures`: `[index, BulkJobResult]`
    /// pairs) is written as `NAME.expected.csv`, byte for byte. The console's test writes the
    /// same cases with its own writer.
    #[test]
    fn the_shared_dead_letter_corpus_is_written_as_expected() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/bulk-csv/dead-letter");
        let mut cases: Vec<_> = std::fs::read_dir(&dir)
            .expect("the dead-letter corpus")
            .map(|e| e.expect("a corpus entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        cases.sort();
        assert!(cases.len() >= 2, "only {} cases", cases.len());
        let out = tempfile::tempdir().expect("temp dir");
        let mut wrong = Vec::new();
        for path in &cases {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("a file name");
            let case: Value =
                serde_json::from_str(&std::fs::read_to_string(path).expect("the case"))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let failures: BTreeMap<usize, pb::BulkJobResult> = case["failures"]
                .as_array()
                .expect("failures")
                .iter()
                .map(|pair| {
                    let index = pair[0].as_u64().expect("an index");
                    (
                        usize::try_from(index).expect("an index"),
                        result_from_json(&pair[1]),
                    )
                })
                .collect();
            let file = &case["source"];
            let headers;
            let rows: Vec<Row>;
            let source = if file.is_null() {
                Source::Results
            } else {
                let strings = |v: &Value| -> Vec<String> {
                    v.as_array()
                        .expect("a list")
                        .iter()
                        .map(|s| s.as_str().expect("a string").to_owned())
                        .collect()
                };
                headers = csv::StringRecord::from(strings(&file["headers"]));
                rows = file["rows"]
                    .as_array()
                    .expect("rows")
                    .iter()
                    .map(|r| Row {
                        line: r.get("line").and_then(Value::as_u64).unwrap_or(0),
                        record: csv::StringRecord::from(strings(&r["record"])),
                        job: job_from_json(r.get("job").unwrap_or(&Value::Null)),
                    })
                    .collect();
                Source::File {
                    headers: &headers,
                    rows: &rows,
                }
            };
            let written = out.path().join(format!("{name}.csv"));
            write(&written, &source, &failures).expect("write");
            let actual = std::fs::read_to_string(&written).expect("the written file");
            let expected = std::fs::read_to_string(dir.join(format!("{name}.expected.csv")))
                .expect("the expected file");
            if actual != expected {
                wrong.push(format!("{name}: wrote\n{actual}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    }
}
