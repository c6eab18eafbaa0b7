//! Refunds, payment balances and idempotency keys.

use std::collections::BTreeMap;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait, TryInsertResult,
};

use super::audit::{AuditEntry, insert_audit};
use super::entities::{approval_threshold, connection, idempotency_key, payment, refund};
use super::events::{NewEvent, append_events};
use super::{Store, StoreError};
use crate::domain::{
    AccountId, Amount, ApiKeyId, ConnectionId, Currency, EventType, Failure, IdempotencyKey,
    NewRefund, PaymentRef, ProviderName, Refund, RefundId, RefundReason, RefundStatus, Route,
    Timestamp,
};

/// Everything needed to store a new PENDING refund and reserve its amount.
#[derive(Debug, Clone)]
pub struct BeginRefund<'a> {
    pub id: RefundId,
    pub account: &'a AccountId,
    pub request: &'a NewRefund,
    /// `NewRefund::fingerprint`, computed once by the caller.
    pub fingerprint: &'a str,
    /// The payment as the provider reported it in the pre-flight.
    pub captured: i64,
    /// The provider's own view of what is still refundable (it also counts refunds made outside
    /// this service). Only ever lowers what we allow; the atomic guard is our reserved amount.
    pub provider_remaining: i64,
    pub now: Timestamp,
    /// Until then the request path owns the refund; afterwards the reconciler may take it.
    pub lease_until: Timestamp,
    pub idempotency_expires_at: Timestamp,
    /// Who asked for it (`api`, `bulk`, ...), recorded with its first status.
    pub source: &'static str,
    /// The API key that asked for it.
    pub created_by: Option<&'a ApiKeyId>,
    /// The request it was asked for in, for the audit trail.
    pub request_id: Option<&'a str>,
    /// Whose credentials it goes through; the payment's balance belongs to that route.
    pub route: &'a Route,
}

#[derive(Debug)]
pub enum BeginOutcome {
    /// Stored PENDING with its amount reserved: the caller may now call the provider.
    Created(Refund),
    /// The idempotency key was used before with the same parameters: the original refund.
    Replayed(Refund),
    /// The idempotency key was used before with different parameters.
    KeyReused,
    OverRefund {
        remaining: i64,
    },
    AlreadyRefunded,
    /// Another account owns the payment here (it refunded it first): to this account it does not
    /// exist.
    PaymentNotOwned,
    /// The connection the refund would go through was deleted meanwhile.
    ConnectionDeleted,
}

/// A status change to apply, conditional on the refund still being in `from`.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub from: RefundStatus,
    pub to: RefundStatus,
    pub provider_refund_id: Option<String>,
    pub failure: Option<Failure>,
    /// What caused it: `api`, `reconciler`, ...
    pub source: &'static str,
    /// The key that approved it (REQUIRES_APPROVAL -> PENDING).
    pub approved_by: Option<ApiKeyId>,
    /// Until when the caller owns the refund (its provider call); the reconciler waits for it.
    pub lease_until: Option<Timestamp>,
    /// The API key behind the change, when a person's call made it (approval, rejection).
    pub actor: Option<ApiKeyId>,
    /// The request it happened in, for the audit trail.
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<RefundStatus>,
    pub payment: Option<PaymentRef>,
    pub provider: Option<ProviderName>,
    pub created_from: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    /// Keyset cursor: only refunds with a smaller id (older).
    pub before_id: Option<RefundId>,
}

/// A PENDING refund due for the reconciler.
#[derive(Debug, Clone)]
pub struct PendingRefund {
    pub refund: Refund,
    pub next_check_at: Option<i64>,
}

