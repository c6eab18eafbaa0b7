//! Batches: creation with their jobs, leased dispatch, results, and the event stream.
//!
//! Every job result is written in one transaction with its event and the batch's counters, and
//! only by the worker that holds the job's lease, so a job has at most one result and the stream
//! has no gaps: an event's sequence is taken from the batch row, which the transaction locks.

use std::collections::{BTreeMap, HashMap};

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait, TryInsertResult,
};
use serde::{Deserialize, Serialize};

use super::audit::{AuditEntry, insert_audit};
use super::entities::{bulk, bulk_event, bulk_item, refund};
use super::events::{NewEvent, append_events};
use super::refunds::to_domain as refund_to_domain;
use super::{Store, StoreError};
use crate::domain::{
    AccountId, Amount, ApiKeyId, Bulk, BulkCounts, BulkEvent, BulkId, BulkState, Currency,
    EventType, IdempotencyKey, ItemResult, ItemStatus, JobError, JobOutcome, NewBulk, NewRefund,
    PaymentRef, ProviderName, ProviderWait, Refund, RefundReason, SequencedEvent, StopReason,
    Timestamp, derived_job_key,
};

/// Rows per INSERT: well under SQLite's limit of bound parameters.
const INSERT_CHUNK: usize = 500;

/// A job as stored: the validated request, with the idempotency key it will be sent with.
#[derive(Debug, Serialize, Deserialize)]
struct StoredJob {
    payment_id: String,
    provider: String,
    amount: Option<i64>,
    currency: String,
    reason: String,
    reason_detail: String,
    metadata: BTreeMap<String, String>,
    idempotency_key: String,
}

impl StoredJob {
    fn from_request(r: &NewRefund, key: &IdempotencyKey) -> Self {
        Self {
            payment_id: r.payment.as_str().to_owned(),
            provider: r.provider.as_str().to_owned(),
            amount: r.amount.map(Amount::minor_units),
            currency: r.currency.code().to_owned(),
            reason: r.reason.as_str().to_owned(),
            reason_detail: r.reason_detail.clone(),
            metadata: r.metadata.clone(),
            idempotency_key: key.as_str().to_owned(),
        }
    }

    fn into_request(self) -> Result<NewRefund, String> {
        Ok(NewRefund {
            payment: PaymentRef::from_trusted(self.payment_id),
            provider: ProviderName::from_trusted(self.provider),
            amount: self
                .amount
                .map(Amount::new)
                .transpose()
                .map_err(|e| e.to_string())?,
            currency: Currency::parse(&self.currency).map_err(|e| e.to_string())?,
            reason: RefundReason::parse(&self.reason).ok_or("bad reason")?,
            reason_detail: self.reason_detail,
            metadata: self.metadata,
            idempotency_key: Some(IdempotencyKey::from_trusted(self.idempotency_key)),
        })
    }
}

pub enum CreateBulkOutcome {
    Created(Bulk),
    /// The batch key was used before for the same batch: that batch.
    Existing(Bulk),
    /// The batch key was used before for a different batch.
    KeyReused,
}

/// A job handed to one worker.
#[derive(Debug)]
pub struct ClaimedItem {
    pub index: u32,
    pub request: NewRefund,
    /// Another worker had the job before (its lease expired): its refund may exist already.
    pub taken_over: bool,
}

impl Store {
    pub async fn create_bulk(
        &self,
        account: &AccountId,
        new: &NewBulk,
        default_provider: &ProviderName,
        now: Timestamp,
        request_id: Option<&str>,
    ) -> Result<CreateBulkOutcome, StoreError> {
        let id = BulkId::generate();
        let fingerprint = new.fingerprint();
        let total = i32::try_from(new.jobs.len()).map_err(|_| corrupt("bulks", "too many jobs"))?;
        let invalid = new.jobs.iter().filter(|j| j.is_err()).count() as i32;
        let stop = (new.abort_on_error && invalid > 0).then_some(StopReason::Abort);
        let t = now.as_micros();

        let txn = self.db.begin().await?;
        let inserted = bulk::Entity::insert(bulk::ActiveModel {
            id: Set(id.as_str().to_owned()),
            account_id: Set(account.as_str().to_owned()),
            idempotency_key: Set(new.idempotency_key.as_ref().map(|k| k.as_str().to_owned())),
            fingerprint: Set(fingerprint.clone()),
            state: Set(BulkState::Running.as_str().to_owned()),
            stop_reason: Set(stop.map(|s| s.as_str().to_owned())),
            total: Set(total),
            succeeded: Set(0),
            failed: Set(invalid),
            skipped: Set(0),
            canceled: Set(0),
            abort_on_error: Set(new.abort_on_error),
            max_concurrency: Set(i32::try_from(new.max_concurrency).unwrap_or(i32::MAX)),
            metadata: Set(serde_json::to_string(&new.metadata).map_err(|e| corrupt("bulks", e))?),
            dispatch_cursor: Set(0),
            // The accepted event, then one result per invalid job.
            last_sequence: Set(1 + i64::from(invalid)),
            created_at: Set(t),
            updated_at: Set(t),
            finished_at: Set(None),
            created_by_key: Set(new.created_by.as_ref().map(|k| k.as_str().to_owned())),
            provider_waits: Set(None),
        })
        .on_conflict_do_nothing_on([bulk::Column::AccountId, bulk::Column::IdempotencyKey])
        .exec_without_returning(&txn)
        .await?;
        if !matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            txn.rollback().await?;
            return self.same_key_bulk(account, new, &fingerprint).await;
        }

