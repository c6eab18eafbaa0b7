//! Webhook endpoints and their deliveries.
//!
//! The hot path (a refund's or batch's transaction) only appends to the event log. Deliveries
//! are made from the log afterwards by the dispatcher's **fan-out**: for one endpoint it moves the
//! endpoint's cursor past a run of events and inserts their deliveries, in one transaction whose
//! first statement is the conditional cursor update. Two replicas fanning out the same endpoint
//! cannot both advance it: the second's update matches no row (on PostgreSQL it waits for the
//! first's commit, then sees the new cursor) and it rolls back. A crash before commit leaves the
//! cursor where it was, so every event after the cursor gets its delivery once.
//!
//! A PENDING delivery is due at `next_attempt_at`. An attempt claims it by moving that time
//! forward past the attempt's longest duration (its lease) with a conditional update, as the
//! reconciler claims refunds: across replicas exactly one claim of a due delivery succeeds, and a
//! worker that dies mid-attempt leaves the delivery due again when the lease ends (at least once).

use std::collections::BTreeSet;

use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait, TryInsertResult,
};

use super::bulks::corrupt;
use super::entities::{event, webhook_delivery, webhook_endpoint};
use super::events::seq;
use super::{Store, StoreError};
use crate::domain::{
    AccountId, DeliveryStatus, EventId, EventType, Timestamp, WebhookDelivery, WebhookDeliveryId,
    WebhookEndpoint, WebhookEndpointId,
};

/// An endpoint with its sealed secrets, as the store keeps it.
#[derive(Debug, Clone)]
pub struct StoredEndpoint {
    pub endpoint: WebhookEndpoint,
    pub secret_sealed: String,
    /// The secret before the last rotation, while it still signs.
    pub previous_secret_sealed: Option<String>,
}

/// An endpoint to store.
#[derive(Debug, Clone)]
pub struct NewEndpointRow {
    pub id: WebhookEndpointId,
    pub url: String,
    pub description: String,
    pub event_types: BTreeSet<EventType>,
    pub secret_sealed: String,
}

/// A secret rotation: the sealed secret replaced (as read), the new one, the old one resealed to
/// keep signing, and until when.
#[derive(Debug, Clone)]
pub struct SecretRotation<'a> {
    pub replaced_sealed: &'a str,
    pub secret_sealed: String,
    pub previous_sealed: String,
    pub previous_expires_at: Timestamp,
}

/// What an update changes; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<BTreeSet<EventType>>,
    pub enabled: Option<bool>,
}

/// A page of deliveries, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<WebhookEndpointId>,
    pub status: Option<DeliveryStatus>,
    pub event_id: Option<String>,
}

/// The delivery queue as the metrics show it.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    /// PENDING deliveries of enabled endpoints.
    pub depth: u64,
    /// When the oldest of them was created.
    pub oldest_created_at: Option<Timestamp>,
}

impl Store {
    /// Stores a new endpoint. It receives the events appended after this moment: its cursor
    /// starts at the account's last sequence.
    pub async fn create_webhook_endpoint(
        &self,
        account: &AccountId,
        new: NewEndpointRow,
        now: Timestamp,
    ) -> Result<WebhookEndpoint, StoreError> {
        let cursor = self.last_event_sequence(account).await?;
        let t = now.as_micros();
        let row = webhook_endpoint::ActiveModel {
            id: Set(new.id.as_str().to_owned()),
            account_id: Set(account.as_str().to_owned()),
            url: Set(new.url),
            description: Set(new.description),
            event_types: Set(join_types(&new.event_types)),
            enabled: Set(true),
            disabled_reason: Set(String::new()),
            secret_sealed: Set(new.secret_sealed),
            previous_secret_sealed: Set(None),
            previous_secret_expires_at: Set(None),
            cursor: Set(cursor),
            failing_since: Set(None),
            created_at: Set(t),
            updated_at: Set(t),
        };
        webhook_endpoint::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await?;
        self.webhook_endpoint(account, &new.id)
            .await?
            .map(|s| s.endpoint)
            .ok_or_else(|| corrupt("webhook_endpoints", "the endpoint just stored is gone"))
    }

