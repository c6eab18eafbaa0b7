//! Adapter for Mercado Pago's payments and refunds API
//! (<https://www.mercadopago.com.br/developers/en/reference>): JSON bodies,
//! `Authorization: Bearer <access token>`, `X-Idempotency-Key` on creations.
//!
//! # What the adapter relies on, and where it comes from
//!
//! Confirmed in Mercado Pago's API reference ("Create refund", "Get refunds list", "Get specific
//! refund", "Get payment") and guides:
//!
//! - `POST /v1/payments/{id}/refunds`: the header `X-Idempotency-Key` is required ("allows you to
//!   safely retry requests without the risk of … creating two identical refunds"); the body has
//!   one documented field, `amount` (a JSON number in major units); without it the refund is
//!   full. The answer is a refund object.
//! - A refund object has `id` and `payment_id` (numbers), `amount` (number), `status` (`approved`,
//!   `in_process`, `rejected`, `cancelled`, `authorized`), `reason`, and a `metadata` field that
//!   the reference describes as "payment metadata that is sent to us in the payment post": it is
//!   the *payment's* metadata, not something a refund creation can set.
//! - `GET /v1/payments/{id}/refunds` lists a payment's refunds (a JSON array);
//!   `GET /v1/payments/{id}/refunds/{refund_id}` reads one.
//! - Pix refunds that stay in process (contingency) are answered `400 Bad Request` by default;
//!   with the header `X-Render-In-Process-Refunds: true` the creation answers `201` with status
//!   `in_process`, and the list and single reads show that status too ("Refund of transactions
//!   with Pix"). Every refund call here sends that header, so a 400 is always a real refusal.
//! - Error bodies are `{"message", "error", "status", "cause": [{"code", "description"}]}`. The
//!   documented refund causes include 2000 payment not found, 2032 refund not found, 2024 and
//!   15016 payment too old to be refunded, 3024 partial refund unsupported for the transaction,
//!   2063 action not valid for the current payment state, 4040/4041 amount must be
//!   positive/numeric; some of them are listed under HTTP 404.
//! - Payment statuses: `approved` (with `status_detail` `partially_refunded` once partly
//!   refunded), `refunded`, `charged_back`, `in_mediation`, `pending`, `authorized`,
//!   `in_process`, `rejected`, `cancelled`. Payments carry `transaction_amount`,
//!   `transaction_amount_refunded`, `currency_id` and `refunds`.
//!
//! Assumed (not found in the reference): 429 answers may carry `Retry-After` in seconds; an
//! unknown refund status is not final, so it is reported as pending.
//!
//! # Ids
//!
//! Payment ids ([`PaymentRef`]) are Mercado Pago's numeric payment ids; anything else is answered
//! `NotFound` without a request, as Mercado Pago would. Reading a refund needs its payment's id
//! too, so the provider refund id this adapter returns (and the service stores) is
//! `"{payment_id}/{refund_id}"`, e.g. `"18552260055/1009042015"`; `get_refund` splits it back and
//! answers `NotFound` for anything not of that shape.
//!
//! # Money
//!
//! Amounts travel as JSON decimal numbers in major units (`100.5` BRL). They are never read
//! through `f64`: amount fields are taken as raw JSON text ([`RawValue`]) and converted exactly to
//! minor units with the currency's ISO 4217 exponent ([`crate::domain::decimal_to_minor`]); written amounts are
//! produced the same way in reverse ([`crate::domain::minor_to_decimal`]) and put in the body as a raw JSON
//! number. Text that is not a plain non-negative decimal (a sign, an exponent such as `1e2`), or
//! that has non-zero digits beyond the currency's exponent (`10.505` BRL, `100.5` CLP), is an
//! undecodable answer. Zeros beyond the exponent (`100.0` CLP) are accepted: the value is exact.
//! The creation always states the amount, even for a full refund: the service reserved exactly
//! that amount, and an implicit "refund whatever is left" could refund more than it reserved.
//!
//! # Finding a refund after an ambiguous failure
//!
//! A refund creation accepts no metadata (see above) and the refund object carries neither our
//! idempotency key nor anything else of ours, so a refund in the list cannot be recognised as the
//! one made for a given key. [`Provider::find_refund`] therefore answers:
//!
//! - `Ok(None)` only when the payment has no refund at all: its refund list is empty *and* the
//!   payment itself shows no refund (`refunds` empty, `transaction_amount_refunded` zero, status
//!   not `refunded`). Then our request never created anything and the service sends it again
//!   with the same `X-Idempotency-Key`. That cannot refund twice: nothing exists to duplicate,
//!   and if our first request is still being processed when the list is read, Mercado Pago
//!   honours the idempotency key on the re-send and answers with the same refund.
//! - otherwise `Err(Rejected { code: "refund_not_identifiable" })`. Nothing is sent again: the
//!   traffic layer gives up on the ambiguous creation and the reconciler keeps the refund
//!   PENDING, looking again later, until someone resolves it by hand (the warning logged here
//!   names payment and key). `Rejected` rather than `Unavailable`, because asking again cannot
//!   help and Mercado Pago is not down: it must neither be retried in a loop nor open the circuit.
//!
//! Guessing instead (say, "the newest refund is ours") could record someone else's refund as ours
//! and report money as refunded that never was.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::http::Call;
use super::{
    Capabilities, EventSubject, PaymentStatus, Provider, ProviderError, ProviderPayment,
    ProviderRefund, ProviderRefundStatus, RefundCall, WebhookDelivery, WebhookEvent,
    WebhookRejection,
};
use crate::domain::{Currency, PaymentRef, decimal_to_minor, minor_to_decimal};
use crate::secret::Secret;

