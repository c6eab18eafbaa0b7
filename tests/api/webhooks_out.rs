//! Webhooks to subscribers ("Events out"): endpoints over gRPC, deliveries to a real HTTP
//! receiver on loopback (allowed by the test servers' `allow_private_targets`), signatures
//! checked by the Standard Webhooks reference library (PyPI `standardwebhooks`), retries while a
//! receiver is down, `kill -9` between commit and delivery, rotation, disabling, replay, the
//! SSRF guard's refusals and tenancy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use refund_service::api::pb;
use refund_service::config::ServeSettings;
use refund_service::domain::RetryPolicy;
use refund_service::service::WebhooksConfig;
use refund_service::webhooks_out::target::EndpointPolicy;
use tonic::Code;

use crate::crash::{Proc, free_port, grpc_addr, spawn, wait_http};
use crate::helpers::*;
use crate::signing_interop::{Verdict, reference_verify};

const MASTER_KEY: &str = "5a1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";

// === a receiver ===

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: i64,
    signature: String,
    content_type: String,
    traceparent: String,
    body: String,
    answered: u16,
}

/// A subscriber's backend on loopback: records every POST and answers with a status the test
/// sets (503 while "down").
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

type ReceiverState = (Arc<Mutex<Vec<Received>>>, Arc<AtomicU16>);

async fn record(
    State((got, answer)): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let status = answer.load(Ordering::SeqCst);
    got.lock().expect("lock").push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or(0),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        traceparent: header("traceparent"),
        body: String::from_utf8_lossy(&body).into_owned(),
        answered: status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Receiver {
    async fn start(answer: u16) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(AtomicU16::new(answer));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state((got.clone(), answer.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            got,
            answer,
            task,
        }
    }

    fn answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// The webhook ids (event ids) answered 2xx.
    fn delivered(&self) -> BTreeSet<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| r.id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === set-up ===

fn key_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("master.key");
    std::fs::write(&path, format!("{MASTER_KEY}\n")).expect("write key file");
    path
}

/// Fast retries, loopback receivers allowed, secrets sealed with the test key.
fn webhook_settings(s: &mut ServeSettings, key: PathBuf) {
    s.connections.secrets_key_file = Some(key);
    s.refunds.webhooks = WebhooksConfig {
        policy: EndpointPolicy {
            allow_private_targets: true,
            allow_http: true,
        },
        timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            window: Duration::from_secs(120),
        },
        poll_interval: Duration::from_millis(50),
        ..WebhooksConfig::default()
    };
}

async fn spawn_webhooks(db: &TestDb, keys: &tempfile::TempDir) -> TestApp {
    let key = key_file(keys);
    spawn_app_with(db, move |s| webhook_settings(s, key)).await
}

async fn create_endpoint(
    client: &mut Client,
    url: &str,
    types: &[&str],
) -> pb::WebhookEndpointSecret {
    client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url: url.to_owned(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            description: "test receiver".into(),
        })
        .await
        .expect("create endpoint")
        .into_inner()
}

/// Every event of the caller's account, oldest first.
async fn all_events(client: &mut Client) -> Vec<pb::Event> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list events")
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    events.reverse();
    events
}

async fn deliveries(client: &mut Client, endpoint_id: &str) -> Vec<pb::WebhookDelivery> {
    client
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            endpoint_id: endpoint_id.to_owned(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries
}

/// Makes `n` refunds and waits until each has settled (so its events are all written).
async fn settled_refunds(app: &TestApp, client: &mut Client, n: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let payment = app.seed(1_000, "USD").await;
        let refund = client
            .create_refund(refund_request(&payment, None, "USD"))
            .await
            .expect("create refund")
            .into_inner();
        ids.push(refund.id);
    }
    for id in &ids {
        eventually(Duration::from_secs(20), "the refund settled", || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let refund = client
                    .get_refund(pb::GetRefundRequest { id })
                    .await
                    .expect("get refund")
                    .into_inner();
                (refund.status() == pb::RefundStatus::Succeeded).then_some(())
            }
        })
        .await;
    }
    ids
}

fn accepted(secret: &str, r: &Received) -> bool {
    matches!(
        reference_verify(secret, &r.id, r.timestamp, &r.signature, &r.body),
        Verdict::Accepted
    )
}

