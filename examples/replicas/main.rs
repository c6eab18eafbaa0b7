//! The replica test: three replicas of the release binary on one PostgreSQL database and one
//! standalone sandbox. A batch of `--jobs` goes to replica A; after `--kill-at` results A is
//! killed (`kill -9`); the stream is re-attached on replica B from the last sequence seen; a
//! fourth replica D joins mid-batch. Then it checks, and exits 1 if any check fails:
//! - every job has exactly one result across the two streams, and the summary agrees;
//! - the sandbox made exactly one refund per job, and `refund-service verify` finds nothing;
//! - B, C and D each ran some of the remaining work, D within a few seconds of joining;
//! - no taken-over job is left PENDING for the reconciler;
//! - the provider budget R held for all replicas together (busiest second ≤ 1.1 R) and the
//!   replicas together used the budget rather than a share of it: throughput before the kill is
//!   above R/2 (three replicas each keeping R/3 to themselves, or one replica idling on a
//!   stale lease, would fall well below). The figure itself is printed and written to `--json`;
//!   how close it comes to R is for the benchmarks to measure, not for a pass/fail check.
//!
//! Run it with `scripts/replicas.sh`; it prints its figures and writes them to `--json`.

#[allow(dead_code)]
#[path = "../soak/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../soak/procs.rs"]
mod procs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use refund_service::api::pb;
use refund_service::api::pb::bulk_refund_event::Event;
use refund_service::sandbox::NewPayments;
use refund_service::sandbox::client::SandboxClient;
use tokio_stream::StreamExt as _;

use procs::{Replica, free_port, wait_ready};

const ADMIN_KEY: &str = "rsk_replica_test_admin_key_0123456789abcdef";

#[derive(Parser, Debug)]
struct Args {
    /// The release binary.
    #[arg(long)]
    bin: String,
    /// The sandbox's rate limit, and ours: for all replicas together.
    #[arg(long, default_value_t = 150)]
    rate: u32,
    #[arg(long, default_value_t = 5_000)]
    jobs: u32,
    /// Kill replica A after this many results (default: 40% of the jobs).
    #[arg(long)]
    kill_at: Option<u32>,
    #[arg(long, default_value = "3s")]
    bulk_lease: String,
    /// The sandbox's latency per call.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_url: String,
    /// Write the figures here as JSON too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("replicas: set-up error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// How far replica `r` has got: its jobs in flight now (sampled).
async fn in_flight(http: &reqwest::Client, r: &Replica) -> Option<f64> {
    let url = format!("http://127.0.0.1:{}/metrics", r.http_port);
    let text = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("refund_bulk_jobs_in_flight "))
        .and_then(|v| v.trim().parse().ok())
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let jobs = args.jobs;
    let kill_at = args.kill_at.unwrap_or(jobs * 2 / 5);
    anyhow::ensure!(
        kill_at > 0 && kill_at < jobs,
        "--kill-at must be within the batch"
    );
    let run_dir = std::env::temp_dir().join(format!("refund-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    println!(
        "replicas: jobs={jobs} rate={}/s kill_at={kill_at} bulk_lease={} latency={}ms run_dir={}",
        args.rate,
        args.bulk_lease,
        args.latency_ms,
        run_dir.display()
    );
    let http = reqwest::Client::new();

    // --- a fresh database ---
    let name = format!("refund_replicas_{}", uuid::Uuid::new_v4().simple());
    let admin = sea_orm::Database::connect(&args.pg_url)
        .await
        .with_context(|| format!("cannot connect to {}", args.pg_url))?;
    sea_orm::ConnectionTrait::execute_unprepared(&admin, &format!("CREATE DATABASE {name}"))
        .await?;
    let base = args
        .pg_url
        .rsplit_once('/')
        .context("URL ends in /DATABASE")?
        .0;
    let database_url = format!("{base}/{name}");

    // --- the sandbox, limited to R per second (reads and writes each), as a provider is ---
    let sandbox_port = free_port()?;
    let sandbox_url = format!("http://127.0.0.1:{sandbox_port}/sandbox");
    let sandbox_args: Vec<String> = vec![
        "sandbox".into(),
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{sandbox_port}"),
        "--latency-ms".into(),
        args.latency_ms.to_string(),
    ];
    let _sandbox =
        procs::spawn_sandbox(&args.bin, &sandbox_args, &run_dir, &http, &sandbox_url).await?;
    let sandbox = SandboxClient::new(&sandbox_url, Duration::from_secs(60))?;

    // --- replicas A, B, C now, and D later ---
    let mut replicas = Vec::new();
    for index in 0..4 {
        let (grpc, http_port) = (free_port()?, free_port()?);
        let a: Vec<String> = [
            "serve",
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
            "--database-url",
            &database_url,
            "--sandbox-url",
            &sandbox_url,
            "--sandbox-rate-limit",
            &args.rate.to_string(),
            "--bootstrap-api-key",
            ADMIN_KEY,
            "--api-key-rate-limit",
            "0",
            "--bulk-lease",
            &args.bulk_lease,
            "--bulk-poll-interval",
            "200ms",
            "--bulk-max-jobs",
            &jobs.max(10_000).to_string(),
            "--shutdown-grace",
            "1s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        replicas.push(Replica {
            index,
            grpc_port: grpc,
            http_port,
            args: a,
            log: run_dir.join(format!("replica-{}.log", ["a", "b", "c", "d"][index])),
            proc: None,
            starts: 0,
            kills: 0,
            crashes: Vec::new(),
        });
    }
    replicas[0].start(&args.bin)?;
    wait_ready(&http, &replicas[0].ready_url(), Duration::from_secs(60)).await?;
    for r in &mut replicas[1..3] {
        r.start(&args.bin)?;
    }
    for r in &replicas[..3] {
        wait_ready(&http, &r.ready_url(), Duration::from_secs(60)).await?;
    }

