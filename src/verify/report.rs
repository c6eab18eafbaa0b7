//! What `verify` found: counts, violations and warnings, printed for people or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// Each invariant the checker holds our books and the provider's ledger to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// The provider's pending and succeeded refunds of a payment exceed what it captured.
    ProviderOverRefund,
    /// A payment's `reserved_amount` is not the sum of its refunds that hold a reservation.
    ReservationMismatch,
    /// A payment's `reserved_amount` exceeds its captured amount.
    ReservedOverCaptured,
    /// More than one provider refund carries one of our refund ids.
    DuplicateProviderRefund,
    /// FAILED or CANCELED here (the amount released), yet pending or succeeded at the provider.
    ReleasedButRefunded,
    /// SUCCEEDED here, but the provider has no such refund.
    SucceededMissingAtProvider,
    /// SUCCEEDED here, but the provider's refund is not succeeded.
    SucceededNotAtProvider,
    /// Our refund and the provider's differ in amount, currency or payment.
    AmountMismatch,
    /// Our row names a provider refund id the provider's refund for it does not have.
    ProviderRefundIdMismatch,
    /// REQUIRES_APPROVAL here, yet the provider has a refund for it.
    SentWithoutApproval,
    /// A provider refund carrying no refund id of ours.
    OrphanProviderRefund,
    /// PENDING here while the provider's refund is final or absent (a violation with `--settled`).
    Unresolved,
    /// A finished batch has a job that is still queued or running.
    BulkItemNotTerminal,
    /// A job names a refund that does not exist.
    BulkItemUnknownRefund,
    /// A job reports FAILED although the refund made for it exists, and does not name it.
    BulkItemFailedWithRefund,
    /// A job reports FAILED, naming a refund that did not fail.
    BulkItemStatusMismatch,
    /// A job reports success without naming its refund.
    BulkItemWithoutRefund,
    /// A refund or batch without the event its change must have written with it (created,
    /// accepted, or the one that tells how it ended).
    EventMissing,
    /// A change told twice, or an end event that contradicts the refund's or batch's state.
    EventMismatch,
    /// An account's event sequences repeat or skip a number.
    EventSequenceGap,
    /// A row whose status or state is not one the service writes.
    CorruptRow,
}

impl ViolationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProviderOverRefund => "provider_over_refund",
            Self::ReservationMismatch => "reservation_mismatch",
            Self::ReservedOverCaptured => "reserved_over_captured",
            Self::DuplicateProviderRefund => "duplicate_provider_refund",
            Self::ReleasedButRefunded => "released_but_refunded",
            Self::SucceededMissingAtProvider => "succeeded_missing_at_provider",
            Self::SucceededNotAtProvider => "succeeded_not_at_provider",
            Self::AmountMismatch => "amount_mismatch",
            Self::ProviderRefundIdMismatch => "provider_refund_id_mismatch",
            Self::SentWithoutApproval => "sent_without_approval",
            Self::OrphanProviderRefund => "orphan_provider_refund",
            Self::Unresolved => "unresolved",
            Self::BulkItemNotTerminal => "bulk_item_not_terminal",
            Self::BulkItemUnknownRefund => "bulk_item_unknown_refund",
            Self::BulkItemFailedWithRefund => "bulk_item_failed_with_refund",
            Self::BulkItemStatusMismatch => "bulk_item_status_mismatch",
            Self::BulkItemWithoutRefund => "bulk_item_without_refund",
            Self::EventMissing => "event_missing",
            Self::EventMismatch => "event_mismatch",
            Self::EventSequenceGap => "event_sequence_gap",
            Self::CorruptRow => "corrupt_row",
        }
    }
}

/// One broken invariant (or, for `unresolved` without `--settled`, one warning), with the ids it
/// is about and a one-line explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_refund_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_index: Option<i32>,
    pub message: String,
}

