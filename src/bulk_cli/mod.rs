//! `refund-service bulk`: refunds every row of a CSV file through the service's BulkRefund RPC,
//! with live progress, a dead-letter file of the rows that did not go through, and a summary.
//!
//! Why it works the way it does:
//! - **Re-running a file is safe.** Each batch's key is `--idempotency-key` or, by default, one
//!   derived from the SHA-256 of the file's bytes, plus `:part-N`. The service re-attaches a known
//!   key to its stored batch instead of running it again, so sending the same file twice (after a
//!   crash, by mistake, from another machine) streams the first run's results and refunds
//!   nothing more. Rows without an `idempotency_key` of their own get `<key>:line-N`, so even a
//!   batch made differently never refunds a row twice.
//! - **A bad file changes nothing.** The whole file is read and checked with the service's own
//!   request rules before the first request, and every problem is reported with its line.
//! - **Any size.** A file longer than `--batch-size` (the service's per-request limit) is sent as
//!   consecutive batches; results and the dead-letter file are mapped back to file lines.
//! - **Interruptions lose nothing.** Batches run on the server, not in this process: a dropped
//!   stream is re-opened after the last event seen, Ctrl-C stops watching (the batch keeps
//!   running) and prints how to resume, and `--resume` re-attaches from the first event.
//!
//! Exit status: 0 when every job succeeded; 1 when any failed, was skipped or canceled; 2 for
//! usage, file, connection and server errors; 130 when interrupted. [`BulkError`] carries it to
//! `main`.
//!
//! Unlike the rest of the crate outside `api`, this module uses tonic and the generated protobuf
//! types: it is a client of the service's gRPC API, not a part of the service.

mod dead_letter;
mod input;
mod progress;
mod stream;

pub(crate) use stream::Client;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use clap::Args;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::api::pb;
use crate::api::pb::refund_service_client::RefundServiceClient;
use dead_letter::Source;
use input::{Input, Row};
use progress::Progress;
use stream::{Event, Follower, Halt, Open};

/// The service's default gRPC address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
/// The service's default per-request limit (`serve --bulk-max-jobs`).
const DEFAULT_BATCH_SIZE: u32 = 10_000;
/// Longest `--idempotency-key`: room for the `:part-N` and `:line-N` suffixes within the
/// service's 255 characters.
const MAX_KEY_LEN: usize = 200;

#[derive(Debug, Args)]
pub struct BulkArgs {
    /// CSV file with a header row. Columns, in any order and case: payment_id and currency
    /// (required), amount (minor units; empty = all that remains), reason
    /// (duplicate|fraudulent|requested_by_customer|other), reason_detail, provider,
    /// idempotency_key, and metadata.<key> for metadata entries.
    #[arg(long, value_name = "PATH", required_unless_present = "resume")]
    pub file: Option<PathBuf>,

    /// The service's gRPC address.
    #[arg(long, env = "REFUND_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// API key with the bulk:write and refunds:read scopes (sent as `authorization: Bearer`).
    #[arg(long, env = "REFUND_API_KEY", hide_env_values = true)]
    pub api_key: String,

    /// Stop dispatching after the first job that fails; the remaining jobs end SKIPPED (and
    /// later batches of the file are not sent).
    #[arg(long, conflicts_with = "resume")]
    pub abort_on_error: bool,

    /// Jobs in flight at once on the server (default: the server's; capped by its
    /// --bulk-max-concurrency).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=2_147_483_647),
        conflicts_with = "resume"
    )]
    pub concurrency: Option<u32>,

    /// Names the run: the same key (and file) re-attaches to the batches already sent instead
    /// of refunding again; a new key starts a new run. Default: derived from the SHA-256 of the
    /// file, so re-running the same file is always safe. At most 200 printable characters.
    #[arg(long, value_name = "KEY", conflicts_with = "resume")]
    pub idempotency_key: Option<String>,

    /// Most jobs per BulkRefund request; longer files are sent as consecutive batches. At most
    /// the server's --bulk-max-jobs.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_BATCH_SIZE,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        conflicts_with = "resume"
    )]
    pub batch_size: u32,

    /// Where to write the rows that did not succeed, with error_code, error_message, retryable
    /// and status columns. Default: <file stem>.failed.csv beside the file (with --resume and no
    /// --file: <BULK_ID>.failed.csv). Written only when there is such a row.
    #[arg(long, value_name = "PATH")]
    pub dead_letter: Option<PathBuf>,

    /// Re-attach to a batch sent earlier (e.g. after an interruption) and follow it to the end.
    /// With --file, the dead-letter file gets the batch's rows as they are in the file.
    #[arg(long, value_name = "BULK_ID")]
    pub resume: Option<String>,
}

