//! Bulk refunds: a batch of refund jobs run server-side, each job ending in exactly one result.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{
    AccountId, FieldViolation, IdempotencyKey, NewRefund, ProviderName, Refund, RefundError,
    RefundId, Timestamp,
};

prefixed_id!(
    /// A batch: `bulk_` and a UUIDv7.
    BulkId,
    "bulk_"
);

/// RUNNING until every job has a result; then how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BulkState {
    Running,
    Completed,
    Aborted,
    Canceled,
}

impl BulkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Completed,
            Self::Aborted,
            Self::Canceled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// Why a running batch stops dispatching before every job ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// A job failed and the batch aborts on error: the rest are skipped.
    Abort,
    /// CancelBulkRefund: the rest are canceled.
    Cancel,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Abort => "abort",
            Self::Cancel => "cancel",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Abort, Self::Cancel]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// What the jobs never dispatched end as.
    pub fn undispatched_status(self) -> ItemStatus {
        match self {
            Self::Abort => ItemStatus::Skipped,
            Self::Cancel => ItemStatus::Canceled,
        }
    }

    pub fn final_state(self) -> BulkState {
        match self {
            Self::Abort => BulkState::Aborted,
            Self::Cancel => BulkState::Canceled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemStatus {
    Queued,
    Running,
    Succeeded,
    /// Its refund was made but is above the account's approval threshold: it waits for
    /// ApproveRefund. The job itself is done (counted with the succeeded ones).
    RequiresApproval,
    Failed,
    Skipped,
    Canceled,
}

impl ItemStatus {
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::RequiresApproval,
        Self::Failed,
        Self::Skipped,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            // The column is 16 characters wide.
            Self::RequiresApproval => "needs_approval",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        match self {
            Self::Succeeded
            | Self::RequiresApproval
            | Self::Failed
            | Self::Skipped
            | Self::Canceled => true,
            Self::Queued | Self::Running => false,
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// A gRPC-style code or reason (`INVALID_ARGUMENT`, `OVER_REFUND`, ...) or the provider's
    /// failure code.
    pub code: String,
    pub message: String,
    /// Whether running the job again later may succeed.
    pub retryable: bool,
}

impl JobError {
    pub fn invalid(violations: &[FieldViolation]) -> Self {
        Self {
            code: "INVALID_ARGUMENT".to_owned(),
            message: violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; "),
            retryable: false,
        }
    }

    /// The result of a job whose refund could not be made.
    pub fn from_refund_error(e: &RefundError) -> Self {
        let (code, retryable) = match e {
            RefundError::InvalidArgument(v) => return Self::invalid(v),
            RefundError::PaymentNotFound { .. }
            | RefundError::RefundNotFound { .. }
            | RefundError::BulkNotFound { .. }
            | RefundError::NotFound { .. }
            | RefundError::ConnectionNotFound { .. } => ("NOT_FOUND", false),
            RefundError::PaymentNotRefundable { .. } => ("PAYMENT_NOT_REFUNDABLE", false),
            // A capture notification may still come: trying later can help.
            RefundError::CaptureNotNotified { .. } => ("CAPTURE_NOT_NOTIFIED", true),
            RefundError::OverRefund { .. } => ("OVER_REFUND", false),
            RefundError::AlreadyRefunded { .. } => ("ALREADY_REFUNDED", false),
            RefundError::IdempotencyKeyReused { .. } => ("IDEMPOTENCY_KEY_REUSED", false),
            RefundError::ProviderUnavailable { .. } => ("UNAVAILABLE", true),
            RefundError::SelfApproval { .. } => ("SELF_APPROVAL", false),
            RefundError::NotAwaitingApproval { .. } => ("NOT_AWAITING_APPROVAL", false),
            RefundError::ConnectionExists { .. } => ("ALREADY_EXISTS", false),
            RefundError::NotSetUp { reason, .. } => (*reason, false),
            RefundError::Internal(_) => ("INTERNAL", true),
        };
        Self {
            code: code.to_owned(),
            message: e.to_string(),
            retryable,
        }
    }

    /// The result of a job whose refund the provider rejected.
    pub fn from_failed_refund(refund: &Refund) -> Self {
        let (code, message) = refund
            .failure
            .as_ref()
            .map(|f| (f.code.clone(), f.reason.clone()))
            .unwrap_or_else(|| ("refund_failed".to_owned(), String::new()));
        Self {
            code,
            message,
            retryable: false,
        }
    }
}

/// How a dispatched job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub status: ItemStatus,
    pub refund_id: Option<RefundId>,
    pub error: Option<JobError>,
    pub attempts: u32,
}

impl JobOutcome {
    /// A job whose refund was made: it succeeded unless the provider rejected the refund. A
    /// refund still PENDING at the provider counts as done; the reconciler settles it.
    pub fn of_refund(refund: &Refund) -> Self {
        let failed = refund.status == super::RefundStatus::Failed;
        Self {
            status: match refund.status {
                super::RefundStatus::Failed => ItemStatus::Failed,
                super::RefundStatus::RequiresApproval => ItemStatus::RequiresApproval,
                super::RefundStatus::Pending
                | super::RefundStatus::Succeeded
                | super::RefundStatus::Canceled => ItemStatus::Succeeded,
            },
            refund_id: Some(refund.id.clone()),
            error: failed.then(|| JobError::from_failed_refund(refund)),
            attempts: refund.attempts,
        }
    }

    /// A job whose refund could not be made.
    pub fn of_error(e: &RefundError) -> Self {
        let attempts = match e {
            RefundError::ProviderUnavailable { .. } => 1,
            RefundError::InvalidArgument(_)
            | RefundError::PaymentNotFound { .. }
            | RefundError::PaymentNotRefundable { .. }
            | RefundError::CaptureNotNotified { .. }
            | RefundError::OverRefund { .. }
            | RefundError::AlreadyRefunded { .. }
            | RefundError::IdempotencyKeyReused { .. }
            | RefundError::RefundNotFound { .. }
            | RefundError::BulkNotFound { .. }
            | RefundError::NotFound { .. }
            | RefundError::SelfApproval { .. }
            | RefundError::NotAwaitingApproval { .. }
            | RefundError::ConnectionNotFound { .. }
            | RefundError::ConnectionExists { .. }
            | RefundError::NotSetUp { .. }
            | RefundError::Internal(_) => 0,
        };
        Self {
            status: ItemStatus::Failed,
            refund_id: None,
            error: Some(JobError::from_refund_error(e)),
            attempts,
        }
    }
}

/// One job of a new batch: its parsed request, or why it could not be parsed.
pub type BulkJob = Result<NewRefund, Vec<FieldViolation>>;

/// A batch request whose jobs have each been parsed on their own.
#[derive(Debug)]
pub struct NewBulk {
    pub jobs: Vec<BulkJob>,
    pub abort_on_error: bool,
    pub max_concurrency: u32,
    pub idempotency_key: Option<IdempotencyKey>,
    pub metadata: BTreeMap<String, String>,
    /// The API key that sent the batch; its jobs' refunds count as made by it.
    pub created_by: Option<super::ApiKeyId>,
}

impl NewBulk {
    /// A digest of the whole batch: the same key with a different digest is a different batch.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update([u8::from(self.abort_on_error)]);
        h.update((self.jobs.len() as u64).to_be_bytes());
        for job in &self.jobs {
            match job {
                Ok(r) => {
                    h.update(b"ok");
                    h.update(r.fingerprint().as_bytes());
                    let key = r.idempotency_key.as_ref().map_or("", |k| k.as_str());
                    h.update((key.len() as u64).to_be_bytes());
                    h.update(key.as_bytes());
                }
                Err(v) => {
                    h.update(b"invalid");
                    for v in v {
                        h.update(v.field.as_bytes());
                        h.update(v.description.as_bytes());
                    }
                }
            }
        }
        for (k, v) in &self.metadata {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_be_bytes());
            h.update(v.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The idempotency key a job without its own is sent with: stable across restarts and re-runs
/// of the same batch, so a job never refunds twice.
pub fn derived_job_key(
    batch_key: Option<&IdempotencyKey>,
    bulk: &BulkId,
    index: u32,
) -> IdempotencyKey {
    let base = batch_key.map_or(bulk.as_str(), |k| k.as_str());
    // A batch key is at most 255 characters; keep the derived key within the same limit.
    let mut key = format!("{base}:{index}");
    if key.len() > 255 {
        let digest: String = Sha256::digest(base.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        key = format!("bulk-{digest}:{index}");
    }
    IdempotencyKey::from_trusted(key)
}

/// Progress counts of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkCounts {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
    pub canceled: u32,
}

impl BulkCounts {
    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed + self.skipped + self.canceled
    }

    pub fn pending(&self) -> u32 {
        self.total.saturating_sub(self.finished())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulk {
    pub id: BulkId,
    pub account: AccountId,
    pub state: BulkState,
    pub stop: Option<StopReason>,
    pub counts: BulkCounts,
    pub abort_on_error: bool,
    pub max_concurrency: u32,
    pub idempotency_key: Option<IdempotencyKey>,
    pub metadata: BTreeMap<String, String>,
    pub last_sequence: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub created_by: Option<super::ApiKeyId>,
    /// Providers whose jobs the batch holds back now, waiting for them to answer again.
    pub provider_waits: Vec<ProviderWait>,
}

/// A batch holding a provider's jobs, queued rather than failed, while the provider is
/// unavailable (its circuit is open, or it asked for a pause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderWait {
    pub provider: ProviderName,
    /// Why, in the traffic layer's words (e.g. "circuit open: provider unavailable: HTTP 500").
    pub reason: String,
    pub since: Timestamp,
    /// When a held job is tried next (it is the probe: the others follow once it goes through).
    pub next_attempt: Timestamp,
    /// When the held jobs fail (retryably) if the provider is still unavailable.
    pub give_up_at: Timestamp,
    pub held_jobs: u32,
}

/// The outcome of one job, as reported in the stream and by ListBulkRefundItems.
#[derive(Debug, Clone)]
pub struct ItemResult {
    pub index: u32,
    pub payment_id: String,
    pub provider: String,
    pub status: ItemStatus,
    pub refund: Option<Refund>,
    pub error: Option<JobError>,
    pub attempts: u32,
    /// The job as accepted, with the key it is sent with; `None` for a job refused by
    /// validation.
    pub job: Option<NewRefund>,
}

/// One event of a batch's stream.
#[derive(Debug, Clone)]
pub enum BulkEvent {
    Accepted {
        bulk_id: BulkId,
        total: u32,
    },
    Result(Box<ItemResult>),
    Summary {
        counts: BulkCounts,
        state: BulkState,
        duration_micros: i64,
    },
    /// The batch holds a provider's jobs: sent when the wait starts and whenever the next
    /// attempt is rescheduled.
    ProviderWaiting(ProviderWait),
    /// The wait for a provider is over: it answered again, or the wait reached its bound and
    /// the held jobs failed.
    ProviderWaitEnded {
        provider: ProviderName,
        waited_micros: i64,
        /// The bound was reached: `failed_jobs` held jobs failed with a retryable error.
        gave_up: bool,
        failed_jobs: u32,
    },
    /// The batch's counts, sent on a stream that has been idle for a while (a keep-alive for
    /// proxies that cut idle connections). Never stored: its sequence repeats the latest
    /// stored event's.
    Progress {
        counts: BulkCounts,
        state: BulkState,
    },
}

#[derive(Debug, Clone)]
pub struct SequencedEvent {
    pub sequence: u64,
    pub event: BulkEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_stable_distinct_and_bounded() {
        let bulk = BulkId::generate();
        let key = IdempotencyKey::parse("batch-2026-11-23").unwrap();
        assert_eq!(
            derived_job_key(Some(&key), &bulk, 7).as_str(),
            "batch-2026-11-23:7"
        );
        assert_eq!(
            derived_job_key(None, &bulk, 7).as_str(),
            format!("{}:7", bulk.as_str())
        );
        let long = IdempotencyKey::parse(&"k".repeat(255)).unwrap();
        let a = derived_job_key(Some(&long), &bulk, 1);
        let b = derived_job_key(Some(&long), &bulk, 2);
        assert!(a.as_str().len() <= 255 && a != b);
        assert!(IdempotencyKey::parse(a.as_str()).is_ok());
    }

    #[test]
    fn bulk_ids_parse_back() {
        let id = BulkId::generate();
        assert_eq!(BulkId::parse(id.as_str()), Some(id));
        assert_eq!(BulkId::parse("bulk_xyz"), None);
        assert_eq!(BulkId::parse("rf_0190c5f4a4f07c3e9e2b7b6a1e1d2c3b"), None);
    }

    #[test]
    fn statuses_round_trip() {
        for s in ItemStatus::ALL {
            assert_eq!(ItemStatus::parse(s.as_str()), Some(s));
        }
        for s in [
            BulkState::Running,
            BulkState::Completed,
            BulkState::Aborted,
            BulkState::Canceled,
        ] {
            assert_eq!(BulkState::parse(s.as_str()), Some(s));
        }
    }
}
