//! Building and running the service: store, providers, the gRPC and HTTP servers, the reconciler,
//! and a graceful drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::ServeSettings;
use crate::domain::ProviderName;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::providers::connections::{ConnectionAdapters, ProviderDefaults};
use crate::providers::sandbox::SandboxProvider;
use crate::providers::traffic::{BudgetShare, ControlledProvider};
use crate::sandbox::{FaultConfig, Sandbox, WebhookTarget, client::SandboxClient};
use crate::secret::Secret;
use crate::service::{
    Connections, RefundService, ReplicaHeartbeat, run_bulk_runner, run_reconciler,
    run_webhook_dispatcher,
};
use crate::store::{Store, StoreOptions};
use crate::{api, http};

/// How long shutdown waits for the last heartbeat (leaving the replicas) and the change relay.
const LEAVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// A built service with its listeners bound, ready to run.
pub struct Application {
    grpc: TcpListener,
    http: TcpListener,
    service: RefundService,
    sandbox: Option<Arc<Sandbox>>,
    shutdown_grace: Duration,
    drain_delay: Duration,
    webhook_tolerance: Duration,
    api_key_rate_limit: u32,
    tls: Option<crate::config::TlsSettings>,
    browsers: crate::config::BrowserSettings,
    metrics: Arc<Metrics>,
    bootstrap_key: Option<String>,
    heartbeat: ReplicaHeartbeat,
}

