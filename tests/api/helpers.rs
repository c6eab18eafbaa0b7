use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use refund_service::api::pb;
use refund_service::api::pb::refund_service_client::RefundServiceClient;
use refund_service::app::Application;
use refund_service::config::ServeSettings;
use refund_service::sandbox::client::SandboxClient;
use refund_service::sandbox::{self, NewPayments};
use sea_orm::{ConnectionTrait, Database};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub type Client = RefundServiceClient<InterceptedService<Channel, Bearer>>;

/// The admin key (account `acct_default`) every test service starts with.
pub const ADMIN_KEY: &str = "rsk_test_admin_key_for_the_api_tests_only";

/// Sends `authorization: Bearer <key>` with every call (none when `None`).
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.0 {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| tonic::Status::internal("unprintable test key"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A client of the service at `grpc_addr` that authenticates with `key`.
pub async fn client_with_key(grpc_addr: SocketAddr, key: Option<&str>) -> Client {
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect gRPC");
    RefundServiceClient::with_interceptor(channel, Bearer(key.map(str::to_owned)))
}

/// A database for one test: a SQLite file in a temporary directory, or a new PostgreSQL database.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new() -> Self {
        match std::env::var("REFUND_TEST_DATABASE_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let name = format!("refund_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("REFUND_TEST_DATABASE_URL must name a reachable PostgreSQL server");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let base = admin_url
                    .rsplit_once('/')
                    .map(|(base, _)| base)
                    .expect("admin URL ends in /DATABASE");
                Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
            _ => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("refunds.db").display()
                );
                Self {
                    url,
                    _dir: Some(dir),
                }
            }
        }
    }
}

/// Whether `db` is a SQLite file (single-node) rather than a shared PostgreSQL database.
pub fn is_sqlite(db: &TestDb) -> bool {
    db.url.starts_with("sqlite:")
}

/// A running service.
pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub client: Client,
    /// The sandbox this service refunds against, over its HTTP API.
    pub sandbox: SandboxClient,
    /// The service inside, for its clock.
    pub service: refund_service::service::RefundService,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> (TestApp, TestDb) {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |_| {}).await;
    (app, db)
}

pub async fn spawn_app_with(db: &TestDb, configure: impl FnOnce(&mut ServeSettings)) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ =
            refund_service::telemetry::init(refund_service::telemetry::TelemetryConfig::logs_only(
                refund_service::telemetry::LogFormat::Pretty,
            ));
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut settings = ServeSettings::local(db.url.clone());
    settings.sandbox_traffic.call_timeout = Duration::from_secs(5);
    settings.bootstrap_api_key = Some(refund_service::secret::Secret::opaque(ADMIN_KEY.to_owned()));
    configure(&mut settings);
    let sandbox_url = settings.sandbox_url.clone();
    let app = Application::build(settings).await.expect("build app");
    let grpc_addr = app.grpc_addr();
    let http_addr = app.http_addr();
    let service = app.service().clone();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let client = client_with_key(grpc_addr, Some(ADMIN_KEY)).await;
    let sandbox_url = sandbox_url.unwrap_or_else(|| format!("http://{http_addr}/sandbox"));
    let sandbox =
        SandboxClient::new(&sandbox_url, Duration::from_secs(30)).expect("sandbox client");
    TestApp {
        grpc_addr,
        http_addr,
        client,
        sandbox,
        service,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestApp {
    /// Signals the server to shut down (as SIGTERM does), without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server run");
        }
    }

    /// Creates one captured payment at the sandbox and returns its id.
    pub async fn seed(&self, amount: i64, currency: &str) -> String {
        self.seed_with(NewPayments {
            amount,
            currency: currency.into(),
            id: None,
            count: None,
            status: None,
            fail_refunds: false,
        })
        .await
    }

    pub async fn seed_with(&self, req: NewPayments) -> String {
        self.sandbox
            .create_payments(&req)
            .await
            .expect("seed payment")
            .remove(0)
            .id
    }

    /// Creates `n` captured payments of `amount` USD at the sandbox; their ids.
    pub async fn seed_many(&self, n: u32, amount: i64) -> Vec<String> {
        seed_payments(&self.sandbox, n, amount).await
    }

    /// Waits (up to 20 s) until the refund reaches `want` — for outcomes that background work,
    /// such as the reconciler, produces — and returns it.
    pub async fn wait_for_status(&self, id: &str, want: pb::RefundStatus) -> pb::Refund {
        eventually(Duration::from_secs(20), "the refund to be settled", || {
            let mut client = self.client.clone();
            let id = id.to_owned();
            async move {
                let r = client
                    .get_refund(pb::GetRefundRequest { id })
                    .await
                    .ok()?
                    .into_inner();
                (status_of(&r) == want).then_some(r)
            }
        })
        .await
    }

    /// The sandbox's own ledger for one payment.
    pub async fn ledger(&self, payment: &str) -> Vec<sandbox::Refund> {
        self.sandbox.ledger(Some(payment)).await.expect("ledger")
    }
}

