//! Traffic control under paused time: limits, retries, the breaker, ambiguity.
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicUsize;

use tokio::task::JoinSet;

use super::*;
use crate::domain::{Amount, Currency, RefundReason};
use crate::providers::{PaymentStatus, ProviderRefundStatus};
use std::sync::atomic::Ordering;

const KEY: &str = "rf_0123456789abcdef0123456789abcdef";

/// One scripted answer, given after `delay` (the fake's latency when `None`).
struct Step<T> {
    delay: Option<Duration>,
    answer: Result<T, ProviderError>,
}

fn ok<T>(value: T) -> Step<T> {
    Step {
        delay: None,
        answer: Ok(value),
    }
}

fn err<T>(error: ProviderError) -> Step<T> {
    Step {
        delay: None,
        answer: Err(error),
    }
}

fn after<T>(delay: Duration, answer: Result<T, ProviderError>) -> Step<T> {
    Step {
        delay: Some(delay),
        answer,
    }
}

/// An answer that comes far too late: the attempt times out.
fn hang<T>() -> Step<T> {
    after(
        Duration::from_secs(3600),
        Err(ProviderError::Unavailable("too late".into())),
    )
}

fn unavailable() -> ProviderError {
    ProviderError::Unavailable("503".into())
}

/// Answers per operation, in order. When a queue is empty, `get_payment` succeeds and the
/// others say "not found".
#[derive(Default)]
struct Script {
    payments: VecDeque<Step<ProviderPayment>>,
    creates: VecDeque<Step<ProviderRefund>>,
    refunds: VecDeque<Step<ProviderRefund>>,
    finds: VecDeque<Step<Option<ProviderRefund>>>,
}

#[derive(Debug, Clone)]
struct Seen {
    op: &'static str,
    at: Instant,
    key: Option<String>,
}

