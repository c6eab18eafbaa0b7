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

pub use webhook::{SignatureError, verify_signature};

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
        EventSubject::Refunds(_) | EventSubject::Ignored => true,
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
        Capabilities {
            full_refunds: true,
            partial_refunds: true,
        }
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

/// A Mercado Pago id as it comes: a JSON number, or (leniently) a string of digits.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MpId {
    Number(u64),
    Text(String),
}

impl MpId {
    /// The id as text, whichever way it was sent.
    fn text(self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Text(t) => t,
        }
    }

    fn check(self, kind: Call) -> Result<String, ProviderError> {
        let id = match self {
            Self::Number(n) => n.to_string(),
            Self::Text(s) => s,
        };
        if is_mp_id(&id) {
            Ok(id)
        } else {
            Err(bad_answer(kind, format!("bad id {id:?}")))
        }
    }
}

#[derive(Debug, Deserialize)]
struct MpPayment {
    id: MpId,
    status: String,
    transaction_amount: Box<RawValue>,
    #[serde(default)]
    transaction_amount_refunded: Option<Box<RawValue>>,
    currency_id: String,
    #[serde(default)]
    refunds: Vec<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct MpRefund {
    id: MpId,
    #[serde(default)]
    payment_id: Option<MpId>,
    amount: Box<RawValue>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl MpRefund {
    /// The refund as the service sees it; `payment` is the payment it was asked about.
    fn into_provider(
        self,
        payment: &str,
        currency: Currency,
        kind: Call,
    ) -> Result<ProviderRefund, ProviderError> {
        let id = self.id.check(kind)?;
        if let Some(of) = self.payment_id {
            let of = of.check(kind)?;
            if of != payment {
                return Err(bad_answer(
                    kind,
                    format!("refund {id} belongs to payment {of}, not {payment}"),
                ));
            }
        }
        let amount = amount(&self.amount, currency, kind)?;
        let status = match self.status.as_deref() {
            Some("approved") => ProviderRefundStatus::Succeeded,
            Some("rejected") => ProviderRefundStatus::Failed {
                code: "rejected".to_owned(),
                reason: self
                    .reason
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| "Mercado Pago rejected the refund".to_owned()),
            },
            Some("cancelled") => ProviderRefundStatus::Canceled,
            // "in_process", "authorized", "pending"; and any status Mercado Pago adds later, or
            // none at all: not known to be final, so pending, and looked up again later.
            _ => ProviderRefundStatus::Pending,
        };
        Ok(ProviderRefund {
            id: refund_id(payment, &id),
            amount,
            status,
        })
    }
}

/// Verification of Mercado Pago's webhook signatures ("Notifications" guide, "Validate
/// notification origin").
///
/// A notification carries `x-signature: ts=<ts>,v1=<hex>` and `x-request-id`. The signed manifest
/// is `id:{data.id};request-id:{x-request-id};ts:{ts};`, where `data.id` is the query parameter
/// (lower-cased when alphanumeric) and any part whose value is missing is left out; `v1` is the
/// hex HMAC-SHA256 of the manifest keyed with the application's secret signature.
///
/// The guide calls `ts` "the timestamp (in milliseconds)" while its own example,
/// `ts=1704908010`, is in seconds. Both are accepted: a value of 10^11 or more (as seconds, a
/// date past the year 5000) is read as milliseconds. The manifest always uses the text as sent.
pub mod webhook {
    use std::time::Duration;

    use hmac::{Hmac, KeyInit as _, Mac as _};
    use sha2::Sha256;