// === tests ===

/// Every event reaches the endpoint once answered, signed so that the reference library accepts
/// it with the endpoint's secret, carrying the event exactly as ListEvents shows it.
#[tokio::test]
async fn events_arrive_signed_for_the_reference_library_as_list_events_shows_them() {
    let keys = tempfile::tempdir().expect("dir");
    let db = TestDb::new().await;
    let app = spawn_webhooks(&db, &keys).await;
    let receiver = Receiver::start(200).await;
    let mut client = app.client.clone();
    let created = create_endpoint(&mut client, &receiver.url, &[]).await;
    let endpoint = created.endpoint.expect("endpoint");
    assert!(created.secret.starts_with("whsec_"));
    assert!(endpoint.enabled);

    settled_refunds(&app, &mut client, 3).await;
    let events = all_events(&mut client).await;
    assert_eq!(events.len(), 6, "created + succeeded for each refund");
    let want: BTreeSet<String> = events.iter().map(|e| e.id.clone()).collect();
    eventually(Duration::from_secs(20), "every event delivered", || {
        let got = receiver.delivered();
        let want = want.clone();
        async move { (got == want).then_some(()) }
    })
    .await;

    let by_id: BTreeMap<String, &pb::Event> = events.iter().map(|e| (e.id.clone(), e)).collect();
    for r in receiver.received() {
        assert_eq!(r.content_type, "application/json");
        assert!(accepted(&created.secret, &r), "refused: {r:?}");
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
        let event = by_id[&r.id];
        assert_eq!(body["id"], event.id.as_str());
        assert_eq!(body["type"], event.r#type.as_str());
        assert_eq!(body["sequence"], event.sequence);
        assert_eq!(body["api_version"], "v1");
        assert_eq!(body["data"]["object"], "refund");
        let Some(pb::event::Resource::Refund(refund)) = &event.resource else {
            panic!("a refund event");
        };
        assert_eq!(body["data"]["id"], refund.id.as_str());
    }
    // Another secret does not verify.
    let other = refund_service::webhooks_out::signing::WebhookSecret::generate().expose();
    assert!(!accepted(&other, &receiver.received()[0]));

    let listed = deliveries(&mut client, &endpoint.id).await;
    assert_eq!(listed.len(), 6);
    for d in &listed {
        assert_eq!(d.status(), pb::WebhookDeliveryStatus::Delivered, "{d:?}");
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_status_code, 200);
        assert!(d.delivered_at.is_some());
    }
    let metrics = scrape_metrics(app.http_addr).await;
    assert_eq!(
        metric_value(
            &metrics,
            "refund_webhook_delivery_attempts_total{outcome=\"delivered\"}"
        ),
        Some(6.0),
        "{metrics}"
    );
    app.stop().await;
}

