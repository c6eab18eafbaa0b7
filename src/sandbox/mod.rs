//! The sandbox: a realistic fake payment service provider (PSP).
//!
//! The refund service needs a provider to talk to, and real providers need
//! credentials and a network. The sandbox is built into the service so that it
//! runs, and can be tested end to end, with neither. It is the default provider.
//!
//! It is deliberately not a stub that answers "ok" to everything. Like a real
//! PSP (its semantics follow Stripe's charges and refunds), it:
//!
//! - keeps its own ledger of payments and refunds, independent of the refund
//!   service's database, so tests can compare the two sides of the truth;
//! - enforces its own refund limits atomically, so even a buggy or racing
//!   client can never refund more than was captured on the sandbox's books;
//! - honours idempotency keys: a retried request with the same key and the
//!   same parameters replays the original refund, a key reused with other
//!   parameters is rejected;
//! - injects configurable faults, the failure modes of real PSPs that matter
//!   to a client's retry and reconciliation logic: latency, rate limiting
//!   (a token bucket, and random 429s), internal errors before processing,
//!   refunds that are recorded but answered with a 500 or whose connection
//!   drops mid-answer, refunds that succeed but whose answer never arrives in
//!   time, slow creations during which a retry with the same idempotency key
//!   gets Stripe's 409 `idempotency_key_in_use`, and refunds that stay pending
//!   for a while and then succeed or fail. With a seed, the dice are
//!   replayable.
//!
//! It is used in two ways: in process, where the service calls the async
//! methods of [`Sandbox`] directly, and standalone over HTTP ([`http::router`],
//! spoken to by [`client::SandboxClient`] or by scripts in any language), so a
//! test can kill the refund service while the provider keeps its state.
//!
//! Fault injection applies only to the provider API ([`Sandbox::get_payment`],
//! [`Sandbox::create_refund`], [`Sandbox::get_refund`],
//! [`Sandbox::list_refunds`]); seeding, the ledger (refunds and payments), the statistics and the
//! fault configuration itself are always answered faithfully, because tests
//! rely on them to judge the outcome.

pub mod client;
mod clock;
pub mod http;
#[cfg(test)]
mod tests;
mod webhooks;

pub use webhooks::WebhookTarget;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use self::clock::SandboxClock;

/// Prefix of generated payment ids.
const PAYMENT_ID_PREFIX: &str = "ch_sbx_";
/// Prefix of generated refund ids.
const REFUND_ID_PREFIX: &str = "re_sbx_";
/// Random alphanumerics after an id prefix.
const ID_RANDOM_LEN: usize = 24;
/// Upper bound of payments seeded by one call, to keep a typo from eating memory.
const MAX_SEED_COUNT: u32 = 100_000;
/// Longest accepted caller-chosen id or idempotency key (Stripe's key limit).
const MAX_KEY_LEN: usize = 255;
/// Longest accepted refund reason.
const MAX_REASON_LEN: usize = 500;
/// Stripe's metadata limits: keys per object, key length, value length.
const MAX_METADATA_KEYS: usize = 50;
const MAX_METADATA_KEY_LEN: usize = 40;
const MAX_METADATA_VALUE_LEN: usize = 500;
/// Failure code and reason given to refunds of payments seeded with `fail_refunds`.
const FAILED_REFUND_CODE: &str = "expired_or_canceled_card";
const FAILED_REFUND_REASON: &str =
    "The refund could not be delivered because the customer's card has expired or was canceled.";
/// How long a refund chosen by `fail_after_pending_rate` stays pending when
/// `settle_delay_ms` is 0: it has to be seen pending before it fails.
const DEFAULT_FAIL_AFTER_PENDING_MS: u64 = 200;

