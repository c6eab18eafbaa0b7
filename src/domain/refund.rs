//! A refund, its identity and its life: the status machine that makes illegal transitions
//! impossible to store.

use std::collections::BTreeMap;

use super::{Amount, Currency, Timestamp};

/// The tenant a record belongs to. Until authentication lands every caller is [`AccountId::default_account`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    pub const DEFAULT: &'static str = "acct_default";

    pub fn default_account() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    pub fn from_trusted(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

prefixed_id!(
    /// A refund: `rf_` and a UUIDv7, so ids sort by creation time (lists page by id).
    RefundId,
    "rf_"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundReason {
    Unspecified,
    Duplicate,
    Fraudulent,
    RequestedByCustomer,
    Other,
}

impl RefundReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Duplicate => "duplicate",
            Self::Fraudulent => "fraudulent",
            Self::RequestedByCustomer => "requested_by_customer",
            Self::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Unspecified,
            Self::Duplicate,
            Self::Fraudulent,
            Self::RequestedByCustomer,
            Self::Other,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// PENDING -> SUCCEEDED | FAILED | CANCELED, and REQUIRES_APPROVAL -> PENDING | CANCELED.
/// SUCCEEDED, FAILED and CANCELED are terminal: money that went back cannot be recalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    RequiresApproval,
    Pending,
    Succeeded,
    Failed,
    Canceled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a refund cannot go from {from:?} to {to:?}")]
pub struct IllegalTransition {
    pub from: RefundStatus,
    pub to: RefundStatus,
}

impl RefundStatus {
    pub const ALL: [Self; 5] = [
        Self::RequiresApproval,
        Self::Pending,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequiresApproval => "requires_approval",
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        match self {
            Self::Succeeded | Self::Failed | Self::Canceled => true,
            Self::RequiresApproval | Self::Pending => false,
        }
    }

    /// Whether a refund in this status still holds its amount against the payment's balance.
    pub fn holds_reservation(self) -> bool {
        match self {
            Self::RequiresApproval | Self::Pending | Self::Succeeded => true,
            Self::Failed | Self::Canceled => false,
        }
    }

    /// The only way to compute a next status. The store writes a transition conditionally on the
    /// `from` status it was computed from, so two writers can never both move one refund.
    pub fn transition(self, to: Self) -> Result<Self, IllegalTransition> {
        use RefundStatus::*;
        match (self, to) {
            (RequiresApproval, Pending | Canceled) => Ok(to),
            (Pending, Succeeded | Failed | Canceled) => Ok(to),
            (RequiresApproval, RequiresApproval | Succeeded | Failed)
            | (Pending, Pending | RequiresApproval)
            | (Succeeded | Failed | Canceled, _) => Err(IllegalTransition { from: self, to }),
        }
    }
}

/// Why a refund failed, in the provider's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub reason: String,
}

/// A refund as the service stores and reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: RefundId,
    pub account: AccountId,
    pub payment: super::PaymentRef,
    pub provider: super::ProviderName,
    /// Whose credentials it goes through: the platform's or the account's own connection.
    pub route: super::Route,
    pub provider_refund_id: Option<String>,
    pub amount: Amount,
    pub currency: Currency,
    pub status: RefundStatus,
    pub reason: RefundReason,
    pub reason_detail: String,
    pub metadata: BTreeMap<String, String>,
    pub failure: Option<Failure>,
    pub idempotency_key: Option<super::IdempotencyKey>,
    /// Provider calls made for it: the creation, and look-ups or re-sends by the reconciler.
    pub attempts: u32,
    /// The API key that asked for it, and the one that approved it (refunds above the account's
    /// approval threshold).
    pub created_by: Option<super::ApiKeyId>,
    pub approved_by: Option<super::ApiKeyId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Refund {
    /// The key this refund is sent to its provider with. It is the refund's own id, fixed before
    /// the first call, so every retry and every replica sends the same key.
    pub fn provider_idempotency_key(&self) -> &str {
        self.id.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_transitions_are_legal() {
        use RefundStatus::*;
        let legal = [
            (RequiresApproval, Pending),
            (RequiresApproval, Canceled),
            (Pending, Succeeded),
            (Pending, Failed),
            (Pending, Canceled),
        ];
        for from in RefundStatus::ALL {
            for to in RefundStatus::ALL {
                assert_eq!(
                    from.transition(to).is_ok(),
                    legal.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn terminal_statuses_have_no_way_out() {
        for from in RefundStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in RefundStatus::ALL {
                assert!(from.transition(to).is_err());
            }
        }
    }

    #[test]
    fn status_and_reason_names_round_trip() {
        for s in RefundStatus::ALL {
            assert_eq!(RefundStatus::parse(s.as_str()), Some(s));
        }
        for r in [
            RefundReason::Unspecified,
            RefundReason::Duplicate,
            RefundReason::Fraudulent,
            RefundReason::RequestedByCustomer,
            RefundReason::Other,
        ] {
            assert_eq!(RefundReason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn refund_ids_are_prefixed_sortable_and_parse_back() {
        let a = RefundId::generate();
        let b = RefundId::generate();
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(RefundId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(RefundId::parse("rf_nothex"), None);
        assert_eq!(RefundId::parse(&a.as_str().to_uppercase()), None);
        assert_eq!(RefundId::parse(&a.as_str()[3..]), None);
    }
}
