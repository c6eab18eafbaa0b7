//! Events: what the service tells its clients happened, as a durable, per-account ordered log.
//!
//! Events are the clients' contract (ListEvents, WatchEvents, and the webhooks sent to their
//! endpoints), not the audit trail: each carries the resource as the API returns it at that
//! moment, in the JSON form documented in README ("Events"), version [`API_VERSION`]. Fields are
//! only ever added to that form; a change that would break a receiver is a new version.
//!
//! The JSON form lives here, beside the types it shows, because it is the one representation
//! the store keeps, the gRPC API decodes and the webhook sender posts as is.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    AccountId, Amount, ApiKeyId, Bulk, BulkCounts, BulkId, BulkState, ConnectionId, Currency,
    Failure, IdempotencyKey, PaymentRef, ProviderName, Refund, RefundId, RefundReason,
    RefundStatus, Route, Timestamp,
};

/// The version of the events' JSON form, sent as `api_version` in every event.
pub const API_VERSION: &str = "v1";

prefixed_id!(
    /// An event: `evt_` and a UUIDv7.
    EventId,
    "evt_"
);

/// What happened. The names are the contract (`refund.succeeded`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A refund was stored (PENDING, or REQUIRES_APPROVAL above its account's threshold).
    RefundCreated,
    /// A refund waits for a second key's approval (sent after its `refund.created`).
    RefundRequiresApproval,
    RefundSucceeded,
    RefundFailed,
    /// Rejected while waiting for approval, or canceled before it reached its provider.
    RefundCanceled,
    /// A batch and its jobs were stored.
    BulkAccepted,
    /// A batch ended: every job has its result (or the rest were skipped after an abort).
    BulkCompleted,
    /// A batch ended after CancelBulkRefund: the jobs never dispatched were canceled.
    BulkCanceled,
}

impl EventType {
    pub const ALL: [Self; 8] = [
        Self::RefundCreated,
        Self::RefundRequiresApproval,
        Self::RefundSucceeded,
        Self::RefundFailed,
        Self::RefundCanceled,
        Self::BulkAccepted,
        Self::BulkCompleted,
        Self::BulkCanceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefundCreated => "refund.created",
            Self::RefundRequiresApproval => "refund.requires_approval",
            Self::RefundSucceeded => "refund.succeeded",
            Self::RefundFailed => "refund.failed",
            Self::RefundCanceled => "refund.canceled",
            Self::BulkAccepted => "bulk_refund.accepted",
            Self::BulkCompleted => "bulk_refund.completed",
            Self::BulkCanceled => "bulk_refund.canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The event a refund's move into `status` is, if clients are told of it. Approval
    /// (REQUIRES_APPROVAL -> PENDING) is not an event of its own: the refund's settlement is.
    pub fn of_refund_status(status: RefundStatus) -> Option<Self> {
        match status {
            RefundStatus::Succeeded => Some(Self::RefundSucceeded),
            RefundStatus::Failed => Some(Self::RefundFailed),
            RefundStatus::Canceled => Some(Self::RefundCanceled),
            RefundStatus::RequiresApproval => Some(Self::RefundRequiresApproval),
            RefundStatus::Pending => None,
        }
    }

    /// The event a batch's end is.
    pub fn of_bulk_end(state: BulkState) -> Self {
        match state {
            BulkState::Canceled => Self::BulkCanceled,
            BulkState::Running | BulkState::Completed | BulkState::Aborted => Self::BulkCompleted,
        }
    }
}

/// The resource an event is about, as it was when the event happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventResource {
    Refund(Box<Refund>),
    Bulk(Box<Bulk>),
}

impl EventResource {
    pub fn id(&self) -> &str {
        match self {
            Self::Refund(r) => r.id.as_str(),
            Self::Bulk(b) => b.id.as_str(),
        }
    }