/// Faults the sandbox injects into its provider API.
///
/// Every field is optional when deserialized; a missing field takes its
/// default (no fault), so `{}` turns all faults off.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FaultConfig {
    /// Added to every API request (not to seeding, ledger, stats or config).
    pub latency_ms: u64,
    /// Fraction (0.0..=1.0) of API requests answered with a 500 `api_error`
    /// without processing anything.
    pub error_rate: f64,
    /// API requests per second allowed by a token bucket; 0 means unlimited.
    /// Like Stripe's, the limit applies to reads and to writes (refund
    /// creations) separately: each has a bucket of this rate. Requests over
    /// the limit get a 429 `rate_limit` with a retry delay.
    pub rate_limit_per_sec: u32,
    /// Fraction (0.0..=1.0) of refund creations that succeed, and are recorded
    /// in the ledger, but whose answer is delayed by `hang_ms`: "succeed but
    /// time out", the case that makes idempotency keys necessary.
    pub timeout_rate: f64,
    /// How long a timed-out refund creation hangs before answering.
    pub hang_ms: u64,
    /// 0: refunds are `succeeded` at once. Otherwise refunds are `pending`
    /// until this long after their creation, then `succeeded`.
    pub settle_delay_ms: u64,
    /// Fraction (0.0..=1.0) of refund creations that are processed (recorded
    /// in the ledger, or replayed) and then answered with a 500 `api_error`
    /// saying the request may have been processed: Stripe's "5xx after the
    /// write".
    pub error_after_rate: f64,
    /// Fraction (0.0..=1.0) of refund creations that are processed and whose
    /// answer is then lost: over HTTP the status and headers of a success go
    /// out and the connection drops mid-body; in process the call returns
    /// [`SandboxError::AnswerLost`].
    pub reset_after_rate: f64,
    /// Fraction (0.0..=1.0) of refund creations that wait `slow_create_ms`
    /// before recording the refund. Meanwhile a look-up finds nothing, and
    /// another creation with the same idempotency key gets a 409
    /// `idempotency_key_in_use` (as does one during a `timeout_rate` hang).
    pub slow_create_rate: f64,
    /// How long a slow refund creation waits before recording.
    pub slow_create_ms: u64,
    /// Fraction (0.0..=1.0) of API requests answered with a 429 `rate_limit`
    /// and `Retry-After: retry_after_secs`, processing nothing; independent
    /// of the token bucket of `rate_limit_per_sec`.
    pub retry_after_rate: f64,
    /// The Retry-After, in seconds (at least 1), of `retry_after_rate` 429s.
    pub retry_after_secs: u64,
    /// Fraction (0.0..=1.0) of refunds (of payments not seeded with
    /// `fail_refunds`) that are `pending` and then end `failed`
    /// (`expired_or_canceled_card`) instead of `succeeded`. They stay
    /// pending for `settle_delay_ms`, or 200 ms when that is 0. Once failed,
    /// a refund no longer counts in the payment's `amount_refunded`.
    pub fail_after_pending_rate: f64,
    /// Set: the fault dice come from a random generator seeded with this
    /// (re-seeded whenever the faults are set), so a run whose requests come
    /// in the same order makes the same decisions. Unset: the thread's
    /// random generator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            rate_limit_per_sec: 0,
            timeout_rate: 0.0,
            hang_ms: 30_000,
            settle_delay_ms: 0,
            error_after_rate: 0.0,
            reset_after_rate: 0.0,
            slow_create_rate: 0.0,
            slow_create_ms: 5_000,
            retry_after_rate: 0.0,
            retry_after_secs: 1,
            fail_after_pending_rate: 0.0,
            seed: None,
        }
    }
}

impl FaultConfig {
    /// Checks that the rates are fractions, for callers (the HTTP API) that
    /// should reject bad input rather than have it clamped.
    pub fn validate(&self) -> Result<(), SandboxError> {
        for (name, rate) in self.rates() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SandboxError::invalid(
                    "parameter_invalid",
                    format!("{name} must be between 0.0 and 1.0, got {rate}"),
                ));
            }
        }
        if self.retry_after_secs == 0 {
            return Err(SandboxError::invalid(
                "parameter_invalid",
                "retry_after_secs must be at least 1",
            ));
        }
        Ok(())
    }

    /// Every rate, by its field name.
    fn rates(&self) -> [(&'static str, f64); 7] {
        [
            ("error_rate", self.error_rate),
            ("timeout_rate", self.timeout_rate),
            ("error_after_rate", self.error_after_rate),
            ("reset_after_rate", self.reset_after_rate),
            ("slow_create_rate", self.slow_create_rate),
            ("retry_after_rate", self.retry_after_rate),
            ("fail_after_pending_rate", self.fail_after_pending_rate),
        ]
    }

    /// The same configuration with the rates forced into 0.0..=1.0 (NaN
    /// becomes 0.0), so the in-process API never misbehaves on odd input.
    fn sanitized(mut self) -> Self {
        fn clamp(rate: f64) -> f64 {
            if rate.is_nan() {
                0.0
            } else {
                rate.clamp(0.0, 1.0)
            }
        }
        for rate in [
            &mut self.error_rate,
            &mut self.timeout_rate,
            &mut self.error_after_rate,
            &mut self.reset_after_rate,
            &mut self.slow_create_rate,
            &mut self.retry_after_rate,
            &mut self.fail_after_pending_rate,
        ] {
            *rate = clamp(*rate);
        }
        self.retry_after_secs = self.retry_after_secs.max(1);
        self
    }
}

/// A request to seed one or more payments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewPayments {
    /// Captured amount in minor units; must be positive.
    pub amount: i64,
    /// ISO 4217 code, any case; stored upper-case.
    pub currency: String,
    /// Caller-chosen id; only with a count of 1. Generated otherwise.
    #[serde(default)]
    pub id: Option<String>,
    /// How many identical payments to create (default 1, at most 100 000).
    #[serde(default)]
    pub count: Option<u32>,
    /// Default `succeeded`; anything else is not refundable.
    #[serde(default)]
    pub status: Option<PaymentStatus>,
    /// Every refund of these payments is recorded as `failed`.
    #[serde(default)]
    pub fail_refunds: bool,
}

