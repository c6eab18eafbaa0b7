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
}