/// A receiver that answers 503 for a while, then comes back, gets every event, including a
/// batch's; the deliveries show the failed attempts.
#[tokio::test]
async fn a_receiver_that_is_down_then_up_gets_every_event() {
    let keys = tempfile::tempdir().expect("dir");
    let db = TestDb::new().await;
    let app = spawn_webhooks(&db, &keys).await;
    let receiver = Receiver::start(503).await;
    let mut client = app.client.clone();
    let endpoint = create_endpoint(&mut client, &receiver.url, &[])
        .await
        .endpoint
        .expect("endpoint");

    settled_refunds(&app, &mut client, 2).await;
    let payments = app.seed_many(20, 1_000).await;
    let mut stream = client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments
                .iter()
                .map(|p| refund_request(p, None, "USD"))
                .collect(),
            idempotency_key: "webhooks-batch".into(),
            ..Default::default()
        })
        .await
        .expect("bulk")
        .into_inner();
    while let Some(event) = tokio_stream::StreamExt::next(&mut stream).await {
        event.expect("bulk event");
    }
    // Failing attempts are recorded and retried while it is down.
    eventually(Duration::from_secs(20), "retries of a 503", || {
        let mut client = client.clone();
        let id = endpoint.id.clone();
        async move {
            deliveries(&mut client, &id)
                .await
                .iter()
                .any(|d| {
                    d.attempts >= 2
                        && d.last_status_code == 503
                        && d.status() == pb::WebhookDeliveryStatus::Pending
                })
                .then_some(())
        }
    })
    .await;
    assert!(receiver.delivered().is_empty());
    // The queue shows in the metrics while the receiver is down.
    let metrics = eventually(Duration::from_secs(10), "the queue in the metrics", || {
        let addr = app.http_addr;
        async move {
            let metrics = scrape_metrics(addr).await;
            metric_value(&metrics, "refund_webhook_deliveries_pending")
                .is_some_and(|n| n >= 1.0)
                .then_some(metrics)
        }
    })
    .await;
    assert!(
        metric_value(&metrics, "refund_webhook_oldest_pending_seconds").is_some(),
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "refund_webhook_delivery_attempts_total{outcome=\"retrying\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let failing = client
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
        .await
        .expect("list")
        .into_inner()
        .endpoints;
    assert!(failing[0].failing_since.is_some(), "{failing:?}");

    receiver.answer(200);
    let events = all_events(&mut client).await;
    // 2 refunds × 2, 20 jobs × 2, the batch's accepted and completed.
    assert_eq!(events.len(), 4 + 40 + 2);
    let want: BTreeSet<String> = events.iter().map(|e| e.id.clone()).collect();
    eventually(
        Duration::from_secs(60),
        "every event delivered after the outage",
        || {
            let got = receiver.delivered();
            let want = want.clone();
            async move { (got == want).then_some(()) }
        },
    )
    .await;
    let types: BTreeSet<String> = events.iter().map(|e| e.r#type.clone()).collect();
    assert!(types.contains("bulk_refund.accepted") && types.contains("bulk_refund.completed"));
    let listed = deliveries(&mut client, &endpoint.id).await;
    assert_eq!(listed.len(), events.len());
    assert!(
        listed
            .iter()
            .all(|d| d.status() == pb::WebhookDeliveryStatus::Delivered)
    );
    let recovered = client
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
        .await
        .expect("list")
        .into_inner()
        .endpoints;
    assert!(
        recovered[0].failing_since.is_none(),
        "a success ends the streak"
    );
    app.stop().await;
}

/// `kill -9` after the events committed and before they were delivered (the receiver answered
/// 503 until then): after a restart on the same database every event is delivered.
#[tokio::test]
async fn kill_9_between_commit_and_delivery_loses_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keys = tempfile::tempdir().expect("dir");
    let key = key_file(&keys);
    let db = TestDb::new().await;
    let receiver = Receiver::start(503).await;
    let (grpc_port, http_port) = (free_port(), free_port());
    let args = vec![
        "serve".to_owned(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc_port}"),
        "--http-addr".into(),
        format!("127.0.0.1:{http_port}"),
        "--database-url".into(),
        db.url.clone(),
        "--secrets-key-file".into(),
        key.display().to_string(),
        "--webhook-allow-private-targets".into(),
        "--webhook-allow-http".into(),
        "--webhook-retry-min-delay".into(),
        "100ms".into(),
        // An attempt the kill cut short is retried when its lease ends (a few times this).
        "--webhook-timeout".into(),
        "1s".into(),
        "--lease-margin".into(),
        "1s".into(),
    ];
    let service: Proc = spawn(&args);
    let ready = format!("http://127.0.0.1:{http_port}/readyz");
    wait_http(&ready).await;
    let addr = grpc_addr(&format!("http://127.0.0.1:{grpc_port}"));
    let mut client = client_with_key(addr, Some(ADMIN_KEY)).await;
    let endpoint = create_endpoint(&mut client, &receiver.url, &[])
        .await
        .endpoint
        .expect("endpoint");
    let sandbox = refund_service::sandbox::client::SandboxClient::new(
        &format!("http://127.0.0.1:{http_port}/sandbox"),
        Duration::from_secs(10),
    )
    .expect("sandbox client");
    for payment in seed_payments(&sandbox, 3, 1_000).await {
        client
            .create_refund(refund_request(&payment, None, "USD"))
            .await
            .expect("refund");
    }
    // Committed, attempted, not delivered.
    eventually(Duration::from_secs(20), "deliveries attempted", || {
        let mut client = client.clone();
        let id = endpoint.id.clone();
        async move {
            let d = deliveries(&mut client, &id).await;
            (d.len() >= 3 && d.iter().all(|d| d.attempts >= 1)).then_some(())
        }
    })
    .await;
    assert!(receiver.delivered().is_empty());
    drop(service); // SIGKILL

    receiver.answer(200);
    let _service = spawn(&args);
    wait_http(&ready).await;
    let client = client_with_key(addr, Some(ADMIN_KEY)).await;
    // The refunds settle (the reconciler resumes them) and every event arrives.
    let want = eventually(
        Duration::from_secs(60),
        "every event delivered after restart",
        || {
            let mut client = client.clone();
            let got = receiver.delivered();
            async move {
                let events = all_events(&mut client).await;
                let settled = events
                    .iter()
                    .filter(|e| e.r#type != "refund.created")
                    .count();
                let want: BTreeSet<String> = events.into_iter().map(|e| e.id).collect();
                (settled == 3 && got == want).then_some(want)
            }
        },
    )
    .await;
    assert_eq!(want.len(), 6);
}

/// Rotation: during the overlap each webhook carries both signatures and the reference library
/// accepts it with either secret; with no overlap, only the new one.
#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_for_the_overlap() {
    let keys = tempfile::tempdir().expect("dir");
    let db = TestDb::new().await;
    let app = spawn_webhooks(&db, &keys).await;
    let receiver = Receiver::start(200).await;
    let mut client = app.client.clone();
    let created = create_endpoint(&mut client, &receiver.url, &["refund.succeeded"]).await;
    let id = created.endpoint.expect("endpoint").id;
    let rotated = client
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            id: id.clone(),
            overlap: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_ne!(rotated.secret, created.secret);
    assert!(
        rotated
            .endpoint
            .expect("endpoint")
            .previous_secret_expires_at
            .is_some()
    );

    settled_refunds(&app, &mut client, 1).await;
    let first = eventually(Duration::from_secs(20), "a delivery", || {
        let got = receiver.received();
        async move { got.into_iter().next() }
    })
    .await;
    assert_eq!(first.signature.split(' ').count(), 2, "{first:?}");
    assert!(accepted(&created.secret, &first), "old secret");
    assert!(accepted(&rotated.secret, &first), "new secret");

    let again = client
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            id,
            overlap: Some(prost_types::Duration::default()),
        })
        .await
        .expect("rotate without overlap")
        .into_inner();
    settled_refunds(&app, &mut client, 1).await;
    let second = eventually(Duration::from_secs(20), "a second delivery", || {
        let got = receiver.received();
        async move { got.get(1).cloned() }
    })
    .await;
    assert_eq!(second.signature.split(' ').count(), 1, "{second:?}");
    assert!(accepted(&again.secret, &second));
    assert!(!accepted(&rotated.secret, &second));
    app.stop().await;
}

