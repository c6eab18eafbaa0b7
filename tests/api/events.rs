//! Events out: every change a client cares about is an event, written with the change, numbered
//! per account in commit order, listed with ListEvents and followed with WatchEvents from any
//! cursor without gaps or duplicates.

use std::collections::BTreeMap;
use std::time::Duration;

use refund_service::api::pb;
use refund_service::api::pb::event::Resource;
use refund_service::domain::{AccountId, Currency};
use refund_service::sandbox::{FaultConfig, NewPayments};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::helpers::*;

async fn all_events(client: &mut Client, request: pb::ListEventsRequest) -> Vec<pb::Event> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                page_token: page_token.clone(),
                ..request.clone()
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
    // Oldest first, as a follower sees them.
    events.reverse();
    events
}

fn types(events: &[pb::Event]) -> Vec<&str> {
    events.iter().map(|e| e.r#type.as_str()).collect()
}

fn sequences(events: &[pb::Event]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

fn refund_of(e: &pb::Event) -> &pb::Refund {
    match &e.resource {
        Some(Resource::Refund(r)) => r,
        other => panic!("event {} is not about a refund: {other:?}", e.r#type),
    }
}

fn batch_of(e: &pb::Event) -> &pb::BulkRefundBatch {
    match &e.resource {
        Some(Resource::BulkRefund(b)) => b,
        other => panic!("event {} is not about a batch: {other:?}", e.r#type),
    }
}

/// Reads `n` events from a WatchEvents stream, failing after 20 s.
async fn take(stream: &mut tonic::Streaming<pb::Event>, n: usize) -> Vec<pb::Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived", got.len()));
        got.push(next.expect("stream open").expect("event"));
    }
    got
}

#[tokio::test]
async fn every_refund_change_is_one_event_with_the_refund_as_it_was() {
    let (app, _db) = spawn_app().await;
    let mut client = app.client.clone();
    app.service
        .store()
        .set_approval_threshold(
            &AccountId::default_account(),
            Currency::parse("USD").expect("USD"),
            Some(5_000),
        )
        .await
        .expect("threshold");
    let ok = app.seed(10_000, "USD").await;
    let refused = app
        .seed_with(NewPayments {
            amount: 10_000,
            currency: "USD".into(),
            id: None,
            count: None,
            status: None,
            fail_refunds: true,
        })
        .await;

    let mut request = refund_request(&ok, Some(1_000), "USD");
    request.idempotency_key = "events-once".into();
    let succeeded = client
        .create_refund(request.clone())
        .await
        .expect("create")
        .into_inner();
    // The same request again is the same refund: no second event.
    let replayed = client
        .create_refund(request)
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(replayed.id, succeeded.id);
    let failed = client
        .create_refund(refund_request(&refused, Some(1_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    let big = client
        .create_refund(refund_request(&ok, Some(6_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    client
        .reject_refund(pb::RejectRefundRequest { id: big.id.clone() })
        .await
        .expect("reject");
    // Refused before anything was stored: no event.
    let over = client
        .create_refund(refund_request(&ok, Some(50_000), "USD"))
        .await
        .expect_err("over-refund");
    assert_eq!(over.code(), Code::FailedPrecondition);

    let events = all_events(&mut client, pb::ListEventsRequest::default()).await;
    assert_eq!(
        types(&events),
        [
            "refund.created",
            "refund.succeeded",
            "refund.created",
            "refund.failed",
            "refund.created",
            "refund.requires_approval",
            "refund.canceled",
        ]
    );
    assert_eq!(sequences(&events), (1..=7).collect::<Vec<_>>());
    let ids: Vec<&str> = events.iter().map(|e| refund_of(e).id.as_str()).collect();
    assert_eq!(
        ids,
        [
            &succeeded.id,
            &succeeded.id,
            &failed.id,
            &failed.id,
            &big.id,
            &big.id,
            &big.id
        ]
    );
    // Each event holds the refund as it was at that moment.
    let status = |i: usize| status_of(refund_of(&events[i]));
    assert_eq!(status(0), pb::RefundStatus::Pending);
    assert_eq!(status(1), pb::RefundStatus::Succeeded);
    assert_eq!(status(3), pb::RefundStatus::Failed);
    assert!(!refund_of(&events[3]).failure_code.is_empty());
    assert_eq!(status(4), pb::RefundStatus::RequiresApproval);
    assert_eq!(status(6), pb::RefundStatus::Canceled);
    for e in &events {
        assert!(e.id.starts_with("evt_"), "{}", e.id);
        assert_eq!(e.api_version, "v1");
        assert!(e.created_at.is_some());
    }

    // Filters: by type, and by resource.
    let only = all_events(
        &mut client,
        pb::ListEventsRequest {
            types: vec!["refund.created".into()],
            page_size: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sequences(&only), [1, 3, 5]);
    let of_big = all_events(
        &mut client,
        pb::ListEventsRequest {
            resource_id: big.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sequences(&of_big), [5, 6, 7]);
}

#[tokio::test]
async fn a_100_job_batch_yields_the_documented_events() {
    let (app, _db) = spawn_app().await;
    let mut client = app.client.clone();
    let payments = app.seed_many(100, 1_000).await;
    let jobs = payments
        .iter()
        .map(|p| refund_request(p, Some(400), "USD"))
        .collect();
    let stream = client
        .bulk_refund(pb::BulkRefundRequest {
            jobs,
            max_concurrency: 8,
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let results: Vec<_> = stream.collect().await;
    assert!(results.iter().all(Result::is_ok));

    let events = eventually(Duration::from_secs(20), "the batch's last event", || {
        let mut client = client.clone();
        async move {
            let events = all_events(&mut client, pb::ListEventsRequest::default()).await;
            (events.last().map(|e| e.r#type.as_str()) == Some("bulk_refund.completed"))
                .then_some(events)
        }
    })
    .await;
    assert_eq!(sequences(&events), (1..=202).collect::<Vec<_>>());
    assert_eq!(events[0].r#type, "bulk_refund.accepted");
    let accepted = batch_of(&events[0]);
    assert_eq!(accepted.total, 100);
    assert_eq!(accepted.pending, 100);
    let mut counts = BTreeMap::new();
    for e in &events {
        *counts.entry(e.r#type.as_str()).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([
            ("bulk_refund.accepted", 1),
            ("bulk_refund.completed", 1),
            ("refund.created", 100),
            ("refund.succeeded", 100),
        ])
    );
    let summary = batch_of(events.last().expect("last"));
    assert_eq!(summary.id, accepted.id);
    assert_eq!(summary.state(), pb::BulkRefundState::Completed);
    assert_eq!(
        (summary.succeeded, summary.failed, summary.pending),
        (100, 0, 0)
    );
    assert!(summary.finished_at.is_some());
    // Each refund's created event comes before its settlement.
    let mut created = BTreeMap::new();
    for e in &events[1..201] {
        let r = refund_of(e);
        match e.r#type.as_str() {
            "refund.created" => {
                created.insert(r.id.clone(), e.sequence);
            }
            "refund.succeeded" => assert!(created.contains_key(&r.id), "{} settled first", r.id),
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test]
async fn a_canceled_batch_ends_with_bulk_refund_canceled() {
    // One job at a time over a slow sandbox leaves time to cancel.
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig {
        latency_ms: 40,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |s| s.sandbox_url = Some(sandbox_url)).await;
    let mut client = app.client.clone();
    let payments = app.seed_many(40, 1_000).await;
    let jobs = payments
        .iter()
        .map(|p| refund_request(p, Some(100), "USD"))
        .collect();
    let mut stream = client
        .bulk_refund(pb::BulkRefundRequest {
            jobs,
            max_concurrency: 1,
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let first = stream.next().await.expect("accepted").expect("event");
    let bulk_id = match first.event {
        Some(pb::bulk_refund_event::Event::Accepted(a)) => a.bulk_id,
        other => panic!("{other:?}"),
    };
    client
        .cancel_bulk_refund(pb::CancelBulkRefundRequest {
            bulk_id: bulk_id.clone(),
        })
        .await
        .expect("cancel");
    let _: Vec<_> = stream.collect().await;
    let end = eventually(Duration::from_secs(20), "the batch's end event", || {
        let mut client = client.clone();
        let bulk_id = bulk_id.clone();
        async move {
            all_events(
                &mut client,
                pb::ListEventsRequest {
                    resource_id: bulk_id,
                    ..Default::default()
                },
            )
            .await
            .pop()
            .filter(|e| e.r#type != "bulk_refund.accepted")
        }
    })
    .await;
    assert_eq!(end.r#type, "bulk_refund.canceled");
    let batch = batch_of(&end);
    assert_eq!(batch.state(), pb::BulkRefundState::Canceled);
    assert!(batch.canceled > 0, "{batch:?}");
    assert_eq!(batch.succeeded + batch.failed + batch.canceled, 40);
}

#[tokio::test]
async fn watch_events_resumes_from_its_cursor_without_gaps_or_duplicates() {
    let (app, _db) = spawn_app().await;
    let mut client = app.client.clone();
    let payments = app.seed_many(12, 1_000).await;

    // Follows live: the stream is open before the refunds are made.
    let mut stream = client
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    for p in &payments[..6] {
        client
            .create_refund(refund_request(p, Some(100), "USD"))
            .await
            .expect("create");
    }
    let first = take(&mut stream, 5).await;
    drop(stream);
    let cursor = first.last().expect("some").sequence;

    // More happen while nobody listens.
    for p in &payments[6..] {
        client
            .create_refund(refund_request(p, Some(100), "USD"))
            .await
            .expect("create");
    }
    let mut resumed = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: cursor,
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let rest = take(&mut resumed, 24 - first.len()).await;
    let seen: Vec<u64> = first.iter().chain(&rest).map(|e| e.sequence).collect();
    assert_eq!(
        seen,
        (1..=24).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let listed = all_events(&mut client, pb::ListEventsRequest::default()).await;
    let ids = |events: &[pb::Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let followed: Vec<pb::Event> = first.into_iter().chain(rest).collect();
    assert_eq!(
        ids(&followed),
        ids(&listed),
        "the same events as ListEvents"
    );

    // Nothing more arrives until something happens; then it does.
    let quiet = tokio::time::timeout(Duration::from_millis(300), resumed.next()).await;
    assert!(quiet.is_err(), "an event arrived from nowhere: {quiet:?}");

    // A type filter skips the others' sequences.
    let mut only_settled = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: 0,
            types: vec!["refund.succeeded".into()],
        })
        .await
        .expect("watch")
        .into_inner();
    let settled = take(&mut only_settled, 12).await;
    assert!(settled.iter().all(|e| e.r#type == "refund.succeeded"));
    assert_eq!(
        sequences(&settled),
        (1..=12).map(|i| 2 * i).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn one_account_never_sees_another_accounts_events() {
    let (app, _db) = spawn_app().await;
    let mut a = app.client.clone();
    let mut b = client_of(&app, "acct_other", "refunds:read,refunds:write").await;
    let pa = app.seed(1_000, "USD").await;
    let pb_ = app.seed(1_000, "USD").await;

    let mut b_stream = b
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    a.create_refund(refund_request(&pa, Some(100), "USD"))
        .await
        .expect("a's refund");
    let bs = b
        .create_refund(refund_request(&pb_, Some(100), "USD"))
        .await
        .expect("b's refund")
        .into_inner();
    let seen = take(&mut b_stream, 2).await;
    assert_eq!(sequences(&seen), [1, 2], "b's own sequence starts at 1");
    assert!(seen.iter().all(|e| refund_of(e).id == bs.id), "{seen:?}");

    let a_events = all_events(&mut a, pb::ListEventsRequest::default()).await;
    assert_eq!(sequences(&a_events), [1, 2]);
    assert!(a_events.iter().all(|e| refund_of(e).id != bs.id));
    let b_listed_by_resource = all_events(
        &mut b,
        pb::ListEventsRequest {
            resource_id: refund_of(&a_events[0]).id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(b_listed_by_resource.is_empty());
}

#[tokio::test]
async fn bad_filters_and_cursors_past_retention_are_refused_precisely() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |s| {
        s.refunds.event_retention = Duration::from_millis(1);
        // Pruning is driven by hand below.
        s.refunds.reconcile_interval = Duration::from_secs(3600);
    })
    .await;
    let mut client = app.client.clone();

    let unknown = client
        .list_events(pb::ListEventsRequest {
            types: vec!["refund.succeeded".into(), "refund.approved".into()],
            ..Default::default()
        })
        .await
        .expect_err("unknown type");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&unknown), ["types[1]"]);
    let unknown = client
        .watch_events(pb::WatchEventsRequest {
            types: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .expect_err("unknown type");
    assert_eq!(violated_fields(&unknown), ["types[0]"]);
    let token = client
        .list_events(pb::ListEventsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(violated_fields(&token), ["page_token"]);

    for p in app.seed_many(2, 1_000).await {
        client
            .create_refund(refund_request(&p, Some(100), "USD"))
            .await
            .expect("create");
    }
    // With a retention of 1 ms, pruning soon takes all four (whichever pass does it).
    eventually(Duration::from_secs(5), "the first events pruned", || {
        let mut client = client.clone();
        let service = app.service.clone();
        async move {
            service.prune_events().await.ok()?;
            all_events(&mut client, pb::ListEventsRequest::default())
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let p = app.seed(1_000, "USD").await;
    client
        .create_refund(refund_request(&p, Some(100), "USD"))
        .await
        .expect("create");

    let expired = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: 2,
            ..Default::default()
        })
        .await
        .expect_err("events 3 and 4 are gone");
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&expired), "EVENTS_EXPIRED");
    // From the newest gone one, or from the start of what is kept, it follows.
    for after in [4, 0] {
        let mut stream = client
            .watch_events(pb::WatchEventsRequest {
                after_sequence: after,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(take(&mut stream, 2).await[0].sequence, 5);
    }
}

#[tokio::test]
async fn a_follower_sees_concurrent_writers_on_two_replicas_in_commit_order() {
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let db = TestDb::new().await;
    let a = spawn_app_with(&db, |s| s.sandbox_url = Some(sandbox_url.clone())).await;
    // SQLite is one process: both writers are then the one replica.
    let b = (!is_sqlite(&db))
        .then(|| spawn_app_with(&db, |s| s.sandbox_url = Some(sandbox_url.clone())));
    let b = match b {
        Some(b) => Some(b.await),
        None => None,
    };
    let follower_client = b.as_ref().map_or(&a.client, |b| &b.client).clone();
    let mut follower = follower_client
        .clone()
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    let payments = a.seed_many(48, 1_000).await;
    let mut writers = tokio::task::JoinSet::new();
    for (i, p) in payments.iter().enumerate() {
        let mut client = match (&b, i % 2) {
            (Some(b), 1) => b.client.clone(),
            _ => a.client.clone(),
        };
        let request = refund_request(p, Some(100), "USD");
        writers.spawn(async move { client.create_refund(request).await.map(|_| ()) });
    }
    while let Some(made) = writers.join_next().await {
        assert!(matches!(made, Ok(Ok(()))), "{made:?}");
    }

    let seen = take(&mut follower, 96).await;
    assert_eq!(
        sequences(&seen),
        (1..=96).collect::<Vec<_>>(),
        "each event once, in sequence order"
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), follower.next()).await;
    assert!(quiet.is_err(), "more events than changes: {quiet:?}");
}
