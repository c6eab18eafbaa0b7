//! A provider outage in the middle of a batch: the batch holds the provider's jobs, queued, and
//! runs them once the provider answers again, instead of failing them; a unary refund during the
//! outage is UNAVAILABLE with a time to retry, and nothing is stored as FAILED.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use refund_service::api::pb;
use refund_service::api::pb::bulk_refund_event::Event;
use refund_service::config::ServeSettings;
use refund_service::sandbox::FaultConfig;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::*;

/// Every request answered 500, processing nothing.
fn outage() -> FaultConfig {
    FaultConfig {
        error_rate: 1.0,
        ..FaultConfig::default()
    }
}

/// A breaker that probes every second, and a reconciler quick enough that refunds left PENDING
/// by the outage settle within the test.
fn quick_breaker(s: &mut ServeSettings) {
    s.sandbox_traffic.breaker_open_for = Duration::from_secs(1);
    s.refunds.reconcile_delay = Duration::from_millis(200);
    s.refunds.reconcile_interval = Duration::from_millis(50);
}

fn job(payment: &str) -> pb::CreateRefundRequest {
    refund_request(payment, None, "USD")
}

/// Waits until no refund of the service is PENDING, and returns how many there are in all.
async fn settled_refunds(app: &TestApp, expected: usize) -> Vec<pb::Refund> {
    eventually(
        Duration::from_secs(60),
        "every refund to settle",
        || async {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = app
                    .client
                    .clone()
                    .list_refunds(pb::ListRefundsRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                all.extend(page.refunds);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let pending = all
                .iter()
                .filter(|r| status_of(r) == pb::RefundStatus::Pending)
                .count();
            (all.len() == expected && pending == 0).then_some(all)
        },
    )
    .await
}

/// Each payment refunded exactly once at the provider.
async fn assert_refunded_once(app: &TestApp, payments: &[String]) {
    let mut by_payment: BTreeMap<String, usize> = BTreeMap::new();
    for refund in app.sandbox.ledger(None).await.expect("ledger") {
        *by_payment.entry(refund.payment).or_default() += 1;
    }
    for p in payments {
        assert_eq!(by_payment.get(p), Some(&1), "payment {p} at the provider");
    }
    assert_eq!(by_payment.len(), payments.len());
}

#[tokio::test]
async fn a_batch_rides_out_a_twenty_second_outage_and_every_job_succeeds() {
    const JOBS: usize = 2_000;
    const OUTAGE: Duration = Duration::from_secs(20);
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, quick_breaker).await;
    let payments = app.seed_many(JOBS as u32, 1_000).await;

    let started = Instant::now();
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments.iter().map(|p| job(p)).collect(),
            max_concurrency: 16,
            ..Default::default()
        })
        .await
        .expect("batch accepted")
        .into_inner();
    let mut events = Vec::new();
    let mut outage_over: Option<tokio::task::JoinHandle<()>> = None;
    let mut results = 0;
    while let Some(event) = stream.next().await {
        let event = event.expect("stream item");
        if matches!(event.event, Some(Event::Result(_))) {
            results += 1;
        }
        // The provider goes down a quarter of the way through, for twenty seconds.
        if results == JOBS / 4 && outage_over.is_none() {
            app.sandbox.set_faults(&outage()).await.expect("faults on");
            let sandbox = app.sandbox.clone();
            outage_over = Some(tokio::spawn(async move {
                tokio::time::sleep(OUTAGE).await;
                sandbox
                    .set_faults(&FaultConfig::default())
                    .await
                    .expect("faults off");
            }));
        }
        events.push(event);
    }
    let took = started.elapsed();
    outage_over
        .expect("the outage started")
        .await
        .expect("outage task");

    let summary = match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Summary(s)) => s,
        other => panic!("the stream ends with a summary: {other:?}"),
    };
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Result(r)) if r.error.is_some() => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert!(
        failed.is_empty(),
        "no job fails: {:?}",
        &failed[..failed.len().min(3)]
    );
    assert_eq!((summary.succeeded, summary.failed), (JOBS as i32, 0));

    // The watchers were told: the wait, then its end, with the provider answering again.
    let waiting = events
        .iter()
        .position(
            |e| matches!(&e.event, Some(Event::ProviderWaiting(w)) if w.provider == "sandbox"),
        )
        .expect("a provider_waiting event");
    let ended = events
        .iter()
        .rposition(|e| matches!(&e.event, Some(Event::ProviderWaitEnded(end)) if end.provider == "sandbox" && !end.gave_up))
        .expect("a provider_wait_ended event");
    assert!(waiting < ended);
    let Some(Event::ProviderWaiting(first_wait)) = &events[waiting].event else {
        unreachable!()
    };
    assert!(
        first_wait.reason.contains("500") || first_wait.reason.contains("circuit open"),
        "{first_wait:?}"
    );
    assert!(first_wait.next_attempt_time.is_some() && first_wait.give_up_time.is_some());
    let waited: i64 = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::ProviderWaitEnded(end)) => end.waited.as_ref().map(|d| d.seconds),
            _ => None,
        })
        .sum();

    // Refunds the outage left PENDING settle; each payment was refunded once.
    settled_refunds(&app, JOBS).await;
    assert_refunded_once(&app, &payments).await;
    eprintln!(
        "{JOBS} jobs with a {}s outage: batch took {:.1}s, waited {waited}s for the provider, 0 failed",
        OUTAGE.as_secs(),
        took.as_secs_f64()
    );
}