/// A scripted provider that records every call it receives.
#[derive(Default)]
struct Fake {
    latency: Duration,
    /// Says it cannot look refunds up (`Capabilities::refund_lookup` false), as Adyen does.
    no_refund_lookup: bool,
    script: Mutex<Script>,
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Fake {
    fn new(script: Script) -> Arc<Self> {
        Self::with_latency(Duration::ZERO, script)
    }

    fn with_latency(latency: Duration, script: Script) -> Arc<Self> {
        Arc::new(Self {
            latency,
            script: Mutex::new(script),
            ..Self::default()
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn ops(&self) -> Vec<&'static str> {
        self.seen().iter().map(|s| s.op).collect()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Time between consecutive calls.
    fn gaps(&self) -> Vec<Duration> {
        self.seen()
            .windows(2)
            .map(|w| w[1].at.duration_since(w[0].at))
            .collect()
    }

    async fn serve<T>(
        &self,
        op: &'static str,
        key: Option<&str>,
        step: Option<Step<T>>,
        default: Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.seen.lock().unwrap().push(Seen {
            op,
            at: Instant::now(),
            key: key.map(str::to_owned),
        });
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _in_flight = InFlight(&self.in_flight);
        let (delay, answer) = match step {
            Some(step) => (step.delay.unwrap_or(self.latency), step.answer),
            None => (self.latency, default),
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        answer
    }
}

/// Decrements the in-flight count even when the call is dropped by a timeout.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unscripted() -> ProviderError {
    ProviderError::NotFound("unscripted".into())
}

#[async_trait]
impl Provider for Fake {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            partial_refunds: false,
            refund_lookup: !self.no_refund_lookup,
            ..Capabilities::LOOKUPS
        }
    }

    async fn get_payment(&self, _: &PaymentRef) -> Result<ProviderPayment, ProviderError> {
        let step = self.script.lock().unwrap().payments.pop_front();
        self.serve("get_payment", None, step, Ok(payment())).await
    }

    async fn create_refund(&self, call: &RefundCall) -> Result<ProviderRefund, ProviderError> {
        let step = self.script.lock().unwrap().creates.pop_front();
        let key = Some(call.idempotency_key.as_str());
        self.serve("create_refund", key, step, Err(unscripted()))
            .await
    }

    async fn get_refund(&self, _: &str) -> Result<ProviderRefund, ProviderError> {
        let step = self.script.lock().unwrap().refunds.pop_front();
        self.serve("get_refund", None, step, Err(unscripted()))
            .await
    }

    async fn find_refund(
        &self,
        _: &PaymentRef,
        idempotency_key: &str,
    ) -> Result<Option<ProviderRefund>, ProviderError> {
        let step = self.script.lock().unwrap().finds.pop_front();
        self.serve("find_refund", Some(idempotency_key), step, Ok(None))
            .await
    }
}

fn payment() -> ProviderPayment {
    ProviderPayment {
        id: "pay_1".into(),
        captured: 1000,
        refunded: 0,
        currency: Currency::parse("EUR").unwrap(),
        status: PaymentStatus::Captured,
    }
}

fn payment_ref() -> PaymentRef {
    PaymentRef::parse("pay_1").unwrap()
}

fn refund(id: &str) -> ProviderRefund {
    ProviderRefund {
        id: id.into(),
        amount: 500,
        status: ProviderRefundStatus::Succeeded,
    }
}

fn call() -> RefundCall {
    RefundCall {
        payment: payment_ref(),
        amount: Amount::new(500).unwrap(),
        currency: Currency::parse("EUR").unwrap(),
        reason: RefundReason::RequestedByCustomer,
        metadata: BTreeMap::new(),
        idempotency_key: KEY.into(),
    }
}

/// Unlimited rate, a breaker that does not get in the way, short delays.
fn config() -> TrafficConfig {
    TrafficConfig {
        rate_per_sec: 0,
        max_concurrency: 64,
        call_timeout: Duration::from_secs(1),
        max_attempts: 4,
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        breaker_threshold: 100,
        breaker_open_for: Duration::from_secs(30),
    }
}

fn controlled(fake: &Arc<Fake>, config: TrafficConfig) -> Arc<ControlledProvider> {
    Arc::new(ControlledProvider::new("fake", fake.clone(), config))
}

/// Runs `n` concurrent `get_payment` calls and returns when all are done.
async fn concurrent_reads(provider: &Arc<ControlledProvider>, n: usize) {
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let provider = provider.clone();
        tasks.spawn(async move { provider.get_payment(&payment_ref()).await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap(), Ok(payment()));
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_paces_calls_and_never_exceeds_burst_plus_rate() {
    let fake = Fake::new(Script::default());
    let rate = 20;
    let provider = controlled(
        &fake,
        TrafficConfig {
            rate_per_sec: rate,
            ..config()
        },
    );
    let burst = 2; // rate / 10
    let n = 40;
    let start = Instant::now();
    concurrent_reads(&provider, n).await;

    // (n - burst) calls at `rate` per second after the burst.
    let expected = Duration::from_millis(50) * (n as u32 - burst);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= expected && elapsed <= expected + Duration::from_millis(50),
        "{elapsed:?}"
    );
    let mut starts: Vec<Duration> = fake.seen().iter().map(|s| s.at - start).collect();
    starts.sort();
    assert_eq!(starts.len(), n);
    for (i, at) in starts.iter().enumerate() {
        let started = i as u128 + 1;
        // started <= burst + rate * t, in integer nanoseconds.
        assert!(
            started.saturating_sub(burst.into()) * 1_000_000_000
                <= u128::from(rate) * at.as_nanos(),
            "call {started} started at {at:?}"
        );
    }
    let stats = provider.stats();
    assert_eq!(stats.calls, n as u64);
    assert_eq!(stats.rate_limit_waits, (n - burst as usize) as u64);
    assert_eq!(stats.retries, 0);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded() {
    let fake = Fake::with_latency(Duration::from_millis(100), Script::default());
    let provider = controlled(
        &fake,
        TrafficConfig {
            max_concurrency: 3,
            ..config()
        },
    );
    let start = Instant::now();
    concurrent_reads(&provider, 10).await;

    assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(fake.count(), 10);
    // Four waves of at most three calls.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(450),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_no_earlier_than_retry_after() {
    let retry_after = Duration::from_secs(2);
    let fake = Fake::new(Script {
        payments: [
            err(ProviderError::RateLimited {
                retry_after: Some(retry_after),
            }),
            ok(payment()),
        ]
        .into(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());

    assert_eq!(provider.get_payment(&payment_ref()).await, Ok(payment()));
    assert_eq!(fake.count(), 2);
    assert!(fake.gaps()[0] >= retry_after, "{:?}", fake.gaps());
    let stats = provider.stats();
    assert_eq!(stats.rate_limited_by_provider, 1);
    assert_eq!(stats.retries, 1);
    assert_eq!(provider.health().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_max_backoff_is_returned_to_the_caller() {
    let error = ProviderError::RateLimited {
        retry_after: Some(Duration::from_secs(60)),
    };
    let fake = Fake::new(Script {
        payments: [err(error.clone()), ok(payment())].into(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());

    assert_eq!(provider.get_payment(&payment_ref()).await, Err(error));
    assert_eq!(fake.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn unavailable_is_retried_with_growing_delays_then_returned() {
    let fake = Fake::new(Script {
        payments: (0..5).map(|_| err(unavailable())).collect(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());

    assert_eq!(
        provider.get_payment(&payment_ref()).await,
        Err(unavailable())
    );
    assert_eq!(fake.count(), 4, "max_attempts");
    // Delay i is base * 2^i plus up to 100% jitter (tokio rounds sleeps up to the ms).
    let base = config().base_backoff;
    for (i, gap) in fake.gaps().into_iter().enumerate() {
        let low = base * 2u32.pow(i as u32);
        assert!(
            gap >= low && gap <= low * 2 + Duration::from_millis(1),
            "retry {i} after {gap:?}"
        );
    }
    assert_eq!(provider.stats().retries, 3);
}

#[tokio::test(start_paused = true)]
async fn backoff_is_capped_at_max_backoff() {
    let fake = Fake::new(Script {
        refunds: (0..6).map(|_| err(unavailable())).collect(),
        ..Script::default()
    });
    let max_backoff = Duration::from_millis(300);
    let provider = controlled(
        &fake,
        TrafficConfig {
            max_attempts: 6,
            max_backoff,
            ..config()
        },
    );

    assert_eq!(provider.get_refund("re_1").await, Err(unavailable()));
    assert_eq!(fake.count(), 6);
    for gap in fake.gaps() {
        assert!(gap <= max_backoff + Duration::from_millis(1), "{gap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn reads_are_retried_after_a_timeout() {
    let fake = Fake::new(Script {
        finds: [hang(), ok(Some(refund("re_1")))].into(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());

    let found = provider.find_refund(&payment_ref(), KEY).await;
    assert_eq!(found, Ok(Some(refund("re_1"))));
    assert_eq!(fake.count(), 2);
    assert!(fake.gaps()[0] >= config().call_timeout + config().base_backoff);
}

#[tokio::test(start_paused = true)]
async fn create_timeout_then_lookup_finds_the_refund() {
    let fake = Fake::new(Script {
        creates: [hang(), ok(refund("re_2"))].into(),
        finds: [ok(Some(refund("re_1")))].into(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());

    assert_eq!(provider.create_refund(&call()).await, Ok(refund("re_1")));
    assert_eq!(fake.ops(), ["create_refund", "find_refund"]);
    assert!(fake.seen().iter().all(|s| s.key.as_deref() == Some(KEY)));
    let stats = provider.stats();
    assert_eq!(stats.ambiguous_lookups, 1);
    assert_eq!(stats.calls, 2);
}

#[tokio::test(start_paused = true)]
async fn create_timeout_then_lookup_finds_nothing_resends_with_the_same_key() {
    let fake = Fake::new(Script {
        creates: [hang(), ok(refund("re_1"))].into(),
        finds: [ok(None)].into(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());

    assert_eq!(provider.create_refund(&call()).await, Ok(refund("re_1")));
    assert_eq!(
        fake.ops(),
        ["create_refund", "find_refund", "create_refund"]
    );
    assert!(fake.seen().iter().all(|s| s.key.as_deref() == Some(KEY)));
    assert_eq!(provider.stats().retries, 1);
}

/// After an attempt that may have been processed, a later "no" (the payment is fully
/// refunded, say, by our own first attempt) proves nothing about that first attempt: the
/// creation stays ambiguous, so the refund stays PENDING and its amount reserved.
#[tokio::test(start_paused = true)]
async fn a_refusal_after_an_ambiguous_attempt_stays_ambiguous() {
    let refused = ProviderError::Rejected {
        code: "charge_already_refunded".into(),
        message: "already refunded".into(),
    };
    let missing = ProviderError::NotFound("no such charge".into());
    for later in [refused, missing] {
        let fake = Fake::new(Script {
            creates: [hang(), err(later.clone())].into(),
            finds: [ok(None)].into(),
            ..Script::default()
        });
        let provider = controlled(&fake, config());

        assert_eq!(
            provider.create_refund(&call()).await,
            Err(ProviderError::Timeout),
            "{later:?}"
        );
        assert_eq!(
            fake.ops(),
            ["create_refund", "find_refund", "create_refund"]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_ambiguous_creation_at_a_provider_that_cannot_be_asked_is_neither_looked_up_nor_resent()
{
    let lost = ProviderError::Ambiguous("503 after the request was sent".into());
    let fake = Arc::new(Fake {
        no_refund_lookup: true,
        script: Mutex::new(Script {
            creates: [err(lost.clone()), ok(refund("re_1"))].into(),
            finds: [ok(None)].into(),
            ..Script::default()
        }),
        ..Fake::default()
    });
    let provider = controlled(&fake, config());

    assert_eq!(provider.create_refund(&call()).await, Err(lost));
    assert_eq!(fake.ops(), ["create_refund"]);
}

#[tokio::test(start_paused = true)]
async fn create_ambiguous_and_lookup_failing_returns_the_ambiguous_error() {
    let lost = ProviderError::Ambiguous("connection reset".into());
    let fake = Fake::new(Script {
        creates: [err(lost.clone()), ok(refund("re_1"))].into(),
        finds: [err(unavailable())].into(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());

    assert_eq!(provider.create_refund(&call()).await, Err(lost));
    assert_eq!(fake.ops(), ["create_refund", "find_refund"]);
}

#[tokio::test(start_paused = true)]
async fn create_ambiguous_on_the_last_attempt_returns_the_ambiguous_error() {
    let fake = Fake::new(Script {
        creates: [hang(), hang(), ok(refund("re_1"))].into(),
        finds: [ok(None)].into(),
        ..Script::default()
    });
    let provider = controlled(
        &fake,
        TrafficConfig {
            max_attempts: 2,
            ..config()
        },
    );

    assert_eq!(
        provider.create_refund(&call()).await,
        Err(ProviderError::Timeout)
    );
    assert_eq!(
        fake.ops(),
        ["create_refund", "find_refund", "create_refund"]
    );
}

#[tokio::test(start_paused = true)]
async fn create_not_processed_is_resent_with_the_same_key_without_lookup() {
    let fake = Fake::new(Script {
        creates: [
            err(unavailable()),
            err(ProviderError::RateLimited { retry_after: None }),
            ok(refund("re_1")),
        ]
        .into(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());

    assert_eq!(provider.create_refund(&call()).await, Ok(refund("re_1")));
    assert_eq!(fake.ops(), ["create_refund"; 3]);
    assert!(fake.seen().iter().all(|s| s.key.as_deref() == Some(KEY)));
    assert_eq!(provider.stats().ambiguous_lookups, 0);
}

#[tokio::test(start_paused = true)]
async fn not_found_and_rejected_are_never_retried() {
    let not_found = ProviderError::NotFound("no such payment".into());
    let rejected = ProviderError::Rejected {
        code: "refund_exceeds_payment".into(),
        message: "too much".into(),
    };
    let fake = Fake::new(Script {
        payments: [err(not_found.clone())].into(),
        creates: [err(rejected.clone())].into(),
        refunds: [err(not_found.clone())].into(),
        finds: [err(rejected.clone())].into(),
    });
    let provider = controlled(&fake, config());

    let payment = provider.get_payment(&payment_ref()).await;
    assert_eq!(payment, Err(not_found.clone()));
    assert_eq!(provider.create_refund(&call()).await, Err(rejected.clone()));
    assert_eq!(provider.get_refund("re_1").await, Err(not_found));
    let found = provider.find_refund(&payment_ref(), KEY).await;
    assert_eq!(found, Err(rejected));
    assert_eq!(
        fake.ops(),
        ["get_payment", "create_refund", "get_refund", "find_refund"]
    );
    assert_eq!(provider.stats().retries, 0);
    assert_eq!(provider.health().consecutive_failures, 0);
}

/// One attempt per call, so each call is one breaker outcome.
fn breaker_config(threshold: u32) -> TrafficConfig {
    TrafficConfig {
        max_attempts: 1,
        breaker_threshold: threshold,
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_fails_fast_and_closes_after_a_successful_probe() {
    let fake = Fake::new(Script {
        payments: [
            err(unavailable()),
            err(unavailable()),
            err(unavailable()),
            after(Duration::from_secs(1), Ok(payment())),
        ]
        .into(),
        ..Script::default()
    });
    let provider = controlled(&fake, breaker_config(3));
    for _ in 0..3 {
        let answer = provider.get_payment(&payment_ref()).await;
        assert_eq!(answer, Err(unavailable()));
    }
    let health = provider.health();
    assert_eq!(health.circuit, CircuitState::Open);
    assert_eq!(health.consecutive_failures, 3);
    assert_eq!(
        health.last_error.as_deref(),
        Some("provider unavailable: 503")
    );

    // Open: no call reaches the provider, and failing takes no time.
    let start = Instant::now();
    let answer = provider.get_payment(&payment_ref()).await;
    assert_eq!(
        answer,
        Err(ProviderError::Unavailable(
            "circuit open: provider unavailable: 503".into()
        ))
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(fake.count(), 3);

    // After open_for, one probe goes through; others still fail fast meanwhile.
    tokio::time::sleep(config().breaker_open_for).await;
    assert_eq!(provider.health().circuit, CircuitState::HalfOpen);
    let probe = tokio::spawn({
        let provider = provider.clone();
        async move { provider.get_payment(&payment_ref()).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(provider.get_payment(&payment_ref()).await.is_err());
    assert_eq!(fake.count(), 4);
    assert_eq!(probe.await.unwrap(), Ok(payment()));

    let health = provider.health();
    assert_eq!(health.circuit, CircuitState::Closed);
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(provider.get_payment(&payment_ref()).await, Ok(payment()));
    assert_eq!(fake.count(), 5);
    let stats = provider.stats();
    assert_eq!(stats.breaker_opened, 1);
    assert_eq!(stats.short_circuited, 2);
}

#[tokio::test(start_paused = true)]
async fn availability_waits_out_the_open_circuit_and_the_probe() {
    let fake = Fake::new(Script {
        payments: [
            err(unavailable()),
            err(unavailable()),
            err(unavailable()),
            after(Duration::from_millis(500), Ok(payment())),
        ]
        .into(),
        ..Script::default()
    });
    let provider = controlled(&fake, breaker_config(3));
    assert_eq!(provider.availability(), Availability::Ready);
    for _ in 0..3 {
        let _ = provider.get_payment(&payment_ref()).await;
    }
    let open_for = config().breaker_open_for;
    assert_eq!(
        provider.availability(),
        Availability::Waiting {
            reason: "circuit open: provider unavailable: 503".to_owned(),
            retry_in: open_for,
        }
    );
    tokio::time::sleep(open_for / 2).await;
    assert!(
        matches!(provider.availability(), Availability::Waiting { retry_in, .. } if retry_in == open_for - open_for / 2)
    );
    // The open period is over: the next call may go (it will be the probe).
    tokio::time::sleep(open_for).await;
    assert!(
        matches!(provider.availability(), Availability::Waiting { retry_in, .. } if retry_in.is_zero())
    );
    let probe = tokio::spawn({
        let provider = provider.clone();
        async move { provider.get_payment(&payment_ref()).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The probe is in flight: look again soon.
    assert!(
        matches!(provider.availability(), Availability::Waiting { retry_in, .. } if retry_in == PROBE_POLL)
    );
    assert_eq!(probe.await.unwrap(), Ok(payment()));
    assert_eq!(provider.availability(), Availability::Ready);
}

#[tokio::test(start_paused = true)]
async fn availability_waits_out_a_retry_after_longer_than_our_back_off() {
    let error = ProviderError::RateLimited {
        retry_after: Some(Duration::from_secs(60)),
    };
    let fake = Fake::new(Script {
        payments: [err(error.clone()), ok(payment())].into(),
        ..Script::default()
    });
    let provider = controlled(&fake, config());
    assert_eq!(provider.get_payment(&payment_ref()).await, Err(error));
    assert!(
        matches!(provider.availability(), Availability::Waiting { retry_in, .. } if retry_in == Duration::from_secs(60))
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(provider.availability(), Availability::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_the_circuit() {
    let fake = Fake::new(Script {
        payments: [err(unavailable()), err(unavailable()), hang()].into(),
        ..Script::default()
    });
    let provider = controlled(&fake, breaker_config(2));
    for _ in 0..2 {
        assert!(provider.get_payment(&payment_ref()).await.is_err());
    }
    tokio::time::sleep(config().breaker_open_for).await;

    let probe = provider.get_payment(&payment_ref()).await;
    assert_eq!(probe, Err(ProviderError::Timeout));
    assert_eq!(provider.health().circuit, CircuitState::Open);
    assert!(provider.get_payment(&payment_ref()).await.is_err());
    assert_eq!(fake.count(), 3);
    assert_eq!(provider.stats().breaker_opened, 2);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_probe_lets_the_next_call_probe() {
    let fake = Fake::new(Script {
        payments: [
            err(unavailable()),
            after(Duration::from_millis(500), Ok(payment())),
        ]
        .into(),
        ..Script::default()
    });
    let provider = controlled(&fake, breaker_config(1));
    assert!(provider.get_payment(&payment_ref()).await.is_err());
    tokio::time::sleep(config().breaker_open_for).await;

    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        provider.get_payment(&payment_ref()),
    )
    .await;
    assert!(abandoned.is_err());
    assert_eq!(provider.get_payment(&payment_ref()).await, Ok(payment()));
    assert_eq!(fake.count(), 3);
    assert_eq!(provider.health().circuit, CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_once_the_circuit_opens() {
    let fake = Fake::new(Script {
        payments: (0..4).map(|_| err(unavailable())).collect(),
        ..Script::default()
    });
    let provider = controlled(
        &fake,
        TrafficConfig {
            breaker_threshold: 2,
            ..config()
        },
    );

    let start = Instant::now();
    let answer = provider.get_payment(&payment_ref()).await;
    assert_eq!(answer, Err(unavailable()));
    assert_eq!(fake.count(), 2);
    // One jittered back-off at most (jitter adds up to 100%).
    assert!(start.elapsed() <= config().base_backoff * 2);
    assert_eq!(provider.health().circuit, CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn clear_answers_do_not_count_towards_opening() {
    let fake = Fake::new(Script {
        payments: [
            err(unavailable()),
            err(ProviderError::NotFound("gone".into())),
            err(unavailable()),
            err(ProviderError::RateLimited { retry_after: None }),
            err(unavailable()),
        ]
        .into(),
        ..Script::default()
    });
    let provider = controlled(&fake, breaker_config(2));
    for _ in 0..5 {
        assert!(provider.get_payment(&payment_ref()).await.is_err());
    }
    let health = provider.health();
    assert_eq!(health.circuit, CircuitState::Closed);
    assert_eq!(health.consecutive_failures, 1);
    assert_eq!(provider.stats().breaker_opened, 0);
}

#[tokio::test(start_paused = true)]
async fn a_replica_takes_its_share_of_the_rate_and_all_of_it_alone() {
    let fake = Fake::new(Script::default());
    let share = BudgetShare::alone();
    share.set(2, Instant::now() + Duration::from_secs(3600));
    let provider = Arc::new(
        ControlledProvider::new(
            "fake",
            fake.clone(),
            TrafficConfig {
                rate_per_sec: 20,
                ..config()
            },
        )
        .with_share(share.clone()),
    );
    // Half of 20/s: one call in the bucket, then one every 100 ms.
    let start = Instant::now();
    concurrent_reads(&provider, 11).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed <= Duration::from_millis(1050),
        "two replicas: {elapsed:?}"
    );

    // The other replica left: the whole 20/s (two calls in the bucket, then one per 50 ms).
    share.set(1, Instant::now() + Duration::from_secs(3600));
    let start = Instant::now();
    concurrent_reads(&provider, 21).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed <= Duration::from_millis(1000),
        "alone: {elapsed:?}"
    );
    assert_eq!(fake.count(), 32);
}

#[tokio::test(start_paused = true)]
async fn a_replica_the_others_do_not_count_calls_nothing_until_it_is_counted_again() {
    let fake = Fake::new(Script::default());
    let share = BudgetShare::alone();
    share.set(3, Instant::now() + Duration::from_millis(100));
    let provider = Arc::new(
        ControlledProvider::new(
            "fake",
            fake.clone(),
            TrafficConfig {
                rate_per_sec: 30,
                ..config()
            },
        )
        .with_share(share.clone()),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Its heartbeat went stale: the others may have taken its share.
    let call = tokio::spawn({
        let provider = provider.clone();
        async move { provider.get_payment(&payment_ref()).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.count(), 0, "no call while not counted");
    share.set(3, Instant::now() + Duration::from_secs(3600));
    assert_eq!(call.await.unwrap(), Ok(payment()));
    assert_eq!(fake.count(), 1);
}