/// An endpoint failing every attempt for the whole retry window is disabled with its reason,
/// its deliveries FAILED; enabled again and retried (one delivery) or replayed (every event),
/// it gets them.
#[tokio::test]
async fn an_endpoint_failing_for_the_window_is_disabled_then_retry_and_replay_deliver() {
    let keys = tempfile::tempdir().expect("dir");
    let key = key_file(&keys);
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, move |s| {
        webhook_settings(s, key);
        s.refunds.webhooks.retry.window = Duration::from_secs(2);
    })
    .await;
    let receiver = Receiver::start(500).await;
    let mut client = app.client.clone();
    let id = create_endpoint(&mut client, &receiver.url, &[])
        .await
        .endpoint
        .expect("endpoint")
        .id;
    settled_refunds(&app, &mut client, 1).await;
    let disabled = eventually(Duration::from_secs(30), "the endpoint disabled", || {
        let mut client = client.clone();
        async move {
            let e = client
                .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
                .await
                .expect("list")
                .into_inner()
                .endpoints
                .remove(0);
            (!e.enabled).then_some(e)
        }
    })
    .await;
    assert!(disabled.disabled_reason.contains("500"), "{disabled:?}");
    // The delivery that gave up is FAILED; the other waits while the endpoint is disabled.
    let listed = deliveries(&mut client, &id).await;
    assert_eq!(listed.len(), 2);
    let failed: Vec<_> = listed
        .iter()
        .filter(|d| d.status() == pb::WebhookDeliveryStatus::Failed)
        .cloned()
        .collect();
    assert!(!failed.is_empty(), "{listed:?}");
    assert!(
        failed
            .iter()
            .all(|d| d.last_status_code == 500 && d.attempts >= 2 && d.next_attempt_at.is_none())
    );
    let metrics = scrape_metrics(app.http_addr).await;
    assert!(
        metric_value(
            &metrics,
            "refund_webhook_delivery_attempts_total{outcome=\"failed\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );

    // Enabled again: what waited is delivered; the FAILED one only when retried.
    receiver.answer(200);
    let enabled = client
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            id: id.clone(),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .expect("enable")
        .into_inner();
    assert!(enabled.enabled && enabled.disabled_reason.is_empty());
    for d in &failed {
        let retried = client
            .retry_webhook_delivery(pb::RetryWebhookDeliveryRequest { id: d.id.clone() })
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(retried.status(), pb::WebhookDeliveryStatus::Pending);
    }
    let both: BTreeSet<String> = listed.iter().map(|d| d.event_id.clone()).collect();
    eventually(Duration::from_secs(20), "both events delivered", || {
        let got = receiver.delivered();
        let both = both.clone();
        async move { (got == both).then_some(()) }
    })
    .await;

    let replay = client
        .replay_webhook_events(pb::ReplayWebhookEventsRequest {
            endpoint_id: id.clone(),
            after_sequence: 0,
        })
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(replay.rearmed, 2);
    eventually(Duration::from_secs(20), "every event sent again", || {
        let n = receiver
            .received()
            .iter()
            .filter(|r| r.answered == 200)
            .count();
        async move { (n == 4).then_some(()) }
    })
    .await;
    app.stop().await;
}

/// The SSRF guard: loopback, private, metadata and IPv6 loopback URLs (and plain http) are
/// refused as INVALID_ARGUMENT on the url field unless the operator allows them. Nothing is
/// sent: no event happens on these servers.
#[tokio::test]
async fn the_ssrf_guard_refuses_non_public_targets_unless_allowed() {
    let keys = tempfile::tempdir().expect("dir");
    let key = key_file(&keys);
    let db = TestDb::new().await;
    let strict = spawn_app_with(&db, {
        let key = key.clone();
        move |s| s.connections.secrets_key_file = Some(key)
    })
    .await;
    let mut client = strict.client.clone();
    let targets = [
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://localhost/hook",
        "http://example.com/hook",
    ];
    for url in targets {
        let err = client
            .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                url: url.into(),
                ..Default::default()
            })
            .await
            .expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        assert_eq!(violated_fields(&err), vec!["url".to_owned()], "{url}");
    }
    // Updating to such a URL is refused the same way.
    let err = client
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            id: "we_0195f3e2a1b07c3d8e9f0a1b2c3d4e5f".into(),
            url: Some("https://10.0.0.1/hook".into()),
            ..Default::default()
        })
        .await
        .expect_err("private url");
    assert_eq!(err.code(), Code::InvalidArgument);
    strict.stop().await;

    let allowing = spawn_app_with(&db, move |s| {
        s.connections.secrets_key_file = Some(key);
        s.refunds.webhooks.policy = EndpointPolicy {
            allow_private_targets: true,
            allow_http: true,
        };
    })
    .await;
    let mut client = allowing.client.clone();
    for url in targets {
        let created = create_endpoint(&mut client, url, &[]).await;
        client
            .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest {
                id: created.endpoint.expect("endpoint").id,
            })
            .await
            .expect("delete");
    }
    allowing.stop().await;
}

