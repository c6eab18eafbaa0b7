//! Captured amounts that providers notify, for the providers that cannot be asked about a
//! payment (`Capabilities::payment_lookup` false): what the pre-flight reads instead.
//!
//! Notified captures are kept per route (`notified_captures`): a connection's notifications are
//! signed with its tenant's key, so they speak only for refunds through that connection and can
//! neither enable nor block another route's. The payment's balance row is made by its first
//! refund, as for any provider; a later capture notification through the same route updates its
//! captured amount, never below what is already reserved, so the CHECK `reserved_amount <=
//! captured_amount` always holds and no notification can release money that refunds hold.

use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait as _, QueryFilter, TransactionTrait,
    TryInsertResult,
};

use super::entities::{notified_capture, payment, refund, webhook_event};
use super::refunds::connection_column;
use super::{Store, StoreError};
use crate::domain::{
    Currency, InboundEvent, NotifiedCapture, PaymentRef, ProviderName, RefundStatus, Route,
    Timestamp, WebhookOutcome,
};

/// `notified_captures.route` of a route.
fn route_key(route: &Route) -> String {
    route
        .connection()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

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
        notified_capture::Entity::insert(notified_capture::ActiveModel {
            provider: Set(event.provider.as_str().to_owned()),
            route: Set(route_key(&event.route)),
            payment_id: Set(capture.payment.as_str().to_owned()),
            currency: Set(capture.currency.code().to_owned()),
            captured_amount: Set(capture.amount),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([
                notified_capture::Column::Provider,
                notified_capture::Column::Route,
                notified_capture::Column::PaymentId,
            ])
            .update_columns([
                notified_capture::Column::Currency,
                notified_capture::Column::CapturedAmount,
                notified_capture::Column::UpdatedAt,
            ])
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        // A payment already refunded through this route: its balance follows the capture, never
        // below what refunds hold.
        let route = connection_column(&event.route);
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
        let Some(row) = notified_capture::Entity::find_by_id((
            provider.as_str().to_owned(),
            route_key(route),
            payment.as_str().to_owned(),
        ))
        .one(self.reads())
        .await?
        else {
            return Ok(None);
        };
        let currency = Currency::parse(&row.currency).map_err(|e| StoreError::Corrupt {
            table: "notified_captures",
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
            .count(self.reads())
            .await?)
    }
}