    // --- the batch, to A ---
    let payments = sandbox
        .create_payments(&NewPayments {
            amount: 1_000,
            currency: "USD".into(),
            id: None,
            count: Some(jobs),
            status: None,
            fail_refunds: false,
        })
        .await?;
    let jobs_pb: Vec<pb::CreateRefundRequest> = payments
        .iter()
        .map(|p| pb::CreateRefundRequest {
            payment_id: p.id.clone(),
            currency: "USD".into(),
            ..Default::default()
        })
        .collect();
    let mut a = client::client(&replicas[0].grpc_url(), ADMIN_KEY)?;
    let started = Instant::now();
    let mut stream = a
        .bulk_refund(pb::BulkRefundRequest {
            jobs: jobs_pb,
            max_concurrency: 64,
            ..Default::default()
        })
        .await
        .context("BulkRefund on A")?
        .into_inner();
    let mut results: BTreeMap<i32, Vec<pb::BulkJobResult>> = BTreeMap::new();
    let mut last_sequence = 0;
    let mut bulk_id = String::new();
    let mut first_result_at = None;
    let mut seen_on_a = 0u32;
    while seen_on_a < kill_at {
        let event = stream.next().await.context("A's stream ended early")??;
        last_sequence = event.sequence;
        match event.event {
            Some(Event::Accepted(acc)) => bulk_id = acc.bulk_id,
            Some(Event::Result(r)) => {
                first_result_at.get_or_insert_with(Instant::now);
                seen_on_a += 1;
                results.entry(r.index).or_default().push(r);
            }
            _ => {}
        }
    }
    let killed_at = Instant::now();
    let before_kill_secs = killed_at
        .duration_since(first_result_at.unwrap_or(started))
        .as_secs_f64();
    let throughput_before_kill = f64::from(seen_on_a.saturating_sub(1)) / before_kill_secs;
    drop(stream);
    replicas[0].kill();
    println!("replicas: kill -9 of A after {seen_on_a} results ({before_kill_secs:.1} s)");