/// Bad input is precise; a server without a secrets key says so.
#[tokio::test]
async fn bad_requests_and_a_server_without_a_secrets_key_are_told_why() {
    let keys = tempfile::tempdir().expect("dir");
    let db = TestDb::new().await;
    let app = spawn_webhooks(&db, &keys).await;
    let mut client = app.client.clone();
    let err = client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url: "not a url".into(),
            event_types: vec!["refund.succeeded".into(), "refund.exploded".into()],
            description: "x".repeat(501),
        })
        .await
        .expect_err("bad");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&err),
        vec!["url", "event_types[1]", "description"]
    );
    for call in ["update", "delete", "rotate"] {
        let id = "we_0195f3e2a1b07c3d8e9f0a1b2c3d4e5f".to_owned();
        let err = match call {
            "update" => client
                .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
                    id,
                    enabled: Some(false),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "delete" => client
                .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest { id })
                .await
                .map(|_| ()),
            _ => client
                .rotate_webhook_secret(pb::RotateWebhookSecretRequest { id, overlap: None })
                .await
                .map(|_| ()),
        }
        .expect_err(call);
        assert_eq!(err.code(), Code::NotFound, "{call}: {err:?}");
    }
    let err = client
        .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest { id: "whe_1".into() })
        .await
        .expect_err("malformed id");
    assert_eq!(violated_fields(&err), vec!["id"]);
    app.stop().await;

    let plain = spawn_app_with(&db, |s| {
        s.refunds.webhooks.policy = EndpointPolicy {
            allow_private_targets: true,
            allow_http: true,
        };
    })
    .await;
    let err = plain
        .client
        .clone()
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        })
        .await
        .expect_err("no secrets key");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err), "NO_SECRETS_KEY");
    plain.stop().await;
}

