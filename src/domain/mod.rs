//! The refund domain: money, requests, refunds and their status machine, and the errors a use
//! case can end in.
//!
//! Architecture invariant: nothing here knows tonic, SeaORM, HTTP or any provider's wire format,
//! and nothing here does I/O. Every other layer converts into and out of these types.

/// An id made of a prefix and the 32 hex digits of a UUIDv7: unique, and sorting ids sorts them
/// by creation time. `parse` accepts exactly the shape `generate` makes.
macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                Self(format!("{}{}", Self::PREFIX, uuid::Uuid::now_v7().simple()))
            }

            pub fn parse(s: &str) -> Option<Self> {
                let valid = s.strip_prefix(Self::PREFIX).is_some_and(|hex| {
                    hex.len() == 32
                        && hex
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                });
                valid.then(|| Self(s.to_owned()))
            }

            /// For ids read back from the store, which only ever holds generated ids.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

mod audit;
mod auth;
mod bulk;
mod connection;
mod endpoint;
mod error;
mod event;
mod money;
mod refund;
mod request;
mod webhook;

pub use audit::{AuditEvent, AuditId};
pub use auth::{
    ApiKey, ApiKeyId, NewToken, Principal, Scope, TOKEN_PREFIX, parse_account, token_hash,
};
pub use bulk::{
    Bulk, BulkCounts, BulkEvent, BulkId, BulkJob, BulkState, ItemResult, ItemStatus, JobError,
    JobOutcome, NewBulk, ProviderWait, SequencedEvent, StopReason, derived_job_key,
};
pub use connection::{Connection, ConnectionActor, ConnectionId, Route};
pub use endpoint::{
    DeliveryStatus, MAX_DESCRIPTION_CHARS, RetryPolicy, WebhookDelivery, WebhookDeliveryId,
    WebhookEndpoint, WebhookEndpointId,
};
pub use error::RefundError;
pub use event::{API_VERSION, Event, EventDecodeError, EventId, EventResource, EventType, rfc3339};
pub use money::{
    Amount, AmountError, Currency, CurrencyError, DecimalError, MAX_AMOUNT, decimal_to_minor,
    minor_to_decimal,
};
pub use refund::{
    AccountId, Failure, IllegalTransition, Refund, RefundId, RefundReason, RefundStatus,
};
pub use request::{
    FieldViolation, IdempotencyKey, NewRefund, PaymentRef, ProviderName, RawRefundRequest,
    Violations, parse_metadata,
};
pub use webhook::{InboundEvent, NotifiedCapture, RefundReport, WebhookOutcome};

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
