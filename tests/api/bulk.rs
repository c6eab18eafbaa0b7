//! BulkRefund: the stream, partial failures, abort, cancel, re-attaching, limits.

use std::collections::BTreeSet;
use std::time::Duration;

use refund_service::api::pb;
use refund_service::api::pb::bulk_refund_event::Event;
use refund_service::sandbox::FaultConfig;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::helpers::*;

/// Reads a stream to its end.
async fn collect(mut stream: tonic::Streaming<pb::BulkRefundEvent>) -> Vec<pb::BulkRefundEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.expect("stream item"));
    }
    events
}

fn results(events: &[pb::BulkRefundEvent]) -> Vec<pb::BulkJobResult> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Result(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn summary(events: &[pb::BulkRefundEvent]) -> pb::BulkSummary {
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Summary(s)) => s,
        other => panic!("last event is not a summary: {other:?}"),
    }
}

fn accepted(events: &[pb::BulkRefundEvent]) -> pb::BulkAccepted {
    match events.first().and_then(|e| e.event.clone()) {
        Some(Event::Accepted(a)) => a,
        other => panic!("first event is not accepted: {other:?}"),
    }
}

fn assert_sequences_are_gapless(events: &[pb::BulkRefundEvent], from: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (from..from + events.len() as u64).collect();
    assert_eq!(seqs, expected);
}

fn job(payment: &str, amount: Option<i64>) -> pb::CreateRefundRequest {
    refund_request(payment, amount, "USD")
}