pub mod webhook;
mod wire;

pub use webhook::{SignatureError, verify_signature};
use wire::{MpId, MpPayment, MpRefund};

/// Reads a Mercado Pago notification (already verified against its `x-signature`). Notifications
/// only name what changed (`{"type": "payment", "action": "payment.updated", "data": {"id":
/// "…"}}`); refunds show up as payment updates, so a payment notification makes the service look
/// the payment's PENDING refunds up now. Other types are acknowledged and ignored. The event id is
/// the notification's `id`, or, for notifications without one, the action, the resource and the
/// request id together.
pub fn parse_webhook(body: &[u8], request_id: Option<&str>) -> Result<WebhookEvent, String> {
    #[derive(Deserialize)]
    struct Notification {
        #[serde(default)]
        id: Option<MpId>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        action: Option<String>,
        #[serde(default)]
        data: Option<NotificationData>,
    }
    #[derive(Deserialize)]
    struct NotificationData {
        id: MpId,
    }
    let n: Notification = serde_json::from_slice(body)
        .map_err(|e| format!("not a Mercado Pago notification: {e}"))?;
    let kind = n
        .action
        .clone()
        .or_else(|| n.kind.clone())
        .unwrap_or_else(|| "unknown".to_owned());
    let resource = n.data.map(|d| d.id.text());
    let id = match n.id {
        Some(id) => id.text(),
        None => format!(
            "{kind}:{}:{}",
            resource.as_deref().unwrap_or(""),
            request_id.unwrap_or("")
        ),
    };
    let subject = match (n.kind.as_deref(), resource) {
        (Some("payment"), Some(payment)) if payment.bytes().all(|b| b.is_ascii_digit()) => {
            EventSubject::Payment(PaymentRef::from_trusted(payment))
        }
        (Some("payment"), _) => {
            return Err("a payment notification without a numeric data.id".to_owned());
        }
        _ => EventSubject::Ignored,
    };
    Ok(WebhookEvent { id, kind, subject })
}

/// Mercado Pago's API root.
pub const DEFAULT_API_BASE: &str = "https://api.mercadopago.com";

/// Mercado Pago in the provider registry.
pub const SPEC: super::registry::ProviderSpec = super::registry::ProviderSpec {
    name: "mercadopago",
    title: "Mercado Pago",
    env_prefix: "MERCADOPAGO",
    credential: "access-token",
    default_api_base: DEFAULT_API_BASE,
    default_rate_limit: 50,
    webhook_signing: "secrets (x-signature)",
    extra: &[],
    build: |s| {
        MercadoPagoProvider::new(&s.api_base, s.credential.clone(), s.traffic.call_timeout)
            .map(|p| std::sync::Arc::new(p) as std::sync::Arc<dyn Provider>)
    },
};

const IDEMPOTENCY_KEY: &str = "X-Idempotency-Key";
/// Makes in-process (contingency) refunds answer 201/`in_process` instead of 400.
const RENDER_IN_PROCESS_REFUNDS: &str = "X-Render-In-Process-Refunds";

/// Whether a call concerns refunds, and so carries `X-Render-In-Process-Refunds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Payment,
    Refunds,
}

