//! The command line: `serve`, `migrate`, `bulk`, `verify`, `keys`, `accounts`, and the sandbox's
//! `serve`, `seed` and `ledger`.
//! Every setting has a flag and an environment variable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod connections;
mod health;
mod providers;
mod webhooks;

use crate::app::{Application, shutdown_signal};
use crate::config::{DEFAULT_DATABASE_URL, ServeSettings};
use crate::domain::RetryPolicy;
use crate::providers::traffic::TrafficConfig;
use crate::sandbox::{self, FaultConfig, Sandbox, client::SandboxClient};
use crate::secret::Secret;
use crate::service::{BulkConfig, RefundsConfig, WebhooksConfig};
use crate::store::{Store, StoreOptions};
use crate::telemetry::{self, LogFormat, TelemetryConfig};
use crate::webhooks_out::target::EndpointPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "refund-service",
    version,
    about = "Refunds payments across payment providers, never twice and never beyond what was captured"
)]
pub struct Cli {
    /// Log format: `pretty` for people, `json` for log pipelines.
    #[arg(long, env = "REFUND_LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Pretty, global = true)]
    pub log_format: LogFormatArg,

    /// More logs on stderr: -v info, -vv debug. Servers log info without it, other commands
    /// only warnings and errors. RUST_LOG, when set, decides instead.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: gRPC and HTTP servers, reconciler.
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// The built-in sandbox payment provider.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// API keys: create (the token is printed once, on the last line), list, revoke.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Per-account settings.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Accounts' own provider credentials: create, list, rotate, delete, and rekey (reseal all
    /// under a new master key). Credentials are read from files and never printed.
    #[command(subcommand)]
    Connections(connections::ConnectionsCommand),
    /// The account's webhook endpoints (create, list, update, delete, rotate-secret) and their
    /// deliveries (deliveries, retry, replay), over gRPC with a webhooks:manage key.
    Webhooks(webhooks::WebhooksArgs),
    /// Refund every row of a CSV file through BulkRefund.
    ///
    /// Shows progress, writes the rows that did not succeed to a dead-letter file, and prints a
    /// summary. Exit status: 0 all succeeded, 1 some did not, 2 usage, file, connection or
    /// server error, 130 interrupted.
    Bulk(crate::bulk_cli::BulkArgs),
    /// Ask a running service's grpc.health.v1 whether it is SERVING (exit 0) or not (exit 1):
    /// for probes and `helm test`.
    Health(health::HealthArgs),
    /// Check the invariants: our database against the sandbox provider's own ledger.
    ///
    /// Reads only (no migrations). Prints a summary, or a JSON report with --json. Exit status:
    /// 0 no violation, 1 violations, 2 usage or connection errors.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub url: SandboxUrlArg,
    /// Faults have stopped and refunds have had time to settle: a refund still PENDING here
    /// while the provider's is final (or absent) is a violation, not a warning.
    #[arg(long)]
    pub settled: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (the file is created if missing; the default is one in the working
    /// directory) or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_default_value = false)]
    pub database_url: String,

    /// PostgreSQL connection pool size (SQLite always uses one connection).
    #[arg(long, env = "REFUND_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the gRPC server.
    #[arg(long, env = "REFUND_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server (probes, the embedded sandbox under /sandbox).
    #[arg(long, env = "REFUND_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Use a standalone sandbox (`refund-service sandbox serve`) at this URL, e.g.
    /// http://127.0.0.1:9090/sandbox, instead of the in-process one.
    #[arg(long, env = "REFUND_SANDBOX_URL")]
    pub sandbox_url: Option<String>,

    /// Longest wait for one provider call; past it the outcome is unknown: the refund is looked
    /// up at the provider before anything is sent again.
    #[arg(long, env = "REFUND_PROVIDER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub provider_timeout: Duration,

    /// Our own limit on calls per second to the sandbox provider, for reads and for writes
    /// separately; 0 = unlimited.
    #[arg(long, env = "REFUND_SANDBOX_RATE_LIMIT", default_value_t = 0)]
    pub sandbox_rate_limit: u32,

    /// Secrets that sign the sandbox's webhooks, comma-separated. With the in-process sandbox and
    /// no secret, one is made up at start-up and the sandbox sends its webhooks to this process.
    #[arg(
        long,
        env = "REFUND_SANDBOX_WEBHOOK_SECRET",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub sandbox_webhook_secret: Vec<String>,

    /// Largest accepted age (or clock skew) of a webhook signature's timestamp.
    #[arg(long, env = "REFUND_WEBHOOK_TOLERANCE", default_value = "300s", value_parser = humantime::parse_duration)]
    pub webhook_tolerance: Duration,

    /// How much longer a refund's lease lasts than the provider work it protects (room for clock
    /// skew between replicas); a holder stops its provider call this long before its lease ends.
    #[arg(long, env = "REFUND_LEASE_MARGIN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_margin: Duration,

    /// How often a WatchRefund stream re-reads its refund to see changes made by other replicas.
    #[arg(long, env = "REFUND_WATCH_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub watch_poll_interval: Duration,

    #[command(flatten)]
    pub providers: providers::ProvidersArgs,

    /// Provider calls in flight at once, per provider.
    #[arg(long, env = "REFUND_PROVIDER_CONCURRENCY", default_value_t = 64)]
    pub provider_concurrency: usize,

    /// Attempts per provider operation (retries on 429, 5xx and connection errors), first included.
    #[arg(long, env = "REFUND_PROVIDER_MAX_ATTEMPTS", default_value_t = 4)]
    pub provider_max_attempts: u32,

    /// First retry delay; it doubles per retry, with jitter.
    #[arg(long, env = "REFUND_PROVIDER_BACKOFF", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub provider_backoff: Duration,

    /// Longest retry delay. A provider asking (Retry-After) for more is retried later by the
    /// reconciler instead.
    #[arg(long, env = "REFUND_PROVIDER_MAX_BACKOFF", default_value = "5s", value_parser = humantime::parse_duration)]
    pub provider_max_backoff: Duration,

    /// Consecutive failures (unavailable, timeout) that open a provider's circuit; 0 = never.
    #[arg(long, env = "REFUND_PROVIDER_BREAKER_THRESHOLD", default_value_t = 5)]
    pub provider_breaker_threshold: u32,

    /// How long an open circuit fails calls fast before one probe goes through.
    #[arg(long, env = "REFUND_PROVIDER_BREAKER_OPEN_FOR", default_value = "30s", value_parser = humantime::parse_duration)]
    pub provider_breaker_open_for: Duration,

    /// How long idempotency keys are remembered (at least 24h is recommended).
    #[arg(long, env = "REFUND_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// Delay before the first provider look-up of a refund left PENDING; later ones double.
    #[arg(long, env = "REFUND_RECONCILE_DELAY", default_value = "60s", value_parser = humantime::parse_duration)]
    pub reconcile_delay: Duration,

    /// Longest gap between two look-ups of a PENDING refund.
    #[arg(long, env = "REFUND_RECONCILE_MAX_DELAY", default_value = "1h", value_parser = humantime::parse_duration)]
    pub reconcile_max_delay: Duration,

    /// How often the reconciler looks for due PENDING refunds.
    #[arg(long, env = "REFUND_RECONCILE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,

    /// Provider calls after which a refund the provider never received is marked FAILED.
    #[arg(long, env = "REFUND_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: i32,

    /// Age past which a PENDING refund of a provider that settles only by webhook (Adyen) counts
    /// in refund_webhook_only_pending_overdue and is logged: its notification may be lost.
    #[arg(long, env = "REFUND_WEBHOOK_ONLY_PENDING_ALERT", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_only_pending_alert: Duration,

    /// How long events are kept for ListEvents, WatchEvents and webhook replays; older ones are
    /// pruned, and so are finished webhook deliveries.
    #[arg(long, env = "REFUND_EVENT_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub event_retention: Duration,

    /// Let webhook endpoints be loopback, private, link-local or other non-public addresses
    /// (and `localhost`): for tests and single-machine installs. Off, such URLs are refused.
    #[arg(long, env = "REFUND_WEBHOOK_ALLOW_PRIVATE_TARGETS")]
    pub webhook_allow_private_targets: bool,

    /// Let webhook endpoints use plain http. Off, https is required.
    #[arg(long, env = "REFUND_WEBHOOK_ALLOW_HTTP")]
    pub webhook_allow_http: bool,

    /// Longest wait for a webhook endpoint's answer.
    #[arg(long, env = "REFUND_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// How long a failing webhook delivery is retried (exponential back-off with jitter), and
    /// how long an endpoint may fail every attempt before it is disabled.
    #[arg(long, env = "REFUND_WEBHOOK_RETRY_WINDOW", default_value = "3d", value_parser = humantime::parse_duration)]
    pub webhook_retry_window: Duration,

    /// The first retry delay of a failing webhook delivery; it doubles on each retry, to at most
    /// 6h.
    #[arg(long, env = "REFUND_WEBHOOK_RETRY_MIN_DELAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub webhook_retry_min_delay: Duration,

    /// Most jobs one BulkRefund request may carry (the gRPC message limit grows with it).
    #[arg(long, env = "REFUND_BULK_MAX_JOBS", default_value_t = 10_000)]
    pub bulk_max_jobs: u32,

    /// Jobs in flight per batch when a request does not say.
    #[arg(long, env = "REFUND_BULK_DEFAULT_CONCURRENCY", default_value_t = 32)]
    pub bulk_default_concurrency: u32,

    /// Upper bound of a batch's `max_concurrency`.
    #[arg(long, env = "REFUND_BULK_MAX_CONCURRENCY", default_value_t = 256)]
    pub bulk_max_concurrency: u32,

    /// How long a bulk job stays with a worker that stops heart-beating (e.g. died) before
    /// another worker takes it over.
    #[arg(long, env = "REFUND_BULK_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub bulk_lease: Duration,

    /// How often the bulk runner looks for work and streams poll for events from other replicas.
    #[arg(long, env = "REFUND_BULK_POLL_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub bulk_poll_interval: Duration,

    /// Longest a batch holds a provider's jobs, queued, while the provider is unavailable (its
    /// circuit is open, or it asked for a long pause); past it the held jobs fail with a
    /// retryable error that says so. 0 = do not wait: such jobs fail at once.
    #[arg(long, env = "REFUND_BULK_MAX_PROVIDER_WAIT", default_value = "15m", value_parser = humantime::parse_duration)]
    pub bulk_max_provider_wait: Duration,

    /// A batch's stream (BulkRefund, WatchBulkRefund) that has sent nothing for this long sends
    /// the batch's progress, so that proxies that cut idle connections keep it open.
    #[arg(long, env = "REFUND_STREAM_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub stream_keepalive: Duration,

    /// Origins of web frontends whose pages may call the API with gRPC-Web (CORS),
    /// comma-separated, e.g. https://ops.example.com; `*` allows any. Unset: none (the
    /// console at /console is same-origin and needs none).
    #[arg(long, env = "REFUND_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,

    /// Serve the operator console from this directory (e.g. console/dist) instead of the copy
    /// built into the binary: for working on the console.
    #[arg(long, env = "REFUND_CONSOLE_DIR")]
    pub console_dir: Option<std::path::PathBuf>,

    /// Requests per second each API key may make (more are refused RESOURCE_EXHAUSTED with a
    /// retry delay); 0 = unlimited.
    #[arg(long, env = "REFUND_API_KEY_RATE_LIMIT", default_value_t = 100)]
    pub api_key_rate_limit: u32,

    /// How long an API key that checked out is trusted without asking the database again: the
    /// longest a `keys revoke` takes to apply on SQLite (on PostgreSQL its notice applies it at
    /// once, this long at worst if the notice is lost). 0s asks the database on every call.
    #[arg(long, env = "REFUND_API_KEY_CACHE_TTL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub api_key_cache_ttl: Duration,

    /// The admin key (for account acct_default) to create on a fresh installation, e.g. from a
    /// mounted secret; at least 32 characters. Without it, a fresh installation listening on
    /// loopback makes one up and prints it once.
    #[arg(long, env = "REFUND_BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub bootstrap_api_key: Option<String>,

    /// PEM certificate (chain) for TLS on both ports; with --tls-key. Without them both ports
    /// are plaintext.
    #[arg(long, env = "REFUND_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "REFUND_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// PEM CA certificate(s): with it, clients must present a certificate it signed (mTLS).
    #[arg(long, env = "REFUND_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Time in-flight calls get to finish after SIGTERM/SIGINT (after --drain-delay).
    #[arg(long, env = "REFUND_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// After SIGTERM/SIGINT, report NOT_SERVING (grpc.health.v1 and /readyz) but keep serving
    /// this long before no longer accepting calls, so that Kubernetes (or another load
    /// balancer) stops routing here first.
    #[arg(long, env = "REFUND_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// Do not apply database migrations (a deployment's migration job runs `refund-service
    /// migrate` first); refuse to start while one is pending.
    #[arg(long, env = "REFUND_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    #[command(flatten)]
    pub connections: connections::ConnectionArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key for an account. Prints its id, then the token on the last line: the token is
    /// shown only now (the database keeps only its hash).
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The account the key acts for (1 to 64 of A-Z a-z 0-9 _ -).
        #[arg(long)]
        account: String,
        /// Comma-separated: refunds:read, refunds:write, refunds:approve, bulk:write, webhooks:manage,
        /// admin.
        #[arg(long)]
        scopes: String,
        /// A label for people, e.g. "billing backend".
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (never their tokens): id, account, scopes, created, revoked.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only this account's keys.
        #[arg(long)]
        account: Option<String>,
    },
    /// Revoke a key by id (`key_…`); calls with it are refused from then on.
    Revoke {
        #[command(flatten)]
        database: DatabaseArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Refunds of the account above AMOUNT minor units of CURRENCY wait in REQUIRES_APPROVAL
    /// until another API key with refunds:approve approves them. `--clear` removes the threshold.
    SetApprovalThreshold {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        account: String,
        /// ISO 4217, e.g. USD.
        #[arg(long)]
        currency: String,
        /// Minor units (cents for USD).
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        amount: Option<i64>,
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run the sandbox standalone over HTTP (its API under /sandbox).
    Serve(SandboxServeArgs),
    /// Create captured payments and print their ids, one per line.
    Seed(SeedArgs),
    /// Print the sandbox's own refunds as JSON lines: the provider's side of the truth.
    Ledger(LedgerArgs),
}

#[derive(Debug, Args)]
pub struct SandboxServeArgs {
    #[arg(long, env = "SANDBOX_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Where to POST signed `refund.updated` webhooks when pending refunds settle, e.g.
    /// http://127.0.0.1:8080/webhooks/sandbox.
    #[arg(long, env = "SANDBOX_WEBHOOK_URL", requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The secret the webhooks are signed with (the service's --sandbox-webhook-secret).
    #[arg(long, env = "SANDBOX_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    #[command(flatten)]
    pub faults: FaultArgs,
}

#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Latency added to every provider API request, in milliseconds.
    #[arg(long, env = "SANDBOX_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of API requests answered 500 (0.0 to 1.0).
    #[arg(long, env = "SANDBOX_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Requests per second before 429 with Retry-After, for reads and for writes separately
    /// (as Stripe counts them); 0 = unlimited.
    #[arg(long, env = "SANDBOX_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
    /// Fraction of refund creations that succeed but answer only after --hang-ms.
    #[arg(long, env = "SANDBOX_TIMEOUT_RATE", default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// How long a "succeed but time out" refund creation hangs, in milliseconds.
    #[arg(long, env = "SANDBOX_HANG_MS", default_value_t = 30_000)]
    pub hang_ms: u64,
    /// Refunds stay pending this long before they succeed, in milliseconds (0 = at once).
    #[arg(long, env = "SANDBOX_SETTLE_DELAY_MS", default_value_t = 0)]
    pub settle_delay_ms: u64,
}

#[derive(Debug, Args)]
pub struct SandboxUrlArg {
    /// Base URL of the sandbox API. The default is the running service's embedded sandbox.
    #[arg(
        long,
        env = "REFUND_SANDBOX_URL",
        default_value = "http://127.0.0.1:8080/sandbox"
    )]
    pub sandbox_url: String,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Captured amount of each payment, in minor units.
    #[arg(long)]
    pub amount: i64,
    /// ISO 4217 currency code.
    #[arg(long)]
    pub currency: String,
    /// Id of the payment (only with --count 1).
    #[arg(long)]
    pub id: Option<String>,
    /// How many payments to create.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Status of the payments; anything but `succeeded` cannot be refunded.
    #[arg(long, value_enum, default_value_t = SeedStatus::Succeeded)]
    pub status: SeedStatus,
    /// Every refund of these payments fails at the provider (like an expired card).
    #[arg(long)]
    pub fail_refunds: bool,
    #[command(flatten)]
    pub url: SandboxUrlArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SeedStatus {
    Succeeded,
    RequiresCapture,
    Failed,
    Canceled,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// Only refunds of this payment.
    #[arg(long)]
    pub payment: Option<String>,
    #[command(flatten)]
    pub url: SandboxUrlArg,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Pretty => LogFormat::Pretty,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

impl ServeArgs {
    /// The settings that cannot be right whatever else is set, refused with the flag to fix.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.provider_timeout.is_zero(),
            "--provider-timeout must be greater than zero"
        );
        anyhow::ensure!(
            !self.reconcile_interval.is_zero(),
            "--reconcile-interval must be greater than zero"
        );
        anyhow::ensure!(
            self.reconcile_delay <= self.reconcile_max_delay,
            "--reconcile-delay must not exceed --reconcile-max-delay"
        );
        anyhow::ensure!(self.max_attempts >= 1, "--max-attempts must be at least 1");
        anyhow::ensure!(
            self.provider_concurrency >= 1,
            "--provider-concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.provider_max_attempts >= 1,
            "--provider-max-attempts must be at least 1"
        );
        anyhow::ensure!(
            self.provider_backoff <= self.provider_max_backoff,
            "--provider-backoff must not exceed --provider-max-backoff"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.bulk_max_jobs),
            "--bulk-max-jobs must be between 1 and 1000000"
        );
        anyhow::ensure!(
            self.bulk_max_concurrency >= 1
                && (1..=self.bulk_max_concurrency).contains(&self.bulk_default_concurrency),
            "--bulk-default-concurrency must be between 1 and --bulk-max-concurrency"
        );
        anyhow::ensure!(
            self.bulk_lease >= Duration::from_millis(300),
            "--bulk-lease must be at least 300ms"
        );
        anyhow::ensure!(
            !self.watch_poll_interval.is_zero(),
            "--watch-poll-interval must be greater than zero"
        );
        anyhow::ensure!(
            !self.bulk_poll_interval.is_zero(),
            "--bulk-poll-interval must be greater than zero"
        );
        anyhow::ensure!(
            self.stream_keepalive >= Duration::from_secs(1),
            "--stream-keepalive must be at least 1s"
        );
        anyhow::ensure!(
            self.grpc_addr.port() == 0 || self.grpc_addr != self.http_addr,
            "--grpc-addr and --http-addr must differ"
        );
        Ok(())
    }

    fn into_settings(self) -> anyhow::Result<ServeSettings> {
        self.check()?;
        let Self {
            grpc_addr,
            http_addr,
            database,
            sandbox_url,
            provider_timeout,
            sandbox_rate_limit,
            sandbox_webhook_secret,
            webhook_tolerance,
            watch_poll_interval,
            lease_margin,
            providers,
            provider_concurrency,
            provider_max_attempts,
            provider_backoff,
            provider_max_backoff,
            provider_breaker_threshold,
            provider_breaker_open_for,
            idempotency_ttl,
            reconcile_delay,
            reconcile_max_delay,
            reconcile_interval,
            max_attempts,
            webhook_only_pending_alert,
            event_retention,
            webhook_allow_private_targets,
            webhook_allow_http,
            webhook_timeout,
            webhook_retry_window,
            webhook_retry_min_delay,
            bulk_max_jobs,
            bulk_default_concurrency,
            bulk_max_concurrency,
            bulk_lease,
            bulk_poll_interval,
            bulk_max_provider_wait,
            stream_keepalive,
            cors_allowed_origins,
            console_dir,
            api_key_rate_limit,
            api_key_cache_ttl,
            bootstrap_api_key,
            tls_cert,
            tls_key,
            tls_client_ca,
            shutdown_grace,
            drain_delay,
            skip_migrations,
            connections,
        } = self;
        let sandbox_traffic = TrafficConfig {
            rate_per_sec: sandbox_rate_limit,
            max_concurrency: provider_concurrency,
            call_timeout: provider_timeout,
            max_attempts: provider_max_attempts,
            base_backoff: provider_backoff,
            max_backoff: provider_max_backoff,
            breaker_threshold: provider_breaker_threshold,
            breaker_open_for: provider_breaker_open_for,
        };
        let provider_defaults = providers.defaults(&sandbox_traffic);
        let providers = providers.into_settings(&sandbox_traffic)?;
        Ok(ServeSettings {
            connections: connections.into_settings(provider_defaults)?,
            providers,
            sandbox_webhook_secrets: secrets(sandbox_webhook_secret, "--sandbox-webhook-secret")?,
            webhook_tolerance,
            grpc_addr,
            http_addr,
            database_url: Secret::new(database.database_url),
            sandbox_url,
            sandbox_traffic,
            store: store_options(database.db_max_connections)?,
            refunds: RefundsConfig {
                // Set from the providers' traffic configuration when the app is built.
                provider_budget: Duration::ZERO,
                idempotency_ttl,
                reconcile_delay,
                reconcile_max_delay,
                reconcile_interval,
                watch_poll_interval,
                lease_margin,
                max_attempts,
                webhook_only_pending_alert,
                event_retention,
                api_key_cache_ttl,
                webhooks: WebhooksConfig {
                    policy: EndpointPolicy {
                        allow_private_targets: webhook_allow_private_targets,
                        allow_http: webhook_allow_http,
                    },
                    timeout: webhook_timeout,
                    retry: RetryPolicy {
                        min_delay: webhook_retry_min_delay,
                        max_delay: RetryPolicy::default()
                            .max_delay
                            .max(webhook_retry_min_delay),
                        window: webhook_retry_window,
                    },
                    ..WebhooksConfig::default()
                },
                bulk: BulkConfig {
                    max_jobs: bulk_max_jobs,
                    default_concurrency: bulk_default_concurrency,
                    max_concurrency: bulk_max_concurrency,
                    lease: bulk_lease,
                    poll_interval: bulk_poll_interval,
                    max_provider_wait: bulk_max_provider_wait,
                    stream_keepalive,
                },
            },
            shutdown_grace,
            drain_delay,
            skip_migrations,
            api_key_rate_limit,
            tls: tls_settings(tls_cert, tls_key, tls_client_ca)?,
            bootstrap_api_key: bootstrap_api_key.map(checked_bootstrap_key).transpose()?,
            browsers: crate::config::BrowserSettings {
                cors_allowed_origins: crate::config::CorsOrigins::parse(&cors_allowed_origins)?,
                console_dir,
            },
        })
    }
}

