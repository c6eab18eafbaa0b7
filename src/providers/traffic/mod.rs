//! Traffic control in front of one payment provider: a token-bucket rate limit, a bound on calls
//! in flight, a timeout per attempt, retries with exponential back-off and a circuit breaker.
//!
//! [`ControlledProvider`] wraps any [`Provider`] and is itself one, so the service does not know
//! whether a provider is controlled. What it adds must never break the money rules:
//!
//! - Reads (`get_payment`, `get_refund`, `find_refund`) are repeated freely on anything that may
//!   be transient.
//! - A creation is repeated only with the *same* [`RefundCall`] (so the same idempotency key), and
//!   only when the provider certainly did not process it (429, 5xx before processing). After an
//!   ambiguous failure (timeout, lost answer) the refund is looked up first; it is sent again only
//!   when the provider says it has never seen it. When it cannot be looked up, or attempts run
//!   out, the ambiguous error is returned so the caller leaves the refund PENDING for the
//!   reconciler. A timeout is never reported as a failure.
//!
//! Everything here reads time through `tokio::time` (including the rate limiter's clock), so the
//! tests run on paused time and are deterministic.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument as _;

mod breaker;
use breaker::{Admission, Breaker, BreakerState, PROBE_POLL, Transition};

use super::{Capabilities, Provider, ProviderError, ProviderPayment, ProviderRefund, RefundCall};
use crate::domain::PaymentRef;
use crate::metrics::{Metrics, TrafficEvent};

/// How much traffic one provider gets, and how hard we try before giving up.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Calls per second to this provider (retries and look-ups included), for reads and for
    /// writes (refund creations) separately, as Stripe counts them; 0 means unlimited. A refund
    /// is a read (its pre-flight) plus a write, so one shared bucket would halve the refund rate
    /// the provider allows. Each bucket holds `max(1, rate / 10)` tokens, i.e. a tenth of a second
    /// worth of calls: enough to absorb a small burst, small enough that a queue of waiting
    /// calls is released evenly instead of in one spike that would itself draw 429s.
    pub rate_per_sec: u32,
    /// Calls in flight at once to this provider. 0 is treated as 1.
    pub max_concurrency: usize,
    /// Longest wait for one attempt; past it the attempt is a [`ProviderError::Timeout`].
    pub call_timeout: Duration,
    /// Attempts per operation, the first one included. 0 is treated as 1.
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles for each further retry, with up to 100% random
    /// jitter so that callers failing together do not retry together, and never exceeds
    /// `max_backoff`.
    pub base_backoff: Duration,
    /// Upper bound of a retry delay. A provider asking (with `Retry-After`) for a longer pause
    /// than this gets no retry from here: the 429 is returned, with its `retry_after`, to the
    /// caller, which can schedule the work later instead of holding a request open.
    pub max_backoff: Duration,
    /// Consecutive "provider is down" failures (unavailable, timeout, ambiguous) that open the
    /// circuit. 0 disables the breaker.
    pub breaker_threshold: u32,
    /// How long an open circuit fails calls fast before one probe is let through.
    pub breaker_open_for: Duration,
}

impl TrafficConfig {
    /// The longest one operation can take here, every attempt, back-off and the look-up after an
    /// ambiguous failure included: what a caller should wait before treating it as timed out.
    pub fn budget(&self) -> Duration {
        let attempts = self.max_attempts.max(1);
        (self.call_timeout + self.max_backoff)
            .saturating_mul(attempts)
            .saturating_add(self.call_timeout)
    }
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: 0,
            max_concurrency: 64,
            call_timeout: Duration::from_secs(10),
            max_attempts: 4,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(30),
        }
    }
}

/// The circuit breaker's state as reported by [`ControlledProvider::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail fast without reaching the provider.
    Open,
    /// The open period is over: the next call (or the one in flight) is the probe that decides
    /// whether the circuit closes again; other calls still fail fast.
    HalfOpen,
}

