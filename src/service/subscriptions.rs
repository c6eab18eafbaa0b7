//! Webhook endpoints: accounts' subscriptions to their events, and the dispatcher that delivers
//! the event log to them.
//!
//! The dispatcher never touches the refund paths: it reads the event log after each endpoint's
//! cursor (fan-out, see `store/endpoints.rs`), then claims due deliveries with a lease and
//! sends each one signed (Standard Webhooks), at least once. A 2xx delivers; anything else is
//! tried again on an exponential back-off with jitter for the retry window (about three days),
//! then the delivery is FAILED. An endpoint whose every attempt has failed for the whole window
//! is disabled, with the reason shown to its account. Every replica runs a dispatcher; the
//! conditional writes of fan-out and claims keep them from doubling work.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use super::page::{decode_token, encode_token, page_size};
use super::{RefundService, internal};
use crate::domain::{
    AccountId, DeliveryStatus, Event, EventType, MAX_DESCRIPTION_CHARS, RefundError, RetryPolicy,
    Violations, WebhookDelivery, WebhookDeliveryId, WebhookEndpoint, WebhookEndpointId,
};
use crate::secret::Secret;
use crate::store::{
    DeliveryFilter, EndpointChanges, NewEndpointRow, SecretRotation, StoredEndpoint,
};
use crate::webhooks_out::sender::{Outbound, SendOutcome};
use crate::webhooks_out::signing::WebhookSecret;
use crate::webhooks_out::target::{Endpoint, EndpointPolicy};

/// Endpoints one account may have.
pub const MAX_ENDPOINTS_PER_ACCOUNT: usize = 16;
pub const DEFAULT_DELIVERY_PAGE: u32 = 50;
pub const MAX_DELIVERY_PAGE: u32 = 500;
/// Events one fan-out hands to an endpoint's deliveries.
const FAN_OUT_BATCH: u64 = 500;
/// Deliveries one dispatcher claims at a time; they are sent concurrently.
const CLAIM_BATCH: u64 = 32;
/// Deliveries pruned per statement.
const PRUNE_SLICE: u64 = 5_000;
/// The most a wake-up waits for the dispatcher after its last round (see
/// `run_webhook_dispatcher`).
const MAX_ROUND_GAP: Duration = Duration::from_millis(100);

/// How webhooks to subscribers are sent and retried.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// Which endpoint URLs are allowed (the SSRF guard).
    pub policy: EndpointPolicy,
    /// Longest wait for an endpoint's answer.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// How long the secret replaced by a rotation keeps signing, when the request does not say.
    pub secret_overlap: Duration,
    /// How often the dispatcher looks for work when nothing wakes it.
    pub poll_interval: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            policy: EndpointPolicy::STRICT,
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            secret_overlap: Duration::from_secs(24 * 60 * 60),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// An endpoint to make, unvalidated.
#[derive(Debug, Clone, Default)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
}

/// An update, unvalidated; `None` keeps the value.
#[derive(Debug, Clone, Default)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// A ListWebhookDeliveries request, unvalidated.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    pub endpoint_id: String,
    pub status: String,
    pub event_id: String,
    pub page_size: i32,
    pub page_token: String,
}

#[derive(Debug, Clone)]
pub struct DeliveryPage {
    pub deliveries: Vec<WebhookDelivery>,
    pub next_page_token: String,
}

