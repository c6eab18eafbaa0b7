//! The Stripe provider against localstripe (PyPI `localstripe`, a fake Stripe API), started once
//! per test binary run on a free loopback port. localstripe is loose: it does not check
//! over-refunds, ignores `Idempotency-Key`, and makes every refund `succeeded` at once — so these
//! tests check that OUR guards hold, and count the refunds localstripe actually made.
//!
//! localstripe 1.15 refuses any `reason` field on refunds ("Unexpected reason"), so these tests
//! send REFUND_REASON_UNSPECIFIED, for which the adapter sends no reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use refund_service::api::pb;
use refund_service::providers::registry::ProviderSettings;
use refund_service::providers::traffic::TrafficConfig;
use refund_service::secret::Secret;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

use crate::helpers::*;

/// localstripe accepts any `sk_…` key.
const KEY: &str = "sk_test_localstripe";
/// The webhook signing secret the Stripe tests configure.
const WEBHOOK_SECRET: &str = "whsec_localstripe_test";

/// The base URL of this run's localstripe, started on first use. Fails the test (never skips)
/// when it cannot be started.
pub(crate) fn localstripe() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| start_localstripe().unwrap_or_else(|e| panic!("{e}")))
}

pub(crate) fn start_localstripe() -> Result<String, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".tools/venv/bin/python");
    let has_it = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import localstripe, stripe"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_it(&python) {
        let status = Command::new(root.join("scripts/install-tools.sh"))
            .arg("localstripe")
            .status()
            .map_err(|e| format!("cannot run scripts/install-tools.sh localstripe: {e}"))?;
        if !status.success() || !has_it(&python) {
            return Err(
                "localstripe and Stripe's Python library are needed for the Stripe tests and \
                 `scripts/install-tools.sh localstripe` could not install them into .tools/venv"
                    .into(),
            );
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port for localstripe: {e}"))?
        .port();
    // Loopback only; exits by itself when this test process (its parent) is gone.
    let script = r#"
import os, sys, threading, time
from aiohttp import web
from localstripe.server import app
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"#;
    Command::new(&python)
        .args(["-c", script, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start localstripe: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..200 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(format!("http://{addr}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("localstripe did not start listening on {addr}"))
}

/// Calls localstripe's API directly (to make payments and count refunds).
async fn stripe_api(method: reqwest::Method, path: &str, form: &str) -> serde_json::Value {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .request(method, format!("{}{path}", localstripe()))
        .bearer_auth(KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .expect("localstripe answers");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("JSON from localstripe");
    assert!(status.is_success(), "localstripe {path}: {status} {body}");
    body
}

pub(crate) async fn new_charge(amount: i64) -> String {
    let c = stripe_api(
        reqwest::Method::POST,
        "/v1/charges",
        &format!("amount={amount}&currency=usd&source=pm_card_visa"),
    )
    .await;
    c["id"].as_str().expect("charge id").to_owned()
}

async fn new_payment_intent(amount: i64) -> String {
    let pi = stripe_api(
        reqwest::Method::POST,
        "/v1/payment_intents",
        &format!("amount={amount}&currency=usd&payment_method=pm_card_visa&confirm=true"),
    )
    .await;
    assert_eq!(pi["status"], "succeeded", "{pi}");
    pi["id"].as_str().expect("payment intent id").to_owned()
}

/// The refunds localstripe made for a charge or payment intent.
async fn stripe_refunds(payment: &str) -> Vec<serde_json::Value> {
    let param = if payment.starts_with("pi_") {
        "payment_intent"
    } else {
        "charge"
    };
    let list = stripe_api(
        reqwest::Method::GET,
        &format!("/v1/refunds?{param}={payment}&limit=100"),
        "",
    )
    .await;
    list["data"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn stripe_settings(api_base: &str) -> ProviderSettings {
    ProviderSettings {
        name: "stripe".to_owned(),
        api_base: api_base.to_owned(),
        credential: Secret::opaque(KEY.to_owned()),
        traffic: TrafficConfig {
            call_timeout: Duration::from_secs(5),
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..TrafficConfig::default()
        },
        webhook_secrets: vec![Secret::opaque(WEBHOOK_SECRET.to_owned())],
        extra: Default::default(),
    }
}

async fn spawn_stripe_app(api_base: &str) -> (TestApp, TestDb) {
    let db = TestDb::new().await;
    let settings = stripe_settings(api_base);
    let app = spawn_app_with(&db, move |s| {
        s.providers.push(settings);
        s.refunds.reconcile_delay = Duration::from_millis(200);
        s.refunds.reconcile_interval = Duration::from_millis(50);
    })
    .await;
    (app, db)
}

pub(crate) fn stripe_request(payment: &str, amount: Option<i64>) -> pb::CreateRefundRequest {
    pb::CreateRefundRequest {
        provider: "stripe".into(),
        // See the module comment: localstripe refuses any reason.
        reason: pb::RefundReason::Unspecified.into(),
        ..refund_request(payment, amount, "USD")
    }
}

#[tokio::test]
async fn full_refund_of_a_charge() {
    let (mut app, _db) = spawn_stripe_app(localstripe()).await;
    let charge = new_charge(5_000).await;

    let r = app
        .client
        .create_refund(stripe_request(&charge, None))
        .await
        .expect("refund")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Succeeded, "{r:?}");
    assert_eq!(r.amount, 5_000);
    assert_eq!(r.provider, "stripe");
    assert!(r.provider_refund_id.starts_with("re_"), "{r:?}");

    let refunds = stripe_refunds(&charge).await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["amount"], 5_000);
    assert_eq!(refunds[0]["metadata"]["refund_id"], r.id.as_str());

    let err = app
        .client
        .create_refund(stripe_request(&charge, Some(1)))
        .await
        .expect_err("nothing left");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err), "ALREADY_REFUNDED");
}

#[tokio::test]
async fn partial_refund_of_a_charge() {
    let (mut app, _db) = spawn_stripe_app(localstripe()).await;
    let charge = new_charge(10_000).await;

    let r = app
        .client
        .create_refund(stripe_request(&charge, Some(2_500)))
        .await
        .expect("refund")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Succeeded, "{r:?}");
    assert_eq!(r.amount, 2_500);
    let refunds = stripe_refunds(&charge).await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["amount"], 2_500);
}

#[tokio::test]
async fn refund_of_a_payment_intent() {
    let (mut app, _db) = spawn_stripe_app(localstripe()).await;
    let pi = new_payment_intent(3_000).await;

    let r = app
        .client
        .create_refund(stripe_request(&pi, Some(1_000)))
        .await
        .expect("refund")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Succeeded, "{r:?}");
    let rest = app
        .client
        .create_refund(stripe_request(&pi, None))
        .await
        .expect("refund the rest")
        .into_inner();
    assert_eq!(rest.amount, 2_000);
    let refunds = stripe_refunds(&pi).await;
    assert_eq!(
        refunds
            .iter()
            .filter_map(|r| r["amount"].as_i64())
            .sum::<i64>(),
        3_000
    );
}

