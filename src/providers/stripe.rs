//! Adapter for Stripe's refund API (<https://docs.stripe.com/api/refunds>): form-encoded requests,
//! `Authorization: Bearer <secret key>`, `Idempotency-Key` on creations, errors as
//! `{"error": {"type", "code", "message"}}`. Payments are charges (`ch_…`) or payment intents
//! (`pi_…`); our refund id travels as `metadata[refund_id]` so `find_refund` can find it again.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::http::Call;
use super::{
    Capabilities, EventSubject, PaymentStatus, Provider, ProviderError, ProviderPayment,
    ProviderRefund, ProviderRefundStatus, RefundCall, RefundUpdate, WebhookDelivery, WebhookEvent,
    WebhookRejection,
};
use crate::domain::{Currency, PaymentRef, RefundReason};
use crate::secret::Secret;

/// Stripe's API root.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// Stripe in the provider registry.
pub const SPEC: super::registry::ProviderSpec = super::registry::ProviderSpec {
    name: "stripe",
    title: "Stripe",
    env_prefix: "STRIPE",
    credential: "secret-key",
    default_api_base: DEFAULT_API_BASE,
    // Stripe allows 100 requests per second in live mode.
    default_rate_limit: 80,
    webhook_signing: "`whsec_…` secrets",
    extra: &[],
    build: |s| {
        StripeProvider::new(&s.api_base, s.credential.clone(), s.traffic.call_timeout)
            .map(|p| std::sync::Arc::new(p) as std::sync::Arc<dyn Provider>)
    },
};

pub struct StripeProvider {
    http: reqwest::Client,
    base: String,
    key: Secret,
}

impl StripeProvider {
    /// `api_base` is e.g. `https://api.stripe.com` (no `/v1`); `timeout` bounds one HTTP call.
    pub fn new(api_base: &str, key: Secret, timeout: Duration) -> Result<Self, String> {
        let base = super::http::api_base(api_base, "Stripe")?;
        let http = super::http::client(timeout)?;
        Ok(Self { http, base, key })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        form: Option<(String, &str)>,
        kind: Call,
    ) -> Result<T, ProviderError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.key.expose());
        if let Some((body, idempotency_key)) = form {
            req = req
                .header("Idempotency-Key", idempotency_key)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let body = super::http::exchange(req, |answer| {
            error_from_response(answer.status, answer.retry_after, answer.body, kind)
        })
        .await?;
        serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Ambiguous(format!("undecodable answer from Stripe: {e}")))
    }

    async fn get_charge(&self, id: &str) -> Result<Charge, ProviderError> {
        self.call(
            Method::GET,
            &format!("/v1/charges/{}", encode(id)),
            None,
            Call::Read,
        )
        .await
    }
}

/// The header of Stripe's webhook signature.
pub const SIGNATURE_HEADER: &str = "stripe-signature";

/// A Stripe-signed delivery (`<header>: t=…,v1=…`) with a Stripe-shaped event: Stripe's, and the
/// sandbox's, which signs and sends its events the same way under its own header.
pub(super) fn read_signed_event(
    delivery: &WebhookDelivery<'_>,
    header: &str,
) -> Result<WebhookEvent, WebhookRejection> {
    let signature = delivery.headers.get(header).and_then(|v| v.to_str().ok());
    super::signature::verify(
        signature,
        delivery.body,
        delivery.secrets,
        delivery.now_unix,
        delivery.tolerance,
    )?;
    parse_webhook(delivery.body).map_err(WebhookRejection::Unreadable)
}