/// How `bulk` ended when not every job succeeded. `main` turns it into the exit status.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// Some jobs failed, were skipped or canceled; the summary and dead-letter file say which.
    #[error("{not_succeeded} of {total} jobs did not succeed")]
    JobsFailed { not_succeeded: u64, total: u64 },
    /// Ctrl-C (or SIGTERM) while following a batch, which keeps running on the server.
    #[error("interrupted; the batch keeps running on the server")]
    Interrupted,
    /// Bad usage, a bad file, no connection, or an error answer from the server.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl BulkError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::JobsFailed { .. } => 1,
            Self::Failed(_) => 2,
            // 128 + SIGINT, as shells report a command stopped by Ctrl-C.
            Self::Interrupted => 130,
        }
    }
}

/// Runs `bulk`. Errors are [`BulkError`]s.
pub async fn run(args: BulkArgs) -> anyhow::Result<()> {
    let interrupt = watch_interrupt();
    let outcome = match &args.resume {
        Some(bulk_id) => resume(&args, bulk_id, interrupt).await,
        None => send_file(&args, interrupt).await,
    };
    outcome.map_err(anyhow::Error::from)
}

/// Sends the file as one batch per `--batch-size` rows, one after another.
async fn send_file(args: &BulkArgs, interrupt: watch::Receiver<bool>) -> Result<(), BulkError> {
    let file = args
        .file
        .as_deref()
        .context("--file is required without --resume")?;
    let (mut input, bytes) = read_input(file)?;
    let run_key = match &args.idempotency_key {
        Some(key) => checked_key(key)?,
        None => derived_key(&bytes),
    };
    let numbering = Numbering::of(&input);
    derive_row_keys(&mut input, &run_key);
    let dead_letter_path = dead_letter_path(args, None)?;
    let client = connect(&args.server, &args.api_key, args.batch_size).await?;
    let mut follower = Follower::new(client, interrupt);

    let rows = &input.rows;
    let batch_size = usize::try_from(args.batch_size).unwrap_or(usize::MAX);
    let parts: Vec<&[Row]> = rows.chunks(batch_size).collect();
    let max_concurrency = args
        .concurrency
        .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX));
    let mut progress = Progress::new(rows.len() as u64);
    let mut tally = Tally::default();
    for (i, part) in parts.iter().enumerate() {
        let number = i + 1;
        let offset = i * batch_size;
        let first_line = part.first().map_or(0, |r| r.line);
        let last_line = part.last().map_or(0, |r| r.line);
        let span = offset..offset + part.len();
        let part_name = format!(
            "part {number} of {}, lines {first_line}-{last_line}",
            parts.len()
        );
        let request = pb::BulkRefundRequest {
            jobs: part.iter().map(|r| r.job.clone()).collect(),
            abort_on_error: args.abort_on_error,
            max_concurrency,
            idempotency_key: format!("{run_key}:part-{number}"),
            metadata: part_metadata(&input, numbering, span, number, parts.len())
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        let followed = follower
            .follow(Open::Create(request), |event| {
                match event {
                    Event::Accepted(a) => progress.note(&format!(
                        "{}: accepted {} jobs ({part_name})",
                        a.bulk_id, a.total
                    )),
                    Event::Result(result) => {
                        let index = offset + job_index(&result, part.len())?;
                        tally.result(index, *result, &mut progress);
                    }
                    Event::ProviderWaiting(wait) => progress.waiting(wait),
                    Event::ProviderWaitEnded(end) => progress.wait_ended(end),
                    Event::Reopening {
                        why,
                        attempt,
                        delay,
                    } => {
                        progress.note(&reopening(why, attempt, delay));
                    }
                }
                Ok(())
            })
            .await;
        let (bulk_id, summary) = match followed {
            Ok(done) => done,
            Err(halt) => {
                let more = (number < parts.len()).then_some(number + 1);
                return Err(halted(halt, &progress, args, more));
            }
        };
        tally.summary(bulk_id, &summary);
        let state = pb::BulkRefundState::try_from(summary.state);
        if let Ok(stopped @ (pb::BulkRefundState::Aborted | pb::BulkRefundState::Canceled)) = state
            && number < parts.len()
        {
            // The batch stopped early; the rest of the file stays unsent, as the rest of the
            // batch did.
            let (status, why) = if stopped == pb::BulkRefundState::Aborted {
                (
                    pb::BulkItemStatus::Skipped,
                    "was aborted after a failed job",
                )
            } else {
                (pb::BulkItemStatus::Canceled, "was canceled")
            };
            let rest = offset + part.len();
            progress.note(&format!(
                "{part_name} {why}; lines {} and after are not sent",
                rows.get(rest).map_or(0, |r| r.line)
            ));
            for (index, row) in rows.iter().enumerate().skip(rest) {
                tally.not_sent(
                    index,
                    row,
                    status,
                    &format!("not sent: an earlier batch {why}"),
                );
            }
            progress.add(status, (rows.len() - rest) as u64);
            break;
        }
    }
    progress.finish();
    let source = Source::File {
        headers: &input.headers,
        rows,
    };
    finish(&tally, &dead_letter_path, &source)
}

