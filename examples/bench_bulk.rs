//! Bulk refund benchmark (run by `scripts/bench-bulk.sh`; not a test).
//!
//! Starts a standalone sandbox with provider latency L and rate limit R, starts the service (both
//! as processes of the release binary) on a fresh database, seeds N payments, refunds them in one
//! BulkRefund at concurrency C, and prints: N, L, R, C, wall time, jobs/s, the bound
//! min(R, C/L) and our ratio to it, and the service's peak RSS. With `--sequential M` it also
//! refunds M payments one CreateRefund at a time, like the seed's loop, for comparison. With
//! `--webhooks` a subscriber on loopback takes every event as a webhook during the batch: the
//! batch's figures then include the dispatcher's work, and a second line says how long after the
//! batch the last event arrived. With `--json PATH` the same figures are also written to PATH
//! as one JSON object (for `scripts/bench.sh`). A PostgreSQL database made for the run is
//! dropped at its end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

#[path = "common/scratch_db.rs"]
mod scratch_db;
use clap::Parser;
use refund_service::api::max_message_bytes;
use refund_service::api::pb;
use refund_service::api::pb::bulk_refund_event::Event;
use refund_service::api::pb::refund_service_client::RefundServiceClient;
use scratch_db::ScratchDb;

/// The admin key the benchmarked service is started with.
const BENCH_KEY: &str = "rsk_bench_admin_key_not_a_secret_0123456789";
use refund_service::sandbox::NewPayments;
use refund_service::sandbox::client::SandboxClient;
use tokio_stream::StreamExt as _;

#[derive(Parser, Debug)]
struct Args {
    /// Path of the refund-service binary (release build).
    #[arg(long)]
    bin: String,
    /// `sqlite` or a PostgreSQL admin URL (a fresh database is created through it).
    #[arg(long, default_value = "sqlite")]
    store: String,
    #[arg(long, default_value_t = 10_000)]
    jobs: u32,
    /// Provider latency L in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Provider rate limit R in requests per second (the service paces itself below it).
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Concurrency C of the batch.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// PostgreSQL connection pool size of the service.
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
    /// Also refund this many payments one at a time (the seed's sequential loop).
    #[arg(long, default_value_t = 0)]
    sequential: u32,
    /// A provider outage: once this fraction of the jobs has a result, the sandbox answers every
    /// request with 500 for `--outage-secs`.
    #[arg(long)]
    outage_at: Option<f64>,
    #[arg(long, default_value_t = 20)]
    outage_secs: u64,
    /// Subscribe a loopback receiver (answering 204) to every event during the batch.
    #[arg(long)]
    webhooks: bool,
    /// Also write the figures to this file, as one JSON object.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The name of the PostgreSQL database to make (default: refund_bench_<random>), so that
    /// a caller that kills this process can drop it.
    #[arg(long)]
    pg_database: Option<String>,
}

/// A receiver that answers 204 and counts.
async fn start_receiver() -> anyhow::Result<(String, std::sync::Arc<std::sync::atomic::AtomicU64>)>
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}/hook"), count))
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Peak resident set size of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmHWM:")
}

/// A size line of /proc/PID/status (`VmHWM:`, `VmRSS:`), in MiB.
fn status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field}"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url} never became ready")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir()?;
    let scratch = if args.store == "sqlite" {
        None
    } else {
        let name = args
            .pg_database
            .clone()
            .unwrap_or_else(|| format!("refund_bench_{}", uuid::Uuid::new_v4().simple()));
        Some(ScratchDb::create(&args.store, name).await?)
    };
    let result = run(&args, &work, scratch.as_ref().map(|db| db.url.as_str())).await;
    // The processes are gone by now (dropped in `run`): the database can go too.
    if let Some(db) = scratch {
        db.drop_now().await?;
    }
    result
}