/// The PEM files of `--tls-cert`, `--tls-key` and `--tls-client-ca`, checked now rather than at
/// the first connection.
fn tls_settings(
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    client_ca: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<crate::config::TlsSettings>> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let tls = crate::config::TlsSettings {
        cert_pem: read(&cert, "--tls-cert")?,
        key_pem: Secret::opaque(
            String::from_utf8(read(&key, "--tls-key")?).context("--tls-key is not a PEM file")?,
        ),
        client_ca_pem: client_ca
            .map(|ca| read(&ca, "--tls-client-ca"))
            .transpose()?,
    };
    tls.rustls_server_config()?;
    Ok(Some(tls))
}

fn checked_bootstrap_key(key: String) -> anyhow::Result<Secret> {
    let key = key.trim().to_owned();
    anyhow::ensure!(
        key.len() >= 32 && key.bytes().all(|b| b.is_ascii_graphic()),
        "--bootstrap-api-key must be at least 32 printable characters"
    );
    Ok(Secret::opaque(key))
}

/// Webhook signing secrets from a comma-separated list; blanks around them are trimmed.
fn secrets(values: Vec<String>, flag: &str) -> anyhow::Result<Vec<Secret>> {
    values
        .into_iter()
        .map(|v| {
            let v = v.trim().to_owned();
            anyhow::ensure!(!v.is_empty(), "{flag} has an empty secret");
            Ok(Secret::opaque(v))
        })
        .collect()
}