#[tokio::test]
async fn unknown_charge_is_not_found() {
    let (mut app, _db) = spawn_stripe_app(localstripe()).await;
    let err = app
        .client
        .create_refund(stripe_request("ch_doesnotexist", Some(100)))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn over_refund_is_stopped_by_our_guard_not_by_stripe() {
    let (mut app, _db) = spawn_stripe_app(localstripe()).await;
    let charge = new_charge(10_000).await;

    app.client
        .create_refund(stripe_request(&charge, Some(6_000)))
        .await
        .expect("first 60%");
    // localstripe would accept this one.
    let err = app
        .client
        .create_refund(stripe_request(&charge, Some(6_000)))
        .await
        .expect_err("second 60%");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err), "OVER_REFUND");
    assert_eq!(stripe_refunds(&charge).await.len(), 1);
}

#[tokio::test]
async fn a_dropped_answer_does_not_refund_twice() {
    let proxy = FaultProxy::start(localstripe()).await;
    let (mut app, _db) = spawn_stripe_app(&proxy.base).await;
    let charge = new_charge(4_000).await;

    let r = app
        .client
        .create_refund(stripe_request(&charge, Some(4_000)))
        .await
        .expect("refund")
        .into_inner();
    assert!(
        proxy.tripped.load(Ordering::SeqCst),
        "the fault was injected"
    );
    let id = r.id.clone();
    let done = app.wait_for_status(&id, pb::RefundStatus::Succeeded).await;
    assert!(done.provider_refund_id.starts_with("re_"), "{done:?}");
    let refunds = stripe_refunds(&charge).await;
    assert_eq!(
        refunds.len(),
        1,
        "exactly one refund at Stripe: {refunds:?}"
    );
}