pub struct MercadoPagoProvider {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl MercadoPagoProvider {
    /// `api_base` is e.g. `https://api.mercadopago.com` (no `/v1`); `timeout` bounds one HTTP
    /// call.
    pub fn new(api_base: &str, access_token: Secret, timeout: Duration) -> Result<Self, String> {
        let base = super::http::api_base(api_base, "Mercado Pago")?;
        let http = super::http::client(timeout)?;
        Ok(Self {
            http,
            base,
            token: access_token,
        })
    }

    /// One HTTP call; the body of a 2xx answer, or the classified error.
    async fn call(
        &self,
        method: Method,
        path: &str,
        resource: Resource,
        body: Option<(String, &str)>,
        kind: Call,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        if resource == Resource::Refunds {
            req = req.header(RENDER_IN_PROCESS_REFUNDS, "true");
        }
        if let Some((body, idempotency_key)) = body {
            req = req
                .header(IDEMPOTENCY_KEY, idempotency_key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        super::http::exchange(req, |answer| {
            error_from_response(answer.status, answer.retry_after, answer.body, kind)
        })
        .await
    }

    async fn fetch_payment(&self, id: &str) -> Result<MpPayment, ProviderError> {
        let body = self
            .call(
                Method::GET,
                &format!("/v1/payments/{id}"),
                Resource::Payment,
                None,
                Call::Read,
            )
            .await?;
        decode(&body, Call::Read)
    }
}

/// Mercado Pago signs `id:<data.id>;request-id:<x-request-id>;ts:<ts>;` (data.id from the query
/// string) rather than the body, so the body is read only after the signature checks out, and a
/// body naming another payment than the signed id is refused.
fn read_notification(delivery: &WebhookDelivery<'_>) -> Result<WebhookEvent, WebhookRejection> {
    let header = |name: &str| delivery.headers.get(name).and_then(|v| v.to_str().ok());
    let signature = header("x-signature").ok_or_else(|| {
        WebhookRejection::Signature(super::signature::SignatureError::Missing.to_string())
    })?;
    let request_id = header("x-request-id");
    let data_id = delivery.query.get("data.id").map(String::as_str);
    let secrets: Vec<&str> = delivery.secrets.iter().map(|s| s.expose()).collect();
    verify_signature(
        signature,
        request_id,
        data_id,
        &secrets,
        delivery.now_unix,
        delivery.tolerance,
    )
    .map_err(|e| WebhookRejection::Signature(e.to_string()))?;
    let event = parse_webhook(delivery.body, request_id).map_err(WebhookRejection::Unreadable)?;
    let names_signed_payment = match &event.subject {
        EventSubject::Payment(p) => data_id.is_some_and(|id| id.eq_ignore_ascii_case(p.as_str())),
        EventSubject::Refunds(_) | EventSubject::Captured { .. } | EventSubject::Ignored => true,
    };
    if !names_signed_payment {
        return Err(WebhookRejection::Unreadable(
            "the notification's data.id differs from the signed one in the query string".into(),
        ));
    }
    Ok(event)
}

#[async_trait]
impl Provider for MercadoPagoProvider {
    fn capabilities(&self) -> Capabilities {
        // Partial refunds, except for the few payment methods that answer cause 3024.
        Capabilities::LOOKUPS
    }

    fn read_webhook(
        &self,
        delivery: &WebhookDelivery<'_>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        read_notification(delivery)
    }

    async fn get_payment(&self, payment: &PaymentRef) -> Result<ProviderPayment, ProviderError> {
        let id = payment_id(payment)?;
        let p = self.fetch_payment(id).await?;
        let kind = Call::Read;
        let currency = currency(&p.currency_id, kind)?;
        let captured = amount(&p.transaction_amount, currency, kind)?;
        let refunded = match &p.transaction_amount_refunded {
            Some(raw) => amount(raw, currency, kind)?,
            None => 0,
        };
        let (status, refunded) = match p.status.as_str() {
            "approved" => (PaymentStatus::Captured, refunded),
            // Fully refunded: captured, with nothing left, so the service answers
            // ALREADY_REFUNDED rather than "not refundable".
            "refunded" => (PaymentStatus::Captured, captured),
            // charged_back, in_mediation, pending, authorized, in_process, rejected, cancelled,
            // and anything Mercado Pago adds later.
            other => (PaymentStatus::NotRefundable(other.to_owned()), refunded),
        };
        Ok(ProviderPayment {
            id: p.id.check(kind)?,
            captured,
            refunded,
            currency,
            status,
        })
    }

    async fn create_refund(&self, call: &RefundCall) -> Result<ProviderRefund, ProviderError> {
        let id = payment_id(&call.payment)?;
        let body = refund_body(call)?;
        let answer = self
            .call(
                Method::POST,
                &format!("/v1/payments/{id}/refunds"),
                Resource::Refunds,
                Some((body, call.idempotency_key.as_str())),
                Call::Write,
            )
            .await?;
        let r: MpRefund = decode(&answer, Call::Write)?;
        r.into_provider(id, call.currency, Call::Write)
    }

    async fn get_refund(&self, provider_refund_id: &str) -> Result<ProviderRefund, ProviderError> {
        let (payment, refund) = split_refund_id(provider_refund_id)?;
        let body = self
            .call(
                Method::GET,
                &format!("/v1/payments/{payment}/refunds/{refund}"),
                Resource::Refunds,
                None,
                Call::Read,
            )
            .await?;
        let r: MpRefund = decode(&body, Call::Read)?;
        // A refund has no currency of its own: it is in its payment's.
        let currency = currency(&self.fetch_payment(payment).await?.currency_id, Call::Read)?;
        r.into_provider(payment, currency, Call::Read)
    }

    async fn find_refund(
        &self,
        payment: &PaymentRef,
        idempotency_key: &str,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let id = payment_id(payment)?;
        let body = self
            .call(
                Method::GET,
                &format!("/v1/payments/{id}/refunds"),
                Resource::Refunds,
                None,
                Call::Read,
            )
            .await?;
        let listed: Vec<MpRefund> = decode(&body, Call::Read)?;
        let none_listed = listed.is_empty();
        // The list is not the only witness: the payment must show no refund either, so a refund
        // the list leaves out (hidden, or not rendered yet) is never taken for "none".
        let unrefunded = none_listed && {
            let p = self.fetch_payment(id).await?;
            let refunded = match &p.transaction_amount_refunded {
                Some(raw) => amount(raw, currency(&p.currency_id, Call::Read)?, Call::Read)?,
                None => 0,
            };
            p.refunds.is_empty() && refunded == 0 && p.status != "refunded"
        };
        if unrefunded {
            return Ok(None);
        }
        tracing::warn!(
            payment = id,
            refund_id = idempotency_key,
            refunds_listed = listed.len(),
            "Mercado Pago cannot tell whether this payment's refunds include the one whose \
             creation was ambiguous; it stays PENDING until resolved by hand"
        );
        Err(ProviderError::Rejected {
            code: "refund_not_identifiable".to_owned(),
            message: format!(
                "payment {id} has refunds at Mercado Pago and none can be matched to refund \
                 {idempotency_key}: Mercado Pago refunds carry no reference of ours"
            ),
        })
    }
}

/// A Mercado Pago id: decimal digits only.
fn is_mp_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The payment id for a URL path; Mercado Pago's ids are numeric, so anything else cannot exist
/// there and is answered without a request.
fn payment_id(payment: &PaymentRef) -> Result<&str, ProviderError> {
    let id = payment.as_str();
    if is_mp_id(id) {
        Ok(id)
    } else {
        Err(ProviderError::NotFound(format!(
            "'{id}' is not a Mercado Pago payment id (they are numeric)"
        )))
    }
}

/// Our provider refund id, `"{payment_id}/{refund_id}"`.
fn refund_id(payment: &str, refund: &str) -> String {
    format!("{payment}/{refund}")
}

fn split_refund_id(id: &str) -> Result<(&str, &str), ProviderError> {
    match id.split_once('/') {
        Some((payment, refund)) if is_mp_id(payment) && is_mp_id(refund) => Ok((payment, refund)),
        _ => Err(ProviderError::NotFound(format!(
            "'{id}' is not a Mercado Pago refund id of the form '<payment id>/<refund id>'"
        ))),
    }
}

#[derive(Serialize)]
struct RefundBody<'a> {
    amount: &'a RawValue,
}

/// The JSON body of `POST /v1/payments/{id}/refunds`: `{"amount":10.50}`, the amount written
/// exactly from minor units.
fn refund_body(call: &RefundCall) -> Result<String, ProviderError> {
    let unsupported = || ProviderError::Rejected {
        code: "unsupported_currency".to_owned(),
        message: format!(
            "{} has no decimal minor unit to express {} minor units in",
            call.currency,
            call.amount.minor_units()
        ),
    };
    let exponent = call.currency.exponent().ok_or_else(unsupported)?;
    let text = minor_to_decimal(call.amount.minor_units(), exponent).ok_or_else(unsupported)?;
    let raw = RawValue::from_string(text).map_err(|_| unsupported())?;
    serde_json::to_string(&RefundBody { amount: &raw }).map_err(|_| unsupported())
}

/// An undecodable 2xx answer: on a creation the refund may exist, on a read nothing happened.
fn bad_answer(kind: Call, what: String) -> ProviderError {
    match kind {
        Call::Write => {
            ProviderError::Ambiguous(format!("undecodable answer from Mercado Pago: {what}"))
        }
        Call::Read => {
            ProviderError::Unavailable(format!("undecodable answer from Mercado Pago: {what}"))
        }
    }
}

fn decode<T: DeserializeOwned>(body: &[u8], kind: Call) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|e| bad_answer(kind, e.to_string()))
}