impl RefundService {
    /// Makes an endpoint; returns it with its signing secret, which is shown this once.
    pub async fn create_webhook_endpoint(
        &self,
        account: &AccountId,
        new: NewEndpoint,
    ) -> Result<(WebhookEndpoint, WebhookSecret), RefundError> {
        let mut v = Violations::default();
        let url = self.endpoint_url(&new.url, &mut v);
        let event_types = endpoint_event_types(&new.event_types, &mut v);
        check_description(&new.description, &mut v);
        let url = v
            .into_result(|| url)
            .map_err(RefundError::InvalidArgument)?;
        let vault = self.inner.connections.vault()?;
        let existing = self
            .store()
            .list_webhook_endpoints(account)
            .await
            .map_err(internal)?;
        if existing.len() >= MAX_ENDPOINTS_PER_ACCOUNT {
            return Err(RefundError::NotSetUp {
                reason: "TOO_MANY_ENDPOINTS",
                message: format!(
                    "account {} has {} webhook endpoints, the most allowed; delete one first",
                    account.as_str(),
                    existing.len()
                ),
            });
        }
        let id = WebhookEndpointId::generate();
        let secret = WebhookSecret::generate();
        let sealed = vault.seal(id.as_str(), &Secret::opaque(secret.expose()));
        let endpoint = self
            .store()
            .create_webhook_endpoint(
                account,
                NewEndpointRow {
                    id,
                    url,
                    description: new.description,
                    event_types,
                    secret_sealed: sealed,
                },
                self.clock().now(),
            )
            .await
            .map_err(internal)?;
        tracing::info!(account = account.as_str(), endpoint_id = %endpoint.id, url = %endpoint.url, "webhook endpoint created");
        Ok((endpoint, secret))
    }

    pub async fn list_webhook_endpoints(
        &self,
        account: &AccountId,
    ) -> Result<Vec<WebhookEndpoint>, RefundError> {
        self.store()
            .list_webhook_endpoints(account)
            .await
            .map_err(internal)
    }

    pub async fn update_webhook_endpoint(
        &self,
        account: &AccountId,
        id: &str,
        update: EndpointUpdate,
    ) -> Result<WebhookEndpoint, RefundError> {
        let mut v = Violations::default();
        let id = endpoint_id("id", id, &mut v);
        let url = update.url.as_deref().map(|u| self.endpoint_url(u, &mut v));
        let event_types = update
            .event_types
            .as_deref()
            .map(|t| endpoint_event_types(t, &mut v));
        if let Some(d) = &update.description {
            check_description(d, &mut v);
        }
        let id = v.into_result(|| id).map_err(RefundError::InvalidArgument)?;
        let changes = EndpointChanges {
            url: url.flatten(),
            description: update.description,
            event_types,
            enabled: update.enabled,
        };
        self.store()
            .update_webhook_endpoint(account, &id, changes, self.clock().now())
            .await
            .map_err(internal)?
            .ok_or_else(|| endpoint_not_found(&id))
    }