/// Creates `n` captured payments of `amount` USD at a sandbox; their ids.
pub async fn seed_payments(sandbox: &SandboxClient, n: u32, amount: i64) -> Vec<String> {
    sandbox
        .create_payments(&NewPayments {
            amount,
            currency: "USD".into(),
            id: None,
            count: Some(n),
            status: None,
            fail_refunds: false,
        })
        .await
        .expect("seed payments")
        .into_iter()
        .map(|p| p.id)
        .collect()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A standalone sandbox on its own port (as `refund-service sandbox serve` runs it), so that it
/// outlives the services under test.
pub async fn spawn_sandbox(
    faults: sandbox::FaultConfig,
) -> (String, std::sync::Arc<sandbox::Sandbox>) {
    let sb = std::sync::Arc::new(sandbox::Sandbox::new(faults));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = axum::Router::new().nest("/sandbox", sandbox::http::router(sb.clone()));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/sandbox"), sb)
}

pub fn refund_request(
    payment_id: &str,
    amount: Option<i64>,
    currency: &str,
) -> pb::CreateRefundRequest {
    pb::CreateRefundRequest {
        payment_id: payment_id.into(),
        amount,
        currency: currency.into(),
        reason: pb::RefundReason::RequestedByCustomer.into(),
        ..Default::default()
    }
}

/// The google.rpc.ErrorInfo reason of a status, or "" when it has none.
pub fn error_reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

pub fn error_metadata(status: &tonic::Status, key: &str) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get(key).cloned())
}

/// The fields named in a status's google.rpc.BadRequest.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Polls `check` until it returns `Some`, for outcomes that background work (the reconciler)
/// produces. Panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn status_of(r: &pb::Refund) -> pb::RefundStatus {
    pb::RefundStatus::try_from(r.status).unwrap_or(pb::RefundStatus::Unspecified)
}

/// Posts a webhook body to `/webhooks/{provider}` with `headers`; returns the HTTP status and the
/// JSON answer.
pub async fn post_webhook(
    app: &TestApp,
    provider: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/webhooks/{provider}", app.http_addr))
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = req.send().await.expect("webhook endpoint answers");
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A refund's recorded status changes as (from, to, source), oldest first, read from the audit
/// trail in the database (`from` is the previous record's status).
pub async fn status_history(db: &TestDb, refund_id: &str) -> Vec<(Option<String>, String, String)> {
    use sea_orm::{ConnectionTrait as _, Statement};
    assert!(
        refund_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "a refund id: {refund_id}"
    );
    let conn = Database::connect(&db.url)
        .await
        .expect("connect to the test database");
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "SELECT outcome, source FROM audit_events \
                 WHERE resource_id = '{refund_id}' AND action LIKE 'refund.%' ORDER BY id"
            ),
        ))
        .await
        .expect("read audit_events");
    let mut previous: Option<String> = None;
    let history = rows
        .iter()
        .map(|row| {
            let to = row.try_get::<String>("", "outcome").expect("outcome");
            let source = row.try_get::<String>("", "source").expect("source");
            let from = previous.replace(to.clone());
            (from, to, source)
        })
        .collect();
    conn.close().await.ok();
    history
}

/// What our store holds reserved against a payment (the sum of its refunds that can still
/// succeed), read from the database.
pub async fn reserved_amount(db: &TestDb, payment: &str) -> i64 {
    use sea_orm::{ConnectionTrait as _, Statement};
    assert!(
        payment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "a payment id: {payment}"
    );
    let conn = Database::connect(&db.url)
        .await
        .expect("connect to the test database");
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT reserved_amount FROM payments WHERE payment_id = '{payment}'"),
        ))
        .await
        .expect("read payments")
        .expect("the payment has a balance row");
    let reserved = row
        .try_get::<i64>("", "reserved_amount")
        .expect("reserved_amount");
    conn.close().await.ok();
    reserved
}

/// Tests that install a span exporter take this first: the tracing subscriber and its exporter
/// slot are process-wide, shared by every test in this binary.
pub async fn telemetry_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The Prometheus text the service at `http_addr` serves at `GET /metrics`.
pub async fn scrape_metrics(http_addr: SocketAddr) -> String {
    reqwest::Client::new()
        .get(format!("http://{http_addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body")
}

/// The value of one series (`name{labels}` exactly as exposed) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A client for a new key of `account` with `scopes` (comma-separated).
pub async fn client_of(app: &TestApp, account: &str, scopes: &str) -> Client {
    let (_, token) = refund_service::service::create_api_key(
        app.service.store(),
        refund_service::domain::parse_account(account).expect("account"),
        format!("{account} {scopes}"),
        refund_service::domain::Scope::parse_list(scopes).expect("scopes"),
    )
    .await
    .expect("key");
    client_with_key(app.grpc_addr, Some(&token)).await
}