impl Application {
    /// Binds both ports, connects and migrates the store, sets up providers. Fails before
    /// serving anything if any of that fails, and before touching the database if a port is
    /// taken.
    pub async fn build(mut settings: ServeSettings) -> anyhow::Result<Self> {
        let (grpc, http) = bind(&settings).await?;
        // A service has its SQLite file to itself (SQLite is single-node).
        settings.store.exclusive = true;
        let store = if settings.skip_migrations {
            connect_migrated(&settings.database_url, &settings.store).await?
        } else {
            open_store(&settings.database_url, &settings.store).await?
        };
        let metrics = Arc::new(Metrics::new());
        let http_addr = http.local_addr().context("HTTP listener has no address")?;
        // Counted among the replicas of the database before any provider is called.
        let share = BudgetShare::alone();
        let heartbeat = ReplicaHeartbeat::join(store.clone(), share.clone(), metrics.clone())
            .await
            .context("cannot join the replicas of the database")?;
        let (providers, sandbox) = providers(&mut settings, &metrics, &share, http_addr)?;
        let connections = connections(&mut settings, &metrics, &share, &store).await?;
        let bootstrap_key = bootstrap_key(&settings, &store).await?;
        let service = RefundService::new(
            store,
            providers,
            connections,
            settings.refunds.clone(),
            metrics.clone(),
        );
        Ok(Self {
            grpc,
            http,
            service,
            sandbox,
            shutdown_grace: settings.shutdown_grace,
            drain_delay: settings.drain_delay,
            webhook_tolerance: settings.webhook_tolerance,
            api_key_rate_limit: settings.api_key_rate_limit,
            tls: settings.tls.clone(),
            browsers: settings.browsers.clone(),
            metrics,
            bootstrap_key,
            heartbeat,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    /// The admin key made at start-up on a fresh installation (see [`Application::build`]);
    /// the caller shows it once.
    pub fn bootstrap_key(&self) -> Option<&str> {
        self.bootstrap_key.as_deref()
    }

    /// The in-process sandbox, when the service runs one.
    pub fn sandbox(&self) -> Option<&Arc<Sandbox>> {
        self.sandbox.as_ref()
    }

    pub fn service(&self) -> &RefundService {
        &self.service
    }

    /// Serves until `shutdown` completes; then reports NOT_SERVING (grpc.health.v1 and
    /// `/readyz`) while still serving for the drain delay, so that load balancers stop sending
    /// calls here; then stops accepting, lets in-flight calls finish for up to the grace period,
    /// and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            grpc,
            http,
            service,
            sandbox,
            shutdown_grace,
            drain_delay,
            webhook_tolerance,
            api_key_rate_limit,
            tls,
            browsers,
            metrics,
            bootstrap_key: _,
            heartbeat,
        } = self;
        // The heartbeat outlives the drain: jobs still in flight call providers on this
        // replica's share.
        let (heartbeat_stop, heartbeat_stopped) = tokio::sync::oneshot::channel::<()>();
        let heartbeat_task = tokio::spawn(heartbeat.run(async {
            let _ = heartbeat_stopped.await;
        }));
        // So do the change notices: other replicas' watchers hear of this one's last results.
        let (relay_stop, relay_stopped) = tokio::sync::oneshot::channel::<()>();
        let relay_task = tokio::spawn({
            let service = service.clone();
            async move {
                service
                    .relay_changes(async {
                        let _ = relay_stopped.await;
                    })
                    .await;
            }
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                // Err means the sender is gone, which also means stop.
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        let api::Api {
            grpc: grpc_router,
            web: grpc_web,
            health,
        } = api::router(
            service.clone(),
            metrics.clone(),
            api_key_rate_limit,
            tls.as_ref(),
            &browsers.cors_allowed_origins,
        )
        .await
        .context("cannot build the gRPC services")?;
        let grpc_task = tokio::spawn(
            grpc_router.serve_with_incoming_shutdown(TcpListenerStream::new(grpc), stopped()),
        );
        let draining = Arc::new(AtomicBool::new(false));
        let http_app = http::router(
            service.clone(),
            sandbox,
            metrics,
            webhook_tolerance,
            draining.clone(),
        )
        .merge(grpc_web)
        .merge(http::console::router(browsers.console_dir));
        let http_stopped = stopped();
        let http_task = match &tls {
            Some(tls) => {
                let listener = http::tls::TlsListener::new(http, tls)?;
                tokio::spawn(async move {
                    axum::serve(listener, http_app)
                        .with_graceful_shutdown(http_stopped)
                        .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(http, http_app)
                    .with_graceful_shutdown(http_stopped)
                    .await
            }),
        };
        let reconciler_task = tokio::spawn(run_reconciler(service.clone(), stopped()));
        let webhooks_task = tokio::spawn(run_webhook_dispatcher(service.clone(), stopped()));
        let bulk_task = tokio::spawn(run_bulk_runner(service, stopped()));

        shutdown.await;
        health.draining().await;
        draining.store(true, Ordering::Relaxed);
        if !drain_delay.is_zero() {
            tracing::info!(delay = ?drain_delay, "shutting down: reporting NOT_SERVING while still serving");
            tokio::time::sleep(drain_delay).await;
        }
        tracing::info!(grace = ?shutdown_grace, "shutting down: draining in-flight calls");
        let _ = stop_tx.send(true);

        let drain = async {
            let grpc = grpc_task.await;
            let http = http_task.await;
            let reconciler = reconciler_task.await;
            let bulk = bulk_task.await;
            // An attempt in flight is bounded by the webhook timeout; one cut short by the grace
            // period is sent again (its lease ends), which at-least-once delivery allows.
            let webhooks = webhooks_task.await;
            (grpc, http, reconciler, bulk, webhooks)
        };
        match tokio::time::timeout(shutdown_grace, drain).await {
            Ok((grpc, http, reconciler, bulk, webhooks)) => {
                grpc.context("gRPC server task")?
                    .context("gRPC server failed")?;
                http.context("HTTP server task")?
                    .context("HTTP server failed")?;
                reconciler.context("reconciler task")?;
                bulk.context("bulk runner task")?;
                webhooks.context("webhook dispatcher task")?;
                tracing::info!("shut down cleanly");
            }
            Err(_) => tracing::warn!("grace period over; abandoning calls still in flight"),
        }
        // Leaving the replicas is one statement; a database that does not answer must not keep
        // the process from exiting (the others then count it out when its row goes stale).
        let _ = relay_stop.send(());
        let _ = heartbeat_stop.send(());
        let last_words = async {
            let _ = relay_task.await;
            let _ = heartbeat_task.await;
        };
        if tokio::time::timeout(LEAVE_WITHIN, last_words)
            .await
            .is_err()
        {
            tracing::warn!(within = ?LEAVE_WITHIN, "leaving the replicas took too long; exiting without");
        }
        Ok(())
    }
}

/// Both listeners, before anything else: a taken port fails before the database is touched.
async fn bind(settings: &ServeSettings) -> anyhow::Result<(TcpListener, TcpListener)> {
    let grpc = TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen for gRPC on {} (set another with --grpc-addr or REFUND_GRPC_ADDR)",
                settings.grpc_addr
            )
        })?;
    let http = TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {} (set another with --http-addr or REFUND_HTTP_ADDR)",
                settings.http_addr
            )
        })?;
    Ok((grpc, http))
}