fn currency(code: &str, kind: Call) -> Result<Currency, ProviderError> {
    Currency::parse(code).map_err(|e| bad_answer(kind, format!("bad currency: {e}")))
}

/// An amount field's exact value in `currency`'s minor units.
fn amount(raw: &RawValue, currency: Currency, kind: Call) -> Result<i64, ProviderError> {
    let exponent = currency.exponent().ok_or_else(|| {
        bad_answer(
            kind,
            format!("{currency} has no decimal minor unit for amounts"),
        )
    })?;
    decimal_to_minor(raw.get(), exponent)
        .map_err(|e| bad_answer(kind, format!("bad {currency} amount: {e}")))
}

/// Causes that say the payment or refund does not exist, whatever the HTTP status.
const NOT_FOUND_CAUSES: &[&str] = &["2000", "2032"];

/// Documented refund refusals, as stable codes that say what happened. Some are documented under
/// HTTP 404 although the payment exists, so they are matched before the status.
fn refusal_code(cause: &str) -> Option<&'static str> {
    match cause {
        "2024" | "15016" => Some("payment_too_old_to_refund"),
        "3024" => Some("partial_refund_unsupported"),
        "2063" => Some("invalid_payment_state"),
        "4040" | "4041" => Some("invalid_amount"),
        _ => None,
    }
}