fn store_options(max_connections: u32) -> anyhow::Result<StoreOptions> {
    anyhow::ensure!(
        max_connections >= 1,
        "--db-max-connections must be at least 1"
    );
    Ok(StoreOptions {
        max_connections,
        ..StoreOptions::default()
    })
}

impl FaultArgs {
    fn into_faults(self) -> anyhow::Result<FaultConfig> {
        let faults = FaultConfig {
            latency_ms: self.latency_ms,
            error_rate: self.error_rate,
            rate_limit_per_sec: self.rate_limit,
            timeout_rate: self.timeout_rate,
            hang_ms: self.hang_ms,
            settle_delay_ms: self.settle_delay_ms,
            ..FaultConfig::default()
        };
        faults.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(faults)
    }
}

impl Cli {
    /// What is logged when RUST_LOG does not say: a server's operators want its info lines; a
    /// one-shot command's user wants only what was asked for, on stdout, and what went wrong.
    fn log_level(&self) -> tracing::Level {
        let server = matches!(
            self.command,
            Command::Serve(_) | Command::Sandbox(SandboxCommand::Serve(_))
        );
        match (server, self.verbose) {
            (_, 2..) => tracing::Level::DEBUG,
            (true, _) | (false, 1) => tracing::Level::INFO,
            (false, 0) => tracing::Level::WARN,
        }
    }
}