/// Watches batch `bulk_id`, whose job a runner takes over, to its end.
async fn watch_taken_over(
    app: &mut TestApp,
    bulk_id: &refund_service::domain::BulkId,
) -> Vec<pb::BulkRefundEvent> {
    let watch = app
        .client
        .watch_bulk_refund(pb::WatchBulkRefundRequest {
            bulk_id: bulk_id.as_str().to_owned(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(20), collect(watch))
        .await
        .expect("the taken-over batch finishes")
}

#[tokio::test]
async fn streams_one_result_per_job_then_a_summary_and_partial_failures_do_not_abort() {
    let (mut app, _db) = spawn_app().await;
    let payments = app.seed_many(16, 1_000).await;
    let mut jobs: Vec<_> = payments.iter().map(|p| job(p, Some(400))).collect();
    jobs.push(job("ch_unknown", Some(1))); // 16: not found at the provider
    jobs.push(job("", Some(1))); // 17: invalid
    jobs.push(job(&payments[0], Some(5_000))); // 18: over-refund
    let total = jobs.len();

    let stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs,
            max_concurrency: 4,
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let events = collect(stream).await;
    assert_sequences_are_gapless(&events, 1);
    assert_eq!(accepted(&events).total as usize, total);
    assert!(accepted(&events).bulk_id.starts_with("bulk_"));

    let results = results(&events);
    let indices: BTreeSet<i32> = results.iter().map(|r| r.index).collect();
    assert_eq!(indices, (0..total as i32).collect(), "one result per job");
    assert_eq!(results.len(), total);
    for r in &results {
        match r.index {
            0..=15 => {
                assert!(r.success, "{r:?}");
                let refund = r.refund.as_ref().expect("refund");
                assert_eq!(refund.amount, 400);
                assert_eq!(refund.payment_id, payments[r.index as usize]);
                assert_eq!(r.status, i32::from(pb::BulkItemStatus::Succeeded));
                assert_eq!(r.provider, "sandbox");
            }
            16 => assert_eq!(r.error.as_ref().unwrap().code, "NOT_FOUND"),
            17 => {
                let e = r.error.as_ref().unwrap();
                assert_eq!(e.code, "INVALID_ARGUMENT");
                assert!(e.message.contains("jobs[17].payment_id"), "{}", e.message);
                assert!(!e.retryable);
            }
            18 => assert_eq!(r.error.as_ref().unwrap().code, "OVER_REFUND"),
            _ => unreachable!(),
        }
        if r.index >= 16 {
            assert!(!r.success);
            assert_eq!(r.status, i32::from(pb::BulkItemStatus::Failed));
        }
    }
    let s = summary(&events);
    assert_eq!(
        (s.total, s.succeeded, s.failed, s.skipped, s.canceled),
        (19, 16, 3, 0, 0)
    );
    assert_eq!(s.state, i32::from(pb::BulkRefundState::Completed));
    assert!(s.duration.is_some());

    for p in &payments {
        let ledger = app.ledger(p).await;
        assert_eq!(ledger.len(), 1, "{p}");
        assert_eq!(ledger[0].amount, 400);
    }
}

#[tokio::test]
async fn abort_on_error_skips_the_rest_after_the_first_failure() {
    let (mut app, _db) = spawn_app().await;
    let payments = app.seed_many(4, 1_000).await;
    let jobs = vec![
        job(&payments[0], Some(100)),
        job("ch_missing", Some(100)),
        job(&payments[1], Some(100)),
        job(&payments[2], Some(100)),
        job(&payments[3], Some(100)),
    ];
    let events = collect(
        app.client
            .bulk_refund(pb::BulkRefundRequest {
                jobs,
                abort_on_error: true,
                max_concurrency: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_sequences_are_gapless(&events, 1);
    let results = results(&events);
    let status_of_index = |i: i32| {
        results
            .iter()
            .find(|r| r.index == i)
            .map(|r| pb::BulkItemStatus::try_from(r.status).unwrap())
    };
    assert_eq!(status_of_index(0), Some(pb::BulkItemStatus::Succeeded));
    assert_eq!(status_of_index(1), Some(pb::BulkItemStatus::Failed));
    for i in 2..5 {
        assert_eq!(
            status_of_index(i),
            Some(pb::BulkItemStatus::Skipped),
            "job {i}"
        );
    }
    let s = summary(&events);
    assert_eq!((s.succeeded, s.failed, s.skipped), (1, 1, 3));
    assert_eq!(s.state, i32::from(pb::BulkRefundState::Aborted));
    assert!(
        app.ledger(&payments[1]).await.is_empty(),
        "skipped jobs never reach the provider"
    );
}

#[tokio::test]
async fn a_client_that_disconnects_can_watch_from_where_it_left_off() {
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig {
        latency_ms: 30,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| s.sandbox_url = Some(sandbox_url)).await;
    let payments = app.seed_many(12, 1_000).await;
    let jobs = payments.iter().map(|p| job(p, None)).collect();

    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs,
            max_concurrency: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(stream.next().await.unwrap().unwrap());
    }
    drop(stream); // the client goes away mid-batch
    let bulk_id = accepted(&seen).bulk_id;

    let rest = collect(
        app.client
            .watch_bulk_refund(pb::WatchBulkRefundRequest {
                bulk_id: bulk_id.clone(),
                after_sequence: 3,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_sequences_are_gapless(&rest, 4);
    seen.extend(rest);
    assert_eq!(results(&seen).len(), 12);
    assert_eq!(summary(&seen).succeeded, 12);

    // From the start, the whole stream again, identical.
    let replay = collect(
        app.client
            .watch_bulk_refund(pb::WatchBulkRefundRequest {
                bulk_id: bulk_id.clone(),
                after_sequence: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let ids = |evs: &[pb::BulkRefundEvent]| evs.iter().map(|e| e.sequence).collect::<Vec<_>>();
    assert_eq!(ids(&replay), ids(&seen));
    assert_eq!(results(&replay).len(), 12);

    let batch = app
        .client
        .get_bulk_refund(pb::GetBulkRefundRequest { bulk_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.state, i32::from(pb::BulkRefundState::Completed));
    assert_eq!((batch.total, batch.succeeded, batch.pending), (12, 12, 0));
    assert_eq!(batch.last_sequence, seen.last().unwrap().sequence);
    assert!(batch.finished_at.is_some());
    for p in &payments {
        assert_eq!(app.ledger(p).await.len(), 1);
    }
}

#[tokio::test]
async fn cancel_stops_dispatching_and_keeps_what_finished() {
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig {
        latency_ms: 40,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| s.sandbox_url = Some(sandbox_url)).await;
    let payments = app.seed_many(30, 1_000).await;
    let jobs = payments.iter().map(|p| job(p, Some(10))).collect();
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs,
            max_concurrency: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = vec![stream.next().await.unwrap().unwrap()];
    events.push(stream.next().await.unwrap().unwrap()); // the first result
    let bulk_id = accepted(&events).bulk_id;
    let canceled = app
        .client
        .cancel_bulk_refund(pb::CancelBulkRefundRequest {
            bulk_id: bulk_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled.id, bulk_id);
    while let Some(e) = stream.next().await {
        events.push(e.unwrap());
    }
    assert_sequences_are_gapless(&events, 1);
    let s = summary(&events);
    assert_eq!(s.state, i32::from(pb::BulkRefundState::Canceled));
    assert!(s.canceled > 0, "{s:?}");
    assert_eq!(s.succeeded + s.canceled, 30, "{s:?}");
    assert_eq!(results(&events).len(), 30);

    let mut refunded = 0;
    for p in &payments {
        refunded += app.ledger(p).await.len() as i32;
    }
    assert_eq!(
        refunded, s.succeeded,
        "only finished jobs reached the provider"
    );

    // The canceled jobs, for a dead-letter queue.
    let page = app
        .client
        .list_bulk_refund_items(pb::ListBulkRefundItemsRequest {
            bulk_id,
            status: pb::BulkItemStatus::Canceled.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.items.len() as i32, s.canceled);
    assert!(page.items.iter().all(|i| !i.success && i.refund.is_none()));
}

#[tokio::test]
async fn the_same_batch_key_re_attaches_instead_of_refunding_again() {
    let (mut app, _db) = spawn_app().await;
    let payments = app.seed_many(5, 1_000).await;
    let request = pb::BulkRefundRequest {
        jobs: payments.iter().map(|p| job(p, Some(250))).collect(),
        idempotency_key: "nightly-2026-11-23".into(),
        ..Default::default()
    };
    let first = collect(
        app.client
            .bulk_refund(request.clone())
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let again = collect(
        app.client
            .bulk_refund(request.clone())
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(accepted(&first).bulk_id, accepted(&again).bulk_id);
    assert_eq!(results(&again).len(), 5);
    for p in &payments {
        assert_eq!(app.ledger(p).await.len(), 1, "no second refund");
    }

    // The same key for a different batch is refused.
    let mut different = request;
    different.jobs.pop();
    let err = app
        .client
        .bulk_refund(different)
        .await
        .expect_err("reused key");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err), "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn re_running_jobs_with_their_derived_keys_never_refunds_twice() {
    // Two batches with different batch keys but the same explicit job keys: the second batch's
    // jobs return the first batch's refunds.
    let (mut app, _db) = spawn_app().await;
    let payments = app.seed_many(3, 1_000).await;
    let jobs: Vec<_> = payments
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut j = job(p, Some(300));
            j.idempotency_key = format!("order-{i}");
            j
        })
        .collect();
    for key in ["run-1", "run-2"] {
        let events = collect(
            app.client
                .bulk_refund(pb::BulkRefundRequest {
                    jobs: jobs.clone(),
                    idempotency_key: key.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        assert_eq!(summary(&events).succeeded, 3);
    }
    for p in &payments {
        assert_eq!(app.ledger(p).await.len(), 1);
    }
}

#[tokio::test]
async fn oversize_and_empty_batches_are_invalid() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| s.refunds.bulk.max_jobs = 5).await;
    let err = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: (0..6).map(|_| job("ch_1", Some(1))).collect(),
            ..Default::default()
        })
        .await
        .expect_err("too many jobs");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("at most 5 jobs"),
        "{}",
        err.message()
    );
    assert_eq!(violated_fields(&err), ["jobs"]);

    let err = app
        .client
        .bulk_refund(pb::BulkRefundRequest::default())
        .await
        .expect_err("no jobs");
    assert_eq!(violated_fields(&err), ["jobs"]);

    let err = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: vec![job("ch_1", Some(1))],
            max_concurrency: -1,
            idempotency_key: "bad key".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad batch fields");
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(fields, ["idempotency_key", "max_concurrency"]);
}

#[tokio::test]
async fn items_list_pages_in_request_order_and_filters_by_status() {
    let (mut app, _db) = spawn_app().await;
    let payments = app.seed_many(7, 1_000).await;
    let mut jobs: Vec<_> = payments.iter().map(|p| job(p, Some(1))).collect();
    jobs.insert(2, job("ch_missing_a", Some(1)));
    jobs.insert(5, job("ch_missing_b", Some(1)));
    let events = collect(
        app.client
            .bulk_refund(pb::BulkRefundRequest {
                jobs,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let bulk_id = accepted(&events).bulk_id;

    let mut indices = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_bulk_refund_items(pb::ListBulkRefundItemsRequest {
                bulk_id: bulk_id.clone(),
                page_size: 4,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        indices.extend(page.items.iter().map(|i| i.index));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(indices, (0..9).collect::<Vec<_>>());

    let failed = app
        .client
        .list_bulk_refund_items(pb::ListBulkRefundItemsRequest {
            bulk_id: bulk_id.clone(),
            status: pb::BulkItemStatus::Failed.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let failed: Vec<_> = failed
        .items
        .iter()
        .map(|i| (i.index, i.payment_id.clone()))
        .collect();
    assert_eq!(
        failed,
        [
            (2, "ch_missing_a".to_owned()),
            (5, "ch_missing_b".to_owned())
        ]
    );

    for (bulk_id, code) in [
        ("bulk_nope", Code::InvalidArgument),
        ("bulk_0190c5f4a4f07c3e9e2b7b6a1e1d2c3b", Code::NotFound),
    ] {
        let err = app
            .client
            .get_bulk_refund(pb::GetBulkRefundRequest {
                bulk_id: bulk_id.into(),
            })
            .await
            .expect_err("bad id");
        assert_eq!(err.code(), code);
    }
}

/// Defect: a job whose refund exists could report FAILED without naming it: here its key made a
/// refund before, and the provider is down at the job's pre-flight, which failed before the store
/// could replay the refund. The job must report the refund that exists.
#[tokio::test]
async fn a_job_whose_refund_exists_reports_it_even_when_the_provider_is_down() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(5_000, "USD").await;
    let mut first = job(&payment, Some(1_000));
    first.idempotency_key = "order-7-refund".into();
    let made = app
        .client
        .create_refund(first.clone())
        .await
        .expect("refund")
        .into_inner();
    app.sandbox
        .set_faults(&FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        })
        .await
        .expect("faults");

    let stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: vec![first],
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let results = results(&collect(stream).await);
    assert_eq!(results.len(), 1);
    let refund = results[0]
        .refund
        .as_ref()
        .unwrap_or_else(|| panic!("{results:?}"));
    assert_eq!(refund.id, made.id);
    assert_eq!(
        results[0].status,
        i32::from(pb::BulkItemStatus::Succeeded),
        "{results:?}"
    );
}

/// A standalone sandbox, a payment of 5,000 there, and one job refunding 1,000 of it with
/// `key`, in a batch stored in `db` — with no service running yet, so that no runner can claim
/// the job before the test's dead worker does.
async fn a_batch_before_any_service(
    db: &TestDb,
    key: &str,
) -> (
    String,
    String,
    refund_service::store::Store,
    refund_service::domain::NewRefund,
    refund_service::domain::Bulk,
) {
    let (url, mut payments, store, mut requests, bulk) =
        jobs_before_any_service(db, &[key], 1).await;
    (url, payments.remove(0), store, requests.remove(0), bulk)
}

/// [`a_batch_before_any_service`] with a job per key (and a payment per job), run `concurrency`
/// at a time.
async fn jobs_before_any_service(
    db: &TestDb,
    keys: &[&str],
    concurrency: u32,
) -> (
    String,
    Vec<String>,
    refund_service::store::Store,
    Vec<refund_service::domain::NewRefund>,
    refund_service::domain::Bulk,
) {
    use refund_service::domain::{
        AccountId, Amount, Currency, IdempotencyKey, NewBulk, NewRefund, PaymentRef, ProviderName,
        RefundReason, Timestamp,
    };
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let sandbox =
        refund_service::sandbox::client::SandboxClient::new(&sandbox_url, Duration::from_secs(30))
            .expect("sandbox client");
    let payments = seed_payments(&sandbox, keys.len() as u32, 5_000).await;
    let store = refund_service::app::open_store(
        &refund_service::secret::Secret::opaque(db.url.clone()),
        &refund_service::store::StoreOptions::default(),
    )
    .await
    .expect("store");
    let requests: Vec<NewRefund> = keys
        .iter()
        .zip(&payments)
        .map(|(key, payment)| NewRefund {
            payment: PaymentRef::from_trusted(payment.clone()),
            provider: ProviderName::from_trusted("sandbox".to_owned()),
            amount: Some(Amount::new(1_000).expect("amount")),
            currency: Currency::parse("USD").expect("USD"),
            reason: RefundReason::RequestedByCustomer,
            reason_detail: String::new(),
            metadata: Default::default(),
            idempotency_key: Some(IdempotencyKey::from_trusted((*key).to_owned())),
        })
        .collect();
    let refund_service::store::CreateBulkOutcome::Created(bulk) = store
        .create_bulk(
            &AccountId::default_account(),
            &NewBulk {
                jobs: requests.iter().cloned().map(Ok).collect(),
                abort_on_error: false,
                max_concurrency: concurrency,
                idempotency_key: None,
                metadata: Default::default(),
                created_by: None,
            },
            &ProviderName::from_trusted("sandbox".to_owned()),
            Timestamp::now(),
            None,
        )
        .await
        .expect("batch")
    else {
        panic!("a new batch");
    };
    (sandbox_url, payments, store, requests, bulk)
}

/// The refund a dead worker stored PENDING for `request`, under an hour-long lease, before it
/// died without sending it.
async fn an_unsent_refund(
    store: &refund_service::store::Store,
    request: &refund_service::domain::NewRefund,
) -> refund_service::domain::Refund {
    use refund_service::domain::{AccountId, RefundId, Route, Timestamp};
    use refund_service::store::{BeginOutcome, BeginRefund};
    let now = Timestamp::now();
    let BeginOutcome::Created(stored) = store
        .begin_refund(BeginRefund {
            id: RefundId::generate(),
            account: &AccountId::default_account(),
            request,
            fingerprint: &request.fingerprint(),
            captured: 5_000,
            provider_remaining: 5_000,
            now,
            lease_until: now.saturating_add(Duration::from_secs(3600)),
            idempotency_expires_at: now.saturating_add(Duration::from_secs(86_400)),
            source: "bulk",
            created_by: None,
            request_id: None,
            route: &Route::Platform,
        })
        .await
        .expect("the dead worker's refund")
    else {
        panic!("a new refund");
    };
    stored
}

/// Defect: a job taken over from a dead worker ran through the ordinary path, whose idempotency
/// key expires after 24 h; taken over later than that, it made a second refund. A taken-over job
/// first looks for the refund its key made in this batch, however old the key.
#[tokio::test]
async fn a_job_taken_over_after_its_key_expired_does_not_refund_twice() {
    use refund_service::domain::{AccountId, Timestamp};
    let db = TestDb::new().await;
    let (sandbox_url, payment, store, request, bulk) =
        a_batch_before_any_service(&db, "job-key-1").await;
    // A worker claims the job, for three seconds...
    let now = Timestamp::now();
    let lease = Duration::from_secs(3);
    let claimed = store
        .claim_items(&bulk.id, "dead_worker", 1, now, now.saturating_add(lease))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    drop(store);
    let mut app = spawn_app_with(&db, |s| s.sandbox_url = Some(sandbox_url)).await;
    // ...makes its refund and dies before recording the result.
    app.service
        .create_refund(&AccountId::default_account(), None, request)
        .await
        .expect("the dead worker's refund");
    // A day and more later (on the service's clock), once the lease is over, another worker
    // takes the job over.
    app.service.clock().advance(Duration::from_secs(25 * 3600));
    let events = watch_taken_over(&mut app, &bulk.id).await;
    let results = results(&events);
    assert_eq!(results.len(), 1, "{events:?}");
    assert_eq!(
        app.ledger(&payment).await.len(),
        1,
        "the payment was refunded once: {results:?}"
    );
}

/// Defect: a job taken over from a worker that died after storing its refund but before
/// sending it reported the refund PENDING, and the refund reached the provider only when the
/// reconciler came round, once the dead worker's lease on it ran out (over a minute). The
/// worker taking the job over resolves the refund as part of the job: looked up, and sent
/// because the provider never had it.
#[tokio::test]
async fn a_job_taken_over_sends_the_refund_its_dead_worker_never_sent() {
    let db = TestDb::new().await;
    // A worker claims the job (its lease ends at once, as if it had died), stores the refund
    // PENDING under its own hour-long lease, and dies before the provider hears of it.
    let (sandbox_url, payment, bulk, stored) = a_dead_workers_job(&db, "job-key-unsent").await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        // The reconciler stays away: the runner that takes the job over sends the refund.
        s.refunds.reconcile_interval = Duration::from_secs(3600);
    })
    .await;
    assert!(app.ledger(&payment).await.is_empty());
    let results = the_one_result(&mut app, &bulk.id, stored.id.as_str()).await;
    assert_eq!(
        results[0].status,
        i32::from(pb::BulkItemStatus::Succeeded),
        "the job's refund was sent when the job was taken over: {results:?}"
    );
    let ledger = app.ledger(&payment).await;
    assert_eq!(ledger.len(), 1, "sent once: {ledger:?}");
}

/// Watches the one-job batch `bulk_id`, which a runner takes over, to its end; its one result,
/// checked to carry `refund_id`.
async fn the_one_result(
    app: &mut TestApp,
    bulk_id: &refund_service::domain::BulkId,
    refund_id: &str,
) -> Vec<pb::BulkJobResult> {
    let events = watch_taken_over(app, bulk_id).await;
    let results = results(&events);
    assert_eq!(results.len(), 1, "{events:?}");
    assert_eq!(
        results[0].refund.as_ref().map(|r| r.id.as_str()),
        Some(refund_id),
        "{results:?}"
    );
    results
}

/// A batch of one job (with `key`) that a worker claimed, with a lease that has ended, after
/// storing the job's refund PENDING and before sending it: as if it had died then. Returns the
/// sandbox's URL, the payment, the batch and the refund.
async fn a_dead_workers_job(
    db: &TestDb,
    key: &str,
) -> (
    String,
    String,
    refund_service::domain::Bulk,
    refund_service::domain::Refund,
) {
    use refund_service::domain::Timestamp;
    let (sandbox_url, payment, store, request, bulk) = a_batch_before_any_service(db, key).await;
    let now = Timestamp::now();
    let claimed = store
        .claim_items(&bulk.id, "dead_worker", 1, now, now)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let stored = an_unsent_refund(&store, &request).await;
    (sandbox_url, payment, bulk, stored)
}

/// A job taken over whose PENDING refund another attempt holds — `attempts` and a lease of
/// `held_for` from now, as the refund's row then reads — runs to its end. Returns the job's
/// result, the ledger of its payment, and when that lease ended.
async fn a_job_taken_over_with_its_refund_held(
    attempts: i32,
    held_for: Duration,
) -> (
    Vec<pb::BulkJobResult>,
    Vec<refund_service::sandbox::Refund>,
    std::time::Instant,
) {
    use refund_service::domain::Timestamp;
    use sea_orm::{ConnectionTrait as _, Database};
    let db = TestDb::new().await;
    let (sandbox_url, payment, bulk, stored) = a_dead_workers_job(&db, "job-key-held").await;
    // Another attempt holds the refund now: a reconciler's claim, or an approval sending it.
    let held_until = std::time::Instant::now() + held_for;
    let until = Timestamp::now().saturating_add(held_for).as_micros();
    let conn = Database::connect(&db.url).await.expect("connect");
    conn.execute_unprepared(&format!(
        "UPDATE refunds SET attempts = {attempts}, next_check_at = {until} WHERE id = '{}'",
        stored.id.as_str()
    ))
    .await
    .expect("hold the refund");
    drop(conn);
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.refunds.reconcile_interval = Duration::from_secs(3600);
    })
    .await;
    let results = the_one_result(&mut app, &bulk.id, stored.id.as_str()).await;
    let ledger = app.ledger(&payment).await;
    (results, ledger, held_until)
}

/// Defect: a job taken over found its refund PENDING under a reconciler's lease and reported it
/// PENDING at once, though nobody had sent it; it reached the provider only when a reconciler
/// came round again. The job waits for that lease to end, then resolves the refund itself.
#[tokio::test]
async fn a_job_taken_over_resolves_its_refund_once_a_reconcilers_lease_ends() {
    let (results, ledger, held_until) =
        a_job_taken_over_with_its_refund_held(2, Duration::from_secs(2)).await;
    assert_eq!(ledger.len(), 1, "sent once the lease ended: {ledger:?}");
    assert_eq!(
        results[0].refund.as_ref().map(|r| r.status),
        Some(i32::from(pb::RefundStatus::Succeeded)),
        "the job reports what the provider made of it: {results:?}"
    );
    assert!(
        std::time::Instant::now() >= held_until,
        "the refund was not taken from its holder"
    );
}

/// Defect (money): a job taken over claimed any PENDING refund with fewer than two attempts at
/// once, overriding its lease — also an approved refund (attempts 0) that the approving call
/// was sending at that moment, so that two workers could send it together. Only the creating
/// attempt's lease (the dead worker's own, stopped at its fence) is taken over early.
#[tokio::test]
async fn a_job_taken_over_leaves_an_approved_refund_to_the_call_sending_it() {
    let (results, ledger, held_until) =
        a_job_taken_over_with_its_refund_held(0, Duration::from_secs(2)).await;
    let done = std::time::Instant::now();
    assert!(
        done >= held_until,
        "the job took the refund over {:?} before its holder's lease ended: {results:?}",
        held_until - done
    );
    assert_eq!(ledger.len(), 1, "sent once: {ledger:?}");
    assert_eq!(
        results[0].status,
        i32::from(pb::BulkItemStatus::Succeeded),
        "{results:?}"
    );
}

/// Defect: jobs taken over whose refunds exist but could not be looked up (the provider down)
/// wait for the provider; when the batch gave up waiting, the held ones were reported failed,
/// without their refunds — which still exist, PENDING, and may well succeed. They report their
/// refunds as they are.
#[tokio::test]
async fn held_jobs_taken_over_keep_their_refunds_when_the_wait_is_given_up() {
    use refund_service::domain::Timestamp;
    let db = TestDb::new().await;
    let keys = ["held-1", "held-2", "held-3", "held-4"];
    let (sandbox_url, _payments, store, requests, bulk) =
        jobs_before_any_service(&db, &keys, 4).await;
    let now = Timestamp::now();
    let claimed = store
        .claim_items(&bulk.id, "dead_worker", 4, now, now)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    let mut stored = BTreeSet::new();
    for request in &requests {
        stored.insert(
            an_unsent_refund(&store, request)
                .await
                .id
                .as_str()
                .to_owned(),
        );
    }
    drop(store);
    let sandbox =
        refund_service::sandbox::client::SandboxClient::new(&sandbox_url, Duration::from_secs(30))
            .expect("sandbox client");
    sandbox
        .set_faults(&FaultConfig {
            error_rate: 1.0,
            ..Default::default()
        })
        .await
        .expect("provider down");
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.refunds.reconcile_interval = Duration::from_secs(3600);
        s.refunds.bulk.max_provider_wait = Duration::from_secs(2);
    })
    .await;
    let events = watch_taken_over(&mut app, &bulk.id).await;
    let results = results(&events);
    assert_eq!(results.len(), 4, "{events:?}");
    let reported: BTreeSet<String> = results
        .iter()
        .filter_map(|r| r.refund.as_ref().map(|r| r.id.clone()))
        .collect();
    assert_eq!(
        reported, stored,
        "every job reports its refund: {results:?}"
    );
    for r in &results {
        assert_eq!(
            r.refund.as_ref().map(|r| r.status),
            Some(i32::from(pb::RefundStatus::Pending)),
            "its refund stays PENDING for the reconciler: {results:?}"
        );
    }
}

/// Defect (money, PostgreSQL): a driver stuck in a database write (here its lease renewal,
/// blocked by a lock on the batch's rows) could not stop its jobs at the fence, so a job kept
/// running after its lease could have lapsed — alongside a worker taking it over, which may
/// claim the job's refund at once. Each job now stops at the fence by itself, and is run again,
/// taken over, once the driver gets through.
#[tokio::test]
async fn a_job_stops_at_its_fence_while_its_driver_is_stuck() {
    use sea_orm::{ConnectionTrait as _, Database, Statement, TransactionTrait as _};
    let db = TestDb::new().await;
    if db.url.starts_with("sqlite:") {
        eprintln!("skipped: the stuck driver needs a row lock, which SQLite has not");
        return;
    }
    let (sandbox_url, payments, store, _requests, bulk) =
        jobs_before_any_service(&db, &["fenced-1"], 1).await;
    drop(store);
    let sandbox =
        refund_service::sandbox::client::SandboxClient::new(&sandbox_url, Duration::from_secs(30))
            .expect("sandbox client");
    // The provider takes 3 s to make the refund.
    sandbox
        .set_faults(&FaultConfig {
            slow_create_rate: 1.0,
            slow_create_ms: 3_000,
            ..Default::default()
        })
        .await
        .expect("slow provider");
    let lease = Duration::from_millis(1_200);
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.refunds.bulk.lease = lease;
        s.refunds.reconcile_interval = Duration::from_secs(3600);
    })
    .await;
    let conn = Database::connect(&db.url).await.expect("connect");
    let refund_id = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let row = conn
                .query_one_raw(Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT id FROM refunds".to_owned(),
                ))
                .await
                .expect("query");
            if let Some(row) = row {
                break row.try_get::<String>("", "id").expect("id");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the job is at the provider");
    // The job is at the provider: the driver's next renewal blocks on the batch's rows.
    let txn = conn.begin().await.expect("begin");
    txn.execute_unprepared(&format!(
        "SELECT * FROM bulk_items WHERE bulk_id = '{}' FOR UPDATE",
        bulk.id.as_str()
    ))
    .await
    .expect("lock the batch's jobs");
    // Until well after the provider answered (3 s), nothing of the job runs on: stopped at the
    // fence, it does not record its refund's answer.
    let locked_until = std::time::Instant::now() + Duration::from_secs(4);
    let mut status = String::new();
    while std::time::Instant::now() < locked_until {
        status = app
            .client
            .get_refund(pb::GetRefundRequest {
                id: refund_id.clone(),
            })
            .await
            .expect("get")
            .into_inner()
            .status()
            .as_str_name()
            .to_owned();
        assert_eq!(
            status, "REFUND_STATUS_PENDING",
            "the job ran on past its fence and recorded its refund while its lease lapsed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    txn.rollback().await.expect("unlock");
    let events = watch_taken_over(&mut app, &bulk.id).await;
    let results = results(&events);
    assert_eq!(results.len(), 1, "{events:?} (last status {status})");
    assert_eq!(
        results[0].refund.as_ref().map(|r| r.id.as_str()),
        Some(refund_id.as_str()),
        "{results:?}"
    );
    let ledger = app.ledger(&payments[0]).await;
    assert_eq!(ledger.len(), 1, "refunded once: {ledger:?}");
}

/// Defect (PostgreSQL): a claim that read the batch as running before a cancel committed could
/// still hand out jobs after it, while a finisher that counted running jobs before the claim
/// committed ended the batch — a summary written while claimed jobs were still to run. The
/// interleaving is forced with row locks held by two raw transactions; SQLite runs one
/// transaction at a time, so it cannot interleave.
#[tokio::test]
async fn a_batch_canceled_during_a_claim_does_not_finish_while_claimed_jobs_run() {
    use refund_service::domain::{
        AccountId, Amount, Currency, NewBulk, NewRefund, PaymentRef, ProviderName, RefundReason,
        Timestamp,
    };
    use refund_service::store::{CreateBulkOutcome, Store, StoreOptions};
    use sea_orm::{ConnectionTrait as _, Database, TransactionTrait as _};

    let db = TestDb::new().await;
    if db.url.starts_with("sqlite:") {
        eprintln!("skipped: SQLite serializes transactions; this race needs PostgreSQL");
        return;
    }
    let store = Store::connect(&db.url, &StoreOptions::default())
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let job = |n: u32| {
        Ok(NewRefund {
            payment: PaymentRef::from_trusted(format!("pay_{n}")),
            provider: ProviderName::from_trusted("sandbox".to_owned()),
            amount: Some(Amount::new(100).expect("amount")),
            currency: Currency::parse("USD").expect("USD"),
            reason: RefundReason::RequestedByCustomer,
            reason_detail: String::new(),
            metadata: Default::default(),
            idempotency_key: None,
        })
    };
    let bulk = match store
        .create_bulk(
            &AccountId::default_account(),
            &NewBulk {
                jobs: (0..4).map(job).collect(),
                abort_on_error: false,
                max_concurrency: 4,
                idempotency_key: None,
                metadata: Default::default(),
                created_by: None,
            },
            &ProviderName::from_trusted("sandbox".to_owned()),
            Timestamp::now(),
            None,
        )
        .await
        .expect("batch")
    {
        CreateBulkOutcome::Created(b) => b,
        _ => panic!("a new batch"),
    };
    let id = bulk.id.as_str().to_owned();
    let raw = Database::connect(&db.url).await.expect("raw connection");
    // Whether `n` transactions of this database wait on a row lock.
    let lock_waiters = std::sync::Arc::new({
        let raw = raw.clone();
        move |n: i64| {
            let raw = raw.clone();
            async move {
                let row = raw
                    .query_one_raw(sea_orm::Statement::from_string(
                        sea_orm::DbBackend::Postgres,
                        "SELECT count(*) AS n FROM pg_stat_activity \
                         WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    ))
                    .await
                    .ok()
                    .flatten();
                row.and_then(|r| r.try_get::<i64>("", "n").ok())
                    .is_some_and(|waiting| waiting >= n)
            }
        }
    });

    // One transaction holds a job's row (the claim will stop there, holding the batch row);
    // another holds the batch row and cancels.
    let items = raw.begin().await.expect("begin");
    items
        .execute_unprepared(&format!(
            "SELECT idx FROM bulk_items WHERE bulk_id = '{id}' AND idx = 0 FOR UPDATE"
        ))
        .await
        .expect("lock a job");
    let cancel = raw.begin().await.expect("begin");
    cancel
        .execute_unprepared(&format!(
            "UPDATE bulks SET stop_reason = 'cancel' WHERE id = '{id}'"
        ))
        .await
        .expect("cancel");

    // The claim reads the batch as running, then waits for the batch row.
    let claim = tokio::spawn({
        let (store, bulk_id) = (store.clone(), bulk.id.clone());
        async move {
            let now = Timestamp::now();
            let until = Timestamp::from_micros(now.as_micros() + 60_000_000);
            store.claim_items(&bulk_id, "worker", 4, now, until).await
        }
    });
    let waiters = lock_waiters.clone();
    eventually(
        Duration::from_secs(10),
        "the claim waits for the batch row",
        || {
            let waiters = waiters.clone();
            async move { waiters(1).await.then_some(()) }
        },
    )
    .await;
    cancel.commit().await.expect("commit the cancel");

    // The finisher runs while the claim is still open.
    let finish = tokio::spawn({
        let (store, bulk_id) = (store.clone(), bulk.id.clone());
        async move { store.finish_bulk_if_done(&bulk_id).await }
    });
    // The finisher runs to its end, or to a lock: behind the claim (two waiters), or, when the
    // claim gave up, on the held job as it cancels the queued jobs.
    let waiters = lock_waiters.clone();
    eventually(
        Duration::from_secs(10),
        "the finisher ends or waits",
        || {
            let waiters = waiters.clone();
            let (finished, claimed) = (finish.is_finished(), claim.is_finished());
            async move {
                let waiting = if claimed { 1 } else { 2 };
                (finished || waiters(waiting).await).then_some(())
            }
        },
    )
    .await;
    items.commit().await.expect("release the job");

    let claimed = claim.await.expect("claim task").expect("claim");
    let finished = finish.await.expect("finish task").expect("finish");
    assert!(
        claimed.is_empty() || !finished,
        "the batch finished ({finished}) although {} of its jobs were handed out after the cancel",
        claimed.len()
    );
}