/// Follows a batch sent earlier from its first event.
async fn resume(
    args: &BulkArgs,
    bulk_id: &str,
    interrupt: watch::Receiver<bool>,
) -> Result<(), BulkError> {
    let mut input = match &args.file {
        Some(file) => Some(read_input(file)?.0),
        None => None,
    };
    let dead_letter_path = dead_letter_path(args, Some(bulk_id))?;
    let client = connect(&args.server, &args.api_key, DEFAULT_BATCH_SIZE).await?;
    let mut follower = Follower::new(client, interrupt);
    let batch = match follower.get(bulk_id).await {
        Ok(batch) => batch,
        Err(Halt::Interrupted { .. }) => return Err(BulkError::Interrupted),
        Err(Halt::Failed(e)) => return Err(e.into()),
    };
    // The keys the rows were sent with, for the dead-letter file: the batch's key is
    // `<run key>:part-N`, and rows without their own key were sent with `<run key>:line-N`.
    if let (Some(input), Some((run_key, _))) =
        (&mut input, batch.idempotency_key.rsplit_once(":part-"))
    {
        derive_row_keys(input, run_key);
    }
    let total = usize::try_from(batch.total).unwrap_or(0);
    // Where the batch's rows start in the file.
    let offset = match &input {
        Some(input) => Some(rows_of_batch(&batch, input, args.file.as_deref())?),
        None => None,
    };

    // The stream replays the results of jobs that finished before it attached, then follows.
    let finished = u64::try_from(batch.total.saturating_sub(batch.pending)).unwrap_or(0);
    let mut progress = Progress::resumed(total as u64, finished);
    progress.note(&format!(
        "{bulk_id}: re-attached ({} jobs, {} still to run)",
        batch.total, batch.pending
    ));
    let mut tally = Tally::default();
    let followed = follower
        .follow(
            Open::Watch {
                bulk_id: bulk_id.to_owned(),
            },
            |event| {
                match event {
                    Event::Accepted(_) => {}
                    Event::Result(result) => {
                        let job = job_index(&result, total)?;
                        let index = match (&input, offset) {
                            (Some(input), Some(offset)) => {
                                check_row(&result, &input.rows, offset + job, args)?;
                                offset + job
                            }
                            _ => job,
                        };
                        tally.result(index, *result, &mut progress);
                    }
                    Event::ProviderWaiting(wait) => progress.waiting(wait),
                    Event::ProviderWaitEnded(end) => progress.wait_ended(end),
                    Event::Reopening {
                        why,
                        attempt,
                        delay,
                    } => {
                        progress.note(&reopening(why, attempt, delay));
                    }
                }
                Ok(())
            },
        )
        .await;
    let (bulk_id, summary) = followed.map_err(|halt| halted(halt, &progress, args, None))?;
    tally.summary(bulk_id, &summary);
    progress.finish();
    let source = match &input {
        Some(input) => Source::File {
            headers: &input.headers,
            rows: &input.rows,
        },
        None => Source::Results,
    };
    finish(&tally, &dead_letter_path, &source)
}

/// The counts and failures of a run, over all its batches.
#[derive(Default)]
struct Tally {
    total: u64,
    succeeded: u64,
    failed: u64,
    skipped: u64,
    canceled: u64,
    /// The sum of the batches' own durations (acceptance to last job), so that re-attaching to
    /// a finished run prints the same summary as the run did.
    duration: Duration,
    /// The most final of the batches' states: canceled, then aborted, then completed.
    state: Option<pb::BulkRefundState>,
    bulk_ids: Vec<String>,
    /// Jobs that did not succeed, by row: the position in the file, or the job index without a
    /// file.
    failures: BTreeMap<usize, pb::BulkJobResult>,
}

impl Tally {
    fn result(&mut self, index: usize, result: pb::BulkJobResult, progress: &mut Progress) {
        let status =
            pb::BulkItemStatus::try_from(result.status).unwrap_or(pb::BulkItemStatus::Failed);
        progress.record(status);
        match status {
            // Made; waiting for approval is not a failure to retry.
            pb::BulkItemStatus::Succeeded | pb::BulkItemStatus::RequiresApproval => {}
            _ => {
                self.failures.insert(index, result);
            }
        }
    }

