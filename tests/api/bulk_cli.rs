//! `refund-service bulk`: the real binary against a real server, with CSV files in a temporary
//! directory and the sandbox's ledger as the provider's side of the truth.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use refund_service::api::pb;
use refund_service::sandbox::FaultConfig;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_refund-service");

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The summary's `key: value` lines.
    fn summary(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }

    fn counts(&self) -> [String; 5] {
        let s = self.summary();
        ["total", "succeeded", "failed", "skipped", "canceled"]
            .map(|k| s.get(k).cloned().unwrap_or_default())
    }

    fn bulk_ids(&self) -> Vec<String> {
        self.summary()
            .get("bulk ids")
            .map(|ids| ids.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// Runs `refund-service bulk ARGS` in `dir`, so that default output paths stay in it.
async fn bulk(dir: &Path, args: &[&str]) -> Run {
    let dir = dir.to_owned();
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .arg("bulk")
            .args(&args)
            .current_dir(&dir)
            .env_remove("REFUND_SERVER")
            .env("REFUND_API_KEY", crate::helpers::ADMIN_KEY)
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

fn server(app: &TestApp) -> String {
    format!("http://{}", app.grpc_addr)
}

fn write_csv(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Header and rows of a CSV file.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).expect("CSV file");
    let headers = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (headers, rows)
}

/// Four seeded payments of 10.00 on lines 2, 4, 5 and 7; unknown payments on lines 3 and 6.
async fn mixed_file(app: &TestApp, dir: &Path) -> (PathBuf, Vec<String>) {
    let p = app.seed_many(4, 1_000).await;
    let text = format!(
        "payment_id,Currency,amount,reason,metadata.order\n\
         {},USD,400,requested_by_customer,o-0\n\
         ch_missing_1,USD,100,,o-x\n\
         {},USD,,duplicate,\n\
         {},usd,250,,o-2\n\
         ch_missing_2,USD,5,other,o-y\n\
         {},USD,1000,,o-3\n",
        p[0], p[1], p[2], p[3]
    );
    (write_csv(dir, "refunds.csv", &text), p)
}

async fn ledger_amounts(app: &TestApp, payments: &[String]) -> Vec<Vec<i64>> {
    let mut all = Vec::new();
    for p in payments {
        all.push(app.ledger(p).await.iter().map(|r| r.amount).collect());
    }
    all
}

#[tokio::test]
async fn failed_rows_exit_1_and_go_to_the_dead_letter_file_with_their_errors() {
    let (app, _db) = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, payments) = mixed_file(&app, dir.path()).await;

    let run = bulk(
        dir.path(),
        &["--file", file.to_str().unwrap(), "--server", &server(&app)],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.counts(), ["6", "4", "2", "0", "0"], "{}", run.stdout);
    assert_eq!(run.summary()["state"], "completed");
    let ids = run.bulk_ids();
    assert_eq!(ids.len(), 1);
    assert!(ids[0].starts_with("bulk_"));
    assert!(
        run.stderr.contains(&format!("{}: accepted 6 jobs", ids[0])),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("error: 2 of 6 jobs did not succeed"));

    let dead_letter = dir.path().join("refunds.failed.csv");
    assert_eq!(
        run.summary()["dead-letter"],
        dead_letter.display().to_string()
    );
    let (headers, rows) = read_csv(&dead_letter);
    assert_eq!(
        headers,
        [
            "payment_id",
            "Currency",
            "amount",
            "reason",
            "metadata.order",
            "idempotency_key",
            "error_code",
            "error_message",
            "retryable",
            "status"
        ]
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, (payment, amount, reason, order)) in rows.iter().zip([
        ("ch_missing_1", "100", "", "o-x"),
        ("ch_missing_2", "5", "other", "o-y"),
    ]) {
        assert_eq!(row[..5], [payment, "USD", amount, reason, order]);
        // The key the job was sent with, so that sending the file again replays, never
        // refunds twice.
        assert!(
            row[5].starts_with("csv-") && row[5].contains(":line-"),
            "{row:?}"
        );
        assert_eq!(row[6], "NOT_FOUND");
        assert!(row[7].contains(payment), "{row:?}");
        assert_eq!(row[8..], ["false", "failed"]);
    }

    // One refund per good row, as the file asked.
    assert_eq!(
        ledger_amounts(&app, &payments).await,
        [vec![400], vec![1_000], vec![250], vec![1_000]]
    );
    let first = &app.ledger(&payments[0]).await[0];
    assert_eq!(first.reason.as_deref(), Some("requested_by_customer"));
    assert_eq!(first.metadata.get("order").map(String::as_str), Some("o-0"));
}

#[tokio::test]
async fn running_the_same_file_again_re_attaches_and_refunds_nothing_more() {
    let (app, _db) = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, payments) = mixed_file(&app, dir.path()).await;
    let args = ["--file", file.to_str().unwrap(), "--server", &server(&app)];

    let first = bulk(dir.path(), &args).await;
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    let before = ledger_amounts(&app, &payments).await;

    let again = bulk(dir.path(), &args).await;
    assert_eq!(again.code, Some(1), "{}", again.stderr);
    assert_eq!(again.bulk_ids(), first.bulk_ids(), "the same batch");
    assert_eq!(again.stdout, first.stdout, "the same summary");
    assert_eq!(ledger_amounts(&app, &payments).await, before);
}