#[async_trait]
impl Provider for StripeProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities::LOOKUPS
    }

    fn read_webhook(
        &self,
        delivery: &WebhookDelivery<'_>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        read_signed_event(delivery, SIGNATURE_HEADER)
    }

    async fn get_payment(&self, payment: &PaymentRef) -> Result<ProviderPayment, ProviderError> {
        let id = payment.as_str();
        if id.starts_with("pi_") {
            let pi: PaymentIntent = self
                .call(
                    Method::GET,
                    &format!("/v1/payment_intents/{}", encode(id)),
                    None,
                    Call::Read,
                )
                .await?;
            let charge = match pi.latest_charge {
                Some(ChargeRef::Id(charge)) => Some(self.get_charge(&charge).await?),
                Some(ChargeRef::Expanded(charge)) => Some(*charge),
                None => None,
            };
            let (charged, refunded) = match &charge {
                Some(c) => (c.amount_captured.unwrap_or(c.amount), c.amount_refunded),
                None => (0, 0),
            };
            let status = if pi.status == "succeeded" {
                PaymentStatus::Captured
            } else {
                PaymentStatus::NotRefundable(pi.status.clone())
            };
            Ok(ProviderPayment {
                id: pi.id,
                captured: pi.amount_received.unwrap_or(charged),
                refunded,
                currency: currency(&pi.currency)?,
                status,
            })
        } else {
            let ch = self.get_charge(id).await?;
            let captured = ch.captured.unwrap_or(true) && ch.paid.unwrap_or(true);
            let status = if ch.status == "succeeded" && captured {
                PaymentStatus::Captured
            } else if ch.status == "succeeded" {
                PaymentStatus::NotRefundable("uncaptured".to_owned())
            } else {
                PaymentStatus::NotRefundable(ch.status.clone())
            };
            Ok(ProviderPayment {
                captured: ch.amount_captured.unwrap_or(ch.amount),
                refunded: ch.amount_refunded,
                currency: currency(&ch.currency)?,
                status,
                id: ch.id,
            })
        }
    }

    async fn create_refund(&self, call: &RefundCall) -> Result<ProviderRefund, ProviderError> {
        let body = refund_form(call);
        let r: Refund = self
            .call(
                Method::POST,
                "/v1/refunds",
                Some((body, call.idempotency_key.as_str())),
                Call::Write,
            )
            .await?;
        Ok(r.into())
    }

    async fn get_refund(&self, provider_refund_id: &str) -> Result<ProviderRefund, ProviderError> {
        let r: Refund = self
            .call(
                Method::GET,
                &format!("/v1/refunds/{}", encode(provider_refund_id)),
                None,
                Call::Read,
            )
            .await?;
        Ok(r.into())
    }

    async fn find_refund(
        &self,
        payment: &PaymentRef,
        idempotency_key: &str,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let filter = format!("{}={}", payment_param(payment), encode(payment.as_str()));
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/refunds?{filter}&limit=100");
            if let Some(a) = &after {
                path.push_str(&format!("&starting_after={}", encode(a)));
            }
            let page: RefundList = self.call(Method::GET, &path, None, Call::Read).await?;
            let last = page.data.last().map(|r| r.id.clone());
            if let Some(found) = page
                .data
                .into_iter()
                .find(|r| r.metadata.get("refund_id").map(String::as_str) == Some(idempotency_key))
            {
                return Ok(Some(found.into()));
            }
            match (page.has_more, last) {
                (true, Some(last)) => after = Some(last),
                (true, None) | (false, _) => return Ok(None),
            }
        }
    }
}

/// The Stripe events that move refunds. Any other type is acknowledged and ignored.
pub const WEBHOOK_EVENTS: [&str; 4] = [
    "charge.refunded",
    "refund.created",
    "refund.updated",
    "refund.failed",
];

/// Reads a Stripe event (already verified against its `Stripe-Signature`). The `data.object` of
/// `refund.*` events is a refund; that of `charge.refunded` is the charge, whose `refunds` list
/// older API versions expand, and newer ones leave out (then the charge's refunds are looked up).
pub fn parse_webhook(body: &[u8]) -> Result<WebhookEvent, String> {
    #[derive(Deserialize)]
    struct Event {
        id: String,
        #[serde(rename = "type")]
        kind: String,
        data: EventData,
    }
    #[derive(Deserialize)]
    struct EventData {
        object: serde_json::Value,
    }
    #[derive(Deserialize)]
    struct ChargeObject {
        id: String,
        #[serde(default)]
        refunds: Option<RefundList>,
    }
    let event: Event =
        serde_json::from_slice(body).map_err(|e| format!("not a Stripe event: {e}"))?;
    let subject = match event.kind.as_str() {
        "refund.created" | "refund.updated" | "refund.failed" => {
            let refund: Refund = serde_json::from_value(event.data.object)
                .map_err(|e| format!("{}: data.object is not a refund: {e}", event.kind))?;
            EventSubject::Refunds(vec![refund.into_update()])
        }
        "charge.refunded" => {
            let charge: ChargeObject = serde_json::from_value(event.data.object)
                .map_err(|e| format!("charge.refunded: data.object is not a charge: {e}"))?;
            match charge.refunds {
                Some(list) if !list.has_more && !list.data.is_empty() => {
                    EventSubject::Refunds(list.data.into_iter().map(Refund::into_update).collect())
                }
                _ => EventSubject::Payment(PaymentRef::from_trusted(charge.id)),
            }
        }
        _ => EventSubject::Ignored,
    };
    Ok(WebhookEvent {
        id: event.id,
        kind: event.kind,
        subject,
    })
}