/// State of a payment (a Stripe charge).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Succeeded,
    RequiresCapture,
    Failed,
    Canceled,
}

/// A payment as the sandbox sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Payment {
    pub id: String,
    pub amount: i64,
    /// Sum of the payment's pending and succeeded refunds as of the read
    /// (failed ones gave nothing back).
    pub amount_refunded: i64,
    /// Upper-case ISO 4217 code, e.g. "USD".
    pub currency: String,
    pub status: PaymentStatus,
    pub fail_refunds: bool,
    /// Unix seconds.
    pub created: i64,
}

/// A request to refund (part of) a payment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NewRefund {
    /// Id of the payment to refund.
    pub payment: String,
    /// Minor units; `None` refunds whatever remains.
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// State of a refund.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
    Canceled,
}

/// A refund as recorded in the sandbox's ledger.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Refund {
    pub id: String,
    pub payment: String,
    pub amount: i64,
    pub currency: String,
    pub status: RefundStatus,
    pub reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The Idempotency-Key the refund was created with, if any.
    pub idempotency_key: Option<String>,
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
    /// Unix seconds.
    pub created: i64,
}

/// Which refunds [`Sandbox::list_refunds`] returns; both filters combine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RefundFilter {
    #[serde(default)]
    pub payment: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// What the sandbox has seen since it started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// API requests received, including rate-limited and faulted ones.
    pub requests: u64,
    /// 429s, from the token bucket and from `retry_after_rate`.
    pub rate_limited: u64,
    /// 500s before processing (`error_rate`).
    pub errors_injected: u64,
    pub timeouts_injected: u64,
    /// Refunds recorded in the ledger (failed ones included, replays not).
    pub refunds_created: u64,
    pub idempotent_replays: u64,
    /// Highest number of API requests seen in any sliding 1-second window.
    pub max_requests_per_sec: u64,
    /// Highest number of writes (refund creations, 429s included) seen in any
    /// sliding 1-second window.
    #[serde(default)]
    pub max_writes_per_sec: u64,
    /// Webhooks delivered (answered 2xx), and given up after retries.
    #[serde(default)]
    pub webhooks_sent: u64,
    #[serde(default)]
    pub webhooks_failed: u64,
    /// Creations processed and then answered with a 500 (`error_after_rate`).
    #[serde(default)]
    pub errors_after_processing: u64,
    /// Creations processed whose answer was then lost (`reset_after_rate`).
    #[serde(default)]
    pub resets_injected: u64,
    /// Creations that waited before recording (`slow_create_rate`).
    #[serde(default)]
    pub slow_creates_injected: u64,
    /// 409s: a creation whose idempotency key was in flight.
    #[serde(default)]
    pub conflicts: u64,
    /// Refunds recorded pending that are to end failed (`fail_after_pending_rate`).
    #[serde(default)]
    pub failed_after_pending: u64,
}

/// Which of the two rate limits a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// An error answered by the sandbox, shaped like a PSP's error responses.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SandboxError {
    /// 404, e.g. code `resource_missing`.
    #[error("{message}")]
    NotFound { code: String, message: String },
    /// 400: `amount_too_large`, `charge_already_refunded`,
    /// `charge_not_refundable`, `invalid_amount`, `idempotency_key_reused`,
    /// `parameter_invalid`, `resource_already_exists`.
    #[error("{message}")]
    InvalidRequest { code: String, message: String },
    /// 429: try again after that many seconds.
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// 409, code `idempotency_key_in_use`: another request with the same
    /// idempotency key is still being processed; nothing was processed for
    /// this one. Retry later.
    #[error("{message}")]
    Conflict { code: String, message: String },
    /// 500, injected or internal. Injected before processing (`error_rate`),
    /// nothing was processed; after processing (`error_after_rate`), the
    /// message says so.
    #[error("{message}")]
    Api { message: String },
    /// The request was processed but its answer is lost (`reset_after_rate`).
    /// Never answered as an error: over HTTP the answer starts as a 200 and
    /// the connection drops before the body ends.
    #[error("{message}")]
    AnswerLost { message: String },
}

impl SandboxError {
    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotFound { .. } => 404,
            Self::InvalidRequest { .. } => 400,
            Self::RateLimited { .. } => 429,
            Self::Conflict { .. } => 409,
            Self::Api { .. } => 500,
            // The status line of the success whose body is then cut off.
            Self::AnswerLost { .. } => 200,
        }
    }

    /// The machine-readable error code.
    pub fn code(&self) -> &str {
        match self {
            Self::NotFound { code, .. }
            | Self::InvalidRequest { code, .. }
            | Self::Conflict { code, .. } => code,
            Self::RateLimited { .. } => "rate_limit",
            Self::Api { .. } => "api_error",
            Self::AnswerLost { .. } => "answer_lost",
        }
    }

    fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    fn missing(message: impl Into<String>) -> Self {
        Self::NotFound {
            code: "resource_missing".to_owned(),
            message: message.into(),
        }
    }
}

