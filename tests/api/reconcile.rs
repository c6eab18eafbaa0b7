//! Ambiguous provider failures: the refund stays PENDING and the reconciler settles it by
//! looking it up at the provider, never by refunding again.

use std::time::Duration;

use refund_service::api::pb;
use refund_service::sandbox::FaultConfig;

use crate::helpers::*;

#[tokio::test]
async fn a_timeout_leaves_the_refund_pending_and_the_reconciler_settles_it_once() {
    let (sandbox_url, sandbox) = spawn_sandbox(FaultConfig {
        timeout_rate: 1.0,
        hang_ms: 3_000,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.sandbox_traffic.call_timeout = Duration::from_millis(300);
        // One attempt: no in-line look-up, so the reconciler is the one that settles it.
        s.sandbox_traffic.max_attempts = 1;
        s.refunds.reconcile_delay = Duration::from_millis(200);
        s.refunds.reconcile_interval = Duration::from_millis(50);
    })
    .await;
    let payment = app.seed(5_000, "USD").await;

    let refund = app
        .client
        .create_refund(refund_request(&payment, Some(1_200), "USD"))
        .await
        .expect("a timeout is not an error")
        .into_inner();
    assert_eq!(status_of(&refund), pb::RefundStatus::Pending);
    assert!(refund.provider_refund_id.is_empty());

    // The provider did refund, although we never heard back.
    assert_eq!(app.ledger(&payment).await.len(), 1);

    let settled = app
        .wait_for_status(&refund.id, pb::RefundStatus::Succeeded)
        .await;
    let ledger = app.ledger(&payment).await;
    assert_eq!(ledger.len(), 1, "looked up, not refunded again");
    assert_eq!(settled.provider_refund_id, ledger[0].id);
    assert_eq!(sandbox.stats().refunds_created, 1);
}

#[tokio::test]
async fn a_rate_limited_refund_is_looked_up_then_sent_again_with_the_same_key() {
    // One write per second, and someone else just used it: the pre-flight (a read) passes, the
    // refund creation right after it is refused with 429 before the provider processes anything.
    let (sandbox_url, sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.sandbox_traffic.max_attempts = 1;
        s.refunds.reconcile_delay = Duration::from_millis(200);
        s.refunds.reconcile_interval = Duration::from_millis(50);
    })
    .await;
    let payment = app.seed(5_000, "USD").await;
    let other = app.seed(5_000, "USD").await;
    sandbox.set_faults(FaultConfig {
        rate_limit_per_sec: 1,
        ..FaultConfig::default()
    });
    sandbox
        .create_refund(
            refund_service::sandbox::NewRefund {
                payment: other,
                amount: Some(1),
                reason: None,
                metadata: Default::default(),
            },
            None,
        )
        .await
        .expect("uses this second's write");

    let refund = app
        .client
        .create_refund(refund_request(&payment, Some(800), "USD"))
        .await
        .expect("rate limiting is not an error")
        .into_inner();
    assert_eq!(status_of(&refund), pb::RefundStatus::Pending);
    assert!(
        app.ledger(&payment).await.is_empty(),
        "nothing reached the ledger yet"
    );
    assert!(sandbox.stats().rate_limited >= 1);
    // The provider recovers.
    sandbox.set_faults(FaultConfig::default());

    let settled = app
        .wait_for_status(&refund.id, pb::RefundStatus::Succeeded)
        .await;
    let ledger = app.ledger(&payment).await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        ledger[0].idempotency_key.as_deref(),
        Some(refund.id.as_str())
    );
    assert_eq!(settled.provider_refund_id, ledger[0].id);
}

#[tokio::test]
async fn a_refund_left_pending_by_a_stopped_service_is_settled_after_restart() {
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig {
        timeout_rate: 1.0,
        hang_ms: 2_000,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let configure = |url: String, interval: Duration| {
        move |s: &mut refund_service::config::ServeSettings| {
            s.sandbox_url = Some(url);
            s.sandbox_traffic.call_timeout = Duration::from_millis(200);
            s.sandbox_traffic.max_attempts = 1;
            s.refunds.reconcile_delay = Duration::from_millis(500);
            s.refunds.reconcile_interval = interval;
        }
    };
    // The first instance's reconciler makes its start-up pass and then sleeps for an hour.
    let mut first = spawn_app_with(
        &db,
        configure(sandbox_url.clone(), Duration::from_secs(3600)),
    )
    .await;
    let payment = first.seed(5_000, "USD").await;
    let refund = first
        .client
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&refund), pb::RefundStatus::Pending);
    first.stop().await;

    // A new instance on the same database settles it when its first look-up is due.
    let second = spawn_app_with(&db, configure(sandbox_url, Duration::from_millis(50))).await;
    let settled = second
        .wait_for_status(&refund.id, pb::RefundStatus::Succeeded)
        .await;
    assert_eq!(settled.amount, 5_000);
    assert_eq!(second.ledger(&payment).await.len(), 1);
}