        insert_jobs(&txn, &id, account, new, default_provider, t).await?;
        let row = bulk::Entity::find_by_id(id.as_str().to_owned())
            .one(&txn)
            .await?
            .ok_or_else(|| corrupt("bulks", "batch missing after insert"))?;
        insert_audit(
            &txn,
            AuditEntry {
                account: account.as_str(),
                actor_key: new.created_by.as_ref(),
                source: "api",
                action: "bulk.create",
                resource_id: id.as_str(),
                request_id,
                outcome: "accepted",
                detail: format!("{total} jobs, {invalid} invalid"),
                now: t,
            },
        )
        .await?;
        let batch = bulk_to_domain(row)?;
        append_events(
            &txn,
            account,
            &[NewEvent::bulk(EventType::BulkAccepted, &batch)],
            t,
        )
        .await?;
        txn.commit().await?;
        self.note_events_appended();
        Ok(CreateBulkOutcome::Created(batch))
    }

    /// The batch that already holds `new`'s idempotency key: the same one again, or another.
    async fn same_key_bulk(
        &self,
        account: &AccountId,
        new: &NewBulk,
        fingerprint: &str,
    ) -> Result<CreateBulkOutcome, StoreError> {
        let key = new
            .idempotency_key
            .as_ref()
            .map(|k| k.as_str())
            .unwrap_or_default();
        let existing = bulk::Entity::find()
            .filter(bulk::Column::AccountId.eq(account.as_str()))
            .filter(bulk::Column::IdempotencyKey.eq(key))
            .one(self.reads())
            .await?
            .ok_or_else(|| corrupt("bulks", "key conflicted but the batch cannot be read"))?;
        Ok(if existing.fingerprint == fingerprint {
            CreateBulkOutcome::Existing(bulk_to_domain(existing)?)
        } else {
            CreateBulkOutcome::KeyReused
        })
    }

    pub async fn get_bulk(
        &self,
        account: &AccountId,
        id: &BulkId,
    ) -> Result<Option<Bulk>, StoreError> {
        bulk::Entity::find_by_id(id.as_str().to_owned())
            .filter(bulk::Column::AccountId.eq(account.as_str()))
            .one(self.reads())
            .await?
            .map(bulk_to_domain)
            .transpose()
    }

    /// Batches still running, oldest first.
    /// The account's batches, newest first (ids are time-ordered), optionally only those in
    /// `state`, after the cursor `before` (an id of the previous page).
    pub async fn list_bulks(
        &self,
        account: &AccountId,
        state: Option<BulkState>,
        before: Option<&BulkId>,
        limit: u64,
    ) -> Result<Vec<Bulk>, StoreError> {
        let mut query = bulk::Entity::find().filter(bulk::Column::AccountId.eq(account.as_str()));
        if let Some(state) = state {
            query = query.filter(bulk::Column::State.eq(state.as_str()));
        }
        if let Some(before) = before {
            query = query.filter(bulk::Column::Id.lt(before.as_str()));
        }
        query
            .order_by_desc(bulk::Column::Id)
            .limit(limit)
            .all(self.reads())
            .await?
            .into_iter()
            .map(bulk_to_domain)
            .collect()
    }

    pub async fn running_bulks(&self) -> Result<Vec<Bulk>, StoreError> {
        bulk::Entity::find()
            .filter(bulk::Column::State.eq(BulkState::Running.as_str()))
            .order_by_asc(bulk::Column::Id)
            .all(self.reads())
            .await?
            .into_iter()
            .map(bulk_to_domain)
            .collect()
    }

    /// Jobs of running batches not handed to any worker yet (all replicas together).
    pub async fn queued_bulk_jobs(&self) -> Result<i64, StoreError> {
        let rows: Vec<(i32, i32)> = bulk::Entity::find()
            .select_only()
            .column(bulk::Column::Total)
            .column(bulk::Column::DispatchCursor)
            .filter(bulk::Column::State.eq(BulkState::Running.as_str()))
            .into_tuple()
            .all(self.reads())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(total, cursor)| i64::from(Ord::max(total.saturating_sub(cursor), 0)))
            .sum())
    }

    /// Hands up to `limit` jobs of a batch to `owner` until `lease_until`: first jobs whose
    /// lease expired (their worker died), then jobs never handed out, in order. Nothing new is
    /// handed out once the batch stops dispatching.
    pub async fn claim_items(
        &self,
        bulk_id: &BulkId,
        owner: &str,
        limit: u32,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin().await?;
        let mut rows: Vec<bulk_item::Model> = Vec::new();
        let mut taken_over = std::collections::HashSet::new();

        let expired = bulk_item::Entity::find()
            .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
            .filter(bulk_item::Column::Status.eq(ItemStatus::Running.as_str()))
            .filter(bulk_item::Column::LeaseUntil.lt(now.as_micros()))
            .order_by_asc(bulk_item::Column::Idx)
            .limit(u64::from(limit))
            .all(&txn)
            .await?;
        for item in expired {
            let taken = bulk_item::Entity::update_many()
                .col_expr(bulk_item::Column::LeaseOwner, Expr::value(owner))
                .col_expr(
                    bulk_item::Column::LeaseUntil,
                    Expr::value(lease_until.as_micros()),
                )
                .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
                .filter(bulk_item::Column::Idx.eq(item.idx))
                .filter(bulk_item::Column::Status.eq(ItemStatus::Running.as_str()))
                .filter(bulk_item::Column::LeaseUntil.eq(item.lease_until))
                .exec_with_returning(&txn)
                .await?;
            if !taken.is_empty() {
                tracing::info!(bulk_id = %bulk_id, index = item.idx, "taking over a job whose worker's lease expired");
                taken_over.insert(item.idx);
                rows.extend(taken);
            }
        }

        let room = limit.saturating_sub(rows.len() as u32) as i32;
        if room > 0 {
            let row = bulk::Entity::find_by_id(bulk_id.as_str().to_owned())
                .one(&txn)
                .await?
                .ok_or_else(|| corrupt("bulks", "claiming from a missing batch"))?;
            let from = row.dispatch_cursor;
            let to = Ord::min(from.saturating_add(room), row.total);
            if row.stop_reason.is_none() && row.state == BulkState::Running.as_str() && to > from {
                // Compare-and-set on the cursor: across replicas, each range is handed out once.
                // It re-checks that the batch still dispatches, against the row as it is when
                // the update gets its lock: a cancel or abort that committed after the read above
                // must stop this claim, or a finisher that counted the running jobs before the
                // claim committed ends the batch while these jobs run.
                let moved = bulk::Entity::update_many()
                    .col_expr(bulk::Column::DispatchCursor, Expr::value(to))
                    .filter(bulk::Column::Id.eq(bulk_id.as_str()))
                    .filter(bulk::Column::DispatchCursor.eq(from))
                    .filter(bulk::Column::StopReason.is_null())
                    .filter(bulk::Column::State.eq(BulkState::Running.as_str()))
                    .exec(&txn)
                    .await?
                    .rows_affected;
                if moved == 1 {
                    let fresh = bulk_item::Entity::update_many()
                        .col_expr(
                            bulk_item::Column::Status,
                            Expr::value(ItemStatus::Running.as_str()),
                        )
                        .col_expr(bulk_item::Column::LeaseOwner, Expr::value(owner))
                        .col_expr(
                            bulk_item::Column::LeaseUntil,
                            Expr::value(lease_until.as_micros()),
                        )
                        .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
                        .filter(bulk_item::Column::Idx.gte(from))
                        .filter(bulk_item::Column::Idx.lt(to))
                        .filter(bulk_item::Column::Status.eq(ItemStatus::Queued.as_str()))
                        .exec_with_returning(&txn)
                        .await?;
                    rows.extend(fresh);
                }
            }
        }

        if rows.is_empty() {
            txn.rollback().await?;
            return Ok(Vec::new());
        }
        txn.commit().await?;
        rows.sort_by_key(|r| r.idx);
        rows.into_iter()
            .map(|row| {
                let json = row
                    .job
                    .ok_or_else(|| corrupt("bulk_items", "a dispatchable job has no request"))?;
                let stored: StoredJob =
                    serde_json::from_str(&json).map_err(|e| corrupt("bulk_items", e))?;
                Ok(ClaimedItem {
                    taken_over: taken_over.contains(&row.idx),
                    index: row.idx as u32,
                    request: stored
                        .into_request()
                        .map_err(|e| corrupt("bulk_items", e))?,
                })
            })
            .collect()
    }

    /// Extends the leases of the jobs `owner` is running in `bulks`. Only a live driver renews
    /// its batch's leases: the jobs of a driver that failed must lapse, so that they run again.
    pub async fn heartbeat(
        &self,
        owner: &str,
        bulks: &[BulkId],
        lease_until: Timestamp,
    ) -> Result<u64, StoreError> {
        if bulks.is_empty() {
            return Ok(0);
        }
        Ok(bulk_item::Entity::update_many()
            .col_expr(
                bulk_item::Column::LeaseUntil,
                Expr::value(lease_until.as_micros()),
            )
            .filter(bulk_item::Column::LeaseOwner.eq(owner))
            .filter(bulk_item::Column::Status.eq(ItemStatus::Running.as_str()))
            .filter(bulk_item::Column::BulkId.is_in(bulks.iter().map(BulkId::as_str)))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// Gives up `owner`'s lease on jobs whose outcome it could not tell (a refund may exist, but
    /// could not be read), so that they are taken over, and their refunds looked for, again.
    pub async fn release_items(
        &self,
        bulk_id: &BulkId,
        owner: &str,
        indices: &[u32],
    ) -> Result<(), StoreError> {
        if indices.is_empty() {
            return Ok(());
        }
        bulk_item::Entity::update_many()
            .col_expr(bulk_item::Column::LeaseUntil, Expr::value(0i64))
            .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
            .filter(bulk_item::Column::LeaseOwner.eq(owner))
            .filter(bulk_item::Column::Status.eq(ItemStatus::Running.as_str()))
            .filter(bulk_item::Column::Idx.is_in(indices.iter().map(|&i| i as i32)))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Records finished jobs of one batch — results, events and the batch's counters — in one
    /// transaction, for the jobs `owner` still holds (the others were taken over; their results
    /// are not ours to write). A failure in a batch that aborts on error stops its dispatching.
    /// Returns the indices recorded.
    ///
    /// Writing many jobs at once matters: every result takes the batch row's lock (it numbers the
    /// events), and a lock held through a commit per job would serialize the whole batch on
    /// commit latency.
    pub async fn complete_items(
        &self,
        bulk_id: &BulkId,
        owner: &str,
        finished: &[(u32, JobOutcome)],
    ) -> Result<Vec<u32>, StoreError> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let now = Timestamp::now().as_micros();
        let txn = self.db.begin().await?;
        let mut recorded = Vec::with_capacity(finished.len());
        let mut counts = [0i64; 4]; // succeeded, failed, skipped, canceled
        for (index, outcome) in finished {
            let slot = match outcome.status {
                // A job whose refund waits for approval did its part.
                ItemStatus::Succeeded | ItemStatus::RequiresApproval => 0,
                ItemStatus::Failed => 1,
                ItemStatus::Skipped => 2,
                ItemStatus::Canceled => 3,
                ItemStatus::Queued | ItemStatus::Running => {
                    return Err(corrupt("bulk_items", "a job cannot end queued or running"));
                }
            };
            if record_item(&txn, bulk_id, owner, *index, outcome, now).await? {
                counts[slot] += 1;
                recorded.push(*index);
            }
        }
        if recorded.is_empty() {
            txn.rollback().await?;
            return Ok(recorded);
        }
        // The batch row last: it is the contended one, so hold its lock for as little as possible.
        let mut update = bulk::Entity::update_many()
            .col_expr(
                bulk::Column::LastSequence,
                Expr::col(bulk::Column::LastSequence).add(recorded.len() as i64),
            )
            .col_expr(bulk::Column::UpdatedAt, Expr::value(now));
        for (column, n) in [
            (bulk::Column::Succeeded, counts[0]),
            (bulk::Column::Failed, counts[1]),
            (bulk::Column::Skipped, counts[2]),
            (bulk::Column::Canceled, counts[3]),
        ] {
            if n > 0 {
                update = update.col_expr(column, Expr::col(column).add(n));
            }
        }
        let batch = update
            .filter(bulk::Column::Id.eq(bulk_id.as_str()))
            .exec_with_returning(&txn)
            .await?
            .pop()
            .ok_or_else(|| corrupt("bulks", "completing jobs of a missing batch"))?;
        if counts[1] > 0 && batch.abort_on_error && batch.stop_reason.is_none() {
            bulk::Entity::update_many()
                .col_expr(
                    bulk::Column::StopReason,
                    Expr::value(StopReason::Abort.as_str()),
                )
                .filter(bulk::Column::Id.eq(bulk_id.as_str()))
                .filter(bulk::Column::StopReason.is_null())
                .exec(&txn)
                .await?;
        }
        let account = AccountId::from_trusted(batch.account_id);
        let first = batch.last_sequence - recorded.len() as i64 + 1;
        let events = recorded
            .iter()
            .zip(first..)
            .map(|(&idx, seq)| event_row(bulk_id, &account, seq, "result", Some(idx as i32), now))
            .collect::<Vec<_>>();
        bulk_event::Entity::insert_many(events)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(recorded)
    }

    /// Asks a running batch to stop dispatching. Returns the batch (unchanged if it had already
    /// stopped or finished), or `None` if the account has no such batch.
    pub async fn cancel_bulk(
        &self,
        account: &AccountId,
        id: &BulkId,
        actor: Option<&ApiKeyId>,
        request_id: Option<&str>,
    ) -> Result<Option<Bulk>, StoreError> {
        let now = Timestamp::now().as_micros();
        let txn = self.db.begin().await?;
        let canceled = bulk::Entity::update_many()
            .col_expr(
                bulk::Column::StopReason,
                Expr::value(StopReason::Cancel.as_str()),
            )
            .col_expr(bulk::Column::UpdatedAt, Expr::value(now))
            .filter(bulk::Column::Id.eq(id.as_str()))
            .filter(bulk::Column::AccountId.eq(account.as_str()))
            .filter(bulk::Column::State.eq(BulkState::Running.as_str()))
            .filter(bulk::Column::StopReason.is_null())
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        if canceled {
            insert_audit(
                &txn,
                AuditEntry {
                    account: account.as_str(),
                    actor_key: actor,
                    source: "api",
                    action: "bulk.cancel",
                    resource_id: id.as_str(),
                    request_id,
                    outcome: "canceling",
                    detail: String::new(),
                    now,
                },
            )
            .await?;
        }
        txn.commit().await?;
        self.get_bulk(account, id).await
    }

    /// Ends a batch whose every dispatched job has finished: jobs never dispatched (after an abort
    /// or a cancel) get their SKIPPED/CANCELED results, then the summary. Conditional on the
    /// batch still running, so exactly one worker ends it. Returns whether this call ended it.
    pub async fn finish_bulk_if_done(&self, bulk_id: &BulkId) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        // The batch row's lock first (a no-op on SQLite, whose transactions run one at a time):
        // a claim in flight holds it until it commits, so the jobs it hands out are counted
        // below as running, not missed as still queued.
        let Some(row) = bulk::Entity::find_by_id(bulk_id.as_str().to_owned())
            .lock_exclusive()
            .one(&txn)
            .await?
        else {
            txn.rollback().await?;
            return Ok(false);
        };
        let stop = row.stop_reason.as_deref().and_then(StopReason::parse);
        let unfinished = if stop.is_some() {
            vec![ItemStatus::Running.as_str()]
        } else {
            vec![ItemStatus::Running.as_str(), ItemStatus::Queued.as_str()]
        };
        let busy = bulk_item::Entity::find()
            .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
            .filter(bulk_item::Column::Status.is_in(unfinished))
            .count(&txn)
            .await?;
        if row.state != BulkState::Running.as_str() || busy > 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        let now = Timestamp::now().as_micros();
        // Take the batch first (compare-and-set on its state): a concurrent finisher waits here
        // and then finds it no longer running.
        let state = stop.map_or(BulkState::Completed, StopReason::final_state);
        let taken = bulk::Entity::update_many()
            .col_expr(bulk::Column::State, Expr::value(state.as_str()))
            .col_expr(
                bulk::Column::ProviderWaits,
                Expr::value(Option::<String>::None),
            )
            .col_expr(bulk::Column::FinishedAt, Expr::value(now))
            .col_expr(bulk::Column::UpdatedAt, Expr::value(now))
            .filter(bulk::Column::Id.eq(bulk_id.as_str()))
            .filter(bulk::Column::State.eq(BulkState::Running.as_str()))
            .exec(&txn)
            .await?
            .rows_affected;
        if taken != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        if let Some(stop) = stop {
            let status = stop.undispatched_status();
            let counter = match stop {
                StopReason::Cancel => bulk::Column::Canceled,
                StopReason::Abort => bulk::Column::Skipped,
            };
            loop {
                let queued: Vec<i32> = bulk_item::Entity::find()
                    .select_only()
                    .column(bulk_item::Column::Idx)
                    .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
                    .filter(bulk_item::Column::Status.eq(ItemStatus::Queued.as_str()))
                    .order_by_asc(bulk_item::Column::Idx)
                    .limit(INSERT_CHUNK as u64)
                    .into_tuple()
                    .all(&txn)
                    .await?;
                let Some(&last) = queued.last() else { break };
                let first = queued[0];
                bulk_item::Entity::update_many()
                    .col_expr(bulk_item::Column::Status, Expr::value(status.as_str()))
                    .col_expr(bulk_item::Column::UpdatedAt, Expr::value(now))
                    .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
                    .filter(bulk_item::Column::Status.eq(ItemStatus::Queued.as_str()))
                    .filter(bulk_item::Column::Idx.gte(first))
                    .filter(bulk_item::Column::Idx.lte(last))
                    .exec(&txn)
                    .await?;
                let n = queued.len() as i64;
                let last_seq = next_sequences(&txn, bulk_id, Some(counter), n, now)
                    .await?
                    .last_sequence;
                let account = AccountId::from_trusted(row.account_id.clone());
                let events = queued
                    .iter()
                    .zip(last_seq - n + 1..)
                    .map(|(&idx, seq)| event_row(bulk_id, &account, seq, "result", Some(idx), now))
                    .collect::<Vec<_>>();
                bulk_event::Entity::insert_many(events)
                    .exec_without_returning(&txn)
                    .await?;
            }
        }
        let summary_seq = next_sequences(&txn, bulk_id, None, 1, now)
            .await?
            .last_sequence;
        let account = AccountId::from_trusted(row.account_id.clone());
        bulk_event::Entity::insert(event_row(
            bulk_id,
            &account,
            summary_seq,
            "summary",
            None,
            now,
        ))
        .exec_without_returning(&txn)
        .await?;
        let batch = bulk::Entity::find_by_id(bulk_id.as_str().to_owned())
            .one(&txn)
            .await?
            .ok_or_else(|| corrupt("bulks", "batch missing while it ends"))?;
        let batch = bulk_to_domain(batch)?;
        append_events(
            &txn,
            &batch.account,
            &[NewEvent::bulk(EventType::of_bulk_end(state), &batch)],
            now,
        )
        .await?;
        txn.commit().await?;
        self.note_events_appended();
        Ok(true)
    }

    /// Records that a running batch holds `wait.provider`'s jobs (a new wait, or a new next
    /// attempt): one `wait` event, and the wait in the batch's current waits.
    pub async fn provider_waiting(
        &self,
        bulk_id: &BulkId,
        wait: &ProviderWait,
    ) -> Result<(), StoreError> {
        let stored = StoredWait::of(wait);
        let detail = serde_json::to_string(&stored).map_err(|e| corrupt("bulk_events", e))?;
        self.provider_wait_event(bulk_id, "wait", detail, |waits| {
            waits.retain(|w| w.provider != stored.provider);
            waits.push(stored.clone());
        })
        .await
    }

    /// Records that the batch no longer waits for `provider`: it answered again, or the wait
    /// reached its bound (`gave_up`) and `failed_jobs` held jobs failed.
    pub async fn provider_wait_ended(
        &self,
        bulk_id: &BulkId,
        provider: &ProviderName,
        waited: std::time::Duration,
        gave_up: bool,
        failed_jobs: u32,
    ) -> Result<(), StoreError> {
        let end = StoredWaitEnd {
            provider: provider.as_str().to_owned(),
            waited_micros: i64::try_from(waited.as_micros()).unwrap_or(i64::MAX),
            gave_up,
            failed_jobs,
        };
        let detail = serde_json::to_string(&end).map_err(|e| corrupt("bulk_events", e))?;
        self.provider_wait_event(bulk_id, "wait_ended", detail, |waits| {
            waits.retain(|w| w.provider != end.provider)
        })
        .await
    }

    /// One wait event and the change it makes to the batch's current waits, in one
    /// transaction (the sequence update locks the batch row first). Nothing is written for a
    /// batch that is no longer running.
    async fn provider_wait_event(
        &self,
        bulk_id: &BulkId,
        kind: &str,
        detail: String,
        change: impl FnOnce(&mut Vec<StoredWait>),
    ) -> Result<(), StoreError> {
        let now = Timestamp::now().as_micros();
        let txn = self.db.begin().await?;
        let row = next_sequences(&txn, bulk_id, None, 1, now).await?;
        if row.state != BulkState::Running.as_str() {
            txn.rollback().await?;
            return Ok(());
        }
        let mut waits = stored_waits(row.provider_waits.as_deref())?;
        change(&mut waits);
        let waits = if waits.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&waits).map_err(|e| corrupt("bulks", e))?)
        };
        bulk::Entity::update_many()
            .col_expr(bulk::Column::ProviderWaits, Expr::value(waits))
            .filter(bulk::Column::Id.eq(bulk_id.as_str()))
            .exec(&txn)
            .await?;
        let account = AccountId::from_trusted(row.account_id.clone());
        let mut event = event_row(bulk_id, &account, row.last_sequence, kind, None, now);
        event.detail = Set(Some(detail));
        bulk_event::Entity::insert(event)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Events after `after`, in order, with their results and refunds filled in.
    pub async fn bulk_events(
        &self,
        bulk_id: &BulkId,
        after: u64,
        limit: u64,
    ) -> Result<Vec<SequencedEvent>, StoreError> {
        let rows = bulk_event::Entity::find()
            .filter(bulk_event::Column::BulkId.eq(bulk_id.as_str()))
            .filter(bulk_event::Column::Sequence.gt(i64::try_from(after).unwrap_or(i64::MAX)))
            .order_by_asc(bulk_event::Column::Sequence)
            .limit(limit)
            .all(self.reads())
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let indices: Vec<i32> = rows.iter().filter_map(|e| e.item_idx).collect();
        let mut items = self.items_with_refunds(bulk_id, &indices).await?;
        let needs_bulk = rows
            .iter()
            .any(|e| e.kind == "accepted" || e.kind == "summary");
        let bulk_row = if needs_bulk {
            Some(
                bulk::Entity::find_by_id(bulk_id.as_str().to_owned())
                    .one(self.reads())
                    .await?
                    .ok_or_else(|| corrupt("bulks", "events of a missing batch"))?,
            )
        } else {
            None
        };
        rows.into_iter()
            .map(|e| {
                let event = match (e.kind.as_str(), e.item_idx, &bulk_row) {
                    ("result", Some(idx), _) => BulkEvent::Result(Box::new(
                        items
                            .remove(&idx)
                            .ok_or_else(|| corrupt("bulk_events", "result of a missing job"))?,
                    )),
                    ("accepted", _, Some(b)) => BulkEvent::Accepted {
                        bulk_id: bulk_id.clone(),
                        total: b.total as u32,
                    },
                    ("summary", _, Some(b)) => BulkEvent::Summary {
                        counts: counts(b),
                        state: BulkState::parse(&b.state)
                            .ok_or_else(|| corrupt("bulks", "bad state"))?,
                        duration_micros: b.finished_at.unwrap_or(b.updated_at) - b.created_at,
                    },
                    ("wait", _, _) => {
                        BulkEvent::ProviderWaiting(event_detail::<StoredWait>(&e)?.into_domain())
                    }
                    ("wait_ended", _, _) => {
                        let end: StoredWaitEnd = event_detail(&e)?;
                        BulkEvent::ProviderWaitEnded {
                            provider: ProviderName::from_trusted(end.provider),
                            waited_micros: end.waited_micros,
                            gave_up: end.gave_up,
                            failed_jobs: end.failed_jobs,
                        }
                    }
                    (kind, _, _) => {
                        return Err(corrupt("bulk_events", format!("bad event {kind}")));
                    }
                };
                Ok(SequencedEvent {
                    sequence: e.sequence as u64,
                    event,
                })
            })
            .collect()
    }

    /// A batch's jobs in index order after `after_index`, optionally in one status.
    pub async fn list_items(
        &self,
        bulk_id: &BulkId,
        status: Option<ItemStatus>,
        after_index: Option<u32>,
        limit: u64,
    ) -> Result<Vec<ItemResult>, StoreError> {
        let mut q =
            bulk_item::Entity::find().filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()));
        if let Some(s) = status {
            q = q.filter(bulk_item::Column::Status.eq(s.as_str()));
        }
        if let Some(i) = after_index {
            q = q.filter(bulk_item::Column::Idx.gt(i as i32));
        }
        let rows = q
            .order_by_asc(bulk_item::Column::Idx)
            .limit(limit)
            .all(self.reads())
            .await?;
        let refunds = self.refunds_of(&rows).await?;
        rows.into_iter()
            .map(|r| item_to_domain(r, &refunds))
            .collect()
    }

    async fn items_with_refunds(
        &self,
        bulk_id: &BulkId,
        indices: &[i32],
    ) -> Result<HashMap<i32, ItemResult>, StoreError> {
        if indices.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = bulk_item::Entity::find()
            .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
            .filter(bulk_item::Column::Idx.is_in(indices.iter().copied()))
            .all(self.reads())
            .await?;
        let refunds = self.refunds_of(&rows).await?;
        rows.into_iter()
            .map(|r| {
                let idx = r.idx;
                item_to_domain(r, &refunds).map(|i| (idx, i))
            })
            .collect()
    }

    async fn refunds_of(
        &self,
        items: &[bulk_item::Model],
    ) -> Result<HashMap<String, Refund>, StoreError> {
        let ids: Vec<String> = items.iter().filter_map(|i| i.refund_id.clone()).collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        refund::Entity::find()
            .filter(refund::Column::Id.is_in(ids))
            .all(self.reads())
            .await?
            .into_iter()
            .map(|r| refund_to_domain(r).map(|r| (r.id.as_str().to_owned(), r)))
            .collect()
    }
}