    fn summary(&mut self, bulk_id: String, s: &pb::BulkSummary) {
        let count = |n: i32| u64::try_from(n).unwrap_or(0);
        self.total += count(s.total);
        self.succeeded += count(s.succeeded);
        self.failed += count(s.failed);
        self.skipped += count(s.skipped);
        self.canceled += count(s.canceled);
        self.duration += s
            .duration
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or_default();
        let rank = |s: pb::BulkRefundState| match s {
            pb::BulkRefundState::Canceled => 3,
            pb::BulkRefundState::Aborted => 2,
            pb::BulkRefundState::Completed => 1,
            pb::BulkRefundState::Running | pb::BulkRefundState::Unspecified => 0,
        };
        let state = pb::BulkRefundState::try_from(s.state).unwrap_or_default();
        if self.state.is_none_or(|known| rank(state) > rank(known)) {
            self.state = Some(state);
        }
        self.bulk_ids.push(bulk_id);
    }

    /// A row of a batch that was never sent.
    fn not_sent(&mut self, index: usize, row: &Row, status: pb::BulkItemStatus, why: &str) {
        self.total += 1;
        if status == pb::BulkItemStatus::Canceled {
            self.canceled += 1;
        } else {
            self.skipped += 1;
        }
        let result = pb::BulkJobResult {
            payment_id: row.job.payment_id.clone(),
            provider: row.job.provider.clone(),
            status: status.into(),
            error: Some(pb::BulkJobError {
                code: "NOT_SENT".to_owned(),
                message: why.to_owned(),
                retryable: true,
            }),
            ..Default::default()
        };
        self.failures.insert(index, result);
    }

    fn render(&self, dead_letter: Option<&Path>) -> String {
        let secs = self.duration.as_secs_f64();
        let rate = if secs > 0.0 {
            format!("{:.1} jobs/s", self.total as f64 / secs)
        } else {
            "-".to_owned()
        };
        let state = self.state.map_or("unknown".to_owned(), |s| {
            s.as_str_name()
                .trim_start_matches("BULK_REFUND_STATE_")
                .to_ascii_lowercase()
        });
        let mut out = format!(
            "state:       {state}\n\
             total:       {}\n\
             succeeded:   {}\n\
             failed:      {}\n\
             skipped:     {}\n\
             canceled:    {}\n\
             duration:    {secs:.3}s\n\
             rate:        {rate}\n\
             bulk ids:    {}\n",
            self.total,
            self.succeeded,
            self.failed,
            self.skipped,
            self.canceled,
            self.bulk_ids.join(" "),
        );
        if let Some(path) = dead_letter {
            out.push_str(&format!("dead-letter: {}\n", path.display()));
        }
        out
    }
}

/// Writes the dead-letter file (if any row needs it), prints the summary, and says how the run
/// ended.
fn finish(tally: &Tally, dead_letter_path: &Path, source: &Source<'_>) -> Result<(), BulkError> {
    let written = if tally.failures.is_empty() {
        Ok(false)
    } else {
        dead_letter::write(dead_letter_path, source, &tally.failures).map(|()| true)
    };
    let shown = matches!(written, Ok(true)).then_some(dead_letter_path);
    // The summary is printed even when the dead-letter file could not be written: the jobs ran.
    print!("{}", tally.render(shown));
    written?;
    if tally.succeeded == tally.total {
        Ok(())
    } else {
        Err(BulkError::JobsFailed {
            not_succeeded: tally.total - tally.succeeded,
            total: tally.total,
        })
    }
}

/// Stops the progress display and, when interrupted, tells how to pick the run up again.
/// `next_part` is the first batch of the file not sent yet, if any.
fn halted(halt: Halt, progress: &Progress, args: &BulkArgs, next_part: Option<usize>) -> BulkError {
    progress.abandon();
    let bulk_id = match halt {
        Halt::Failed(e) => return e.into(),
        Halt::Interrupted { bulk_id } => bulk_id,
    };
    let mut message = format!(
        "interrupted after {} finished jobs ({}).",
        progress.done(),
        progress.counts()
    );
    if let Some(bulk_id) = &bulk_id {
        message.push_str(&format!(
            "\n{bulk_id} keeps running on the server. Follow it to the end with:\n  {}",
            resume_command(args, bulk_id)
        ));
    }
    if args.resume.is_none() {
        let rest = match next_part {
            Some(n) => format!(" and sends the rest of the file (from part {n})"),
            None => String::new(),
        };
        message.push_str(&format!(
            "\nOr run the same command again: it re-attaches to the batches already sent, \
             without refunding anything twice{rest}."
        ));
    }
    progress.note(&message);
    BulkError::Interrupted
}

fn resume_command(args: &BulkArgs, bulk_id: &str) -> String {
    let mut command = format!(
        "{} bulk --resume {}",
        crate::cli::invocation(),
        shell_quote(bulk_id)
    );
    if let Some(file) = &args.file {
        command.push_str(&format!(" --file {}", shell_quote(&file.to_string_lossy())));
    }
    if args.server != DEFAULT_SERVER {
        command.push_str(&format!(" --server {}", shell_quote(&args.server)));
    }
    if let Some(path) = &args.dead_letter {
        command.push_str(&format!(
            " --dead-letter {}",
            shell_quote(&path.to_string_lossy())
        ));
    }
    command
}