/// How to run this program again, for hints the user pastes: `cargo run -q --` when it runs
/// from a checkout through cargo (as README's commands do), else the program as it was invoked
/// (a path, or `refund-service` on PATH).
pub fn invocation() -> String {
    invocation_from(
        std::env::var("CARGO_PKG_NAME").ok().as_deref(),
        std::env::var_os("CARGO").is_some(),
        std::env::args().next().as_deref(),
    )
}

fn invocation_from(cargo_package: Option<&str>, cargo: bool, argv0: Option<&str>) -> String {
    if cargo && cargo_package == Some(env!("CARGO_PKG_NAME")) {
        return if cfg!(debug_assertions) {
            "cargo run -q --".to_owned()
        } else {
            "cargo run --release -q --".to_owned()
        };
    }
    match argv0 {
        Some(path) if path.contains('/') => crate::bulk_cli::shell_quote(path),
        _ => env!("CARGO_PKG_NAME").to_owned(),
    }
}

/// An error and its causes on one line, each said once.
pub fn error_chain(e: &anyhow::Error) -> String {
    crate::error_chain::causes(e.as_ref())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let telemetry = telemetry::init(TelemetryConfig {
        default_log_level: cli.log_level(),
        ..TelemetryConfig::from_env(cli.log_format.into())
    })?;
    // reqwest is built without a default TLS crypto provider; install ring once, up front.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Serve(args) => serve(args.into_settings()?).await,
        Command::Migrate(args) => {
            open_store(&args).await?.close().await.ok();
            println!(
                "migrations applied to {}",
                Secret::new(args.database_url).redacted()
            );
            Ok(())
        }
        Command::Sandbox(SandboxCommand::Serve(args)) => sandbox_serve(args).await,
        Command::Sandbox(SandboxCommand::Seed(args)) => sandbox_seed(args).await,
        Command::Sandbox(SandboxCommand::Ledger(args)) => sandbox_ledger(args).await,
        Command::Keys(command) => keys(command).await,
        Command::Accounts(command) => accounts(command).await,
        Command::Connections(command) => connections::run(command).await,
        Command::Webhooks(args) => webhooks::run(args).await,
        Command::Bulk(args) => crate::bulk_cli::run(args).await,
        Command::Verify(args) => verify(args).await,
        Command::Health(args) => health::run(args).await,
    };
    // Spans still queued are sent now (a collector that does not answer is only logged).
    telemetry.shutdown();
    result
}