/// What a future `ListProviders` RPC can show about one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderHealth {
    pub circuit: CircuitState,
    /// "Down" failures since the last clear answer.
    pub consecutive_failures: u32,
    /// The most recent "down" failure, kept after recovery for diagnosis.
    pub last_error: Option<String>,
}

/// Whether calls can go to the provider now, for callers that can wait rather than fail (the
/// bulk runner holds a provider's jobs while it is [`Availability::Waiting`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Ready,
    Waiting {
        /// Why, e.g. "circuit open: provider unavailable: HTTP 500".
        reason: String,
        /// When a call may go through again (the circuit's probe, or the end of the pause the
        /// provider asked for); zero when that is now.
        retry_in: Duration,
    },
}

/// Counters since the provider was wrapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Attempts that reached the provider, look-ups included.
    pub calls: u64,
    /// Attempts made after a first one, in any operation (a look-up that settles an ambiguous
    /// creation is counted in `ambiguous_lookups`, not here).
    pub retries: u64,
    /// Calls our own rate limiter made wait.
    pub rate_limit_waits: u64,
    /// 429 answers from the provider.
    pub rate_limited_by_provider: u64,
    /// Times the circuit opened (re-opening after a failed probe included).
    pub breaker_opened: u64,
    /// Look-ups made to resolve an ambiguous creation.
    pub ambiguous_lookups: u64,
    /// Calls failed fast by the open circuit, without reaching the provider.
    pub short_circuited: u64,
}

/// This process's share of every provider's rate budget. A provider's limit belongs to the
/// provider account, not to a process: replicas sharing a database each take the budget
/// divided by the replicas alive (counted by their heartbeats, see
/// `service::run_replica_heartbeat`), and only while the others count this one — a replica
/// whose own heartbeat is stale may be counted out by the others, who then take its share, so it
/// makes no call until it is counted again. Alone (SQLite, or no heartbeat at all) it has the
/// whole budget.
#[derive(Debug)]
pub struct BudgetShare {
    replicas: AtomicU32,
    /// Until when the other replicas count this one; `None` when there are none to share with.
    counted_until: Mutex<Option<Instant>>,
}

impl BudgetShare {
    /// The whole budget, for a process that shares it with nobody.
    pub fn alone() -> Arc<Self> {
        Arc::new(Self {
            replicas: AtomicU32::new(1),
            counted_until: Mutex::new(None),
        })
    }

    /// `replicas` (this one included) share the budgets, and the others count this one until
    /// `counted_until`.
    pub fn set(&self, replicas: u32, counted_until: Instant) {
        self.replicas.store(replicas.max(1), Ordering::Relaxed);
        *self
            .counted_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(counted_until);
    }

    /// How many replicas share the budgets.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// Whether the other replicas count this one now.
    fn counted(&self) -> bool {
        self.counted_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|until| Instant::now() < until)
    }
}

/// The token buckets of one provider for this replica's share of its budget.
struct Buckets {
    /// The replicas the budget was divided by.
    replicas: u32,
    /// `None` when the rate is unlimited.
    read: Option<Limiter>,
    write: Option<Limiter>,
}

impl Buckets {
    /// Buckets of `rate / replicas` calls per second each, holding a tenth of a second's worth
    /// (at least one call).
    fn new(rate: u32, replicas: u32) -> Self {
        let limiter = || {
            if rate == 0 {
                return None;
            }
            let replicas = replicas.max(1);
            // One call every replicas/rate seconds: exact for any share, below one per second too.
            let period = Duration::from_nanos(
                (1_000_000_000u64 * u64::from(replicas)).div_ceil(u64::from(rate)),
            );
            let burst = NonZeroU32::new(rate / replicas / 10).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period)?.allow_burst(burst);
            Some(RateLimiter::direct_with_clock(quota, TokioClock::new()))
        };
        Self {
            replicas,
            read: limiter(),
            write: limiter(),
        }
    }
}

