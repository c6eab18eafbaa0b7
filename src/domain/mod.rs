//! The refund domain: money, requests, refunds and their status machine, and the errors a use
//! case can end in.
//!
//! Architecture invariant: nothing here knows tonic, SeaORM, HTTP or any provider's wire format,
//! and nothing here does I/O. Every other layer converts into and out of these types.

mod bulk;
mod error;
mod money;
mod refund;
mod request;

pub use bulk::{
    Bulk, BulkCounts, BulkEvent, BulkId, BulkJob, BulkState, ItemResult, ItemStatus, JobError,
    JobOutcome, JobRef, NewBulk, SequencedEvent, StopReason, derived_job_key,
};
pub use error::RefundError;
pub use money::{Amount, AmountError, Balance, BalanceError, Currency, CurrencyError, MAX_AMOUNT};
pub use refund::{
    AccountId, Failure, IllegalTransition, Refund, RefundId, RefundReason, RefundStatus,
};
pub use request::{
    FieldViolation, IdempotencyKey, NewRefund, PaymentRef, ProviderName, RawRefundRequest,
    Violations, parse_metadata,
};

/// `prefix` followed by the 32 lower-case hex digits of a new UUIDv7: unique, and sorting the
/// strings sorts them by creation time.
fn new_prefixed_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// Whether `s` has exactly the shape [`new_prefixed_id`] makes.
fn is_prefixed_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A point in time, as whole microseconds since the Unix epoch (UTC). Stored as an integer so that
/// both SQLite and PostgreSQL compare and index it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
    }

    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    pub fn saturating_sub(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }
}