/// Runs Python with Stripe's own library (installed beside localstripe) on `script`.
fn stripe_python(script: &str, args: &[&str]) -> std::process::Output {
    localstripe(); // makes sure the venv has the library
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run Python with Stripe's library")
}

/// A `Stripe-Signature` header made by Stripe's Python library, for `payload` at time `t`.
fn stripe_lib_signature(payload: &str, secret: &str, t: i64) -> String {
    let out = stripe_python(
        "import sys, stripe\n\
         t, payload, secret = sys.argv[1], sys.argv[2], sys.argv[3]\n\
         sig = stripe.WebhookSignature._compute_signature(t + '.' + payload, secret)\n\
         print(f't={t},v1={sig}')",
        &[&t.to_string(), payload, secret],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn our_signatures_verify_with_stripes_own_library() {
    let payload = r#"{"id":"evt_1","type":"refund.updated"}"#;
    let ours =
        refund_service::providers::signature::sign(WEBHOOK_SECRET, unix_now(), payload.as_bytes());
    let out = stripe_python(
        "import sys, stripe\n\
         stripe.WebhookSignature.verify_header(sys.argv[1], sys.argv[2], sys.argv[3], 300)",
        &[payload, &ours, WEBHOOK_SECRET],
    );
    assert!(
        out.status.success(),
        "Stripe's library refused {ours}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stripe_lib_signature(payload, WEBHOOK_SECRET, 1_700_000_000),
        refund_service::providers::signature::sign(
            WEBHOOK_SECRET,
            1_700_000_000,
            payload.as_bytes()
        )
    );
}

#[tokio::test]
async fn a_stripe_signed_refund_event_settles_a_refund_left_pending() {
    let proxy = FaultProxy::start(localstripe()).await;
    let db = TestDb::new().await;
    let mut settings = stripe_settings(&proxy.base);
    // No look-up within the call either: the refund stays PENDING after the dropped answer.
    settings.traffic.max_attempts = 1;
    let mut app = spawn_app_with(&db, move |s| {
        s.providers.push(settings);
        // Nothing but the webhook may settle it within the test.
        s.refunds.reconcile_delay = Duration::from_secs(3600);
    })
    .await;
    let charge = new_charge(3_000).await;
    let r = app
        .client
        .create_refund(stripe_request(&charge, Some(1_200)))
        .await
        .expect("refund")
        .into_inner();
    assert!(
        proxy.tripped.load(Ordering::SeqCst),
        "the answer was dropped"
    );
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");

    // The event Stripe sends, with the refund as localstripe made it.
    let refunds = stripe_refunds(&charge).await;
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["metadata"]["refund_id"], r.id.as_str());
    let event = serde_json::json!({
        "id": "evt_1QdXyZ",
        "object": "event",
        "api_version": "2024-06-20",
        "type": "refund.updated",
        "data": {"object": refunds[0]},
    })
    .to_string();
    let http_addr = app.http_addr;
    let post = |header: String, body: String| async move {
        let resp = reqwest::Client::new()
            .post(format!("http://{http_addr}/webhooks/stripe"))
            .header("stripe-signature", header)
            .body(body)
            .send()
            .await
            .expect("webhook endpoint answers");
        let status = resp.status().as_u16();
        (
            status,
            resp.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    };
    let now = unix_now();
    let (status, answer) = post(
        stripe_lib_signature(&event, WEBHOOK_SECRET, now - 400),
        event.clone(),
    )
    .await;
    assert_eq!(status, 400, "stale: {answer}");
    let tampered = event.replace("1200", "3000");
    let (status, answer) = post(stripe_lib_signature(&event, WEBHOOK_SECRET, now), tampered).await;
    assert_eq!(status, 400, "tampered: {answer}");
    let (status, answer) = post(
        stripe_lib_signature(&event, "whsec_other", now),
        event.clone(),
    )
    .await;
    assert_eq!(status, 400, "wrong secret: {answer}");
    let still = app
        .client
        .get_refund(pb::GetRefundRequest { id: r.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        status_of(&still),
        pb::RefundStatus::Pending,
        "nothing changed"
    );

    let (status, answer) = post(
        stripe_lib_signature(&event, WEBHOOK_SECRET, now),
        event.clone(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "APPLIED", "{answer}");
    let done = app
        .client
        .get_refund(pb::GetRefundRequest { id: r.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(status_of(&done), pb::RefundStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.provider_refund_id,
        refunds[0]["id"].as_str().unwrap_or_default()
    );
    let history = status_history(&db, &r.id).await;
    assert_eq!(
        history
            .last()
            .map(|(_, to, source)| (to.as_str(), source.as_str())),
        Some(("succeeded", "webhook")),
        "{history:?}"
    );
}

/// An HTTP/1.1 proxy to localstripe that forwards the first `POST /v1/refunds`, reads its answer,
/// and then drops the client's connection without answering.
struct FaultProxy {
    base: String,
    tripped: Arc<AtomicBool>,
}

impl FaultProxy {
    async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let tripped = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let flag = tripped.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(proxy_connection(conn, upstream.clone(), flag.clone()));
            }
        });
        Self {
            base: format!("http://{addr}"),
            tripped,
        }
    }
}

async fn proxy_connection(conn: TcpStream, upstream: String, tripped: Arc<AtomicBool>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        match read.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match read.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if !name.eq_ignore_ascii_case("host")
                    && !name.eq_ignore_ascii_case("connection")
                {
                    headers.push((name, value));
                }
            }
        }
        let mut body = vec![0u8; length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut req = http.request(
            method.parse().unwrap_or(reqwest::Method::GET),
            format!("{upstream}{path}"),
        );
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let Ok(resp) = req.body(body).send().await else {
            return;
        };
        let status = resp.status();
        let Ok(answer) = resp.bytes().await else {
            return;
        };
        if method == "POST"
            && path.starts_with("/v1/refunds")
            && !tripped.swap(true, Ordering::SeqCst)
        {
            // Processed upstream, answer lost.
            return;
        }
        let head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            answer.len()
        );
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(&answer).await.is_err()
        {
            return;
        }
    }
}

