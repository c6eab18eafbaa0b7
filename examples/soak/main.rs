//! The fault soak (run by `scripts/soak.sh`): the release binary under provider faults and
//! `kill -9`, then a check of our books against the provider's.
//!
//! Starts a standalone sandbox and N service replicas (SQLite: one; PostgreSQL: one database for
//! all), turns on the sandbox's faults, seeds payments, drives a random mix of refunds, batches,
//! cancellations and approvals for `--minutes` while killing a replica about every 30 s, then
//! turns faults off, waits until nothing is PENDING and every batch has finished, runs
//! `refund-service verify` (when the binary has it) and its own minimal check, checks that a
//! subscriber's webhook endpoint (answering 503 to a share of the webhooks throughout) got every
//! event, and prints one summary. Exit status 0 only with zero violations.
//!
//! The RNG is seeded from `--seed` (printed at start): the operation mix, amounts and fault dice
//! replay, but under concurrency and kills the interleavings do not, so a replay is not exact.

mod check;
mod client;
mod procs;
mod subscriber;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use refund_service::sandbox::NewPayments;
use refund_service::sandbox::client::SandboxClient;
use serde_json::{Value, json};
use tokio::sync::Mutex as AsyncMutex;

use crate::procs::{Replica, free_port, run_cli, wait_ready};
use crate::workload::{APPROVAL_THRESHOLD, Ctx, SeededPayment, lock};

/// The admin key the services are started with (requests are made with it).
const ADMIN_KEY: &str = "rsk_soak_admin_key_not_a_secret_0123456789";
/// The secret the sandbox signs its webhooks with.
const WEBHOOK_SECRET: &str = "whsec_soak_not_a_secret";
/// Fault fields another change adds to the sandbox; sent, and reported when not supported.
const NEW_FAULT_FIELDS: &[&str] = &[
    "error_after_rate",
    "reset_after_rate",
    "slow_create_rate",
    "slow_create_ms",
    "retry_after_rate",
    "retry_after_secs",
    "fail_after_pending_rate",
    "seed",
];

#[derive(Parser, Debug)]
#[command(about = "Fault soak of refund-service: faults, kills, then a money check")]
struct Args {
    /// Path of the refund-service binary (release build).
    #[arg(long)]
    bin: String,
    /// How long to drive traffic (fractions allowed, e.g. 0.5).
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    store: StoreKind,
    /// PostgreSQL admin URL; a fresh database is created through it.
    #[arg(
        long,
        env = "SOAK_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg_url: String,
    /// Service processes on one database (PostgreSQL only).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// RNG seed; random when absent (it is printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Most refunds to ask for (single requests plus batch jobs; retries not counted).
    #[arg(long, default_value_t = 20_000)]
    refunds: u32,
    /// Concurrent driver tasks.
    #[arg(long, default_value_t = 6)]
    workers: u64,
    /// Seconds between kills (jittered ±30%); 0 = never kill.
    #[arg(long, default_value_t = 30)]
    kill_every: u64,
    /// Longest wait, after the drive, for PENDING refunds and running batches to finish.
    #[arg(long, default_value_t = 120)]
    settle_timeout: u64,
    /// Where the logs and results go (default: a new directory under the system temp dir).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Sqlite,
    Postgres,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code: u8 = runtime.block_on(async {
        tokio::select! {
            result = run(args) => match result {
                Ok(0) => 0,
                Ok(_) => 1,
                Err(e) => {
                    eprintln!("soak: error: {e:#}");
                    2
                }
            },
            _ = interrupted() => {
                eprintln!("soak: interrupted; stopping the processes");
                130
            }
        }
    });
    // Dropping the runtime drops every task, and with them the process guards: nothing is left.
    runtime.shutdown_timeout(Duration::from_secs(5));
    ExitCode::from(code)
}