/// Quotes a word for a POSIX shell when it needs it, so the printed command can be pasted.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn reopening(why: &tonic::Status, attempt: u32, delay: Duration) -> String {
    format!(
        "lost the event stream ({}); re-opening in {:.1}s (attempt {attempt})",
        why.message(),
        delay.as_secs_f64()
    )
}

/// The result's job index, checked against the batch's size.
fn job_index(result: &pb::BulkJobResult, jobs: usize) -> anyhow::Result<usize> {
    usize::try_from(result.index)
        .ok()
        .filter(|&i| i < jobs)
        .with_context(|| {
            format!(
                "the server sent a result for job {}, but the batch has {jobs} jobs",
                result.index
            )
        })
}

/// With `--resume --file`: a result must be about the row it is mapped to, or the file is not
/// the one the batch was made from.
fn check_row(
    result: &pb::BulkJobResult,
    rows: &[Row],
    index: usize,
    args: &BulkArgs,
) -> anyhow::Result<()> {
    let file = args
        .file
        .as_deref()
        .map_or_else(String::new, |f| f.display().to_string());
    let row = rows.get(index).with_context(|| {
        format!("{file} has fewer rows than the batch has jobs: it is not the batch's file")
    })?;
    ensure!(
        result.payment_id.is_empty() || result.payment_id == row.job.payment_id,
        "job {} of the batch refunds {}, but {file} line {} is {}: it is not the batch's file",
        result.index,
        result.payment_id,
        row.line,
        row.job.payment_id,
    );
    Ok(())
}

/// How a file's rows are numbered in what is sent for them: the derived `<run key>:line-N` keys
/// of rows without a key of their own, and the `csv_first_line`/`csv_last_line` of the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbering {
    /// As releases before the physical numbering did ([`Input::legacy_lines`]).
    Legacy,
    /// The physical line a row starts on ([`Row::line`]); said by `csv_lines: physical` in a
    /// batch's metadata.
    Physical,
}

/// The `csv_lines` metadata value of a batch numbered by physical lines.
const PHYSICAL_LINES: &str = "physical";

impl Numbering {
    /// The one place that decides how a file's rows are numbered in keys and batch metadata.
    ///
    /// Derived keys must not change from one release to the next: a file partly sent by one
    /// release and sent again, or resumed, with another must give every row the key it was sent
    /// with, or a row could be refunded twice (say, in a batch made with another
    /// `--batch-size`). Releases before the physical numbering used the `csv` crate's line,
    /// which is a line early under CRLF and at the first of the blank lines before a row, but
    /// still tells rows apart in any file without bare `\r` line endings: so whenever it tells
    /// all of a file's rows apart, it stays, and every file those releases could send keeps its
    /// row keys and its batches (metadata included, which the service's batch fingerprint
    /// covers) byte for byte. Where two rows share it (bare `\r` or mixed line endings), those
    /// releases sent several rows with one key, which the service refused as a reused key;
    /// there is nothing of theirs to keep, and the physical lines, always distinct, are used.
    fn of(input: &Input) -> Self {
        let mut seen = std::collections::HashSet::with_capacity(input.legacy_lines.len());
        if input.legacy_lines.iter().all(|&line| seen.insert(line)) {
            Self::Legacy
        } else {
            Self::Physical
        }
    }

    /// How the `csv_first_line`/`csv_last_line` of a batch sent earlier are numbered.
    fn of_batch(batch: &pb::BulkRefundBatch) -> anyhow::Result<Self> {
        match (
            batch.metadata.get("csv_lines").map(String::as_str),
            batch.metadata.get("source").map(String::as_str),
        ) {
            (Some(PHYSICAL_LINES), _) => Ok(Self::Physical),
            // The operator console numbers its batches' rows by physical line, as it always has.
            (None, Some("console")) => Ok(Self::Physical),
            // Sent by this command in a release before `csv_lines`, or by this one for a file
            // whose rows keep their legacy numbers (see `of`).
            (None, _) => Ok(Self::Legacy),
            (Some(other), _) => bail!(
                "{} numbers its file's lines as {other:?}, which this version does not know",
                batch.id
            ),
        }
    }

    /// The number of the file's `index`th row.
    fn line(self, input: &Input, index: usize) -> u64 {
        match self {
            Self::Legacy => input.legacy_lines.get(index).copied().unwrap_or(0),
            Self::Physical => input.rows.get(index).map_or(0, |r| r.line),
        }
    }
}

