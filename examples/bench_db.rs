//! The database ceiling (run by `scripts/bench.sh`; not a test).
//!
//! Drives the store's public API in a tight loop, with no gRPC, no provider and no service in
//! between, making the same store calls as the service does, so that the service's throughput can
//! be stated as a share of what the database allows for the same work:
//!
//! - `create`: what one CreateRefund with an idempotency key costs the store — the API key's
//!   look-up (`principal_for`, the auth layer), `find_idempotent`, `begin_refund` (the refund,
//!   the reservation, its audit row and event, one transaction) and `settle` (SUCCEEDED, with its
//!   audit row and event); `--workers` at once, for `--seconds`, each on a payment of its own.
//! - `hot`: the same on one payment for every worker (the row every reservation updates).
//! - `bulk`: what a batch costs it — `create_bulk` of `--jobs` jobs, then the runner's loop:
//!   `claim_items` in chunks of a quarter of `--concurrency`, per job `begin_refund` and `settle`
//!   (a bulk job does not read its key first), results by `complete_items` in groups of what has
//!   finished, and `finish_bulk_if_done`. Reported as jobs/s from the batch's creation to its
//!   end (creation included, as the service's figure includes it).
//!
//! - `once`: one CreateRefund's store calls, between two marker statements
//!   (`SELECT 'bench_db: capture start'`, `… end`) sent on a connection of their own, so that a
//!   server logging its statements (`log_statement = 'all'`) shows exactly the statements of one
//!   CreateRefund between them; `scripts/bench/bench.py` turns them into a pgbench script.
//!
//! Prints one JSON object per mode on stdout. `--store` is `sqlite` (a file in a temporary
//! directory) or a PostgreSQL admin URL (a fresh database is made through it, and dropped);
//! `--database-url` names a database to use as it is instead (neither made nor dropped).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

#[path = "common/scratch_db.rs"]
mod scratch_db;
use clap::Parser;
use refund_service::domain::{
    AccountId, Amount, Currency, JobOutcome, NewBulk, NewRefund, PaymentRef, ProviderName,
    RefundId, RefundReason, RefundStatus, Route, Scope, Timestamp, token_hash,
};
use refund_service::store::{
    BeginOutcome, BeginRefund, CreateBulkOutcome, Settlement, Store, StoreOptions,
};
use scratch_db::ScratchDb;
use serde_json::json;
use tokio::task::JoinSet;

#[derive(Parser, Debug)]
struct Args {
    /// `sqlite` or a PostgreSQL admin URL (a fresh database is created through it).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Use this database as it is (migrated if needed), instead of one made for the run.
    #[arg(long)]
    database_url: Option<String>,
    /// Comma-separated: create, hot, bulk.
    #[arg(long, default_value = "create,hot,bulk")]
    modes: String,
    /// How long each of `create` and `hot` runs.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent callers in `create` and `hot` (the service's pool is 16 by default).
    #[arg(long, default_value_t = 16)]
    workers: u32,
    /// PostgreSQL pool size (SQLite always has one connection), as the service's
    /// `--db-max-connections`.
    #[arg(long, default_value_t = 16)]
    db_connections: u32,
    /// Jobs of the `bulk` batch.
    #[arg(long, default_value_t = 10_000)]
    jobs: u32,
    /// Jobs in flight in `bulk`, as a batch's `max_concurrency`.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
}

/// The account and key every call runs as, as the service's bootstrap key.
const ACCOUNT: &str = "acct_default";

struct Ctx {
    store: Store,
    account: AccountId,
    token_hash: String,
    provider: ProviderName,
}

fn request(payment: &str, amount: i64, key: Option<String>) -> anyhow::Result<NewRefund> {
    Ok(NewRefund {
        payment: PaymentRef::from_trusted(payment.to_owned()),
        provider: ProviderName::from_trusted("sandbox".to_owned()),
        amount: Some(Amount::new(amount)?),
        currency: Currency::parse("USD")?,
        reason: RefundReason::Unspecified,
        reason_detail: String::new(),
        metadata: Default::default(),
        idempotency_key: key.map(refund_service::domain::IdempotencyKey::from_trusted),
    })
}