    /// The resource's JSON form (the event's `data`).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        match self {
            Self::Refund(r) => serde_json::to_string(&RefundData::of(r)),
            Self::Bulk(b) => serde_json::to_string(&BulkData::of(b)),
        }
    }

    /// Reads back what [`EventResource::to_json`] wrote, for `account`.
    pub fn from_json(account: &AccountId, json: &str) -> Result<Self, EventDecodeError> {
        match serde_json::from_str::<Data>(json)? {
            Data::Refund(r) => Ok(Self::Refund(Box::new(r.into_refund(account)?))),
            Data::BulkRefund(b) => Ok(Self::Bulk(Box::new(b.into_bulk(account)?))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("event data is not valid JSON of a known resource: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event data has a bad {field}: {value:?}")]
    Field { field: &'static str, value: String },
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub account: AccountId,
    /// 1, 2, 3, ... per account, in commit order: a reader that has seen `n` has seen every
    /// event before it.
    pub sequence: u64,
    pub kind: EventType,
    pub created_at: Timestamp,
    pub resource: EventResource,
    /// `resource` in its JSON form, as stored: what webhooks send, byte for byte.
    pub data: String,
}

/// An event's JSON envelope as webhooks carry it (README, "Events").
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    api_version: &'a str,
    account_id: &'a str,
    sequence: u64,
    /// When it happened (RFC 3339, UTC).
    timestamp: String,
    data: &'a serde_json::value::RawValue,
}

impl Event {
    /// The event as a webhook body: its envelope around `data`, the resource's stored JSON.
    pub fn envelope_json(&self) -> Result<String, serde_json::Error> {
        let data: &serde_json::value::RawValue = serde_json::from_str(&self.data)?;
        serde_json::to_string(&Envelope {
            id: self.id.as_str(),
            kind: self.kind.as_str(),
            api_version: API_VERSION,
            account_id: self.account.as_str(),
            sequence: self.sequence,
            timestamp: rfc3339(self.created_at),
            data,
        })
    }
}

/// `data` of an event, tagged with the kind of resource (`"object": "refund"`).
#[derive(Serialize, Deserialize)]
#[serde(tag = "object", rename_all = "snake_case")]
enum Data {
    Refund(RefundData),
    BulkRefund(BulkData),
}

/// A refund as events show it: the fields of the API's `Refund`, by the same names.
#[derive(Serialize, Deserialize)]
struct RefundData {
    id: String,
    payment_id: String,
    provider: String,
    provider_refund_id: Option<String>,
    /// Minor units of `currency`.
    amount: i64,
    currency: String,
    /// `PENDING`, `SUCCEEDED`, `FAILED`, `CANCELED` or `REQUIRES_APPROVAL`.
    status: String,
    /// `UNSPECIFIED`, `DUPLICATE`, `FRAUDULENT`, `REQUESTED_BY_CUSTOMER` or `OTHER`.
    reason: String,
    reason_detail: String,
    metadata: BTreeMap<String, String>,
    failure_code: Option<String>,
    failure_reason: Option<String>,
    idempotency_key: Option<String>,
    created_by_key_id: Option<String>,
    approved_by_key_id: Option<String>,
    connection_id: Option<String>,
    attempts: u32,
    created_at: String,
    updated_at: String,
}

impl RefundData {
    fn of(r: &Refund) -> Data {
        Data::Refund(Self {
            id: r.id.as_str().to_owned(),
            payment_id: r.payment.as_str().to_owned(),
            provider: r.provider.as_str().to_owned(),
            provider_refund_id: r.provider_refund_id.clone(),
            amount: r.amount.minor_units(),
            currency: r.currency.code().to_owned(),
            status: r.status.as_str().to_uppercase(),
            reason: r.reason.as_str().to_uppercase(),
            reason_detail: r.reason_detail.clone(),
            metadata: r.metadata.clone(),
            failure_code: r.failure.as_ref().map(|f| f.code.clone()),
            failure_reason: r.failure.as_ref().map(|f| f.reason.clone()),
            idempotency_key: r.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
            created_by_key_id: r.created_by.as_ref().map(|k| k.as_str().to_owned()),
            approved_by_key_id: r.approved_by.as_ref().map(|k| k.as_str().to_owned()),
            connection_id: r.route.connection().map(|c| c.as_str().to_owned()),
            attempts: r.attempts,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        })
    }

    fn into_refund(self, account: &AccountId) -> Result<Refund, EventDecodeError> {
        let bad = |field: &'static str, value: &str| EventDecodeError::Field {
            field,
            value: value.to_owned(),
        };
        let failure = match (self.failure_code, self.failure_reason) {
            (None, None) => None,
            (code, reason) => Some(Failure {
                code: code.unwrap_or_default(),
                reason: reason.unwrap_or_default(),
            }),
        };
        Ok(Refund {
            id: RefundId::parse(&self.id).ok_or_else(|| bad("id", &self.id))?,
            account: account.clone(),
            payment: PaymentRef::from_trusted(self.payment_id),
            provider: ProviderName::from_trusted(self.provider),
            route: match self.connection_id {
                Some(c) => Route::Connection(ConnectionId::from_trusted(c)),
                None => Route::Platform,
            },
            provider_refund_id: self.provider_refund_id,
            amount: Amount::new(self.amount)
                .map_err(|_| bad("amount", &self.amount.to_string()))?,
            currency: Currency::parse(&self.currency)
                .map_err(|_| bad("currency", &self.currency))?,
            status: RefundStatus::parse(&self.status.to_lowercase())
                .ok_or_else(|| bad("status", &self.status))?,
            reason: RefundReason::parse(&self.reason.to_lowercase())
                .ok_or_else(|| bad("reason", &self.reason))?,
            reason_detail: self.reason_detail,
            metadata: self.metadata,
            failure,
            idempotency_key: self.idempotency_key.map(IdempotencyKey::from_trusted),
            attempts: self.attempts,
            created_by: self.created_by_key_id.map(ApiKeyId::from_trusted),
            approved_by: self.approved_by_key_id.map(ApiKeyId::from_trusted),
            created_at: parse_rfc3339(&self.created_at)
                .ok_or_else(|| bad("created_at", &self.created_at))?,
            updated_at: parse_rfc3339(&self.updated_at)
                .ok_or_else(|| bad("updated_at", &self.updated_at))?,
        })
    }
}