/// The rate limiter behind `rate_limit_per_sec`, on the sandbox's own clock.
type Limiter =
    RateLimiter<NotKeyed, InMemoryState, SandboxClock, NoOpMiddleware<governor::nanos::Nanos>>;

/// A refund plus what the sandbox needs to know about it beyond its public shape.
struct RefundRecord {
    refund: Refund,
    /// When a pending refund settles, on the sandbox clock.
    settles_at: Option<Duration>,
    /// A pending refund that settles as `failed` (`fail_after_pending_rate`).
    fails_on_settle: bool,
    /// The request that created it, to tell idempotent replays from key reuse.
    request: NewRefund,
}

impl RefundRecord {
    /// The status as of `now`: settlement is evaluated lazily on read, which
    /// needs no background task and is exact whenever anyone looks.
    fn status(&self, now: Duration) -> RefundStatus {
        match self.settles_at {
            Some(at) if self.refund.status == RefundStatus::Pending && at <= now => {
                if self.fails_on_settle {
                    RefundStatus::Failed
                } else {
                    RefundStatus::Succeeded
                }
            }
            _ => self.refund.status,
        }
    }

    /// The refund as of `now`.
    fn view(&self, now: Duration) -> Refund {
        let mut refund = self.refund.clone();
        let status = self.status(now);
        if status == RefundStatus::Failed && refund.failure_code.is_none() {
            refund.failure_code = Some(FAILED_REFUND_CODE.to_owned());
            refund.failure_reason = Some(FAILED_REFUND_REASON.to_owned());
        }
        refund.status = status;
        refund
    }

    /// Whether it uses up part of its payment as of `now`: pending and
    /// succeeded refunds do; failed ones gave nothing back.
    fn holds_amount(&self, now: Duration) -> bool {
        matches!(
            self.status(now),
            RefundStatus::Pending | RefundStatus::Succeeded
        )
    }
}

/// What [`Sandbox::record_refund`] did.
struct Recorded {
    refund: Refund,
    /// A newly recorded pending refund: its settled view, and how long until
    /// it settles (for the webhook). `None` for replays and settled refunds.
    settles: Option<(Refund, Duration)>,
}

/// An idempotency key held by a creation from its admission to its answer.
/// Dropping it releases the key, so a creation whose caller went away (its
/// future dropped while it waits) frees the key too.
struct InFlight<'a> {
    sandbox: &'a Sandbox,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.sandbox.lock().in_flight.remove(&self.key);
    }
}

#[derive(Default)]
struct State {
    faults: FaultConfig,
    read_limiter: Option<Limiter>,
    write_limiter: Option<Limiter>,
    /// Their `amount_refunded` is left at 0 here: [`State::payment`] computes it.
    payments: HashMap<String, Payment>,
    /// All refunds, oldest first; the indexes below point into it.
    refunds: Vec<RefundRecord>,
    refund_ids: HashMap<String, usize>,
    refunds_by_payment: HashMap<String, Vec<usize>>,
    /// Idempotency keys, global and kept forever.
    keys: HashMap<String, usize>,
    /// Keys of creations admitted and not yet answered.
    in_flight: HashSet<String>,
    /// The fault dice when `FaultConfig::seed` is set.
    rng: Option<StdRng>,
    stats: Stats,
    /// Clock readings of the API requests of the last second.
    window: VecDeque<Duration>,
    /// Clock readings of the writes of the last second.
    write_window: VecDeque<Duration>,
}

impl State {
    /// True with probability `rate` (NaN and rates <= 0 never, rates >= 1
    /// always). A rate of 0 draws nothing.
    fn roll(&mut self, rate: f64) -> bool {
        if rate.is_nan() || rate <= 0.0 {
            return false;
        }
        let draw: f64 = match &mut self.rng {
            Some(rng) => rng.random(),
            None => rand::rng().random(),
        };
        draw < rate
    }

    /// A payment with its `amount_refunded` as of `now`.
    fn payment(&self, id: &str, now: Duration) -> Option<Payment> {
        let mut payment = self.payments.get(id)?.clone();
        payment.amount_refunded = self.refunded(id, now);
        Some(payment)
    }

    /// What the refunds of a payment use up as of `now`. Computed rather
    /// than stored, because a pending refund can still fail and give its
    /// amount back.
    fn refunded(&self, payment: &str, now: Duration) -> i64 {
        self.refunds_by_payment.get(payment).map_or(0, |indexes| {
            indexes
                .iter()
                .filter_map(|&i| self.refunds.get(i))
                .filter(|record| record.holds_amount(now))
                .map(|record| record.refund.amount)
                .sum()
        })
    }

    fn views<'a>(
        &'a self,
        indexes: impl Iterator<Item = usize> + 'a,
        now: Duration,
    ) -> Vec<Refund> {
        indexes
            .filter_map(|i| self.refunds.get(i))
            .map(|record| record.view(now))
            .collect()
    }
}

