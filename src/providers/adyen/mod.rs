//! Adapter for Adyen's Checkout API (<https://docs.adyen.com/api-explorer/Checkout/71>):
//! JSON bodies, `X-API-Key` authentication, `Idempotency-Key` on creations, and the outcome of a
//! refund delivered only by webhook (standard notifications, HMAC-signed).
//!
//! # What the adapter relies on, and where it comes from
//!
//! From Adyen's API reference and guides ("Refund a payment", "API idempotency", "Webhook
//! structure and types", "Verify HMAC signatures", "Errors"):
//!
//! - `POST /v71/payments/{paymentPspReference}/refunds` with `merchantAccount`, `amount {value,
//!   currency}` (`value` in minor units) and our `reference`; the answer is `201` with
//!   `status: "received"`, its own `pspReference` (the refund's) and `paymentPspReference`.
//!   "Received" is not an outcome: the refund succeeds or fails later, and Adyen says so only in
//!   a `REFUND` (success `true`/`false`) or `REFUND_FAILED` notification.
//! - `Idempotency-Key` makes a repeated POST answer as the first did (Adyen keeps keys at least
//!   7 days). Errors are `{status, errorCode, message, errorType, pspReference}`; errorCode `704`
//!   ("request already processed or in progress") is read as inconclusive: our own earlier
//!   attempt may be the one in progress.
//! - Standard JSON webhooks carry `notificationItems[].NotificationRequestItem` (one item per
//!   JSON webhook, Adyen says; several are read all the same), each signed in
//!   `additionalData.hmacSignature` (see [`webhook`]); the receiver answers `[accepted]`.
//!
//! # What Adyen cannot be asked
//!
//! Checkout has no API that returns a refund, nor one that returns a payment's captured amount.
//! So the adapter's [`Capabilities`] say `refund_lookup: false`, `payment_lookup: false` and
//! `settles_by_webhook_only: true`, and the service acts on them:
//!
//! - the pre-flight reads the captured amount from our payments ledger, which Adyen's `CAPTURE`
//!   and (successful) `AUTHORISATION` notifications fill ([`EventSubject::Captured`]);
//! - an ambiguous creation (timeout, 5xx, lost answer) is never looked up or sent again: the
//!   refund stays PENDING until its notification, which names our refund id
//!   (`merchantReference`); the reconciler leaves it alone and reports it when it is PENDING
//!   too long (`refund_webhook_only_pending_overdue`).
//!
//! [`Provider::get_payment`], `get_refund` and `find_refund` therefore answer a refusal with
//! code `lookup_unsupported` without sending anything; the service never calls them.
//!
//! Assumed: `AUTHORISATION` with success `true` means captured (automatic capture, Adyen's
//! default); with manual capture the refund of an uncaptured payment is refused by Adyen
//! (`REFUND` success `false`), which fails it and releases the amount. Our minor units are
//! ISO 4217's, which Adyen uses for the currencies it lists with the same exponent.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;

use super::http::Call;
use super::{
    Capabilities, Provider, ProviderError, ProviderPayment, ProviderRefund, ProviderRefundStatus,
    RefundCall, WebhookDelivery, WebhookEvent, WebhookRejection,
};
use crate::domain::PaymentRef;
use crate::secret::Secret;

pub mod webhook;
mod wire;

pub use webhook::{hmac_signature, signing_string};

/// Adyen's test Checkout endpoint; live ones are account-specific
/// (`https://{prefix}-checkout-live.adyenpayments.com/checkout`).
pub const DEFAULT_API_BASE: &str = "https://checkout-test.adyen.com";

/// The Checkout API version spoken here.
const VERSION: &str = "v71";

/// The merchant account setting's flag word.
const MERCHANT_ACCOUNT: &str = "merchant-account";

/// Adyen in the provider registry.
pub const SPEC: super::registry::ProviderSpec = super::registry::ProviderSpec {
    name: "adyen",
    title: "Adyen",
    env_prefix: "ADYEN",
    credential: "api-key",
    default_api_base: DEFAULT_API_BASE,
    default_rate_limit: 50,
    webhook_signing: "HMAC keys (hex, additionalData.hmacSignature)",
    extra: &[super::registry::ExtraSetting {
        word: MERCHANT_ACCOUNT,
        help: "merchant account that refunds are made for (merchantAccount)",
        required: true,
    }],
    build: |s| {
        if s.webhook_secrets
            .iter()
            .any(|k| hex::decode(k.expose()).is_err())
        {
            return Err(
                "Adyen's webhook HMAC keys are hexadecimal (--adyen-webhook-secret)".into(),
            );
        }
        let merchant_account = s.extra(MERCHANT_ACCOUNT).ok_or_else(|| {
            "Adyen needs a merchant account (--adyen-merchant-account)".to_owned()
        })?;
        AdyenProvider::new(
            &s.api_base,
            s.credential.clone(),
            merchant_account,
            s.traffic.call_timeout,
        )
        .map(|p| std::sync::Arc::new(p) as std::sync::Arc<dyn Provider>)
    },
};

pub struct AdyenProvider {
    http: reqwest::Client,
    base: String,
    api_key: Secret,
    merchant_account: String,
}