/// A [`Provider`] with traffic control in front of another one. See the module documentation.
pub struct ControlledProvider {
    /// For logs only.
    name: String,
    inner: Arc<dyn Provider>,
    config: TrafficConfig,
    /// This replica's share of the budget, rebuilt when the number of replicas changes.
    buckets: RwLock<Arc<Buckets>>,
    share: Arc<BudgetShare>,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
    /// Where its traffic is counted: the process's Prometheus metrics, or its own until
    /// [`ControlledProvider::with_metrics`].
    metrics: Arc<Metrics>,
}

/// The one write operation; every other operation is a read.
const CREATE_REFUND: &str = "create_refund";

/// How often a replica the others do not count checks whether it is counted again.
const NOT_COUNTED_POLL: Duration = Duration::from_millis(50);

/// governor's token bucket, on tokio's clock.
type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

impl ControlledProvider {
    /// Wraps `inner`. Out-of-range settings are clamped (see [`TrafficConfig`]) rather than
    /// rejected: none of them can make a call unsafe, only slower or faster.
    pub fn new(name: &str, inner: Arc<dyn Provider>, mut config: TrafficConfig) -> Self {
        config.max_attempts = config.max_attempts.max(1);
        config.max_concurrency = config.max_concurrency.clamp(1, Semaphore::MAX_PERMITS);
        config.base_backoff = config.base_backoff.min(config.max_backoff);
        Self {
            name: name.to_owned(),
            inner,
            permits: Semaphore::new(config.max_concurrency),
            buckets: RwLock::new(Arc::new(Buckets::new(config.rate_per_sec, 1))),
            share: BudgetShare::alone(),
            breaker: Mutex::new(Breaker::new()),
            metrics: Arc::new(Metrics::new()),
            config,
        }
    }

    /// Also reports calls, retries, rate-limit waits and circuit state to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Takes only `share` of the rate budget: the replicas sharing it divide it.
    pub fn with_share(mut self, share: Arc<BudgetShare>) -> Self {
        self.share = share;
        self
    }

    /// The buckets for the current number of replicas.
    fn buckets(&self) -> Arc<Buckets> {
        let replicas = self.share.replicas();
        let current = self
            .buckets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if current.replicas == replicas {
            return current;
        }
        let mut buckets = self.buckets.write().unwrap_or_else(PoisonError::into_inner);
        if buckets.replicas != replicas {
            tracing::info!(provider = %self.name, replicas, rate = self.config.rate_per_sec, "replicas changed; taking an even share of the provider's rate budget");
            *buckets = Arc::new(Buckets::new(self.config.rate_per_sec, replicas));
        }
        buckets.clone()
    }

    /// The circuit's state, for operators.
    pub fn health(&self) -> ProviderHealth {
        let breaker = self.breaker();
        let circuit = match breaker.state {
            BreakerState::Closed => CircuitState::Closed,
            BreakerState::HalfOpen => CircuitState::HalfOpen,
            BreakerState::Open { since } if since.elapsed() >= self.config.breaker_open_for => {
                CircuitState::HalfOpen
            }
            BreakerState::Open { .. } => CircuitState::Open,
        };
        ProviderHealth {
            circuit,
            consecutive_failures: breaker.consecutive_failures,
            last_error: breaker.last_error.clone(),
        }
    }

    /// Whether calls go through now. While the circuit is open, calls fail fast until its open
    /// period ends; while the probe is in flight, until it answers; after a 429 whose
    /// `Retry-After` was longer than we wait for ourselves, calls would only draw more 429s
    /// until that time.
    pub fn availability(&self) -> Availability {
        let now = Instant::now();
        let breaker = self.breaker();
        let circuit = match breaker.state {
            BreakerState::Closed => None,
            BreakerState::Open { since } => Some(
                self.config
                    .breaker_open_for
                    .saturating_sub(now.duration_since(since)),
            ),
            // The probe answers within one call timeout.
            BreakerState::HalfOpen => Some(PROBE_POLL.min(self.config.call_timeout)),
        };
        if let Some(retry_in) = circuit {
            return Availability::Waiting {
                reason: match &breaker.last_error {
                    Some(last) => format!("circuit open: {last}"),
                    None => "circuit open".to_owned(),
                },
                retry_in,
            };
        }
        match breaker.paused_until {
            Some(until) if until > now => Availability::Waiting {
                reason: "rate limited by the provider (Retry-After)".to_owned(),
                retry_in: until - now,
            },
            _ if !self.share.counted() => Availability::Waiting {
                reason: "this replica's heartbeat is stale: the other replicas may have taken \
                         its share of the provider's rate limit"
                    .to_owned(),
                retry_in: NOT_COUNTED_POLL,
            },
            _ => Availability::Ready,
        }
    }