/// The fake PSP. Share it as `Arc<Sandbox>`; every method takes `&self`.
pub struct Sandbox {
    /// A std mutex: every critical section is short and synchronous, and the
    /// lock is never held across an `.await`.
    state: Mutex<State>,
    clock: SandboxClock,
    /// Where settled refunds are announced, if anywhere.
    webhooks: Mutex<Option<std::sync::Arc<webhooks::Sender>>>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("faults", &self.faults())
            .finish_non_exhaustive()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new(FaultConfig::default())
    }
}

impl Sandbox {
    /// An empty sandbox injecting `faults` (rates are clamped to 0.0..=1.0).
    pub fn new(faults: FaultConfig) -> Self {
        let sandbox = Self {
            state: Mutex::new(State::default()),
            clock: SandboxClock::new(),
            webhooks: Mutex::new(None),
        };
        sandbox.set_faults(faults);
        sandbox
    }

    /// Sends a signed `refund.updated` webhook to `target` whenever a pending refund settles
    /// (`None` stops sending).
    pub fn set_webhook_target(&self, target: Option<WebhookTarget>) {
        *self.webhooks.lock().unwrap_or_else(PoisonError::into_inner) =
            target.map(webhooks::Sender::new);
    }

    /// The faults currently injected.
    pub fn faults(&self) -> FaultConfig {
        self.lock().faults.clone()
    }

    /// Replaces the injected faults; rates are clamped to 0.0..=1.0. The rate
    /// limiter is rebuilt, with a full bucket, and a seeded generator starts
    /// again from its seed.
    pub fn set_faults(&self, faults: FaultConfig) {
        let faults = faults.sanitized();
        let limiter = || {
            NonZeroU32::new(faults.rate_limit_per_sec).map(|rate| {
                RateLimiter::direct_with_clock(Quota::per_second(rate), self.clock.clone())
            })
        };
        let (read_limiter, write_limiter) = (limiter(), limiter());
        let rng = faults.seed.map(StdRng::seed_from_u64);
        let mut state = self.lock();
        state.faults = faults;
        state.read_limiter = read_limiter;
        state.write_limiter = write_limiter;
        state.rng = rng;
    }