async fn serve(settings: ServeSettings) -> anyhow::Result<()> {
    let database = settings.database_url.redacted();
    let app = Application::build(settings).await?;
    if let Some(key) = app.bootstrap_key() {
        // On stdout, not in the logs, and only this once: the database keeps only its hash.
        println!(
            "No API keys existed, so an admin key for account {} was created. It is shown only \
             now; send it as `authorization: Bearer <key>`:\n{key}",
            crate::domain::AccountId::DEFAULT
        );
    }
    tracing::info!(
        grpc = %app.grpc_addr(),
        http = %app.http_addr(),
        database = %database,
        store = app.service().store().backend_name(),
        embedded_sandbox = app.sandbox().is_some(),
        "refund-service listening"
    );
    app.run_until(shutdown_signal()).await
}

async fn accounts(command: AccountsCommand) -> anyhow::Result<()> {
    let AccountsCommand::SetApprovalThreshold {
        database,
        account,
        currency,
        amount,
        clear: _,
    } = command;
    let account = crate::domain::parse_account(&account).map_err(anyhow::Error::msg)?;
    let currency = crate::domain::Currency::parse(&currency).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(amount) = amount {
        anyhow::ensure!(amount >= 0, "--amount must not be negative");
    }
    let store = open_store(&database).await?;
    store
        .set_approval_threshold(&account, currency, amount)
        .await
        .context("cannot set the threshold")?;
    match amount {
        Some(amount) => println!(
            "refunds of {} above {amount} minor units of {} now need approval",
            account.as_str(),
            currency.code()
        ),
        None => println!(
            "refunds of {} in {} no longer need approval",
            account.as_str(),
            currency.code()
        ),
    }
    store.close().await.ok();
    Ok(())
}