/// The store at `database_url`, connected and migrated; errors name the URL without its
/// password. What `serve` and every command that writes to the database start with.
pub async fn open_store(database_url: &Secret, options: &StoreOptions) -> anyhow::Result<Store> {
    let store = Store::connect(database_url.expose(), options)
        .await
        .with_context(|| format!("cannot connect to the database {}", database_url.redacted()))?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(store)
}

/// The store at `database_url`, connected, when its schema is this build's: for a service
/// whose deployment migrates first (`--skip-migrations`), so that it never runs against a
/// schema it does not know.
async fn connect_migrated(database_url: &Secret, options: &StoreOptions) -> anyhow::Result<Store> {
    let store = Store::connect(database_url.expose(), options)
        .await
        .with_context(|| format!("cannot connect to the database {}", database_url.redacted()))?;
    let pending = store
        .pending_migrations()
        .await
        .context("cannot read which database migrations are applied")?;
    if let Some(first) = pending.first() {
        anyhow::bail!(
            "the database schema is {} migration(s) behind this build (the first is {first}), \
             and --skip-migrations leaves migrating to `refund-service migrate`: run it (the Helm \
             chart's migration job does) before starting the service",
            pending.len()
        );
    }
    Ok(store)
}

/// The sandbox (in-process, or the standalone one at `--sandbox-url`) as the default provider,
/// and every configured provider of the registry, each in traffic control. Sets the refunds'
/// provider budget to the longest of theirs. The in-process sandbox is returned too: it
/// announces settled refunds to this process at `http_addr`, signed with a secret made up here
/// unless one is configured.
fn providers(
    settings: &mut ServeSettings,
    metrics: &Arc<Metrics>,
    share: &Arc<BudgetShare>,
    http_addr: SocketAddr,
) -> anyhow::Result<(Providers, Option<Arc<Sandbox>>)> {
    let (sandbox_provider, sandbox) = match &settings.sandbox_url {
        Some(url) => {
            let client = SandboxClient::new(url, settings.sandbox_traffic.call_timeout)
                .with_context(|| format!("bad --sandbox-url {url}"))?;
            (SandboxProvider::Remote(client), None)
        }
        None => {
            let sandbox = Arc::new(Sandbox::new(FaultConfig::default()));
            (SandboxProvider::Local(sandbox.clone()), Some(sandbox))
        }
    };
    settings.refunds.provider_budget = settings.sandbox_traffic.budget();
    let mut providers = Providers::new(
        ProviderName::from_trusted("sandbox".to_owned()),
        controlled(
            "sandbox",
            Arc::new(sandbox_provider),
            &settings.sandbox_traffic,
            metrics,
            share,
        ),
    );
    for configured in &settings.providers {
        let spec = crate::providers::registry::spec(&configured.name).ok_or_else(|| {
            anyhow::anyhow!("no provider named {:?} in this build", configured.name)
        })?;
        let client = (spec.build)(configured)
            .map_err(|e| anyhow::anyhow!("bad --{}-api-base: {e}", spec.name))?;
        // The budget grows to cover this provider's retries.
        settings.refunds.provider_budget = settings
            .refunds
            .provider_budget
            .max(configured.traffic.budget());
        let name = ProviderName::from_trusted(spec.name.to_owned());
        providers = providers
            .with(
                name.clone(),
                controlled(spec.name, client, &configured.traffic, metrics, share),
            )
            .with_webhook_secrets(&name, configured.webhook_secrets.clone());
    }

    let mut sandbox_secrets = settings.sandbox_webhook_secrets.clone();
    if let Some(sandbox) = sandbox.as_ref().filter(|_| settings.tls.is_none()) {
        // (With TLS on, the in-process sandbox would have to trust our certificate and hold
        // a client certificate; it sends no webhooks then, and the reconciler settles.)
        if sandbox_secrets.is_empty() {
            sandbox_secrets.push(Secret::opaque(random_secret()));
        }
        let mut addr = http_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        sandbox.set_webhook_target(Some(WebhookTarget {
            url: format!("http://{addr}/webhooks/sandbox"),
            secret: sandbox_secrets[0].expose().to_owned(),
        }));
    }
    let providers = providers.with_webhook_secrets(
        &ProviderName::from_trusted("sandbox".to_owned()),
        sandbox_secrets,
    );
    Ok((providers, sandbox))
}