impl Store {
    /// The refund an idempotency key points at, with the fingerprint it was first used with.
    /// Expired keys are treated as unknown.
    pub async fn find_idempotent(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        now: Timestamp,
    ) -> Result<Option<(String, Refund)>, StoreError> {
        let Some(row) = idempotency_key::Entity::find_by_id((
            account.as_str().to_owned(),
            key.as_str().to_owned(),
        ))
        .one(self.reads())
        .await?
        else {
            return Ok(None);
        };
        if row.expires_at <= now.as_micros() {
            return Ok(None);
        }
        let refund = self
            .get_refund_by_id(&row.refund_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                table: "idempotency_keys",
                detail: format!("key points at missing refund {}", row.refund_id),
            })?;
        Ok(Some((row.fingerprint, refund)))
    }

    /// Stores a PENDING refund and reserves its amount, in one transaction, before any provider
    /// is called. The reservation is one conditional write, so concurrent requests (from any
    /// number of replicas) can never reserve more than was captured.
    pub async fn begin_refund(&self, b: BeginRefund<'_>) -> Result<BeginOutcome, StoreError> {
        let txn = self.db.begin().await?;
        let outcome = begin_in(&txn, &b).await?;
        match outcome {
            BeginOutcome::Created(_) => {
                txn.commit().await?;
                self.note_events_appended();
            }
            BeginOutcome::Replayed(_)
            | BeginOutcome::KeyReused
            | BeginOutcome::OverRefund { .. }
            | BeginOutcome::AlreadyRefunded
            | BeginOutcome::PaymentNotOwned
            | BeginOutcome::ConnectionDeleted => txn.rollback().await?,
        }
        Ok(outcome)
    }

    /// Applies a status change if the refund is still in `s.from`, releasing its reservation when
    /// the new status no longer holds one, and records it in the audit trail (the refund's status
    /// history). Returns `None` when someone else moved it first.
    pub async fn settle(&self, id: &RefundId, s: Settlement) -> Result<Option<Refund>, StoreError> {
        if let Err(e) = s.from.transition(s.to) {
            return Err(StoreError::Corrupt {
                table: "refunds",
                detail: e.to_string(),
            });
        }
        let now = Timestamp::now().as_micros();
        let txn = self.db.begin().await?;
        let mut update = refund::Entity::update_many()
            .col_expr(refund::Column::Status, Expr::value(s.to.as_str()))
            .col_expr(refund::Column::UpdatedAt, Expr::value(now))
            .col_expr(
                refund::Column::NextCheckAt,
                Expr::value(s.lease_until.map(Timestamp::as_micros)),
            );
        if let Some(key) = &s.approved_by {
            update = update.col_expr(refund::Column::ApprovedByKey, Expr::value(key.as_str()));
        }
        if let Some(provider_refund_id) = &s.provider_refund_id {
            update = update.col_expr(
                refund::Column::ProviderRefundId,
                Expr::value(provider_refund_id.clone()),
            );
        }
        if let Some(failure) = &s.failure {
            update = update
                .col_expr(
                    refund::Column::FailureCode,
                    Expr::value(failure.code.clone()),
                )
                .col_expr(
                    refund::Column::FailureReason,
                    Expr::value(failure.reason.clone()),
                );
        }
        let Some(row) = update
            .filter(refund::Column::Id.eq(id.as_str()))
            .filter(refund::Column::Status.eq(s.from.as_str()))
            .exec_with_returning(&txn)
            .await?
            .pop()
        else {
            txn.rollback().await?;
            return Ok(None);
        };
        if s.from.holds_reservation() && !s.to.holds_reservation() {
            let released = payment::Entity::update_many()
                .col_expr(
                    payment::Column::ReservedAmount,
                    Expr::col(payment::Column::ReservedAmount).sub(row.amount),
                )
                .col_expr(payment::Column::UpdatedAt, Expr::value(now))
                .filter(payment::Column::Provider.eq(row.provider.as_str()))
                .filter(payment::Column::PaymentId.eq(row.payment_id.as_str()))
                .filter(payment::Column::ReservedAmount.gte(row.amount))
                .exec(&txn)
                .await?
                .rows_affected;
            if released != 1 {
                txn.rollback().await?;
                return Err(StoreError::Corrupt {
                    table: "payments",
                    detail: format!("cannot release {} for refund {id}", row.amount),
                });
            }
        }
        let action = match (s.from, s.to) {
            (RefundStatus::RequiresApproval, RefundStatus::Pending) => "refund.approve",
            (RefundStatus::RequiresApproval, _) => "refund.reject",
            _ => "refund.settle",
        };
        let mut detail = match &s.failure {
            Some(f) => format!("{}: {}", f.code, f.reason),
            None => String::new(),
        };
        if let Some(pid) = &s.provider_refund_id {
            detail = format!(
                "provider refund {pid}{}{detail}",
                if detail.is_empty() { "" } else { "; " }
            );
        }
        insert_audit(
            &txn,
            AuditEntry {
                account: &row.account_id,
                actor_key: s.actor.as_ref(),
                source: s.source,
                action,
                resource_id: &row.id,
                request_id: s.request_id.as_deref(),
                outcome: s.to.as_str(),
                detail,
                now,
            },
        )
        .await?;
        let refund = to_domain(row)?;
        let event = EventType::of_refund_status(s.to);
        if let Some(kind) = event {
            append_events(
                &txn,
                &refund.account,
                &[NewEvent::refund(kind, &refund)],
                now,
            )
            .await?;
        }
        txn.commit().await?;
        if event.is_some() {
            self.note_events_appended();
        }
        Ok(Some(refund))
    }

    /// Records what the provider answered for a refund that stays PENDING (it has a provider id
    /// now, or the answer was ambiguous), and when to look at it next.
    pub async fn keep_pending(
        &self,
        id: &RefundId,
        provider_refund_id: Option<&str>,
        next_check_at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut update = refund::Entity::update_many()
            .col_expr(
                refund::Column::NextCheckAt,
                Expr::value(next_check_at.as_micros()),
            )
            .col_expr(
                refund::Column::UpdatedAt,
                Expr::value(Timestamp::now().as_micros()),
            );
        if let Some(pid) = provider_refund_id {
            update = update.col_expr(refund::Column::ProviderRefundId, Expr::value(pid));
        }
        update
            .filter(refund::Column::Id.eq(id.as_str()))
            .filter(refund::Column::Status.eq(RefundStatus::Pending.as_str()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// PENDING refunds whose check is due, oldest first.
    pub async fn due_pending(
        &self,
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<PendingRefund>, StoreError> {
        let rows = refund::Entity::find()
            .filter(refund::Column::Status.eq(RefundStatus::Pending.as_str()))
            .filter(
                refund::Column::NextCheckAt
                    .is_null()
                    .or(refund::Column::NextCheckAt.lte(now.as_micros())),
            )
            .order_by_asc(refund::Column::NextCheckAt)
            .order_by_asc(refund::Column::Id)
            .limit(limit)
            .all(self.reads())
            .await?;
        rows.into_iter()
            .map(|row| {
                let next_check_at = row.next_check_at;
                to_domain(row).map(|refund| PendingRefund {
                    refund,
                    next_check_at,
                })
            })
            .collect()
    }

    /// Takes a due refund for one worker: moves its next check (the lease) forward and counts an
    /// attempt, conditionally on nobody having done so since it was read. Across replicas exactly
    /// one claim of the same due check succeeds.
    pub async fn claim(
        &self,
        p: &PendingRefund,
        lease_until: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut update = refund::Entity::update_many()
            .col_expr(
                refund::Column::NextCheckAt,
                Expr::value(lease_until.as_micros()),
            )
            .col_expr(
                refund::Column::Attempts,
                Expr::col(refund::Column::Attempts).add(1),
            )
            .filter(refund::Column::Id.eq(p.refund.id.as_str()))
            .filter(refund::Column::Status.eq(RefundStatus::Pending.as_str()))
            .filter(
                refund::Column::Attempts.eq(i32::try_from(p.refund.attempts).unwrap_or(i32::MAX)),
            );
        update = match p.next_check_at {
            Some(at) => update.filter(refund::Column::NextCheckAt.eq(at)),
            None => update.filter(refund::Column::NextCheckAt.is_null()),
        };
        Ok(update.exec(&self.db).await?.rows_affected == 1)
    }

    /// The refund `id` with its lease, if it is PENDING.
    pub async fn pending_refund(&self, id: &RefundId) -> Result<Option<PendingRefund>, StoreError> {
        refund::Entity::find_by_id(id.as_str().to_owned())
            .filter(refund::Column::Status.eq(RefundStatus::Pending.as_str()))
            .one(self.reads())
            .await?
            .map(|row| {
                let next_check_at = row.next_check_at;
                to_domain(row).map(|refund| PendingRefund {
                    refund,
                    next_check_at,
                })
            })
            .transpose()
    }

    pub async fn get_refund(
        &self,
        account: &AccountId,
        id: &RefundId,
    ) -> Result<Option<Refund>, StoreError> {
        refund::Entity::find_by_id(id.as_str().to_owned())
            .filter(refund::Column::AccountId.eq(account.as_str()))
            .one(self.reads())
            .await?
            .map(to_domain)
            .transpose()
    }

    /// The first refund `account` made with idempotency key `key` at or after `since`, whether
    /// or not the key has expired since: how a bulk job finds the refund it made.
    pub async fn refund_by_key(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        since: Timestamp,
    ) -> Result<Option<Refund>, StoreError> {
        refund::Entity::find()
            .filter(refund::Column::AccountId.eq(account.as_str()))
            .filter(refund::Column::IdempotencyKey.eq(key.as_str()))
            .filter(refund::Column::CreatedAt.gte(since.as_micros()))
            .order_by_asc(refund::Column::CreatedAt)
            .order_by_asc(refund::Column::Id)
            .one(self.reads())
            .await?
            .map(to_domain)
            .transpose()
    }

    async fn get_refund_by_id(&self, id: &str) -> Result<Option<Refund>, StoreError> {
        refund::Entity::find_by_id(id.to_owned())
            .one(self.reads())
            .await?
            .map(to_domain)
            .transpose()
    }

    /// Newest first. Ordered by id, which is time-ordered and unique, so a keyset cursor neither
    /// skips nor repeats rows while new refunds are inserted (they sort before the cursor).
    pub async fn list_refunds(
        &self,
        account: &AccountId,
        f: &ListFilter,
        limit: u64,
    ) -> Result<Vec<Refund>, StoreError> {
        let mut q = refund::Entity::find().filter(refund::Column::AccountId.eq(account.as_str()));
        if let Some(status) = f.status {
            q = q.filter(refund::Column::Status.eq(status.as_str()));
        }
        if let Some(p) = &f.payment {
            q = q.filter(refund::Column::PaymentId.eq(p.as_str()));
        }
        if let Some(p) = &f.provider {
            q = q.filter(refund::Column::Provider.eq(p.as_str()));
        }
        if let Some(t) = f.created_from {
            q = q.filter(refund::Column::CreatedAt.gte(t.as_micros()));
        }
        if let Some(t) = f.created_before {
            q = q.filter(refund::Column::CreatedAt.lt(t.as_micros()));
        }
        if let Some(id) = &f.before_id {
            q = q.filter(refund::Column::Id.lt(id.as_str()));
        }
        q.order_by_desc(refund::Column::Id)
            .limit(limit)
            .all(self.reads())
            .await?
            .into_iter()
            .map(to_domain)
            .collect()
    }

    /// The payment's balance as the store holds it, (captured, reserved), if `account` owns it:
    /// for operators, and for the property test of the reservation (`tests/api/money.rs`).
    pub async fn payment_balance(
        &self,
        account: &AccountId,
        provider: &ProviderName,
        payment: &PaymentRef,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(
            payment::Entity::find_by_id((
                provider.as_str().to_owned(),
                payment.as_str().to_owned(),
            ))
            .one(self.reads())
            .await?
            .filter(|p| p.account_id == account.as_str())
            .map(|p| (p.captured_amount, p.reserved_amount)),
        )
    }

    /// Deletes idempotency keys past their expiry. Returns how many.
    pub async fn purge_expired_idempotency_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        Ok(idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::ExpiresAt.lte(now.as_micros()))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}

async fn begin_in(
    txn: &DatabaseTransaction,
    b: &BeginRefund<'_>,
) -> Result<BeginOutcome, StoreError> {
    let account = b.account.as_str();
    let r = b.request;
    let now = b.now.as_micros();

    // 1. Claim the idempotency key first. A concurrent request with the same key blocks here (on
    //    PostgreSQL, until this transaction ends) and then sees our refund.
    if let Some(key) = &r.idempotency_key {
        match claim_key(txn, b, key).await? {
            KeyClaim::Claimed => {}
            KeyClaim::Replayed(original) => return Ok(BeginOutcome::Replayed(*original)),
            KeyClaim::Reused => return Ok(BeginOutcome::KeyReused),
        }
    }

    // 2-3. Reserve the amount with one conditional write on the payment's balance row, creating
    //      the row (captured amount from the provider's pre-flight) on the payment's first refund.
    let amount = match reserve(txn, b).await? {
        Reservation::Reserved(amount) => amount,
        Reservation::OverRefund { remaining } => return Ok(BeginOutcome::OverRefund { remaining }),
        Reservation::NothingLeft => return Ok(BeginOutcome::AlreadyRefunded),
        Reservation::NotOwned => return Ok(BeginOutcome::PaymentNotOwned),
    };

    // The connection it goes through must still be live when the refund is stored: the write
    //    locks its row (PostgreSQL), so a concurrent delete either happens first (and this
    //    refund is refused) or waits and then counts this refund as unsettled.
    if let Some(id) = b.route.connection() {
        let live = connection::Entity::update_many()
            .col_expr(
                connection::Column::RotatedAt,
                Expr::col(connection::Column::RotatedAt),
            )
            .filter(connection::Column::Id.eq(id.as_str()))
            .filter(connection::Column::DeletedAt.is_null())
            .exec(txn)
            .await?
            .rows_affected;
        if live == 0 {
            return Ok(BeginOutcome::ConnectionDeleted);
        }
    }

    // 4. The refund itself, PENDING (or REQUIRES_APPROVAL above the account's threshold), with
    //    the key it will be sent to the provider with (its id). The threshold is read here, in
    //    the transaction, so that a lowered threshold applies to the very next refund. It is
    //    decided on the reserved amount, so "refund the rest" is covered too.
    let threshold =
        approval_threshold::Entity::find_by_id((account.to_owned(), r.currency.code().to_owned()))
            .one(txn)
            .await?
            .map(|row| row.amount);
    let status = match threshold {
        Some(threshold) if amount > threshold => RefundStatus::RequiresApproval,
        Some(_) | None => RefundStatus::Pending,
    };
    let model = refund::ActiveModel {
        id: Set(b.id.as_str().to_owned()),
        account_id: Set(account.to_owned()),
        payment_id: Set(r.payment.as_str().to_owned()),
        provider: Set(r.provider.as_str().to_owned()),
        provider_refund_id: Set(None),
        amount: Set(amount),
        currency: Set(r.currency.code().to_owned()),
        status: Set(status.as_str().to_owned()),
        reason: Set(r.reason.as_str().to_owned()),
        reason_detail: Set(r.reason_detail.clone()),
        metadata: Set(
            serde_json::to_string(&r.metadata).map_err(|e| StoreError::Corrupt {
                table: "refunds",
                detail: format!("metadata does not serialize: {e}"),
            })?,
        ),
        failure_code: Set(None),
        failure_reason: Set(None),
        idempotency_key: Set(r.idempotency_key.as_ref().map(|k| k.as_str().to_owned())),
        attempts: Set(i32::from(status == RefundStatus::Pending)),
        // Waiting for approval is not the reconciler's business.
        next_check_at: Set((status == RefundStatus::Pending).then(|| b.lease_until.as_micros())),
        created_by_key: Set(b.created_by.map(|k| k.as_str().to_owned())),
        approved_by_key: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        connection_id: Set(connection_column(b.route)),
    };
    let row = refund::Entity::insert(model)
        .exec_with_returning(txn)
        .await?;
    insert_audit(
        txn,
        AuditEntry {
            account: &row.account_id,
            actor_key: b.created_by,
            source: b.source,
            action: "refund.create",
            resource_id: &row.id,
            request_id: b.request_id,
            outcome: status.as_str(),
            detail: format!(
                "{} {} of payment {} at {}",
                row.amount, row.currency, row.payment_id, row.provider
            ),
            now,
        },
    )
    .await?;
    let refund = to_domain(row)?;
    let mut events = vec![NewEvent::refund(EventType::RefundCreated, &refund)];
    if status == RefundStatus::RequiresApproval {
        events.push(NewEvent::refund(EventType::RefundRequiresApproval, &refund));
    }
    // Last: it takes the account's event sequence, held until commit.
    append_events(txn, &refund.account, &events, now).await?;
    Ok(BeginOutcome::Created(refund))
}

enum KeyClaim {
    /// The key is ours now (new, or taken over after it expired).
    Claimed,
    /// The key is in use, for the same request: its refund.
    Replayed(Box<Refund>),
    /// The key is in use for another request.
    Reused,
}

/// Claims an idempotency key for `b`, or reports the refund that holds it. An expired key is
/// taken over with a conditional update; a request that loses that race (on PostgreSQL it
/// waits for the winner's transaction) reads the key again and finds the winner's refund.
async fn claim_key(
    txn: &DatabaseTransaction,
    b: &BeginRefund<'_>,
    key: &IdempotencyKey,
) -> Result<KeyClaim, StoreError> {
    let account = b.account.as_str();
    let now = b.now.as_micros();
    // Each round either decides or saw the key change under it; a handful is plenty.
    for _ in 0..8 {
        let claimed = insert_ignoring_conflict(
            txn,
            idempotency_key::Entity::insert(idempotency_key::ActiveModel {
                account_id: Set(account.to_owned()),
                key: Set(key.as_str().to_owned()),
                fingerprint: Set(b.fingerprint.to_owned()),
                refund_id: Set(b.id.as_str().to_owned()),
                created_at: Set(now),
                expires_at: Set(b.idempotency_expires_at.as_micros()),
            })
            .on_conflict_do_nothing_on([
                idempotency_key::Column::AccountId,
                idempotency_key::Column::Key,
            ]),
        )
        .await?;
        if claimed {
            return Ok(KeyClaim::Claimed);
        }
        let existing =
            idempotency_key::Entity::find_by_id((account.to_owned(), key.as_str().to_owned()))
                .one(txn)
                .await?;
        match existing {
            Some(row) if row.expires_at > now => {
                if row.fingerprint != b.fingerprint {
                    return Ok(KeyClaim::Reused);
                }
                let original = refund::Entity::find_by_id(row.refund_id.clone())
                    .one(txn)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt {
                        table: "idempotency_keys",
                        detail: format!("key points at missing refund {}", row.refund_id),
                    })?;
                return Ok(KeyClaim::Replayed(Box::new(to_domain(original)?)));
            }
            // Expired: the key is free again. Take it over, conditionally, so only one
            // concurrent request does; the others go round again and find its refund.
            Some(row) => {
                let taken = idempotency_key::Entity::update_many()
                    .col_expr(
                        idempotency_key::Column::Fingerprint,
                        Expr::value(b.fingerprint),
                    )
                    .col_expr(
                        idempotency_key::Column::RefundId,
                        Expr::value(b.id.as_str()),
                    )
                    .col_expr(idempotency_key::Column::CreatedAt, Expr::value(now))
                    .col_expr(
                        idempotency_key::Column::ExpiresAt,
                        Expr::value(b.idempotency_expires_at.as_micros()),
                    )
                    .filter(idempotency_key::Column::AccountId.eq(account))
                    .filter(idempotency_key::Column::Key.eq(key.as_str()))
                    .filter(idempotency_key::Column::ExpiresAt.eq(row.expires_at))
                    .exec(txn)
                    .await?
                    .rows_affected;
                if taken == 1 {
                    return Ok(KeyClaim::Claimed);
                }
            }
            // Purged meanwhile: insert again.
            None => {}
        }
    }
    Err(StoreError::Corrupt {
        table: "idempotency_keys",
        detail: format!("key {} kept changing while being claimed", key.as_str()),
    })
}

enum Reservation {
    Reserved(i64),
    OverRefund {
        remaining: i64,
    },
    NothingLeft,
    /// The payment's balance row belongs to another account or route.
    NotOwned,
}

/// Reserves the refund's amount against the payment's balance: one row per real payment
/// (provider and payment id), whichever account asks, so accounts cannot together exceed the
/// capture. The account that creates the row owns the payment; every write is conditional on
/// being that account, so another account's request changes nothing and is told the payment
/// does not exist.
///
/// An explicit amount is reserved when the payment's balance row is created (its first refund;
/// a concurrent first refund loses the insert race) or by one conditional `UPDATE`
/// (`reserved + amount <= captured`). "The whole remainder" is a compare-and-set on the reserved
/// amount read, retried if another refund got there first. Either way no write depends on a
/// value read earlier without re-checking it.
async fn reserve(
    txn: &DatabaseTransaction,
    b: &BeginRefund<'_>,
) -> Result<Reservation, StoreError> {
    let balance = Balance { txn, b };
    for _ in 0..16 {
        let step = match b.request.amount {
            Some(amount) => balance.reserve_amount(amount.minor_units()).await?,
            None => balance.reserve_rest().await?,
        };
        if let Step::Done(reservation) = step {
            return Ok(reservation);
        }
    }
    Err(StoreError::Corrupt {
        table: "payments",
        detail: "balance kept changing while reserving".into(),
    })
}

/// What one try at a reservation came to.
enum Step {
    Done(Reservation),
    /// The row changed under us (another refund, or a take-over): try again.
    Again,
}

/// One payment's balance row, as a refund being begun sees it.
struct Balance<'a> {
    txn: &'a DatabaseTransaction,
    b: &'a BeginRefund<'a>,
}

impl Balance<'_> {
    /// `amount` when it fits: the payment's first refund creates the row with it reserved;
    /// later ones reserve with one conditional UPDATE.
    async fn reserve_amount(&self, amount: i64) -> Result<Step, StoreError> {
        let b = self.b;
        if amount <= Ord::min(b.captured, b.provider_remaining)
            && insert_ignoring_conflict(self.txn, self.first_row(amount)).await?
        {
            return Ok(Step::Done(Reservation::Reserved(amount)));
        }
        if amount <= b.provider_remaining {
            let reserved = self
                .update()
                .col_expr(
                    payment::Column::ReservedAmount,
                    Expr::col(payment::Column::ReservedAmount).add(amount),
                )
                .filter(
                    Expr::col(payment::Column::ReservedAmount)
                        .add(amount)
                        .lte(Expr::col(payment::Column::CapturedAmount)),
                )
                .exec(self.txn)
                .await?
                .rows_affected;
            if reserved == 1 {
                return Ok(Step::Done(Reservation::Reserved(amount)));
            }
        }
        let row = self.row().await?;
        if let Some(step) = self.not_ours(row.as_ref()).await? {
            return Ok(step);
        }
        let remaining = self.remaining_of(row.as_ref());
        Ok(Step::Done(if remaining <= 0 {
            Reservation::NothingLeft
        } else {
            Reservation::OverRefund { remaining }
        }))
    }

    /// Whatever is left: a compare-and-set on the reserved amount read.
    async fn reserve_rest(&self) -> Result<Step, StoreError> {
        let row = self.row().await?;
        if let Some(step) = self.not_ours(row.as_ref()).await? {
            return Ok(step);
        }
        let remaining = self.remaining_of(row.as_ref());
        if remaining <= 0 {
            return Ok(Step::Done(Reservation::NothingLeft));
        }
        let taken = match row {
            None => insert_ignoring_conflict(self.txn, self.first_row(remaining)).await?,
            Some(row) => {
                let Some(reserved) = row.reserved_amount.checked_add(remaining) else {
                    return Err(StoreError::Corrupt {
                        table: "payments",
                        detail: format!(
                            "reserved amount of {} overflows",
                            self.b.request.payment.as_str()
                        ),
                    });
                };
                self.update()
                    .col_expr(payment::Column::ReservedAmount, Expr::value(reserved))
                    .filter(payment::Column::ReservedAmount.eq(row.reserved_amount))
                    .exec(self.txn)
                    .await?
                    .rows_affected
                    == 1
            }
        };
        Ok(if taken {
            Step::Done(Reservation::Reserved(remaining))
        } else {
            Step::Again
        })
    }

    /// A payment belongs to the account, and the route, that refunded it first: through other
    /// credentials it is not there to see. While none of its refunds holds money (all failed or
    /// were canceled: nothing reserved), it belongs to nobody, and this refund takes it over —
    /// the row as if new, its captured amount from this pre-flight — in its transaction, and
    /// tries again; otherwise one refund refused at the provider (say, one a tenant sent with
    /// its own credentials for a payment not its own) would keep the payment from its owner.
    /// `None`: the row, if any, is ours.
    async fn not_ours(&self, row: Option<&payment::Model>) -> Result<Option<Step>, StoreError> {
        let Some(row) = row else {
            return Ok(None);
        };
        let (b, r) = (self.b, self.b.request);
        let route = connection_column(b.route);
        if row.account_id == b.account.as_str() && row.connection_id == route {
            return Ok(None);
        }
        if row.reserved_amount != 0 {
            return Ok(Some(Step::Done(Reservation::NotOwned)));
        }
        payment::Entity::update_many()
            .col_expr(payment::Column::AccountId, Expr::value(b.account.as_str()))
            .col_expr(payment::Column::ConnectionId, Expr::value(route))
            .col_expr(payment::Column::CapturedAmount, Expr::value(b.captured))
            .col_expr(payment::Column::Currency, Expr::value(r.currency.code()))
            .col_expr(payment::Column::UpdatedAt, Expr::value(b.now.as_micros()))
            .filter(payment::Column::Provider.eq(r.provider.as_str()))
            .filter(payment::Column::PaymentId.eq(r.payment.as_str()))
            .filter(payment::Column::AccountId.eq(row.account_id.as_str()))
            .filter(match &row.connection_id {
                Some(id) => payment::Column::ConnectionId.eq(id.as_str()),
                None => payment::Column::ConnectionId.is_null(),
            })
            .filter(payment::Column::ReservedAmount.eq(0))
            .exec(self.txn)
            .await?;
        Ok(Some(Step::Again))
    }

    /// Ours and the provider's view; the provider's also counts refunds made elsewhere.
    fn remaining_of(&self, row: Option<&payment::Model>) -> i64 {
        let ours = row.map_or(self.b.captured, |p| p.captured_amount - p.reserved_amount);
        Ord::min(ours, self.b.provider_remaining)
    }

    async fn row(&self) -> Result<Option<payment::Model>, StoreError> {
        let r = self.b.request;
        Ok(payment::Entity::find_by_id((
            r.provider.as_str().to_owned(),
            r.payment.as_str().to_owned(),
        ))
        .one(self.txn)
        .await?)
    }

    /// The payment's first balance row, owned by this account and route.
    fn first_row(&self, reserved: i64) -> sea_orm::TryInsert<payment::ActiveModel> {
        let (b, r) = (self.b, self.b.request);
        let now = b.now.as_micros();
        payment::Entity::insert(payment::ActiveModel {
            account_id: Set(b.account.as_str().to_owned()),
            provider: Set(r.provider.as_str().to_owned()),
            payment_id: Set(r.payment.as_str().to_owned()),
            currency: Set(r.currency.code().to_owned()),
            captured_amount: Set(b.captured),
            reserved_amount: Set(reserved),
            created_at: Set(now),
            updated_at: Set(now),
            connection_id: Set(connection_column(b.route)),
        })
        .on_conflict_do_nothing_on([payment::Column::Provider, payment::Column::PaymentId])
    }

    /// An UPDATE of the row if it is this route's.
    fn update_where_route(&self) -> sea_orm::UpdateMany<payment::Entity> {
        let (b, r) = (self.b, self.b.request);
        payment::Entity::update_many()
            .col_expr(payment::Column::UpdatedAt, Expr::value(b.now.as_micros()))
            .filter(payment::Column::Provider.eq(r.provider.as_str()))
            .filter(payment::Column::PaymentId.eq(r.payment.as_str()))
            .filter(match b.route.connection() {
                Some(id) => payment::Column::ConnectionId.eq(id.as_str()),
                None => payment::Column::ConnectionId.is_null(),
            })
    }

    /// An UPDATE of the row if it is this account's and this route's: every write to a balance.
    fn update(&self) -> sea_orm::UpdateMany<payment::Entity> {
        self.update_where_route()
            .filter(payment::Column::AccountId.eq(self.b.account.as_str()))
    }
}

