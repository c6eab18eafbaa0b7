//! A subscriber's backend for the soak: takes the service's webhooks on loopback while replicas
//! are killed, answers 503 to a share of them (a flaky backend) so that retries run too, checks
//! each signature, and records the event ids it accepted. After the drain, every event the
//! service stored must have reached it: an event committed and never delivered is a violation.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use refund_service::api::pb;
use refund_service::webhooks_out::signing::{self, WebhookSecret};

use crate::client::Client;

#[derive(Default)]
struct Inner {
    secret: OnceLock<WebhookSecret>,
    delivered: Mutex<BTreeSet<String>>,
    requests: AtomicU64,
    refused: AtomicU64,
    bad_signatures: AtomicU64,
    rng: Mutex<Option<StdRng>>,
    fail_rate: Mutex<f64>,
}

#[derive(Clone)]
pub struct Subscriber {
    pub url: String,
    inner: Arc<Inner>,
}

/// What the subscriber saw.
pub struct Report {
    pub requests: u64,
    pub refused: u64,
    pub bad_signatures: u64,
    pub events: usize,
    pub missing: Vec<String>,
    pub waited: Duration,
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inner.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header(signing::HEADER_ID),
        header(signing::HEADER_TIMESTAMP),
        header(signing::HEADER_SIGNATURE),
    );
    let Some(secret) = inner.secret.get() else {
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if signing::verify(
        secret,
        &id,
        &timestamp,
        &signature,
        &body,
        now,
        signing::DEFAULT_TOLERANCE,
    )
    .is_err()
    {
        inner.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST;
    }
    let fail_rate = *inner.fail_rate.lock().unwrap_or_else(|e| e.into_inner());
    let fail = inner
        .rng
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .is_some_and(|rng| rng.random_bool(fail_rate.clamp(0.0, 1.0)));
    if fail {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    inner
        .delivered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id);
    StatusCode::NO_CONTENT
}

impl Subscriber {
    /// Listens on a loopback port; answers 503 to `fail_rate` of the webhooks.
    pub async fn start(seed: u64, fail_rate: f64) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner::default());
        *inner.rng.lock().unwrap_or_else(|e| e.into_inner()) = Some(StdRng::seed_from_u64(seed));
        *inner.fail_rate.lock().unwrap_or_else(|e| e.into_inner()) = fail_rate;
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url: format!("http://{addr}/hook"),
            inner,
        })
    }

    /// Subscribes to every event of the key's account.
    pub async fn subscribe(&self, client: &Client) -> anyhow::Result<()> {
        let created = client
            .clone()
            .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                url: self.url.clone(),
                event_types: Vec::new(),
                description: "soak subscriber".into(),
            })
            .await?
            .into_inner();
        let secret = WebhookSecret::parse(&created.secret)?;
        let _ = self.inner.secret.set(secret);
        Ok(())
    }

    /// Stops refusing: what is left to deliver should now arrive.
    pub fn heal(&self) {
        *self
            .inner
            .fail_rate
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = 0.0;
    }

    /// Waits (at most `within`) until every event of the account has been delivered here.
    pub async fn wait_for_all(&self, client: &Client, within: Duration) -> anyhow::Result<Report> {
        let started = Instant::now();
        let events = all_event_ids(client).await?;
        let missing = loop {
            let missing: Vec<String> = {
                let delivered = self
                    .inner
                    .delivered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                events
                    .iter()
                    .filter(|e| !delivered.contains(*e))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() || started.elapsed() >= within {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Ok(Report {
            requests: self.inner.requests.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            bad_signatures: self.inner.bad_signatures.load(Ordering::Relaxed),
            events: events.len(),
            missing,
            waited: started.elapsed(),
        })
    }
}

async fn all_event_ids(client: &Client) -> anyhow::Result<Vec<String>> {
    let mut client = client.clone();
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}