/// Defect: Stripe's 409 `idempotency_key_in_use` (a request with our key is still being
/// processed, e.g. our own first attempt) was taken for a refusal, so the refund was stored
/// FAILED and its amount released while Stripe went on to make it. A fake Stripe (wiremock)
/// answers every creation 409 and shows no refund on look-up: the refund must stay PENDING with
/// its amount reserved, and the rest of the payment must not be refundable twice.
#[tokio::test]
async fn a_409_in_progress_leaves_the_refund_pending_and_its_amount_reserved() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let api = MockServer::start().await;
    let json = |status: u16, body: serde_json::Value| {
        ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/json")
    };
    Mock::given(method("GET"))
        .and(path("/v1/charges/ch_409"))
        .respond_with(json(
            200,
            serde_json::json!({"id": "ch_409", "object": "charge", "amount": 5000,
                "amount_captured": 5000, "amount_refunded": 0, "currency": "usd",
                "captured": true, "paid": true, "status": "succeeded"}),
        ))
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/refunds"))
        .respond_with(json(
            409,
            serde_json::json!({"error": {"type": "invalid_request_error",
                "code": "idempotency_key_in_use",
                "message": "There is currently another in-progress request using this idempotent key."}}),
        ))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/refunds"))
        .respond_with(json(
            200,
            serde_json::json!({"object": "list", "data": [], "has_more": false}),
        ))
        .mount(&api)
        .await;
    let db = TestDb::new().await;
    let settings = stripe_settings(&api.uri());
    let mut app = spawn_app_with(&db, move |s| {
        s.providers.push(settings);
        // Keep the reconciler away: this is about the request path's own answer.
        s.refunds.reconcile_delay = Duration::from_secs(3600);
    })
    .await;

    let r = app
        .client
        .create_refund(stripe_request("ch_409", Some(5_000)))
        .await
        .expect("the refund is accepted")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");
    assert_eq!(reserved_amount(&db, "ch_409").await, 5_000);
    let again = app
        .client
        .create_refund(stripe_request("ch_409", None))
        .await
        .expect_err("nothing is left to refund");
    assert_eq!(error_reason(&again), "ALREADY_REFUNDED", "{again:?}");
}

