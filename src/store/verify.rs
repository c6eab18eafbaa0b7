//! Read-only snapshot of our books for the invariant checker (`refund-service verify`): balances,
//! refunds, batches, jobs, idempotency keys and client events.
//!
//! The rows come back as plain structs with the stored strings, not parsed domain types: a
//! checker must report a row it cannot parse, not fail on it. Everything is read in one
//! transaction (REPEATABLE READ, READ ONLY on PostgreSQL; one read transaction on SQLite, which
//! sees one snapshot under WAL), so a refund created while we read cannot make the balances and
//! the refunds disagree.

use sea_orm::sea_query::Expr;
use sea_orm::{
    AccessMode, DbBackend, EntityTrait, IsolationLevel, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Deserialize;

use super::entities::{bulk, bulk_item, event, idempotency_key, payment, refund};
use super::{Store, StoreError};

/// The balance rows of one payment, summed over `(provider, payment_id)`: whether the table is
/// keyed by account too or not, a payment's reservations must add up across all its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentTotals {
    pub provider: String,
    pub payment_id: String,
    pub currency: String,
    /// The largest captured amount of its rows (they all come from the provider's pre-flight).
    pub captured: i64,
    /// `SUM(reserved_amount)`.
    pub reserved: i64,
    /// How many balance rows the payment has (more than one only while rows are keyed by account).
    pub rows: i64,
}

/// A refund as stored, the columns the checker needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRow {
    pub id: String,
    pub account_id: String,
    pub provider: String,
    pub payment_id: String,
    pub provider_refund_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    /// As stored, e.g. `succeeded`.
    pub status: String,
    pub idempotency_key: Option<String>,
    /// Microseconds since the epoch.
    pub created_at: i64,
}

/// A batch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkRow {
    pub id: String,
    pub account_id: String,
    /// As stored, e.g. `completed`.
    pub state: String,
    /// Microseconds since the epoch.
    pub created_at: i64,
}

/// A client event as stored, the columns the checker needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub account_id: String,
    pub sequence: i64,
    /// As stored, e.g. `refund.succeeded`.
    pub kind: String,
    pub resource_id: String,
    /// Microseconds since the epoch.
    pub created_at: i64,
}

/// A batch's job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkItemRow {
    pub bulk_id: String,
    pub index: i32,
    pub account_id: String,
    /// As stored, e.g. `failed`.
    pub status: String,
    pub payment_id: String,
    pub provider: String,
    pub refund_id: Option<String>,
    pub error_code: Option<String>,
    /// The key the job is sent with (from the stored job); none for a job that failed validation.
    pub idempotency_key: Option<String>,
    /// When its result was written (microseconds since the epoch).
    pub updated_at: i64,
}

/// An idempotency key and the refund it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub account_id: String,
    pub key: String,
    pub refund_id: String,
}

/// Our side of the truth, read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Books {
    pub payments: Vec<PaymentTotals>,
    pub refunds: Vec<RefundRow>,
    pub bulks: Vec<BulkRow>,
    pub items: Vec<BulkItemRow>,
    pub keys: Vec<KeyRow>,
    pub events: Vec<EventRow>,
}

/// The one field of a stored job the checker needs.
#[derive(Deserialize)]
struct StoredJobKey {
    idempotency_key: String,
}