    // --- D joins, and the stream is re-attached on B ---
    replicas[3].start(&args.bin)?;
    let d_started = Instant::now();
    let mut b = client::client(&replicas[1].grpc_url(), ADMIN_KEY)?;
    let mut watch = b
        .watch_bulk_refund(pb::WatchBulkRefundRequest {
            bulk_id: bulk_id.clone(),
            after_sequence: last_sequence,
        })
        .await
        .context("WatchBulkRefund on B")?
        .into_inner();
    let mut busy: [u32; 4] = [0; 4];
    let mut d_first_work = None;
    let mut sample = tokio::time::interval(Duration::from_millis(100));
    let mut summary = None;
    let mut pending_taken_over: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while summary.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the batch did not finish in 10 minutes"
        );
        tokio::select! {
            event = watch.next() => {
                let event = event.context("B's stream ended before the summary")??;
                match event.event {
                    Some(Event::Result(r)) => {
                        if let Some(refund) = &r.refund
                            && refund.status == pb::RefundStatus::Pending as i32
                        {
                            pending_taken_over.push(refund.id.clone());
                        }
                        results.entry(r.index).or_default().push(r);
                    }
                    Some(Event::Summary(s)) => summary = Some(s),
                    _ => {}
                }
            }
            _ = sample.tick() => {
                for (i, r) in replicas.iter().enumerate().skip(1) {
                    if in_flight(&http, r).await.unwrap_or(0.0) > 0.0 {
                        busy[i] += 1;
                        if i == 3 && d_first_work.is_none() {
                            d_first_work = Some(d_started.elapsed());
                        }
                    }
                }
            }
        }
    }
    let finished = started.elapsed();
    let summary = summary.context("no summary")?;

    // PENDING results (refunds a dead worker made that the provider had not settled yet): how
    // long until they settle.
    let mut unresolved = pending_taken_over.clone();
    let resolve_started = Instant::now();
    while !unresolved.is_empty() && resolve_started.elapsed() < Duration::from_secs(120) {
        let mut still = Vec::new();
        for id in unresolved {
            let r = b
                .get_refund(pb::GetRefundRequest { id: id.clone() })
                .await?
                .into_inner();
            if r.status == pb::RefundStatus::Pending as i32 {
                still.push(id);
            }
        }
        unresolved = still;
        if !unresolved.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let resolved_in = resolve_started.elapsed();

    // --- the checks ---
    let stats = sandbox.stats().await?;
    let ledger = sandbox.ledger(None).await?;
    let mut per_payment: BTreeMap<&str, u32> = BTreeMap::new();
    for r in &ledger {
        *per_payment.entry(r.payment.as_str()).or_default() += 1;
    }
    let refunded_twice = per_payment.values().filter(|n| **n > 1).count();
    let missing = (0..jobs as i32)
        .filter(|i| !results.contains_key(i))
        .count();
    let duplicated = results.values().filter(|v| v.len() > 1).count();
    let succeeded = results
        .values()
        .filter(|v| {
            v.iter()
                .any(|r| r.status == pb::BulkItemStatus::Succeeded as i32)
        })
        .count();
    let verify = std::process::Command::new(&args.bin)
        .args([
            "verify",
            "--database-url",
            &database_url,
            "--sandbox-url",
            &sandbox_url,
        ])
        .args(["--settled", "--json"])
        .env("RUST_LOG", "warn")
        .output()?;
    let verify_ok = verify.status.success();
    std::fs::write(run_dir.join("verify.json"), &verify.stdout)?;
    if !verify_ok {
        println!(
            "replicas: refund-service verify: {}",
            String::from_utf8_lossy(&verify.stderr).trim()
        );
    }
    let taken_over = replicas[1..]
        .iter()
        .map(|r| {
            std::fs::read_to_string(&r.log)
                .unwrap_or_default()
                .matches("taking over a job whose worker's lease expired")
                .count()
        })
        .collect::<Vec<_>>();
    let rate = f64::from(args.rate);

    let checks: Vec<(String, bool)> = vec![
        (
            format!("every job has a result: {missing} missing"),
            missing == 0,
        ),
        (
            format!("no job has two results: {duplicated} duplicated"),
            duplicated == 0,
        ),
        (
            format!(
                "summary: {} succeeded, {} failed, of {}",
                summary.succeeded, summary.failed, summary.total
            ),
            i64::from(summary.succeeded) == i64::from(jobs)
                && i64::from(summary.total) == i64::from(jobs)
                && succeeded == jobs as usize,
        ),
        (
            format!(
                "sandbox ledger: {} refunds for {jobs} jobs, {refunded_twice} payments refunded twice",
                ledger.len()
            ),
            ledger.len() == jobs as usize && refunded_twice == 0,
        ),
        (
            format!("refund-service verify: exit {:?}", verify.status.code()),
            verify_ok,
        ),
        (
            format!(
                "B, C, D each ran work after the kill (samples busy: {:?})",
                &busy[1..]
            ),
            busy[1..].iter().all(|n| *n > 0),
        ),
        (
            format!("D took work {:?} after it started", d_first_work),
            d_first_work.is_some_and(|d| d < Duration::from_secs(10)),
        ),
        (
            format!(
                "taken-over results PENDING: {}, unresolved after {:.1} s: {}",
                pending_taken_over.len(),
                resolved_in.as_secs_f64(),
                unresolved.len()
            ),
            unresolved.is_empty() && resolved_in < Duration::from_secs(30),
        ),
        (
            format!(
                "busiest second of writes at the sandbox: {} (R = {}, limit 1.1 R)",
                stats.max_writes_per_sec, args.rate
            ),
            (stats.max_writes_per_sec as f64) <= rate * 1.1,
        ),
        (
            format!(
                "throughput before the kill: {throughput_before_kill:.0} jobs/s ({:.0}% of R, floor 50%)",
                100.0 * throughput_before_kill / rate
            ),
            throughput_before_kill > 0.5 * rate,
        ),
    ];
    println!();
    println!("replicas: jobs taken over (log lines) by B, C, D: {taken_over:?}");
    println!(
        "replicas: batch took {:.1} s; sandbox busiest second {} requests, {} writes; 429s {}",
        finished.as_secs_f64(),
        stats.max_requests_per_sec,
        stats.max_writes_per_sec,
        stats.rate_limited
    );
    let mut ok = true;
    for (what, passed) in &checks {
        println!("  {} {what}", if *passed { "ok  " } else { "FAIL" });
        ok &= passed;
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "jobs": jobs, "rate": args.rate, "kill_at": kill_at,
            "throughput_before_kill": throughput_before_kill,
            "batch_secs": finished.as_secs_f64(),
            "max_requests_per_sec": stats.max_requests_per_sec,
            "max_writes_per_sec": stats.max_writes_per_sec,
            "rate_limited": stats.rate_limited,
            "ledger_refunds": ledger.len(), "refunded_twice": refunded_twice,
            "missing": missing, "duplicated": duplicated,
            "taken_over": taken_over, "busy_samples": &busy[1..],
            "d_first_work_secs": d_first_work.map(|d| d.as_secs_f64()),
            "pending_taken_over": pending_taken_over.len(),
            "pending_resolved_secs": resolved_in.as_secs_f64(),
            "verify_ok": verify_ok, "passed": ok,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)?;
    }
    for r in &mut replicas {
        r.kill();
    }
    if ok {
        sea_orm::ConnectionTrait::execute_unprepared(
            &admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await
        .ok();
        let _ = std::fs::remove_dir_all(&run_dir);
        println!("replicas: passed");
    } else {
        println!(
            "replicas: FAILED; logs and database {name} kept in {}",
            run_dir.display()
        );
    }
    Ok(ok)
}
