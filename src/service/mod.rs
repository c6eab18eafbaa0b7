//! The refund use cases: create, get, list, and the reconciler that settles PENDING refunds.
//!
//! Order of work in a creation, which is what keeps the money rules:
//! 1. an idempotency key already stored answers with the original refund, with no provider call;
//! 2. pre-flight at the provider (captured amount, currency, status);
//! 3. one transaction stores the refund PENDING and reserves its amount with a conditional write;
//! 4. only then the provider is called, with the refund id as its idempotency key;
//! 5. a clear answer settles the refund; an ambiguous one (timeout, lost connection) leaves it
//!    PENDING for the reconciler, which looks it up at the provider before anything is re-sent.

mod approval;
mod audit;
mod bulk;
mod bulk_runner;
mod changes;
mod clock;
mod connections;
pub mod context;
mod events;
mod keys;
mod list;
mod page;
mod reconciler;
mod replicas;
mod subscriptions;
mod watch;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{
    AccountId, ApiKeyId, Failure, NewRefund, Refund, RefundError, RefundId, RefundStatus, Route,
    Timestamp,
};
use crate::metrics::Metrics;
use crate::providers::traffic::Availability;
use crate::providers::{
    PaymentStatus, Provider, ProviderError, ProviderRefund, ProviderRefundStatus, Providers,
    RefundCall,
};
use crate::store::{BeginOutcome, BeginRefund, Settlement, Store, StoreError};

pub use audit::{AuditPage, AuditQuery};
pub use bulk::BulkConfig;
pub use bulk_runner::run_bulk_runner;
pub use clock::Clock;
pub use connections::{Connections, NewConnection};
pub use events::{EventPage, EventQuery};
pub use keys::{bootstrap_admin_key, create_api_key};
pub use list::{ListPage, ListQuery, MAX_PAGE_SIZE};
pub use reconciler::run_reconciler;
pub use replicas::ReplicaHeartbeat;
pub use subscriptions::{
    DeliveryPage, DeliveryQuery, EndpointUpdate, NewEndpoint, WebhooksConfig,
    run_webhook_dispatcher,
};
pub use webhooks::WebhookReceipt;

/// The shortest retry delay told to a client: "now" would only invite a busy loop.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Tunables of the refund use cases.
#[derive(Debug, Clone)]
pub struct RefundsConfig {
    /// Longest wait for one provider operation, its retries included. Past it the outcome is
    /// unknown, not failed: the refund stays PENDING for the reconciler.
    pub provider_budget: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// First look-up of a refund left PENDING; later look-ups back off exponentially.
    pub reconcile_delay: Duration,
    /// Longest gap between two look-ups of a PENDING refund.
    pub reconcile_max_delay: Duration,
    /// How often the reconciler wakes up to look for due refunds.
    pub reconcile_interval: Duration,
    /// How often a WatchRefund stream re-reads its refund, to see changes made by other replicas
    /// (changes made by this process wake it at once).
    pub watch_poll_interval: Duration,
    /// How much longer a lease lasts than the provider work it protects: room for the clocks of
    /// replicas to disagree. A holder stops its provider call this long before its lease ends.
    pub lease_margin: Duration,
    /// Provider calls (creations and look-ups) after which a refund the provider has never seen
    /// is given up as FAILED and its amount released.
    pub max_attempts: i32,
    /// A refund of a provider that settles only by webhook, PENDING for longer than this, is
    /// counted in `refund_webhook_only_pending_overdue` and logged by the reconciler: its
    /// notification may be lost, and nobody can ask the provider.
    pub webhook_only_pending_alert: Duration,
    /// How long events are kept for ListEvents, WatchEvents and webhook replays.
    pub event_retention: Duration,
    /// How long an API key that checked out is trusted without asking the database again: the
    /// longest a revocation takes to apply (on PostgreSQL a notice applies it at once, unless
    /// lost). Zero asks on every call.
    pub api_key_cache_ttl: Duration,
    /// Webhooks to subscribers: the SSRF policy, timeout and retries.
    pub webhooks: WebhooksConfig,
    pub bulk: BulkConfig,
}

