//! Several replicas of the service on one database: what they share (the over-refund guard,
//! idempotency, each provider's rate budget) and what a single-node SQLite refuses to share.

use std::time::Duration;

use refund_service::api::pb;
use refund_service::sandbox::FaultConfig;
use tonic::Code;

use crate::helpers::*;

/// Three replicas on `db`, refunding against one standalone sandbox.
async fn three_replicas(db: &TestDb, sandbox_url: &str) -> Vec<TestApp> {
    replicas(db, sandbox_url, 3, |_| {}).await
}

/// `n` replicas on `db`, refunding against one standalone sandbox, each configured by
/// `configure` too.
async fn replicas(
    db: &TestDb,
    sandbox_url: &str,
    n: usize,
    configure: impl Fn(&mut refund_service::config::ServeSettings) + Clone,
) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..n {
        let url = sandbox_url.to_owned();
        let configure = configure.clone();
        apps.push(
            spawn_app_with(db, move |s| {
                s.sandbox_url = Some(url);
                // Several replicas per test, several tests at once: PostgreSQL's 100
                // connections are shared by all of them.
                s.store.max_connections = 4;
                configure(s);
            })
            .await,
        );
    }
    apps
}

/// A database replicas can share (PostgreSQL), or `None` — the test is skipped — on SQLite,
/// which is single-node.
async fn shared_db() -> Option<TestDb> {
    let db = TestDb::new().await;
    if is_sqlite(&db) {
        eprintln!("skipped: SQLite is single-node");
        return None;
    }
    Some(db)
}

async fn replicas_seen_by(app: &TestApp) -> Option<f64> {
    metric_value(&scrape_metrics(app.http_addr).await, "refund_replicas")
}

#[tokio::test]
async fn a_second_service_on_the_same_sqlite_file_refuses_to_start() {
    let db = TestDb::new().await;
    if !is_sqlite(&db) {
        eprintln!("skipped: PostgreSQL is meant to be shared");
        return;
    }
    let first = spawn_app_with(&db, |_| {}).await;
    let second = refund_service::app::Application::build(
        refund_service::config::ServeSettings::local(db.url.clone()),
    )
    .await;
    let Err(e) = second else {
        panic!("a second service started on the same SQLite file");
    };
    let message = refund_service::cli::error_chain(&e);
    assert!(
        message.contains("is in use by another refund-service")
            && message.contains(&format!("process {}", std::process::id()))
            && message.contains("PostgreSQL"),
        "{message}"
    );
    // Once the first one stops, the file is free again.
    first.stop().await;
    spawn_app_with(&db, |_| {}).await.stop().await;
}

#[tokio::test]
async fn replicas_count_each_other_and_recount_when_one_stops() {
    let Some(db) = shared_db().await else {
        return;
    };
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let mut apps = three_replicas(&db, &sandbox_url).await;
    for app in &apps {
        eventually(
            Duration::from_secs(5),
            "every replica counts three",
            || async { (replicas_seen_by(app).await == Some(3.0)).then_some(()) },
        )
        .await;
    }
    apps.pop().expect("a replica").stop().await;
    for app in &apps {
        eventually(
            Duration::from_secs(2),
            "the others count two once one has left",
            || async { (replicas_seen_by(app).await == Some(2.0)).then_some(()) },
        )
        .await;
    }
}

/// The 64-way race of `concurrency.rs`, split across three replicas on one database: the
/// over-refund guard is the database's, whichever process asks.
#[tokio::test]
async fn sixty_four_partial_refunds_across_three_replicas_never_exceed_the_capture() {
    let Some(db) = shared_db().await else {
        return;
    };
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let apps = three_replicas(&db, &sandbox_url).await;
    let captured = 10_000;
    let amount = 300;
    let payment = apps[0].seed(captured, "USD").await;
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let mut client = apps[i % 3].client.clone();
            let req = refund_request(&payment, Some(amount), "USD");
            tokio::spawn(async move { client.create_refund(req).await })
        })
        .collect();
    let (mut succeeded, mut over) = (0, 0);
    for call in calls {
        match call.await.expect("task") {
            Ok(r) => {
                assert_eq!(status_of(r.get_ref()), pb::RefundStatus::Succeeded);
                succeeded += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                over += 1;
            }
        }
    }
    assert_eq!(
        succeeded,
        captured / amount,
        "exactly floor(captured/amount)"
    );
    assert_eq!(over, 64 - captured / amount);
    let ledger = apps[0].ledger(&payment).await;
    assert_eq!(
        ledger.len() as i64,
        captured / amount,
        "the provider agrees"
    );
    assert_eq!(
        ledger.iter().map(|r| r.amount).sum::<i64>(),
        succeeded * amount
    );
}