    pub async fn delete_webhook_endpoint(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<(), RefundError> {
        let mut v = Violations::default();
        let id = endpoint_id("id", id, &mut v);
        let id = v.into_result(|| id).map_err(RefundError::InvalidArgument)?;
        if self
            .store()
            .delete_webhook_endpoint(account, &id)
            .await
            .map_err(internal)?
        {
            tracing::info!(account = account.as_str(), endpoint_id = %id, "webhook endpoint deleted");
            Ok(())
        } else {
            Err(endpoint_not_found(&id))
        }
    }

    /// Gives the endpoint a new secret; the current one keeps signing beside it for `overlap`
    /// (the configured default when `None`; zero ends it at once). Returns the new secret.
    pub async fn rotate_webhook_secret(
        &self,
        account: &AccountId,
        id: &str,
        overlap: Option<Duration>,
    ) -> Result<(WebhookEndpoint, WebhookSecret), RefundError> {
        let mut v = Violations::default();
        let id = endpoint_id("id", id, &mut v);
        if overlap.is_some_and(|o| o > Duration::from_secs(7 * 24 * 60 * 60)) {
            v.push("overlap", "the overlap is at most 7 days");
        }
        let id = v.into_result(|| id).map_err(RefundError::InvalidArgument)?;
        let vault = self.inner.connections.vault()?;
        let stored = self
            .store()
            .webhook_endpoint(account, &id)
            .await
            .map_err(internal)?
            .ok_or_else(|| endpoint_not_found(&id))?;
        let current = vault
            .open(id.as_str(), &stored.secret_sealed)
            .map_err(|e| unreadable(&id, e))?;
        let secret = WebhookSecret::generate();
        let now = self.clock().now();
        let rotated = self
            .store()
            .rotate_webhook_secret(
                account,
                &id,
                SecretRotation {
                    replaced_sealed: &stored.secret_sealed,
                    secret_sealed: vault.seal(id.as_str(), &Secret::opaque(secret.expose())),
                    previous_sealed: vault.seal(id.as_str(), &current),
                    previous_expires_at: now
                        .saturating_add(overlap.unwrap_or(self.config().webhooks.secret_overlap)),
                },
                now,
            )
            .await
            .map_err(internal)?;
        let Some(endpoint) = rotated else {
            let exists = self
                .store()
                .webhook_endpoint(account, &id)
                .await
                .map_err(internal)?
                .is_some();
            return Err(if exists {
                RefundError::NotSetUp {
                    reason: "ROTATED_CONCURRENTLY",
                    message: format!(
                        "the secret of webhook endpoint {id} was rotated by another request at \
                         the same time; its secret is the one that request returned (rotate \
                         again for a new one)"
                    ),
                }
            } else {
                endpoint_not_found(&id)
            });
        };
        tracing::info!(account = account.as_str(), endpoint_id = %id, "webhook secret rotated");
        Ok((endpoint, secret))
    }

    pub async fn list_webhook_deliveries(
        &self,
        account: &AccountId,
        q: DeliveryQuery,
    ) -> Result<DeliveryPage, RefundError> {
        let mut v = Violations::default();
        let size = page_size(
            q.page_size,
            DEFAULT_DELIVERY_PAGE,
            MAX_DELIVERY_PAGE,
            &mut v,
        );
        let endpoint = (!q.endpoint_id.is_empty())
            .then(|| endpoint_id("endpoint_id", &q.endpoint_id, &mut v))
            .flatten();
        let status = if q.status.is_empty() {
            None
        } else {
            let parsed = DeliveryStatus::parse(&q.status);
            if parsed.is_none() {
                v.push(
                    "status",
                    format!(
                        "unknown delivery status {:?}; known: {}",
                        q.status,
                        DeliveryStatus::ALL.map(DeliveryStatus::as_str).join(", ")
                    ),
                );
            }
            parsed
        };
        if q.event_id.len() > 128 {
            v.push("event_id", "event_id is at most 128 characters");
        }
        let filters = format!(
            "{}|{}|{}|{}",
            account.as_str(),
            q.endpoint_id,
            q.status,
            q.event_id
        );
        let before = decode_token(&q.page_token, "deliveries", &filters, &mut v);
        if before
            .as_deref()
            .is_some_and(|b| WebhookDeliveryId::parse(b).is_none())
        {
            v.push(
                "page_token",
                "page_token is not a token this service issued",
            );
        }
        v.into_result(|| Some(()))
            .map_err(RefundError::InvalidArgument)?;
        if let Some(endpoint) = &endpoint
            && self
                .store()
                .webhook_endpoint(account, endpoint)
                .await
                .map_err(internal)?
                .is_none()
        {
            return Err(endpoint_not_found(endpoint));
        }
        let filter = DeliveryFilter {
            endpoint_id: endpoint,
            status,
            event_id: (!q.event_id.is_empty()).then_some(q.event_id),
        };
        let mut deliveries = self
            .store()
            .list_webhook_deliveries(account, &filter, before.as_deref(), u64::from(size) + 1)
            .await
            .map_err(internal)?;
        let next_page_token = if deliveries.len() > size as usize {
            deliveries.truncate(size as usize);
            deliveries
                .last()
                .map(|d| encode_token("deliveries", d.id.as_str(), &filters))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(DeliveryPage {
            deliveries,
            next_page_token,
        })
    }

    /// Sends a delivery again now, with a new retry window, whatever its status.
    pub async fn retry_webhook_delivery(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<WebhookDelivery, RefundError> {
        let parsed = WebhookDeliveryId::parse(id).ok_or_else(|| {
            RefundError::invalid("id", "a delivery id is whd_ followed by 32 hex digits")
        })?;
        let delivery = self
            .store()
            .retry_webhook_delivery(account, &parsed, self.clock().now())
            .await
            .map_err(internal)?
            .ok_or_else(|| RefundError::NotFound {
                what: "webhook delivery",
                id: parsed.as_str().to_owned(),
            })?;
        self.inner.webhook_wakeup.notify_one();
        Ok(delivery)
    }

    /// Sends the endpoint every kept event after sequence `after` again. Returns how many of
    /// them it had deliveries of (those are re-armed; the rest are made by the next fan-out).
    pub async fn replay_webhook_events(
        &self,
        account: &AccountId,
        id: &str,
        after: u64,
    ) -> Result<u64, RefundError> {
        let mut v = Violations::default();
        let id = endpoint_id("endpoint_id", id, &mut v);
        let id = v.into_result(|| id).map_err(RefundError::InvalidArgument)?;
        let rearmed = self
            .store()
            .replay_webhook_events(account, &id, after, self.clock().now())
            .await
            .map_err(internal)?
            .ok_or_else(|| endpoint_not_found(&id))?;
        self.inner.webhook_wakeup.notify_one();
        Ok(rearmed)
    }

    /// The URL, checked by the SSRF guard under this server's policy.
    fn endpoint_url(&self, url: &str, v: &mut Violations) -> Option<String> {
        match Endpoint::parse(url, self.config().webhooks.policy) {
            Ok(e) => Some(e.as_str().to_owned()),
            Err(e) => {
                v.push("url", e.to_string());
                None
            }
        }
    }

    // === the dispatcher ===

    /// One round: fan out every enabled endpoint, then send what is due until nothing is.
    /// Returns how many attempts it made.
    pub async fn dispatch_webhooks_once(&self) -> Result<usize, RefundError> {
        let endpoints = self
            .store()
            .enabled_webhook_endpoints()
            .await
            .map_err(internal)?;
        if endpoints.is_empty() {
            self.metrics().set_webhook_queue(0, 0);
            return Ok(0);
        }
        for stored in &endpoints {
            let mut endpoint = stored.endpoint.clone();
            // Catch up in batches; stop when another replica moved the cursor.
            loop {
                let now = self.clock().now();
                match self
                    .store()
                    .fan_out(&endpoint, FAN_OUT_BATCH, now)
                    .await
                    .map_err(internal)?
                {
                    Some(_) => {}
                    None => break,
                }
                let Some(fresh) = self
                    .store()
                    .webhook_endpoint(&endpoint.account, &endpoint.id)
                    .await
                    .map_err(internal)?
                else {
                    break;
                };
                if fresh.endpoint.cursor == endpoint.cursor {
                    break;
                }
                endpoint = fresh.endpoint;
            }
        }
        let send = *self.inner.webhook_sender.config();
        let mut attempts = 0;
        let mut endpoints = Some(endpoints);
        loop {
            // Read again for each batch after the first: a long round must not sign with a
            // rotated secret or send to a URL changed meanwhile.
            let current = match endpoints.take() {
                Some(e) => e,
                None => self
                    .store()
                    .enabled_webhook_endpoints()
                    .await
                    .map_err(internal)?,
            };
            let endpoints: HashMap<WebhookEndpointId, Arc<StoredEndpoint>> = current
                .into_iter()
                .map(|s| (s.endpoint.id.clone(), Arc::new(s)))
                .collect();
            let now = self.clock().now();
            let lease_until = now
                .saturating_add(send.attempt_bound())
                .saturating_add(self.config().lease_margin);
            let claimed = self
                .store()
                .claim_deliveries(now, lease_until, CLAIM_BATCH)
                .await
                .map_err(internal)?;
            if claimed.is_empty() {
                break;
            }
            let n = claimed.len();
            attempts += n;
            let events: HashMap<_, Event> = self
                .store()
                .events_by_id(claimed.iter().map(|d| &d.event_id))
                .await
                .map_err(internal)?
                .into_iter()
                .map(|e| (e.id.clone(), e))
                .collect();
            let mut tasks = tokio::task::JoinSet::new();
            for delivery in claimed {
                let service = self.clone();
                let endpoint = endpoints.get(&delivery.endpoint_id).cloned();
                let event = events.get(&delivery.event_id).cloned();
                tasks.spawn(async move {
                    service
                        .attempt(delivery, endpoint.as_deref(), event.as_ref())
                        .await
                });
            }
            // Successes are written together, by status code (one statement each).
            let mut delivered: HashMap<u16, Vec<WebhookDelivery>> = HashMap::new();
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some((delivery, status)))) => {
                        delivered.entry(status).or_default().push(delivery);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = ?anyhow::Error::new(e), "recording a webhook delivery failed")
                    }
                    Err(e) => tracing::error!(error = %e, "a webhook delivery task failed"),
                }
            }
            let now = self.clock().now();
            for (status, list) in &delivered {
                let refs: Vec<&WebhookDelivery> = list.iter().collect();
                self.store()
                    .deliveries_succeeded(&refs, lease_until, *status, now)
                    .await
                    .map_err(internal)?;
            }
            if (n as u64) < CLAIM_BATCH {
                break;
            }
        }
        let stats = self.store().webhook_queue_stats().await.map_err(internal)?;
        let now = self.clock().now();
        let oldest = stats.oldest_created_at.map_or(0, |t| {
            u64::try_from(now.as_micros().saturating_sub(t.as_micros()) / 1_000_000).unwrap_or(0)
        });
        self.metrics().set_webhook_queue(stats.depth, oldest);
        Ok(attempts)
    }

    /// One attempt of a claimed delivery. A failure is recorded here; a success is returned,
    /// with the answer's status, for the round to record with the others.
    async fn attempt(
        &self,
        delivery: WebhookDelivery,
        endpoint: Option<&StoredEndpoint>,
        event: Option<&Event>,
    ) -> Result<Option<(WebhookDelivery, u16)>, crate::store::StoreError> {
        let span = tracing::info_span!(
            "webhook.deliver",
            otel.kind = "client",
            webhook.endpoint_id = %delivery.endpoint_id,
            webhook.delivery_id = %delivery.id,
            event.id = %delivery.event_id,
            event.type = delivery.event_type.as_str(),
            webhook.attempt = delivery.attempts,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        async {
            // An endpoint enabled or made since this round listed them.
            let reloaded;
            let endpoint = match endpoint {
                Some(e) => Some(e),
                None => {
                    reloaded = self
                        .store()
                        .webhook_endpoint(&delivery.account, &delivery.endpoint_id)
                        .await?;
                    match &reloaded {
                        Some(e) if e.endpoint.enabled => Some(e),
                        // Disabled or deleted meanwhile: it waits (a claim skips disabled
                        // endpoints' deliveries) or is gone with its endpoint.
                        _ => return Ok(None),
                    }
                }
            };
            let outcome = match (endpoint, event) {
                (Some(endpoint), Some(event)) => self.send_one(&delivery, endpoint, event).await,
                (_, None) | (None, _) => SendOutcome::NoAnswer {
                    error: "the event is past its retention".to_owned(),
                },
            };
            let delivered = self
                .record(&delivery, endpoint, event.is_some(), outcome)
                .await?;
            Ok(delivered.map(|status| (delivery, status)))
        }
        .instrument(span)
        .await
    }

    async fn send_one(
        &self,
        delivery: &WebhookDelivery,
        stored: &StoredEndpoint,
        event: &Event,
    ) -> SendOutcome {
        let secrets = match self.signing_secrets(stored) {
            Ok(s) => s,
            Err(e) => return SendOutcome::NoAnswer { error: e },
        };
        let body = match event.envelope_json() {
            Ok(b) => b,
            Err(e) => {
                return SendOutcome::NoAnswer {
                    error: format!("the event does not serialize: {e}"),
                };
            }
        };
        let headers = crate::telemetry::trace_headers();
        let timestamp_secs = self.clock().now().as_micros() / 1_000_000;
        tracing::debug!(endpoint_id = %delivery.endpoint_id, event_id = %event.id, "sending webhook");
        self.inner
            .webhook_sender
            .send(Outbound {
                url: &stored.endpoint.url,
                id: event.id.as_str(),
                timestamp_secs,
                body: body.as_bytes(),
                secrets: &secrets,
                extra_headers: &headers,
            })
            .await
    }

    /// The secrets that sign for `stored` now: the current one, and the previous one while its
    /// overlap lasts.
    fn signing_secrets(&self, stored: &StoredEndpoint) -> Result<Vec<WebhookSecret>, String> {
        let vault = self.inner.connections.vault().map_err(|e| e.to_string())?;
        let id = stored.endpoint.id.as_str();
        let open = |sealed: &str| {
            vault
                .open(id, sealed)
                .map_err(|e| {
                    format!(
                        "the endpoint's secret does not open with this server's secrets key: {e}"
                    )
                })
                .and_then(|s| {
                    WebhookSecret::parse(s.expose()).map_err(|e| format!("stored secret: {e}"))
                })
        };
        let mut secrets = vec![open(&stored.secret_sealed)?];
        let now = self.clock().now();
        if let (Some(sealed), Some(until)) = (
            &stored.previous_secret_sealed,
            stored.endpoint.previous_secret_expires_at,
        ) && now < until
        {
            secrets.push(open(sealed)?);
        }
        Ok(secrets)
    }

    async fn record(
        &self,
        delivery: &WebhookDelivery,
        endpoint: Option<&StoredEndpoint>,
        event_exists: bool,
        outcome: SendOutcome,
    ) -> Result<Option<u16>, crate::store::StoreError> {
        let span = tracing::Span::current();
        let now = self.clock().now();
        let (code, error) = match outcome {
            SendOutcome::Delivered { status } => {
                span.record("http.response.status_code", status);
                self.metrics().webhook_attempt("delivered");
                return Ok(Some(status));
            }
            SendOutcome::Refused { status, body } => {
                span.record("http.response.status_code", status);
                span.record("error.type", status.to_string());
                span.record("otel.status_code", "ERROR");
                let body = body.trim();
                let error = if body.is_empty() {
                    format!("the endpoint answered {status}")
                } else {
                    format!("the endpoint answered {status}: {body}")
                };
                (Some(status), error)
            }
            SendOutcome::NoAnswer { error } => {
                span.record("error.type", "no_answer");
                span.record("otel.status_code", "ERROR");
                (None, error)
            }
        };
        let retry = &self.config().webhooks.retry;
        // An event past its retention is no fault of the endpoint's: the delivery ends, and the
        // endpoint's failure streak is left alone.
        let endpoint_failed = event_exists && endpoint.is_some();
        let retry_at = if endpoint_failed {
            retry.next_attempt(delivery.attempts, delivery.window_started_at, now)
        } else {
            None
        };
        self.metrics().webhook_attempt(if retry_at.is_some() {
            "retrying"
        } else {
            "failed"
        });
        tracing::info!(
            endpoint_id = %delivery.endpoint_id,
            event_id = %delivery.event_id,
            attempt = delivery.attempts,
            status = ?code,
            error = %error,
            retry_at = ?retry_at,
            "webhook delivery attempt failed"
        );
        let Some(failing_since) = self
            .store()
            .delivery_failed(delivery, code, &error, retry_at, endpoint_failed, now)
            .await?
        else {
            // The claim no longer holds (re-armed by a retry or replay, or re-claimed after its
            // lease): the row is someone else's now.
            return Ok(None);
        };
        if let (Some(since), Some(_)) = (failing_since, endpoint)
            && retry.endpoint_exhausted(
                since,
                retry_at.is_none().then_some(delivery.window_started_at),
                now,
            )
        {
            let reason = format!(
                "every delivery attempt failed since {} (a {} retry window); last: {error}",
                crate::domain::rfc3339(since),
                humantime::format_duration(retry.window),
            );
            if self
                .store()
                .disable_failing_endpoint(&delivery.endpoint_id, since, &reason, now)
                .await?
            {
                tracing::warn!(endpoint_id = %delivery.endpoint_id, %reason, "webhook endpoint disabled");
            }
        }
        Ok(None)
    }

    /// Deletes finished deliveries older than the events' retention. Returns how many.
    pub async fn prune_webhook_deliveries(&self) -> Result<u64, RefundError> {
        let cutoff = self
            .clock()
            .now()
            .saturating_sub(self.config().event_retention);
        let mut pruned = 0;
        loop {
            let n = self
                .store()
                .prune_webhook_deliveries(cutoff, PRUNE_SLICE)
                .await
                .map_err(internal)?;
            pruned += n;
            if n < PRUNE_SLICE {
                return Ok(pruned);
            }
        }
    }
}