/// `pg_url`: the run's PostgreSQL database; a SQLite file in `work` without one.
async fn run(args: &Args, work: &tempfile::TempDir, pg_url: Option<&str>) -> anyhow::Result<()> {
    let (database_url, store_name) = match pg_url {
        None => (
            format!(
                "sqlite://{}?mode=rwc",
                work.path().join("bench.db").display()
            ),
            "sqlite".to_owned(),
        ),
        Some(url) => (url.to_owned(), "postgres".to_owned()),
    };

    let sandbox_port = free_port()?;
    let _sandbox = Proc(
        Command::new(&args.bin)
            .args([
                "sandbox",
                "serve",
                "--listen",
                &format!("127.0.0.1:{sandbox_port}"),
            ])
            .args(["--latency-ms", &args.latency_ms.to_string()])
            .args(["--rate-limit", &args.rate.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let sandbox_url = format!("http://127.0.0.1:{sandbox_port}/sandbox");
    wait_ready(&format!("{sandbox_url}/stats")).await?;

    let (grpc, http) = (free_port()?, free_port()?);
    let max_jobs = args.jobs.max(args.sequential).max(10_000);
    let key_file = work.path().join("master.key");
    std::fs::write(
        &key_file,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )?;
    let webhook_args: Vec<String> = if args.webhooks {
        vec![
            "--secrets-key-file".into(),
            key_file.display().to_string(),
            "--webhook-allow-private-targets".into(),
            "--webhook-allow-http".into(),
        ]
    } else {
        Vec::new()
    };
    let service = Proc(
        Command::new(&args.bin)
            .args(["serve", "--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(&webhook_args)
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--database-url", &database_url])
            .args(["--sandbox-url", &sandbox_url])
            .args(["--sandbox-rate-limit", &args.rate.to_string()])
            .args([
                "--provider-concurrency",
                &args.concurrency.max(1).to_string(),
            ])
            .args(["--bulk-max-jobs", &max_jobs.to_string()])
            .args([
                "--bulk-max-concurrency",
                &args.concurrency.max(1).to_string(),
            ])
            .args([
                "--bulk-default-concurrency",
                &args.concurrency.max(1).to_string(),
            ])
            .env("REFUND_BOOTSTRAP_API_KEY", BENCH_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await?;

    let sandbox = SandboxClient::new(&sandbox_url, Duration::from_secs(120))?;
    let seed = |count: u32| NewPayments {
        amount: 10_000,
        currency: "USD".into(),
        id: None,
        count: Some(count),
        status: None,
        fail_refunds: false,
    };
    let payments = sandbox.create_payments(&seed(args.jobs)).await?;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))?
        .connect()
        .await?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {BENCH_KEY}").parse()?;
    let mut client =
        RefundServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        })
        .max_encoding_message_size(max_message_bytes(max_jobs))
        .max_decoding_message_size(max_message_bytes(max_jobs));
    let jobs = payments
        .iter()
        .map(|p| pb::CreateRefundRequest {
            payment_id: p.id.clone(),
            amount: Some(2_500),
            currency: "USD".into(),
            ..Default::default()
        })
        .collect();
    drop(payments);
    let receiver = if args.webhooks {
        let (url, count) = start_receiver().await?;
        client
            .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                url,
                ..Default::default()
            })
            .await?;
        Some(count)
    } else {
        None
    };

    let rss_before = status_mib(service.0.id(), "VmRSS:")?;
    let started = Instant::now();
    let mut stream = client
        .bulk_refund(pb::BulkRefundRequest {
            jobs,
            max_concurrency: i32::try_from(args.concurrency)?,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut summary = None;
    let mut results = 0u32;
    let outage_after = args
        .outage_at
        .map(|f| (f64::from(args.jobs) * f.clamp(0.0, 1.0)) as u32);
    let mut outage: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    let mut waited = Duration::ZERO;
    while let Some(event) = stream.next().await {
        match event?.event {
            Some(Event::Summary(s)) => summary = Some(s),
            Some(Event::Result(_)) => {
                results += 1;
                if outage.is_none() && outage_after.is_some_and(|n| results >= n) {
                    let sandbox = sandbox.clone();
                    let secs = args.outage_secs;
                    outage = Some(tokio::spawn(async move {
                        let down = refund_service::sandbox::FaultConfig {
                            error_rate: 1.0,
                            ..Default::default()
                        };
                        sandbox.set_faults(&down).await?;
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                        sandbox.set_faults(&Default::default()).await?;
                        Ok(())
                    }));
                }
            }
            Some(Event::ProviderWaitEnded(end)) => {
                waited += end.waited.map_or(Duration::ZERO, |d| {
                    Duration::from_secs(d.seconds.max(0) as u64)
                });
            }
            _ => {}
        }
    }
    let wall = started.elapsed();
    if let Some(outage) = outage {
        outage.await??;
    }
    let summary = summary.context("stream ended without a summary")?;
    let rss = peak_rss_mib(service.0.id())?;
    let stats = sandbox.stats().await?;

    let jobs_per_sec = f64::from(args.jobs) / wall.as_secs_f64();
    let by_latency = f64::from(args.concurrency) / (args.latency_ms.max(1) as f64 / 1000.0);
    let bound = f64::from(args.rate).min(by_latency);
    println!(
        "store={store_name} N={} L={}ms R={}/s C={} wall={:.2}s jobs/s={:.0} bound=min(R,C/L)={:.0} ratio={:.1}% succeeded={} failed={} peak_rss={:.1}MiB provider_max_rps={} provider_429s={}",
        args.jobs,
        args.latency_ms,
        args.rate,
        args.concurrency,
        wall.as_secs_f64(),
        jobs_per_sec,
        bound,
        100.0 * jobs_per_sec / bound,
        summary.succeeded,
        summary.failed,
        rss,
        stats.max_requests_per_sec,
        stats.rate_limited,
    );
    let mut report = serde_json::json!({
        "store": store_name,
        "jobs": args.jobs,
        "latency_ms": args.latency_ms,
        "rate": args.rate,
        "concurrency": args.concurrency,
        "webhooks": args.webhooks,
        "wall_s": wall.as_secs_f64(),
        "jobs_per_sec": jobs_per_sec,
        "bound": bound,
        "ratio": jobs_per_sec / bound,
        "succeeded": summary.succeeded,
        "failed": summary.failed,
        "rss_before_mib": rss_before,
        "peak_rss_mib": rss,
        "provider_max_rps": stats.max_requests_per_sec,
        "provider_429s": stats.rate_limited,
    });
    if let Some(count) = &receiver {
        // Every job's refund.created and refund.succeeded, and the batch's two.
        let want = 2 * u64::from(args.jobs) + 2;
        let waiting = Instant::now();
        while count.load(std::sync::atomic::Ordering::Relaxed) < want
            && waiting.elapsed() < Duration::from_secs(600)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = count.load(std::sync::atomic::Ordering::Relaxed);
        let total = started.elapsed();
        report["webhooks_delivered"] = got.into();
        report["webhooks_expected"] = want.into();
        report["webhooks_lag_s"] = waiting.elapsed().as_secs_f64().into();
        println!(
            "  webhooks: {got} of {want} events delivered; the last {:.2}s after the batch ended ({:.0} webhooks/s over the whole run)",
            waiting.elapsed().as_secs_f64(),
            got as f64 / total.as_secs_f64()
        );
    }
    if let Some(at) = args.outage_at {
        println!(
            "  with a {}s outage after {:.0}% of the results: waited {}s for the provider, {} jobs failed",
            args.outage_secs,
            at * 100.0,
            waited.as_secs(),
            summary.failed
        );
    }

    if args.sequential > 0 {
        let payments = sandbox.create_payments(&seed(args.sequential)).await?;
        let started = Instant::now();
        for p in &payments {
            client
                .create_refund(pb::CreateRefundRequest {
                    payment_id: p.id.clone(),
                    amount: Some(2_500),
                    currency: "USD".into(),
                    ..Default::default()
                })
                .await?;
        }
        let wall = started.elapsed();
        report["sequential"] = serde_json::json!({
            "jobs": args.sequential,
            "wall_s": wall.as_secs_f64(),
            "jobs_per_sec": f64::from(args.sequential) / wall.as_secs_f64(),
        });
        println!(
            "store={store_name} sequential loop (one CreateRefund at a time, as the seed's session.loop) N={} L={}ms wall={:.2}s jobs/s={:.1}",
            args.sequential,
            args.latency_ms,
            wall.as_secs_f64(),
            f64::from(args.sequential) / wall.as_secs_f64(),
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
