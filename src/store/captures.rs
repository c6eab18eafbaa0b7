//! Captured amounts that providers notify, for the providers that cannot be asked about a
//! payment (`Capabilities::payment_lookup` false): the payments ledger is then where the
//! pre-flight reads what there is to refund.
//!
//! A notified capture creates the payment's balance row before any refund, without an owner
//! ([`UNOWNED`]); the first refund's reservation takes it over in its own transaction
//! (`refunds::reserve`). A later capture notification updates the captured amount, never below
//! what is already reserved, so the CHECK `reserved_amount <= captured_amount` always holds and
//! no notification can release money that refunds hold.

use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait as _, QueryFilter, TransactionTrait,
    TryInsertResult,
};

use super::entities::{payment, refund, webhook_event};
use super::refunds::connection_column;
use super::{Store, StoreError};
use crate::domain::{
    Currency, InboundEvent, NotifiedCapture, PaymentRef, ProviderName, RefundStatus, Route,
    Timestamp, WebhookOutcome,
};

/// The `account_id` of a balance row that a capture notification created and no refund has
/// taken over yet. Not an account id: those are never empty.
pub(super) const UNOWNED: &str = "";

impl Store {
    /// Records a capture event once per (provider, event id) and, the first time, sets the
    /// payment's captured amount, in one transaction. Returns `None` the first time, or the
    /// outcome of the earlier delivery (nothing is written again: an old redelivery cannot
    /// overwrite a newer capture).
    pub async fn record_capture(
        &self,
        event: &InboundEvent,
        capture: &NotifiedCapture,
        now: Timestamp,
    ) -> Result<Option<WebhookOutcome>, StoreError> {
        let now = now.as_micros();
        let txn = self.db.begin().await?;
        let inserted = webhook_event::Entity::insert(webhook_event::ActiveModel {
            provider: Set(event.provider.as_str().to_owned()),
            event_id: Set(event.event_id.clone()),
            event_type: Set(event.kind.clone()),
            outcome: Set(WebhookOutcome::Applied.as_str().to_owned()),
            payment_id: Set(Some(capture.payment.as_str().to_owned())),
            provider_refund_id: Set(None),
            refund_id: Set(None),
            account_id: Set(None),
            refund_status: Set(None),
            refund_amount: Set(Some(capture.amount)),
            failure_code: Set(None),
            failure_reason: Set(None),
            received_at: Set(now),
            processed_at: Set(Some(now)),
            connection_id: Set(connection_column(&event.route)),
        })
        .on_conflict_do_nothing_on([
            webhook_event::Column::Provider,
            webhook_event::Column::EventId,
        ])
        .exec_without_returning(&txn)
        .await?;
        if !matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            txn.rollback().await?;
            return self
                .record_webhook(event, Timestamp::from_micros(now))
                .await;
        }
        let route = connection_column(&event.route);
        let created = payment::Entity::insert(payment::ActiveModel {
            provider: Set(event.provider.as_str().to_owned()),
            payment_id: Set(capture.payment.as_str().to_owned()),
            account_id: Set(UNOWNED.to_owned()),
            currency: Set(capture.currency.code().to_owned()),
            captured_amount: Set(capture.amount),
            reserved_amount: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
            connection_id: Set(route.clone()),
        })
        .on_conflict_do_nothing_on([payment::Column::Provider, payment::Column::PaymentId])
        .exec_without_returning(&txn)
        .await?;
        if !matches!(created, TryInsertResult::Inserted(n) if n > 0) {
            // Captured never drops below reserved: refunds already hold that money. And only
            // the route that owns the payment speaks for it: a connection's signing secret
            // cannot raise the capture of a payment refunded through other credentials.
            payment::Entity::update_many()
                .col_expr(
                    payment::Column::CapturedAmount,
                    Expr::Case(Box::new(
                        Expr::case(
                            Expr::col(payment::Column::ReservedAmount).lt(capture.amount),
                            capture.amount,
                        )
                        .finally(Expr::col(payment::Column::ReservedAmount)),
                    )),
                )
                .col_expr(payment::Column::UpdatedAt, Expr::value(now))
                .filter(payment::Column::Provider.eq(event.provider.as_str()))
                .filter(payment::Column::PaymentId.eq(capture.payment.as_str()))
                .filter(match &route {
                    Some(id) => payment::Column::ConnectionId.eq(id.as_str()),
                    None => payment::Column::ConnectionId.is_null(),
                })
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(None)
    }

    /// The captured amount and currency the ledger holds for a payment, if any: for a provider
    /// that cannot be asked, what its capture notifications said (the pre-flight's answer).
    /// Only the route the capture was notified through can see it.
    pub async fn notified_capture(
        &self,
        provider: &ProviderName,
        route: &Route,
        payment: &PaymentRef,
    ) -> Result<Option<(i64, Currency)>, StoreError> {
        let Some(row) = payment::Entity::find_by_id((
            provider.as_str().to_owned(),
            payment.as_str().to_owned(),
        ))
        .one(&self.db)
        .await?
        .filter(|row| row.connection_id == connection_column(route)) else {
            return Ok(None);
        };
        let currency = Currency::parse(&row.currency).map_err(|e| StoreError::Corrupt {
            table: "payments",
            detail: format!("{}: {e}", row.payment_id),
        })?;
        Ok(Some((row.captured_amount, currency)))
    }

    /// How many of `provider`'s refunds have been PENDING since before `created_before`.
    pub async fn pending_since_before(
        &self,
        provider: &ProviderName,
        created_before: Timestamp,
    ) -> Result<u64, StoreError> {
        Ok(refund::Entity::find()
            .filter(refund::Column::Provider.eq(provider.as_str()))
            .filter(refund::Column::Status.eq(RefundStatus::Pending.as_str()))
            .filter(refund::Column::CreatedAt.lt(created_before.as_micros()))
            .count(&self.db)
            .await?)
    }
}