    /// What traffic control has done with this provider's calls, from its metrics.
    pub fn stats(&self) -> TrafficStats {
        let get = |event| self.metrics.traffic_count(&self.name, event);
        TrafficStats {
            calls: get(TrafficEvent::Call),
            retries: get(TrafficEvent::Retry),
            rate_limit_waits: get(TrafficEvent::RateLimitWait),
            rate_limited_by_provider: get(TrafficEvent::RateLimitedByProvider),
            breaker_opened: get(TrafficEvent::CircuitOpened),
            ambiguous_lookups: get(TrafficEvent::AmbiguousLookup),
            short_circuited: get(TrafficEvent::ShortCircuited),
        }
    }

    fn count(&self, event: TrafficEvent) {
        self.metrics.traffic(&self.name, event);
    }

    /// A read, repeated on anything that may be transient: repeating a read cannot move money.
    async fn read<T, F, Fut>(&self, op: &'static str, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut backoff = self.backoff();
        let mut attempt = 1;
        loop {
            let error = match self.attempt(op, attempt, None, &mut call).await {
                Ok(value) => return Ok(value),
                Err(Attempt::ShortCircuited(e)) => return Err(e),
                Err(Attempt::Failed(e)) => e,
            };
            let retryable = match &error {
                ProviderError::NotFound(_) | ProviderError::Rejected { .. } => false,
                ProviderError::RateLimited { .. }
                | ProviderError::Unavailable(_)
                | ProviderError::Timeout
                | ProviderError::Ambiguous(_) => true,
            };
            if !retryable {
                return Err(error);
            }
            let Some(delay) = self.retry_delay(op, attempt, &error, &mut backoff) else {
                return Err(error);
            };
            tokio::time::sleep(delay).await;
            self.count(TrafficEvent::Retry);
            attempt += 1;
        }
    }

