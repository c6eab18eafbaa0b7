//! Process level: kill -9 the service in the middle of a batch, start it again, and check that
//! the batch finishes and the provider's own ledger holds exactly one refund per job.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use refund_service::api::pb;
use refund_service::api::pb::bulk_refund_event::Event;
use refund_service::sandbox::client::SandboxClient;
use tokio_stream::StreamExt as _;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_refund-service");

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub(crate) fn spawn(args: &[String]) -> Proc {
    let log = std::env::var_os("TEST_LOG").is_some();
    Proc(
        Command::new(BIN)
            .args(args)
            .env_remove("DATABASE_URL")
            .env("REFUND_BOOTSTRAP_API_KEY", ADMIN_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("spawn refund-service"),
    )
}

pub(crate) async fn wait_http(url: &str) {
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), url, || {
        let req = http.get(url).send();
        async move {
            req.await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
}

#[tokio::test]
async fn kill_9_mid_batch_then_restart_finishes_the_batch_without_refunding_twice() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::new().await;

    // The provider runs in its own process and keeps its ledger while the service dies.
    let sandbox_port = free_port();
    let _sandbox = spawn(&[
        "sandbox".into(),
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{sandbox_port}"),
        "--latency-ms".into(),
        "15".into(),
    ]);
    let sandbox_url = format!("http://127.0.0.1:{sandbox_port}/sandbox");
    wait_http(&format!("{sandbox_url}/stats")).await;
    let sandbox = SandboxClient::new(&sandbox_url, Duration::from_secs(30)).unwrap();

    let (grpc_port, http_port) = (free_port(), free_port());
    let serve_args = vec![
        "serve".to_owned(),
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc_port}"),
        "--http-addr".into(),
        format!("127.0.0.1:{http_port}"),
        "--database-url".into(),
        db.url.clone(),
        "--sandbox-url".into(),
        sandbox_url.clone(),
        "--bulk-lease".into(),
        "1s".into(),
        "--bulk-poll-interval".into(),
        "100ms".into(),
        "--provider-timeout".into(),
        "1s".into(),
        "--provider-max-attempts".into(),
        "2".into(),
        "--provider-backoff".into(),
        "100ms".into(),
        "--provider-max-backoff".into(),
        "200ms".into(),
        "--reconcile-delay".into(),
        "300ms".into(),
        "--reconcile-interval".into(),
        "100ms".into(),
    ];
    let mut service = spawn(&serve_args);
    wait_http(&format!("http://127.0.0.1:{http_port}/readyz")).await;

    let n = 150;
    let payments = seed_payments(&sandbox, n, 2_000).await;

    let url = format!("http://127.0.0.1:{grpc_port}");
    let mut client = client_with_key(grpc_addr(&url), Some(ADMIN_KEY)).await;
    let mut stream = client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments
                .iter()
                .map(|p| refund_request(p, None, "USD"))
                .collect(),
            max_concurrency: 8,
            idempotency_key: "crash-test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut bulk_id = String::new();
    let mut results_before = 0;
    while let Some(Ok(event)) = stream.next().await {
        match event.event {
            Some(Event::Accepted(a)) => bulk_id = a.bulk_id,
            Some(Event::Result(_)) => results_before += 1,
            _ => {}
        }
        if results_before == 40 {
            break;
        }
    }
    assert_eq!(results_before, 40);
    // kill -9: no drain, jobs in flight at the provider, leases held.
    service.0.kill().unwrap();
    service.0.wait().unwrap();
    drop(stream);
    let refunded_at_kill = sandbox.ledger(None).await.unwrap().len();
    assert!(
        refunded_at_kill < n as usize,
        "the batch was still running when killed"
    );

    service = spawn(&serve_args);
    wait_http(&format!("http://127.0.0.1:{http_port}/readyz")).await;
    let mut client = client_with_key(grpc_addr(&url), Some(ADMIN_KEY)).await;
    let watch = client
        .watch_bulk_refund(pb::WatchBulkRefundRequest {
            bulk_id: bulk_id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let events: Vec<pb::BulkRefundEvent> = tokio::time::timeout(Duration::from_secs(60), async {
        watch.map(|e| e.unwrap()).collect::<Vec<_>>().await
    })
    .await
    .expect("the batch finishes after the restart");
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gaps or duplicates"
    );
    let Some(Event::Summary(summary)) = events.last().and_then(|e| e.event.clone()) else {
        panic!("no summary");
    };
    assert_eq!(summary.succeeded, n as i32, "{summary:?}");

    // Refunds whose provider call was cut by the kill settle through the reconciler; in the
    // end every job has exactly one refund at the provider, of the full amount.
    eventually(Duration::from_secs(30), "every refund settled", || {
        let mut client = client.clone();
        async move {
            let pending = client
                .list_refunds(pb::ListRefundsRequest {
                    status: pb::RefundStatus::Pending.into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            pending.refunds.is_empty().then_some(())
        }
    })
    .await;
    let ledger = sandbox.ledger(None).await.unwrap();
    assert_eq!(ledger.len(), n as usize, "one provider refund per job");
    for p in &payments {
        let mine: Vec<_> = ledger.iter().filter(|r| &r.payment == p).collect();
        assert_eq!(mine.len(), 1, "{p}");
        assert_eq!(mine[0].amount, 2_000);
    }
    drop(service);
}

pub(crate) fn grpc_addr(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("host:port")
}
