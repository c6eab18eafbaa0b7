//! Live progress on stderr: an indicatif bar on a terminal; otherwise (a pipe, a CI log) a plain
//! line every few seconds, because indicatif draws nothing there.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use crate::api::pb::{self, BulkItemStatus};

/// How often the plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Progress {
    bar: ProgressBar,
    /// The rate and ETA, shared with the bar's template.
    rate: Arc<Mutex<LiveRate>>,
    /// When the bar is hidden: when the last plain line was printed.
    plain_last: Option<Instant>,
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
        Self::resumed(total, 0)
    }

    /// A batch re-attached to with `replayed` jobs already finished: their results come first
    /// and are counted, but the rate and ETA are over the results that follow them.
    pub(super) fn resumed(total: u64, replayed: u64) -> Self {
        let rate = Arc::new(Mutex::new(LiveRate::new(replayed, Instant::now())));
        let bar = ProgressBar::new(total);
        let plain_last = if bar.is_hidden() {
            Some(Instant::now())
        } else {
            // The template is a constant: if it ever fails to parse, the default style will do.
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} · {msg} · {rate} · ETA {eta}",
            ) {
                let for_rate = rate.clone();
                let for_eta = rate.clone();
                bar.set_style(
                    style
                        .with_key(
                            "rate",
                            move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                                let rate = lock(&for_rate).per_sec(Instant::now());
                                let _ = write!(w, "{:.0} jobs/s", rate.unwrap_or(0.0));
                            },
                        )
                        .with_key(
                            "eta",
                            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                                let left = state.len().unwrap_or(0).saturating_sub(state.pos());
                                let _ =
                                    w.write_str(&eta(left, lock(&for_eta).per_sec(Instant::now())));
                            },
                        ),
                );
            }
            // Keeps the elapsed time and ETA moving while no result arrives.
            bar.enable_steady_tick(Duration::from_millis(200));
            None
        };
        let progress = Self {
            bar,
            rate,
            plain_last,
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
        lock(&self.rate).finished(Instant::now());
        self.add(status, 1);
    }

    /// Counts jobs that finish without running (rows of parts that were never sent); they are
    /// not timed.
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
        let rate = lock(&self.rate).per_sec(Instant::now());
        format!(
            "progress: {done}/{} jobs ({}), {:.0} jobs/s, ETA {}",
            self.total,
            self.counts(),
            rate.unwrap_or(0.0),
            eta(self.total.saturating_sub(done), rate)
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

/// Jobs per second over live results: those a re-attached stream replays first (jobs that had
/// finished before it attached) arrive all at once and would make the rate and ETA lie.
#[derive(Debug)]
struct LiveRate {
    /// Replayed results still to come.
    replay_left: u64,
    /// When the first live result could arrive: the start, or the end of the replay.
    since: Option<Instant>,
    live: u64,
}

impl LiveRate {
    fn new(replayed: u64, now: Instant) -> Self {
        Self {
            replay_left: replayed,
            since: (replayed == 0).then_some(now),
            live: 0,
        }
    }

    /// One job's result arrived at `now`.
    fn finished(&mut self, now: Instant) {
        if self.replay_left > 0 {
            self.replay_left -= 1;
            if self.replay_left == 0 {
                self.since = Some(now);
            }
        } else {
            self.live += 1;
        }
    }

    /// `None` until a live result has arrived.
    fn per_sec(&self, now: Instant) -> Option<f64> {
        let secs = now.duration_since(self.since?).as_secs_f64();
        (self.live > 0 && secs > 0.0).then(|| self.live as f64 / secs)
    }
}

fn eta(left: u64, rate: Option<f64>) -> String {
    match rate {
        _ if left == 0 => "0s".to_owned(),
        Some(rate) if rate > 0.0 => format!("{:.0}s", left as f64 / rate),
        _ => "unknown".to_owned(),
    }
}

/// The shared rate, also after a panic elsewhere (it holds plain counters).
fn lock(rate: &Mutex<LiveRate>) -> std::sync::MutexGuard<'_, LiveRate> {
    rate.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whole seconds from now until `unix_seconds` (0 when past).
fn seconds_from_now(unix_seconds: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    unix_seconds.saturating_sub(now).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect: re-attaching to a batch counted the replayed results of jobs that had finished
    /// before, all arriving at once, into the rate (31 jobs/s shown against about 9 real).
    #[test]
    fn the_rate_after_re_attaching_counts_live_results_only() {
        let start = Instant::now();
        let mut rate = LiveRate::new(30, start);
        for _ in 0..30 {
            rate.finished(start + Duration::from_millis(10));
        }
        assert_eq!(rate.per_sec(start + Duration::from_millis(20)), None);
        for i in 1..=9 {
            rate.finished(start + Duration::from_millis(10) + Duration::from_millis(111 * i));
        }
        let per_sec = rate.per_sec(start + Duration::from_millis(1010)).unwrap();
        assert!((per_sec - 9.0).abs() < 0.01, "{per_sec}");
        assert_eq!(eta(90, Some(per_sec)), "10s");
    }

    #[test]
    fn a_fresh_run_times_from_its_start() {
        let start = Instant::now();
        let mut rate = LiveRate::new(0, start);
        rate.finished(start + Duration::from_millis(500));
        rate.finished(start + Duration::from_millis(900));
        assert_eq!(rate.per_sec(start + Duration::from_secs(1)), Some(2.0));
        assert_eq!(eta(0, None), "0s");
        assert_eq!(eta(5, None), "unknown");
    }
}
