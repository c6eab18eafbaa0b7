//! The service's clock for scheduling: when a PENDING refund is due for a look-up, when a lease
//! ends. It is the system clock, plus an offset that only tests and simulations move, so the
//! reconciler's schedule can be checked minute by minute without waiting for minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::domain::Timestamp;

#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_micros: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        Timestamp::from_micros(
            Timestamp::now()
                .as_micros()
                .saturating_add(self.offset_micros.load(Ordering::Acquire)),
        )
    }

    /// Moves this clock (and every copy of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.offset_micros.fetch_add(micros, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_copy_forward() {
        let clock = Clock::default();
        let copy = clock.clone();
        let before = copy.now();
        clock.advance(Duration::from_secs(90));
        let moved = copy.now().as_micros() - before.as_micros();
        assert!(moved >= 90_000_000, "{moved}");
        assert!(moved < 100_000_000, "{moved}");
    }
}