impl Violation {
    pub(crate) fn new(kind: ViolationKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            provider: None,
            payment_id: None,
            refund_id: None,
            provider_refund_id: None,
            bulk_id: None,
            item_index: None,
            message: message.into(),
        }
    }

    pub(crate) fn payment(mut self, provider: &str, payment_id: &str) -> Self {
        self.provider = Some(provider.to_owned());
        self.payment_id = Some(payment_id.to_owned());
        self
    }

    pub(crate) fn refund(mut self, refund_id: &str) -> Self {
        self.refund_id = Some(refund_id.to_owned());
        self
    }

    pub(crate) fn provider_refund(mut self, provider_refund_id: &str) -> Self {
        self.provider_refund_id = Some(provider_refund_id.to_owned());
        self
    }

    pub(crate) fn item(mut self, bulk_id: &str, index: i32) -> Self {
        self.bulk_id = Some(bulk_id.to_owned());
        self.item_index = Some(index);
        self
    }

    /// `kind  ids: message`, on one line.
    pub fn line(&self) -> String {
        let mut ids = Vec::new();
        if let (Some(provider), Some(payment)) = (&self.provider, &self.payment_id) {
            ids.push(format!("payment {provider}/{payment}"));
        }
        if let Some(id) = &self.refund_id {
            ids.push(format!("refund {id}"));
        }
        if let Some(id) = &self.provider_refund_id {
            ids.push(format!("provider refund {id}"));
        }
        if let (Some(bulk), Some(index)) = (&self.bulk_id, self.item_index) {
            ids.push(format!("bulk {bulk} job {index}"));
        }
        format!(
            "{}  {}: {}",
            self.kind.as_str(),
            ids.join(", "),
            self.message
        )
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether PENDING refunds the provider has settled (or never saw) count as violations.
    pub settled: bool,
    /// No violation.
    pub ok: bool,
    /// Payments whose balance (ours) or refunded amount (the provider's) was checked.
    pub payments_checked: u64,
    /// Our refunds compared with the provider's ledger.
    pub refunds_checked: u64,
    /// Our refunds at providers without a ledger to compare with (only the sandbox has one).
    pub refunds_not_checked: u64,
    /// Refunds in the provider's ledger.
    pub provider_refunds: u64,
    /// Provider refunds made after our books were read (not judged as orphans).
    pub provider_refunds_too_new: u64,
    pub bulks_checked: u64,
    pub bulk_items_checked: u64,
    /// Client events compared with the refunds and batches they tell of.
    pub events_checked: u64,
    /// PENDING refunds the provider has settled or never saw.
    pub unresolved: u64,
    pub violations: Vec<Violation>,
    /// The unresolved refunds, when they are not violations (without `--settled`).
    pub warnings: Vec<Violation>,
}

/// Warnings printed in the human summary; the JSON report has them all.
const MAX_WARNINGS_SHOWN: usize = 20;

impl Report {
    /// The summary for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "payments checked:  {}", self.payments_checked);
        let _ = writeln!(
            out,
            "refunds checked:   {} (not checked, other providers: {})",
            self.refunds_checked, self.refunds_not_checked
        );
        let _ = writeln!(
            out,
            "provider refunds:  {} ({} made after our books were read)",
            self.provider_refunds, self.provider_refunds_too_new
        );
        let _ = writeln!(
            out,
            "bulk batches:      {} ({} jobs)",
            self.bulks_checked, self.bulk_items_checked
        );
        let _ = writeln!(out, "events:            {}", self.events_checked);
        let _ = writeln!(
            out,
            "unresolved:        {}{}",
            self.unresolved,
            if self.settled {
                " (violations: --settled)"
            } else {
                " (warnings; violations with --settled)"
            }
        );
        let _ = writeln!(out, "violations:        {}", self.violations.len());
        for v in &self.violations {
            let _ = writeln!(out, "  {}", v.line());
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out, "warnings:          {}", self.warnings.len());
            for w in self.warnings.iter().take(MAX_WARNINGS_SHOWN) {
                let _ = writeln!(out, "  {}", w.line());
            }
            if self.warnings.len() > MAX_WARNINGS_SHOWN {
                let _ = writeln!(
                    out,
                    "  … and {} more (--json lists them all)",
                    self.warnings.len() - MAX_WARNINGS_SHOWN
                );
            }
        }
        let _ = writeln!(
            out,
            "{}",
            if self.ok {
                "OK: no invariant is broken"
            } else {
                "FAILED: invariants are broken"
            }
        );
        out
    }
}