#[tokio::test]
async fn a_file_longer_than_the_batch_size_goes_as_consecutive_batches() {
    let (app, _db) = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let payments = app.seed_many(7, 1_000).await;
    let mut text = "payment_id,currency,amount\n".to_owned();
    for p in &payments {
        text.push_str(&format!("{p},USD,300\n"));
    }
    let file = write_csv(dir.path(), "refunds.csv", &text);
    let server = server(&app);
    let args = [
        "--file",
        file.to_str().unwrap(),
        "--server",
        &server,
        "--batch-size",
        "3",
        "--concurrency",
        "2",
    ];

    let run = bulk(dir.path(), &args).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.counts(), ["7", "7", "0", "0", "0"]);
    let ids = run.bulk_ids();
    assert_eq!(ids.len(), 3, "{}", run.stdout);
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3
    );
    for part in ["part 1 of 3, lines 2-4", "part 3 of 3, lines 8-8"] {
        assert!(run.stderr.contains(part), "{}", run.stderr);
    }
    assert!(!run.stdout.contains("dead-letter"));
    assert!(!dir.path().join("refunds.failed.csv").exists());
    assert_eq!(ledger_amounts(&app, &payments).await, vec![vec![300]; 7]);

    // Again: the same three batches, nothing refunded twice.
    let again = bulk(dir.path(), &args).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(again.bulk_ids(), ids);

    // Split differently, the batch keys no longer match their rows: refused, not re-run.
    let resplit = bulk(
        dir.path(),
        &[
            "--file",
            file.to_str().unwrap(),
            "--server",
            &server,
            "--batch-size",
            "4",
        ],
    )
    .await;
    assert_eq!(resplit.code, Some(2), "{}", resplit.stderr);
    assert!(
        resplit.stderr.contains("--batch-size"),
        "{}",
        resplit.stderr
    );
    assert_eq!(ledger_amounts(&app, &payments).await, vec![vec![300]; 7]);
}

#[tokio::test]
async fn abort_on_error_leaves_the_rest_of_the_file_unsent() {
    let (app, _db) = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let payments = app.seed_many(4, 1_000).await;
    let mut text = "payment_id,currency\nch_missing,USD\n".to_owned();
    for p in &payments {
        text.push_str(&format!("{p},USD\n"));
    }
    let file = write_csv(dir.path(), "refunds.csv", &text);
    let run = bulk(
        dir.path(),
        &[
            "--file",
            file.to_str().unwrap(),
            "--server",
            &server(&app),
            "--batch-size",
            "2",
            "--concurrency",
            "1",
            "--abort-on-error",
        ],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.counts(), ["5", "0", "1", "4", "0"], "{}", run.stdout);
    assert_eq!(run.summary()["state"], "aborted");
    assert_eq!(run.bulk_ids().len(), 1, "later batches are not sent");
    assert!(
        run.stderr.contains("lines 4 and after are not sent"),
        "{}",
        run.stderr
    );

    let (_, rows) = read_csv(&dir.path().join("refunds.failed.csv"));
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[6].as_str()))
        .collect();
    let mut expected = vec![("ch_missing", "failed")];
    expected.extend(payments.iter().map(|p| (p.as_str(), "skipped")));
    assert_eq!(got, expected);
    assert!(rows[2..].iter().all(|r| r[3] == "NOT_SENT"), "{rows:?}");
    assert_eq!(
        ledger_amounts(&app, &payments).await,
        vec![Vec::<i64>::new(); 4]
    );
}