async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The whole run; returns the number of violations.
async fn run(args: Args) -> anyhow::Result<usize> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    anyhow::ensure!(
        args.replicas >= 1 && (args.replicas == 1 || args.store == StoreKind::Postgres),
        "--replicas above 1 needs --store postgres (SQLite is one process's file)"
    );
    anyhow::ensure!(args.minutes > 0.0, "--minutes must be positive");
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let store = match args.store {
        StoreKind::Sqlite => "sqlite",
        StoreKind::Postgres => "postgres",
    };
    let run_dir = match &args.run_dir {
        Some(d) => d.clone(),
        None => {
            std::env::temp_dir().join(format!("refund-soak-{store}-{seed}-{}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    println!(
        "soak: seed={seed} store={store} replicas={} minutes={} refunds<={} workers={} kill_every={}s run_dir={}",
        args.replicas,
        args.minutes,
        args.refunds,
        args.workers,
        args.kill_every,
        run_dir.display()
    );
    println!(
        "soak: replay with: scripts/soak.sh --seed {seed} --store {store} --replicas {} --minutes {} --refunds {} (same mix and fault dice; interleavings under concurrency and kills differ)",
        args.replicas, args.minutes, args.refunds
    );
    let http = reqwest::Client::new();

    // --- the database ---
    let (database_url, pg_db) = match args.store {
        StoreKind::Sqlite => (
            format!("sqlite://{}?mode=rwc", run_dir.join("soak.db").display()),
            None,
        ),
        StoreKind::Postgres => {
            let name = format!("refund_soak_{}", uuid::Uuid::new_v4().simple());
            let admin = sea_orm::Database::connect(&args.pg_url)
                .await
                .with_context(|| format!("cannot connect to {}", args.pg_url))?;
            sea_orm::ConnectionTrait::execute_unprepared(
                &admin,
                &format!("CREATE DATABASE {name}"),
            )
            .await?;
            admin.close().await.ok();
            let base = args
                .pg_url
                .rsplit_once('/')
                .context("the PostgreSQL URL ends in /DATABASE")?
                .0;
            (format!("{base}/{name}"), Some(name))
        }
    };
    println!("soak: database {database_url}");

    // --- the secrets key (webhook signing secrets are sealed with it) and a subscriber ---
    let key_file = run_dir.join("master.key");
    let key: [u8; 32] = StdRng::seed_from_u64(seed ^ 0x5ec2e7).random();
    std::fs::write(&key_file, hex::encode(key))?;
    let subscriber = subscriber::Subscriber::start(seed, 0.2).await?;

    // --- the sandbox, sending its webhooks to replica 0 ---
    let ports: Vec<(u16, u16)> = (0..args.replicas)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let sandbox_port = free_port()?;
    let sandbox_url = format!("http://127.0.0.1:{sandbox_port}/sandbox");
    let sandbox_args: Vec<String> = [
        "sandbox",
        "serve",
        "--listen",
        &format!("127.0.0.1:{sandbox_port}"),
        "--webhook-url",
        &format!("http://127.0.0.1:{}/webhooks/sandbox", ports[0].1),
        "--webhook-secret",
        WEBHOOK_SECRET,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let _sandbox =
        procs::spawn_sandbox(&args.bin, &sandbox_args, &run_dir, &http, &sandbox_url).await?;

    // --- the replicas ---
    let mut replicas = Vec::new();
    for (index, (grpc, http_port)) in ports.iter().copied().enumerate() {
        let args_of: Vec<String> = vec![
            "--log-format".into(),
            "json".into(),
            "serve".into(),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc}"),
            "--http-addr".into(),
            format!("127.0.0.1:{http_port}"),
            "--database-url".into(),
            database_url.clone(),
            "--db-max-connections".into(),
            "8".into(),
            "--sandbox-url".into(),
            sandbox_url.clone(),
            "--sandbox-webhook-secret".into(),
            WEBHOOK_SECRET.into(),
            "--bootstrap-api-key".into(),
            ADMIN_KEY.into(),
            "--api-key-rate-limit".into(),
            "0".into(),
            "--reconcile-delay".into(),
            "1s".into(),
            "--reconcile-max-delay".into(),
            "5s".into(),
            "--reconcile-interval".into(),
            "500ms".into(),
            "--provider-timeout".into(),
            "2s".into(),
            "--provider-breaker-open-for".into(),
            "2s".into(),
            "--bulk-lease".into(),
            "3s".into(),
            "--bulk-poll-interval".into(),
            "200ms".into(),
            "--bulk-max-jobs".into(),
            "1000".into(),
            "--shutdown-grace".into(),
            "1s".into(),
            "--secrets-key-file".into(),
            key_file.display().to_string(),
            // The subscriber is on loopback, over http.
            "--webhook-allow-private-targets".into(),
            "--webhook-allow-http".into(),
            "--webhook-retry-min-delay".into(),
            "200ms".into(),
            "--webhook-timeout".into(),
            "2s".into(),
        ];
        replicas.push(Replica {
            index,
            grpc_port: grpc,
            http_port,
            args: args_of,
            log: run_dir.join(format!("service-{index}.log")),
            proc: None,
            starts: 0,
            kills: 0,
            crashes: Vec::new(),
        });
    }
    // Replica 0 first: it migrates the database and makes the admin key.
    for (i, r) in replicas.iter_mut().enumerate() {
        r.start(&args.bin)?;
        if i == 0 {
            wait_ready(&http, &r.ready_url(), Duration::from_secs(60)).await?;
        }
    }
    for r in &replicas {
        wait_ready(&http, &r.ready_url(), Duration::from_secs(60)).await?;
    }

    // --- the approver key and the approval threshold ---
    let out = run_cli(
        &args.bin,
        &[
            "keys",
            "create",
            "--database-url",
            &database_url,
            "--account",
            "acct_default",
            "--scopes",
            "refunds:approve,refunds:read",
            "--name",
            "soak approver",
        ],
    )?;
    let approver_key = out
        .lines()
        .last()
        .context("no key printed")?
        .trim()
        .to_owned();
    run_cli(
        &args.bin,
        &[
            "accounts",
            "set-approval-threshold",
            "--database-url",
            &database_url,
            "--account",
            "acct_default",
            "--currency",
            "USD",
            "--amount",
            &APPROVAL_THRESHOLD.to_string(),
        ],
    )?;

    // --- payments: most of 100.00, some small, some whose refunds the provider rejects ---
    let sandbox = SandboxClient::new(&sandbox_url, Duration::from_secs(30))?;
    let n_payments = (args.refunds / 2).clamp(200, 50_000);
    let mut payments = Vec::new();
    for (count, amount, fail_refunds) in [
        (n_payments * 8 / 10, 10_000, false),
        (n_payments / 10, 2_500, false),
        (n_payments / 10, 10_000, true),
    ] {
        let made = sandbox
            .create_payments(&NewPayments {
                amount,
                currency: "USD".into(),
                id: None,
                count: Some(count.max(1)),
                status: None,
                fail_refunds,
            })
            .await?;
        payments.extend(made.into_iter().map(|p| SeededPayment { id: p.id, amount }));
    }
    let race_pool: Vec<SeededPayment> = {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pool = Vec::new();
        for _ in 0..(payments.len() / 5) {
            let i = rng.random_range(0..payments.len());
            pool.push(payments.swap_remove(i));
        }
        pool
    };
    let all_payments: Vec<SeededPayment> =
        payments.iter().chain(race_pool.iter()).cloned().collect();

    // --- faults ---
    let (faults, unsupported) = set_faults(&http, &sandbox_url, seed, false).await?;
    println!("soak: faults {faults}");
    if !unsupported.is_empty() {
        println!(
            "soak: the sandbox does not support these fault fields (not injected): {}",
            unsupported.join(", ")
        );
    }

    // --- drive ---
    let make = |key: &str| -> anyhow::Result<Vec<client::Client>> {
        replicas
            .iter()
            .map(|r| client::client(&r.grpc_url(), key))
            .collect()
    };
    let requester = make(ADMIN_KEY)?;
    subscriber
        .subscribe(&requester[0])
        .await
        .context("cannot create the subscriber's webhook endpoint")?;
    let approver = make(&approver_key)?;
    let drive = Duration::from_secs_f64(args.minutes * 60.0);
    let started = Instant::now();
    let ctx = Arc::new(Ctx::new(
        seed,
        requester.clone(),
        approver,
        payments,
        race_pool,
        i64::from(args.refunds),
        started + drive,
        started + drive + Duration::from_secs(60),
    ));
    let fleet = Arc::new(AsyncMutex::new(replicas));
    // Set when the workers are done (the drive's time is up, or its refunds are spent).
    let (drive_over, drive_over_rx) = tokio::sync::watch::channel(false);
    let chaos = tokio::spawn(chaos(
        Arc::clone(&fleet),
        args.bin.clone(),
        http.clone(),
        seed,
        args.kill_every,
        drive_over_rx,
        run_dir.join("driver.log"),
    ));
    let faults_task = tokio::spawn(fault_phases(
        http.clone(),
        sandbox_url.clone(),
        seed,
        started + drive,
    ));
    let progress = tokio::spawn(progress(Arc::clone(&ctx), started));
    let mut workers = Vec::new();
    for i in 0..args.workers {
        workers.push(tokio::spawn(workload::worker(Arc::clone(&ctx), i)));
    }
    let mut panics = 0;
    for w in workers {
        if w.await.is_err() {
            panics += 1;
        }
    }
    let driven = started.elapsed();
    let _ = drive_over.send(true);
    faults_task.abort();
    progress.abort();
    let kills = chaos.await.unwrap_or_default();

    // --- settle ---
    let _ = set_faults(&http, &sandbox_url, seed, true).await?;
    {
        // Every replica up for the drain.
        let mut fleet = fleet.lock().await;
        for r in fleet.iter_mut() {
            r.check_crash();
            if r.proc.is_none() {
                r.start(&args.bin)?;
            }
        }
        for r in fleet.iter() {
            wait_ready(&http, &r.ready_url(), Duration::from_secs(60)).await?;
        }
    }
    let bulk_ids = lock(&ctx.bulk_ids).clone();
    eprintln!(
        "soak: drive over after {:.0}s; faults off, waiting (at most {}s) for PENDING refunds and {} batches",
        driven.as_secs_f64(),
        args.settle_timeout,
        bulk_ids.len()
    );
    let drained = check::drain(
        &requester[0],
        &bulk_ids,
        Duration::from_secs(args.settle_timeout),
    )
    .await;
    let own = check::own_check(&requester[0], &sandbox, &all_payments).await;
    subscriber.heal();
    let webhooks = subscriber
        .wait_for_all(&requester[0], Duration::from_secs(args.settle_timeout))
        .await;
    let stats: Value = http
        .get(format!("{sandbox_url}/stats"))
        .send()
        .await?
        .json()
        .await?;

    // --- stop the services, then the checker ---
    let (crashes, starts) = {
        let mut fleet = fleet.lock().await;
        let mut crashes = Vec::new();
        let mut starts = Vec::new();
        for r in fleet.iter_mut() {
            r.check_crash();
            crashes.extend(r.crashes.iter().cloned());
            starts.push(format!("service-{}: {} starts", r.index, r.starts));
            r.proc = None;
        }
        (crashes, starts)
    };
    let verify = check::verify(
        &args.bin,
        &database_url,
        &sandbox_url,
        &run_dir.join("verify.json"),
    );

    // --- the summary ---
    let mut violations: Vec<String> = ctx.tally.violations();
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        "==================== soak summary ====================".into(),
    );
    line(
        &mut out,
        format!(
            "seed={seed} store={store} replicas={} minutes={} (drove {:.0}s) workers={} refunds_budget={} (used {})",
            args.replicas,
            args.minutes,
            driven.as_secs_f64(),
            args.workers,
            args.refunds,
            i64::from(args.refunds) - ctx.budget.load(Ordering::Relaxed).max(0)
        ),
    );
    line(
        &mut out,
        format!(
            "operations: {} (client retries {}, driver task panics {panics})",
            ctx.tally.total(),
            ctx.tally.retries.load(Ordering::Relaxed)
        ),
    );
    for (kind, outcomes) in ctx.tally.ops() {
        let n: u64 = outcomes.values().sum();
        let parts: Vec<String> = outcomes.iter().map(|(o, c)| format!("{o}={c}")).collect();
        line(
            &mut out,
            format!("  {kind:<32} {n:>6}  {}", parts.join("  ")),
        );
    }
    line(&mut out, format!("faults: {faults}"));
    if !unsupported.is_empty() {
        line(
            &mut out,
            format!(
                "  not supported by this sandbox: {}",
                unsupported.join(", ")
            ),
        );
    }
    line(&mut out, format!("sandbox stats: {}", compact(&stats)));
    line(
        &mut out,
        format!(
            "kills: {} ({}); {}",
            kills.len(),
            if kills.is_empty() {
                "none".to_owned()
            } else {
                kills.join(", ")
            },
            starts.join(", ")
        ),
    );
    if !crashes.is_empty() {
        line(
            &mut out,
            format!("unexpected exits: {}", crashes.join("; ")),
        );
        violations.extend(crashes.iter().map(|c| format!("process crashed: {c}")));
    }
    line(
        &mut out,
        format!(
            "settle: waited {:.0}s; refunds still PENDING: {}; batches still RUNNING: {}{}",
            drained.waited.as_secs_f64(),
            if drained.pending == usize::MAX {
                "unknown (ListRefunds failed)".to_owned()
            } else {
                drained.pending.to_string()
            },
            drained.running_batches.len(),
            if drained.running_batches.is_empty() {
                String::new()
            } else {
                format!(" ({})", drained.running_batches.join(", "))
            }
        ),
    );
    match &own {
        Ok(c) => {
            line(
                &mut out,
                format!(
                    "refunds by status: {:?}; provider ledger: {} refunds",
                    c.refunds_by_status, c.provider_refunds
                ),
            );
            line(
                &mut out,
                format!("own check: {} violation(s)", c.violations.len()),
            );
            violations.extend(c.violations.iter().cloned());
        }
        Err(e) => {
            line(&mut out, format!("own check: could not run: {e:#}"));
            violations.push(format!("own check could not run: {e:#}"));
        }
    }
    match &webhooks {
        Ok(w) => {
            line(
                &mut out,
                format!(
                    "webhooks: {} events, {} requests to the subscriber ({} answered 503 on purpose, {} with a bad signature); missing after {:.0}s: {}",
                    w.events,
                    w.requests,
                    w.refused,
                    w.bad_signatures,
                    w.waited.as_secs_f64(),
                    w.missing.len()
                ),
            );
            violations.extend(
                w.missing
                    .iter()
                    .map(|e| format!("webhook never delivered: {e}")),
            );
            if w.bad_signatures > 0 {
                violations.push(format!(
                    "webhook signatures refused by the subscriber: {}",
                    w.bad_signatures
                ));
            }
        }
        Err(e) => {
            line(&mut out, format!("webhooks: could not check: {e:#}"));
            violations.push(format!("webhooks could not be checked: {e:#}"));
        }
    }
    match verify {
        Ok(check::Verify::Missing) => line(
            &mut out,
            "refund-service verify: not in this binary (unrecognized subcommand); only the driver's own check ran".into(),
        ),
        Ok(check::Verify::Ran { code, summary }) => {
            line(
                &mut out,
                format!(
                    "refund-service verify --settled --json: exit {code} ({}); output in {}",
                    match code {
                        0 => "no violation",
                        1 => "violations",
                        2 => "usage or connection error",
                        _ => "unexpected status",
                    },
                    run_dir.join("verify.json").display()
                ),
            );
            line(&mut out, format!("  {}", summary.replace('\n', "\n  ")));
            if code != 0 {
                violations.push(format!("refund-service verify exited {code}"));
            }
        }
        Err(e) => line(&mut out, format!("refund-service verify: could not run: {e:#}")),
    }
    line(&mut out, format!("violations: {}", violations.len()));
    // Grouped by kind (the text before the first id), a few examples each; all in violations.txt.
    let mut kinds: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for v in &violations {
        kinds.entry(violation_kind(v)).or_default().push(v);
    }
    for (kind, list) in &kinds {
        line(&mut out, format!("  {} x {kind}", list.len()));
        for v in list.iter().take(3) {
            line(&mut out, format!("    - {v}"));
        }
    }
    if !violations.is_empty() {
        std::fs::write(run_dir.join("violations.txt"), violations.join("\n") + "\n").ok();
        line(
            &mut out,
            format!(
                "  (all of them in {})",
                run_dir.join("violations.txt").display()
            ),
        );
    }
    line(&mut out, format!("logs: {}", run_dir.display()));
    line(
        &mut out,
        format!(
            "result: {}",
            if violations.is_empty() {
                "PASS"
            } else {
                "FAIL"
            }
        ),
    );
    print!("{out}");
    std::fs::write(run_dir.join("summary.txt"), &out).ok();

    // A passing run's PostgreSQL database is dropped; a failing one is kept for inspection.
    if let Some(name) = pg_db {
        if violations.is_empty() {
            if let Ok(admin) = sea_orm::Database::connect(&args.pg_url).await {
                let _ = sea_orm::ConnectionTrait::execute_unprepared(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .await;
                admin.close().await.ok();
            }
        } else {
            println!("soak: database {name} kept for inspection");
        }
    }
    Ok(violations.len())
}

/// `PUT /faults`: moderate rates of every fault (or none with `off`). A sandbox that refuses the
/// new fields gets the old ones only; fields missing from its answer were not supported.
async fn set_faults(
    http: &reqwest::Client,
    sandbox_url: &str,
    seed: u64,
    off: bool,
) -> anyhow::Result<(String, Vec<String>)> {
    let body = if off { json!({}) } else { fault_body(seed, 0) };
    let url = format!("{sandbox_url}/faults");
    let answer = http.put(&url).json(&body).send().await?;
    if answer.status().is_success() {
        let applied: Value = answer.json().await?;
        let unsupported = NEW_FAULT_FIELDS
            .iter()
            .filter(|f| body.get(**f).is_some() && applied.get(**f).is_none())
            .map(|f| (*f).to_owned())
            .collect();
        return Ok((compact(&applied), unsupported));
    }
    let refusal = answer.text().await.unwrap_or_default();
    let mut old = body.clone();
    if let Some(map) = old.as_object_mut() {
        for f in NEW_FAULT_FIELDS {
            map.remove(*f);
        }
    }
    eprintln!(
        "soak: the sandbox refused the new fault fields ({refusal}); sending the old ones only"
    );
    let answer = http.put(&url).json(&old).send().await?.error_for_status()?;
    let applied: Value = answer.json().await?;
    Ok((
        compact(&applied),
        NEW_FAULT_FIELDS.iter().map(|f| (*f).to_owned()).collect(),
    ))
}

fn fault_body(seed: u64, phase: u32) -> Value {
    json!({
        "latency_ms": 5,
        "error_rate": 0.03,
        "rate_limit_per_sec": 150,
        "timeout_rate": 0.03,
        "hang_ms": 3_000,
        // Every other phase, refunds stay pending a while and settle by webhook or look-up.
        "settle_delay_ms": if phase.is_multiple_of(2) { 800 } else { 0 },
        "error_after_rate": 0.03,
        "reset_after_rate": 0.02,
        "slow_create_rate": 0.03,
        "slow_create_ms": 1_500,
        "retry_after_rate": 0.03,
        "retry_after_secs": 1,
        "fail_after_pending_rate": 0.03,
        "seed": seed,
    })
}

/// Alternates the settle delay every 15 s, so some refunds settle at once and others by webhook.
async fn fault_phases(http: reqwest::Client, sandbox_url: String, seed: u64, until: Instant) {
    let mut phase = 0;
    while Instant::now() + Duration::from_secs(15) < until {
        tokio::time::sleep(Duration::from_secs(15)).await;
        phase += 1;
        let mut body = fault_body(seed, phase);
        // The dice keep rolling rather than restarting from the same seed.
        body["seed"] = json!(seed.wrapping_add(u64::from(phase)));
        let _ = http
            .put(format!("{sandbox_url}/faults"))
            .json(&body)
            .send()
            .await;
    }
}

/// `kill -9` of one replica (of N) about every `every` seconds, restarted a moment later; also
/// restarts a replica that exited by itself, until `drive_over`. Returns the kills, as
/// "service-I at Ts".
async fn chaos(
    fleet: Arc<AsyncMutex<Vec<Replica>>>,
    bin: String,
    http: reqwest::Client,
    seed: u64,
    every: u64,
    drive_over: tokio::sync::watch::Receiver<bool>,
    log: PathBuf,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
    let started = Instant::now();
    let mut kills = Vec::new();
    let mut next_kill = (every > 0)
        .then(|| started + Duration::from_secs_f64(every as f64 * rng.random_range(0.7..1.3)));
    // Until the workers are done: a drive that spends its refunds early ends early.
    while !*drive_over.borrow() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut fleet = fleet.lock().await;
        for r in fleet.iter_mut() {
            if r.check_crash() {
                let msg = format!(
                    "t={:.1}s {}; restarting it",
                    started.elapsed().as_secs_f64(),
                    r.crashes.last().cloned().unwrap_or_default()
                );
                eprintln!("soak: {msg}");
                procs::append(&log, &msg);
                if let Err(e) = r.start(&bin) {
                    procs::append(&log, &format!("restart failed: {e:#}"));
                }
            }
        }
        if let Some(at) = next_kill
            && Instant::now() >= at
        {
            let i = rng.random_range(0..fleet.len());
            let pause = Duration::from_millis(rng.random_range(300..=1_500));
            let t = started.elapsed().as_secs_f64();
            let r = &mut fleet[i];
            r.kill();
            let msg = format!("t={t:.1}s kill -9 service-{i}; restart in {pause:?}");
            eprintln!("soak: {msg}");
            procs::append(&log, &msg);
            kills.push(format!("service-{i} at {t:.0}s"));
            tokio::time::sleep(pause).await;
            if let Err(e) = r.start(&bin) {
                procs::append(&log, &format!("restart failed: {e:#}"));
            }
            let ready = r.ready_url();
            drop(fleet);
            if let Err(e) = wait_ready(&http, &ready, Duration::from_secs(30)).await {
                procs::append(&log, &format!("service-{i} not ready after restart: {e:#}"));
            }
            next_kill = Some(
                Instant::now() + Duration::from_secs_f64(every as f64 * rng.random_range(0.7..1.3)),
            );
        }
    }
    kills
}

/// A line on stderr every 10 s.
async fn progress(ctx: Arc<Ctx>, started: Instant) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let by_kind: BTreeMap<&str, u64> = ctx
            .tally
            .ops()
            .into_iter()
            .map(|(k, v)| (k, v.values().sum()))
            .collect();
        eprintln!(
            "soak: t={:.0}s operations={} retries={} {:?}",
            started.elapsed().as_secs_f64(),
            ctx.tally.total(),
            ctx.tally.retries.load(Ordering::Relaxed),
            by_kind
        );
    }
}

/// A violation's kind: its words, with ids, keys and numbers left out.
fn violation_kind(v: &str) -> String {
    v.split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `{"a":1,"b":2}` as `a=1 b=2`.
fn compact(v: &Value) -> String {
    match v.as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        None => v.to_string(),
    }
}
