//! The circuit breaker: when a provider is down, calls fail fast until a probe gets through.
//! Pure bookkeeping (time comes in as an argument), never held across an `.await`.

use std::time::Duration;

use tokio::time::Instant;

use super::TrafficConfig;
use crate::providers::ProviderError;

/// Whether an error says the provider is down (or unreachable), as opposed to an answer it gave
/// on purpose. Only the former counts towards opening the circuit; a 429 shows the provider is
/// up and is paced by `retry_after` instead.
pub(super) fn is_down(error: &ProviderError) -> bool {
    match error {
        ProviderError::Unavailable(_) | ProviderError::Timeout | ProviderError::Ambiguous(_) => {
            true
        }
        ProviderError::NotFound(_)
        | ProviderError::Rejected { .. }
        | ProviderError::RateLimited { .. } => false,
    }
}

/// The circuit breaker's bookkeeping. Pure (time comes in as an argument) and never held across
/// an `.await`.
#[derive(Debug)]
pub(super) struct Breaker {
    pub(super) state: BreakerState,
    /// Bumped on every change of state, so that an attempt admitted before the change cannot
    /// close or re-open the circuit with a stale answer.
    pub(super) generation: u64,
    pub(super) consecutive_failures: u32,
    pub(super) last_error: Option<String>,
    /// Until when the provider asked (with a `Retry-After` longer than our longest back-off) not
    /// to be called. Reported by [`ControlledProvider::availability`]; calls are not refused.
    pub(super) paused_until: Option<Instant>,
}

/// How soon a caller waiting on a half-open circuit looks again.
pub(super) const PROBE_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub(super) enum BreakerState {
    Closed,
    /// Failing fast since `since`. Stored as a start rather than an end so that no configured
    /// duration can overflow an `Instant`.
    Open {
        since: Instant,
    },
    /// The one probe is in flight.
    HalfOpen,
}

/// A call the breaker let through.
#[derive(Debug, Clone, Copy)]
pub(super) struct Admission {
    pub(super) generation: u64,
    pub(super) probe: bool,
}

/// What became of the circuit after an attempt's outcome was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    Opened,
    Closed,
}

impl Breaker {
    pub(super) fn new() -> Self {
        Self {
            state: BreakerState::Closed,
            generation: 0,
            consecutive_failures: 0,
            last_error: None,
            paused_until: None,
        }
    }

    pub(super) fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    pub(super) fn open_error(&self) -> ProviderError {
        ProviderError::Unavailable(match &self.last_error {
            Some(last) => format!("circuit open: {last}"),
            None => "circuit open".to_owned(),
        })
    }

    /// Whether a call may start waiting for a permit. Claims nothing.
    pub(super) fn precheck(
        &self,
        now: Instant,
        config: &TrafficConfig,
    ) -> Result<(), ProviderError> {
        match self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open { since }
                if now.duration_since(since) >= config.breaker_open_for =>
            {
                Ok(())
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => Err(self.open_error()),
        }
    }

    /// Whether a call may go to the provider now; the first call after the open period becomes
    /// the probe.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        config: &TrafficConfig,
    ) -> Result<Admission, ProviderError> {
        match self.state {
            BreakerState::Closed => Ok(Admission {
                generation: self.generation,
                probe: false,
            }),
            BreakerState::Open { since }
                if now.duration_since(since) >= config.breaker_open_for =>
            {
                self.change(BreakerState::HalfOpen);
                Ok(Admission {
                    generation: self.generation,
                    probe: true,
                })
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => Err(self.open_error()),
        }
    }

    /// Records an admitted attempt's outcome (`None` is success).
    pub(super) fn record(
        &mut self,
        admission: Admission,
        error: Option<&ProviderError>,
        now: Instant,
        config: &TrafficConfig,
    ) -> Option<Transition> {
        if admission.generation != self.generation {
            return None;
        }
        match error.filter(|e| is_down(e)) {
            None => {
                self.consecutive_failures = 0;
                if admission.probe {
                    self.change(BreakerState::Closed);
                    return Some(Transition::Closed);
                }
                None
            }
            Some(error) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(error.to_string());
                let open = admission.probe
                    || (config.breaker_threshold > 0
                        && self.consecutive_failures >= config.breaker_threshold);
                if open {
                    self.change(BreakerState::Open { since: now });
                    return Some(Transition::Opened);
                }
                None
            }
        }
    }

    /// The probe was abandoned (its caller dropped the future): let the next call probe again
    /// rather than staying half-open forever.
    pub(super) fn abandon_probe(
        &mut self,
        admission: Admission,
        now: Instant,
        config: &TrafficConfig,
    ) {
        if admission.probe && admission.generation == self.generation {
            // An open period that is already over: the next call is admitted as the probe.
            let since = now.checked_sub(config.breaker_open_for).unwrap_or(now);
            self.change(BreakerState::Open { since });
        }
    }

    pub(super) fn change(&mut self, state: BreakerState) {
        self.state = state;
        self.generation = self.generation.wrapping_add(1);
    }
}
