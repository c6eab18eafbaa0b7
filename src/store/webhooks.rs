//! Inbound webhook events: recorded once per (provider, event id), then marked with what became of
//! them. Events that match no refund yet stay UNMATCHED and are offered again once a refund with
//! their provider refund id (or our refund id) exists.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TryInsertResult,
};

use super::entities::{refund, webhook_event};
use super::refunds::{connection_column, to_domain};
use super::{Store, StoreError};
use crate::domain::{
    ConnectionId, Failure, InboundEvent, PaymentRef, ProviderName, Refund, RefundId, RefundReport,
    RefundStatus, Route, Timestamp, WebhookOutcome,
};

/// An event left RECEIVED this long is taken to be abandoned (its process died) and is processed
/// again by the reconciler.
const ABANDONED_AFTER_MICROS: i64 = 60 * 1_000_000;

impl Store {
    /// Records an event the first time it arrives. Returns `None` then, or the outcome of the
    /// earlier delivery when it was seen before.
    pub async fn record_webhook(
        &self,
        e: &InboundEvent,
        now: Timestamp,
    ) -> Result<Option<WebhookOutcome>, StoreError> {
        let report = e.report.as_ref();
        let inserted = webhook_event::Entity::insert(webhook_event::ActiveModel {
            provider: Set(e.provider.as_str().to_owned()),
            event_id: Set(e.event_id.clone()),
            event_type: Set(e.kind.clone()),
            outcome: Set(WebhookOutcome::Received.as_str().to_owned()),
            payment_id: Set(e.payment.as_ref().map(|p| p.as_str().to_owned())),
            provider_refund_id: Set(report.map(|r| r.provider_refund_id.clone())),
            refund_id: Set(report.and_then(|r| r.refund_id.clone())),
            account_id: Set(None),
            refund_status: Set(report.map(|r| r.status.as_str().to_owned())),
            refund_amount: Set(report.map(|r| r.amount)),
            failure_code: Set(report.and_then(|r| r.failure.as_ref().map(|f| f.code.clone()))),
            failure_reason: Set(report.and_then(|r| r.failure.as_ref().map(|f| f.reason.clone()))),
            received_at: Set(now.as_micros()),
            processed_at: Set(None),
            connection_id: Set(connection_column(&e.route)),
        })
        .on_conflict_do_nothing_on([
            webhook_event::Column::Provider,
            webhook_event::Column::EventId,
        ])
        .exec_without_returning(&self.db)
        .await?;
        if matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            return Ok(None);
        }
        let row =
            webhook_event::Entity::find_by_id((e.provider.as_str().to_owned(), e.event_id.clone()))
                .one(self.reads())
                .await?
                .ok_or_else(|| StoreError::Corrupt {
                    table: "webhook_events",
                    detail: format!("event {} conflicted but cannot be read", e.event_id),
                })?;
        outcome(&row).map(Some)
    }

    /// Marks what became of an event, and which refund it was about.
    pub async fn set_webhook_outcome(
        &self,
        provider: &ProviderName,
        event_id: &str,
        outcome: WebhookOutcome,
        refund: Option<&Refund>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut update = webhook_event::Entity::update_many()
            .col_expr(
                webhook_event::Column::Outcome,
                Expr::value(outcome.as_str()),
            )
            .col_expr(
                webhook_event::Column::ProcessedAt,
                Expr::value(now.as_micros()),
            );
        if let Some(refund) = refund {
            update = update
                .col_expr(
                    webhook_event::Column::RefundId,
                    Expr::value(refund.id.as_str()),
                )
                .col_expr(
                    webhook_event::Column::AccountId,
                    Expr::value(refund.account.as_str()),
                );
        }
        update
            .filter(webhook_event::Column::Provider.eq(provider.as_str()))
            .filter(webhook_event::Column::EventId.eq(event_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Our refund a provider's report is about: by our id when the provider carried it back (and
    /// the refund is at that provider), else by the provider's refund id. Only refunds of the
    /// event's route are candidates: a connection's signing secret vouches for its own refunds,
    /// never for another account's.
    pub async fn refund_for_report(
        &self,
        provider: &ProviderName,
        route: &Route,
        report: &RefundReport,
    ) -> Result<Option<Refund>, StoreError> {
        if let Some(id) = report.refund_id.as_deref().and_then(RefundId::parse) {
            let row = refund::Entity::find_by_id(id.as_str().to_owned())
                .filter(refund::Column::Provider.eq(provider.as_str()))
                .filter(on_route(route))
                .one(self.reads())
                .await?;
            if let Some(row) = row {
                return to_domain(row).map(Some);
            }
        }
        refund::Entity::find()
            .filter(refund::Column::Provider.eq(provider.as_str()))
            .filter(on_route(route))
            .filter(refund::Column::ProviderRefundId.eq(report.provider_refund_id.as_str()))
            .one(self.reads())
            .await?
            .map(to_domain)
            .transpose()
    }

    /// Makes the PENDING refunds of a payment that the provider already knows (they have its
    /// refund id) due for a look-up now. Refunds still waiting for their first answer are left
    /// alone: their request owns them. Returns how many were scheduled.
    pub async fn nudge_pending(
        &self,
        provider: &ProviderName,
        route: &Route,
        payment: &PaymentRef,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let result = refund::Entity::update_many()
            .col_expr(refund::Column::NextCheckAt, Expr::value(now.as_micros()))
            .filter(refund::Column::Provider.eq(provider.as_str()))
            .filter(on_route(route))
            .filter(refund::Column::PaymentId.eq(payment.as_str()))
            .filter(refund::Column::Status.eq(RefundStatus::Pending.as_str()))
            .filter(refund::Column::ProviderRefundId.is_not_null())
            .filter(
                refund::Column::NextCheckAt
                    .is_null()
                    .or(refund::Column::NextCheckAt.gt(now.as_micros())),
            )
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Events worth processing again: UNMATCHED ones whose refund now exists, and RECEIVED ones
    /// whose processing was abandoned.
    pub async fn webhooks_to_retry(
        &self,
        now: Timestamp,
        limit: u64,
    ) -> Result<Vec<InboundEvent>, StoreError> {
        let matchable = Expr::cust(
            "EXISTS (SELECT 1 FROM refunds r WHERE r.provider = webhook_events.provider \
             AND (r.connection_id = webhook_events.connection_id \
             OR (r.connection_id IS NULL AND webhook_events.connection_id IS NULL)) \
             AND (r.provider_refund_id = webhook_events.provider_refund_id \
             OR r.id = webhook_events.refund_id))",
        );
        let unmatched = webhook_event::Column::Outcome
            .eq(WebhookOutcome::Unmatched.as_str())
            .and(matchable);
        let abandoned = webhook_event::Column::Outcome
            .eq(WebhookOutcome::Received.as_str())
            .and(webhook_event::Column::ReceivedAt.lt(now.as_micros() - ABANDONED_AFTER_MICROS));
        let rows = webhook_event::Entity::find()
            .filter(unmatched.or(abandoned))
            .order_by_asc(webhook_event::Column::ReceivedAt)
            .limit(limit)
            .all(self.reads())
            .await?;
        rows.into_iter().map(to_event).collect()
    }
}

/// Refunds that went through `route`.
fn on_route(route: &Route) -> sea_orm::sea_query::SimpleExpr {
    match route.connection() {
        Some(id) => refund::Column::ConnectionId.eq(id.as_str()),
        None => refund::Column::ConnectionId.is_null(),
    }
}

fn outcome(row: &webhook_event::Model) -> Result<WebhookOutcome, StoreError> {
    WebhookOutcome::parse(&row.outcome).ok_or_else(|| StoreError::Corrupt {
        table: "webhook_events",
        detail: format!("{}: outcome {}", row.event_id, row.outcome),
    })
}

fn to_event(row: webhook_event::Model) -> Result<InboundEvent, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "webhook_events",
        detail: format!("{}: {detail}", row.event_id),
    };
    let report = match (&row.provider_refund_id, &row.refund_status) {
        (Some(pid), Some(status)) => Some(RefundReport {
            provider_refund_id: pid.clone(),
            refund_id: row.refund_id.clone(),
            status: RefundStatus::parse(status)
                .ok_or_else(|| corrupt(format!("status {status}")))?,
            amount: row.refund_amount.unwrap_or_default(),
            failure: row.failure_code.clone().map(|code| Failure {
                code,
                reason: row.failure_reason.clone().unwrap_or_default(),
            }),
        }),
        _ => None,
    };
    Ok(InboundEvent {
        provider: ProviderName::from_trusted(row.provider),
        route: Route::from_connection(row.connection_id.map(ConnectionId::from_trusted)),
        event_id: row.event_id,
        kind: row.event_type,
        payment: row.payment_id.map(PaymentRef::from_trusted),
        report,
    })
}
