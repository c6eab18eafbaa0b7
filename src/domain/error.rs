//! How a refund use case can end other than in success. The API layer maps each variant to one
//! gRPC status, without a wildcard, so a new variant forces a decision there.

use super::{Currency, FieldViolation, PaymentRef, ProviderName};

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldViolation>),

    #[error("payment {payment} was not found at provider {provider}", payment = .payment.as_str())]
    PaymentNotFound {
        payment: PaymentRef,
        provider: ProviderName,
    },

    #[error("payment {payment} cannot be refunded: its status at the provider is {status}", payment = .payment.as_str())]
    PaymentNotRefundable { payment: PaymentRef, status: String },

    /// The provider cannot be asked about payments and has not notified a capture of this one,
    /// so nothing is known to be refundable yet.
    #[error("{title} has not notified a capture for payment {payment} yet; it can be refunded once it has", payment = .payment.as_str())]
    CaptureNotNotified {
        payment: PaymentRef,
        provider: ProviderName,
        /// The provider's name for people, e.g. `Adyen`.
        title: String,
    },

    #[error("refund of {requested} exceeds the remaining refundable amount {remaining} {currency}")]
    OverRefund {
        requested: i64,
        remaining: i64,
        currency: Currency,
    },

    #[error("payment {payment} is already fully refunded", payment = .payment.as_str())]
    AlreadyRefunded { payment: PaymentRef },

    #[error("idempotency key {key:?} was already used with different parameters")]
    IdempotencyKeyReused { key: String },

    #[error("refund {id} was not found")]
    RefundNotFound { id: String },

    #[error("bulk refund {id} was not found")]
    BulkNotFound { id: String },

    #[error("provider {provider} is unavailable: {message}")]
    ProviderUnavailable {
        provider: ProviderName,
        message: String,
        /// When trying again may help, as far as we know: the provider's circuit is open, or
        /// it asked for a pause. Sent to clients as `google.rpc.RetryInfo`.
        retry_after: Option<std::time::Duration>,
        /// Whether the provider is down or pacing us, so that waiting can help, as opposed to an
        /// answer we cannot use. A batch holds its jobs through the former.
        transient: bool,
    },

    /// Anything the client could not have caused. Logged with its cause chain, reported generically.
    #[error(
        "refund {id} was asked for with the same API key that tries to approve it; another key must approve it"
    )]
    SelfApproval { id: String },

    #[error("refund {id} is not waiting for approval (its status is {status})", status = .status.as_str())]
    NotAwaitingApproval {
        id: String,
        status: super::RefundStatus,
    },

    /// Another resource of the caller's account, e.g. a webhook endpoint.
    #[error("{what} {id} was not found")]
    NotFound { what: &'static str, id: String },

    #[error("connection {id} was not found")]
    ConnectionNotFound { id: String },

    #[error("account {account} already has a {provider} connection ({id}); rotate or delete it")]
    ConnectionExists {
        account: String,
        provider: ProviderName,
        id: String,
    },

    /// The request is sound but the service is not set up for it: no secrets key to seal
    /// credentials with, no connection the account may use for a provider, a connection that
    /// still has refunds to settle. `reason` is the machine-readable ErrorInfo reason.
    #[error("{message}")]
    NotSetUp {
        reason: &'static str,
        message: String,
    },

    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl RefundError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}
