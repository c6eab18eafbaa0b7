//! Inbound provider webhooks: recorded once, matched to our refund, applied forward only.
//!
//! - A redelivered event (same provider and event id) that was already processed changes nothing.
//! - An event for a refund we cannot match yet is kept UNMATCHED; the reconciler applies it once
//!   the refund with that provider id exists. A PENDING refund is also looked up at its provider
//!   on its own schedule, so a lost event costs time, never correctness.
//! - Events never move a refund backwards: a terminal refund stays as it is, whatever arrives
//!   later or out of order, because status changes are conditional on the refund being PENDING.

use crate::domain::{Failure, PaymentRef, ProviderName, Route};
use tracing::Instrument as _;

use crate::domain::{
    InboundEvent, NotifiedCapture, Refund, RefundError, RefundReport, RefundStatus, Timestamp,
    WebhookOutcome,
};
use crate::providers::{EventSubject, ProviderRefundStatus, WebhookEvent};
use crate::store::Settlement;

use super::{RefundService, internal};

/// How many stored events one reconciler pass retries.
const RETRY_BATCH: u64 = 100;

/// What the service did with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookReceipt {
    pub outcome: WebhookOutcome,
    /// The same event was processed before; nothing was done this time.
    pub duplicate: bool,
}

impl RefundService {
    /// Records and applies a verified provider event.
    pub async fn receive_webhook(
        &self,
        provider: &ProviderName,
        route: &Route,
        event: WebhookEvent,
    ) -> Result<Vec<WebhookReceipt>, RefundError> {
        let capture = match &event.subject {
            EventSubject::Captured {
                payment,
                amount,
                currency,
            } => {
                if *amount < 0 {
                    return Err(RefundError::invalid(
                        "amount",
                        "the event's captured amount is negative",
                    ));
                }
                Some(NotifiedCapture {
                    payment: payment.clone(),
                    amount: *amount,
                    currency: *currency,
                })
            }
            EventSubject::Refunds(_) | EventSubject::Payment(_) | EventSubject::Ignored => None,
        };
        let inbound = inbound_events(provider, route, event);
        // Signed, but still checked against what the store can hold: a refusal, not a 500 that
        // the provider would redeliver forever.
        for e in &inbound {
            let report = e.report.as_ref();
            for (field, value, max) in [
                ("id", Some(e.event_id.as_str()), 255),
                ("type", Some(e.kind.as_str()), 64),
                ("payment", e.payment.as_ref().map(|p| p.as_str()), 255),
                (
                    "refund.id",
                    report.map(|r| r.provider_refund_id.as_str()),
                    255,
                ),
                (
                    "metadata.refund_id",
                    report.and_then(|r| r.refund_id.as_deref()),
                    64,
                ),
            ] {
                if value.is_some_and(|v| v.len() > max) {
                    return Err(RefundError::invalid(
                        field,
                        format!("the event's {field} is longer than {max} bytes"),
                    ));
                }
            }
        }
        let mut receipts = Vec::new();
        for inbound in inbound {
            let span = tracing::info_span!(
                "webhook",
                otel.kind = "server",
                provider = %inbound.provider,
                event_id = %inbound.event_id,
                event_type = %inbound.kind,
            );
            let receipt = match &capture {
                Some(capture) => {
                    self.receive_capture(inbound, capture)
                        .instrument(span)
                        .await?
                }
                None => self.receive_one(inbound).instrument(span).await?,
            };
            receipts.push(receipt);
        }
        Ok(receipts)
    }

    async fn receive_one(&self, event: InboundEvent) -> Result<WebhookReceipt, RefundError> {
        let now = Timestamp::now();
        match self
            .store()
            .record_webhook(&event, now)
            .await
            .map_err(internal)?
        {
            Some(earlier) if earlier.is_final() => {
                tracing::info!(provider = %event.provider, event_id = %event.event_id, outcome = earlier.as_str(), "duplicate webhook event ignored");
                return Ok(WebhookReceipt {
                    outcome: earlier,
                    duplicate: true,
                });
            }
            // New, or seen before without a final outcome: processing is idempotent.
            Some(_) | None => {}
        }
        let outcome = self.process(&event).await?;
        Ok(WebhookReceipt {
            outcome,
            duplicate: false,
        })
    }