    /// `account`'s last event sequence (0 before its first event).
    async fn last_event_sequence(&self, account: &AccountId) -> Result<i64, StoreError> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "SELECT last_sequence FROM event_sequences WHERE account_id = $1"
            }
            _ => "SELECT last_sequence FROM event_sequences WHERE account_id = ?",
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [account.as_str().into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => row.try_get("", "last_sequence")?,
            None => 0,
        })
    }

    /// `account`'s endpoint `id`, with its sealed secrets.
    pub async fn webhook_endpoint(
        &self,
        account: &AccountId,
        id: &WebhookEndpointId,
    ) -> Result<Option<StoredEndpoint>, StoreError> {
        webhook_endpoint::Entity::find_by_id(id.as_str().to_owned())
            .filter(webhook_endpoint::Column::AccountId.eq(account.as_str()))
            .one(self.reads())
            .await?
            .map(to_stored)
            .transpose()
    }

    /// `account`'s endpoints, oldest first.
    pub async fn list_webhook_endpoints(
        &self,
        account: &AccountId,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::AccountId.eq(account.as_str()))
            .order_by_asc(webhook_endpoint::Column::CreatedAt)
            .order_by_asc(webhook_endpoint::Column::Id)
            .all(self.reads())
            .await?
            .into_iter()
            .map(|row| to_stored(row).map(|s| s.endpoint))
            .collect()
    }

    /// Every enabled endpoint of every account, with its secrets: the dispatcher's work list.
    /// One endpoint this build cannot read (a type a newer replica knows) is left out, not
    /// allowed to stop every other account's deliveries.
    pub async fn enabled_webhook_endpoints(&self) -> Result<Vec<StoredEndpoint>, StoreError> {
        Ok(webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::Enabled.eq(true))
            .all(self.reads())
            .await?
            .into_iter()
            .filter_map(|row| {
                let id = row.id.clone();
                to_stored(row)
                    .map_err(|e| tracing::warn!(endpoint_id = %id, error = %e, "webhook endpoint left out"))
                    .ok()
            })
            .collect())
    }

    /// Applies `changes` to `account`'s endpoint `id`. Enabling clears why it was disabled and
    /// its failure streak; its cursor stays, so it catches up on what it missed (within the
    /// events' retention).
    pub async fn update_webhook_endpoint(
        &self,
        account: &AccountId,
        id: &WebhookEndpointId,
        changes: EndpointChanges,
        now: Timestamp,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        let mut update = webhook_endpoint::Entity::update_many()
            .col_expr(
                webhook_endpoint::Column::UpdatedAt,
                Expr::value(now.as_micros()),
            )
            .filter(webhook_endpoint::Column::Id.eq(id.as_str()))
            .filter(webhook_endpoint::Column::AccountId.eq(account.as_str()));
        if let Some(url) = changes.url {
            update = update.col_expr(webhook_endpoint::Column::Url, Expr::value(url));
        }
        if let Some(description) = changes.description {
            update = update.col_expr(
                webhook_endpoint::Column::Description,
                Expr::value(description),
            );
        }
        if let Some(types) = changes.event_types {
            update = update.col_expr(
                webhook_endpoint::Column::EventTypes,
                Expr::value(join_types(&types)),
            );
        }
        if let Some(enabled) = changes.enabled {
            update = update
                .col_expr(webhook_endpoint::Column::Enabled, Expr::value(enabled))
                .col_expr(
                    webhook_endpoint::Column::DisabledReason,
                    Expr::value(String::new()),
                )
                .col_expr(
                    webhook_endpoint::Column::FailingSince,
                    Expr::value(Option::<i64>::None),
                );
        }
        if update.exec(&self.db).await?.rows_affected == 0 {
            return Ok(None);
        }
        Ok(self
            .webhook_endpoint(account, id)
            .await?
            .map(|s| s.endpoint))
    }

    /// Replaces the endpoint's secret `replaced_sealed`; it keeps signing until
    /// `previous_expires_at`. `None` when there is no such endpoint or its secret is no longer
    /// `replaced_sealed` (another rotation came first).
    pub async fn rotate_webhook_secret(
        &self,
        account: &AccountId,
        id: &WebhookEndpointId,
        rotation: SecretRotation<'_>,
        now: Timestamp,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        let SecretRotation {
            replaced_sealed,
            secret_sealed,
            previous_sealed,
            previous_expires_at,
        } = rotation;
        let updated = webhook_endpoint::Entity::update_many()
            .col_expr(
                webhook_endpoint::Column::SecretSealed,
                Expr::value(secret_sealed),
            )
            .col_expr(
                webhook_endpoint::Column::PreviousSecretSealed,
                Expr::value(Some(previous_sealed)),
            )
            .col_expr(
                webhook_endpoint::Column::PreviousSecretExpiresAt,
                Expr::value(Some(previous_expires_at.as_micros())),
            )
            .col_expr(
                webhook_endpoint::Column::UpdatedAt,
                Expr::value(now.as_micros()),
            )
            .filter(webhook_endpoint::Column::Id.eq(id.as_str()))
            .filter(webhook_endpoint::Column::AccountId.eq(account.as_str()))
            // Only the secret it was read with: of two rotations at once, one wins.
            .filter(webhook_endpoint::Column::SecretSealed.eq(replaced_sealed))
            .exec(&self.db)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(None);
        }
        Ok(self
            .webhook_endpoint(account, id)
            .await?
            .map(|s| s.endpoint))
    }

    /// Deletes the endpoint and its deliveries. Whether there was one.
    pub async fn delete_webhook_endpoint(
        &self,
        account: &AccountId,
        id: &WebhookEndpointId,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        let deleted = webhook_endpoint::Entity::delete_many()
            .filter(webhook_endpoint::Column::Id.eq(id.as_str()))
            .filter(webhook_endpoint::Column::AccountId.eq(account.as_str()))
            .exec(&txn)
            .await?
            .rows_affected;
        if deleted == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        webhook_delivery::Entity::delete_many()
            .filter(webhook_delivery::Column::EndpointId.eq(id.as_str()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Hands the events after `endpoint`'s cursor (at most `limit` of them) to deliveries, and
    /// moves the cursor past them; see the module's comment. Returns how many deliveries were
    /// made (events of types the endpoint does not take are passed over), or `None` when another
    /// worker moved the cursor first.
    pub async fn fan_out(
        &self,
        endpoint: &WebhookEndpoint,
        limit: u64,
        now: Timestamp,
    ) -> Result<Option<usize>, StoreError> {
        let cursor = seq(endpoint.cursor);
        let events: Vec<(String, i64, String)> = event::Entity::find()
            .select_only()
            .column(event::Column::Id)
            .column(event::Column::Sequence)
            .column(event::Column::Kind)
            .filter(event::Column::AccountId.eq(endpoint.account.as_str()))
            .filter(event::Column::Sequence.gt(cursor))
            .order_by_asc(event::Column::Sequence)
            .limit(limit)
            .into_tuple()
            .all(self.reads())
            .await?;
        // An event type this build does not know (a newer replica wrote it, mid-deploy) stops the
        // run before it: passing over it would lose it for good; a replica that knows it hands
        // it on.
        let known = events
            .iter()
            .take_while(|(_, _, kind)| EventType::parse(kind).is_some())
            .count();
        if known < events.len() {
            tracing::warn!(endpoint_id = %endpoint.id, kind = %events[known].2, "an event type this version does not know; leaving it to a replica that does");
        }
        let mut events = events;
        events.truncate(known);
        let Some(last) = events.last().map(|e| e.1) else {
            return Ok(Some(0));
        };
        let t = now.as_micros();
        let rows: Vec<_> = events
            .into_iter()
            .filter(|(_, _, kind)| EventType::parse(kind).is_some_and(|k| endpoint.wants(k)))
            .map(|(event_id, sequence, kind)| webhook_delivery::ActiveModel {
                id: Set(WebhookDeliveryId::generate().as_str().to_owned()),
                endpoint_id: Set(endpoint.id.as_str().to_owned()),
                account_id: Set(endpoint.account.as_str().to_owned()),
                event_id: Set(event_id),
                event_type: Set(kind),
                event_sequence: Set(sequence),
                status: Set(DeliveryStatus::Pending.as_str().to_owned()),
                attempts: Set(0),
                last_status_code: Set(None),
                last_error: Set(String::new()),
                next_attempt_at: Set(Some(t)),
                window_started_at: Set(t),
                delivered_at: Set(None),
                created_at: Set(t),
                updated_at: Set(t),
            })
            .collect();
        let made = rows.len();

        let txn = self.db.begin().await?;
        let moved = webhook_endpoint::Entity::update_many()
            .col_expr(webhook_endpoint::Column::Cursor, Expr::value(last))
            .filter(webhook_endpoint::Column::Id.eq(endpoint.id.as_str()))
            .filter(webhook_endpoint::Column::Cursor.eq(cursor))
            // The types the deliveries were chosen by: an update since the endpoint was read
            // makes this round choose again rather than pass over an event it now wants.
            .filter(webhook_endpoint::Column::EventTypes.eq(join_types(&endpoint.event_types)))
            .exec(&txn)
            .await?
            .rows_affected;
        if moved == 0 {
            txn.rollback().await?;
            return Ok(None);
        }
        if !rows.is_empty() {
            // A replay may have kept some of these deliveries: they were re-armed there.
            let inserted = webhook_delivery::Entity::insert_many(rows)
                .on_conflict_do_nothing_on([
                    webhook_delivery::Column::EndpointId,
                    webhook_delivery::Column::EventId,
                ])
                .exec_without_returning(&txn)
                .await?;
            if let TryInsertResult::Inserted(n) = inserted {
                tracing::trace!(endpoint_id = %endpoint.id, inserted = n, "fan-out");
            }
        }
        txn.commit().await?;
        Ok(Some(made))
    }

    /// Claims up to `limit` due deliveries of enabled endpoints until `lease_until`, counting an
    /// attempt on each, in one statement: on PostgreSQL the due rows are locked with `SKIP
    /// LOCKED`, so replicas claiming at once take different deliveries (and a row another claim
    /// changed meanwhile is re-checked, not taken twice); SQLite runs one writer at a time. The
    /// returned deliveries carry the attempt's number in `attempts`, and `lease_until` in
    /// `next_attempt_at`, which only their holder's writes match.
    pub async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "UPDATE webhook_deliveries SET next_attempt_at = $1, attempts = attempts + 1, \
                 updated_at = $2 \
                 WHERE id IN (SELECT id FROM webhook_deliveries \
                   WHERE status = 'PENDING' AND next_attempt_at <= $2 \
                   AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE enabled) \
                   ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING *"
            }
            _ => {
                "UPDATE webhook_deliveries SET next_attempt_at = ?1, attempts = attempts + 1, \
                 updated_at = ?2 \
                 WHERE id IN (SELECT id FROM webhook_deliveries \
                   WHERE status = 'PENDING' AND next_attempt_at <= ?2 \
                   AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE enabled) \
                   ORDER BY next_attempt_at LIMIT ?3) \
                 RETURNING *"
            }
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // An UPDATE … RETURNING read as rows: the writer's.
        webhook_delivery::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                backend,
                sql,
                [
                    lease_until.as_micros().into(),
                    now.as_micros().into(),
                    limit.into(),
                ],
            ))
            .all(&self.db)
            .await?
            .into_iter()
            .map(to_delivery)
            .collect()
    }

    /// Records deliveries as delivered with `status_code`, each only while its claim (the lease
    /// `lease_until`) still holds, and ends their endpoints' failure streaks. Two statements,
    /// not one transaction: the streak only informs disabling, and the next success ends it if a
    /// crash came between.
    pub async fn deliveries_succeeded(
        &self,
        delivered: &[&WebhookDelivery],
        lease_until: Timestamp,
        status_code: u16,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if delivered.is_empty() {
            return Ok(());
        }
        webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::Status,
                Expr::value(DeliveryStatus::Delivered.as_str()),
            )
            .col_expr(
                webhook_delivery::Column::LastStatusCode,
                Expr::value(Some(i32::from(status_code))),
            )
            .col_expr(webhook_delivery::Column::LastError, Expr::value(""))
            .col_expr(
                webhook_delivery::Column::NextAttemptAt,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(
                webhook_delivery::Column::DeliveredAt,
                Expr::value(Some(now.as_micros())),
            )
            .col_expr(
                webhook_delivery::Column::UpdatedAt,
                Expr::value(now.as_micros()),
            )
            .filter(webhook_delivery::Column::Id.is_in(delivered.iter().map(|d| d.id.as_str())))
            .filter(webhook_delivery::Column::Status.eq(DeliveryStatus::Pending.as_str()))
            .filter(webhook_delivery::Column::NextAttemptAt.eq(lease_until.as_micros()))
            .exec(&self.db)
            .await?;
        let endpoints: BTreeSet<&str> = delivered.iter().map(|d| d.endpoint_id.as_str()).collect();
        webhook_endpoint::Entity::update_many()
            .col_expr(
                webhook_endpoint::Column::FailingSince,
                Expr::value(Option::<i64>::None),
            )
            .filter(webhook_endpoint::Column::Id.is_in(endpoints))
            .filter(webhook_endpoint::Column::FailingSince.is_not_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Records a failed attempt: retried at `retry_at`, or FAILED when `None`, only while the
    /// attempt's claim (its lease, `d.next_attempt_at`) holds: after a retry or replay re-armed
    /// the delivery, or another worker re-claimed it, the row is theirs. When the failure is the
    /// endpoint's (`endpoint_failed`), starts its failure streak if none is running and returns
    /// when the streak started; `None` when nothing was written.
    pub async fn delivery_failed(
        &self,
        d: &WebhookDelivery,
        status_code: Option<u16>,
        error: &str,
        retry_at: Option<Timestamp>,
        endpoint_failed: bool,
        now: Timestamp,
    ) -> Result<Option<Option<Timestamp>>, StoreError> {
        let status = match retry_at {
            Some(_) => DeliveryStatus::Pending,
            None => DeliveryStatus::Failed,
        };
        let txn = self.db.begin().await?;
        let written = webhook_delivery::Entity::update_many()
            .col_expr(
                webhook_delivery::Column::Status,
                Expr::value(status.as_str()),
            )
            .col_expr(
                webhook_delivery::Column::LastStatusCode,
                Expr::value(status_code.map(i32::from)),
            )
            .col_expr(
                webhook_delivery::Column::LastError,
                Expr::value(error.to_owned()),
            )
            .col_expr(
                webhook_delivery::Column::NextAttemptAt,
                Expr::value(retry_at.map(Timestamp::as_micros)),
            )
            .col_expr(
                webhook_delivery::Column::UpdatedAt,
                Expr::value(now.as_micros()),
            )
            .filter(webhook_delivery::Column::Id.eq(d.id.as_str()))
            .filter(webhook_delivery::Column::Status.eq(DeliveryStatus::Pending.as_str()))
            .filter(webhook_delivery::Column::Attempts.eq(attempts(d.attempts)))
            .filter(
                webhook_delivery::Column::NextAttemptAt
                    .eq(d.next_attempt_at.map(Timestamp::as_micros)),
            )
            .exec(&txn)
            .await?
            .rows_affected;
        if written == 0 {
            txn.rollback().await?;
            return Ok(None);
        }
        if !endpoint_failed {
            txn.commit().await?;
            return Ok(Some(None));
        }
        webhook_endpoint::Entity::update_many()
            .col_expr(
                webhook_endpoint::Column::FailingSince,
                Expr::value(Some(now.as_micros())),
            )
            .filter(webhook_endpoint::Column::Id.eq(d.endpoint_id.as_str()))
            .filter(webhook_endpoint::Column::FailingSince.is_null())
            .exec(&txn)
            .await?;
        let since: Option<Option<i64>> =
            webhook_endpoint::Entity::find_by_id(d.endpoint_id.as_str())
                .select_only()
                .column(webhook_endpoint::Column::FailingSince)
                .into_tuple()
                .one(&txn)
                .await?;
        txn.commit().await?;
        Ok(Some(since.flatten().map(Timestamp::from_micros)))
    }

    /// Disables endpoint `id` with `reason` if it is still failing since `failing_since`.
    pub async fn disable_failing_endpoint(
        &self,
        id: &WebhookEndpointId,
        failing_since: Timestamp,
        reason: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        Ok(webhook_endpoint::Entity::update_many()
            .col_expr(webhook_endpoint::Column::Enabled, Expr::value(false))
            .col_expr(
                webhook_endpoint::Column::DisabledReason,
                Expr::value(reason.to_owned()),
            )
            .col_expr(
                webhook_endpoint::Column::UpdatedAt,
                Expr::value(now.as_micros()),
            )
            .filter(webhook_endpoint::Column::Id.eq(id.as_str()))
            .filter(webhook_endpoint::Column::Enabled.eq(true))
            .filter(webhook_endpoint::Column::FailingSince.eq(failing_since.as_micros()))
            .exec(&self.db)
            .await?
            .rows_affected
            == 1)
    }

    /// `account`'s deliveries matching `filter`, newest first, created before delivery `before`
    /// if given, at most `limit`.
    pub async fn list_webhook_deliveries(
        &self,
        account: &AccountId,
        filter: &DeliveryFilter,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut query = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::AccountId.eq(account.as_str()));
        if let Some(endpoint) = &filter.endpoint_id {
            query = query.filter(webhook_delivery::Column::EndpointId.eq(endpoint.as_str()));
        }
        if let Some(status) = filter.status {
            query = query.filter(webhook_delivery::Column::Status.eq(status.as_str()));
        }
        if let Some(event) = &filter.event_id {
            query = query.filter(webhook_delivery::Column::EventId.eq(event.as_str()));
        }
        if let Some(before) = before {
            query = query.filter(webhook_delivery::Column::Id.lt(before));
        }
        query
            .order_by_desc(webhook_delivery::Column::Id)
            .limit(limit)
            .all(self.reads())
            .await?
            .into_iter()
            .map(to_delivery)
            .collect()
    }

    /// Sends `account`'s delivery `id` again now, with a new retry window, whatever its status.
    pub async fn retry_webhook_delivery(
        &self,
        account: &AccountId,
        id: &WebhookDeliveryId,
        now: Timestamp,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let updated = rearm(webhook_delivery::Entity::update_many(), now)
            .filter(webhook_delivery::Column::Id.eq(id.as_str()))
            .filter(webhook_delivery::Column::AccountId.eq(account.as_str()))
            .exec(&self.db)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(None);
        }
        webhook_delivery::Entity::find_by_id(id.as_str().to_owned())
            .one(self.reads())
            .await?
            .map(to_delivery)
            .transpose()
    }

    /// Sends endpoint `id` every kept event after `after` again: deliveries it had are re-armed
    /// and the cursor moves back, so that fan-out makes the ones it never had. Returns how many
    /// deliveries were re-armed, or `None` without such an endpoint.
    pub async fn replay_webhook_events(
        &self,
        account: &AccountId,
        id: &WebhookEndpointId,
        after: u64,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin().await?;
        let found = webhook_endpoint::Entity::update_many()
            .col_expr(
                webhook_endpoint::Column::UpdatedAt,
                Expr::value(now.as_micros()),
            )
            .filter(webhook_endpoint::Column::Id.eq(id.as_str()))
            .filter(webhook_endpoint::Column::AccountId.eq(account.as_str()))
            .exec(&txn)
            .await?
            .rows_affected;
        if found == 0 {
            txn.rollback().await?;
            return Ok(None);
        }
        webhook_endpoint::Entity::update_many()
            .col_expr(webhook_endpoint::Column::Cursor, Expr::value(seq(after)))
            .filter(webhook_endpoint::Column::Id.eq(id.as_str()))
            .filter(webhook_endpoint::Column::Cursor.gt(seq(after)))
            .exec(&txn)
            .await?;
        let rearmed = rearm(webhook_delivery::Entity::update_many(), now)
            .filter(webhook_delivery::Column::EndpointId.eq(id.as_str()))
            .filter(webhook_delivery::Column::EventSequence.gt(seq(after)))
            .exec(&txn)
            .await?
            .rows_affected;
        txn.commit().await?;
        Ok(Some(rearmed))
    }

    /// The events of the deliveries being sent, by id (JSON as stored).
    pub async fn events_by_id(
        &self,
        ids: impl IntoIterator<Item = &EventId>,
    ) -> Result<Vec<crate::domain::Event>, StoreError> {
        let ids: Vec<String> = ids.into_iter().map(|i| i.as_str().to_owned()).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        event::Entity::find()
            .filter(event::Column::Id.is_in(ids))
            .all(self.reads())
            .await?
            .into_iter()
            .map(super::events::to_domain)
            .collect()
    }

    /// How many deliveries of enabled endpoints wait, and since when the oldest.
    pub async fn webhook_queue_stats(&self) -> Result<QueueStats, StoreError> {
        let enabled: Vec<String> = webhook_endpoint::Entity::find()
            .select_only()
            .column(webhook_endpoint::Column::Id)
            .filter(webhook_endpoint::Column::Enabled.eq(true))
            .into_tuple()
            .all(self.reads())
            .await?;
        if enabled.is_empty() {
            return Ok(QueueStats::default());
        }
        let row: Option<(i64, Option<i64>)> = webhook_delivery::Entity::find()
            .select_only()
            .column_as(Expr::col(webhook_delivery::Column::Id).count(), "depth")
            .column_as(
                Expr::col(webhook_delivery::Column::CreatedAt).min(),
                "oldest",
            )
            .filter(webhook_delivery::Column::Status.eq(DeliveryStatus::Pending.as_str()))
            .filter(webhook_delivery::Column::EndpointId.is_in(enabled))
            .into_tuple()
            .one(self.reads())
            .await?;
        let (depth, oldest) = row.unwrap_or((0, None));
        Ok(QueueStats {
            depth: u64::try_from(depth).unwrap_or(0),
            oldest_created_at: oldest.map(Timestamp::from_micros),
        })
    }

    /// Deletes finished (delivered or failed) deliveries last changed before `cutoff`, at most
    /// `limit`. Returns how many.
    pub async fn prune_webhook_deliveries(
        &self,
        cutoff: Timestamp,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let ids: Vec<String> = webhook_delivery::Entity::find()
            .select_only()
            .column(webhook_delivery::Column::Id)
            .filter(webhook_delivery::Column::Status.ne(DeliveryStatus::Pending.as_str()))
            .filter(webhook_delivery::Column::UpdatedAt.lt(cutoff.as_micros()))
            .limit(limit)
            .into_tuple()
            .all(self.reads())
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(webhook_delivery::Entity::delete_many()
            .filter(webhook_delivery::Column::Id.is_in(ids))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}

/// A delivery made due now, with a new retry window.
fn rearm(
    update: sea_orm::UpdateMany<webhook_delivery::Entity>,
    now: Timestamp,
) -> sea_orm::UpdateMany<webhook_delivery::Entity> {
    update
        .col_expr(
            webhook_delivery::Column::Status,
            Expr::value(DeliveryStatus::Pending.as_str()),
        )
        .col_expr(
            webhook_delivery::Column::NextAttemptAt,
            Expr::value(Some(now.as_micros())),
        )
        .col_expr(
            webhook_delivery::Column::WindowStartedAt,
            Expr::value(now.as_micros()),
        )
        .col_expr(
            webhook_delivery::Column::UpdatedAt,
            Expr::value(now.as_micros()),
        )
}

fn join_types(types: &BTreeSet<EventType>) -> String {
    types
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn attempts(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn to_stored(row: webhook_endpoint::Model) -> Result<StoredEndpoint, StoreError> {
    let event_types = row
        .event_types
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            EventType::parse(t)
                .ok_or_else(|| corrupt("webhook_endpoints", format!("unknown event type {t:?}")))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(StoredEndpoint {
        endpoint: WebhookEndpoint {
            id: WebhookEndpointId::from_trusted(row.id),
            account: AccountId::from_trusted(row.account_id),
            url: row.url,
            description: row.description,
            event_types,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            cursor: u64::try_from(row.cursor).unwrap_or(0),
            failing_since: row.failing_since.map(Timestamp::from_micros),
            previous_secret_expires_at: row.previous_secret_expires_at.map(Timestamp::from_micros),
            created_at: Timestamp::from_micros(row.created_at),
            updated_at: Timestamp::from_micros(row.updated_at),
        },
        secret_sealed: row.secret_sealed,
        previous_secret_sealed: row.previous_secret_sealed,
    })
}

fn to_delivery(row: webhook_delivery::Model) -> Result<WebhookDelivery, StoreError> {
    let status = DeliveryStatus::parse(&row.status).ok_or_else(|| {
        corrupt(
            "webhook_deliveries",
            format!("unknown status {:?}", row.status),
        )
    })?;
    let event_type = EventType::parse(&row.event_type).ok_or_else(|| {
        corrupt(
            "webhook_deliveries",
            format!("unknown event type {:?}", row.event_type),
        )
    })?;
    Ok(WebhookDelivery {
        id: WebhookDeliveryId::from_trusted(row.id),
        endpoint_id: WebhookEndpointId::from_trusted(row.endpoint_id),
        account: AccountId::from_trusted(row.account_id),
        event_id: EventId::from_trusted(row.event_id),
        event_type,
        event_sequence: u64::try_from(row.event_sequence).unwrap_or(0),
        status,
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        last_status_code: row.last_status_code.and_then(|c| u16::try_from(c).ok()),
        last_error: row.last_error,
        next_attempt_at: row.next_attempt_at.map(Timestamp::from_micros),
        window_started_at: Timestamp::from_micros(row.window_started_at),
        delivered_at: row.delivered_at.map(Timestamp::from_micros),
        created_at: Timestamp::from_micros(row.created_at),
        updated_at: Timestamp::from_micros(row.updated_at),
    })
}
