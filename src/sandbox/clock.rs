//! The sandbox's monotonic clock.
//!
//! Everything in the sandbox that depends on elapsed time (lazy settlement of
//! pending refunds, the rate limiter's token bucket, the sliding window behind
//! `max_requests_per_sec`) reads this one clock, so a test can move all of them
//! forward together instead of sleeping. It is based on
//! [`tokio::time::Instant`], which also makes it follow `tokio::time::pause`
//! wherever tokio's `test-util` feature is enabled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::nanos::Nanos;

/// Time elapsed since the sandbox was created, plus a skew tests can add.
#[derive(Clone, Debug)]
pub(crate) struct SandboxClock {
    origin: tokio::time::Instant,
    /// Nanoseconds added on top of real elapsed time; only tests move it.
    skew_nanos: Arc<AtomicU64>,
}

impl SandboxClock {
    pub(crate) fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            skew_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current time as an offset from the clock's origin.
    pub(crate) fn elapsed(&self) -> Duration {
        self.origin.elapsed().saturating_add(Duration::from_nanos(
            self.skew_nanos.load(Ordering::Acquire),
        ))
    }

    /// Moves the clock forward without sleeping.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.skew_nanos.fetch_add(by, Ordering::AcqRel);
    }
}

impl governor::clock::Clock for SandboxClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.elapsed())
    }
}