    /// Records a payment's notified capture in the payments ledger, once per event.
    async fn receive_capture(
        &self,
        event: InboundEvent,
        capture: &NotifiedCapture,
    ) -> Result<WebhookReceipt, RefundError> {
        let earlier = self
            .store()
            .record_capture(&event, capture, Timestamp::now())
            .await
            .map_err(internal)?;
        match earlier {
            Some(outcome) => {
                tracing::info!(provider = %event.provider, event_id = %event.event_id, "duplicate capture event ignored");
                Ok(WebhookReceipt {
                    outcome,
                    duplicate: true,
                })
            }
            None => {
                tracing::info!(provider = %event.provider, event_id = %event.event_id, payment_id = capture.payment.as_str(), captured = capture.amount, currency = %capture.currency, "capture recorded in the payments ledger");
                Ok(WebhookReceipt {
                    outcome: WebhookOutcome::Applied,
                    duplicate: false,
                })
            }
        }
    }

    /// Applies a recorded event and records its outcome.
    async fn process(&self, event: &InboundEvent) -> Result<WebhookOutcome, RefundError> {
        let now = self.clock().now();
        let (outcome, refund) = match (&event.report, &event.payment) {
            (Some(report), _) => {
                match self
                    .store()
                    .refund_for_report(&event.provider, &event.route, report)
                    .await
                    .map_err(internal)?
                {
                    Some(refund) => {
                        let (outcome, refund) = self.apply_report(refund, report, event).await?;
                        (outcome, Some(refund))
                    }
                    None => {
                        tracing::info!(provider = %event.provider, event_id = %event.event_id, provider_refund_id = %report.provider_refund_id, "webhook for a refund we do not know (yet); kept for later");
                        (WebhookOutcome::Unmatched, None)
                    }
                }
            }
            (None, Some(payment)) => {
                let n = self
                    .store()
                    .nudge_pending(&event.provider, &event.route, payment, now)
                    .await
                    .map_err(internal)?;
                tracing::info!(provider = %event.provider, event_id = %event.event_id, payment_id = payment.as_str(), scheduled = n, "webhook about a payment: its pending refunds are looked up now");
                (WebhookOutcome::Nudged, None)
            }
            (None, None) => (WebhookOutcome::Ignored, None),
        };
        self.store()
            .set_webhook_outcome(
                &event.provider,
                &event.event_id,
                outcome,
                refund.as_ref(),
                Timestamp::now(),
            )
            .await
            .map_err(internal)?;
        Ok(outcome)
    }