/// What an error body says, read leniently: `cause` may be missing, empty, one object or a list,
/// with numeric or string codes; the body may not be JSON at all.
#[derive(Debug, Default, PartialEq, Eq)]
struct MpError {
    error: Option<String>,
    message: Option<String>,
    cause_code: Option<String>,
    cause_description: Option<String>,
}

impl MpError {
    fn parse(body: &[u8]) -> Self {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_slice(body) else {
            return Self::default();
        };
        let text = |v: Option<&serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let first_cause = match v.get("cause") {
            Some(serde_json::Value::Array(causes)) => causes.first(),
            Some(cause @ serde_json::Value::Object(_)) => Some(cause),
            _ => None,
        };
        Self {
            error: text(v.get("error")),
            message: text(v.get("message")),
            cause_code: first_cause.and_then(|c| text(c.get("code"))),
            cause_description: first_cause.and_then(|c| text(c.get("description"))),
        }
    }
}

/// Classifies a non-2xx answer from Mercado Pago.
fn error_from_response(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    kind: Call,
) -> ProviderError {
    let err = MpError::parse(body);
    let message = err
        .cause_description
        .clone()
        .or_else(|| err.message.clone())
        .unwrap_or_else(|| format!("Mercado Pago answered {status}"));
    match status.as_u16() {
        429 => ProviderError::RateLimited { retry_after },
        // A 5xx, 408 or 409 (a request with our idempotency key still in progress): Mercado Pago
        // may have made, or may still make, the refund. Look it up first.
        _ if super::http::is_inconclusive(status) => match kind {
            Call::Write => {
                ProviderError::Ambiguous(format!("Mercado Pago answered {status}: {message}"))
            }
            Call::Read => {
                ProviderError::Unavailable(format!("Mercado Pago answered {status}: {message}"))
            }
        },
        code => {
            let cause = err.cause_code.as_deref();
            if let Some(clear) = cause.and_then(refusal_code) {
                return ProviderError::Rejected {
                    code: clear.to_owned(),
                    message: format!("{message} (Mercado Pago cause {})", cause.unwrap_or("")),
                };
            }
            if code == 404 || cause.is_some_and(|c| NOT_FOUND_CAUSES.contains(&c)) {
                return ProviderError::NotFound(message);
            }
            // 400, 401, 403, 422 and anything else: Mercado Pago said no.
            let code = err
                .cause_code
                .or(err.error)
                .unwrap_or_else(|| format!("http_{}", status.as_u16()));
            ProviderError::Rejected { code, message }
        }
    }
}

#[cfg(test)]
mod tests;