/// One idempotency key sent to three replicas at once makes one refund.
#[tokio::test]
async fn one_idempotency_key_sent_to_three_replicas_makes_one_refund() {
    let Some(db) = shared_db().await else {
        return;
    };
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let apps = three_replicas(&db, &sandbox_url).await;
    let payment = apps[0].seed(10_000, "USD").await;
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let mut client = apps[i % 3].client.clone();
            let mut req = tonic::Request::new(refund_request(&payment, Some(700), "USD"));
            req.metadata_mut()
                .insert("idempotency-key", "same-key-everywhere".parse().unwrap());
            tokio::spawn(async move { client.create_refund(req).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for call in calls {
        let refund = call.await.expect("task").expect("the key's refund");
        ids.insert(refund.into_inner().id);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(apps[0].ledger(&payment).await.len(), 1);
}

/// With three replicas sharing a 30/s budget, the sandbox sees 30 calls a second, not 90.
#[tokio::test]
async fn three_replicas_share_one_provider_budget() {
    let Some(db) = shared_db().await else {
        return;
    };
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let rate = 30;
    let apps = replicas(&db, &sandbox_url, 3, |s| {
        s.sandbox_traffic.rate_per_sec = rate
    })
    .await;
    for app in &apps {
        eventually(
            Duration::from_secs(5),
            "every replica counts three",
            || async { (replicas_seen_by(app).await == Some(3.0)).then_some(()) },
        )
        .await;
    }
    let payments = seed_payments(&apps[0].sandbox, 90, 1_000).await;
    // Each refund is one read (its pre-flight) and one write: 90 refunds need 3 s of the
    // shared budget, 1 s of three separate ones.
    let started = std::time::Instant::now();
    let calls: Vec<_> = payments
        .iter()
        .enumerate()
        .map(|(i, payment)| {
            let mut client = apps[i % 3].client.clone();
            let req = refund_request(payment, None, "USD");
            tokio::spawn(async move { client.create_refund(req).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("refund");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2_500),
        "90 refunds at a shared 30/s took {took:?}: the replicas did not share the budget"
    );
}

/// A batch run on replica A, watched on replica B, reaches B's watcher as it happens: B hears
/// of A's events by notice (LISTEN/NOTIFY), not at its next poll (here an hour away). Prints
/// how far B's stream lags behind A's.
#[tokio::test]
async fn a_batch_watched_on_another_replica_streams_live() {
    use refund_service::api::pb::bulk_refund_event::Event;
    use tokio_stream::StreamExt as _;

    let Some(db) = shared_db().await else {
        return;
    };
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig {
        latency_ms: 40,
        ..FaultConfig::default()
    })
    .await;
    let apps = replicas(&db, &sandbox_url, 2, |s| {
        s.refunds.bulk.poll_interval = Duration::from_secs(3600);
    })
    .await;
    let payments = seed_payments(&apps[0].sandbox, 30, 1_000).await;
    let jobs = payments
        .iter()
        .map(|p| refund_request(p, None, "USD"))
        .collect();
    let mut on_a = apps[0]
        .client
        .clone()
        .bulk_refund(pb::BulkRefundRequest {
            jobs,
            max_concurrency: 2,
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let first = on_a.next().await.expect("accepted").expect("ok");
    let Some(Event::Accepted(accepted)) = first.event else {
        panic!("first event {first:?}");
    };
    let mut on_b = apps[1]
        .client
        .clone()
        .watch_bulk_refund(pb::WatchBulkRefundRequest {
            bulk_id: accepted.bulk_id,
            after_sequence: first.sequence,
        })
        .await
        .expect("watch on B")
        .into_inner();
    let a_times = tokio::spawn(async move {
        let mut times = std::collections::BTreeMap::new();
        while let Some(Ok(event)) = on_a.next().await {
            times.insert(event.sequence, std::time::Instant::now());
        }
        times
    });
    let mut b_times = std::collections::BTreeMap::new();
    let watched = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = on_b.next().await {
            let event = event.expect("ok");
            b_times.insert(event.sequence, std::time::Instant::now());
            if matches!(event.event, Some(Event::Summary(_))) {
                break;
            }
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "B's watcher had {} events after 20 s: it waited for its poll",
        b_times.len()
    );
    let a_times = a_times.await.expect("A's stream");
    assert_eq!(b_times.len(), 31, "30 results and the summary");
    assert_eq!(
        a_times.keys().collect::<Vec<_>>(),
        b_times.keys().collect::<Vec<_>>()
    );
    let mut lags: Vec<i128> = b_times
        .iter()
        .map(|(seq, b)| {
            let a = a_times[seq];
            if *b >= a {
                b.duration_since(a).as_micros() as i128
            } else {
                -(a.duration_since(*b).as_micros() as i128)
            }
        })
        .collect();
    lags.sort_unstable();
    eprintln!(
        "B's stream behind A's: p50 {} ms, p95 {} ms, max {} ms",
        lags[lags.len() / 2] / 1000,
        lags[lags.len() * 95 / 100] / 1000,
        lags[lags.len() - 1] / 1000
    );
}

/// Defect (PostgreSQL): shutdown waited for the heartbeat to leave the replicas without a bound,
/// and a beat stuck on the database kept the heartbeat from even seeing the stop: a replica
/// whose database hung never exited. Its last beat and its leaving are bounded now.
#[tokio::test]
async fn a_replica_exits_though_the_database_does_not_answer_its_heartbeat() {
    use sea_orm::{ConnectionTrait as _, Database, TransactionTrait as _};
    let Some(db) = shared_db().await else {
        return;
    };
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let app = replicas(&db, &sandbox_url, 1, |_| {}).await.remove(0);
    // Every heartbeat from now on waits for this lock.
    let conn = Database::connect(&db.url).await.expect("connect");
    let txn = conn.begin().await.expect("begin");
    txn.execute_unprepared("SELECT * FROM replicas FOR UPDATE")
        .await
        .expect("lock the replicas");
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the replica exits");
    txn.rollback().await.expect("unlock");
}