    async fn apply_report(
        &self,
        refund: Refund,
        report: &RefundReport,
        event: &InboundEvent,
    ) -> Result<(WebhookOutcome, Refund), RefundError> {
        if let Some(known) = &refund.provider_refund_id
            && *known != report.provider_refund_id
        {
            tracing::warn!(refund_id = %refund.id, known = %known, reported = %report.provider_refund_id, event_id = %event.event_id, "webhook names another provider refund for this refund; ignored");
            return Ok((WebhookOutcome::Ignored, refund));
        }
        if refund.status != RefundStatus::Pending {
            if refund.status != report.status {
                tracing::info!(refund_id = %refund.id, status = refund.status.as_str(), reported = report.status.as_str(), event_id = %event.event_id, "webhook would move a settled refund; ignored");
            }
            return Ok((WebhookOutcome::Ignored, refund));
        }
        if report.amount != refund.amount.minor_units() {
            tracing::warn!(refund_id = %refund.id, ours = refund.amount.minor_units(), reported = report.amount, "the provider reports another amount for this refund");
        }
        match report.status {
            RefundStatus::Pending => {
                if refund.provider_refund_id.is_some() {
                    return Ok((WebhookOutcome::Ignored, refund));
                }
                let next = self
                    .clock()
                    .now()
                    .saturating_add(self.config().reconcile_delay);
                self.store()
                    .keep_pending(&refund.id, Some(&report.provider_refund_id), next)
                    .await
                    .map_err(internal)?;
                self.refund_changed();
                let refund = self.reread(refund).await?;
                Ok((WebhookOutcome::Applied, refund))
            }
            to @ (RefundStatus::Succeeded | RefundStatus::Failed | RefundStatus::Canceled) => {
                let settled = self
                    .settle(
                        refund,
                        Settlement {
                            from: RefundStatus::Pending,
                            to,
                            provider_refund_id: Some(report.provider_refund_id.clone()),
                            failure: report.failure.clone(),
                            source: "webhook",
                            approved_by: None,
                            lease_until: None,
                            actor: None,
                            request_id: super::context::request_id(),
                        },
                    )
                    .await?;
                let outcome = if settled.status == to {
                    WebhookOutcome::Applied
                } else {
                    WebhookOutcome::Ignored
                };
                Ok((outcome, settled))
            }
            RefundStatus::RequiresApproval => Ok((WebhookOutcome::Ignored, refund)),
        }
    }

    /// Processes stored events again: those whose refund now exists, and those whose processing
    /// was interrupted. Returns how many it processed.
    pub async fn retry_webhooks(&self) -> Result<usize, RefundError> {
        let events = self
            .store()
            .webhooks_to_retry(self.clock().now(), RETRY_BATCH)
            .await
            .map_err(internal)?;
        let n = events.len();
        for event in events {
            if let Err(e) = self.process(&event).await {
                tracing::error!(event_id = %event.event_id, error = ?anyhow::Error::new(e), "processing a stored webhook failed");
            }
        }
        Ok(n)
    }
}

/// One inbound event per refund the provider's event reports (a Stripe `charge.refunded` can carry
/// several: they are recorded as `<event id>#<n>`), or one about the payment. Events to an
/// account's connection are recorded as `<connection id>/<event id>`: one account's deliveries
/// can neither stand for nor shadow another's.
fn inbound_events(
    provider: &ProviderName,
    route: &Route,
    event: WebhookEvent,
) -> Vec<InboundEvent> {
    let base = |event_id: String, payment: Option<PaymentRef>, report| InboundEvent {
        provider: provider.clone(),
        route: route.clone(),
        event_id: match route {
            Route::Platform => event_id,
            Route::Connection(id) => format!("{id}/{event_id}"),
        },
        kind: event.kind.clone(),
        payment,
        report,
    };
    match event.subject {
        EventSubject::Ignored => Vec::new(),
        EventSubject::Payment(payment) | EventSubject::Captured { payment, .. } => {
            vec![base(event.id.clone(), Some(payment), None)]
        }
        EventSubject::Refunds(updates) => {
            let several = updates.len() > 1;
            updates
                .into_iter()
                .enumerate()
                .map(|(i, u)| {
                    let id = if several {
                        format!("{}#{i}", event.id)
                    } else {
                        event.id.clone()
                    };
                    let (status, failure) = match u.refund.status {
                        ProviderRefundStatus::Pending => (RefundStatus::Pending, None),
                        ProviderRefundStatus::Succeeded => (RefundStatus::Succeeded, None),
                        ProviderRefundStatus::Canceled => (RefundStatus::Canceled, None),
                        ProviderRefundStatus::Failed { code, reason } => {
                            (RefundStatus::Failed, Some(Failure { code, reason }))
                        }
                    };
                    let report = RefundReport {
                        provider_refund_id: u.refund.id,
                        refund_id: u.refund_id,
                        status,
                        amount: u.refund.amount,
                        failure,
                    };
                    base(id, u.payment, Some(report))
                })
                .collect()
        }
    }
}