impl Store {
    /// Reads every balance, refund, batch, job and idempotency key in one read-only transaction.
    /// Writes nothing.
    pub async fn books_snapshot(&self) -> Result<Books, StoreError> {
        let txn = match self.db.get_database_backend() {
            DbBackend::Postgres => {
                self.db
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await?
            }
            // SQLite has no such settings (SeaORM would only warn); its read transaction already
            // sees one snapshot.
            _ => self.db.begin().await?,
        };

        let payments: Vec<(String, String, String, i64, i64, i64)> = payment::Entity::find()
            .select_only()
            .column(payment::Column::Provider)
            .column(payment::Column::PaymentId)
            .column_as(Expr::cust("MIN(currency)"), "currency")
            .column_as(
                Expr::cust("CAST(MAX(captured_amount) AS BIGINT)"),
                "captured",
            )
            .column_as(
                Expr::cust("CAST(SUM(reserved_amount) AS BIGINT)"),
                "reserved",
            )
            .column_as(Expr::cust("CAST(COUNT(*) AS BIGINT)"), "row_count")
            .group_by(payment::Column::Provider)
            .group_by(payment::Column::PaymentId)
            .order_by_asc(payment::Column::Provider)
            .order_by_asc(payment::Column::PaymentId)
            .into_tuple()
            .all(&txn)
            .await?;

        type RefundTuple = (
            String,
            String,
            String,
            String,
            Option<String>,
            i64,
            String,
            String,
            Option<String>,
            i64,
        );
        let refunds: Vec<RefundTuple> = refund::Entity::find()
            .select_only()
            .column(refund::Column::Id)
            .column(refund::Column::AccountId)
            .column(refund::Column::Provider)
            .column(refund::Column::PaymentId)
            .column(refund::Column::ProviderRefundId)
            .column(refund::Column::Amount)
            .column(refund::Column::Currency)
            .column(refund::Column::Status)
            .column(refund::Column::IdempotencyKey)
            .column(refund::Column::CreatedAt)
            .order_by_asc(refund::Column::Id)
            .into_tuple()
            .all(&txn)
            .await?;

        let bulks: Vec<(String, String, String, i64)> = bulk::Entity::find()
            .select_only()
            .column(bulk::Column::Id)
            .column(bulk::Column::AccountId)
            .column(bulk::Column::State)
            .column(bulk::Column::CreatedAt)
            .order_by_asc(bulk::Column::Id)
            .into_tuple()
            .all(&txn)
            .await?;

        type ItemTuple = (
            String,
            i32,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
        );
        let items: Vec<ItemTuple> = bulk_item::Entity::find()
            .select_only()
            .column(bulk_item::Column::BulkId)
            .column(bulk_item::Column::Idx)
            .column(bulk_item::Column::AccountId)
            .column(bulk_item::Column::Status)
            .column(bulk_item::Column::PaymentId)
            .column(bulk_item::Column::Provider)
            .column(bulk_item::Column::RefundId)
            .column(bulk_item::Column::ErrorCode)
            .column(bulk_item::Column::Job)
            .column(bulk_item::Column::UpdatedAt)
            .order_by_asc(bulk_item::Column::BulkId)
            .order_by_asc(bulk_item::Column::Idx)
            .into_tuple()
            .all(&txn)
            .await?;

        let keys: Vec<(String, String, String)> = idempotency_key::Entity::find()
            .select_only()
            .column(idempotency_key::Column::AccountId)
            .column(idempotency_key::Column::Key)
            .column(idempotency_key::Column::RefundId)
            .order_by_asc(idempotency_key::Column::AccountId)
            .order_by_asc(idempotency_key::Column::Key)
            .into_tuple()
            .all(&txn)
            .await?;
        let events: Vec<(String, i64, String, String, i64)> = event::Entity::find()
            .select_only()
            .column(event::Column::AccountId)
            .column(event::Column::Sequence)
            .column(event::Column::Kind)
            .column(event::Column::ResourceId)
            .column(event::Column::CreatedAt)
            .order_by_asc(event::Column::AccountId)
            .order_by_asc(event::Column::Sequence)
            .into_tuple()
            .all(&txn)
            .await?;
        txn.rollback().await?;

        Ok(Books {
            payments: payments
                .into_iter()
                .map(
                    |(provider, payment_id, currency, captured, reserved, rows)| PaymentTotals {
                        provider,
                        payment_id,
                        currency,
                        captured,
                        reserved,
                        rows,
                    },
                )
                .collect(),
            refunds: refunds
                .into_iter()
                .map(
                    |(
                        id,
                        account_id,
                        provider,
                        payment_id,
                        provider_refund_id,
                        amount,
                        currency,
                        status,
                        idempotency_key,
                        created_at,
                    )| RefundRow {
                        id,
                        account_id,
                        provider,
                        payment_id,
                        provider_refund_id,
                        amount,
                        currency,
                        status,
                        idempotency_key,
                        created_at,
                    },
                )
                .collect(),
            bulks: bulks
                .into_iter()
                .map(|(id, account_id, state, created_at)| BulkRow {
                    id,
                    account_id,
                    state,
                    created_at,
                })
                .collect(),
            items: items
                .into_iter()
                .map(
                    |(
                        bulk_id,
                        index,
                        account_id,
                        status,
                        payment_id,
                        provider,
                        refund_id,
                        error_code,
                        job,
                        updated_at,
                    )| BulkItemRow {
                        bulk_id,
                        index,
                        account_id,
                        status,
                        payment_id,
                        provider,
                        refund_id,
                        error_code,
                        // A job that does not parse has no key to look its refund up by; the
                        // runner could not have run it either.
                        idempotency_key: job
                            .and_then(|j| serde_json::from_str::<StoredJobKey>(&j).ok())
                            .map(|j| j.idempotency_key),
                        updated_at,
                    },
                )
                .collect(),
            keys: keys
                .into_iter()
                .map(|(account_id, key, refund_id)| KeyRow {
                    account_id,
                    key,
                    refund_id,
                })
                .collect(),
            events: events
                .into_iter()
                .map(
                    |(account_id, sequence, kind, resource_id, created_at)| EventRow {
                        account_id,
                        sequence,
                        kind,
                        resource_id,
                        created_at,
                    },
                )
                .collect(),
        })
    }
}