    /// Seeds payments; no faults are applied. All or nothing: on error,
    /// nothing is created.
    pub fn create_payments(&self, req: NewPayments) -> Result<Vec<Payment>, SandboxError> {
        if req.amount <= 0 {
            return Err(SandboxError::invalid(
                "invalid_amount",
                format!(
                    "amount must be a positive integer in minor units, got {}",
                    req.amount
                ),
            ));
        }
        let currency = normalize_currency(&req.currency)?;
        let count = req.count.unwrap_or(1);
        if count == 0 || count > MAX_SEED_COUNT {
            return Err(SandboxError::invalid(
                "parameter_invalid",
                format!("count must be between 1 and {MAX_SEED_COUNT}, got {count}"),
            ));
        }
        if let Some(id) = &req.id {
            if count != 1 {
                return Err(SandboxError::invalid(
                    "parameter_invalid",
                    "an explicit id can only be given with a count of 1",
                ));
            }
            validate_id(id)?;
        }

        let created = unix_now();
        let mut state = self.lock();
        if let Some(id) = &req.id
            && state.payments.contains_key(id)
        {
            return Err(SandboxError::invalid(
                "resource_already_exists",
                format!("a payment with id '{id}' already exists"),
            ));
        }
        let mut payments = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let id = match &req.id {
                Some(id) => id.clone(),
                None => loop {
                    // A collision is astronomically unlikely, but cheap to rule out.
                    let id = random_id(PAYMENT_ID_PREFIX);
                    if !state.payments.contains_key(&id) {
                        break id;
                    }
                },
            };
            let payment = Payment {
                id: id.clone(),
                amount: req.amount,
                amount_refunded: 0,
                currency: currency.clone(),
                status: req.status.unwrap_or(PaymentStatus::Succeeded),
                fail_refunds: req.fail_refunds,
                created,
            };
            state.payments.insert(id, payment.clone());
            payments.push(payment);
        }
        Ok(payments)
    }

    /// Retrieves a payment. Faults applied.
    pub async fn get_payment(&self, id: &str) -> Result<Payment, SandboxError> {
        self.admit(Op::Read).await?;
        let now = self.clock.elapsed();
        self.lock()
            .payment(id, now)
            .ok_or_else(|| SandboxError::missing(format!("No such payment: '{id}'")))
    }

    /// Creates a refund, or replays the one created earlier with the same
    /// idempotency key. Faults applied, in this order: those of every API
    /// request (latency, 429s, 500s); a 409 while another creation with the
    /// same key is in flight; a slow creation (waits, key held, before
    /// recording); recording; then, for a processed request, "succeed but
    /// time out" (the answer hangs, key held), a 500 after processing, or a
    /// lost answer.
    pub async fn create_refund(
        &self,
        req: NewRefund,
        idempotency_key: Option<&str>,
    ) -> Result<Refund, SandboxError> {
        let faults = self.admit(Op::Write).await?;
        if let Some(key) = idempotency_key {
            validate_idempotency_key(key)?;
        }
        // Held until this function returns or its future is dropped.
        let _in_flight = idempotency_key.map(|key| self.claim_key(key)).transpose()?;
        if self.strikes(faults.slow_create_rate, |s| &mut s.slow_creates_injected) {
            tokio::time::sleep(Duration::from_millis(faults.slow_create_ms)).await;
        }
        let Recorded { refund, settles } = self.record_refund(req, idempotency_key)?;
        if let Some((settled, after)) = settles {
            let sender = self
                .webhooks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(sender) = sender {
                sender.schedule(settled, after);
            }
        }
        if self.strikes(faults.timeout_rate, |s| &mut s.timeouts_injected) {
            tokio::time::sleep(Duration::from_millis(faults.hang_ms)).await;
        }
        if self.strikes(faults.error_after_rate, |s| &mut s.errors_after_processing) {
            return Err(SandboxError::Api {
                message: format!(
                    "An unexpected error occurred in the sandbox (injected fault) after refund {} \
                     was processed; the request may have been processed.",
                    refund.id
                ),
            });
        }
        if self.strikes(faults.reset_after_rate, |s| &mut s.resets_injected) {
            return Err(SandboxError::AnswerLost {
                message: format!(
                    "refund {} was processed but its answer was lost (injected fault)",
                    refund.id
                ),
            });
        }
        Ok(refund)
    }

    /// Retrieves a refund. Faults applied.
    pub async fn get_refund(&self, id: &str) -> Result<Refund, SandboxError> {
        self.admit(Op::Read).await?;
        let now = self.clock.elapsed();
        let state = self.lock();
        state
            .refund_ids
            .get(id)
            .and_then(|&i| state.refunds.get(i))
            .map(|record| record.view(now))
            .ok_or_else(|| SandboxError::missing(format!("No such refund: '{id}'")))
    }

    /// Lists refunds by payment and/or idempotency key (no filter: all),
    /// oldest first. An unknown payment or key yields an empty list. Faults
    /// applied.
    pub async fn list_refunds(&self, filter: RefundFilter) -> Result<Vec<Refund>, SandboxError> {
        self.admit(Op::Read).await?;
        let now = self.clock.elapsed();
        let state = self.lock();
        let by_key = filter
            .idempotency_key
            .as_ref()
            .map(|key| state.keys.get(key).copied());
        let refunds = match (&filter.payment, by_key) {
            (_, Some(None)) => Vec::new(),
            (payment, Some(Some(i))) => state
                .views(std::iter::once(i), now)
                .into_iter()
                .filter(|refund| payment.as_ref().is_none_or(|p| *p == refund.payment))
                .collect(),
            (Some(payment), None) => match state.refunds_by_payment.get(payment) {
                Some(indexes) => state.views(indexes.iter().copied(), now),
                None => Vec::new(),
            },
            (None, None) => state.views(0..state.refunds.len(), now),
        };
        Ok(refunds)
    }

    /// The provider's side of the truth: every refund (of one payment, if
    /// given), oldest first, failed ones included. No faults.
    pub fn ledger(&self, payment: Option<&str>) -> Vec<Refund> {
        let now = self.clock.elapsed();
        let state = self.lock();
        match payment {
            Some(payment) => match state.refunds_by_payment.get(payment) {
                Some(indexes) => state.views(indexes.iter().copied(), now),
                None => Vec::new(),
            },
            None => state.views(0..state.refunds.len(), now),
        }
    }

    /// Every payment, with what the sandbox has refunded of it, ordered by id. No faults: like
    /// [`Sandbox::ledger`], it is the provider's side of the truth for a checker.
    pub fn ledger_payments(&self) -> Vec<Payment> {
        let now = self.clock.elapsed();
        let state = self.lock();
        let mut payments: Vec<Payment> = state
            .payments
            .keys()
            .filter_map(|id| state.payment(id, now))
            .collect();
        drop(state);
        payments.sort_by(|a, b| a.id.cmp(&b.id));
        payments
    }

    /// Counters of what the sandbox has seen. No faults.
    pub fn stats(&self) -> Stats {
        let mut stats = self.lock().stats.clone();
        if let Some(sender) = &*self.webhooks.lock().unwrap_or_else(PoisonError::into_inner) {
            stats.webhooks_sent = sender.sent.load(std::sync::atomic::Ordering::Relaxed);
            stats.webhooks_failed = sender.failed.load(std::sync::atomic::Ordering::Relaxed);
        }
        stats
    }

    /// The front half of every API request, in the documented order: count
    /// the request, random 429, rate limit, latency, injected error. Returns the fault
    /// configuration the request runs under, so it sees one consistent
    /// configuration even if the faults change while it sleeps.
    async fn admit(&self, op: Op) -> Result<FaultConfig, SandboxError> {
        let faults = {
            let mut state = self.lock();
            let now = self.clock.elapsed();
            state.stats.requests += 1;
            let in_window = slide(&mut state.window, now);
            state.stats.max_requests_per_sec = state.stats.max_requests_per_sec.max(in_window);
            if op == Op::Write {
                let writes = slide(&mut state.write_window, now);
                state.stats.max_writes_per_sec = state.stats.max_writes_per_sec.max(writes);
            }

            let retry_after_rate = state.faults.retry_after_rate;
            if state.roll(retry_after_rate) {
                state.stats.rate_limited += 1;
                return Err(SandboxError::RateLimited {
                    retry_after_secs: state.faults.retry_after_secs.max(1),
                });
            }

            let limiter = match op {
                Op::Read => &state.read_limiter,
                Op::Write => &state.write_limiter,
            };
            let refused = limiter
                .as_ref()
                .and_then(|limiter| limiter.check().err())
                .map(|not_until| not_until.wait_time_from(self.clock.now()));
            if let Some(wait) = refused {
                state.stats.rate_limited += 1;
                // Whole seconds, rounded up and at least 1, like an HTTP Retry-After.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(SandboxError::RateLimited {
                    retry_after_secs: secs.max(1),
                });
            }
            state.faults.clone()
        };
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if self.strikes(faults.error_rate, |s| &mut s.errors_injected) {
            return Err(SandboxError::Api {
                message: "An unexpected error occurred in the sandbox (injected fault); \
                          the request was not processed."
                    .to_owned(),
            });
        }
        Ok(faults)
    }

    /// Rolls the dice for one fault and, when it strikes, counts it.
    fn strikes(&self, rate: f64, counter: fn(&mut Stats) -> &mut u64) -> bool {
        let mut state = self.lock();
        let struck = state.roll(rate);
        if struck {
            *counter(&mut state.stats) += 1;
        }
        struck
    }

    /// Marks `key` as in flight, or answers Stripe's 409 when another
    /// creation holds it. Checked and marked under one lock, so of two
    /// creations racing with one key exactly one goes on.
    fn claim_key(&self, key: &str) -> Result<InFlight<'_>, SandboxError> {
        let mut state = self.lock();
        if !state.in_flight.insert(key.to_owned()) {
            state.stats.conflicts += 1;
            return Err(SandboxError::Conflict {
                code: "idempotency_key_in_use".to_owned(),
                message: format!(
                    "A request with the idempotency key '{key}' is still being processed; \
                     retry later"
                ),
            });
        }
        Ok(InFlight {
            sandbox: self,
            key: key.to_owned(),
        })
    }

    /// Validates and records a refund, or replays an idempotent one. All
    /// checks happen under the same lock as the recording, so concurrent
    /// creations can never over-refund a payment.
    fn record_refund(
        &self,
        req: NewRefund,
        idempotency_key: Option<&str>,
    ) -> Result<Recorded, SandboxError> {
        validate_refund_request(&req)?;
        let now = self.clock.elapsed();
        let mut state = self.lock();

        // The key is looked up first: a replay must return the original refund
        // even when the payment has been fully refunded since.
        if let Some(key) = idempotency_key
            && let Some(&i) = state.keys.get(key)
        {
            let Some(record) = state.refunds.get(i) else {
                return Err(SandboxError::Api {
                    message: "the sandbox ledger is inconsistent".to_owned(),
                });
            };
            if record.request != req {
                return Err(SandboxError::invalid(
                    "idempotency_key_reused",
                    format!(
                        "Keys for idempotent requests can only be used with the same parameters \
                         they were first used with; '{key}' was used for refund {} of payment {}",
                        record.refund.id, record.refund.payment
                    ),
                ));
            }
            let refund = record.view(now);
            state.stats.idempotent_replays += 1;
            return Ok(Recorded {
                refund,
                settles: None,
            });
        }

        let refund_id = loop {
            let id = random_id(REFUND_ID_PREFIX);
            if !state.refund_ids.contains_key(&id) {
                break id;
            }
        };
        let settle_delay = Duration::from_millis(state.faults.settle_delay_ms);
        let fail_after_pending_rate = state.faults.fail_after_pending_rate;
        let payment =
            state.payments.get(&req.payment).cloned().ok_or_else(|| {
                SandboxError::missing(format!("No such payment: '{}'", req.payment))
            })?;
        if payment.status != PaymentStatus::Succeeded {
            return Err(SandboxError::invalid(
                "charge_not_refundable",
                format!(
                    "Payment {} cannot be refunded because its status is {:?}",
                    payment.id, payment.status
                ),
            ));
        }
        let remaining = payment.amount - state.refunded(&payment.id, now);
        if let Some(amount) = req.amount
            && amount <= 0
        {
            return Err(SandboxError::invalid(
                "invalid_amount",
                format!("Refund amount must be a positive integer, got {amount}"),
            ));
        }
        if remaining <= 0 {
            return Err(SandboxError::invalid(
                "charge_already_refunded",
                format!("Payment {} has already been refunded in full", payment.id),
            ));
        }
        let amount = req.amount.unwrap_or(remaining);
        if amount > remaining {
            return Err(SandboxError::invalid(
                "amount_too_large",
                format!(
                    "Refund amount ({amount} {cur}) is greater than the amount remaining to refund \
                     on payment {id} ({remaining} {cur})",
                    cur = payment.currency,
                    id = payment.id,
                ),
            ));
        }

        // Failed refunds give nothing back, so they do not use up the payment
        // (`State::refunded`); one that fails after pending does until it fails.
        let fails_on_settle = !payment.fail_refunds && state.roll(fail_after_pending_rate);
        let (status, failure_code, failure_reason, settles_at) = if payment.fail_refunds {
            (
                RefundStatus::Failed,
                Some(FAILED_REFUND_CODE.to_owned()),
                Some(FAILED_REFUND_REASON.to_owned()),
                None,
            )
        } else if fails_on_settle {
            state.stats.failed_after_pending += 1;
            let delay = if settle_delay.is_zero() {
                Duration::from_millis(DEFAULT_FAIL_AFTER_PENDING_MS)
            } else {
                settle_delay
            };
            (RefundStatus::Pending, None, None, Some(now + delay))
        } else if settle_delay.is_zero() {
            (RefundStatus::Succeeded, None, None, None)
        } else {
            (RefundStatus::Pending, None, None, Some(now + settle_delay))
        };
        let refund = Refund {
            id: refund_id.clone(),
            payment: payment.id.clone(),
            amount,
            currency: payment.currency.clone(),
            status,
            reason: req.reason.clone(),
            metadata: req.metadata.clone(),
            idempotency_key: idempotency_key.map(str::to_owned),
            failure_code,
            failure_reason,
            created: unix_now(),
        };

        let record = RefundRecord {
            refund: refund.clone(),
            settles_at,
            fails_on_settle,
            request: req,
        };
        let settles = settles_at.map(|at| (record.view(at), at.saturating_sub(now)));
        let index = state.refunds.len();
        state.refunds.push(record);
        state.refund_ids.insert(refund_id, index);
        state
            .refunds_by_payment
            .entry(refund.payment.clone())
            .or_default()
            .push(index);
        if let Some(key) = idempotency_key {
            state.keys.insert(key.to_owned(), index);
        }
        state.stats.refunds_created += 1;
        Ok(Recorded { refund, settles })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can leave the state half-updated on a panic
        // (they validate before mutating), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn random_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + ID_RANDOM_LEN);
    id.push_str(prefix);
    id.extend(
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(ID_RANDOM_LEN)
            .map(char::from),
    );
    id
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Upper-cases a currency code and checks that ISO 4217 knows it.
fn normalize_currency(currency: &str) -> Result<String, SandboxError> {
    let code = currency.to_ascii_uppercase();
    if code.len() == 3
        && code.bytes().all(|b| b.is_ascii_uppercase())
        && iso_currency::Currency::from_code(&code).is_some()
    {
        Ok(code)
    } else {
        Err(SandboxError::invalid(
            "parameter_invalid",
            format!("'{currency}' is not a known ISO 4217 currency code"),
        ))
    }
}

/// Caller-chosen payment ids end up in URL paths, so keep them to a safe alphabet.
fn validate_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::invalid(
            "parameter_invalid",
            format!(
                "id must be 1 to {MAX_KEY_LEN} characters of A-Z, a-z, 0-9, '_', '-', '.', ':'"
            ),
        ))
    }
}

