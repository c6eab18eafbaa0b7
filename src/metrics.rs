//! Prometheus metrics, served as text on the HTTP port at `GET /metrics`.
//!
//! One [`Metrics`] is made per [`crate::app::Application`] and shared as `Arc<Metrics>`; there
//! is no global registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderCallLabels {
    provider: String,
    operation: String,
    /// `ok`, or the kind of error (`rejected`, `not_found`, `rate_limited`, `unavailable`,
    /// `timeout`, `ambiguous`, `short_circuited`).
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    provider: String,
    /// A [`TrafficEvent`]'s name.
    event: &'static str,
}

/// What traffic control did with a provider's calls, counted in `provider_traffic_events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficEvent {
    /// An attempt that reached the provider (look-ups included).
    Call,
    /// An attempt made after a first one.
    Retry,
    /// An attempt that waited for our own rate limiter.
    RateLimitWait,
    /// A 429 from the provider.
    RateLimitedByProvider,
    /// The circuit breaker opened.
    CircuitOpened,
    /// A look-up made because a creation's outcome was ambiguous.
    AmbiguousLookup,
    /// An attempt failed fast by an open circuit, never sent.
    ShortCircuited,
}

impl TrafficEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Retry => "retry",
            Self::RateLimitWait => "rate_limit_wait",
            Self::RateLimitedByProvider => "rate_limited_by_provider",
            Self::CircuitOpened => "circuit_opened",
            Self::AmbiguousLookup => "ambiguous_lookup",
            Self::ShortCircuited => "short_circuited",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefundLabels {
    provider: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CurrencyLabels {
    currency: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The service's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc_duration: HistogramFamily<RpcLabels>,
    provider_duration: HistogramFamily<ProviderCallLabels>,
    provider_retries: Family<ProviderLabels, Counter>,
    rate_limit_waits: Family<ProviderLabels, Counter>,
    provider_traffic: Family<TrafficLabels, Counter>,
    circuit_open: Family<ProviderLabels, Gauge>,
    refunds: Family<RefundLabels, Counter>,
    refunded_minor_units: Family<CurrencyLabels, Counter>,
    bulk_jobs_in_flight: Gauge,
    bulk_jobs_queued: Gauge,
    replicas: Gauge,
    bulk_provider_wait: Family<ProviderLabels, Counter<f64, AtomicU64>>,
    bulk_jobs_held: Family<ProviderLabels, Gauge>,
    webhook_only_overdue: Family<ProviderLabels, Gauge>,
    webhook_attempts: Family<OutcomeLabels, Counter>,
    webhook_queue_depth: Gauge,
    webhook_oldest_pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("refund");
        let rpc_duration: HistogramFamily<RpcLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "rpc_duration_seconds",
            "gRPC server call duration until the response headers, by method and grpc-status code",
            rpc_duration.clone(),
        );
        let provider_duration: HistogramFamily<ProviderCallLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "provider_request_duration_seconds",
            "Provider call duration per attempt, by provider, operation and outcome",
            provider_duration.clone(),
        );
        let provider_retries = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_retries",
            "Provider calls made again after a retryable failure",
            provider_retries.clone(),
        );
        let rate_limit_waits = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_rate_limit_waits",
            "Provider calls that waited for our own rate limiter",
            rate_limit_waits.clone(),
        );
        let provider_traffic = Family::<TrafficLabels, Counter>::default();
        registry.register(
            "provider_traffic_events",
            "What traffic control did with provider calls, by provider and event (call, retry, rate_limit_wait, rate_limited_by_provider, circuit_opened, ambiguous_lookup, short_circuited)",
            provider_traffic.clone(),
        );
        let circuit_open = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_circuit_open",
            "1 while a provider's circuit breaker is open (calls fail fast), else 0",
            circuit_open.clone(),
        );
        let refunds = Family::<RefundLabels, Counter>::default();
        registry.register(
            "refunds",
            "Refunds created (status pending) and settled, by provider and status",
            refunds.clone(),
        );
        let refunded_minor_units = Family::<CurrencyLabels, Counter>::default();
        registry.register(
            "refunded_minor_units",
            "Money refunded (refunds that succeeded), in minor units, by currency",
            refunded_minor_units.clone(),
        );
        let bulk_jobs_in_flight = Gauge::default();
        registry.register(
            "bulk_jobs_in_flight",
            "Bulk jobs being run by this process",
            bulk_jobs_in_flight.clone(),
        );
        let bulk_jobs_queued = Gauge::default();
        registry.register(
            "bulk_jobs_queued",
            "Jobs of running batches not yet handed to a worker (all replicas; read at scrape time)",
            bulk_jobs_queued.clone(),
        );
        let replicas = Gauge::default();
        registry.register(
            "replicas",
            "Live replicas of the database sharing each provider's rate budget (this one included; 1 on SQLite)",
            replicas.clone(),
        );
        replicas.set(1);
        let bulk_provider_wait = Family::<ProviderLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "bulk_provider_wait_seconds",
            "Time batches spent holding a provider's jobs while it was unavailable (summed over batches)",
            bulk_provider_wait.clone(),
        );
        let bulk_jobs_held = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "bulk_jobs_held",
            "Bulk jobs this process holds back, queued, until their provider answers again",
            bulk_jobs_held.clone(),
        );
        let webhook_only_overdue = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "webhook_only_pending_overdue",
            "Refunds of a provider that settles them only by webhook (no look-up) that have been PENDING longer than --webhook-only-pending-alert (all replicas; set by the reconciler pass)",
            webhook_only_overdue.clone(),
        );
        let webhook_attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_delivery_attempts",
            "Attempts to deliver an event to a subscriber's webhook endpoint, by outcome: delivered (2xx), retrying (will be tried again), failed (gave up after the retry window)",
            webhook_attempts.clone(),
        );
        let webhook_queue_depth = Gauge::default();
        registry.register(
            "webhook_deliveries_pending",
            "Webhook deliveries of enabled endpoints not delivered yet (all replicas; set by the dispatcher)",
            webhook_queue_depth.clone(),
        );
        let webhook_oldest_pending = Gauge::default();
        registry.register(
            "webhook_oldest_pending_seconds",
            "Age of the oldest webhook delivery not delivered yet, 0 when none (all replicas; set by the dispatcher)",
            webhook_oldest_pending.clone(),
        );
        Self {
            webhook_attempts,
            webhook_queue_depth,
            webhook_oldest_pending,
            webhook_only_overdue,
            bulk_provider_wait,
            bulk_jobs_held,
            bulk_jobs_queued,
            replicas,
            registry,
            rpc_duration,
            provider_duration,
            provider_retries,
            rate_limit_waits,
            provider_traffic,
            circuit_open,
            refunds,
            refunded_minor_units,
            bulk_jobs_in_flight,
        }
    }

    /// One webhook delivery attempt: `delivered`, `retrying` or `failed`.
    pub fn webhook_attempt(&self, outcome: &'static str) {
        self.webhook_attempts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The delivery queue as the dispatcher last read it.
    pub fn set_webhook_queue(&self, depth: u64, oldest_age_secs: u64) {
        self.webhook_queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.webhook_oldest_pending
            .set(i64::try_from(oldest_age_secs).unwrap_or(i64::MAX));
    }

    /// One provider call attempt.
    pub fn observe_provider_call(
        &self,
        provider: &str,
        operation: &str,
        outcome: &str,
        seconds: f64,
    ) {
        self.provider_duration
            .get_or_create(&ProviderCallLabels {
                provider: provider.to_owned(),
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts one traffic-control event of `provider` (retries and rate-limit waits also in
    /// their own, older series).
    pub fn traffic(&self, provider: &str, event: TrafficEvent) {
        match event {
            TrafficEvent::Retry => {
                self.provider_retries
                    .get_or_create(&provider_labels(provider))
                    .inc();
            }
            TrafficEvent::RateLimitWait => {
                self.rate_limit_waits
                    .get_or_create(&provider_labels(provider))
                    .inc();
            }
            _ => {}
        }
        self.provider_traffic
            .get_or_create(&TrafficLabels {
                provider: provider.to_owned(),
                event: event.as_str(),
            })
            .inc();
    }

    /// How many `event`s `provider` has had.
    pub fn traffic_count(&self, provider: &str, event: TrafficEvent) -> u64 {
        self.provider_traffic
            .get_or_create(&TrafficLabels {
                provider: provider.to_owned(),
                event: event.as_str(),
            })
            .get()
    }

    pub fn set_circuit_open(&self, provider: &str, open: bool) {
        self.circuit_open
            .get_or_create(&provider_labels(provider))
            .set(i64::from(open));
    }

    /// A refund reached `status` (`pending` when created).
    pub fn refund(&self, provider: &str, status: &str) {
        self.refunds
            .get_or_create(&RefundLabels {
                provider: provider.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// Money that went back to a customer.
    pub fn refunded(&self, currency: &str, minor_units: i64) {
        self.refunded_minor_units
            .get_or_create(&CurrencyLabels {
                currency: currency.to_owned(),
            })
            .inc_by(u64::try_from(minor_units).unwrap_or(0));
    }

    pub fn bulk_jobs_started(&self, n: usize) {
        self.bulk_jobs_in_flight
            .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_bulk_jobs_queued(&self, n: i64) {
        self.bulk_jobs_queued.set(n);
    }

    /// The replicas sharing the provider budgets, as this one last counted them.
    pub fn set_replicas(&self, n: u32) {
        self.replicas.set(i64::from(n));
    }

    /// A batch waited `seconds` more for `provider`.
    pub fn bulk_provider_waited(&self, provider: &str, seconds: f64) {
        self.bulk_provider_wait
            .get_or_create(&provider_labels(provider))
            .inc_by(seconds);
    }

    /// Jobs held back for `provider` grew (or, negative, shrank) by `delta`.
    pub fn bulk_jobs_held(&self, provider: &str, delta: i64) {
        self.bulk_jobs_held
            .get_or_create(&provider_labels(provider))
            .inc_by(delta);
    }

    /// Sets how many of `provider`'s webhook-only refunds are overdue; returns the value before.
    pub fn set_webhook_only_overdue(&self, provider: &str, n: u64) -> i64 {
        self.webhook_only_overdue
            .get_or_create(&provider_labels(provider))
            .set(i64::try_from(n).unwrap_or(i64::MAX))
    }

    pub fn bulk_jobs_finished(&self, n: usize) {
        self.bulk_jobs_in_flight
            .dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One gRPC call: `method` is the full path's `Service/Method`, `code` its grpc-status.
    pub fn observe_rpc(&self, method: &str, code: i32, seconds: f64) {
        self.rpc_duration
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code,
            })
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn provider_labels(provider: &str) -> ProviderLabels {
    ProviderLabels {
        provider: provider.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rpc_durations() {
        let metrics = Metrics::new();
        metrics.observe_rpc("refunds.v1.RefundService/CreateRefund", 0, 0.01);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"refund_rpc_duration_seconds_count{method="refunds.v1.RefundService/CreateRefund",code="0"} 1"#
            ),
            "{text}"
        );
    }
}