/// Gives every row without an `idempotency_key` of its own `<run key>:line-N`, numbered as
/// [`Numbering::of`] decides: the same keys whenever the file is sent, re-sent or resumed.
fn derive_row_keys(input: &mut Input, run_key: &str) {
    let numbering = Numbering::of(input);
    let lines: Vec<u64> = (0..input.rows.len())
        .map(|i| numbering.line(input, i))
        .collect();
    for (row, line) in input.rows.iter_mut().zip(lines) {
        if row.job.idempotency_key.is_empty() {
            row.job.idempotency_key = format!("{run_key}:line-{line}");
        }
    }
}

/// A batch's metadata, which lets `--resume BULK_ID --file` find the batch's rows (`span`, the
/// indices of the rows) in the file. Numbered as the rows' keys are; only a physical numbering
/// says so, so that a batch numbered as before is the same batch as before (the service's batch
/// fingerprint covers the metadata).
fn part_metadata(
    input: &Input,
    numbering: Numbering,
    span: std::ops::Range<usize>,
    number: usize,
    parts: usize,
) -> Vec<(&'static str, String)> {
    let mut metadata = vec![
        ("csv_part", format!("{number}/{parts}")),
        (
            "csv_first_line",
            numbering.line(input, span.start).to_string(),
        ),
        (
            "csv_last_line",
            numbering
                .line(input, span.end.saturating_sub(1))
                .to_string(),
        ),
    ];
    if numbering == Numbering::Physical {
        metadata.push(("csv_lines", PHYSICAL_LINES.to_owned()));
    }
    metadata
}

/// Position in the file of a batch's first row: from the `csv_first_line` metadata a file sent
/// by this command carries (numbered as `csv_lines` says), else the top of the file.
fn rows_of_batch(
    batch: &pb::BulkRefundBatch,
    input: &Input,
    file: Option<&Path>,
) -> anyhow::Result<usize> {
    let file = file.map_or_else(String::new, |f| f.display().to_string());
    let offset = match batch.metadata.get("csv_first_line") {
        None => 0,
        Some(line) => {
            let line: u64 = line
                .parse()
                .with_context(|| format!("{} has a bad csv_first_line {line:?}", batch.id))?;
            let numbering = Numbering::of_batch(batch)?;
            (0..input.rows.len())
                .find(|&i| numbering.line(input, i) == line)
                .with_context(|| {
                    let counted = match numbering {
                        Numbering::Physical => "",
                        Numbering::Legacy => " (as earlier releases counted lines)",
                    };
                    format!(
                        "{} starts at line {line} of its file{counted}, but {file} has no row \
                         there",
                        batch.id
                    )
                })?
        }
    };
    let total = usize::try_from(batch.total).unwrap_or(0);
    ensure!(
        input.rows.len() - offset >= total,
        "{} has {total} jobs, but {file} has only {} rows from its line {}: it is not the \
         batch's file",
        batch.id,
        input.rows.len() - offset,
        input.rows.get(offset).map_or(0, |r| r.line),
    );
    Ok(offset)
}

fn read_input(file: &Path) -> anyhow::Result<(Input, Vec<u8>)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let input = input::parse(&file.display().to_string(), &bytes)?;
    Ok((input, bytes))
}

fn checked_key(key: &str) -> anyhow::Result<String> {
    ensure!(
        !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic()),
        "--idempotency-key must be 1 to {MAX_KEY_LEN} printable ASCII characters without spaces"
    );
    Ok(key.to_owned())
}

/// The run's key when none is given: the file's content names the run, so the same file
/// re-attaches wherever and whenever it is sent again. 128 bits of the digest are plenty to
/// tell files apart.
fn derived_key(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("csv-{hex}")
}

fn dead_letter_path(args: &BulkArgs, bulk_id: Option<&str>) -> anyhow::Result<PathBuf> {
    let path = match (&args.dead_letter, &args.file, bulk_id) {
        (Some(path), _, _) => path.clone(),
        (None, Some(file), _) => {
            let stem = file
                .file_stem()
                .map_or_else(|| "refunds".into(), |s| s.to_string_lossy());
            file.with_file_name(format!("{stem}.failed.csv"))
        }
        (None, None, Some(bulk_id)) => PathBuf::from(format!("{bulk_id}.failed.csv")),
        (None, None, None) => bail!("--file is required without --resume"),
    };
    if let Some(file) = &args.file
        && let (Ok(a), Ok(b)) = (std::fs::canonicalize(file), std::fs::canonicalize(&path))
        && a == b
    {
        bail!(
            "the dead-letter file would overwrite the input file {}",
            file.display()
        );
    }
    Ok(path)
}

const EXPECTED_SERVER: &str = "expected host:port, http://host:port or https://host:port";

/// The URL of `--server`: an http(s) URL as given, or `host:port` (what grpcurl users type) as
/// the plain-text server there.
fn server_url(server: &str) -> anyhow::Result<String> {
    match server.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(server.to_owned()),
        Some(_) => Err(anyhow!("--server {server:?}: {EXPECTED_SERVER}")),
        None if !server.is_empty() && !server.contains('/') => Ok(format!("http://{server}")),
        None => Err(anyhow!("--server {server:?}: {EXPECTED_SERVER}")),
    }
}