/// Keys travel in an HTTP header, so they must be visible ASCII.
fn validate_idempotency_key(key: &str) -> Result<(), SandboxError> {
    if !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(SandboxError::invalid(
            "parameter_invalid",
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ))
    }
}

fn validate_refund_request(req: &NewRefund) -> Result<(), SandboxError> {
    if req
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
    {
        return Err(SandboxError::invalid(
            "parameter_invalid",
            format!("reason must be at most {MAX_REASON_LEN} characters"),
        ));
    }
    if req.metadata.len() > MAX_METADATA_KEYS {
        return Err(SandboxError::invalid(
            "parameter_invalid",
            format!("metadata can have at most {MAX_METADATA_KEYS} keys"),
        ));
    }
    for (key, value) in &req.metadata {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_LEN {
            return Err(SandboxError::invalid(
                "parameter_invalid",
                format!(
                    "metadata keys must be 1 to {MAX_METADATA_KEY_LEN} characters, got '{key}'"
                ),
            ));
        }
        if value.chars().count() > MAX_METADATA_VALUE_LEN {
            return Err(SandboxError::invalid(
                "parameter_invalid",
                format!("metadata value of '{key}' exceeds {MAX_METADATA_VALUE_LEN} characters"),
            ));
        }
    }
    Ok(())
}

/// Records a request at `now` in a one-second sliding window; returns how many it holds.
fn slide(window: &mut VecDeque<Duration>, now: Duration) -> u64 {
    window.push_back(now);
    while window
        .front()
        .is_some_and(|&t| t + Duration::from_secs(1) <= now)
    {
        window.pop_front();
    }
    window.len() as u64
}