impl Default for RefundsConfig {
    fn default() -> Self {
        Self {
            provider_budget: Duration::from_secs(60),
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            reconcile_delay: Duration::from_secs(60),
            reconcile_max_delay: Duration::from_secs(60 * 60),
            reconcile_interval: Duration::from_secs(5),
            watch_poll_interval: Duration::from_secs(1),
            lease_margin: Duration::from_secs(5),
            max_attempts: 10,
            webhook_only_pending_alert: Duration::from_secs(24 * 60 * 60),
            event_retention: Duration::from_secs(30 * 24 * 60 * 60),
            api_key_cache_ttl: Duration::from_secs(1),
            webhooks: WebhooksConfig::default(),
            bulk: BulkConfig::default(),
        }
    }
}

#[derive(Clone)]
pub struct RefundService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    providers: Providers,
    connections: Connections,
    config: RefundsConfig,
    metrics: Arc<Metrics>,
    /// Wakes this process's bulk runner when a batch is created or canceled here.
    bulk_wakeup: tokio::sync::Notify,
    /// Bumped whenever bulk events are written, here or (by notice) on another replica;
    /// streams wait on it, and poll in case a notice was lost.
    bulk_events: tokio::sync::watch::Sender<u64>,
    clock: Clock,
    /// Bumped whenever a refund's status or provider id changes, here or (by notice) on
    /// another replica; WatchRefund streams wait on it, and poll in case a notice was lost.
    refund_changes: tokio::sync::watch::Sender<u64>,
    /// Bumped when another replica announces client events; WatchEvents streams wait on it and
    /// on the store's own (this process's appends).
    remote_events: tokio::sync::watch::Sender<u64>,
    /// This process's changes, for the other replicas.
    changes: changes::ChangeFeed,
    /// Wakes this process's webhook dispatcher after a retry or replay is asked for here.
    webhook_wakeup: tokio::sync::Notify,
    /// Sends webhooks to subscribers, keeping a pinned HTTP client per endpoint host.
    webhook_sender: crate::webhooks_out::sender::Sender,
    /// API keys that checked out recently (`keys.rs`).
    key_cache: keys::KeyCache,
}