/// Accounts' connections: the vault from the key files, adapters with the platform's provider
/// settings; the provider budget grows to cover theirs. Connections stored without a key to open
/// them are reported now rather than at their first refund.
async fn connections(
    settings: &mut ServeSettings,
    metrics: &Arc<Metrics>,
    share: &Arc<BudgetShare>,
    store: &Store,
) -> anyhow::Result<Connections> {
    let vault = settings.connections.vault()?;
    // A configured provider's API base and pace are its connections' too, unless said otherwise.
    let mut defaults = settings.connections.provider_defaults.clone();
    for configured in &settings.providers {
        if !defaults.iter().any(|d| d.name == configured.name) {
            defaults.push(ProviderDefaults {
                name: configured.name.clone(),
                api_base: configured.api_base.clone(),
                traffic: configured.traffic.clone(),
            });
        }
    }
    let adapters = ConnectionAdapters::new(defaults, metrics.clone(), share.clone());
    settings.refunds.provider_budget = settings
        .refunds
        .provider_budget
        .max(adapters.longest_budget());
    if vault.is_none() {
        let stored = store
            .list_connections(None)
            .await
            .context("cannot read connections")?
            .len();
        if stored > 0 {
            tracing::error!(
                connections = stored,
                "connections are stored but no --secrets-key-file is set: refunds through them \
                 are refused until it is"
            );
        }
    }
    Ok(Connections::new(
        vault,
        adapters,
        settings.connections.platform_accounts.clone(),
    ))
}

/// A fresh installation serving on loopback gets an admin key, shown once, so it works without
/// set-up; on any other address an operator creates keys (`keys create`). Calls without a valid
/// key are refused either way.
async fn bootstrap_key(settings: &ServeSettings, store: &Store) -> anyhow::Result<Option<String>> {
    let supplied = settings.bootstrap_api_key.as_ref().map(Secret::expose);
    if supplied.is_some() || settings.grpc_addr.ip().is_loopback() {
        return crate::service::bootstrap_admin_key(store, supplied)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the first API key: {e}"));
    }
    if store.active_api_keys().await.unwrap_or(0) == 0 {
        tracing::warn!(
            "no API keys exist: every call is refused until one is made with \
             `refund-service keys create --account ACCOUNT --scopes ...`"
        );
    }
    Ok(None)
}

/// `client` wrapped in traffic control under `name`, its budget shared with the other replicas.
fn controlled(
    name: &str,
    client: Arc<dyn crate::providers::Provider>,
    traffic: &crate::providers::traffic::TrafficConfig,
    metrics: &Arc<Metrics>,
    share: &Arc<BudgetShare>,
) -> Arc<ControlledProvider> {
    Arc::new(
        ControlledProvider::new(name, client, traffic.clone())
            .with_metrics(metrics.clone())
            .with_share(share.clone()),
    )
}

/// 32 random alphanumerics.
fn random_secret() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