#[tokio::test]
async fn get_bulk_refund_shows_the_wait_while_it_lasts() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, quick_breaker).await;
    let payments = app.seed_many(20, 1_000).await;
    app.sandbox.set_faults(&outage()).await.expect("faults on");
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments.iter().map(|p| job(p)).collect(),
            max_concurrency: 4,
            ..Default::default()
        })
        .await
        .expect("batch accepted")
        .into_inner();
    let bulk_id = match stream.next().await.expect("accepted").expect("event").event {
        Some(Event::Accepted(a)) => a.bulk_id,
        other => panic!("first event is accepted: {other:?}"),
    };
    let wait = eventually(
        Duration::from_secs(30),
        "the batch to show its wait",
        || {
            let mut client = app.client.clone();
            let bulk_id = bulk_id.clone();
            async move {
                let batch = client
                    .get_bulk_refund(pb::GetBulkRefundRequest { bulk_id })
                    .await
                    .ok()?
                    .into_inner();
                batch.provider_waits.first().cloned()
            }
        },
    )
    .await;
    assert_eq!(wait.provider, "sandbox");
    assert!(wait.held_jobs >= 1, "{wait:?}");

    app.sandbox
        .set_faults(&FaultConfig::default())
        .await
        .expect("faults off");
    while let Some(event) = stream.next().await {
        if let Some(Event::Summary(s)) = event.expect("event").event {
            assert_eq!((s.succeeded, s.failed), (20, 0));
        }
    }
    let batch = app
        .client
        .get_bulk_refund(pb::GetBulkRefundRequest { bulk_id })
        .await
        .expect("batch")
        .into_inner();
    assert!(batch.provider_waits.is_empty(), "{batch:?}");
    assert_refunded_once(&app, &payments).await;
}

#[tokio::test]
async fn a_refund_during_an_open_circuit_is_unavailable_with_a_retry_delay_and_stores_nothing() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_traffic.breaker_open_for = Duration::from_secs(30);
    })
    .await;
    let payment = app.seed(1_000, "USD").await;
    app.sandbox.set_faults(&outage()).await.expect("faults on");

    // The first calls fail through their retries and open the circuit; then calls fail fast,
    // saying when the circuit lets a call through again.
    let status = eventually(Duration::from_secs(60), "a fail-fast answer", || {
        let mut client = app.client.clone();
        let payment = payment.clone();
        async move {
            let status = client
                .create_refund(refund_request(&payment, None, "USD"))
                .await
                .expect_err("the provider is down");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            status.message().contains("circuit open").then_some(status)
        }
    })
    .await;
    assert_eq!(error_reason(&status), "PROVIDER_UNAVAILABLE");
    assert_eq!(
        error_metadata(&status, "provider").as_deref(),
        Some("sandbox")
    );
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a retry delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(30),
        "{delay:?}"
    );

    // Nothing was stored, so nothing is FAILED; the payment can be refunded once it is back.
    let listed = app
        .client
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.refunds.is_empty(), "{:?}", listed.refunds);
    assert_eq!(reserved_amount_or_zero(&db, &payment).await, 0);
}

/// What the store holds reserved against a payment; 0 when it has no balance row.
async fn reserved_amount_or_zero(db: &TestDb, payment: &str) -> i64 {
    use sea_orm::{ConnectionTrait as _, Database, Statement};
    let conn = Database::connect(&db.url).await.expect("connect");
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT reserved_amount FROM payments WHERE payment_id = '{payment}'"),
        ))
        .await
        .expect("read payments");
    conn.close().await.ok();
    row.map_or(0, |r| {
        r.try_get::<i64>("", "reserved_amount").expect("amount")
    })
}

#[tokio::test]
async fn a_batch_canceled_while_it_waits_cancels_its_held_jobs() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, quick_breaker).await;
    let payments = app.seed_many(10, 1_000).await;
    app.sandbox.set_faults(&outage()).await.expect("faults on");
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments.iter().map(|p| job(p)).collect(),
            max_concurrency: 4,
            ..Default::default()
        })
        .await
        .expect("batch accepted")
        .into_inner();
    let mut events = Vec::new();
    let mut bulk_id = None;
    let mut canceled = false;
    while let Some(event) = stream.next().await {
        let event = event.expect("event");
        match &event.event {
            Some(Event::Accepted(a)) => bulk_id = Some(a.bulk_id.clone()),
            // Every job is held: cancel the batch.
            Some(Event::ProviderWaiting(_)) if !canceled => {
                canceled = true;
                app.client
                    .cancel_bulk_refund(pb::CancelBulkRefundRequest {
                        bulk_id: bulk_id.clone().expect("accepted first"),
                    })
                    .await
                    .expect("cancel");
            }
            _ => {}
        }
        events.push(event);
    }
    let summary = match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Summary(s)) => s,
        other => panic!("a summary last: {other:?}"),
    };
    assert_eq!(summary.state(), pb::BulkRefundState::Canceled);
    assert_eq!(summary.canceled, 10, "{summary:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.event, Some(Event::ProviderWaitEnded(_)))),
        "the wait ends with the batch"
    );
    assert!(app.sandbox.ledger(None).await.expect("ledger").is_empty());
}