#[tokio::test]
async fn a_timeout_is_resolved_in_line_by_a_lookup_when_retries_are_allowed() {
    // With retries, the timed-out creation is looked up at the provider right away: found, so
    // the refund settles in the same call, and it is never sent twice.
    let (sandbox_url, sandbox) = spawn_sandbox(FaultConfig {
        timeout_rate: 1.0,
        hang_ms: 3_000,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.sandbox_traffic.call_timeout = Duration::from_millis(300);
        s.sandbox_traffic.max_attempts = 3;
        s.sandbox_traffic.base_backoff = Duration::from_millis(50);
    })
    .await;
    let payment = app.seed(5_000, "USD").await;
    let refund = app
        .client
        .create_refund(refund_request(&payment, Some(900), "USD"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(&refund), pb::RefundStatus::Succeeded);
    let ledger = app.ledger(&payment).await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(refund.provider_refund_id, ledger[0].id);
    assert_eq!(sandbox.stats().refunds_created, 1);
}

/// The look-up schedule of a refund the provider keeps PENDING: first after the reconcile delay
/// (a minute), then doubling. The service's clock is moved forward instead of waiting.
#[tokio::test]
async fn a_pending_refund_is_looked_up_after_a_minute_then_on_a_doubling_schedule() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.refunds.reconcile_delay = Duration::from_secs(60);
        s.refunds.reconcile_max_delay = Duration::from_secs(600);
        s.refunds.reconcile_interval = Duration::from_millis(20);
    })
    .await;
    app.sandbox
        .set_faults(&FaultConfig {
            settle_delay_ms: 24 * 3_600_000,
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

    let requests = || async { app.sandbox.stats().await.expect("stats").requests };
    let clock = app.service.clock().clone();
    let mut expected = requests().await;
    // (how far to move the clock, whether a look-up is due by then)
    let steps = [
        (59, false),  // t = 59 s
        (2, true),    // t = 61 s: the first look-up, after a minute
        (118, false), // t = 179 s
        (4, true),    // t = 183 s: 120 s after the first
        (238, false), // t = 421 s
        (4, true),    // t = 425 s: 240 s after the second
    ];
    for (secs, due) in steps {
        clock.advance(Duration::from_secs(secs));
        if due {
            expected += 1;
            eventually(
                Duration::from_secs(10),
                "a look-up at the provider",
                || async { (requests().await == expected).then_some(()) },
            )
            .await;
        }
        // Passes made now, at this time on the clock, ask nothing more.
        for _ in 0..3 {
            app.service
                .reconcile_once()
                .await
                .expect("a reconciler pass");
        }
        assert_eq!(requests().await, expected, "after moving {secs} s");
    }
    let still = app
        .client
        .get_refund(pb::GetRefundRequest { id: r.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(status_of(&still), pb::RefundStatus::Pending);
    assert_eq!(still.provider_refund_id, r.provider_refund_id);
}

/// The lease (`next_check_at`) of a refund that has just been stored, while its provider call is
/// in flight, and when the row was first seen.
async fn lease_when_stored(db: &TestDb) -> (i64, i64) {
    use sea_orm::{ConnectionTrait as _, Database, Statement};
    let conn = Database::connect(&db.url).await.expect("connect");
    let found = eventually(Duration::from_secs(10), "the refund to be stored", || {
        let conn = conn.clone();
        async move {
            let row = conn
                .query_one_raw(Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT next_check_at FROM refunds",
                ))
                .await
                .ok()??;
            let lease: i64 = row.try_get("", "next_check_at").ok()?;
            Some((lease, unix_micros()))
        }
    })
    .await;
    conn.close().await.ok();
    found
}

fn unix_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(now.as_micros()).expect("fits")
}

/// Defect: the request path took its ownership lease from a clock reading made before the
/// pre-flight, so a slow pre-flight shortened the lease below the provider budget that the call
/// after it may take; the reconciler (or another replica) could then claim the refund and send it
/// while the first attempt was still in flight. The lease must be taken when the refund is stored
/// and cover a whole provider budget from then.
#[tokio::test]
async fn the_request_lease_covers_a_whole_provider_budget_after_a_slow_pre_flight() {
    let db = TestDb::new().await;
    let margin = Duration::from_millis(500);
    let app = spawn_app_with(&db, |s| {
        s.refunds.lease_margin = margin;
        s.refunds.reconcile_delay = Duration::from_secs(3600);
    })
    .await;
    let payment = app.seed(5_000, "USD").await;
    // Every provider call takes 1.5 s: the pre-flight, then the creation.
    app.sandbox
        .set_faults(&FaultConfig {
            latency_ms: 1_500,
            ..FaultConfig::default()
        })
        .await
        .expect("faults");
    let budget = i64::try_from(app.service.config().provider_budget.as_micros()).expect("fits");

    let mut client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .create_refund(refund_request(&payment, Some(1_000), "USD"))
            .await
    });
    let (lease, seen_at) = lease_when_stored(&db).await;
    assert!(
        lease - seen_at >= budget,
        "the lease ends {} ms after the refund was stored; the provider call may take {} ms",
        (lease - seen_at) / 1000,
        budget / 1000
    );
    let refund = call.await.expect("task").expect("refund").into_inner();
    assert_eq!(status_of(&refund), pb::RefundStatus::Succeeded);
}
