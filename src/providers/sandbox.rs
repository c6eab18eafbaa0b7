//! Adapter for the built-in sandbox PSP ([`crate::sandbox`]): in-process by default, or over its
//! HTTP API when the sandbox runs standalone (`--sandbox-url`).

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Capabilities, PaymentStatus, Provider, ProviderError, ProviderPayment, ProviderRefund,
    ProviderRefundStatus, RefundCall, WebhookDelivery, WebhookEvent, WebhookRejection,
};
use crate::domain::{Currency, PaymentRef};
use crate::sandbox::{self, Sandbox, SandboxError, client::ClientError, client::SandboxClient};

pub enum SandboxProvider {
    /// The sandbox inside this process.
    Local(Arc<Sandbox>),
    /// A sandbox in another process, over HTTP.
    Remote(SandboxClient),
}

/// The header of the sandbox's webhook signature (Stripe's scheme).
pub const SIGNATURE_HEADER: &str = "sandbox-signature";

#[async_trait]
impl Provider for SandboxProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities::LOOKUPS
    }

    /// The sandbox signs like Stripe and sends Stripe-shaped `refund.updated` events.
    fn read_webhook(
        &self,
        delivery: &WebhookDelivery<'_>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        super::stripe::read_signed_event(delivery, SIGNATURE_HEADER)
    }

    async fn get_payment(&self, payment: &PaymentRef) -> Result<ProviderPayment, ProviderError> {
        let p = match self {
            Self::Local(s) => s.get_payment(payment.as_str()).await.map_err(from_sandbox),
            Self::Remote(c) => c.get_payment(payment.as_str()).await.map_err(from_client),
        }?;
        let currency = Currency::parse(&p.currency).map_err(|e| {
            ProviderError::Ambiguous(format!("sandbox payment has a bad currency: {e}"))
        })?;
        let status = match p.status {
            sandbox::PaymentStatus::Succeeded => PaymentStatus::Captured,
            sandbox::PaymentStatus::RequiresCapture => {
                PaymentStatus::NotRefundable("requires_capture".to_owned())
            }
            sandbox::PaymentStatus::Failed => PaymentStatus::NotRefundable("failed".to_owned()),
            sandbox::PaymentStatus::Canceled => PaymentStatus::NotRefundable("canceled".to_owned()),
        };
        Ok(ProviderPayment {
            id: p.id,
            captured: p.amount,
            refunded: p.amount_refunded,
            currency,
            status,
        })
    }

    async fn create_refund(&self, call: &RefundCall) -> Result<ProviderRefund, ProviderError> {
        let req = sandbox::NewRefund {
            payment: call.payment.as_str().to_owned(),
            amount: Some(call.amount.minor_units()),
            reason: Some(call.reason.as_str().to_owned()),
            metadata: call.metadata.clone(),
        };
        let key = Some(call.idempotency_key.as_str());
        match self {
            Self::Local(s) => s
                .create_refund(req, key)
                .await
                .map_err(|e| on_creation(from_sandbox(e))),
            Self::Remote(c) => c.create_refund(&req, key).await.map_err(|e| match e {
                ClientError::Sandbox(e) => on_creation(from_sandbox(e)),
                other => from_client(other),
            }),
        }
        .map(to_refund)
    }

    async fn get_refund(&self, provider_refund_id: &str) -> Result<ProviderRefund, ProviderError> {
        match self {
            Self::Local(s) => s.get_refund(provider_refund_id).await.map_err(from_sandbox),
            Self::Remote(c) => c.get_refund(provider_refund_id).await.map_err(from_client),
        }
        .map(to_refund)
    }

    async fn find_refund(
        &self,
        payment: &PaymentRef,
        idempotency_key: &str,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let filter = sandbox::RefundFilter {
            payment: Some(payment.as_str().to_owned()),
            idempotency_key: Some(idempotency_key.to_owned()),
        };
        let found = match self {
            Self::Local(s) => s.list_refunds(filter).await.map_err(from_sandbox),
            Self::Remote(c) => c.list_refunds(&filter).await.map_err(from_client),
        }?;
        Ok(found.into_iter().next().map(to_refund))
    }
}

fn to_refund(r: sandbox::Refund) -> ProviderRefund {
    let status = match r.status {
        sandbox::RefundStatus::Pending => ProviderRefundStatus::Pending,
        sandbox::RefundStatus::Succeeded => ProviderRefundStatus::Succeeded,
        sandbox::RefundStatus::Canceled => ProviderRefundStatus::Canceled,
        sandbox::RefundStatus::Failed => ProviderRefundStatus::Failed {
            code: r.failure_code.unwrap_or_else(|| "failed".to_owned()),
            reason: r.failure_reason.unwrap_or_default(),
        },
    };
    ProviderRefund {
        id: r.id,
        amount: r.amount,
        status,
    }
}

/// A 500 answer to a creation may come after the sandbox recorded the refund (as real PSPs'
/// do), so it is ambiguous there; on a read it is only unavailability. (A connection that was
/// never made stays `Unavailable`: nothing was sent.)
fn on_creation(e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Unavailable(message) => ProviderError::Ambiguous(message),
        other @ (ProviderError::NotFound(_)
        | ProviderError::Rejected { .. }
        | ProviderError::RateLimited { .. }
        | ProviderError::Timeout
        | ProviderError::Ambiguous(_)) => other,
    }
}

fn from_sandbox(e: SandboxError) -> ProviderError {
    match e {
        SandboxError::NotFound { message, .. } => ProviderError::NotFound(message),
        SandboxError::InvalidRequest { code, message } => ProviderError::Rejected { code, message },
        SandboxError::RateLimited { retry_after_secs } => ProviderError::RateLimited {
            retry_after: Some(std::time::Duration::from_secs(retry_after_secs)),
        },
        // A 500 may come after processing; see `on_creation`.
        SandboxError::Api { message } => ProviderError::Unavailable(message),
        // Another call with the same key is in flight and may yet succeed: not a final answer.
        SandboxError::Conflict { message, .. } => ProviderError::Ambiguous(message),
        SandboxError::AnswerLost { message } => ProviderError::Ambiguous(message),
    }
}

fn from_client(e: ClientError) -> ProviderError {
    match e {
        ClientError::Sandbox(e) => from_sandbox(e),
        ClientError::Timeout => ProviderError::Timeout,
        ClientError::Connect(m) => ProviderError::Unavailable(m),
        ClientError::Transport(m) | ClientError::Protocol(m) => ProviderError::Ambiguous(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_500_to_a_creation_is_ambiguous_and_to_a_read_unavailable() {
        let api = || SandboxError::Api {
            message: "boom".into(),
        };
        assert!(matches!(from_sandbox(api()), ProviderError::Unavailable(_)));
        assert!(matches!(
            on_creation(from_sandbox(api())),
            ProviderError::Ambiguous(_)
        ));
        let refused = SandboxError::InvalidRequest {
            code: "amount_too_large".into(),
            message: "too much".into(),
        };
        assert!(matches!(
            on_creation(from_sandbox(refused)),
            ProviderError::Rejected { .. }
        ));
    }
}