impl AdyenProvider {
    /// `api_base` is e.g. `https://checkout-test.adyen.com` (no version path); `timeout` bounds
    /// one HTTP call.
    pub fn new(
        api_base: &str,
        api_key: Secret,
        merchant_account: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let base = super::http::api_base(api_base, "Adyen")?;
        let merchant_account = merchant_account.trim();
        if merchant_account.is_empty() {
            return Err("the Adyen merchant account is empty".to_owned());
        }
        Ok(Self {
            http: super::http::client(timeout)?,
            base,
            api_key,
            merchant_account: merchant_account.to_owned(),
        })
    }
}

#[async_trait]
impl Provider for AdyenProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            full_refunds: true,
            partial_refunds: true,
            refund_lookup: false,
            payment_lookup: false,
            settles_by_webhook_only: true,
        }
    }

    fn read_webhook(
        &self,
        delivery: &WebhookDelivery<'_>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        webhook::read(delivery, &self.merchant_account)
    }

    fn webhook_ack(&self) -> Option<&'static str> {
        Some("[accepted]")
    }

    async fn get_payment(&self, payment: &PaymentRef) -> Result<ProviderPayment, ProviderError> {
        let _ = payment;
        Err(unsupported("a payment"))
    }

    async fn create_refund(&self, call: &RefundCall) -> Result<ProviderRefund, ProviderError> {
        let psp = payment_psp_reference(&call.payment)?;
        let body = serde_json::to_string(&wire::RefundRequest {
            merchant_account: &self.merchant_account,
            amount: wire::Amount {
                value: call.amount.minor_units(),
                currency: call.currency.code().to_owned(),
            },
            reference: &call.idempotency_key,
        })
        .map_err(|e| ProviderError::Rejected {
            code: "unencodable_request".to_owned(),
            message: e.to_string(),
        })?;
        let request = self
            .http
            .post(format!("{}/{VERSION}/payments/{psp}/refunds", self.base))
            .header("X-API-Key", self.api_key.expose())
            .header("Idempotency-Key", &call.idempotency_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body);
        let answer = super::http::exchange(request, |a| {
            error_from_response(a.status, a.retry_after, a.body, Call::Write)
        })
        .await?;
        let r: wire::RefundResponse = serde_json::from_slice(&answer)
            .map_err(|e| bad_answer(format!("undecodable refund answer: {e}")))?;
        r.into_provider(psp, call)
    }

    async fn get_refund(&self, provider_refund_id: &str) -> Result<ProviderRefund, ProviderError> {
        let _ = provider_refund_id;
        Err(unsupported("a refund"))
    }

    async fn find_refund(
        &self,
        payment: &PaymentRef,
        idempotency_key: &str,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let _ = (payment, idempotency_key);
        Err(unsupported("a refund"))
    }
}

/// Checkout has no read for payments or refunds; the capabilities say so, and the service does
/// not ask. Nothing is sent.
fn unsupported(what: &str) -> ProviderError {
    ProviderError::Rejected {
        code: "lookup_unsupported".to_owned(),
        message: format!("Adyen's Checkout API cannot look {what} up; its webhooks report it"),
    }
}

/// An Adyen PSP reference: letters and digits (16 of them today).
pub(crate) fn is_psp_reference(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The payment's PSP reference for the URL path; anything else cannot exist at Adyen and is
/// answered without a request.
fn payment_psp_reference(payment: &PaymentRef) -> Result<&str, ProviderError> {
    let id = payment.as_str();
    if is_psp_reference(id) {
        Ok(id)
    } else {
        Err(ProviderError::NotFound(format!(
            "'{id}' is not an Adyen PSP reference (letters and digits)"
        )))
    }
}

/// A 2xx answer to a creation that cannot be read: the refund may exist.
fn bad_answer(what: String) -> ProviderError {
    ProviderError::Ambiguous(format!("Adyen: {what}"))
}

/// Classifies a non-2xx answer from Adyen.
fn error_from_response(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    kind: Call,
) -> ProviderError {
    let err = wire::AdyenError::parse(body);
    let message = err
        .message
        .clone()
        .unwrap_or_else(|| format!("Adyen answered {status}"));
    let inconclusive = |message: String| match kind {
        Call::Write => ProviderError::Ambiguous(message),
        Call::Read => ProviderError::Unavailable(message),
    };
    match status.as_u16() {
        429 => ProviderError::RateLimited { retry_after },
        // A 5xx, 408 or 409: Adyen may have made, or may still make, the refund.
        _ if super::http::is_inconclusive(status) => {
            inconclusive(format!("Adyen answered {status}: {message}"))
        }
        // "Request already processed or in progress": maybe our own earlier attempt.
        _ if err.error_code.as_deref() == Some("704") => inconclusive(format!(
            "Adyen answered {status}: {message} (errorCode 704)"
        )),
        404 => ProviderError::NotFound(message),
        // 400, 401, 403, 422 and anything else: Adyen said no, and did nothing.
        _ => ProviderError::Rejected {
            code: err
                .error_code
                .map(|c| format!("adyen_{c}"))
                .unwrap_or_else(|| format!("http_{}", status.as_u16())),
            message,
        },
    }
}

#[cfg(test)]
mod tests;