/// Runs the dispatcher until `shutdown` completes: a round whenever this process appends events
/// (or is asked to retry or replay), when another replica announces events, and every
/// `poll_interval` for retries coming due.
pub async fn run_webhook_dispatcher(service: RefundService, shutdown: impl Future<Output = ()>) {
    let mut appended = service.store().events_appended();
    let mut remote = service.inner.remote_events.subscribe();
    let poll = service.config().webhooks.poll_interval;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // During a batch, events are appended hundreds of times a second; one round per wake-up
    // would be a stream of queries competing with the batch for the database (SQLite has one
    // connection). Wake-ups that come within this gap of the last round are served together.
    let gap = poll.min(MAX_ROUND_GAP);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
            Ok(()) = appended.changed() => {}
            Ok(()) = remote.changed() => {}
            () = service.inner.webhook_wakeup.notified() => {}
        }
        tokio::select! {
            // A round cut short leaves its claimed deliveries to be sent again when their lease
            // ends: at least once.
            () = &mut shutdown => return,
            round = service.dispatch_webhooks_once() => {
                if let Err(e) = round {
                    tracing::error!(error = ?anyhow::Error::new(e), "webhook dispatch round failed");
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(gap) => {}
        }
    }
}

fn endpoint_id(field: &str, id: &str, v: &mut Violations) -> Option<WebhookEndpointId> {
    let parsed = WebhookEndpointId::parse(id);
    if parsed.is_none() {
        v.push(
            field,
            format!(
                "a webhook endpoint id is {}followed by 32 hex digits",
                WebhookEndpointId::PREFIX
            ),
        );
    }
    parsed
}

fn endpoint_event_types(names: &[String], v: &mut Violations) -> BTreeSet<EventType> {
    super::events::event_types("event_types", names, v)
        .into_iter()
        .collect()
}

fn check_description(d: &str, v: &mut Violations) {
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        v.push(
            "description",
            format!("the description is at most {MAX_DESCRIPTION_CHARS} characters"),
        );
    }
    if d.chars().any(char::is_control) {
        v.push("description", "the description contains control characters");
    }
}

fn endpoint_not_found(id: &WebhookEndpointId) -> RefundError {
    RefundError::NotFound {
        what: "webhook endpoint",
        id: id.as_str().to_owned(),
    }
}

fn unreadable(id: &WebhookEndpointId, e: crate::vault::OpenError) -> RefundError {
    tracing::error!(endpoint_id = %id, error = %e, "webhook secret does not open");
    RefundError::NotSetUp {
        reason: "SECRET_UNREADABLE",
        message: format!(
            "the signing secret of webhook endpoint {id} cannot be opened with this server's \
             secrets key: {e}"
        ),
    }
}