    /// A creation. Re-sent (always the same `call`, so the same idempotency key) only when the
    /// provider certainly did not process the previous attempt: it said so (429, unavailable),
    /// or a look-up after an ambiguous failure found nothing.
    async fn create(&self, call: &RefundCall) -> Result<ProviderRefund, ProviderError> {
        const OP: &str = CREATE_REFUND;
        let mut backoff = self.backoff();
        let mut attempt = 1;
        // The first ambiguous answer, once there was one. A look-up that found nothing makes it
        // safe to send again with the same key, but not to believe a later refusal: the earlier
        // attempt may still be in flight at the provider, or have made the refund that the
        // refusal ("already refunded") is about.
        let mut maybe_processed: Option<ProviderError> = None;
        loop {
            // Invariant: every earlier attempt was ambiguous and looked up without result, or
            // certainly not processed. Failing fast here (circuit open) or with `Unavailable`
            // leaves the refund PENDING, which is the truth either way.
            let error = match self
                .attempt(OP, attempt, Some(&call.idempotency_key), || {
                    self.inner.create_refund(call)
                })
                .await
            {
                Ok(refund) => return Ok(refund),
                Err(Attempt::ShortCircuited(e)) => return Err(e),
                Err(Attempt::Failed(e)) => e,
            };
            match &error {
                ProviderError::NotFound(_) | ProviderError::Rejected { .. } => {
                    return Err(match maybe_processed {
                        Some(ambiguous) => {
                            tracing::warn!(provider = %self.name, attempt, error = %error, earlier = %ambiguous, "a refusal after an ambiguous attempt proves nothing about that attempt; the refund stays unresolved");
                            ambiguous
                        }
                        None => error,
                    });
                }
                ProviderError::RateLimited { .. } | ProviderError::Unavailable(_) => {
                    let Some(delay) = self.retry_delay(OP, attempt, &error, &mut backoff) else {
                        return Err(error);
                    };
                    tokio::time::sleep(delay).await;
                }
                ProviderError::Timeout | ProviderError::Ambiguous(_)
                    if !self.inner.capabilities().refund_lookup =>
                {
                    // Nothing can tell whether it was made, so nothing is sent again: the
                    // refund stays PENDING until the provider's notification settles it.
                    tracing::warn!(provider = %self.name, attempt, error = %error, "the creation was ambiguous and this provider cannot be asked about refunds; not sending it again");
                    return Err(maybe_processed.unwrap_or(error));
                }
                ProviderError::Timeout | ProviderError::Ambiguous(_) => {
                    maybe_processed.get_or_insert_with(|| error.clone());
                    let Some(delay) = self.retry_delay(OP, attempt, &error, &mut backoff) else {
                        // The caller leaves the refund PENDING; the reconciler looks it up.
                        return Err(error);
                    };
                    // Waiting first also gives a slow provider time to finish what it may
                    // still be processing, so the look-up is more likely to see it.
                    tokio::time::sleep(delay).await;
                    self.count(TrafficEvent::AmbiguousLookup);
                    let lookup = || self.inner.find_refund(&call.payment, &call.idempotency_key);
                    match self
                        .attempt("find_refund", attempt, Some(&call.idempotency_key), lookup)
                        .await
                    {
                        Ok(Some(refund)) => {
                            tracing::info!(provider = %self.name, attempt, "the refund whose creation was ambiguous was found at the provider");
                            return Ok(refund);
                        }
                        Ok(None) => {
                            tracing::info!(provider = %self.name, attempt, "the provider never received the ambiguous creation; sending it again with the same idempotency key");
                        }
                        Err(
                            Attempt::ShortCircuited(lookup_error) | Attempt::Failed(lookup_error),
                        ) => {
                            // Sending again without knowing could only be safe if every
                            // provider honoured idempotency keys perfectly; we do not rely on it.
                            tracing::warn!(provider = %self.name, attempt, error = %error, lookup_error = %lookup_error, "the ambiguous creation could not be looked up; not sending it again");
                            return Err(error);
                        }
                    }
                }
            }
            self.count(TrafficEvent::Retry);
            attempt += 1;
        }
    }