/// Connects to the database of `--database-url` and applies migrations.
async fn open_store(database: &DatabaseArgs) -> anyhow::Result<Store> {
    crate::app::open_store(
        &Secret::new(database.database_url.clone()),
        &store_options(database.db_max_connections)?,
    )
    .await
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let database = match &command {
        KeysCommand::Create { database, .. }
        | KeysCommand::List { database, .. }
        | KeysCommand::Revoke { database, .. } => database,
    };
    let store = open_store(database).await?;
    match command {
        KeysCommand::Create {
            account,
            scopes,
            name,
            ..
        } => {
            let account = crate::domain::parse_account(&account).map_err(anyhow::Error::msg)?;
            let scopes = crate::domain::Scope::parse_list(&scopes).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(name.len() <= 200, "--name is at most 200 characters");
            let (key, token) = crate::service::create_api_key(&store, account, name, scopes)
                .await
                .context("cannot create the key")?;
            println!(
                "created {} for account {} with scopes {}; the token is shown only now:",
                key.id,
                key.account.as_str(),
                crate::domain::Scope::join(&key.scopes)
            );
            println!("{token}");
        }
        KeysCommand::List { account, .. } => {
            let account = account
                .map(|a| crate::domain::parse_account(&a))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let keys = store
                .list_api_keys(account.as_ref())
                .await
                .context("cannot list keys")?;
            println!("id\taccount\tscopes\tname\tcreated\trevoked");
            for key in keys {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.account.as_str(),
                    crate::domain::Scope::join(&key.scopes),
                    key.name,
                    rfc3339(key.created_at),
                    key.revoked_at
                        .map(rfc3339)
                        .unwrap_or_else(|| "-".to_owned())
                );
            }
        }
        KeysCommand::Revoke { id, .. } => {
            let id = crate::domain::ApiKeyId::parse(&id)
                .ok_or_else(|| anyhow::anyhow!("{id:?} is not a key id (key_…)"))?;
            if store
                .revoke_api_key(&id, crate::domain::Timestamp::now())
                .await
                .context("cannot revoke the key")?
            {
                println!("revoked {id}");
            } else {
                anyhow::bail!("no active key {id}");
            }
        }
    }
    store.close().await.ok();
    Ok(())
}