/// Defect: the pre-flight computed `captured - refunded` from the provider's numbers without
/// checking them, so an answer out of range overflowed (a panic in debug builds, a wrapped
/// balance in release). Such an answer is unusable: UNAVAILABLE, and nothing is stored or sent.
#[tokio::test]
async fn provider_amounts_out_of_range_are_refused_not_overflowed() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let api = MockServer::start().await;
    for (id, captured, refunded) in [("ch_over", i64::MAX, -1), ("ch_neg", -5, 0)] {
        Mock::given(method("GET"))
            .and(path(format!("/v1/charges/{id}")))
            .respond_with(
                ResponseTemplate::new(200).set_body_raw(
                    serde_json::json!({"id": id, "object": "charge", "amount": captured,
                    "amount_captured": captured, "amount_refunded": refunded,
                    "currency": "usd", "captured": true, "paid": true, "status": "succeeded"})
                    .to_string(),
                    "application/json",
                ),
            )
            .mount(&api)
            .await;
    }
    let db = TestDb::new().await;
    let settings = stripe_settings(&api.uri());
    let mut app = spawn_app_with(&db, move |s| s.providers.push(settings)).await;

    for id in ["ch_over", "ch_neg"] {
        let err = app
            .client
            .create_refund(stripe_request(id, Some(100)))
            .await
            .expect_err("unusable amounts");
        assert_eq!(err.code(), Code::Unavailable, "{id}: {err:?}");
    }
    let posted = api
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method == wiremock::http::Method::POST)
        .count();
    assert_eq!(posted, 0, "nothing was sent");
}

/// A batch refunding through two providers: while the sandbox is down its jobs are held, and
/// Stripe's run on; once the sandbox answers again its jobs run too, and none fails.
#[tokio::test]
async fn a_provider_outage_holds_only_that_providers_jobs() {
    use pb::bulk_refund_event::Event;
    use tokio_stream::StreamExt as _;

    let db = TestDb::new().await;
    let settings = stripe_settings(localstripe());
    let mut app = spawn_app_with(&db, move |s| {
        s.providers.push(settings);
        s.sandbox_traffic.breaker_open_for = Duration::from_secs(1);
    })
    .await;
    let sandbox_payments = app.seed_many(6, 1_000).await;
    let mut charges = Vec::new();
    for _ in 0..6 {
        charges.push(new_charge(1_000).await);
    }
    app.sandbox
        .set_faults(&refund_service::sandbox::FaultConfig {
            error_rate: 1.0,
            ..Default::default()
        })
        .await
        .expect("sandbox down");
    // Sandbox jobs first, so that Stripe's come after the sandbox went into its wait.
    let jobs = sandbox_payments
        .iter()
        .map(|p| refund_request(p, None, "USD"))
        .chain(charges.iter().map(|c| stripe_request(c, None)))
        .collect();
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs,
            max_concurrency: 2,
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    let mut events = Vec::new();
    let mut stripe_done = 0;
    while let Some(event) = stream.next().await {
        let event = event.expect("event");
        if let Some(Event::Result(r)) = &event.event
            && r.provider == "stripe"
        {
            assert_eq!(r.status(), pb::BulkItemStatus::Succeeded, "{r:?}");
            stripe_done += 1;
            if stripe_done == charges.len() {
                // Every Stripe job ran during the sandbox's outage; now it comes back.
                app.sandbox
                    .set_faults(&Default::default())
                    .await
                    .expect("sandbox up");
            }
        }
        events.push(event);
    }
    let position = |want: &dyn Fn(&Event) -> bool| {
        events
            .iter()
            .position(|e| e.event.as_ref().is_some_and(want))
    };
    let waiting = position(&|e| matches!(e, Event::ProviderWaiting(w) if w.provider == "sandbox"))
        .expect("the batch waited for the sandbox");
    let ended = position(
        &|e| matches!(e, Event::ProviderWaitEnded(w) if w.provider == "sandbox" && !w.gave_up),
    )
    .expect("and stopped waiting");
    let last_stripe = events
        .iter()
        .rposition(|e| matches!(&e.event, Some(Event::Result(r)) if r.provider == "stripe"))
        .expect("stripe results");
    assert!(waiting < last_stripe && last_stripe < ended, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(&e.event, Some(Event::ProviderWaiting(w)) if w.provider == "stripe"))
    );
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Summary(s)) => assert_eq!((s.succeeded, s.failed), (12, 0), "{s:?}"),
        other => panic!("a summary last: {other:?}"),
    }
    for c in &charges {
        assert_eq!(stripe_refunds(c).await.len(), 1);
    }
}
