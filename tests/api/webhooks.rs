//! Inbound webhooks (through the sandbox's endpoint, which verifies like Stripe's), WatchRefund and
//! ListProviders.

use std::time::Duration;

use refund_service::api::pb;
use refund_service::providers::signature;
use refund_service::sandbox::FaultConfig;
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::helpers::{
    TestApp, TestDb, eventually, post_webhook, refund_request, reserved_amount, spawn_app_with,
    status_history, status_of, unix_now,
};

const SECRET: &str = "whsec_current";
const OLD_SECRET: &str = "whsec_previous";
const HEADER: &str = "sandbox-signature";

type Headers = Vec<(&'static str, String)>;

/// A service whose reconciler would not look at a PENDING refund for an hour, so only webhooks
/// settle refunds here; the sandbox's webhooks are signed with `SECRET`, and `OLD_SECRET` (being
/// rotated out) is still accepted.
async fn spawn(db: &TestDb) -> TestApp {
    spawn_app_with(db, |s| {
        s.sandbox_webhook_secrets = vec![
            refund_service::secret::Secret::opaque(SECRET.to_owned()),
            refund_service::secret::Secret::opaque(OLD_SECRET.to_owned()),
        ];
        s.refunds.reconcile_delay = Duration::from_secs(3600);
        s.refunds.reconcile_interval = Duration::from_millis(50);
        s.refunds.watch_poll_interval = Duration::from_millis(100);
    })
    .await
}

/// Refunds stay pending at the sandbox for an hour: nothing settles them but our webhooks.
async fn hold_refunds_pending(app: &TestApp) {
    app.sandbox
        .set_faults(&FaultConfig {
            settle_delay_ms: 3_600_000,
            ..FaultConfig::default()
        })
        .await
        .expect("set faults");
}

async fn pending_refund(app: &mut TestApp, amount: i64) -> (pb::Refund, String) {
    let payment = app.seed(10_000, "USD").await;
    let r = app
        .client
        .create_refund(refund_request(&payment, Some(amount), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");
    assert!(r.provider_refund_id.starts_with("re_sbx_"), "{r:?}");
    (r, payment)
}

/// A Stripe-shaped `refund.updated` event, as the sandbox sends them.
fn event(id: &str, refund: &pb::Refund, status: &str, with_our_id: bool) -> String {
    let metadata = if with_our_id {
        json!({"refund_id": refund.id})
    } else {
        json!({})
    };
    json!({
        "id": id,
        "object": "event",
        "type": "refund.updated",
        "data": {"object": {
            "id": refund.provider_refund_id,
            "object": "refund",
            "amount": refund.amount,
            "currency": "usd",
            "charge": refund.payment_id,
            "status": status,
            "failure_reason": if status == "failed" { Some("expired_or_canceled_card") } else { None },
            "metadata": metadata,
        }},
    })
    .to_string()
}

fn signed(secret: &str, t: i64, body: &str) -> Headers {
    vec![(HEADER, signature::sign(secret, t, body.as_bytes()))]
}

async fn get(app: &mut TestApp, id: &str) -> pb::Refund {
    app.client
        .get_refund(pb::GetRefundRequest { id: id.into() })
        .await
        .expect("get")
        .into_inner()
}

#[tokio::test]
async fn the_sandbox_webhook_settles_a_pending_refund_and_watch_refund_streams_it() {
    let db = TestDb::new().await;
    let mut app = spawn(&db).await;
    app.sandbox
        .set_faults(&FaultConfig {
            settle_delay_ms: 700,
            ..FaultConfig::default()
        })
        .await
        .expect("set faults");
    let (r, _) = pending_refund(&mut app, 2_500).await;

    let mut stream = app
        .client
        .watch_refund(pb::WatchRefundRequest { id: r.id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.next().await.expect("current state").expect("ok");
    assert_eq!(status_of(&first), pb::RefundStatus::Pending);
    let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("a change within 20 s")
        .expect("a second message")
        .expect("ok");
    assert_eq!(status_of(&next), pb::RefundStatus::Succeeded, "{next:?}");
    assert_eq!(next.provider_refund_id, r.provider_refund_id);
    assert!(
        stream.next().await.is_none(),
        "the stream ends after a terminal status"
    );

    // The sandbox counts a delivery once our answer reaches it, which can be just after the
    // refund moved.
    eventually(
        Duration::from_secs(5),
        "the sandbox to count its delivery",
        || async {
            let stats = app.sandbox.stats().await.ok()?;
            (stats.webhooks_sent == 1 && stats.webhooks_failed == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        status_history(&db, &r.id).await,
        vec![
            (None, "pending".to_owned(), "api".to_owned()),
            (
                Some("pending".to_owned()),
                "succeeded".to_owned(),
                "webhook".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn bad_signatures_are_refused_and_change_nothing_and_a_rotated_secret_still_works() {
    let db = TestDb::new().await;
    let mut app = spawn(&db).await;
    hold_refunds_pending(&app).await;
    let (r, _) = pending_refund(&mut app, 1_000).await;
    let body = event("evt_sig", &r, "succeeded", true);
    let now = unix_now();

    let tampered = body.replace("succeeded", "failed");
    let cases: Vec<(&str, Headers, &str)> = vec![
        ("unsigned", vec![], body.as_str()),
        ("wrong secret", signed("whsec_wrong", now, &body), &body),
        ("tampered body", signed(SECRET, now, &body), &tampered),
        ("stale", signed(SECRET, now - 400, &body), &body),
        ("from the future", signed(SECRET, now + 400, &body), &body),
        (
            "garbage header",
            vec![(HEADER, "t=abc,v1=xyz".to_owned())],
            &body,
        ),
    ];
    for (what, headers, payload) in cases {
        let (status, answer) = post_webhook(&app, "sandbox", &headers, payload).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(answer["error"].is_string(), "{what}: {answer}");
    }
    assert_eq!(
        status_of(&get(&mut app, &r.id).await),
        pb::RefundStatus::Pending,
        "nothing changed"
    );

    // Signed, but with an id no provider sends: refused, not a 500 to be redelivered forever.
    let long = event(&"e".repeat(300), &r, "succeeded", true);
    let (status, answer) = post_webhook(&app, "sandbox", &signed(SECRET, now, &long), &long).await;
    assert_eq!(status, 400, "{answer}");

    // Signed with the secret being rotated out: accepted.
    let (status, answer) =
        post_webhook(&app, "sandbox", &signed(OLD_SECRET, now, &body), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "APPLIED", "{answer}");
    assert_eq!(
        status_of(&get(&mut app, &r.id).await),
        pb::RefundStatus::Succeeded
    );
}

#[tokio::test]
async fn duplicate_and_out_of_order_events_never_move_a_refund_twice_or_backwards() {
    let db = TestDb::new().await;
    let mut app = spawn(&db).await;
    hold_refunds_pending(&app).await;
    let (r, payment) = pending_refund(&mut app, 6_000).await;
    let post = |body: String| {
        let app = &app;
        async move {
            let (status, answer) =
                post_webhook(app, "sandbox", &signed(SECRET, unix_now(), &body), &body).await;
            assert_eq!(status, 200, "{answer}");
            (
                answer["results"][0]["outcome"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                answer["results"][0]["duplicate"].as_bool().unwrap_or(false),
            )
        }
    };

    assert_eq!(
        post(event("evt_2", &r, "succeeded", true)).await,
        ("APPLIED".to_owned(), false)
    );
    assert_eq!(
        post(event("evt_2", &r, "succeeded", true)).await,
        ("APPLIED".to_owned(), true),
        "a redelivery is recognised"
    );
    // An older event arriving late, and a contradicting one: neither moves it back.
    assert_eq!(
        post(event("evt_1", &r, "pending", true)).await,
        ("IGNORED".to_owned(), false)
    );
    assert_eq!(
        post(event("evt_3", &r, "failed", true)).await,
        ("IGNORED".to_owned(), false)
    );
    let now = get(&mut app, &r.id).await;
    assert_eq!(status_of(&now), pb::RefundStatus::Succeeded);
    assert!(now.failure_code.is_empty(), "{now:?}");
    assert_eq!(
        status_history(&db, &r.id)
            .await
            .iter()
            .filter(|(_, to, _)| to == "succeeded")
            .count(),
        1
    );
    // The reservation stands: only 4,000 of the 10,000 are left.
    let over = app
        .client
        .create_refund(refund_request(&payment, Some(4_001), "USD"))
        .await
        .expect_err("over-refund");
    assert_eq!(over.code(), tonic::Code::FailedPrecondition, "{over:?}");
}

#[tokio::test]
async fn a_failed_event_releases_the_reserved_amount() {
    let db = TestDb::new().await;
    let mut app = spawn(&db).await;
    hold_refunds_pending(&app).await;
    let (r, payment) = pending_refund(&mut app, 10_000).await;
    let body = event("evt_failed", &r, "failed", true);
    let (status, answer) =
        post_webhook(&app, "sandbox", &signed(SECRET, unix_now(), &body), &body).await;
    assert_eq!(status, 200, "{answer}");
    let failed = get(&mut app, &r.id).await;
    assert_eq!(status_of(&failed), pb::RefundStatus::Failed);
    assert_eq!(failed.failure_code, "expired_or_canceled_card");
    assert_eq!(
        reserved_amount(&db, &payment).await,
        0,
        "the failed refund's amount was released"
    );
}

#[tokio::test]
async fn an_event_for_a_refund_we_cannot_match_yet_is_kept_and_applied_later() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_webhook_secrets = vec![refund_service::secret::Secret::opaque(SECRET.to_owned())];
        // The creation below times out; the reconciler looks it up 300 ms later.
        s.sandbox_traffic.call_timeout = Duration::from_millis(300);
        s.sandbox_traffic.max_attempts = 1;
        s.refunds.reconcile_delay = Duration::from_millis(300);
        s.refunds.reconcile_interval = Duration::from_millis(50);
    })
    .await;
    app.sandbox
        .set_faults(&FaultConfig {
            settle_delay_ms: 3_600_000,
            timeout_rate: 1.0,
            hang_ms: 2_000,
            ..FaultConfig::default()
        })
        .await
        .expect("set faults");
    let payment = app.seed(5_000, "USD").await;
    let r = app
        .client
        .create_refund(refund_request(&payment, Some(5_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Pending);
    assert!(
        r.provider_refund_id.is_empty(),
        "the answer was lost: {r:?}"
    );
    let at_provider = app.ledger(&payment).await;
    assert_eq!(at_provider.len(), 1);

    // The provider's event names only its own refund id, which we do not know yet.
    let unknown = pb::Refund {
        provider_refund_id: at_provider[0].id.clone(),
        ..r.clone()
    };
    let body = event("evt_early", &unknown, "succeeded", false);
    let (status, answer) =
        post_webhook(&app, "sandbox", &signed(SECRET, unix_now(), &body), &body).await;
    assert_eq!(status, 200, "stored, not dropped: {answer}");
    assert_eq!(answer["results"][0]["outcome"], "UNMATCHED", "{answer}");

    // The reconciler finds the refund at the provider (still pending there), records its id,
    // and the kept event then settles it.
    let done = app
        .wait_for_status(&r.id, pb::RefundStatus::Succeeded)
        .await;
    assert_eq!(done.provider_refund_id, at_provider[0].id);
    let history = status_history(&db, &r.id).await;
    assert_eq!(
        history
            .last()
            .map(|(_, to, source)| (to.as_str(), source.as_str())),
        Some(("succeeded", "webhook")),
        "{history:?}"
    );
    assert_eq!(
        app.ledger(&payment).await.len(),
        1,
        "one refund at the provider"
    );
}

#[tokio::test]
async fn watch_refund_answers_not_found_and_invalid_argument_before_streaming() {
    let db = TestDb::new().await;
    let mut app = spawn(&db).await;
    let missing = app
        .client
        .watch_refund(pb::WatchRefundRequest {
            id: "rf_0000000000000000000000000000beef".into(),
        })
        .await
        .map(|_| ())
        .expect_err("unknown refund");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let bad = app
        .client
        .watch_refund(pb::WatchRefundRequest { id: "nope".into() })
        .await
        .map(|_| ())
        .expect_err("bad id");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // A refund that is already terminal: its state, then the end of the stream.
    let payment = app.seed(100, "USD").await;
    let r = app
        .client
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Succeeded);
    let all: Vec<_> = app
        .client
        .watch_refund(pb::WatchRefundRequest { id: r.id.clone() })
        .await
        .expect("watch")
        .into_inner()
        .collect()
        .await;
    assert_eq!(all.len(), 1, "{all:?}");
}

#[tokio::test]
async fn list_providers_reports_the_default_sandbox_its_capabilities_and_health() {
    let db = TestDb::new().await;
    let mut app = spawn(&db).await;
    let providers = app
        .client
        .list_providers(pb::ListProvidersRequest {})
        .await
        .expect("list providers")
        .into_inner()
        .providers;
    assert_eq!(providers.len(), 1, "{providers:?}");
    let sandbox = &providers[0];
    assert_eq!(sandbox.name, "sandbox");
    assert!(sandbox.is_default);
    assert!(sandbox.supports_full_refunds && sandbox.supports_partial_refunds);
    assert!(sandbox.supports_refund_lookup && sandbox.supports_payment_lookup);
    assert!(!sandbox.settles_by_webhook_only);
    assert!(sandbox.webhooks_enabled);
    let health = sandbox.health.clone().expect("health");
    assert_eq!(health.circuit_state(), pb::CircuitState::Closed);
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(health.last_error, "");

    // The provider goes down: its circuit opens, and the last error says why.
    app.sandbox
        .set_faults(&FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        })
        .await
        .expect("set faults");
    let payment = app.seed(100, "USD").await;
    for _ in 0..3 {
        let _ = app
            .client
            .create_refund(refund_request(&payment, None, "USD"))
            .await;
    }
    let health = eventually(Duration::from_secs(10), "the circuit to open", || {
        let mut client = app.client.clone();
        async move {
            let p = client
                .list_providers(pb::ListProvidersRequest {})
                .await
                .ok()?
                .into_inner()
                .providers;
            let health = p.first()?.health.clone()?;
            (health.circuit_state() == pb::CircuitState::Open).then_some(health)
        }
    })
    .await;
    assert!(health.consecutive_failures >= 1, "{health:?}");
    assert!(!health.last_error.is_empty(), "{health:?}");
}

#[tokio::test]
async fn a_watcher_on_one_replica_sees_a_change_made_on_another() {
    let (sandbox_url, _sandbox) = crate::helpers::spawn_sandbox(FaultConfig {
        settle_delay_ms: 3_600_000,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    if db.url.starts_with("sqlite:") {
        eprintln!("skipped: replicas share PostgreSQL (SQLite serves one process)");
        return;
    }
    let replica = |url: String| {
        let db = &db;
        async move {
            spawn_app_with(db, move |s| {
                s.sandbox_url = Some(url);
                s.sandbox_webhook_secrets =
                    vec![refund_service::secret::Secret::opaque(SECRET.to_owned())];
                s.refunds.reconcile_delay = Duration::from_secs(3600);
                // No polling to speak of: A hears of B's change by B's notice.
                s.refunds.watch_poll_interval = Duration::from_secs(3600);
            })
            .await
        }
    };
    let mut a = replica(sandbox_url.clone()).await;
    let b = replica(sandbox_url).await;
    let (r, _) = pending_refund(&mut a, 900).await;
    let mut stream = a
        .client
        .watch_refund(pb::WatchRefundRequest { id: r.id.clone() })
        .await
        .expect("watch on A")
        .into_inner();
    let first = stream.next().await.expect("current").expect("ok");
    assert_eq!(status_of(&first), pb::RefundStatus::Pending);

    // The provider's webhook reaches replica B.
    let body = event("evt_on_b", &r, "succeeded", true);
    let (status, answer) =
        post_webhook(&b, "sandbox", &signed(SECRET, unix_now(), &body), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "APPLIED", "{answer}");

    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("A's watcher hears of it")
        .expect("a message")
        .expect("ok");
    assert_eq!(status_of(&next), pb::RefundStatus::Succeeded);
    assert!(stream.next().await.is_none());
}

/// `/webhooks/{provider}` serves configured providers only: an unknown one, or one without a
/// signing secret, is 404, and says why.
#[tokio::test]
async fn webhooks_of_an_unknown_or_unsigned_provider_are_not_found() {
    let db = TestDb::new().await;
    let app = spawn(&db).await;
    for provider in ["adyen", "no%20such", "mercadopago", "stripe"] {
        let (status, body) = post_webhook(&app, provider, &[], "{}").await;
        assert_eq!(status, 404, "{provider}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("not enabled"),
            "{provider}: {body}"
        );
    }
    // The sandbox, configured with a secret, is there, and refuses an unsigned delivery.
    let (status, body) = post_webhook(&app, "sandbox", &[], "{}").await;
    assert_eq!(status, 400, "{body}");
}
