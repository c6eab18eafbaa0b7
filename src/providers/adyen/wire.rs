//! Adyen's JSON objects as its Checkout API reference shows them, and how they read into ours.

use serde::{Deserialize, Serialize};

use super::*;

/// `{value, currency}`: `value` in minor units.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Amount {
    pub(super) value: i64,
    pub(super) currency: String,
}

/// The body of `POST /v71/payments/{paymentPspReference}/refunds`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RefundRequest<'a> {
    pub(super) merchant_account: &'a str,
    pub(super) amount: Amount,
    /// Our refund id: it comes back as the notification's `merchantReference`.
    pub(super) reference: &'a str,
}

/// Its answer (`PaymentRefundResponse`): the request was received, nothing more.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RefundResponse {
    psp_reference: String,
    #[serde(default)]
    payment_psp_reference: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    amount: Option<Amount>,
}

impl RefundResponse {
    /// The refund as the service sees it: PENDING under Adyen's refund PSP reference, after
    /// checking that the answer is about what we asked.
    pub(super) fn into_provider(
        self,
        payment: &str,
        call: &RefundCall,
    ) -> Result<ProviderRefund, ProviderError> {
        if !is_psp_reference(&self.psp_reference) {
            return Err(bad_answer(format!(
                "bad refund pspReference {:?}",
                self.psp_reference
            )));
        }
        if let Some(of) = &self.payment_psp_reference
            && of != payment
        {
            return Err(bad_answer(format!(
                "the refund is of payment {of}, not {payment}"
            )));
        }
        if let Some(reference) = &self.reference
            && *reference != call.idempotency_key
        {
            return Err(bad_answer(format!(
                "the refund's reference {reference} is not {}",
                call.idempotency_key
            )));
        }
        if let Some(status) = &self.status
            && status != "received"
        {
            return Err(bad_answer(format!("unexpected refund status {status:?}")));
        }
        let amount = match &self.amount {
            Some(a) if a.currency.eq_ignore_ascii_case(call.currency.code()) => a.value,
            Some(a) => {
                return Err(bad_answer(format!(
                    "the refund is in {}, not {}",
                    a.currency, call.currency
                )));
            }
            None => call.amount.minor_units(),
        };
        Ok(ProviderRefund {
            id: self.psp_reference,
            amount,
            // "received": its outcome comes by webhook.
            status: ProviderRefundStatus::Pending,
        })
    }
}

/// What an error body says, read leniently (`errorCode` may be a string or a number; the body
/// may be the RFC 7807 form with `detail`, or not JSON at all).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct AdyenError {
    pub(super) error_code: Option<String>,
    pub(super) message: Option<String>,
}

impl AdyenError {
    pub(super) fn parse(body: &[u8]) -> Self {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_slice(body) else {
            return Self::default();
        };
        let text = |v: Option<&serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Self {
            error_code: text(v.get("errorCode")),
            message: text(v.get("message")).or_else(|| text(v.get("detail"))),
        }
    }
}
