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
            out.write_record(kept.iter().map(|&i| &headers[i]).chain(DEAD_LETTER_COLUMNS))?;
            for (&index, result) in failures {
                let row = rows
                    .get(index)
                    .with_context(|| format!("job {index} has no row in the file"))?;
                let original = kept
                    .iter()
                    .map(|&i| row.record.get(i).unwrap_or_default().to_owned());
                out.write_record(original.chain(error_columns(result)))?;
            }
        }
        Source::Results => {
            out.write_record(
                ["payment_id", "provider", "currency", "amount"]
                    .into_iter()
                    .chain(DEAD_LETTER_COLUMNS),
            )?;
            for result in failures.values() {
                // Only a refund tells the amount and currency; the request's are not in the
                // results.
                let (currency, amount) = result
                    .refund
                    .as_ref()
                    .map(|r| (r.currency.clone(), r.amount.to_string()))
                    .unwrap_or_default();
                let fields = [
                    result.payment_id.clone(),
                    result.provider.clone(),
                    currency,
                    amount,
                ];
                out.write_record(fields.into_iter().chain(error_columns(result)))?;
            }
        }
    }
    Ok(())
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