fn rfc3339(t: crate::domain::Timestamp) -> String {
    let micros = t.as_micros();
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0)),
    )
    .to_string()
}

async fn sandbox_serve(args: SandboxServeArgs) -> anyhow::Result<()> {
    let sandbox = Arc::new(Sandbox::new(args.faults.into_faults()?));
    if let (Some(url), Some(secret)) = (args.webhook_url, args.webhook_secret) {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--webhook-url must be an http(s) URL"
        );
        sandbox.set_webhook_target(Some(crate::sandbox::WebhookTarget { url, secret }));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().nest("/sandbox", sandbox::http::router(sandbox));
    tracing::info!(url = %format!("http://{addr}/sandbox"), "sandbox listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("sandbox server failed")
}

fn client(url: &SandboxUrlArg) -> anyhow::Result<SandboxClient> {
    SandboxClient::new(&url.sandbox_url, Duration::from_secs(60))
        .with_context(|| format!("bad sandbox URL {}", url.sandbox_url))
}

/// `verify`: errors are [`crate::verify::VerifyError`]s, for the exit status.
async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    use crate::verify::{CheckOptions, VerifyError};

    let database = Secret::new(args.database.database_url.clone());
    let read = async {
        // Only connected, never migrated: the checker reads, and must not change the schema
        // of a database that a service of another version may be running on.
        let store = Store::connect(
            database.expose(),
            &store_options(args.database.db_max_connections)?,
        )
        .await
        .with_context(|| format!("cannot connect to the database {}", database.redacted()))?;
        let sandbox = client(&args.url)?;
        let snapshots = crate::verify::collect(&store, &sandbox)
            .await
            .with_context(|| {
                format!(
                    "cannot verify {} against the sandbox at {}",
                    database.redacted(),
                    args.url.sandbox_url
                )
            });
        store.close().await.ok();
        snapshots
    };
    let (books, ledger) = read.await.map_err(VerifyError::Failed)?;
    let report = crate::verify::check(
        &books,
        &ledger,
        CheckOptions {
            settled: args.settled,
        },
    );
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .context("cannot print the report")
            .map_err(VerifyError::Failed)?;
        println!("{json}");
    } else {
        println!(
            "checked {} against the sandbox at {}",
            database.redacted(),
            args.url.sandbox_url
        );
        print!("{}", report.human());
    }
    if report.ok {
        Ok(())
    } else {
        Err(VerifyError::Violations(report.violations.len()).into())
    }
}