/// A batch as events show it: the fields of the API's `BulkRefundBatch`, by the same names.
#[derive(Serialize, Deserialize)]
struct BulkData {
    id: String,
    /// `RUNNING`, `COMPLETED`, `ABORTED` or `CANCELED`.
    state: String,
    total: u32,
    succeeded: u32,
    failed: u32,
    skipped: u32,
    canceled: u32,
    pending: u32,
    abort_on_error: bool,
    max_concurrency: u32,
    idempotency_key: Option<String>,
    metadata: BTreeMap<String, String>,
    last_sequence: u64,
    created_by_key_id: Option<String>,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
}

impl BulkData {
    fn of(b: &Bulk) -> Data {
        Data::BulkRefund(Self {
            id: b.id.as_str().to_owned(),
            state: b.state.as_str().to_uppercase(),
            total: b.counts.total,
            succeeded: b.counts.succeeded,
            failed: b.counts.failed,
            skipped: b.counts.skipped,
            canceled: b.counts.canceled,
            pending: b.counts.pending(),
            abort_on_error: b.abort_on_error,
            max_concurrency: b.max_concurrency,
            idempotency_key: b.idempotency_key.as_ref().map(|k| k.as_str().to_owned()),
            metadata: b.metadata.clone(),
            last_sequence: b.last_sequence,
            created_by_key_id: b.created_by.as_ref().map(|k| k.as_str().to_owned()),
            created_at: rfc3339(b.created_at),
            updated_at: rfc3339(b.updated_at),
            finished_at: b.finished_at.map(rfc3339),
        })
    }