impl RefundService {
    pub fn new(
        store: Store,
        providers: Providers,
        connections: Connections,
        config: RefundsConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                webhook_sender: crate::webhooks_out::sender::Sender::new(
                    crate::webhooks_out::sender::SendConfig {
                        policy: config.webhooks.policy,
                        timeout: config.webhooks.timeout,
                    },
                ),
                key_cache: keys::KeyCache::new(config.api_key_cache_ttl),
                store,
                providers,
                connections,
                config,
                metrics,
                bulk_wakeup: tokio::sync::Notify::new(),
                bulk_events: tokio::sync::watch::Sender::new(0),
                refund_changes: tokio::sync::watch::Sender::new(0),
                remote_events: tokio::sync::watch::Sender::new(0),
                changes: changes::ChangeFeed::new(),
                webhook_wakeup: tokio::sync::Notify::new(),
                clock: Clock::default(),
            }),
        }
    }

    /// The clock refunds are scheduled by.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn providers(&self) -> &Providers {
        &self.inner.providers
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &RefundsConfig {
        &self.inner.config
    }

    fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A refund for `account`, asked for by the API key `created_by`.
    pub async fn create_refund(
        &self,
        account: &AccountId,
        created_by: Option<&ApiKeyId>,
        request: NewRefund,
    ) -> Result<Refund, RefundError> {
        self.create(account, created_by, request, Origin::API).await
    }

    /// A refund for a request (`origin` says whose). A bulk job skips the read of its idempotency
    /// key up front: its key is almost never known yet, and the store still returns the original
    /// refund (without a second provider call) when it is.
    pub(super) async fn create(
        &self,
        account: &AccountId,
        created_by: Option<&ApiKeyId>,
        request: NewRefund,
        origin: Origin,
    ) -> Result<Refund, RefundError> {
        let Inner { store, config, .. } = &*self.inner;
        let (route, provider) = self.route_new(account, &request.provider).await?;
        let now = self.clock().now();
        let fingerprint = request.fingerprint();

        if origin.read_key_first
            && let Some(key) = &request.idempotency_key
            && let Some((stored, refund)) = store
                .find_idempotent(account, key, now)
                .await
                .map_err(internal)?
        {
            return if stored == fingerprint {
                Ok(refund)
            } else {
                Err(RefundError::IdempotencyKeyReused {
                    key: key.as_str().to_owned(),
                })
            };
        }

        let payment = if !provider.capabilities().payment_lookup {
            self.notified_payment(&request, &route).await?
        } else {
            self.call(provider.get_payment(&request.payment))
                .await
                .map_err(|e| match e {
                    ProviderError::NotFound(_) => RefundError::PaymentNotFound {
                        payment: request.payment.clone(),
                        provider: request.provider.clone(),
                    },
                    ProviderError::Rejected { code, message } => RefundError::invalid(
                        "payment_id",
                        format!("the provider refused to look the payment up: {code}: {message}"),
                    ),
                    ProviderError::RateLimited { .. }
                    | ProviderError::Unavailable(_)
                    | ProviderError::Timeout
                    | ProviderError::Ambiguous(_) => {
                        // When to try again, from the provider's Retry-After or our circuit.
                        let retry_after = match (&e, provider.availability()) {
                            (
                                ProviderError::RateLimited {
                                    retry_after: Some(d),
                                },
                                _,
                            ) => Some(*d),
                            (_, Availability::Waiting { retry_in, .. }) => {
                                Some(retry_in.max(MIN_RETRY_AFTER))
                            }
                            (_, Availability::Ready) => None,
                        };
                        RefundError::ProviderUnavailable {
                            provider: request.provider.clone(),
                            message: e.to_string(),
                            retry_after,
                            transient: true,
                        }
                    }
                })?
        };
        match payment.status {
            PaymentStatus::Captured => {}
            PaymentStatus::NotRefundable(status) => {
                return Err(RefundError::PaymentNotRefundable {
                    payment: request.payment.clone(),
                    status,
                });
            }
        }
        if payment.currency != request.currency {
            return Err(RefundError::invalid(
                "currency",
                format!(
                    "currency {} does not match the payment's currency {}",
                    request.currency, payment.currency
                ),
            ));
        }

        // The provider's amounts are its word, not ours: out of range, they are an answer we
        // cannot use, never an overflow. More refunded than captured leaves nothing.
        let provider_remaining = (payment.captured >= 0 && payment.refunded >= 0)
            .then(|| payment.captured.checked_sub(payment.refunded))
            .flatten()
            .ok_or_else(|| RefundError::ProviderUnavailable {
                provider: request.provider.clone(),
                message: format!(
                    "the provider reported unusable amounts for payment {}: captured {}, refunded {}",
                    request.payment.as_str(),
                    payment.captured,
                    payment.refunded
                ),
                retry_after: None,
                transient: false,
            })?
            .max(0);

        let request_id = context::request_id();
        // The lease starts now, when the refund is stored, not when the request arrived: the
        // pre-flight above may have taken most of a provider budget.
        let stored_at = self.clock().now();
        let lease_until = stored_at.saturating_add(self.request_lease());
        let outcome = store
            .begin_refund(BeginRefund {
                id: RefundId::generate(),
                account,
                request: &request,
                fingerprint: &fingerprint,
                captured: payment.captured,
                provider_remaining,
                now: stored_at,
                lease_until,
                idempotency_expires_at: stored_at.saturating_add(config.idempotency_ttl),
                source: origin.source,
                created_by,
                request_id: request_id.as_deref(),
                route: &route,
            })
            .await
            .map_err(internal)?;
        match outcome {
            BeginOutcome::Created(refund) => {
                self.inner
                    .metrics
                    .refund(refund.provider.as_str(), refund.status.as_str());
                if refund.status == RefundStatus::RequiresApproval {
                    tracing::info!(refund_id = %refund.id, amount = refund.amount.minor_units(), "refund above the approval threshold; waiting for approval");
                    return Ok(refund);
                }
                self.submit(provider.as_ref(), refund, origin, lease_until)
                    .await
            }
            BeginOutcome::Replayed(refund) => Ok(refund),
            BeginOutcome::KeyReused => Err(RefundError::IdempotencyKeyReused {
                key: request
                    .idempotency_key
                    .map(|k| k.as_str().to_owned())
                    .unwrap_or_default(),
            }),
            BeginOutcome::OverRefund { remaining } => Err(RefundError::OverRefund {
                requested: request.amount.map_or(remaining, |a| a.minor_units()),
                remaining,
                currency: request.currency,
            }),
            BeginOutcome::AlreadyRefunded => Err(RefundError::AlreadyRefunded {
                payment: request.payment,
            }),
            // Another account refunds this payment here: to this one, it does not exist.
            BeginOutcome::ConnectionDeleted => Err(RefundError::NotSetUp {
                reason: "CONNECTION_DELETED",
                message: format!(
                    "the account's {} connection was deleted while the refund was being made; \
                     nothing was sent, try again",
                    request.provider
                ),
            }),
            BeginOutcome::PaymentNotOwned => Err(RefundError::PaymentNotFound {
                payment: request.payment,
                provider: request.provider,
            }),
        }
    }

    /// The pre-flight of a provider that cannot be asked about payments: the capture its
    /// notifications left in our ledger (refunds made elsewhere are its to refuse; our own
    /// reservations are counted by the store).
    async fn notified_payment(
        &self,
        request: &NewRefund,
        route: &Route,
    ) -> Result<crate::providers::ProviderPayment, RefundError> {
        let Some((captured, currency)) = self
            .inner
            .store
            .notified_capture(&request.provider, route, &request.payment)
            .await
            .map_err(internal)?
        else {
            let title = crate::providers::registry::spec(request.provider.as_str())
                .map_or(request.provider.as_str(), |s| s.title);
            return Err(RefundError::CaptureNotNotified {
                payment: request.payment.clone(),
                provider: request.provider.clone(),
                title: title.to_owned(),
            });
        };
        Ok(crate::providers::ProviderPayment {
            id: request.payment.as_str().to_owned(),
            captured,
            refunded: 0,
            currency,
            status: PaymentStatus::Captured,
        })
    }

    pub async fn get_refund(
        &self,
        account: &AccountId,
        id: &RefundId,
    ) -> Result<Refund, RefundError> {
        self.inner
            .store
            .get_refund(account, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| RefundError::RefundNotFound {
                id: id.as_str().to_owned(),
            })
    }

    /// How long the request path owns a refund it just stored before the reconciler may take it
    /// over: long enough for its provider call, retries included, to finish or give up.
    fn request_lease(&self) -> Duration {
        self.inner.config.provider_budget + self.inner.config.lease_margin
    }

    /// A provider operation bounded by the provider budget. Running out of time is `Timeout`:
    /// the provider may still have acted.
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout(self.inner.config.provider_budget, fut)
            .await
            .unwrap_or(Err(ProviderError::Timeout))
    }

    /// How long work under a lease ending at `lease_until` may still run: until `lease_margin`
    /// before the lease ends, so that nobody who takes the refund over after the lease can
    /// overlap with it. `None` when that time has passed.
    fn time_left(&self, lease_until: Timestamp) -> Option<Duration> {
        let end = lease_until.as_micros().saturating_sub(
            i64::try_from(self.inner.config.lease_margin.as_micros()).unwrap_or(i64::MAX),
        );
        let left = end.saturating_sub(self.clock().now().as_micros());
        (left > 0).then(|| Duration::from_micros(left.unsigned_abs()))
    }

    /// A provider operation under a lease: bounded by the provider budget and by the lease, and
    /// not started at all when the lease leaves no time. Running out of time is `Timeout`.
    async fn call_within<T>(
        &self,
        lease_until: Timestamp,
        fut: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let Some(left) = self.time_left(lease_until) else {
            return Err(ProviderError::Timeout);
        };
        tokio::time::timeout(left.min(self.inner.config.provider_budget), fut)
            .await
            .unwrap_or(Err(ProviderError::Timeout))
    }

    /// Sends a stored PENDING refund to its provider and records the answer. The caller holds
    /// the refund's lease until `lease_until`; the provider call ends before it does (and is not
    /// started when too little of it is left), so whoever takes the refund over after the lease
    /// never sends while this attempt can still be in flight.
    async fn submit(
        &self,
        provider: &dyn Provider,
        refund: Refund,
        origin: Origin,
        lease_until: Timestamp,
    ) -> Result<Refund, RefundError> {
        if self.time_left(lease_until).is_none() {
            tracing::warn!(refund_id = %refund.id, "the lease ran out before the refund could be sent; it stays PENDING for the reconciler");
            return Ok(refund);
        }
        let mut metadata = refund.metadata.clone();
        metadata.insert("refund_id".to_owned(), refund.id.as_str().to_owned());
        let call = RefundCall {
            payment: refund.payment.clone(),
            amount: refund.amount,
            currency: refund.currency,
            reason: refund.reason,
            metadata,
            idempotency_key: refund.provider_idempotency_key().to_owned(),
        };
        let answer = self
            .call_within(lease_until, provider.create_refund(&call))
            .await;
        match answer {
            Ok(provider_refund) => self.apply(refund, provider_refund, 0, origin).await,
            Err(ProviderError::Rejected { code, message }) => {
                self.finish(
                    refund,
                    Failure {
                        code,
                        reason: message,
                    },
                    origin,
                )
                .await
            }
            Err(ProviderError::NotFound(message)) => {
                let failure = Failure {
                    code: "payment_not_found".to_owned(),
                    reason: message,
                };
                self.finish(refund, failure, origin).await
            }
            Err(
                e @ (ProviderError::RateLimited { .. }
                | ProviderError::Unavailable(_)
                | ProviderError::Timeout
                | ProviderError::Ambiguous(_)),
            ) => {
                tracing::warn!(
                    refund_id = %refund.id,
                    error = %e,
                    ambiguous = e.is_ambiguous(),
                    "refund left PENDING; the reconciler will look it up at the provider"
                );
                let retry_after = match &e {
                    ProviderError::RateLimited { retry_after } => *retry_after,
                    _ => None,
                };
                let next = self.clock().now().saturating_add(
                    retry_after
                        .unwrap_or(self.inner.config.reconcile_delay)
                        .max(self.inner.config.reconcile_delay),
                );
                self.inner
                    .store
                    .keep_pending(&refund.id, None, next)
                    .await
                    .map_err(internal)?;
                Ok(refund)
            }
        }
    }

    /// Records a provider's view of a refund. `attempts` is how many provider calls were made for
    /// it so far and sets the back-off of the next look-up if it stays PENDING.
    async fn apply(
        &self,
        refund: Refund,
        provider_refund: ProviderRefund,
        attempts: i32,
        origin: Origin,
    ) -> Result<Refund, RefundError> {
        let to = match &provider_refund.status {
            ProviderRefundStatus::Pending => {
                let next = self.clock().now().saturating_add(self.backoff(attempts));
                self.inner
                    .store
                    .keep_pending(&refund.id, Some(&provider_refund.id), next)
                    .await
                    .map_err(internal)?;
                if refund.provider_refund_id.as_deref() != Some(provider_refund.id.as_str()) {
                    self.refund_changed();
                }
                return self.reread(refund).await;
            }
            ProviderRefundStatus::Succeeded => RefundStatus::Succeeded,
            ProviderRefundStatus::Failed { .. } => RefundStatus::Failed,
            ProviderRefundStatus::Canceled => RefundStatus::Canceled,
        };
        let failure = match provider_refund.status {
            ProviderRefundStatus::Failed { code, reason } => Some(Failure { code, reason }),
            ProviderRefundStatus::Pending
            | ProviderRefundStatus::Succeeded
            | ProviderRefundStatus::Canceled => None,
        };
        self.settle(
            refund,
            Settlement {
                from: RefundStatus::Pending,
                to,
                provider_refund_id: Some(provider_refund.id),
                failure,
                source: origin.source,
                approved_by: None,
                lease_until: None,
                actor: None,
                request_id: context::request_id(),
            },
        )
        .await
    }

    async fn finish(
        &self,
        refund: Refund,
        failure: Failure,
        origin: Origin,
    ) -> Result<Refund, RefundError> {
        self.settle(
            refund,
            Settlement {
                from: RefundStatus::Pending,
                to: RefundStatus::Failed,
                provider_refund_id: None,
                failure: Some(failure),
                source: origin.source,
                approved_by: None,
                lease_until: None,
                actor: None,
                request_id: context::request_id(),
            },
        )
        .await
    }

    async fn settle(&self, refund: Refund, s: Settlement) -> Result<Refund, RefundError> {
        match self.try_settle(&refund, s).await? {
            Some(settled) => Ok(settled),
            // Someone else (the reconciler, another replica) settled it first: report theirs.
            None => self.reread(refund).await,
        }
    }

    /// Applies `s` if the refund is still in `s.from`: the refund as this call left it, or
    /// `None` when someone else moved it first (then this caller owns nothing, whatever the
    /// refund reads like now).
    async fn try_settle(
        &self,
        refund: &Refund,
        s: Settlement,
    ) -> Result<Option<Refund>, RefundError> {
        match self
            .inner
            .store
            .settle(&refund.id, s)
            .await
            .map_err(internal)?
        {
            Some(settled) => {
                self.refund_changed();
                let metrics = &self.inner.metrics;
                metrics.refund(settled.provider.as_str(), settled.status.as_str());
                if settled.status == RefundStatus::Succeeded {
                    metrics.refunded(settled.currency.code(), settled.amount.minor_units());
                }
                Ok(Some(settled))
            }
            None => Ok(None),
        }
    }

    async fn reread(&self, refund: Refund) -> Result<Refund, RefundError> {
        self.inner
            .store
            .get_refund(&refund.account, &refund.id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                RefundError::Internal(anyhow::anyhow!("refund {} disappeared", refund.id))
            })
    }

    fn backoff(&self, attempts: i32) -> Duration {
        backoff(&self.inner.config, attempts)
    }
}