/// `begin_refund` then `settle` to SUCCEEDED, as the service does around its provider call.
/// Returns whether a refund was made (false: over-refund and the like).
async fn begin_and_settle(
    ctx: &Ctx,
    request: &NewRefund,
    captured: i64,
    source: &'static str,
) -> anyhow::Result<Option<refund_service::domain::Refund>> {
    let fingerprint = request.fingerprint();
    let now = Timestamp::now();
    let outcome = ctx
        .store
        .begin_refund(BeginRefund {
            id: RefundId::generate(),
            account: &ctx.account,
            request,
            fingerprint: &fingerprint,
            captured,
            provider_remaining: captured,
            now,
            lease_until: now.saturating_add(Duration::from_secs(65)),
            idempotency_expires_at: now.saturating_add(Duration::from_secs(86_400)),
            source,
            created_by: None,
            request_id: None,
            route: &Route::Platform,
        })
        .await?;
    let refund = match outcome {
        BeginOutcome::Created(refund) => refund,
        BeginOutcome::OverRefund { .. } | BeginOutcome::AlreadyRefunded => return Ok(None),
        other => anyhow::bail!("unexpected begin_refund outcome {other:?}"),
    };
    let settled = ctx
        .store
        .settle(
            &refund.id,
            Settlement {
                from: RefundStatus::Pending,
                to: RefundStatus::Succeeded,
                provider_refund_id: Some(format!("re_{}", uuid::Uuid::new_v4().simple())),
                failure: None,
                source,
                approved_by: None,
                lease_until: None,
                actor: None,
                request_id: None,
            },
        )
        .await?;
    Ok(settled)
}

/// One CreateRefund's store calls, with an idempotency key.
async fn create_once(ctx: &Ctx, payment: &str, amount: i64, captured: i64) -> anyhow::Result<()> {
    ctx.store
        .principal_for(&ctx.token_hash)
        .await?
        .context("the bench key is unknown")?;
    let key = refund_service::domain::IdempotencyKey::from_trusted(format!(
        "k_{}",
        uuid::Uuid::new_v4().simple()
    ));
    if ctx
        .store
        .find_idempotent(&ctx.account, &key, Timestamp::now())
        .await?
        .is_some()
    {
        anyhow::bail!("a fresh key was found");
    }
    let request = request(payment, amount, Some(key.as_str().to_owned()))?;
    begin_and_settle(ctx, &request, captured, "api").await?;
    Ok(())
}

/// `workers` callers for `seconds`; `hot`: all on one payment.
async fn create_loop(ctx: Arc<Ctx>, args: &Args, hot: bool) -> anyhow::Result<serde_json::Value> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let run = format!("{}", uuid::Uuid::new_v4().simple());
    let mut latencies: Vec<Duration> = Vec::new();
    for w in 0..args.workers {
        let (ctx, stop, done, errors) = (ctx.clone(), stop.clone(), done.clone(), errors.clone());
        let run = run.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Distinct: a payment per call, as the service's load test does. Hot: one
                // payment with room for every refund.
                let (payment, captured) = if hot {
                    (format!("ch_hot_{run}"), 1_000_000_000_000)
                } else {
                    (format!("ch_{run}_{w}_{i}"), 10_000)
                };
                let t = Instant::now();
                match create_once(&ctx, &payment, 100, captured).await {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed());
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("bench_db: {e:#}");
                        }
                    }
                }
                i += 1;
            }
            lat
        });
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let counted = done.load(Ordering::Relaxed);
    let wall = started.elapsed().as_secs_f64();
    while let Some(lat) = tasks.join_next().await {
        latencies.extend(lat?);
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(json!({
        "mode": if hot { "hot" } else { "create" },
        "workers": args.workers,
        "seconds": wall,
        "ops": counted,
        "ops_per_sec": counted as f64 / wall,
        "errors": errors.load(Ordering::Relaxed),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }))
}

/// One CreateRefund's store calls between two marker statements (on a connection of their own).
async fn once(ctx: &Ctx, url: &str) -> anyhow::Result<serde_json::Value> {
    let marker = sea_orm::Database::connect(url).await?;
    let payment = format!("ch_{}", uuid::Uuid::new_v4().simple());
    sea_orm::ConnectionTrait::execute_unprepared(&marker, "SELECT 'bench_db: capture start'")
        .await?;
    create_once(ctx, &payment, 100, 10_000).await?;
    sea_orm::ConnectionTrait::execute_unprepared(&marker, "SELECT 'bench_db: capture end'").await?;
    marker.close().await?;
    Ok(json!({ "mode": "once", "payment": payment }))
}

