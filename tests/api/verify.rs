//! `refund-service verify`: refunds made through the service against a standalone sandbox check
//! out clean; books corrupted behind the service's back are caught, naming what broke.

use std::process::Command;

use refund_service::api::pb;
use refund_service::sandbox::{FaultConfig, NewPayments};
use sea_orm::{ConnectionTrait as _, Database};
use tokio_stream::StreamExt as _;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_refund-service");

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `refund-service verify ARGS` against `database` and `sandbox`.
async fn verify(database: &str, sandbox: &str, args: &[&str]) -> Run {
    let mut all = vec![
        "verify".to_owned(),
        "--database-url".to_owned(),
        database.to_owned(),
        "--sandbox-url".to_owned(),
        sandbox.to_owned(),
    ];
    all.extend(args.iter().map(|&a| a.to_owned()));
    // Blocking, off the runtime: the sandbox answering the command runs on this test's runtime.
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .args(&all)
            .env_remove("DATABASE_URL")
            .env_remove("REFUND_SANDBOX_URL")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run binary");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", run.stdout, run.stderr))
}

/// The (kind, id) pairs of a JSON report's violations: the refund id when there is one, else
/// the payment id.
fn violations(report: &serde_json::Value) -> Vec<(String, String)> {
    report["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| {
            let id = v["refund_id"]
                .as_str()
                .or_else(|| v["payment_id"].as_str())
                .unwrap_or_default();
            (v["kind"].as_str().unwrap().to_owned(), id.to_owned())
        })
        .collect()
}

async fn create(app: &TestApp, payment: &str, amount: Option<i64>) -> pb::Refund {
    app.client
        .clone()
        .create_refund(refund_request(payment, amount, "USD"))
        .await
        .expect("refund")
        .into_inner()
}

#[tokio::test]
async fn verify_passes_on_books_kept_by_the_service_and_names_what_was_corrupted() {
    let db = TestDb::new().await;
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig::default()).await;
    let app = spawn_app_with(&db, |s| s.sandbox_url = Some(sandbox_url.clone())).await;

    let full = app.seed(1_000, "USD").await;
    let partial = app.seed(1_000, "USD").await;
    let failing = app
        .seed_with(NewPayments {
            amount: 500,
            currency: "USD".into(),
            id: None,
            count: None,
            status: None,
            fail_refunds: true,
        })
        .await;
    let bulk_payment = app.seed(700, "USD").await;

    let full_refund = create(&app, &full, None).await;
    assert_eq!(status_of(&full_refund), pb::RefundStatus::Succeeded);
    let partial_refund = create(&app, &partial, Some(300)).await;
    assert_eq!(status_of(&partial_refund), pb::RefundStatus::Succeeded);
    let failed_refund = create(&app, &failing, Some(200)).await;
    assert_eq!(status_of(&failed_refund), pb::RefundStatus::Failed);
    // A batch: one job refunds, one fails (no such payment).
    let mut stream = app
        .client
        .clone()
        .bulk_refund(pb::BulkRefundRequest {
            jobs: vec![
                refund_request(&bulk_payment, Some(700), "USD"),
                refund_request("ch_does_not_exist", Some(1), "USD"),
            ],
            ..Default::default()
        })
        .await
        .expect("batch accepted")
        .into_inner();
    while let Some(event) = stream.next().await {
        event.expect("stream event");
    }

    // Clean books: exit 0, every refund compared.
    let run = verify(&db.url, &sandbox_url, &["--json", "--settled"]).await;
    let report = json(&run);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(report["ok"], true);
    assert_eq!(report["refunds_checked"], 4, "{report}");
    assert_eq!(report["provider_refunds"], 4, "{report}");
    assert_eq!(report["payments_checked"], 4, "{report}");
    assert_eq!(report["bulks_checked"], 1);
    assert_eq!(report["bulk_items_checked"], 2);
    assert!(violations(&report).is_empty());
    let run = verify(&db.url, &sandbox_url, &[]).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("violations:        0"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("refunds checked:   4"),
        "{}",
        run.stdout
    );

    // A refund the provider settles while ours stays PENDING (no webhook reaches this service,
    // and the reconciler waits a minute): a warning, unless the run is declared settled.
    app.sandbox
        .set_faults(&FaultConfig {
            settle_delay_ms: 200,
            ..FaultConfig::default()
        })
        .await
        .expect("set faults");
    let later = app.seed(400, "USD").await;
    let pending = create(&app, &later, None).await;
    assert_eq!(status_of(&pending), pb::RefundStatus::Pending);
    app.sandbox
        .set_faults(&FaultConfig::default())
        .await
        .expect("clear faults");
    eventually(
        std::time::Duration::from_secs(10),
        "the provider to settle",
        || async {
            let ledger = app.sandbox.ledger(Some(&later)).await.ok()?;
            (ledger.first()?.status == refund_service::sandbox::RefundStatus::Succeeded)
                .then_some(())
        },
    )
    .await;
    let run = verify(&db.url, &sandbox_url, &["--json"]).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = json(&run);
    assert_eq!(report["unresolved"], 1, "{report}");
    assert_eq!(report["warnings"][0]["kind"], "unresolved");
    assert_eq!(report["warnings"][0]["refund_id"], pending.id.as_str());
    let run = verify(&db.url, &sandbox_url, &["--json", "--settled"]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        violations(&json(&run)),
        [("unresolved".to_owned(), pending.id.clone())]
    );

    app.stop().await;

    // Behind the service's back: a refund the provider paid marked FAILED without releasing its
    // amount, and another payment's reservation lowered.
    let conn = Database::connect(&db.url).await.expect("connect");
    conn.execute_unprepared(&format!(
        "UPDATE refunds SET status = 'failed' WHERE id = '{}'",
        partial_refund.id
    ))
    .await
    .expect("corrupt the refund");
    conn.execute_unprepared(&format!(
        "UPDATE payments SET reserved_amount = reserved_amount - 1 WHERE payment_id = '{full}'"
    ))
    .await
    .expect("corrupt the balance");
    conn.close().await.ok();

    let run = verify(&db.url, &sandbox_url, &["--json"]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = json(&run);
    assert_eq!(report["ok"], false);
    let mut found = violations(&report);
    found.sort();
    let mut expected = vec![
        ("reservation_mismatch".to_owned(), full.clone()),
        ("reservation_mismatch".to_owned(), partial.clone()),
        (
            "released_but_refunded".to_owned(),
            partial_refund.id.clone(),
        ),
        // Its refund.succeeded event, written with the real change, contradicts the forged row.
        ("event_mismatch".to_owned(), partial_refund.id.clone()),
    ];
    expected.sort();
    assert_eq!(found, expected, "{report}");

    // The human summary names them too, one per line.
    let run = verify(&db.url, &sandbox_url, &[]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("violations:        4"),
        "{}",
        run.stdout
    );
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("released_but_refunded"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(line.contains(&partial_refund.id), "{line}");
    assert!(
        run.stderr.contains("4 invariant violations"),
        "{}",
        run.stderr
    );

    // Nothing to read: exit 2, with the reason.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let run = verify(&db.url, &format!("http://127.0.0.1:{closed}/sandbox"), &[]).await;
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("sandbox"), "{}", run.stderr);
}