/// Delay before the next look-up after `attempts` provider calls: doubling from the first
/// reconcile delay, capped.
fn backoff(c: &RefundsConfig, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(0);
    c.reconcile_delay
        .saturating_mul(1u32 << doublings)
        .min(c.reconcile_max_delay)
}

/// Who asked for a refund's provider call: recorded in its status history, and whether to
/// answer a known idempotency key from the store before anything else.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    source: &'static str,
    read_key_first: bool,
}

impl Origin {
    const API: Self = Self {
        source: "api",
        read_key_first: true,
    };
    const RECONCILER: Self = Self {
        source: "reconciler",
        read_key_first: true,
    };
    const BULK: Self = Self {
        source: "bulk",
        read_key_first: false,
    };
}

fn internal(e: StoreError) -> RefundError {
    RefundError::Internal(anyhow::Error::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let config = RefundsConfig {
            reconcile_delay: Duration::from_secs(60),
            reconcile_max_delay: Duration::from_secs(600),
            ..RefundsConfig::default()
        };
        let delays: Vec<u64> = (0..8).map(|a| backoff(&config, a).as_secs()).collect();
        assert_eq!(delays, [60, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(backoff(&config, i32::MAX), Duration::from_secs(600));
        assert_eq!(backoff(&config, -3), Duration::from_secs(60));
    }
}