fn payment_param(payment: &PaymentRef) -> &'static str {
    if payment.as_str().starts_with("pi_") {
        "payment_intent"
    } else {
        "charge"
    }
}

/// The form body of `POST /v1/refunds`.
fn refund_form(call: &RefundCall) -> String {
    let mut fields: Vec<(String, String)> = vec![
        (
            payment_param(&call.payment).to_owned(),
            call.payment.as_str().to_owned(),
        ),
        ("amount".to_owned(), call.amount.minor_units().to_string()),
    ];
    let reason = match call.reason {
        RefundReason::Duplicate => Some("duplicate"),
        RefundReason::Fraudulent => Some("fraudulent"),
        RefundReason::RequestedByCustomer => Some("requested_by_customer"),
        RefundReason::Other | RefundReason::Unspecified => None,
    };
    if let Some(reason) = reason {
        fields.push(("reason".to_owned(), reason.to_owned()));
    }
    let mut metadata = call.metadata.clone();
    metadata.insert("refund_id".to_owned(), call.idempotency_key.clone());
    for (k, v) in metadata {
        fields.push((format!("metadata[{k}]"), v));
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for paths, queries and forms.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn currency(code: &str) -> Result<Currency, ProviderError> {
    Currency::parse(code)
        .map_err(|e| ProviderError::Ambiguous(format!("Stripe payment has a bad currency: {e}")))
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    error: StripeError,
}

#[derive(Debug, Default, Deserialize)]
struct StripeError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Classifies a non-2xx answer from Stripe.
fn error_from_response(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    kind: Call,
) -> ProviderError {
    let err = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_default();
    let message = err
        .message
        .clone()
        .unwrap_or_else(|| format!("Stripe answered {status}"));
    let code = err
        .code
        .clone()
        .or_else(|| err.kind.clone())
        .unwrap_or_else(|| format!("http_{}", status.as_u16()));
    match status.as_u16() {
        429 => ProviderError::RateLimited { retry_after },
        // A 5xx, 408, or 409 `idempotency_key_in_use` (our key is still being processed): Stripe
        // may have made, or may still make, the refund. Look it up before anything else.
        _ if super::http::is_inconclusive(status) => match kind {
            Call::Write => {
                ProviderError::Ambiguous(format!("Stripe answered {status}: {code}: {message}"))
            }
            Call::Read => {
                ProviderError::Unavailable(format!("Stripe answered {status}: {code}: {message}"))
            }
        },
        // The key was used before (with other parameters): a refund may exist under it.
        _ if kind == Call::Write && err.kind.as_deref() == Some("idempotency_error") => {
            ProviderError::Ambiguous(format!("Stripe answered {status}: {code}: {message}"))
        }
        404 => ProviderError::NotFound(message),
        _ if err.code.as_deref() == Some("resource_missing") => ProviderError::NotFound(message),
        401 => ProviderError::Rejected {
            code: "authentication_error".to_owned(),
            message,
        },
        403 => ProviderError::Rejected {
            code: "permission_error".to_owned(),
            message,
        },
        // 400, 402 and any other 4xx: Stripe said no, and did nothing.
        _ => ProviderError::Rejected { code, message },
    }
}

#[derive(Debug, Deserialize)]
struct Charge {
    id: String,
    amount: i64,
    #[serde(default)]
    amount_captured: Option<i64>,
    #[serde(default)]
    amount_refunded: i64,
    currency: String,
    #[serde(default)]
    captured: Option<bool>,
    #[serde(default)]
    paid: Option<bool>,
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ChargeRef {
    Id(String),
    Expanded(Box<Charge>),
}

#[derive(Debug, Deserialize)]
struct PaymentIntent {
    id: String,
    status: String,
    #[serde(default)]
    amount_received: Option<i64>,
    currency: String,
    #[serde(default)]
    latest_charge: Option<ChargeRef>,
}

#[derive(Debug, Deserialize)]
struct Refund {
    id: String,
    amount: i64,
    status: String,
    #[serde(default)]
    failure_reason: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    charge: Option<String>,
    #[serde(default)]
    payment_intent: Option<String>,
}

impl Refund {
    fn into_update(mut self) -> RefundUpdate {
        let refund_id = self.metadata.remove("refund_id");
        let payment = self
            .payment_intent
            .take()
            .or_else(|| self.charge.take())
            .map(PaymentRef::from_trusted);
        RefundUpdate {
            refund: self.into(),
            refund_id,
            payment,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RefundList {
    data: Vec<Refund>,
    #[serde(default)]
    has_more: bool,
}

impl From<Refund> for ProviderRefund {
    fn from(r: Refund) -> Self {
        let status = match r.status.as_str() {
            "succeeded" => ProviderRefundStatus::Succeeded,
            "canceled" => ProviderRefundStatus::Canceled,
            "failed" => ProviderRefundStatus::Failed {
                code: r
                    .failure_reason
                    .clone()
                    .unwrap_or_else(|| "failed".to_owned()),
                reason: r
                    .failure_reason
                    .clone()
                    .unwrap_or_else(|| "the refund failed at Stripe".to_owned()),
            },
            // "pending", "requires_action", and any status Stripe adds later: not final yet.
            _ => ProviderRefundStatus::Pending,
        };
        ProviderRefund {
            id: r.id,
            amount: r.amount,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, body: &str, kind: Call) -> ProviderError {
        error_from_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            None,
            body.as_bytes(),
            kind,
        )
    }

    #[test]
    fn stripe_errors_are_classified() {
        let missing = r#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such charge: 'ch_x'"}}"#;
        assert_eq!(
            err(404, missing, Call::Read),
            ProviderError::NotFound("No such charge: 'ch_x'".into())
        );
        assert!(matches!(
            err(400, missing, Call::Read),
            ProviderError::NotFound(_)
        ));
        let refunded = r#"{"error":{"type":"invalid_request_error","code":"charge_already_refunded","message":"already"}}"#;
        assert_eq!(
            err(400, refunded, Call::Write),
            ProviderError::Rejected {
                code: "charge_already_refunded".into(),
                message: "already".into()
            }
        );
        let card = r#"{"error":{"type":"card_error","message":"declined"}}"#;
        assert_eq!(
            err(402, card, Call::Write),
            ProviderError::Rejected {
                code: "card_error".into(),
                message: "declined".into()
            }
        );
        assert!(matches!(
            err(401, "{}", Call::Read),
            ProviderError::Rejected { code, .. } if code == "authentication_error"
        ));
        assert!(matches!(
            err(403, "not json", Call::Read),
            ProviderError::Rejected { code, .. } if code == "permission_error"
        ));
        assert!(matches!(
            err(500, "{}", Call::Write),
            ProviderError::Ambiguous(_)
        ));
        assert!(matches!(
            err(503, "{}", Call::Read),
            ProviderError::Unavailable(_)
        ));
        assert_eq!(
            error_from_response(
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(2)),
                b"{}",
                Call::Write
            ),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            }
        );
    }

    /// Stripe answers 409 `idempotency_key_in_use` while a request with the same key is still
    /// being processed (exactly what follows our own timed-out attempt), and 400
    /// `idempotency_error` when the key was used before: neither proves the refund was not made.
    #[test]
    fn a_409_or_an_idempotency_error_on_a_creation_is_ambiguous_never_a_refusal() {
        let in_use = r#"{"error":{"type":"invalid_request_error","code":"idempotency_key_in_use","message":"There is currently another in-progress request using this idempotent key."}}"#;
        assert!(matches!(
            err(409, in_use, Call::Write),
            ProviderError::Ambiguous(_)
        ));
        let reused = r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#;
        assert!(matches!(
            err(400, reused, Call::Write),
            ProviderError::Ambiguous(_)
        ));
        assert!(matches!(
            err(408, "{}", Call::Write),
            ProviderError::Ambiguous(_)
        ));
        // A read changes nothing: a conflict there is only a reason to try again.
        assert!(matches!(
            err(409, in_use, Call::Read),
            ProviderError::Unavailable(_)
        ));
    }

    #[test]
    fn refund_statuses_map() {
        let r = |status: &str, failure: Option<&str>| {
            ProviderRefund::from(Refund {
                id: "re_1".into(),
                amount: 5,
                status: status.into(),
                failure_reason: failure.map(str::to_owned),
                metadata: Default::default(),
                charge: None,
                payment_intent: None,
            })
            .status
        };
        assert_eq!(r("pending", None), ProviderRefundStatus::Pending);
        assert_eq!(r("requires_action", None), ProviderRefundStatus::Pending);
        assert_eq!(r("succeeded", None), ProviderRefundStatus::Succeeded);
        assert_eq!(r("canceled", None), ProviderRefundStatus::Canceled);
        assert!(matches!(
            r("failed", Some("expired_or_canceled_card")),
            ProviderRefundStatus::Failed { code, .. } if code == "expired_or_canceled_card"
        ));
        assert!(matches!(
            r("failed", None),
            ProviderRefundStatus::Failed { code, .. } if code == "failed"
        ));
    }

    #[test]
    fn form_and_encoding() {
        assert_eq!(encode("a b&c=d[é]"), "a%20b%26c%3Dd%5B%C3%A9%5D");
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable_and_a_dropped_answer_ambiguous() {
        // A port nobody listens on: connect fails before anything is sent.
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        drop(listener);
        let Ok(p) = StripeProvider::new(
            &format!("http://{addr}"),
            Secret::opaque("sk_test_x".into()),
            Duration::from_secs(5),
        ) else {
            panic!("client");
        };
        let Ok(id) = PaymentRef::parse("ch_1") else {
            panic!("ref");
        };
        assert!(matches!(
            p.get_payment(&id).await,
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
        let Ok(p) = StripeProvider::new(
            &format!("http://{addr}"),
            Secret::opaque("sk_test_x".into()),
            Duration::from_secs(5),
        ) else {
            panic!("client");
        };
        assert!(matches!(
            p.get_refund("re_1").await,
            Err(ProviderError::Ambiguous(_))
        ));
    }

    #[test]
    fn webhook_refund_events_carry_the_refund_and_our_id() {
        let body = br#"{"id":"evt_1","object":"event","type":"refund.failed","data":{"object":
            {"id":"re_1","object":"refund","amount":700,"charge":"ch_1","payment_intent":null,
             "status":"failed","failure_reason":"expired_or_canceled_card",
             "metadata":{"refund_id":"rf_x","order":"42"}}}}"#;
        let event = parse_webhook(body).expect("parses");
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.kind, "refund.failed");
        let EventSubject::Refunds(updates) = event.subject else {
            panic!("a refund event: {event:?}")
        };
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].refund_id.as_deref(), Some("rf_x"));
        assert_eq!(
            updates[0].payment.as_ref().map(|p| p.as_str()),
            Some("ch_1")
        );
        assert_eq!(updates[0].refund.amount, 700);
        assert!(matches!(
            updates[0].refund.status,
            ProviderRefundStatus::Failed { ref code, .. } if code == "expired_or_canceled_card"
        ));
    }

    #[test]
    fn webhook_charge_refunded_without_expanded_refunds_names_the_charge() {
        let body = br#"{"id":"evt_2","type":"charge.refunded","data":{"object":
            {"id":"ch_9","object":"charge","amount":1000,"amount_refunded":1000}}}"#;
        let event = parse_webhook(body).expect("parses");
        assert_eq!(
            event.subject,
            EventSubject::Payment(PaymentRef::from_trusted("ch_9".into()))
        );
        let expanded = br#"{"id":"evt_3","type":"charge.refunded","data":{"object":
            {"id":"ch_9","refunds":{"object":"list","has_more":false,"data":[
              {"id":"re_a","amount":400,"status":"succeeded","charge":"ch_9","metadata":{}},
              {"id":"re_b","amount":600,"status":"pending","charge":"ch_9","metadata":{}}]}}}}"#;
        let EventSubject::Refunds(updates) = parse_webhook(expanded).expect("parses").subject
        else {
            panic!("refunds")
        };
        assert_eq!(updates.len(), 2);
    }

    #[test]
    fn webhook_other_types_are_ignored_and_garbage_is_an_error() {
        let body = br#"{"id":"evt_4","type":"customer.created","data":{"object":{"id":"cus_1"}}}"#;
        assert_eq!(
            parse_webhook(body).expect("parses").subject,
            EventSubject::Ignored
        );
        assert!(parse_webhook(b"not json").is_err());
        assert!(
            parse_webhook(br#"{"id":"evt_5","type":"refund.updated","data":{"object":{}}}"#)
                .is_err()
        );
    }

    proptest::proptest! {
        /// Signed bodies are read defensively too: any bytes, and event-shaped JSON with random
        /// values, give an event or an error, never a panic.
        #[test]
        fn webhook_bodies_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            kind in "(refund\\.(created|updated|failed)|charge\\.refunded|[a-z.]{0,20})",
            id in ".{0,40}",
            status in ".{0,12}",
            amount in proptest::prelude::any::<i64>(),
        ) {
            let _ = parse_webhook(&bytes);
            let body = serde_json::json!({
                "id": id, "type": kind,
                "data": {"object": {"id": "re_1", "amount": amount, "status": status,
                                    "refunds": {"data": [], "has_more": false}}},
            });
            let _ = parse_webhook(body.to_string().as_bytes());
        }
    }
}
