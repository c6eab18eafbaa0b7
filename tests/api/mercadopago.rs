//! The Mercado Pago provider end to end, against a local fake of its API (wiremock) answering
//! with the request and response shapes of Mercado Pago's API reference.

use std::time::Duration;

use hmac::{Hmac, KeyInit as _, Mac as _};
use refund_service::api::pb;
use refund_service::providers::registry::ProviderSettings;
use refund_service::providers::traffic::TrafficConfig;
use refund_service::secret::Secret;
use serde_json::json;
use sha2::Sha256;
use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, TestDb, spawn_app_with, status_history, status_of, unix_now};

const TOKEN: &str = "APP_USR-test-token";
const SECRET: &str = "mp-webhook-secret";
const PAYMENT: &str = "18552260055";

async fn spawn(db: &TestDb, api: &MockServer) -> TestApp {
    let settings = ProviderSettings {
        name: "mercadopago".to_owned(),
        api_base: api.uri(),
        credential: Secret::opaque(TOKEN.to_owned()),
        traffic: TrafficConfig {
            call_timeout: Duration::from_secs(5),
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..TrafficConfig::default()
        },
        webhook_secrets: vec![Secret::opaque(SECRET.to_owned())],
        extra: Default::default(),
    };
    spawn_app_with(db, move |s| {
        s.providers.push(settings);
        // Only a notification makes the reconciler look before an hour is up.
        s.refunds.reconcile_delay = Duration::from_secs(3600);
        s.refunds.reconcile_interval = Duration::from_millis(50);
    })
    .await
}

fn json_response(status: u16, body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/json")
}

/// `GET /v1/payments/{id}` for an approved BRL 100.50 payment, as the reference shows it.
async fn mount_payment(api: &MockServer) {
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(json_response(
            200,
            json!({
                "id": 18552260055u64,
                "status": "approved",
                "status_detail": "accredited",
                "currency_id": "BRL",
                "transaction_amount": 100.50,
                "transaction_amount_refunded": 0,
                "refunds": [],
            }),
        ))
        .mount(api)
        .await;
}

fn refund_body(status: &str) -> serde_json::Value {
    json!({
        "id": 1009042015u64,
        "payment_id": 18552260055u64,
        "amount": 40.25,
        "metadata": {},
        "source": {"id": "1003", "name": "Seller", "type": "collector"},
        "date_created": "2026-11-23T09:43:10.000-04:00",
        "unique_sequence_number": null,
        "refund_mode": "standard",
        "adjustment_amount": 0,
        "status": status,
        "reason": null,
        "labels": [],
        "amount_refunded_to_payer": 40.25,
        "partition_details": [],
    })
}

/// Mercado Pago's `x-signature` for a notification: HMAC-SHA256 over
/// `id:<data.id>;request-id:<x-request-id>;ts:<ts>;`.
fn mp_signature(secret: &str, data_id: &str, request_id: &str, ts: i64) -> String {
    let manifest = format!("id:{data_id};request-id:{request_id};ts:{ts};");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(manifest.as_bytes());
    format!("ts={ts},v1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn notify(app: &TestApp, signature: &str, data_id: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/webhooks/mercadopago?data.id={data_id}&type=payment",
            app.http_addr
        ))
        .header("x-signature", signature)
        .header("x-request-id", "req-7f3a")
        .header("Content-Type", "application/json")
        .body(
            json!({
                "id": 12345678,
                "live_mode": false,
                "type": "payment",
                "date_created": "2026-11-23T10:04:58.396-04:00",
                "user_id": 44444,
                "api_version": "v1",
                "action": "payment.updated",
                "data": {"id": data_id},
            })
            .to_string(),
        )
        .send()
        .await
        .expect("webhook endpoint answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_refund_in_process_settles_after_a_signed_payment_notification() {
    let api = MockServer::start().await;
    mount_payment(&api).await;
    // The creation: the exact decimal amount, our refund id as the idempotency key.
    Mock::given(method("POST"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
        .and(body_string(r#"{"amount":40.25}"#))
        .respond_with(json_response(201, refund_body("in_process")))
        .expect(1)
        .mount(&api)
        .await;
    let db = TestDb::new().await;
    let mut app = spawn(&db, &api).await;

    let r = app
        .client
        .create_refund(pb::CreateRefundRequest {
            payment_id: PAYMENT.into(),
            provider: "mercadopago".into(),
            amount: Some(4_025),
            currency: "BRL".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");
    assert_eq!(r.provider_refund_id, format!("{PAYMENT}/1009042015"));
    let sent = api.received_requests().await.unwrap_or_default();
    let create = sent
        .iter()
        .find(|req| req.method.as_str() == "POST")
        .expect("the creation reached Mercado Pago");
    assert_eq!(
        create
            .headers
            .get("x-idempotency-key")
            .and_then(|v| v.to_str().ok()),
        Some(r.id.as_str())
    );

    // Mercado Pago approves it and notifies: a forged notification changes nothing, a signed one
    // makes the service look the refund up at once.
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds/1009042015")))
        .respond_with(json_response(200, refund_body("approved")))
        .mount(&api)
        .await;
    let forged = mp_signature("not-the-secret", PAYMENT, "req-7f3a", unix_now());
    let (status, answer) = notify(&app, &forged, PAYMENT).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = notify(
        &app,
        &mp_signature(SECRET, PAYMENT, "req-7f3a", unix_now()),
        PAYMENT,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "NUDGED", "{answer}");

    let done = app
        .wait_for_status(&r.id, pb::RefundStatus::Succeeded)
        .await;
    assert_eq!(done.amount, 4_025);
    let history = status_history(&db, &r.id).await;
    assert_eq!(
        history
            .last()
            .map(|(_, to, source)| (to.as_str(), source.as_str())),
        Some(("succeeded", "reconciler")),
        "{history:?}"
    );
}

#[tokio::test]
async fn mercadopago_refusals_become_failed_refunds_with_its_cause_code() {
    let api = MockServer::start().await;
    mount_payment(&api).await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
        .respond_with(json_response(
            400,
            json!({
                "message": "Payment too old to be refunded",
                "error": "bad_request",
                "status": 400,
                "cause": [{"code": 2024, "description": "Payment too old to be refunded"}],
            }),
        ))
        .mount(&api)
        .await;
    let db = TestDb::new().await;
    let mut app = spawn(&db, &api).await;
    let r = app
        .client
        .create_refund(pb::CreateRefundRequest {
            payment_id: PAYMENT.into(),
            provider: "mercadopago".into(),
            amount: Some(1_000),
            currency: "BRL".into(),
            ..Default::default()
        })
        .await
        .expect("a rejection is a FAILED refund, not an RPC error")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Failed, "{r:?}");
    assert_eq!(r.failure_code, "payment_too_old_to_refund", "{r:?}");

    let providers = app
        .client
        .list_providers(pb::ListProvidersRequest {})
        .await
        .expect("list providers")
        .into_inner()
        .providers;
    let names: Vec<_> = providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["mercadopago", "sandbox"]);
    assert!(providers[0].webhooks_enabled && !providers[0].is_default);
}
