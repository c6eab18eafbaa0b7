//! Inbound provider events (webhooks) as the service records them.

use super::{Currency, Failure, PaymentRef, ProviderName, RefundStatus};

/// One provider event about at most one refund, ready to be recorded and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundEvent {
    pub provider: ProviderName,
    /// Whose signing secret it came with; it applies only to refunds of the same route.
    pub route: super::Route,
    /// The provider's event id; with `provider`, what makes a redelivery recognisable.
    pub event_id: String,
    /// The provider's event type, e.g. `refund.updated`.
    pub kind: String,
    pub payment: Option<PaymentRef>,
    /// The refund the event reports, if it reports one; otherwise the event is about `payment`.
    pub report: Option<RefundReport>,
}

/// A refund as a provider event reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReport {
    pub provider_refund_id: String,
    /// Our refund id, when the provider carries it back.
    pub refund_id: Option<String>,
    pub status: RefundStatus,
    pub amount: i64,
    pub failure: Option<Failure>,
}

/// A payment's captured amount as a provider event reports it (for providers that cannot be
/// asked): what the payments ledger holds as refundable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifiedCapture {
    pub payment: PaymentRef,
    /// Minor units of `currency`; never negative.
    pub amount: i64,
    pub currency: Currency,
}

/// What became of an inbound event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Recorded, not processed yet (or processing was interrupted: it is picked up again).
    Received,
    /// It moved a refund (or recorded the provider's refund id).
    Applied,
    /// Nothing to do: the refund had already moved on, or the event changes nothing.
    Ignored,
    /// No refund of ours matches yet; kept and matched again later.
    Unmatched,
    /// The event was about a payment: its PENDING refunds were scheduled for a look-up now.
    Nudged,
}

impl WebhookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "RECEIVED",
            Self::Applied => "APPLIED",
            Self::Ignored => "IGNORED",
            Self::Unmatched => "UNMATCHED",
            Self::Nudged => "NUDGED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Received,
            Self::Applied,
            Self::Ignored,
            Self::Unmatched,
            Self::Nudged,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }

    /// Whether a redelivery of the event needs no more work.
    pub fn is_final(self) -> bool {
        match self {
            Self::Applied | Self::Ignored | Self::Nudged => true,
            Self::Received | Self::Unmatched => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_names() {
        for o in [
            WebhookOutcome::Received,
            WebhookOutcome::Applied,
            WebhookOutcome::Ignored,
            WebhookOutcome::Unmatched,
            WebhookOutcome::Nudged,
        ] {
            assert_eq!(WebhookOutcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(WebhookOutcome::parse("applied"), None);
    }
}