#[tokio::test]
async fn a_malformed_file_exits_2_naming_the_line_or_column_and_sends_nothing() {
    let (app, _db) = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let payments = app.seed_many(3, 1_000).await;
    let server = server(&app);

    let bad_amount = write_csv(
        dir.path(),
        "refunds.csv",
        &format!(
            "payment_id,currency,amount\n{},USD,100\n{},USD,\n{},USD,12.50\n",
            payments[0], payments[1], payments[2]
        ),
    );
    let no_currency = write_csv(
        dir.path(),
        "no-currency.csv",
        &format!("payment_id,amount\n{},100\n", payments[0]),
    );
    for (file, expected) in [
        (
            &bad_amount,
            r#"refunds.csv line 4: amount "12.50" is not a whole number of minor units"#,
        ),
        (
            &no_currency,
            r#"no-currency.csv line 1: missing required column "currency""#,
        ),
    ] {
        let run = bulk(
            dir.path(),
            &["--file", file.to_str().unwrap(), "--server", &server],
        )
        .await;
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert!(run.stderr.contains(expected), "{}", run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    assert_eq!(
        ledger_amounts(&app, &payments).await,
        vec![Vec::<i64>::new(); 3]
    );
    assert!(!dir.path().join("refunds.failed.csv").exists());
}

#[tokio::test]
async fn connection_and_server_errors_exit_2_with_the_message() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |s| s.refunds.bulk.max_jobs = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let payments = app.seed_many(3, 1_000).await;
    let mut text = "payment_id,currency\n".to_owned();
    for p in &payments {
        text.push_str(&format!("{p},USD\n"));
    }
    let file = write_csv(dir.path(), "refunds.csv", &text);
    let file = file.to_str().unwrap();

    // More jobs per request than the server takes: INVALID_ARGUMENT, with the way out.
    let run = bulk(dir.path(), &["--file", file, "--server", &server(&app)]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("at most 2 jobs"), "{}", run.stderr);
    assert!(run.stderr.contains("InvalidArgument"), "{}", run.stderr);
    assert!(run.stderr.contains("Lower --batch-size"), "{}", run.stderr);

    // Nobody listening.
    let run = bulk(
        dir.path(),
        &["--file", file, "--server", "http://127.0.0.1:1"],
    )
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot connect to http://127.0.0.1:1"),
        "{}",
        run.stderr
    );

    // A usage error, from clap.
    let run = bulk(dir.path(), &["--server", &server(&app)]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--file"), "{}", run.stderr);

    assert_eq!(
        ledger_amounts(&app, &payments).await,
        vec![Vec::<i64>::new(); 3]
    );
}

#[tokio::test]
async fn resume_of_a_finished_batch_prints_the_same_summary() {
    let (app, _db) = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let (file, _payments) = mixed_file(&app, dir.path()).await;
    let file = file.to_str().unwrap();
    let server = server(&app);

    let run = bulk(dir.path(), &["--file", file, "--server", &server]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let bulk_id = run.bulk_ids().remove(0);
    let dead_letter = dir.path().join("refunds.failed.csv");
    let first_dead_letter = std::fs::read_to_string(&dead_letter).unwrap();
    std::fs::remove_file(&dead_letter).unwrap();

    // With the file: the same summary and the same dead-letter file, rows as in the file.
    let resumed = bulk(
        dir.path(),
        &["--resume", &bulk_id, "--file", file, "--server", &server],
    )
    .await;
    assert_eq!(resumed.code, Some(1), "{}", resumed.stderr);
    assert_eq!(resumed.stdout, run.stdout);
    assert_eq!(
        std::fs::read_to_string(&dead_letter).unwrap(),
        first_dead_letter
    );

    // Without it: the same counts, and a dead-letter file made from the server's record of
    // each job: what was sent, and the key it was sent with.
    let resumed = bulk(dir.path(), &["--resume", &bulk_id, "--server", &server]).await;
    assert_eq!(resumed.code, Some(1), "{}", resumed.stderr);
    assert_eq!(resumed.counts(), run.counts());
    assert_eq!(resumed.bulk_ids(), [bulk_id.as_str()]);
    let (headers, rows) = read_csv(&dir.path().join(format!("{bulk_id}.failed.csv")));
    assert_eq!(
        headers,
        [
            "payment_id",
            "provider",
            "currency",
            "amount",
            "reason",
            "reason_detail",
            "idempotency_key",
            "metadata.order",
            "error_code",
            "error_message",
            "retryable",
            "status"
        ]
    );
    let failed: Vec<Vec<&str>> = rows
        .iter()
        .map(|r| {
            vec![
                r[0].as_str(),
                r[1].as_str(),
                r[2].as_str(),
                r[3].as_str(),
                r[4].as_str(),
                r[7].as_str(),
                r[8].as_str(),
            ]
        })
        .collect();
    assert_eq!(
        failed,
        [
            vec![
                "ch_missing_1",
                "sandbox",
                "USD",
                "100",
                "",
                "o-x",
                "NOT_FOUND"
            ],
            vec![
                "ch_missing_2",
                "sandbox",
                "USD",
                "5",
                "other",
                "o-y",
                "NOT_FOUND"
            ]
        ]
    );
    // The keys the rows were sent with, so that sending the file again replays, never repeats.
    let first_keys: Vec<String> = read_csv(&dead_letter)
        .1
        .iter()
        .map(|r| r[r.len() - 5].clone())
        .collect();
    assert!(rows[0][6].ends_with(":line-3"), "{:?}", rows[0]);
    assert_eq!(
        rows.iter().map(|r| r[6].clone()).collect::<Vec<_>>(),
        first_keys
    );

    // An id the server does not know.
    let unknown = bulk(
        dir.path(),
        &[
            "--resume",
            "bulk_0190c5f4a4f07c3e9e2b7b6a1e1d2c3b",
            "--server",
            &server,
        ],
    )
    .await;
    assert_eq!(unknown.code, Some(2), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("NotFound"), "{}", unknown.stderr);
}

/// A CRLF file partly sent by the release before rows were numbered by physical line: its
/// first batch, sent here as that release sent it (rows keyed, and the batch numbered, by the
/// `csv` crate's line, one line early), is resumed onto the right rows, and sending the file
/// again re-attaches to it and refunds no row twice.
#[tokio::test]
async fn a_crlf_file_partly_sent_by_the_previous_release_is_resumed_and_sent_again_onto_its_batch()
{
    let (app, _db) = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let payments = app.seed_many(5, 1_000).await;
    let mut text = "payment_id,currency,amount\r\n".to_owned();
    for p in &payments {
        text.push_str(&format!("{p},USD,300\r\n"));
    }
    let file = write_csv(dir.path(), "refunds.csv", &text);
    let file = file.to_str().unwrap();
    let server = server(&app);

    // Part 1 of 3 of `--batch-size 2 --idempotency-key run-crlf` as the previous release sent it.
    let job = |i: usize| pb::CreateRefundRequest {
        payment_id: payments[i].clone(),
        currency: "USD".into(),
        amount: Some(300),
        idempotency_key: format!("run-crlf:line-{}", i + 1),
        ..Default::default()
    };
    let mut stream = app
        .client
        .clone()
        .bulk_refund(pb::BulkRefundRequest {
            jobs: vec![job(0), job(1)],
            idempotency_key: "run-crlf:part-1".into(),
            metadata: [
                ("csv_part", "1/3"),
                ("csv_first_line", "1"),
                ("csv_last_line", "2"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        })
        .await
        .expect("accepted")
        .into_inner();
    let first = stream.message().await.unwrap().expect("an event");
    let Some(pb::bulk_refund_event::Event::Accepted(accepted)) = first.event else {
        panic!("{first:?}")
    };
    drop(stream);
    let bulk_id = accepted.bulk_id;

    // Resumed with the file: the batch's rows are the file's first two.
    let resumed = bulk(
        dir.path(),
        &["--resume", &bulk_id, "--file", file, "--server", &server],
    )
    .await;
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    assert_eq!(resumed.counts(), ["2", "2", "0", "0", "0"]);

    // Sent again: part 1 is that batch (same keys, same metadata), then parts 2 and 3.
    let run = bulk(
        dir.path(),
        &[
            "--file",
            file,
            "--server",
            &server,
            "--batch-size",
            "2",
            "--idempotency-key",
            "run-crlf",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.counts(), ["5", "5", "0", "0", "0"]);
    assert_eq!(run.bulk_ids()[0], bulk_id, "{}", run.stdout);
    // Messages name physical lines.
    assert!(
        run.stderr.contains("part 1 of 3, lines 2-3"),
        "{}",
        run.stderr
    );
    assert_eq!(ledger_amounts(&app, &payments).await, vec![vec![300]; 5]);
}

#[tokio::test]
async fn ctrl_c_stops_watching_and_the_batch_can_be_resumed() {
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig {
        latency_ms: 50,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |s| s.sandbox_url = Some(sandbox_url)).await;
    let dir = tempfile::tempdir().unwrap();
    let payments = app.seed_many(20, 1_000).await;
    let mut text = "payment_id,currency\n".to_owned();
    for p in &payments {
        text.push_str(&format!("{p},USD\n"));
    }
    let file = write_csv(dir.path(), "refunds.csv", &text);
    let server = server(&app);

    let (code, stderr) = tokio::task::spawn_blocking({
        let (dir, file, server) = (dir.path().to_owned(), file.clone(), server.clone());
        move || {
            let mut child = Command::new(BIN)
                .args(["bulk", "--concurrency", "1", "--server", &server, "--file"])
                .arg(&file)
                .current_dir(&dir)
                .env("REFUND_API_KEY", crate::helpers::ADMIN_KEY)
                // Run as an installed binary is, not through cargo: the hint names the path.
                .env_remove("CARGO")
                .env_remove("CARGO_PKG_NAME")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn binary");
            let mut stderr = BufReader::new(child.stderr.take().unwrap());
            let mut seen = String::new();
            while !seen.contains("accepted") {
                assert!(stderr.read_line(&mut seen).unwrap() > 0, "{seen}");
            }
            let sent = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
            stderr.read_to_string(&mut seen).unwrap();
            (child.wait().unwrap().code(), seen)
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    let bulk_id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("bulk_"))
        .map(|w| w.trim_end_matches(':').to_owned())
        .expect("bulk id");
    let resume = format!(
        "{BIN} bulk --resume {bulk_id} --file {} --server {server}",
        file.display()
    );
    assert!(stderr.contains(&resume), "{stderr}");

    let resumed = bulk(
        dir.path(),
        &[
            "--resume",
            &bulk_id,
            "--file",
            file.to_str().unwrap(),
            "--server",
            &server,
        ],
    )
    .await;
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    assert_eq!(resumed.counts(), ["20", "20", "0", "0", "0"]);
    assert_eq!(ledger_amounts(&app, &payments).await, vec![vec![1_000]; 20]);
}

/// A batch that waits for a provider at most `--bulk-max-provider-wait`: past it the held jobs
/// fail retryably, saying why, and go to the dead-letter file; sent again once the provider is
/// back, that file refunds each payment once.
#[tokio::test]
async fn jobs_held_past_the_provider_wait_bound_fail_retryably_and_the_dead_letter_file_resends_them_once()
 {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |s| {
        s.sandbox_traffic.breaker_open_for = std::time::Duration::from_secs(1);
        s.refunds.bulk.max_provider_wait = std::time::Duration::from_secs(5);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let payments = app.seed_many(30, 1_000).await;
    let mut text = String::from("payment_id,currency,amount\n");
    for p in &payments {
        text.push_str(&format!("{p},USD,\n"));
    }
    let file = write_csv(dir.path(), "refunds.csv", &text);
    app.sandbox
        .set_faults(&FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        })
        .await
        .unwrap();

    let run = bulk(
        dir.path(),
        &["--file", file.to_str().unwrap(), "--server", &server(&app)],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.counts(), ["30", "0", "30", "0", "0"], "{}", run.stdout);
    assert!(
        run.stderr.contains("waiting for sandbox:"),
        "the progress shows the wait: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("gave up waiting for sandbox"),
        "{}",
        run.stderr
    );
    let dead_letter = dir.path().join("refunds.failed.csv");
    let (headers, rows) = read_csv(&dead_letter);
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    assert_eq!(rows.len(), 30);
    for row in &rows {
        assert_eq!(row[col("error_code")], "UNAVAILABLE", "{row:?}");
        assert_eq!(row[col("retryable")], "true", "{row:?}");
        assert!(
            row[col("error_message")].contains("--bulk-max-provider-wait"),
            "{row:?}"
        );
    }
    for p in &payments {
        assert!(app.ledger(p).await.is_empty());
    }

    // The provider is back: the dead-letter file, sent as it is, refunds each payment once.
    app.sandbox
        .set_faults(&FaultConfig::default())
        .await
        .unwrap();
    let run = bulk(
        dir.path(),
        &[
            "--file",
            dead_letter.to_str().unwrap(),
            "--server",
            &server(&app),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.counts(), ["30", "30", "0", "0", "0"], "{}", run.stdout);
    for p in &payments {
        assert_eq!(app.ledger(p).await.len(), 1, "payment {p}");
    }
}

/// `--server host:port`, as grpcurl users type it, is the plain-text server at that address;
/// anything else that is not an http(s) URL says what was expected.
#[tokio::test]
async fn the_server_can_be_given_as_host_and_port() {
    let (app, _db) = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let payment = app.seed(1_000, "USD").await;
    let file = write_csv(
        dir.path(),
        "refunds.csv",
        &format!("payment_id,currency\n{payment},USD\n"),
    );
    let file = file.to_str().unwrap();

    let run = bulk(
        dir.path(),
        &["--file", file, "--server", &app.grpc_addr.to_string()],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(app.ledger(&payment).await.len(), 1);

    let run = bulk(dir.path(), &["--file", file, "--server", "ftp://example"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("expected host:port, http://host:port or https://host:port"),
        "{}",
        run.stderr
    );
}