/// One account never sees, changes or receives another's endpoints, deliveries or events.
#[tokio::test]
async fn one_account_never_sees_another_accounts_endpoints_or_events() {
    let keys = tempfile::tempdir().expect("dir");
    let db = TestDb::new().await;
    let app = spawn_webhooks(&db, &keys).await;
    let scopes = "refunds:read,refunds:write,webhooks:manage";
    let mut a = client_of(&app, "acct_webhooks_a", scopes).await;
    let mut b = client_of(&app, "acct_webhooks_b", scopes).await;
    let (receiver_a, receiver_b) = (Receiver::start(200).await, Receiver::start(200).await);
    let endpoint_a = create_endpoint(&mut a, &receiver_a.url, &[])
        .await
        .endpoint
        .expect("endpoint")
        .id;
    create_endpoint(&mut b, &receiver_b.url, &[]).await;

    settled_refunds(&app, &mut a, 2).await;
    settled_refunds(&app, &mut b, 1).await;
    let events_a: BTreeSet<String> = all_events(&mut a).await.into_iter().map(|e| e.id).collect();
    let events_b: BTreeSet<String> = all_events(&mut b).await.into_iter().map(|e| e.id).collect();
    assert_eq!((events_a.len(), events_b.len()), (4, 2));
    eventually(
        Duration::from_secs(20),
        "each receiver has its account's events",
        || {
            let (got_a, got_b) = (receiver_a.delivered(), receiver_b.delivered());
            let ok = got_a == events_a && got_b == events_b;
            async move { ok.then_some(()) }
        },
    )
    .await;

    let listed = b
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
        .await
        .expect("list")
        .into_inner()
        .endpoints;
    assert_eq!(listed.len(), 1);
    assert_ne!(listed[0].id, endpoint_a);
    let err = b
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            id: endpoint_a.clone(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .expect_err("another account's endpoint");
    assert_eq!(err.code(), Code::NotFound);
    let err = b
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            endpoint_id: endpoint_a.clone(),
            ..Default::default()
        })
        .await
        .expect_err("another account's deliveries");
    assert_eq!(err.code(), Code::NotFound);
    let a_delivery = deliveries(&mut a, &endpoint_a).await.remove(0).id;
    let err = b
        .retry_webhook_delivery(pb::RetryWebhookDeliveryRequest { id: a_delivery })
        .await
        .expect_err("another account's delivery");
    assert_eq!(err.code(), Code::NotFound);
    let err = b
        .replay_webhook_events(pb::ReplayWebhookEventsRequest {
            endpoint_id: endpoint_a.clone(),
            after_sequence: 0,
        })
        .await
        .expect_err("another account's endpoint");
    assert_eq!(err.code(), Code::NotFound);
    let everything_b = b
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .deliveries;
    assert!(everything_b.iter().all(|d| events_b.contains(&d.event_id)));
    // A key without webhooks:manage is refused.
    let mut reader = client_of(&app, "acct_webhooks_a", "refunds:read").await;
    let err = reader
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
        .await
        .expect_err("no scope");
    assert_eq!(err.code(), Code::PermissionDenied);
    app.stop().await;
}