/// A batch of `jobs` run the way the bulk runner runs it, with no provider.
async fn bulk(ctx: Arc<Ctx>, args: &Args) -> anyhow::Result<serde_json::Value> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let jobs = (0..args.jobs)
        .map(|i| request(&format!("ch_b{run}_{i}"), 2_500, None).map(Ok))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let new = NewBulk {
        jobs,
        abort_on_error: false,
        max_concurrency: args.concurrency,
        idempotency_key: None,
        metadata: Default::default(),
        created_by: None,
    };
    let started = Instant::now();
    let bulk = match ctx
        .store
        .create_bulk(&ctx.account, &new, &ctx.provider, Timestamp::now(), None)
        .await?
    {
        CreateBulkOutcome::Created(b) => b,
        _ => anyhow::bail!("the batch was not created"),
    };
    drop(new);
    let created = started.elapsed();
    let owner = format!("bench_{run}");
    let lease = Duration::from_secs(30);
    let concurrency = args.concurrency.max(1);
    let refill = (concurrency / 4).max(1);
    let mut in_flight: JoinSet<anyhow::Result<(u32, JobOutcome)>> = JoinSet::new();
    let mut recorded = 0u64;
    let mut claims = 0u64;
    let mut completions = 0u64;
    let mut exhausted = false;
    loop {
        let room = concurrency - in_flight.len() as u32;
        if !exhausted && (room >= refill || (room > 0 && in_flight.is_empty())) {
            let now = Timestamp::now();
            let claimed = ctx
                .store
                .claim_items(&bulk.id, &owner, room, now, now.saturating_add(lease))
                .await?;
            claims += 1;
            exhausted = claimed.is_empty();
            for item in claimed {
                let ctx = ctx.clone();
                in_flight.spawn(async move {
                    let refund = begin_and_settle(&ctx, &item.request, 10_000, "bulk")
                        .await?
                        .context("a bulk job's refund was refused")?;
                    Ok((item.index, JobOutcome::of_refund(&refund)))
                });
            }
        }
        let Some(first) = in_flight.join_next().await else {
            if exhausted {
                break;
            }
            continue;
        };
        let mut finished = vec![first??];
        while let Some(next) = in_flight.try_join_next() {
            finished.push(next??);
        }
        recorded += ctx
            .store
            .complete_items(&bulk.id, &owner, &finished)
            .await?
            .len() as u64;
        completions += 1;
    }
    anyhow::ensure!(
        ctx.store.finish_bulk_if_done(&bulk.id).await?,
        "the batch did not finish"
    );
    let wall = started.elapsed().as_secs_f64();
    anyhow::ensure!(recorded == u64::from(args.jobs), "{recorded} jobs recorded");
    Ok(json!({
        "mode": "bulk",
        "jobs": args.jobs,
        "concurrency": concurrency,
        "seconds": wall,
        "create_seconds": created.as_secs_f64(),
        "jobs_per_sec": f64::from(args.jobs) / wall,
        "claims": claims,
        "completions": completions,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    if let Some(url) = &args.database_url {
        let name = if url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        };
        return run(&args, url, name).await;
    }
    if args.store == "sqlite" {
        let url = format!(
            "sqlite://{}?mode=rwc",
            work.path().join("ceiling.db").display()
        );
        return run(&args, &url, "sqlite").await;
    }
    let name = format!("refund_bench_db_{}", uuid::Uuid::new_v4().simple());
    let db = ScratchDb::create(&args.store, name).await?;
    let result = run(&args, &db.url, "postgres").await;
    db.drop_now().await?;
    result
}

async fn run(args: &Args, url: &str, store_name: &str) -> anyhow::Result<()> {
    let store = Store::connect(
        url,
        &StoreOptions {
            max_connections: args.db_connections,
            ..StoreOptions::default()
        },
    )
    .await?;
    store.migrate().await?;
    let account = AccountId::from_trusted(ACCOUNT.to_owned());
    let (_, token) = refund_service::service::create_api_key(
        &store,
        account.clone(),
        "bench".into(),
        BTreeSet::from([Scope::Admin]),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ctx = Arc::new(Ctx {
        store,
        account,
        token_hash: token_hash(&token),
        provider: ProviderName::from_trusted("sandbox".to_owned()),
    });
    for mode in args.modes.split(',').map(str::trim) {
        let mut out = match mode {
            "create" => create_loop(ctx.clone(), args, false).await?,
            "hot" => create_loop(ctx.clone(), args, true).await?,
            "bulk" => bulk(ctx.clone(), args).await?,
            "once" => once(&ctx, url).await?,
            other => anyhow::bail!("unknown mode {other:?} (create, hot, bulk, once)"),
        };
        out["store"] = json!(store_name);
        println!("{out}");
    }
    Ok(())
}
