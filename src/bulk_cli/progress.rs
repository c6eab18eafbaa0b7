//! Live progress on stderr: an indicatif bar on a terminal; otherwise (a pipe, a CI log) a plain
//! line every few seconds, because indicatif draws nothing there.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use crate::api::pb::{self, BulkItemStatus};

/// How often the plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Progress {
    bar: ProgressBar,
    /// When the bar is hidden: when the last plain line was printed.
    plain_last: Option<Instant>,
    started: Instant,
    total: u64,
    succeeded: u64,
    failed: u64,
    skipped: u64,
    canceled: u64,
    /// Providers the batch is waiting for, with what to show: "waiting for sandbox: …".
    waits: std::collections::BTreeMap<String, String>,
}

impl Progress {
    pub(super) fn new(total: u64) -> Self {
        let bar = ProgressBar::new(total);
        let plain_last = if bar.is_hidden() {
            Some(Instant::now())
        } else {
            // The template is a constant: if it ever fails to parse, the default style will do.
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} · {msg} · {rate} · ETA {eta}",
            ) {
                bar.set_style(style.with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} jobs/s", state.per_sec());
                    },
                ));
            }
            // Keeps the elapsed time and ETA moving while no result arrives.
            bar.enable_steady_tick(Duration::from_millis(200));
            None
        };
        let progress = Self {
            bar,
            plain_last,
            started: Instant::now(),
            total,
            succeeded: 0,
            failed: 0,
            skipped: 0,
            canceled: 0,
            waits: Default::default(),
        };
        progress.bar.set_message(progress.counts());
        progress
    }

    /// Counts one finished job.
    pub(super) fn record(&mut self, status: BulkItemStatus) {
        self.add(status, 1);
    }

    /// Counts jobs that finish without running (rows of parts that were never sent).
    pub(super) fn add(&mut self, status: BulkItemStatus, n: u64) {
        match status {
            BulkItemStatus::Succeeded | BulkItemStatus::RequiresApproval => self.succeeded += n,
            BulkItemStatus::Skipped => self.skipped += n,
            BulkItemStatus::Canceled => self.canceled += n,
            _ => self.failed += n,
        }
        self.bar.inc(n);
        self.bar.set_message(self.counts());
        if let Some(last) = self.plain_last
            && last.elapsed() >= PLAIN_EVERY
        {
            self.plain_last = Some(Instant::now());
            eprintln!("{}", self.plain_line());
        }
    }

    /// The batch holds a provider's jobs: shown on the bar (or the plain line) until it ends.
    pub(super) fn waiting(&mut self, wait: &pb::BulkProviderWaiting) {
        let next = wait
            .next_attempt_time
            .as_ref()
            .map(|t| seconds_from_now(t.seconds))
            .map_or_else(String::new, |s| format!(", next try in {s} s"));
        let line = format!(
            "waiting for {}: {}{next} ({} jobs held)",
            wait.provider, wait.reason, wait.held_jobs
        );
        self.note(&line);
        self.waits.insert(wait.provider.clone(), line);
        self.bar.set_message(self.counts());
    }

    pub(super) fn wait_ended(&mut self, end: &pb::BulkProviderWaitEnded) {
        let waited = end.waited.as_ref().map_or(0, |d| d.seconds.max(0));
        self.note(&if end.gave_up {
            format!(
                "gave up waiting for {} after {waited} s: {} held jobs failed (retryable; they are in the dead-letter file)",
                end.provider, end.failed_jobs
            )
        } else {
            format!(
                "{} answers again after {waited} s; its held jobs run",
                end.provider
            )
        });
        self.waits.remove(&end.provider);
        self.bar.set_message(self.counts());
    }

    /// Prints a line on stderr without tearing the bar.
    pub(super) fn note(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Jobs finished so far.
    pub(super) fn done(&self) -> u64 {
        self.succeeded + self.failed + self.skipped + self.canceled
    }

    pub(super) fn counts(&self) -> String {
        let mut s = format!("succeeded {} · failed {}", self.succeeded, self.failed);
        if self.skipped > 0 {
            let _ = write!(s, " · skipped {}", self.skipped);
        }
        if self.canceled > 0 {
            let _ = write!(s, " · canceled {}", self.canceled);
        }
        for wait in self.waits.values() {
            let _ = write!(s, " · {wait}");
        }
        s
    }

    fn plain_line(&self) -> String {
        let done = self.done();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 {
            format!("{:.0}s", self.total.saturating_sub(done) as f64 / rate)
        } else {
            "unknown".to_owned()
        };
        format!(
            "progress: {done}/{} jobs ({}), {rate:.0} jobs/s, ETA {eta}",
            self.total,
            self.counts()
        )
    }

    /// Removes the bar: the summary follows.
    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Leaves the bar where it stopped (interrupted, or an error).
    pub(super) fn abandon(&self) {
        self.bar.abandon();
    }
}

/// Whole seconds from now until `unix_seconds` (0 when past).
fn seconds_from_now(unix_seconds: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    unix_seconds.saturating_sub(now).max(0)
}