/// A wait is not a failure: a batch that aborts on error rides out the outage too. Meanwhile the
/// metrics show the held jobs, and afterwards the time waited.
#[tokio::test]
async fn an_abort_on_error_batch_is_not_aborted_by_an_outage_and_the_metrics_show_the_wait() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, quick_breaker).await;
    let payments = app.seed_many(12, 1_000).await;
    app.sandbox.set_faults(&outage()).await.expect("faults on");
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments.iter().map(|p| job(p)).collect(),
            max_concurrency: 4,
            abort_on_error: true,
            ..Default::default()
        })
        .await
        .expect("batch accepted")
        .into_inner();
    let metrics = || scrape_metrics(app.http_addr);
    let mut summary = None;
    let mut restored = false;
    while let Some(event) = stream.next().await {
        match event.expect("event").event {
            Some(Event::ProviderWaiting(_)) if !restored => {
                let held = eventually(
                    Duration::from_secs(10),
                    "held jobs in the metrics",
                    || async {
                        let text = metrics().await;
                        metric_value(&text, r#"refund_bulk_jobs_held{provider="sandbox"}"#)
                            .filter(|&n| n > 0.0)
                    },
                )
                .await;
                assert!(held <= 12.0);
                restored = true;
                app.sandbox
                    .set_faults(&FaultConfig::default())
                    .await
                    .expect("faults off");
            }
            Some(Event::Summary(s)) => summary = Some(s),
            _ => {}
        }
    }
    let summary = summary.expect("a summary");
    assert_eq!(
        summary.state(),
        pb::BulkRefundState::Completed,
        "{summary:?}"
    );
    assert_eq!(
        (summary.succeeded, summary.failed, summary.skipped),
        (12, 0, 0)
    );
    let text = metrics().await;
    assert!(
        text.contains("refund_bulk_jobs_held{provider=\"sandbox\"} 0"),
        "nothing held any more: {text}"
    );
    let waited = metric_value(
        &text,
        r#"refund_bulk_provider_wait_seconds_total{provider="sandbox"}"#,
    )
    .expect("time waited");
    assert!(waited > 0.0, "{waited}");
    assert_refunded_once(&app, &payments).await;
}

/// Defect: while every job of a batch was held (none in flight), the driver did not renew their
/// leases; a wait longer than the lease let the jobs be taken over — by this very driver — while
/// still held, and a job could run, and report, twice.
#[tokio::test]
async fn held_jobs_keep_their_leases_through_a_wait_longer_than_the_lease() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        quick_breaker(s);
        // Between two probes nothing is in flight for longer than a lease.
        s.sandbox_traffic.breaker_open_for = Duration::from_secs(3);
        s.refunds.bulk.lease = Duration::from_millis(600);
    })
    .await;
    let payments = app.seed_many(8, 1_000).await;
    app.sandbox.set_faults(&outage()).await.expect("faults on");
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments.iter().map(|p| job(p)).collect(),
            max_concurrency: 8,
            ..Default::default()
        })
        .await
        .expect("batch accepted")
        .into_inner();
    let mut events = Vec::new();
    let mut outage_over = None;
    while let Some(event) = stream.next().await {
        let event = event.expect("event");
        if matches!(event.event, Some(Event::ProviderWaiting(_))) && outage_over.is_none() {
            // Several lease periods of waiting, watching how many jobs are held.
            let sandbox = app.sandbox.clone();
            let http_addr = app.http_addr;
            outage_over = Some(tokio::spawn(async move {
                let until = tokio::time::Instant::now() + Duration::from_secs(5);
                let mut most_held = 0.0_f64;
                while tokio::time::Instant::now() < until {
                    let text = scrape_metrics(http_addr).await;
                    let held = metric_value(&text, r#"refund_bulk_jobs_held{provider="sandbox"}"#)
                        .unwrap_or(0.0);
                    most_held = most_held.max(held);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                sandbox
                    .set_faults(&FaultConfig::default())
                    .await
                    .expect("faults off");
                most_held
            }));
        }
        events.push(event);
    }
    let most_held = outage_over
        .expect("the batch waited")
        .await
        .expect("sampling task");
    assert!(most_held <= 8.0, "{most_held} jobs held for a batch of 8");
    let mut indices: Vec<i32> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Result(r)) => Some(r.index),
            _ => None,
        })
        .collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..8).collect::<Vec<i32>>(), "one result per job");
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Summary(s)) => assert_eq!((s.succeeded, s.failed), (8, 0), "{s:?}"),
        other => panic!("a summary last: {other:?}"),
    }
    assert_refunded_once(&app, &payments).await;
}