/// `refund-service webhooks` manages endpoints and shows deliveries, over gRPC with a key.
#[tokio::test]
async fn the_cli_creates_lists_and_deletes_endpoints_and_shows_deliveries() {
    let keys = tempfile::tempdir().expect("dir");
    let db = TestDb::new().await;
    let app = spawn_webhooks(&db, &keys).await;
    let receiver = Receiver::start(200).await;
    let server = format!("http://{}", app.grpc_addr);
    let cli = |args: &[&str]| {
        let server = server.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move {
            // Off the test's runtime, which also runs the server the CLI calls.
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_refund-service"))
                    .arg("webhooks")
                    .args(&args)
                    .env("REFUND_SERVER", &server)
                    .env("REFUND_API_KEY", ADMIN_KEY)
                    .env("RUST_LOG", "off")
                    .output()
            })
            .await
            .expect("join")
            .expect("run the CLI");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = cli(&[
        "create",
        "--url",
        &receiver.url,
        "--events",
        "refund.succeeded",
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let secret = out.lines().last().expect("secret line").to_owned();
    assert!(secret.starts_with("whsec_"), "{out}");
    let id = out.split_whitespace().next().expect("id").to_owned();
    assert!(id.starts_with("we_"), "{out}");

    settled_refunds(&app, &mut app.client.clone(), 1).await;
    eventually(Duration::from_secs(20), "the delivery", || {
        let n = receiver.delivered().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    assert!(accepted(&secret, &receiver.received()[0]));

    let (code, out, _) = cli(&["list"]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&id) && out.contains("events: refund.succeeded"),
        "{out}"
    );
    let (code, out, _) = cli(&["deliveries", "--endpoint", &id]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("DELIVERED") && out.contains("refund.succeeded"),
        "{out}"
    );
    let (code, _, err) = cli(&["create", "--url", "ftp://example.com/x"]).await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("INVALID_ARGUMENT") || err.contains("InvalidArgument"),
        "{err}"
    );
    let (code, out, _) = cli(&["delete", &id]).await;
    assert_eq!(code, Some(0), "{out}");
    let (_, out, _) = cli(&["list"]).await;
    assert!(out.contains("no webhook endpoints"), "{out}");
    app.stop().await;
}

/// Each attempt has a client span, and its trace context goes to the receiver (`traceparent`),
/// so a subscriber can join its handling to the attempt's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_has_a_span_whose_trace_context_reaches_the_receiver() {
    use opentelemetry::trace::{SpanKind, Status};
    let _exporter = telemetry_lock().await;
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let telemetry = refund_service::telemetry::init_with_exporter(
        refund_service::telemetry::TelemetryConfig {
            test_writer: true,
            ..refund_service::telemetry::TelemetryConfig::logs_only(
                refund_service::telemetry::LogFormat::Pretty,
            )
        },
        exporter.clone(),
    );
    let keys = tempfile::tempdir().expect("dir");
    let db = TestDb::new().await;
    let app = spawn_webhooks(&db, &keys).await;
    let receiver = Receiver::start(503).await;
    let mut client = app.client.clone();
    create_endpoint(&mut client, &receiver.url, &["refund.created"]).await;
    settled_refunds(&app, &mut client, 1).await;
    eventually(Duration::from_secs(20), "a refused attempt", || {
        let n = receiver.received().len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    receiver.answer(200);
    eventually(Duration::from_secs(20), "the delivery", || {
        let n = receiver.delivered().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let spans = eventually(Duration::from_secs(10), "the attempts' spans", || {
        let spans: Vec<_> = exporter
            .get_finished_spans()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.name == "webhook.deliver")
            .collect();
        let n = receiver.received().len();
        async move { (spans.len() >= n).then_some(spans) }
    })
    .await;
    for r in receiver.received() {
        // traceparent: 00-<trace id>-<span id>-<flags>
        let parts: Vec<&str> = r.traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{r:?}");
        let span = spans
            .iter()
            .find(|s| s.span_context.span_id().to_string() == parts[2])
            .unwrap_or_else(|| panic!("no span {} among {spans:?}", parts[2]));
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.span_context.trace_id().to_string(), parts[1]);
        let code = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "http.response.status_code")
            .map(|kv| kv.value.to_string());
        assert_eq!(code.as_deref(), Some(r.answered.to_string().as_str()));
        if r.answered == 503 {
            assert!(
                matches!(span.status, Status::Error { .. }),
                "{:?}",
                span.status
            );
        }
    }
    app.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("flush");
}

/// A redirect is a failed attempt, never followed (a public endpoint could answer 307 to the
/// metadata address); a long refusal is read only up to its first KiB.
#[tokio::test]
async fn redirects_are_not_followed_and_a_refusals_body_is_bounded() {
    let keys = tempfile::tempdir().expect("dir");
    let db = TestDb::new().await;
    let app = spawn_webhooks(&db, &keys).await;
    let followed = Arc::new(AtomicU16::new(0));
    let router = axum::Router::new()
        .route(
            "/redirect",
            axum::routing::post(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, "/target")],
                )
            }),
        )
        .route(
            "/target",
            axum::routing::post({
                let followed = followed.clone();
                move || async move {
                    followed.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/long",
            axum::routing::post(|| async { (StatusCode::BAD_GATEWAY, "x".repeat(1 << 20)) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let mut client = app.client.clone();
    let redirect = create_endpoint(
        &mut client,
        &format!("http://{addr}/redirect"),
        &["refund.created"],
    )
    .await
    .endpoint
    .expect("endpoint")
    .id;
    let long = create_endpoint(
        &mut client,
        &format!("http://{addr}/long"),
        &["refund.created"],
    )
    .await
    .endpoint
    .expect("endpoint")
    .id;
    settled_refunds(&app, &mut client, 1).await;
    let attempted = |id: String| {
        let client = client.clone();
        async move {
            eventually(Duration::from_secs(20), "an attempt", || {
                let mut client = client.clone();
                let id = id.clone();
                async move {
                    deliveries(&mut client, &id)
                        .await
                        .into_iter()
                        .find(|d| d.attempts >= 1 && d.last_status_code != 0)
                }
            })
            .await
        }
    };
    let d = attempted(redirect).await;
    assert_eq!(d.last_status_code, 307);
    assert_eq!(
        d.status(),
        pb::WebhookDeliveryStatus::Pending,
        "retried later"
    );
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    let d = attempted(long).await;
    assert_eq!(d.last_status_code, 502);
    assert!(
        d.last_error.len() <= 1024 + 64,
        "{} bytes of error kept",
        d.last_error.len()
    );
    assert!(d.last_error.contains("502: xxx"), "{}", &d.last_error[..80]);
    server.abort();
    app.stop().await;
}

/// Defect guarded: a delivery whose event was pruned (retention) ended as a failure of the
/// endpoint's, which gave up the delivery at once and disabled a merely slow endpoint. It ends
/// FAILED, and the endpoint stays enabled.
#[tokio::test]
async fn an_event_past_retention_ends_its_delivery_without_disabling_the_endpoint() {
    let keys = tempfile::tempdir().expect("dir");
    let key = key_file(&keys);
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, move |s| {
        webhook_settings(s, key);
        s.refunds.event_retention = Duration::from_millis(300);
        s.refunds.reconcile_interval = Duration::from_millis(100);
    })
    .await;
    let receiver = Receiver::start(503).await;
    let mut client = app.client.clone();
    let id = create_endpoint(&mut client, &receiver.url, &["refund.created"])
        .await
        .endpoint
        .expect("endpoint")
        .id;
    settled_refunds(&app, &mut client, 1).await;
    let ended = eventually(Duration::from_secs(20), "the delivery ended", || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            deliveries(&mut client, &id)
                .await
                .into_iter()
                .find(|d| d.status() == pb::WebhookDeliveryStatus::Failed)
        }
    })
    .await;
    assert!(ended.last_error.contains("retention"), "{ended:?}");
    let endpoint = client
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
        .await
        .expect("list")
        .into_inner()
        .endpoints
        .remove(0);
    assert!(endpoint.enabled, "{endpoint:?}");
    app.stop().await;
}