async fn insert_ignoring_conflict<A>(
    txn: &DatabaseTransaction,
    insert: sea_orm::TryInsert<A>,
) -> Result<bool, StoreError>
where
    A: sea_orm::ActiveModelTrait,
{
    Ok(match insert.exec_without_returning(txn).await? {
        TryInsertResult::Inserted(n) => n > 0,
        TryInsertResult::Conflicted | TryInsertResult::Empty => false,
    })
}

/// A route as the `connection_id` columns hold it: NULL for the platform's.
pub(super) fn connection_column(route: &Route) -> Option<String> {
    route.connection().map(|id| id.as_str().to_owned())
}

pub(super) fn to_domain(row: refund::Model) -> Result<Refund, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "refunds",
        detail: format!("{}: {detail}", row.id),
    };
    let amount = Amount::new(row.amount).map_err(|e| corrupt(e.to_string()))?;
    let currency = Currency::parse(&row.currency).map_err(|e| corrupt(e.to_string()))?;
    let status = RefundStatus::parse(&row.status)
        .ok_or_else(|| corrupt(format!("status {}", row.status)))?;
    let reason = RefundReason::parse(&row.reason)
        .ok_or_else(|| corrupt(format!("reason {}", row.reason)))?;
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(&row.metadata).map_err(|e| corrupt(format!("metadata: {e}")))?;
    let failure = match (row.failure_code, row.failure_reason) {
        (None, None) => None,
        (code, reason) => Some(Failure {
            code: code.unwrap_or_default(),
            reason: reason.unwrap_or_default(),
        }),
    };
    Ok(Refund {
        id: RefundId::from_trusted(row.id),
        account: AccountId::from_trusted(row.account_id),
        payment: PaymentRef::from_trusted(row.payment_id),
        provider: ProviderName::from_trusted(row.provider),
        route: Route::from_connection(row.connection_id.map(ConnectionId::from_trusted)),
        provider_refund_id: row.provider_refund_id,
        amount,
        currency,
        status,
        reason,
        reason_detail: row.reason_detail,
        metadata,
        failure,
        idempotency_key: row.idempotency_key.map(IdempotencyKey::from_trusted),
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        created_by: row.created_by_key.map(ApiKeyId::from_trusted),
        approved_by: row.approved_by_key.map(ApiKeyId::from_trusted),
        created_at: Timestamp::from_micros(row.created_at),
        updated_at: Timestamp::from_micros(row.updated_at),
    })
}