pub(crate) async fn connect(
    server: &str,
    api_key: &str,
    batch_size: u32,
) -> anyhow::Result<stream::Client> {
    let bearer = format!("Bearer {}", api_key.trim())
        .parse()
        .map_err(|_| anyhow!("--api-key must be printable ASCII"))?;
    let endpoint = Endpoint::from_shared(server_url(server)?)
        .map_err(|e| {
            anyhow!("--server {server:?} is not a valid address ({e}); {EXPECTED_SERVER}")
        })?
        .connect_timeout(Duration::from_secs(10))
        // Notices a dead connection during a long, quiet batch, so the stream gets re-opened.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    let max = crate::api::max_message_bytes(batch_size);
    Ok(
        RefundServiceClient::with_interceptor(channel, stream::BearerAuth(bearer))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
}

/// Turns `true` on Ctrl-C or SIGTERM. Listening starts now, so that the first Ctrl-C during a
/// batch is ours to handle rather than the default (killing the process mid-line).
fn watch_interrupt() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_a_url_or_host_and_port() {
        for (given, url) in [
            ("127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("localhost:50051", "http://localhost:50051"),
            ("[::1]:50051", "http://[::1]:50051"),
            ("http://127.0.0.1:50051", "http://127.0.0.1:50051"),
            (
                "https://refunds.internal:443",
                "https://refunds.internal:443",
            ),
        ] {
            assert_eq!(server_url(given).unwrap(), url, "{given}");
        }
        for bad in ["", "ftp://host:21", "http://", "host:1/path", "://x"] {
            let e = server_url(bad).unwrap_err().to_string();
            assert!(e.contains(EXPECTED_SERVER), "{bad}: {e}");
        }
    }

    #[test]
    fn derived_keys_depend_only_on_the_bytes() {
        let a = derived_key(b"payment_id,currency\nch_1,USD\n");
        assert_eq!(a, derived_key(b"payment_id,currency\nch_1,USD\n"));
        assert_ne!(a, derived_key(b"payment_id,currency\nch_2,USD\n"));
        assert_eq!(a.len(), "csv-".len() + 32);
    }

    #[test]
    fn explicit_keys_leave_room_for_the_suffixes() {
        assert!(checked_key("nightly-2026-11-23").is_ok());
        assert!(checked_key("").is_err());
        assert!(checked_key("has space").is_err());
        assert!(checked_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        let longest = format!("{}:line-18446744073709551615", "k".repeat(MAX_KEY_LEN));
        assert!(longest.len() <= 255);
    }

    fn keys(text: &str) -> Vec<String> {
        let mut input = input::parse("refunds.csv", text.as_bytes()).expect("a good file");
        derive_row_keys(&mut input, "run");
        input
            .rows
            .into_iter()
            .map(|r| r.job.idempotency_key)
            .collect()
    }

    /// Defect: numbering rows by physical line changed the derived keys of CRLF files and of
    /// files with blank lines, so that a file partly sent by the previous release and sent
    /// again, or resumed, by this one got new keys for the same rows.
    #[test]
    fn derived_keys_are_the_previous_releases_for_every_file_it_could_send() {
        // What the previous release sent: the `csv` crate's line of each row.
        assert_eq!(
            keys("payment_id,currency\r\nch_1,USD\r\nch_2,USD\r\nch_3,USD\r\n"),
            ["run:line-1", "run:line-2", "run:line-3"]
        );
        assert_eq!(
            keys("payment_id,currency\nch_1,USD\nch_2,USD\n"),
            ["run:line-2", "run:line-3"]
        );
        assert_eq!(
            keys("payment_id,currency\n\nch_1,USD\n\n\nch_2,USD\n"),
            ["run:line-2", "run:line-4"]
        );
        assert_eq!(
            keys("payment_id,currency,idempotency_key\r\nch_1,USD,own\r\nch_2,USD,\r\n"),
            ["own", "run:line-2"]
        );
    }

    #[test]
    fn derived_keys_are_distinct_where_the_previous_release_repeated_them() {
        // The previous release gave every row of these files one key (`run:line-1`).
        assert_eq!(
            keys("payment_id,currency\rch_1,USD\rch_2,USD\rch_3,USD\r"),
            ["run:line-2", "run:line-3", "run:line-4"]
        );
        // Mixed: the last two rows shared line 3 there. The whole file is numbered one way.
        assert_eq!(
            keys("payment_id,currency\r\nch_1,USD\nch_2,USD\rch_3,USD\n"),
            ["run:line-2", "run:line-3", "run:line-4"]
        );
    }

    fn batch(total: i32, metadata: &[(&str, &str)]) -> pb::BulkRefundBatch {
        pb::BulkRefundBatch {
            id: "bulk_1".to_owned(),
            total,
            metadata: metadata
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    fn metadata(input: &Input, batch_size: usize) -> Vec<Vec<(&'static str, String)>> {
        let numbering = Numbering::of(input);
        let parts = input.rows.len().div_ceil(batch_size);
        (0..parts)
            .map(|i| {
                let span = i * batch_size..((i + 1) * batch_size).min(input.rows.len());
                part_metadata(input, numbering, span, i + 1, parts)
            })
            .collect()
    }

    #[test]
    fn batches_are_numbered_as_their_rows_keys_and_say_so_when_physical() {
        let crlf = input::parse(
            "refunds.csv",
            b"payment_id,currency\r\nch_1,USD\r\nch_2,USD\r\nch_3,USD\r\n",
        )
        .unwrap();
        // As the previous release sent them: the same batch fingerprint.
        assert_eq!(
            metadata(&crlf, 2),
            [
                vec![
                    ("csv_part", "1/2".to_owned()),
                    ("csv_first_line", "1".to_owned()),
                    ("csv_last_line", "2".to_owned())
                ],
                vec![
                    ("csv_part", "2/2".to_owned()),
                    ("csv_first_line", "3".to_owned()),
                    ("csv_last_line", "3".to_owned())
                ]
            ]
        );
        let cr = input::parse("refunds.csv", b"payment_id,currency\rch_1,USD\rch_2,USD\r").unwrap();
        assert_eq!(
            metadata(&cr, 1)[1],
            [
                ("csv_part", "2/2".to_owned()),
                ("csv_first_line", "3".to_owned()),
                ("csv_last_line", "3".to_owned()),
                ("csv_lines", "physical".to_owned())
            ]
        );
    }

    #[test]
    fn a_batchs_rows_are_found_from_legacy_and_from_physical_metadata() {
        let file = Path::new("refunds.csv");
        // Legacy lines 1, 2, 3, 4; physical lines 2, 3, 4, 5.
        let crlf = input::parse(
            "refunds.csv",
            b"payment_id,currency\r\nch_1,USD\r\nch_2,USD\r\nch_3,USD\r\nch_4,USD\r\n",
        )
        .unwrap();
        let offset = |b: &pb::BulkRefundBatch, input: &Input| {
            rows_of_batch(b, input, Some(file)).map_err(|e| e.to_string())
        };
        // Sent by the previous release (or by this one, numbered as it did): legacy lines.
        let legacy = batch(2, &[("csv_part", "2/2"), ("csv_first_line", "3")]);
        assert_eq!(offset(&legacy, &crlf), Ok(2));
        let physical = batch(2, &[("csv_first_line", "3"), ("csv_lines", "physical")]);
        assert_eq!(offset(&physical, &crlf), Ok(1));
        let console = batch(4, &[("source", "console"), ("csv_first_line", "2")]);
        assert_eq!(offset(&console, &crlf), Ok(0));
        assert_eq!(offset(&batch(4, &[]), &crlf), Ok(0));

        // Bare `\r`: the legacy lines are all 1; batches sent now are numbered physically.
        let cr = input::parse(
            "refunds.csv",
            b"payment_id,currency\rch_1,USD\rch_2,USD\rch_3,USD\r",
        )
        .unwrap();
        let numbering = Numbering::of(&cr);
        assert_eq!(numbering, Numbering::Physical);
        let sent = part_metadata(&cr, numbering, 1..3, 2, 2);
        let sent: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(offset(&batch(2, &sent), &cr), Ok(1));

        assert_eq!(
            offset(&batch(2, &[("csv_first_line", "1")]), &crlf),
            Ok(0),
            "legacy line 1 is the first row"
        );
        assert_eq!(
            offset(
                &batch(2, &[("csv_first_line", "1"), ("csv_lines", "physical")]),
                &crlf
            ),
            Err("bulk_1 starts at line 1 of its file, but refunds.csv has no row there".to_owned())
        );
        assert_eq!(
            offset(&batch(2, &[("csv_first_line", "9")]), &crlf),
            Err(
                "bulk_1 starts at line 9 of its file (as earlier releases counted lines), but \
                 refunds.csv has no row there"
                    .to_owned()
            )
        );
        assert_eq!(
            offset(
                &batch(2, &[("csv_first_line", "2"), ("csv_lines", "bytes")]),
                &crlf
            ),
            Err(
                "bulk_1 numbers its file's lines as \"bytes\", which this version does not know"
                    .to_owned()
            )
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/tmp/refunds.csv"), "/tmp/refunds.csv");
        assert_eq!(shell_quote("my refunds.csv"), "'my refunds.csv'");
        assert_eq!(shell_quote("it's.csv"), r"'it'\''s.csv'");
    }
}
