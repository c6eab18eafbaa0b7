//! The invariant checker behind `refund-service verify`: our database against the provider's own
//! ledger.
//!
//! [`collect`] reads the two snapshots (the only I/O here) and [`check`] compares them, with no
//! I/O of its own, into a [`Report`]. The order of the reads matters while the service runs:
//! the ledger's refund ids first, then our books in one read-only transaction, then the ledger
//! again. A refund is stored here before it is sent, so a provider refund already there before
//! our books were read and carrying no id of ours is an orphan, while one that appeared later
//! may be new; and a provider status read after ours is never older than ours.

mod check;
mod events;
mod report;

pub use check::{
    CheckOptions, LEDGER_PROVIDER, Ledger, LedgerPayment, LedgerRefund, LedgerStatus, check,
};
pub use report::{Report, Violation, ViolationKind};

use anyhow::Context as _;

use crate::sandbox::{self, client::SandboxClient};
use crate::store::{Books, Store};

/// How `verify` ended when it did not find everything in order. `main` turns it into the exit
/// status.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The report lists them.
    #[error("{0} invariant violation{s} found", s = if *.0 == 1 { "" } else { "s" })]
    Violations(usize),
    /// Bad usage, or the database or the sandbox could not be read.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl VerifyError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Violations(_) => 1,
            Self::Failed(_) => 2,
        }
    }
}

/// Reads our books and the sandbox's ledger, in the order the module documentation explains.
pub async fn collect(store: &Store, sandbox: &SandboxClient) -> anyhow::Result<(Books, Ledger)> {
    let before = sandbox
        .ledger(None)
        .await
        .context("cannot read the sandbox's ledger")?;
    let books = store
        .books_snapshot()
        .await
        .context("cannot read the database (is it migrated?)")?;
    let refunds = sandbox
        .ledger(None)
        .await
        .context("cannot read the sandbox's ledger")?;
    let payments = sandbox
        .ledger_payments()
        .await
        .context("cannot read the sandbox's payments")?;
    let ledger = Ledger {
        payments: payments.into_iter().map(LedgerPayment::from).collect(),
        refunds: refunds.into_iter().map(LedgerRefund::from).collect(),
        seen_before_books: Some(before.into_iter().map(|r| r.id).collect()),
    };
    Ok((books, ledger))
}

// === impl From<sandbox::…> ===

impl From<sandbox::Payment> for LedgerPayment {
    fn from(p: sandbox::Payment) -> Self {
        Self {
            id: p.id,
            captured: p.amount,
            refunded: p.amount_refunded,
            currency: p.currency,
        }
    }
}

impl From<sandbox::RefundStatus> for LedgerStatus {
    fn from(s: sandbox::RefundStatus) -> Self {
        match s {
            sandbox::RefundStatus::Pending => Self::Pending,
            sandbox::RefundStatus::Succeeded => Self::Succeeded,
            sandbox::RefundStatus::Failed => Self::Failed,
            sandbox::RefundStatus::Canceled => Self::Canceled,
        }
    }
}

impl From<sandbox::Refund> for LedgerRefund {
    fn from(r: sandbox::Refund) -> Self {
        let sandbox::Refund {
            id,
            payment,
            amount,
            currency,
            status,
            reason: _,
            mut metadata,
            idempotency_key,
            failure_code: _,
            failure_reason: _,
            created: _,
        } = r;
        Self {
            id,
            payment,
            amount,
            currency,
            status: status.into(),
            idempotency_key,
            refund_id: metadata.remove("refund_id"),
        }
    }
}