async fn sandbox_seed(args: SeedArgs) -> anyhow::Result<()> {
    let status = match args.status {
        SeedStatus::Succeeded => sandbox::PaymentStatus::Succeeded,
        SeedStatus::RequiresCapture => sandbox::PaymentStatus::RequiresCapture,
        SeedStatus::Failed => sandbox::PaymentStatus::Failed,
        SeedStatus::Canceled => sandbox::PaymentStatus::Canceled,
    };
    let payments = client(&args.url)?
        .create_payments(&sandbox::NewPayments {
            amount: args.amount,
            currency: args.currency,
            id: args.id,
            count: Some(args.count),
            status: Some(status),
            fail_refunds: args.fail_refunds,
        })
        .await
        .with_context(|| format!("cannot seed payments at {}", args.url.sandbox_url))?;
    let mut out = String::new();
    for p in payments {
        out.push_str(&p.id);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

async fn sandbox_ledger(args: LedgerArgs) -> anyhow::Result<()> {
    let refunds = client(&args.url)?
        .ledger(args.payment.as_deref())
        .await
        .with_context(|| format!("cannot read the ledger at {}", args.url.sandbox_url))?;
    let mut out = String::new();
    for r in refunds {
        out.push_str(&serde_json::to_string(&r)?);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_program_as_it_was_run() {
        let cargo = if cfg!(debug_assertions) {
            "cargo run -q --"
        } else {
            "cargo run --release -q --"
        };
        assert_eq!(
            invocation_from(
                Some("refund-service"),
                true,
                Some("target/debug/refund-service")
            ),
            cargo
        );
        // Another crate's cargo run (e.g. a test harness of another project) is not ours.
        assert_eq!(
            invocation_from(Some("other"), true, Some("/opt/bin/refund-service")),
            "/opt/bin/refund-service"
        );
        assert_eq!(
            invocation_from(None, false, Some("refund-service")),
            "refund-service"
        );
        assert_eq!(
            invocation_from(None, false, Some("./my dir/refund-service")),
            "'./my dir/refund-service'"
        );
    }
}
