//! The audit trail: who changed what, when, through which request, and how it ended.

use super::{AccountId, ApiKeyId, Timestamp};

prefixed_id!(
    /// An audit record: `aud_` and a UUIDv7, so records sort by time.
    AuditId,
    "aud_"
);

/// One state change, written in the transaction that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: AuditId,
    pub account: AccountId,
    /// The API key that caused it; `None` for the service's own work (reconciler, webhooks) and
    /// for the command line.
    pub actor_key: Option<ApiKeyId>,
    /// `api`, `bulk`, `approval`, `webhook`, `reconciler`, `cli`.
    pub source: String,
    /// e.g. `refund.create`, `refund.approve`, `refund.reject`, `refund.settle`, `bulk.create`,
    /// `bulk.cancel`, `api_key.create`, `api_key.revoke`.
    pub action: String,
    /// The refund, batch or key acted on.
    pub resource_id: String,
    /// The caller's `x-request-id` (or the one the service gave the call).
    pub request_id: Option<String>,
    /// What it ended as, e.g. the refund's new status.
    pub outcome: String,
    /// A short human-readable detail (amounts, reasons); never secrets.
    pub detail: String,
    pub created_at: Timestamp,
}
