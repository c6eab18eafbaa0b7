//! Signed webhooks from the sandbox, as a PSP sends them: when a refund that was `pending`
//! settles, the sandbox POSTs a Stripe-shaped `refund.updated` event to the configured URL, signed
//! like Stripe's (`Sandbox-Signature: t=…,v1=…`, see [`crate::providers::signature`]). Deliveries
//! that fail are retried with exponential back-off; the event id is stable
//! (`evt_sbx_<refund id>_<status>`), so a redelivery is recognisable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use serde_json::json;

use super::{Refund, RefundStatus, unix_now};
use crate::providers::signature;

/// Where the sandbox sends its webhooks, and the secret it signs them with.
#[derive(Clone)]
pub struct WebhookTarget {
    /// e.g. `http://127.0.0.1:8080/webhooks/sandbox`.
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Delivers events to one target. Shared by the delivery tasks.
pub(super) struct Sender {
    target: WebhookTarget,
    http: reqwest::Client,
    pub(super) sent: AtomicU64,
    pub(super) failed: AtomicU64,
}

impl Sender {
    pub(super) fn new(target: WebhookTarget) -> Arc<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            target,
            http,
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Sends `refund.updated` for `settled` (the refund as it is once settled,
    /// `succeeded` or `failed` with its failure code) once `after` has passed.
    pub(super) fn schedule(self: &Arc<Self>, settled: Refund, after: Duration) {
        let sender = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            sender.deliver(&settled).await;
        });
    }

    async fn deliver(&self, refund: &Refund) {
        let status = match refund.status {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
            RefundStatus::Canceled => "canceled",
        };
        let body = json!({
            "id": format!("evt_sbx_{}_{status}", refund.id),
            "object": "event",
            "type": "refund.updated",
            "created": unix_now(),
            "data": {"object": {
                "id": refund.id,
                "object": "refund",
                "amount": refund.amount,
                "currency": refund.currency.to_ascii_lowercase(),
                "charge": refund.payment,
                "status": status,
                "failure_reason": refund.failure_code,
                "metadata": refund.metadata,
            }},
        })
        .to_string();
        let attempt = || async {
            let header = signature::sign(&self.target.secret, unix_now(), body.as_bytes());
            let resp = self
                .http
                .post(&self.target.url)
                .header("Content-Type", "application/json")
                .header("Sandbox-Signature", header)
                .body(body.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", resp.status()))
            }
        };
        let policy = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(8)
            .with_jitter();
        match attempt.retry(policy).sleep(tokio::time::sleep).await {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(refund_id = %refund.id, url = %self.target.url, error = %e, "sandbox webhook not delivered");
            }
        }
    }
}