    /// Why a notification's signature was not accepted.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum SignatureError {
        #[error("malformed x-signature header: {0}")]
        Malformed(String),
        #[error(
            "the notification's timestamp {ts} is {skew_secs}s away from now, beyond the tolerance"
        )]
        Stale { ts: i64, skew_secs: u64 },
        #[error("no configured secret produces the notification's signature")]
        NoMatchingSignature,
    }

    /// Timestamps from here on are milliseconds.
    const MILLIS_FROM: i64 = 100_000_000_000;

    /// Checks a notification's `x-signature` against each of `secrets` (several during a
    /// rotation), then that its timestamp is within `tolerance` of `now_unix` (seconds). The
    /// comparison is constant-time.
    pub fn verify_signature(
        x_signature: &str,
        x_request_id: Option<&str>,
        data_id: Option<&str>,
        secrets: &[&str],
        now_unix: i64,
        tolerance: Duration,
    ) -> Result<(), SignatureError> {
        let malformed = |what: &str| SignatureError::Malformed(what.to_owned());
        let mut ts_text: Option<&str> = None;
        let mut signatures: Vec<Vec<u8>> = Vec::new();
        for part in x_signature.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(malformed("a part is not key=value"));
            };
            match key.trim() {
                "ts" if ts_text.is_some() => return Err(malformed("ts is given twice")),
                "ts" => ts_text = Some(value.trim()),
                "v1" => {
                    let sig = hex::decode(value.trim())
                        .map_err(|_| malformed("v1 is not hexadecimal"))?;
                    if sig.len() != 32 {
                        return Err(malformed("v1 is not a SHA-256 HMAC"));
                    }
                    signatures.push(sig);
                }
                // Other schemes (a future v2) are not ours to check.
                _ => {}
            }
        }
        let ts_text = ts_text.ok_or_else(|| malformed("no ts"))?;
        if signatures.is_empty() {
            return Err(malformed("no v1 signature"));
        }
        if ts_text.is_empty() || !ts_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("ts is not a number"));
        }
        let ts: i64 = ts_text
            .parse()
            .map_err(|_| malformed("ts is out of range"))?;

        let mut manifest = String::new();
        if let Some(id) = data_id.filter(|s| !s.is_empty()) {
            manifest.push_str(&format!("id:{};", id.to_ascii_lowercase()));
        }
        if let Some(request_id) = x_request_id.filter(|s| !s.is_empty()) {
            manifest.push_str(&format!("request-id:{request_id};"));
        }
        manifest.push_str(&format!("ts:{ts_text};"));

        let matched = secrets.iter().any(|secret| {
            signatures.iter().any(|sig| {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                    return false;
                };
                mac.update(manifest.as_bytes());
                mac.verify_slice(sig).is_ok()
            })
        });
        if !matched {
            return Err(SignatureError::NoMatchingSignature);
        }

        let ts_secs = if ts >= MILLIS_FROM { ts / 1000 } else { ts };
        let skew = (i128::from(now_unix) - i128::from(ts_secs)).unsigned_abs();
        let skew_secs = u64::try_from(skew).unwrap_or(u64::MAX);
        if skew_secs > tolerance.as_secs() {
            return Err(SignatureError::Stale { ts, skew_secs });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use wiremock::matchers::{any as any_request, bearer_token, body_string, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::webhook::{SignatureError, verify_signature};
    use super::*;
    use crate::domain::{Amount, RefundReason};

    const TOKEN: &str = "APP_USR-test-token";
    const PAYMENT: &str = "18552260055";

    /// A refund object as the "Create refund" reference shows it.
    fn refund_json(id: u64, amount: &str, status: &str) -> String {
        format!(
            r#"{{"id": {id}, "payment_id": {PAYMENT}, "amount": {amount}, "metadata": {{}},
            "source": {{"id": "1003743392", "name": "Firstname Lastname", "type": "collector"}},
            "date_created": "2021-01-19T09:43:10.000-04:00", "unique_sequence_number": null,
            "refund_mode": "standard", "adjustment_amount": 0, "status": "{status}",
            "reason": null, "labels": [], "amount_refunded_to_payer": {amount},
            "partition_details": []}}"#
        )
    }

    /// A payment object as the "Get payment" reference shows it (trimmed to what matters).
    fn payment_json(
        status: &str,
        amount: &str,
        refunded: &str,
        currency: &str,
        refunds: &str,
    ) -> String {
        format!(
            r#"{{"id": {PAYMENT}, "status": "{status}", "status_detail": "accredited",
            "transaction_amount": {amount}, "transaction_amount_refunded": {refunded},
            "currency_id": "{currency}", "refunds": [{refunds}],
            "transaction_details": {{"net_received_amount": 95.31, "total_paid_amount": 100.5}}}}"#
        )
    }

    fn json(status: u16, body: impl Into<String>) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_raw(body.into(), "application/json")
    }

    fn provider(base: &str) -> MercadoPagoProvider {
        match MercadoPagoProvider::new(base, Secret::opaque(TOKEN.into()), Duration::from_secs(5)) {
            Ok(p) => p,
            Err(e) => panic!("client: {e}"),
        }
    }

    fn pref(id: &str) -> PaymentRef {
        match PaymentRef::parse(id) {
            Ok(p) => p,
            Err(e) => panic!("payment ref: {e}"),
        }
    }

    fn call(minor: i64, currency: &str) -> RefundCall {
        let mut metadata = BTreeMap::new();
        metadata.insert("refund_id".to_owned(), "rf_1".to_owned());
        RefundCall {
            payment: pref(PAYMENT),
            amount: Amount::new(minor).unwrap_or_else(|e| panic!("{e}")),
            currency: Currency::parse(currency).unwrap_or_else(|e| panic!("{e}")),
            reason: RefundReason::RequestedByCustomer,
            metadata,
            idempotency_key: "rf_1".to_owned(),
        }
    }

    fn brl() -> Currency {
        Currency::parse("BRL").unwrap_or_else(|e| panic!("{e}"))
    }

    // --- money on the wire ---

    proptest! {
        /// What `minor_to_decimal` writes is a JSON number that serde_json keeps verbatim, so the
        /// body carries the exact amount.
        #[test]
        fn written_amounts_stay_verbatim_in_json(minor in 0i64..=i64::MAX, exponent in 0u32..=3) {
            let text = minor_to_decimal(minor, exponent).unwrap_or_default();
            let raw = RawValue::from_string(text.clone());
            prop_assert_eq!(raw.map(|r| r.get().to_owned()).ok(), Some(text));
        }
    }

    // --- classification ---

    fn err(status: u16, body: &str, kind: Call) -> ProviderError {
        error_from_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            None,
            body.as_bytes(),
            kind,
        )
    }

    /// A conflict (another request with our `X-Idempotency-Key` still being processed) or a
    /// request timeout proves nothing about the creation: it is ambiguous, never a refusal.
    #[test]
    fn a_conflict_on_a_creation_is_ambiguous_never_a_refusal() {
        let conflict = r#"{"message": "request with the same idempotency key in progress", "error": "conflict", "status": 409, "cause": []}"#;
        assert!(matches!(
            err(409, conflict, Call::Write),
            ProviderError::Ambiguous(_)
        ));
        assert!(matches!(
            err(408, "", Call::Write),
            ProviderError::Ambiguous(_)
        ));
        assert!(matches!(
            err(409, conflict, Call::Read),
            ProviderError::Unavailable(_)
        ));
    }

    #[test]
    fn mercado_pago_errors_are_classified() {
        let gateway = r#"{"message": "Invalid value for gateway_operation", "error": "bad_request",
            "status": 400, "cause": [{"code": 2085, "description": "Invalid value for gateway_operation"}]}"#;
        assert_eq!(
            err(400, gateway, Call::Write),
            ProviderError::Rejected {
                code: "2085".into(),
                message: "Invalid value for gateway_operation".into()
            }
        );
        let string_code = r#"{"message": "m", "error": "bad_request", "status": 400,
            "cause": [{"code": "2063", "description": "The action requested is not valid for the current payment state"}]}"#;
        assert_eq!(
            err(400, string_code, Call::Write),
            ProviderError::Rejected {
                code: "invalid_payment_state".into(),
                message: "The action requested is not valid for the current payment state \
                          (Mercado Pago cause 2063)"
                    .into()
            }
        );
        let no_cause = r#"{"message": "amount must be positive", "error": "bad_request", "status": 400, "cause": []}"#;
        assert_eq!(
            err(422, no_cause, Call::Write),
            ProviderError::Rejected {
                code: "bad_request".into(),
                message: "amount must be positive".into()
            }
        );
        let missing_cause =
            r#"{"message": "invalid access token", "error": "unauthorized", "status": 401}"#;
        assert!(matches!(
            err(401, missing_cause, Call::Read),
            ProviderError::Rejected { code, .. } if code == "unauthorized"
        ));
        assert!(matches!(
            err(403, "<html>forbidden</html>", Call::Read),
            ProviderError::Rejected { code, .. } if code == "http_403"
        ));
        // One object instead of a list.
        let object_cause = r#"{"message": "m", "error": "e", "cause": {"code": 3024, "description": "Not valid action - partial refund unsupported for this transaction"}}"#;
        assert!(matches!(
            err(400, object_cause, Call::Write),
            ProviderError::Rejected { code, .. } if code == "partial_refund_unsupported"
        ));
        // The reference lists "payment too old" under 404: a refusal, not a missing payment.
        let too_old = r#"{"message": "Payment too old to be refunded", "error": "not_found", "status": 404, "cause": [{"code": 2024, "description": "Payment too old to be refunded"}]}"#;
        assert!(matches!(
            err(404, too_old, Call::Write),
            ProviderError::Rejected { code, .. } if code == "payment_too_old_to_refund"
        ));
        let too_old = r#"{"error": "bad_request", "cause": [{"code": 15016, "description": "Payment too old to be refunded"}]}"#;
        assert!(matches!(
            err(400, too_old, Call::Write),
            ProviderError::Rejected { code, .. } if code == "payment_too_old_to_refund"
        ));
        let missing = r#"{"message": "Payment not found", "error": "not_found", "status": 404, "cause": [{"code": 2000, "description": "Payment not found"}]}"#;
        assert_eq!(
            err(404, missing, Call::Read),
            ProviderError::NotFound("Payment not found".into())
        );
        assert!(matches!(
            err(400, missing, Call::Write),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            err(404, "", Call::Read),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            err(500, "{}", Call::Write),
            ProviderError::Ambiguous(_)
        ));
        assert!(matches!(
            err(502, "bad gateway", Call::Read),
            ProviderError::Unavailable(_)
        ));
        assert_eq!(
            error_from_response(
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(3)),
                b"{}",
                Call::Write
            ),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }

    fn refund_status(status: &str) -> ProviderRefundStatus {
        let r: MpRefund = match serde_json::from_str(&refund_json(1, "10.5", status)) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        match r.into_provider(PAYMENT, brl(), Call::Read) {
            Ok(r) => r.status,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn refund_statuses_map() {
        assert_eq!(refund_status("approved"), ProviderRefundStatus::Succeeded);
        assert_eq!(refund_status("in_process"), ProviderRefundStatus::Pending);
        assert_eq!(refund_status("authorized"), ProviderRefundStatus::Pending);
        assert_eq!(refund_status("pending"), ProviderRefundStatus::Pending);
        assert_eq!(refund_status("cancelled"), ProviderRefundStatus::Canceled);
        assert_eq!(
            refund_status("something_new"),
            ProviderRefundStatus::Pending
        );
        assert_eq!(
            refund_status("rejected"),
            ProviderRefundStatus::Failed {
                code: "rejected".into(),
                reason: "Mercado Pago rejected the refund".into()
            }
        );
    }

    #[test]
    fn refund_ids_are_composite() {
        assert_eq!(
            split_refund_id("18552260055/1009042015").ok(),
            Some(("18552260055", "1009042015"))
        );
        for bad in [
            "",
            "1009042015",
            "/1",
            "1/",
            "a/1",
            "1/b",
            "1/2/3",
            "1 /2",
            "-1/2",
        ] {
            assert!(
                matches!(split_refund_id(bad), Err(ProviderError::NotFound(_))),
                "{bad:?} was accepted"
            );
        }
    }

    // --- against a mock server ---

    #[tokio::test]
    async fn get_payment_reads_an_approved_payment() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/payments/{PAYMENT}")))
            .and(bearer_token(TOKEN))
            .respond_with(json(200, payment_json("approved", "100.5", "0", "BRL", "")))
            .expect(1)
            .mount(&server)
            .await;
        let p = provider(&server.uri()).get_payment(&pref(PAYMENT)).await;
        assert_eq!(
            p,
            Ok(ProviderPayment {
                id: PAYMENT.into(),
                captured: 10_050,
                refunded: 0,
                currency: brl(),
                status: PaymentStatus::Captured,
            })
        );
    }

    #[tokio::test]
    async fn get_payment_reports_refunds_and_statuses() {
        let server = MockServer::start().await;
        let p = provider(&server.uri());
        let cases = [
            ("approved", "25.25", PaymentStatus::Captured, 2_525),
            // Fully refunded: refunded == captured, so the service answers ALREADY_REFUNDED.
            ("refunded", "100.5", PaymentStatus::Captured, 10_050),
            (
                "pending",
                "0",
                PaymentStatus::NotRefundable("pending".into()),
                0,
            ),
            (
                "charged_back",
                "0",
                PaymentStatus::NotRefundable("charged_back".into()),
                0,
            ),
            (
                "in_mediation",
                "0",
                PaymentStatus::NotRefundable("in_mediation".into()),
                0,
            ),
            (
                "authorized",
                "0",
                PaymentStatus::NotRefundable("authorized".into()),
                0,
            ),
            (
                "cancelled",
                "0",
                PaymentStatus::NotRefundable("cancelled".into()),
                0,
            ),
        ];
        for (status, refunded_text, expected, refunded) in cases {
            server.reset().await;
            Mock::given(method("GET"))
                .and(path(format!("/v1/payments/{PAYMENT}")))
                .respond_with(json(
                    200,
                    payment_json(status, "100.5", refunded_text, "BRL", ""),
                ))
                .mount(&server)
                .await;
            let got = p.get_payment(&pref(PAYMENT)).await;
            assert_eq!(
                got.as_ref().map(|p| (&p.status, p.captured, p.refunded)),
                Ok((&expected, 10_050, refunded)),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn get_payment_not_found_and_non_numeric_ids() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/payments/123"))
            .respond_with(json(
                404,
                r#"{"message": "Payment not found", "error": "not_found", "status": 404, "cause": [{"code": 2000, "description": "Payment not found", "data": null}]}"#,
            ))
            .expect(1)
            .mount(&server)
            .await;
        let p = provider(&server.uri());
        assert_eq!(
            p.get_payment(&pref("123")).await,
            Err(ProviderError::NotFound("Payment not found".into()))
        );
        // Not a Mercado Pago id: answered without a request (the mock expects exactly one).
        assert!(matches!(
            p.get_payment(&pref("ch_123")).await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(matches!(
            p.create_refund(&RefundCall {
                payment: pref("pi_1"),
                ..call(100, "BRL")
            })
            .await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(matches!(
            p.get_refund("pi_1/re_2").await,
            Err(ProviderError::NotFound(_))
        ));
        let sent = server.received_requests().await.map(|r| r.len());
        assert_eq!(sent, Some(1), "only the numeric id reached Mercado Pago");
    }

    #[tokio::test]
    async fn get_payment_with_an_inexact_amount_is_not_guessed() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(json(
                200,
                payment_json("approved", "100.505", "0", "BRL", ""),
            ))
            .mount(&server)
            .await;
        assert!(matches!(
            provider(&server.uri()).get_payment(&pref(PAYMENT)).await,
            Err(ProviderError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn create_refund_sends_the_exact_amount_and_the_idempotency_key() {
        let server = MockServer::start().await;
        let p = provider(&server.uri());
        // Partial: 10.50 of 100.50.
        Mock::given(method("POST"))
            .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
            .and(bearer_token(TOKEN))
            .and(header("X-Idempotency-Key", "rf_1"))
            .and(header("X-Render-In-Process-Refunds", "true"))
            .and(header("Content-Type", "application/json"))
            .and(body_string(r#"{"amount":10.50}"#))
            .respond_with(json(201, refund_json(1009042015, "10.5", "approved")))
            .expect(1)
            .mount(&server)
            .await;
        assert_eq!(
            p.create_refund(&call(1_050, "BRL")).await,
            Ok(ProviderRefund {
                id: format!("{PAYMENT}/1009042015"),
                amount: 1_050,
                status: ProviderRefundStatus::Succeeded,
            })
        );

        // Full: the whole 100.50, still stated explicitly.
        server.reset().await;
        Mock::given(method("POST"))
            .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
            .and(header("X-Idempotency-Key", "rf_1"))
            .and(body_string(r#"{"amount":100.50}"#))
            .respond_with(json(201, refund_json(1009042016, "100.5", "in_process")))
            .expect(1)
            .mount(&server)
            .await;
        assert_eq!(
            p.create_refund(&call(10_050, "BRL")).await,
            Ok(ProviderRefund {
                id: format!("{PAYMENT}/1009042016"),
                amount: 10_050,
                status: ProviderRefundStatus::Pending,
            })
        );
    }

    #[tokio::test]
    async fn clp_amounts_have_no_decimals() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/payments/{PAYMENT}")))
            .respond_with(json(
                200,
                payment_json("approved", "15000", "2500", "CLP", ""),
            ))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
            .and(body_string(r#"{"amount":5000}"#))
            .respond_with(json(201, refund_json(77, "5000", "approved")))
            .expect(1)
            .mount(&server)
            .await;
        let p = provider(&server.uri());
        let payment = p.get_payment(&pref(PAYMENT)).await;
        assert_eq!(
            payment
                .as_ref()
                .map(|p| (p.captured, p.refunded, p.currency.code())),
            Ok((15_000, 2_500, "CLP"))
        );
        let refund = p.create_refund(&call(5_000, "CLP")).await;
        assert_eq!(refund.map(|r| r.amount), Ok(5_000));
    }

    #[tokio::test]
    async fn create_refund_errors() {
        let server = MockServer::start().await;
        let p = provider(&server.uri());
        let refunds = format!("/v1/payments/{PAYMENT}/refunds");

        Mock::given(method("POST"))
            .and(path(refunds.as_str()))
            .respond_with(json(
                400,
                r#"{"message": "Invalid value for gateway_operation", "error": "bad_request", "status": 400, "cause": [{"code": 2085, "description": "Invalid value for gateway_operation"}]}"#,
            ))
            .mount(&server)
            .await;
        assert_eq!(
            p.create_refund(&call(1_050, "BRL")).await,
            Err(ProviderError::Rejected {
                code: "2085".into(),
                message: "Invalid value for gateway_operation".into()
            })
        );

        server.reset().await;
        Mock::given(method("POST"))
            .and(path(refunds.as_str()))
            .respond_with(
                json(429, r#"{"message": "too many requests", "error": "too_many_requests", "status": 429}"#)
                    .insert_header("Retry-After", "7"),
            )
            .mount(&server)
            .await;
        assert_eq!(
            p.create_refund(&call(1_050, "BRL")).await,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            })
        );

        // 5xx: ambiguous on the creation, plain unavailability on a read.
        server.reset().await;
        Mock::given(any_request())
            .respond_with(json(500, r#"{"message": "internal_error", "error": "internal_error", "status": 500, "cause": []}"#))
            .mount(&server)
            .await;
        assert!(matches!(
            p.create_refund(&call(1_050, "BRL")).await,
            Err(ProviderError::Ambiguous(_))
        ));
        assert!(matches!(
            p.get_payment(&pref(PAYMENT)).await,
            Err(ProviderError::Unavailable(_))
        ));

        // A garbled or inexact success on the creation: the refund may exist.
        for garbled in [
            "{\"id\": 1",
            "<html>ok</html>",
            &refund_json(1, "10.505", "approved"),
        ] {
            server.reset().await;
            Mock::given(method("POST"))
                .and(path(refunds.as_str()))
                .respond_with(json(201, garbled))
                .mount(&server)
                .await;
            assert!(
                matches!(
                    p.create_refund(&call(1_050, "BRL")).await,
                    Err(ProviderError::Ambiguous(_))
                ),
                "{garbled}"
            );
        }

        // No answer in time.
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(
                json(201, refund_json(1, "10.5", "approved")).set_delay(Duration::from_secs(2)),
            )
            .mount(&server)
            .await;
        let impatient = match MercadoPagoProvider::new(
            &server.uri(),
            Secret::opaque(TOKEN.into()),
            Duration::from_millis(200),
        ) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            impatient.create_refund(&call(1_050, "BRL")).await,
            Err(ProviderError::Timeout)
        );
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable_and_a_dropped_answer_ambiguous() {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        drop(listener);
        let p = provider(&format!("http://{addr}"));
        assert!(matches!(
            p.create_refund(&call(1_050, "BRL")).await,
            Err(ProviderError::Unavailable(_))
        ));

        // A server that reads the request and closes without answering.
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            panic!("bind");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("addr");
        };
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                drop(s);
            }
        });
        let p = provider(&format!("http://{addr}"));
        assert!(matches!(
            p.create_refund(&call(1_050, "BRL")).await,
            Err(ProviderError::Ambiguous(_))
        ));
    }

    #[tokio::test]
    async fn get_refund_splits_the_composite_id() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/payments/{PAYMENT}/refunds/1009042015")))
            .and(bearer_token(TOKEN))
            .and(header("X-Render-In-Process-Refunds", "true"))
            .respond_with(json(200, refund_json(1009042015, "10.5", "in_process")))
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/payments/{PAYMENT}")))
            .respond_with(json(
                200,
                payment_json("approved", "100.5", "10.5", "BRL", ""),
            ))
            .mount(&server)
            .await;
        let p = provider(&server.uri());
        assert_eq!(
            p.get_refund(&format!("{PAYMENT}/1009042015")).await,
            Ok(ProviderRefund {
                id: format!("{PAYMENT}/1009042015"),
                amount: 1_050,
                status: ProviderRefundStatus::Pending,
            })
        );
        // Malformed ids are answered without a request.
        assert!(matches!(
            p.get_refund("1009042015").await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(matches!(
            p.get_refund("re_1").await,
            Err(ProviderError::NotFound(_))
        ));
        // A refund of another payment is not taken for this one's.
        assert!(matches!(
            p.get_refund("999/1009042015").await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(
            provider(&server.uri())
                .get_refund(&format!("{PAYMENT}/1009042015"))
                .await
                .is_ok()
        );

        server.reset().await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/payments/{PAYMENT}/refunds/5")))
            .respond_with(json(
                404,
                r#"{"message": "Refund not found", "error": "not_found", "status": 404, "cause": [{"code": 2032, "description": "Refund not found"}]}"#,
            ))
            .mount(&server)
            .await;
        assert_eq!(
            p.get_refund(&format!("{PAYMENT}/5")).await,
            Err(ProviderError::NotFound("Refund not found".into()))
        );
    }

    #[tokio::test]
    async fn get_refund_checks_the_refund_belongs_to_the_payment() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/payments/42/refunds/1"))
            .respond_with(json(200, refund_json(1, "10.5", "approved")))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/payments/42"))
            .respond_with(json(
                200,
                payment_json("approved", "100.5", "10.5", "BRL", ""),
            ))
            .mount(&server)
            .await;
        assert!(matches!(
            provider(&server.uri()).get_refund("42/1").await,
            Err(ProviderError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn find_refund_answers_none_only_for_a_payment_without_refunds() {
        let server = MockServer::start().await;
        let p = provider(&server.uri());
        let list = format!("/v1/payments/{PAYMENT}/refunds");
        let payment = format!("/v1/payments/{PAYMENT}");

        // No refund anywhere: the creation never arrived.
        Mock::given(method("GET"))
            .and(path(list.as_str()))
            .and(header("X-Render-In-Process-Refunds", "true"))
            .respond_with(json(200, "[]"))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(payment.as_str()))
            .respond_with(json(200, payment_json("approved", "100.5", "0", "BRL", "")))
            .expect(1)
            .mount(&server)
            .await;
        assert_eq!(p.find_refund(&pref(PAYMENT), "rf_1").await, Ok(None));

        // Refunds that cannot be told apart: never guessed, never "none".
        server.reset().await;
        let two = format!(
            "[{}, {}]",
            refund_json(1, "10.5", "approved"),
            refund_json(2, "5", "in_process")
        );
        Mock::given(method("GET"))
            .and(path(list.as_str()))
            .respond_with(json(200, two))
            .mount(&server)
            .await;
        assert!(matches!(
            p.find_refund(&pref(PAYMENT), "rf_1").await,
            Err(ProviderError::Rejected { code, .. }) if code == "refund_not_identifiable"
        ));

        // An empty list that the payment contradicts is not "none" either.
        for (status, refunded, refunds) in [
            ("approved", "10.5", ""),
            ("approved", "0", refund_json(3, "10.5", "approved").as_str()),
            ("refunded", "0", ""),
        ] {
            server.reset().await;
            Mock::given(method("GET"))
                .and(path(list.as_str()))
                .respond_with(json(200, "[]"))
                .mount(&server)
                .await;
            Mock::given(method("GET"))
                .and(path(payment.as_str()))
                .respond_with(json(
                    200,
                    payment_json(status, "100.5", refunded, "BRL", refunds),
                ))
                .mount(&server)
                .await;
            assert!(
                matches!(
                    p.find_refund(&pref(PAYMENT), "rf_1").await,
                    Err(ProviderError::Rejected { code, .. }) if code == "refund_not_identifiable"
                ),
                "{status} {refunded} {refunds}"
            );
        }

        // Something that is not a list, or a read that fails, is not "none".
        server.reset().await;
        Mock::given(method("GET"))
            .and(path(list.as_str()))
            .respond_with(json(200, "{}"))
            .mount(&server)
            .await;
        assert!(matches!(
            p.find_refund(&pref(PAYMENT), "rf_1").await,
            Err(ProviderError::Unavailable(_))
        ));
        server.reset().await;
        Mock::given(method("GET"))
            .and(path(list.as_str()))
            .respond_with(json(200, "[]"))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(payment.as_str()))
            .respond_with(json(503, "{}"))
            .mount(&server)
            .await;
        assert!(matches!(
            p.find_refund(&pref(PAYMENT), "rf_1").await,
            Err(ProviderError::Unavailable(_))
        ));
        server.reset().await;
        Mock::given(method("GET"))
            .and(path(list.as_str()))
            .respond_with(json(
                404,
                r#"{"message": "Payment not found", "error": "not_found", "status": 404, "cause": [{"code": 2000, "description": "Payment not found"}]}"#,
            ))
            .mount(&server)
            .await;
        assert!(matches!(
            p.find_refund(&pref(PAYMENT), "rf_1").await,
            Err(ProviderError::NotFound(_))
        ));
    }

    #[test]
    fn api_base_must_be_a_url() {
        assert!(
            MercadoPagoProvider::new(
                "api.mercadopago.com",
                Secret::opaque("t".into()),
                Duration::from_secs(1)
            )
            .is_err()
        );
        assert!(
            MercadoPagoProvider::new(
                DEFAULT_API_BASE,
                Secret::opaque("t".into()),
                Duration::from_secs(1)
            )
            .is_ok()
        );
    }

    // --- webhook signatures ---

    const SECRET: &str = "your_secret_key_here";
    const REQUEST_ID: &str = "bb56a2f1-6aae-46ac-982e-9dcd3581d08e";
    // python3 -c 'import hmac,hashlib;print(hmac.new(b"your_secret_key_here",b"id:123456abc;request-id:bb56a2f1-6aae-46ac-982e-9dcd3581d08e;ts:1704908010;",hashlib.sha256).hexdigest())'
    const V1_FULL: &str = "206651f0ca80796b0b91222fd2d1e9015bbd416d3cd706b6e65c3bbea33f955a";
    // python3 -c 'import hmac,hashlib;print(hmac.new(b"your_secret_key_here",b"request-id:bb56a2f1-6aae-46ac-982e-9dcd3581d08e;ts:1704908010;",hashlib.sha256).hexdigest())'
    const V1_NO_ID: &str = "1e14733af285d181f3a4518f56aeaab5e8057184b4f937cab41d186aaa0f634a";
    // python3 -c 'import hmac,hashlib;print(hmac.new(b"your_secret_key_here",b"id:123456abc;request-id:bb56a2f1-6aae-46ac-982e-9dcd3581d08e;ts:1704908010123;",hashlib.sha256).hexdigest())'
    const V1_MILLIS: &str = "1c9e28026e56a5e6465565cee9e1b641dcd0125d8e5d6cc4ae6f5f019fc3549b";
    const TS: i64 = 1_704_908_010;
    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn a_known_signature_verifies() {
        let header = format!("ts={TS},v1={V1_FULL}");
        // data.id is lower-cased before signing.
        assert_eq!(
            verify_signature(
                &header,
                Some(REQUEST_ID),
                Some("123456ABC"),
                &[SECRET],
                TS + 10,
                FIVE_MIN
            ),
            Ok(())
        );
        // Spaces around parts, and the parts in another order.
        let header = format!(" v1={V1_FULL} , ts={TS} ");
        assert_eq!(
            verify_signature(
                &header,
                Some(REQUEST_ID),
                Some("123456abc"),
                &[SECRET],
                TS,
                FIVE_MIN
            ),
            Ok(())
        );
        // A missing data.id is left out of the manifest.
        let header = format!("ts={TS},v1={V1_NO_ID}");
        assert_eq!(
            verify_signature(&header, Some(REQUEST_ID), None, &[SECRET], TS, FIVE_MIN),
            Ok(())
        );
        assert_eq!(
            verify_signature(&header, Some(REQUEST_ID), Some(""), &[SECRET], TS, FIVE_MIN),
            Ok(())
        );
        // A timestamp in milliseconds, signed as sent.
        let header = format!("ts={}123,v1={V1_MILLIS}", TS);
        assert_eq!(
            verify_signature(
                &header,
                Some(REQUEST_ID),
                Some("123456abc"),
                &[SECRET],
                TS + 1,
                FIVE_MIN
            ),
            Ok(())
        );
    }

    #[test]
    fn rotated_secrets_are_all_tried() {
        let header = format!("ts={TS},v1={V1_FULL}");
        assert_eq!(
            verify_signature(
                &header,
                Some(REQUEST_ID),
                Some("123456abc"),
                &["new-secret", SECRET],
                TS,
                FIVE_MIN
            ),
            Ok(())
        );
        assert_eq!(
            verify_signature(
                &header,
                Some(REQUEST_ID),
                Some("123456abc"),
                &["new-secret"],
                TS,
                FIVE_MIN
            ),
            Err(SignatureError::NoMatchingSignature)
        );
        assert_eq!(
            verify_signature(
                &header,
                Some(REQUEST_ID),
                Some("123456abc"),
                &[],
                TS,
                FIVE_MIN
            ),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn tampering_and_staleness_are_refused() {
        let header = format!("ts={TS},v1={V1_FULL}");
        let check = |request_id: Option<&str>, data_id: Option<&str>, now: i64| {
            verify_signature(&header, request_id, data_id, &[SECRET], now, FIVE_MIN)
        };
        assert_eq!(
            check(Some(REQUEST_ID), Some("123456abd"), TS),
            Err(SignatureError::NoMatchingSignature)
        );
        assert_eq!(
            check(Some("other"), Some("123456abc"), TS),
            Err(SignatureError::NoMatchingSignature)
        );
        assert_eq!(
            check(None, Some("123456abc"), TS),
            Err(SignatureError::NoMatchingSignature)
        );
        // Another ts with the same v1.
        assert_eq!(
            verify_signature(
                &format!("ts={},v1={V1_FULL}", TS + 1),
                Some(REQUEST_ID),
                Some("123456abc"),
                &[SECRET],
                TS,
                FIVE_MIN
            ),
            Err(SignatureError::NoMatchingSignature)
        );
        assert_eq!(
            check(Some(REQUEST_ID), Some("123456abc"), TS + 301),
            Err(SignatureError::Stale {
                ts: TS,
                skew_secs: 301
            })
        );
        assert_eq!(
            check(Some(REQUEST_ID), Some("123456abc"), TS - 301),
            Err(SignatureError::Stale {
                ts: TS,
                skew_secs: 301
            })
        );
        assert_eq!(check(Some(REQUEST_ID), Some("123456abc"), TS + 300), Ok(()));
        assert!(matches!(
            check(Some(REQUEST_ID), Some("123456abc"), i64::MIN),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in [
            String::new(),
            "garbage".into(),
            format!("v1={V1_FULL}"),
            format!("ts={TS}"),
            format!("ts=,v1={V1_FULL}"),
            format!("ts=-1,v1={V1_FULL}"),
            format!("ts=12a,v1={V1_FULL}"),
            format!("ts=99999999999999999999,v1={V1_FULL}"),
            format!("ts={TS},ts={TS},v1={V1_FULL}"),
            format!("ts={TS},v1=zz"),
            format!("ts={TS},v1=abcd"),
            format!("ts={TS},v1={V1_FULL},junk"),
        ] {
            assert!(
                matches!(
                    verify_signature(
                        &header,
                        Some(REQUEST_ID),
                        Some("123456abc"),
                        &[SECRET],
                        TS,
                        FIVE_MIN
                    ),
                    Err(SignatureError::Malformed(_))
                ),
                "{header:?} was accepted"
            );
        }
    }

    proptest! {
        #[test]
        fn verification_never_panics(header in "\\PC{0,120}", request_id in proptest::option::of("\\PC{0,20}"), now in any::<i64>()) {
            let _ = verify_signature(&header, request_id.as_deref(), Some("1"), &[SECRET], now, FIVE_MIN);
        }
    }

    #[test]
    fn notifications_name_the_payment_and_others_are_ignored() {
        let event = parse_webhook(
            br#"{"id": 12345, "type": "payment", "action": "payment.updated", "data": {"id": "999"}}"#,
            Some("req-1"),
        )
        .expect("parses");
        assert_eq!(event.id, "12345");
        assert_eq!(event.kind, "payment.updated");
        assert_eq!(
            event.subject,
            EventSubject::Payment(PaymentRef::from_trusted("999".into()))
        );
        let other = parse_webhook(br#"{"type": "plan", "data": {"id": "x"}}"#, Some("req-2"))
            .expect("parses");
        assert_eq!(other.subject, EventSubject::Ignored);
        assert_eq!(
            other.id, "plan:x:req-2",
            "kind, resource and request id without an id"
        );
        assert!(parse_webhook(br#"{"type": "payment", "data": {"id": "abc"}}"#, None).is_err());
    }

    proptest! {
        #[test]
        fn notification_bodies_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            kind in "(payment|[a-z_]{0,12})",
            data_id in ".{0,30}",
        ) {
            let _ = parse_webhook(&bytes, None);
            let body = serde_json::json!({"type": kind, "data": {"id": data_id}});
            let _ = parse_webhook(body.to_string().as_bytes(), Some("r"));
        }
    }
}