    /// One attempt in its own client span (rate-limit waits and the outcome recorded on it).
    /// `refund_id` is the idempotency key, which is our refund id, when the call has one.
    async fn attempt<T, Fut>(
        &self,
        op: &'static str,
        number: u32,
        refund_id: Option<&str>,
        call: impl FnOnce() -> Fut,
    ) -> Result<T, Attempt>
    where
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let span = tracing::info_span!(
            "provider",
            otel.name = format!("{} {op}", self.name),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            provider = %self.name,
            operation = op,
            attempt = i64::from(number),
            refund_id = refund_id,
            error = tracing::field::Empty,
            // Recorded by adapters that speak HTTP (`send_traced`).
            http.request.method = tracing::field::Empty,
            url.template = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self.attempt_inner(op, call).instrument(span.clone()).await;
        if let Err(Attempt::Failed(e) | Attempt::ShortCircuited(e)) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error", tracing::field::display(e));
        }
        {
            let metrics = &self.metrics;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(Attempt::ShortCircuited(_)) => "short_circuited",
                Err(Attempt::Failed(e)) => match e {
                    ProviderError::NotFound(_) => "not_found",
                    ProviderError::Rejected { .. } => "rejected",
                    ProviderError::RateLimited { .. } => "rate_limited",
                    ProviderError::Unavailable(_) => "unavailable",
                    ProviderError::Timeout => "timeout",
                    ProviderError::Ambiguous(_) => "ambiguous",
                },
            };
            metrics.observe_provider_call(&self.name, op, outcome, started.elapsed().as_secs_f64());
            metrics.set_circuit_open(&self.name, self.health().circuit == CircuitState::Open);
        }
        result
    }

    /// One attempt: circuit, concurrency permit, rate limit, then the call under the timeout.
    async fn attempt_inner<T, Fut>(
        &self,
        op: &'static str,
        call: impl FnOnce() -> Fut,
    ) -> Result<T, Attempt>
    where
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        // Fail fast before queueing for a permit or a token: an open circuit must cost nothing.
        let precheck = self.breaker().precheck(Instant::now(), &self.config);
        precheck.map_err(|e| self.short_circuit(op, e))?;
        let _permit = self.permits.acquire().await.map_err(|_| {
            // The semaphore is never closed; if it were, nothing was sent.
            Attempt::Failed(ProviderError::Unavailable(
                "concurrency limiter closed".to_owned(),
            ))
        })?;
        self.wait_for_rate_limit(op).await;
        // Decided again now that we are about to call: the circuit may have opened while we
        // waited, and only here is the half-open probe claimed, so the probe cannot sit in a
        // queue while every other call fails fast.
        let admitted = self.breaker().admit(Instant::now(), &self.config);
        let ticket = Ticket {
            owner: self,
            admission: admitted.map_err(|e| self.short_circuit(op, e))?,
            settled: false,
        };
        self.count(TrafficEvent::Call);
        let result = tokio::time::timeout(self.config.call_timeout, call())
            .await
            .unwrap_or(Err(ProviderError::Timeout));
        if let Err(ProviderError::RateLimited { .. }) = &result {
            self.count(TrafficEvent::RateLimitedByProvider);
        }
        ticket.settle(result.as_ref().err());
        result.map_err(Attempt::Failed)
    }

    fn short_circuit(&self, op: &'static str, error: ProviderError) -> Attempt {
        self.count(TrafficEvent::ShortCircuited);
        tracing::debug!(provider = %self.name, operation = op, "circuit open; failing fast");
        Attempt::ShortCircuited(error)
    }

    /// Waits until our own token bucket lets one call through. governor's `until_ready` sleeps
    /// on a real-time timer, so we check and sleep with tokio instead: with `TokioClock` this
    /// follows `tokio::time::pause` in tests.
    async fn wait_for_rate_limit(&self, op: &'static str) {
        if self.config.rate_per_sec == 0 {
            return;
        }
        let mut waited = Duration::ZERO;
        loop {
            // Not counted by the other replicas, this one has no share.
            while !self.share.counted() {
                waited += NOT_COUNTED_POLL;
                tokio::time::sleep(NOT_COUNTED_POLL).await;
            }
            let buckets = self.buckets();
            let limiter = if op == CREATE_REFUND {
                &buckets.write
            } else {
                &buckets.read
            };
            let Some(limiter) = limiter else {
                return;
            };
            match limiter.check() {
                Ok(()) => break,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    waited += wait;
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if !waited.is_zero() {
            self.count(TrafficEvent::RateLimitWait);
            // A debug event: not logged by default, but an event of the attempt's span in traces.
            tracing::debug!(provider = %self.name, operation = op, waited = ?waited, "waited for our own rate limit");
        }
    }

    /// Exponential, jittered delays for one operation's retries.
    fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.config.base_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The delay before attempt `attempt + 1`, or `None` when there is to be no such attempt.
    /// Logs the decision.
    fn retry_delay(
        &self,
        op: &'static str,
        attempt: u32,
        error: &ProviderError,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> Option<Duration> {
        if attempt >= self.config.max_attempts {
            tracing::debug!(provider = %self.name, operation = op, attempt, error = %error, "no attempts left");
            return None;
        }
        // Waiting out the back-off only to be failed fast would hide the real error.
        if self
            .breaker()
            .precheck(Instant::now(), &self.config)
            .is_err()
        {
            tracing::debug!(provider = %self.name, operation = op, attempt, error = %error, "circuit open; not retrying");
            return None;
        }
        // backon's jitter can add up to one more delay on top: cap after it.
        let backoff = backoff
            .next()
            .unwrap_or(self.config.max_backoff)
            .min(self.config.max_backoff);
        let delay = match error {
            ProviderError::RateLimited {
                retry_after: Some(retry_after),
            } => {
                if *retry_after > self.config.max_backoff {
                    self.breaker().pause_until(Instant::now() + *retry_after);
                    tracing::debug!(provider = %self.name, operation = op, attempt, retry_after = ?retry_after, "the provider asks for a longer pause than we wait for; giving up");
                    return None;
                }
                *retry_after
            }
            ProviderError::NotFound(_)
            | ProviderError::Rejected { .. }
            | ProviderError::RateLimited { retry_after: None }
            | ProviderError::Unavailable(_)
            | ProviderError::Timeout
            | ProviderError::Ambiguous(_) => backoff,
        };
        if let ProviderError::RateLimited { .. } = error {
            tracing::debug!(provider = %self.name, operation = op, attempt, error = %error, retry_in = ?delay, "rate limited by the provider; retrying");
        } else {
            tracing::warn!(provider = %self.name, operation = op, attempt, error = %error, ambiguous = error.is_ambiguous(), retry_in = ?delay, "provider call failed; trying again");
        }
        Some(delay)
    }

    fn breaker(&self) -> MutexGuard<'_, Breaker> {
        // Nothing panics while holding the lock; if something did, the state is still usable.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Provider for ControlledProvider {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    /// Inbound: no traffic control, only the adapter's verification.
    fn read_webhook(
        &self,
        delivery: &super::WebhookDelivery<'_>,
    ) -> Result<super::WebhookEvent, super::WebhookRejection> {
        self.inner.read_webhook(delivery)
    }

    fn webhook_ack(&self) -> Option<&'static str> {
        self.inner.webhook_ack()
    }

    async fn get_payment(&self, payment: &PaymentRef) -> Result<ProviderPayment, ProviderError> {
        self.read("get_payment", || self.inner.get_payment(payment))
            .await
    }

    async fn create_refund(&self, call: &RefundCall) -> Result<ProviderRefund, ProviderError> {
        self.create(call).await
    }

    async fn get_refund(&self, provider_refund_id: &str) -> Result<ProviderRefund, ProviderError> {
        self.read("get_refund", || self.inner.get_refund(provider_refund_id))
            .await
    }

    async fn find_refund(
        &self,
        payment: &PaymentRef,
        idempotency_key: &str,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        self.read("find_refund", || {
            self.inner.find_refund(payment, idempotency_key)
        })
        .await
    }
}

/// Why an attempt produced no value.
enum Attempt {
    /// The circuit is open: the provider was not called, and retrying now would not call it
    /// either, so the operation ends here.
    ShortCircuited(ProviderError),
    /// The provider was called (or timed out).
    Failed(ProviderError),
}

/// governor's clock over `tokio::time::Instant`, as an offset from when it was made.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

/// An admitted attempt. Settled with its outcome; dropped unsettled (cancelled), it releases the
/// half-open probe.
struct Ticket<'a> {
    owner: &'a ControlledProvider,
    admission: Admission,
    settled: bool,
}

impl Ticket<'_> {
    fn settle(mut self, error: Option<&ProviderError>) {
        self.settled = true;
        let owner = self.owner;
        let transition =
            owner
                .breaker()
                .record(self.admission, error, Instant::now(), &owner.config);
        match transition {
            Some(Transition::Opened) => {
                owner.count(TrafficEvent::CircuitOpened);
                tracing::warn!(provider = %owner.name, error = ?error.map(ToString::to_string), open_for = ?owner.config.breaker_open_for, "circuit opened; calls fail fast");
            }
            Some(Transition::Closed) => {
                tracing::info!(provider = %owner.name, "probe succeeded; circuit closed");
            }
            None => {}
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let owner = self.owner;
            owner
                .breaker()
                .abandon_probe(self.admission, Instant::now(), &owner.config);
        }
    }
}

#[cfg(test)]
mod tests;
