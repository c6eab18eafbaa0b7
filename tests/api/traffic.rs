//! Provider traffic control under a batch: our own rate limit keeps the provider's busiest
//! second below it, and the provider's 429s are retried (honouring Retry-After) without
//! refunding anything twice.

use std::time::Duration;

use refund_service::api::pb;
use refund_service::api::pb::bulk_refund_event::Event;
use refund_service::sandbox::FaultConfig;
use tokio_stream::StreamExt as _;

use crate::helpers::*;

/// Runs one batch to its end: its id and summary.
async fn run_batch(
    app: &mut TestApp,
    payments: &[String],
    concurrency: i32,
) -> (String, pb::BulkSummary) {
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments
                .iter()
                .map(|p| refund_request(p, Some(100), "USD"))
                .collect(),
            max_concurrency: concurrency,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut bulk_id, mut summary) = (String::new(), None);
    while let Some(e) = stream.next().await {
        match e.unwrap().event {
            Some(Event::Accepted(a)) => bulk_id = a.bulk_id,
            Some(Event::Summary(s)) => summary = Some(s),
            _ => {}
        }
    }
    (bulk_id, summary.expect("summary"))
}

#[tokio::test]
async fn our_rate_limit_keeps_the_provider_below_it() {
    let (sandbox_url, sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let db = TestDb::new().await;
    let rate = 20;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.sandbox_traffic.rate_per_sec = rate;
    })
    .await;
    let payments = app.seed_many(50, 1_000).await;
    let (_, summary) = run_batch(&mut app, &payments, 32).await;
    assert_eq!(summary.succeeded, 50);
    let stats = sandbox.stats();
    // The busiest second of refund creations stays within our rate (plus the bucket's burst).
    let burst = u64::from(rate / 10).max(1);
    assert!(
        stats.max_writes_per_sec <= u64::from(rate) + burst,
        "busiest second saw {} writes for a limit of {rate}/s",
        stats.max_writes_per_sec
    );
    assert_eq!(stats.rate_limited, 0);
}

#[tokio::test]
async fn provider_429s_are_retried_after_retry_after_and_nothing_is_refunded_twice() {
    // The provider allows 5 writes a second; we do not limit ourselves, so we run into 429s.
    let (sandbox_url, sandbox) = spawn_sandbox(FaultConfig {
        rate_limit_per_sec: 5,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.sandbox_traffic.max_attempts = 10;
    })
    .await;
    let payments = app.seed_many(12, 1_000).await;
    let (_, summary) =
        tokio::time::timeout(Duration::from_secs(60), run_batch(&mut app, &payments, 12))
            .await
            .expect("the batch ends");
    assert_eq!(summary.succeeded, 12, "{summary:?}");
    let stats = sandbox.stats();
    assert!(stats.rate_limited > 0, "the provider did refuse some calls");
    for p in &payments {
        assert_eq!(app.ledger(p).await.len(), 1, "{p}");
    }
}

#[tokio::test]
async fn a_provider_that_is_down_is_detected_once_not_once_per_job() {
    // Every call fails with 500. After a few failures the circuit opens and the batch holds its
    // jobs without calling the provider again; when its wait bound passes, they fail (retryably).
    let (sandbox_url, sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.sandbox_traffic.max_attempts = 2;
        s.sandbox_traffic.base_backoff = Duration::from_millis(10);
        s.sandbox_traffic.breaker_threshold = 3;
        s.sandbox_traffic.breaker_open_for = Duration::from_secs(60);
        s.refunds.bulk.max_provider_wait = Duration::from_secs(1);
    })
    .await;
    let payments = app.seed_many(40, 1_000).await;
    sandbox.set_faults(FaultConfig {
        error_rate: 1.0,
        ..FaultConfig::default()
    });
    let (bulk_id, summary) = run_batch(&mut app, &payments, 4).await;
    assert_eq!((summary.succeeded, summary.failed), (0, 40));
    let calls = sandbox.stats().requests;
    assert!(calls < 10, "the provider saw {calls} calls for 40 jobs");

    let failed = app
        .client
        .list_bulk_refund_items(pb::ListBulkRefundItemsRequest {
            bulk_id,
            status: pb::BulkItemStatus::Failed.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.items.len(), 40);
    for item in &failed.items {
        let e = item.error.as_ref().unwrap();
        assert_eq!(e.code, "UNAVAILABLE");
        assert!(
            e.retryable,
            "a job that failed because the provider is down can be retried"
        );
    }
    for p in &payments {
        assert!(app.ledger(p).await.is_empty());
    }
}