    fn into_bulk(self, account: &AccountId) -> Result<Bulk, EventDecodeError> {
        let bad = |field: &'static str, value: &str| EventDecodeError::Field {
            field,
            value: value.to_owned(),
        };
        let finished_at = match &self.finished_at {
            Some(t) => Some(parse_rfc3339(t).ok_or_else(|| bad("finished_at", t))?),
            None => None,
        };
        Ok(Bulk {
            id: BulkId::parse(&self.id).ok_or_else(|| bad("id", &self.id))?,
            account: account.clone(),
            state: BulkState::parse(&self.state.to_lowercase())
                .ok_or_else(|| bad("state", &self.state))?,
            // How it stopped shows in its state and counts.
            stop: None,
            counts: BulkCounts {
                total: self.total,
                succeeded: self.succeeded,
                failed: self.failed,
                skipped: self.skipped,
                canceled: self.canceled,
            },
            abort_on_error: self.abort_on_error,
            max_concurrency: self.max_concurrency,
            idempotency_key: self.idempotency_key.map(IdempotencyKey::from_trusted),
            metadata: self.metadata,
            last_sequence: self.last_sequence,
            created_at: parse_rfc3339(&self.created_at)
                .ok_or_else(|| bad("created_at", &self.created_at))?,
            updated_at: parse_rfc3339(&self.updated_at)
                .ok_or_else(|| bad("updated_at", &self.updated_at))?,
            finished_at,
            created_by: self.created_by_key_id.map(ApiKeyId::from_trusted),
            provider_waits: Vec::new(),
        })
    }
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-12-07T15:11:44.123456Z`.
pub fn rfc3339(t: Timestamp) -> String {
    let micros = u64::try_from(t.as_micros()).unwrap_or(0);
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}

fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let t: SystemTime = humantime::parse_rfc3339(s).ok()?;
    let micros = t.duration_since(UNIX_EPOCH).ok()?.as_micros();
    i64::try_from(micros).ok().map(Timestamp::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refund() -> Refund {
        Refund {
            id: RefundId::generate(),
            account: AccountId::from_trusted("acct_a".into()),
            payment: PaymentRef::from_trusted("pay_1".into()),
            provider: ProviderName::from_trusted("sandbox".into()),
            route: Route::Connection(ConnectionId::generate()),
            provider_refund_id: Some("re_1".into()),
            amount: Amount::new(1234).expect("amount"),
            currency: Currency::parse("EUR").expect("currency"),
            status: RefundStatus::Failed,
            reason: RefundReason::RequestedByCustomer,
            reason_detail: "détail ✓".into(),
            metadata: BTreeMap::from([("order".into(), "42".into())]),
            failure: Some(Failure {
                code: "insufficient_funds".into(),
                reason: "no".into(),
            }),
            idempotency_key: Some(IdempotencyKey::from_trusted("k1".into())),
            attempts: 2,
            created_by: Some(ApiKeyId::generate()),
            approved_by: None,
            created_at: Timestamp::from_micros(1_765_000_000_123_456),
            updated_at: Timestamp::from_micros(1_765_000_001_000_000),
        }
    }

    #[test]
    fn type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("refund.approved"), None);
    }

    #[test]
    fn a_refund_reads_back_as_it_was_written() {
        let r = refund();
        let account = r.account.clone();
        let json = EventResource::Refund(Box::new(r.clone()))
            .to_json()
            .expect("json");
        let back = EventResource::from_json(&account, &json).expect("decode");
        assert_eq!(back, EventResource::Refund(Box::new(r)));
    }

    #[test]
    fn the_refund_json_uses_the_documented_names() {
        let json = EventResource::Refund(Box::new(refund()))
            .to_json()
            .expect("json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(v["object"], "refund");
        assert_eq!(v["status"], "FAILED");
        assert_eq!(v["reason"], "REQUESTED_BY_CUSTOMER");
        assert_eq!(v["amount"], 1234);
        assert_eq!(v["currency"], "EUR");
        assert_eq!(v["created_at"], "2025-12-06T05:46:40.123456Z");
    }

    #[test]
    fn the_envelope_wraps_the_stored_data_unchanged() {
        let r = refund();
        let data = EventResource::Refund(Box::new(r.clone()))
            .to_json()
            .expect("json");
        let event = Event {
            id: EventId::generate(),
            account: r.account.clone(),
            sequence: 7,
            kind: EventType::RefundFailed,
            created_at: r.updated_at,
            resource: EventResource::Refund(Box::new(r)),
            data: data.clone(),
        };
        let body = event.envelope_json().expect("envelope");
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid json");
        assert_eq!(v["type"], "refund.failed");
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["api_version"], "v1");
        assert_eq!(
            v["data"],
            serde_json::from_str::<serde_json::Value>(&data).expect("data")
        );
    }

    #[test]
    fn corrupt_data_is_an_error_not_a_panic() {
        let account = AccountId::from_trusted("acct_a".into());
        for bad in [
            "",
            "{}",
            r#"{"object":"refund"}"#,
            r#"{"object":"nothing"}"#,
        ] {
            assert!(EventResource::from_json(&account, bad).is_err(), "{bad}");
        }
    }
}