/// Writes one job's result if `owner` still holds it; whether it did.
async fn record_item(
    txn: &DatabaseTransaction,
    bulk_id: &BulkId,
    owner: &str,
    index: u32,
    outcome: &JobOutcome,
    now: i64,
) -> Result<bool, StoreError> {
    let mut update = bulk_item::Entity::update_many()
        .col_expr(
            bulk_item::Column::Status,
            Expr::value(outcome.status.as_str()),
        )
        .col_expr(
            bulk_item::Column::RefundId,
            Expr::value(outcome.refund_id.as_ref().map(|r| r.as_str().to_owned())),
        )
        .col_expr(
            bulk_item::Column::Attempts,
            Expr::value(i32::try_from(outcome.attempts).unwrap_or(i32::MAX)),
        )
        .col_expr(
            bulk_item::Column::LeaseOwner,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            bulk_item::Column::LeaseUntil,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(bulk_item::Column::UpdatedAt, Expr::value(now));
    if let Some(e) = &outcome.error {
        update = update
            .col_expr(bulk_item::Column::ErrorCode, Expr::value(e.code.clone()))
            .col_expr(
                bulk_item::Column::ErrorMessage,
                Expr::value(e.message.clone()),
            )
            .col_expr(bulk_item::Column::Retryable, Expr::value(e.retryable));
    }
    let mine = update
        .filter(bulk_item::Column::BulkId.eq(bulk_id.as_str()))
        .filter(bulk_item::Column::Idx.eq(index as i32))
        .filter(bulk_item::Column::Status.eq(ItemStatus::Running.as_str()))
        .filter(bulk_item::Column::LeaseOwner.eq(owner))
        .exec(txn)
        .await?
        .rows_affected;
    Ok(mine == 1)
}

/// Reserves `n` event sequences (adding `n` to `counter`, if given); returns the batch as updated,
/// whose `last_sequence` is the last one reserved.
/// The UPDATE comes first so that, on PostgreSQL, it locks the batch row until commit: the
/// sequences of concurrent transactions are handed out one after the other and commit in order.
async fn next_sequences(
    txn: &DatabaseTransaction,
    bulk_id: &BulkId,
    counter: Option<bulk::Column>,
    n: i64,
    now: i64,
) -> Result<bulk::Model, StoreError> {
    let mut update = bulk::Entity::update_many()
        .col_expr(
            bulk::Column::LastSequence,
            Expr::col(bulk::Column::LastSequence).add(n),
        )
        .col_expr(bulk::Column::UpdatedAt, Expr::value(now));
    if let Some(counter) = counter {
        update = update.col_expr(counter, Expr::col(counter).add(n));
    }
    update
        .filter(bulk::Column::Id.eq(bulk_id.as_str()))
        .exec_with_returning(txn)
        .await?
        .pop()
        .ok_or_else(|| corrupt("bulks", "sequencing an event of a missing batch"))
}

fn event_row(
    bulk_id: &BulkId,
    account: &AccountId,
    sequence: i64,
    kind: &str,
    item_idx: Option<i32>,
    now: i64,
) -> bulk_event::ActiveModel {
    bulk_event::ActiveModel {
        bulk_id: Set(bulk_id.as_str().to_owned()),
        account_id: Set(account.as_str().to_owned()),
        sequence: Set(sequence),
        kind: Set(kind.to_owned()),
        item_idx: Set(item_idx),
        created_at: Set(now),
        detail: Set(None),
    }
}

fn counts(b: &bulk::Model) -> BulkCounts {
    let n = |v: i32| u32::try_from(v).unwrap_or(0);
    BulkCounts {
        total: n(b.total),
        succeeded: n(b.succeeded),
        failed: n(b.failed),
        skipped: n(b.skipped),
        canceled: n(b.canceled),
    }
}

/// A new batch's jobs, QUEUED with their fixed idempotency keys (or FAILED when they did not
/// parse, each with its result event after the `accepted` one), inserted in chunks.
async fn insert_jobs(
    txn: &DatabaseTransaction,
    id: &BulkId,
    account: &AccountId,
    new: &NewBulk,
    default_provider: &ProviderName,
    t: i64,
) -> Result<(), StoreError> {
    let mut items = Vec::with_capacity(INSERT_CHUNK);
    let mut events = vec![event_row(id, account, 1, "accepted", None, t)];
    let mut sequence = 1;
    for (index, job) in new.jobs.iter().enumerate() {
        let idx = index as i32;
        let (status, job_json, payment_id, provider, error) = match job {
            Ok(r) => {
                let key = match &r.idempotency_key {
                    Some(k) => k.clone(),
                    None => derived_job_key(new.idempotency_key.as_ref(), id, index as u32),
                };
                let json = serde_json::to_string(&StoredJob::from_request(r, &key))
                    .map_err(|e| corrupt("bulk_items", e))?;
                // Queued even when the batch already stopped: ending it marks the job
                // skipped, with its event.
                (
                    ItemStatus::Queued,
                    Some(json),
                    r.payment.as_str().to_owned(),
                    r.provider.as_str().to_owned(),
                    None,
                )
            }
            Err(violations) => {
                sequence += 1;
                events.push(event_row(id, account, sequence, "result", Some(idx), t));
                (
                    ItemStatus::Failed,
                    None,
                    String::new(),
                    default_provider.as_str().to_owned(),
                    Some(JobError::invalid(violations)),
                )
            }
        };
        items.push(bulk_item::ActiveModel {
            bulk_id: Set(id.as_str().to_owned()),
            idx: Set(idx),
            account_id: Set(account.as_str().to_owned()),
            status: Set(status.as_str().to_owned()),
            job: Set(job_json),
            payment_id: Set(payment_id),
            provider: Set(provider),
            refund_id: Set(None),
            error_code: Set(error.as_ref().map(|e| e.code.clone())),
            error_message: Set(error.as_ref().map(|e| e.message.clone())),
            retryable: Set(error.as_ref().is_some_and(|e| e.retryable)),
            attempts: Set(0),
            lease_owner: Set(None),
            lease_until: Set(None),
            updated_at: Set(t),
        });
        if items.len() == INSERT_CHUNK {
            bulk_item::Entity::insert_many(std::mem::take(&mut items))
                .exec_without_returning(txn)
                .await?;
        }
        if events.len() == INSERT_CHUNK {
            bulk_event::Entity::insert_many(std::mem::take(&mut events))
                .exec_without_returning(txn)
                .await?;
        }
    }
    if !items.is_empty() {
        bulk_item::Entity::insert_many(items)
            .exec_without_returning(txn)
            .await?;
    }
    if !events.is_empty() {
        bulk_event::Entity::insert_many(events)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

fn bulk_to_domain(b: bulk::Model) -> Result<Bulk, StoreError> {
    Ok(Bulk {
        id: BulkId::from_trusted(b.id.clone()),
        account: AccountId::from_trusted(b.account_id.clone()),
        state: BulkState::parse(&b.state).ok_or_else(|| corrupt("bulks", "bad state"))?,
        stop: b.stop_reason.as_deref().and_then(StopReason::parse),
        counts: counts(&b),
        abort_on_error: b.abort_on_error,
        max_concurrency: u32::try_from(b.max_concurrency).unwrap_or(1),
        idempotency_key: b.idempotency_key.clone().map(IdempotencyKey::from_trusted),
        metadata: serde_json::from_str(&b.metadata).map_err(|e| corrupt("bulks", e))?,
        last_sequence: u64::try_from(b.last_sequence).unwrap_or(0),
        created_at: Timestamp::from_micros(b.created_at),
        updated_at: Timestamp::from_micros(b.updated_at),
        finished_at: b.finished_at.map(Timestamp::from_micros),
        created_by: b.created_by_key.map(ApiKeyId::from_trusted),
        provider_waits: stored_waits(b.provider_waits.as_deref())?
            .into_iter()
            .map(StoredWait::into_domain)
            .collect(),
    })
}

/// A wait as `bulks.provider_waits` (a JSON array) and `wait` events store it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredWait {
    provider: String,
    reason: String,
    since: i64,
    next_attempt: i64,
    give_up_at: i64,
    held_jobs: u32,
}

impl StoredWait {
    fn of(w: &ProviderWait) -> Self {
        Self {
            provider: w.provider.as_str().to_owned(),
            reason: w.reason.clone(),
            since: w.since.as_micros(),
            next_attempt: w.next_attempt.as_micros(),
            give_up_at: w.give_up_at.as_micros(),
            held_jobs: w.held_jobs,
        }
    }

    fn into_domain(self) -> ProviderWait {
        ProviderWait {
            provider: ProviderName::from_trusted(self.provider),
            reason: self.reason,
            since: Timestamp::from_micros(self.since),
            next_attempt: Timestamp::from_micros(self.next_attempt),
            give_up_at: Timestamp::from_micros(self.give_up_at),
            held_jobs: self.held_jobs,
        }
    }
}

/// What a `wait_ended` event stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredWaitEnd {
    provider: String,
    waited_micros: i64,
    gave_up: bool,
    failed_jobs: u32,
}

fn stored_waits(json: Option<&str>) -> Result<Vec<StoredWait>, StoreError> {
    match json {
        None | Some("") => Ok(Vec::new()),
        Some(json) => serde_json::from_str(json).map_err(|e| corrupt("bulks", e)),
    }
}

fn event_detail<T: serde::de::DeserializeOwned>(e: &bulk_event::Model) -> Result<T, StoreError> {
    let json = e
        .detail
        .as_deref()
        .ok_or_else(|| corrupt("bulk_events", format!("a {} event without detail", e.kind)))?;
    serde_json::from_str(json).map_err(|e| corrupt("bulk_events", e))
}

fn item_to_domain(
    r: bulk_item::Model,
    refunds: &HashMap<String, Refund>,
) -> Result<ItemResult, StoreError> {
    let status = ItemStatus::parse(&r.status).ok_or_else(|| corrupt("bulk_items", "bad status"))?;
    let error = r.error_code.map(|code| JobError {
        code,
        message: r.error_message.unwrap_or_default(),
        retryable: r.retryable,
    });
    Ok(ItemResult {
        index: u32::try_from(r.idx).unwrap_or(0),
        payment_id: r.payment_id,
        provider: r.provider,
        status,
        refund: r.refund_id.and_then(|id| refunds.get(&id).cloned()),
        error,
        attempts: u32::try_from(r.attempts).unwrap_or(0),
        job: r
            .job
            .map(|json| {
                serde_json::from_str::<StoredJob>(&json)
                    .map_err(|e| corrupt("bulk_items", e))?
                    .into_request()
                    .map_err(|e| corrupt("bulk_items", e))
            })
            .transpose()?,
    })
}

pub(super) fn corrupt(table: &'static str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}
