//! Webhook endpoints (subscriptions to an account's events) and the deliveries of events to
//! them: what they are, and the pure rules of delivery (which events an endpoint takes, when a
//! failed attempt is tried again, when an endpoint has failed long enough to be disabled).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{AccountId, EventId, EventType, Timestamp};

prefixed_id!(
    /// A webhook endpoint: `we_` and a UUIDv7.
    WebhookEndpointId,
    "we_"
);

prefixed_id!(
    /// One event's delivery to one endpoint: `whd_` and a UUIDv7.
    WebhookDeliveryId,
    "whd_"
);

/// The longest description kept, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// An account's subscription to its events, as shown (never its secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub id: WebhookEndpointId,
    pub account: AccountId,
    pub url: String,
    pub description: String,
    /// The event types sent to it; empty means all of them, including types added later.
    pub event_types: BTreeSet<EventType>,
    pub enabled: bool,
    /// Why the service disabled it (it failed for the whole retry window); empty when the
    /// account disabled it or it is enabled.
    pub disabled_reason: String,
    /// The last event sequence handed to its deliveries: it receives the events after it.
    pub cursor: u64,
    /// Since when every delivery attempt has failed; `None` after a success.
    pub failing_since: Option<Timestamp>,
    /// Until when the secret before the last rotation still signs, beside the new one.
    pub previous_secret_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl WebhookEndpoint {
    /// Whether events of type `kind` go to this endpoint.
    pub fn wants(&self, kind: EventType) -> bool {
        self.event_types.is_empty() || self.event_types.contains(&kind)
    }
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Not delivered yet: due for its first attempt or a retry.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt in the retry window failed; `RetryWebhookDelivery` sends it again.
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub id: WebhookDeliveryId,
    pub endpoint_id: WebhookEndpointId,
    pub account: AccountId,
    pub event_id: EventId,
    pub event_type: EventType,
    pub event_sequence: u64,
    pub status: DeliveryStatus,
    /// Attempts made (started) so far.
    pub attempts: u32,
    /// The HTTP status of the last answer; `None` before one, or when the last attempt got none.
    pub last_status_code: Option<u16>,
    /// What went wrong on the last attempt: a transport error, or the start of a non-2xx body.
    pub last_error: String,
    /// When a PENDING delivery is next due (a retry's time, or an attempt's lease).
    pub next_attempt_at: Option<Timestamp>,
    /// When the current retry window began: its creation, or the last `RetryWebhookDelivery`.
    pub window_started_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// When failed attempts are tried again and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt; it doubles after each, with jitter.
    pub min_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
    /// How long a delivery is retried, and how long an endpoint may fail every attempt before
    /// it is disabled.
    pub window: Duration,
}

impl Default for RetryPolicy {
    /// About three days: 30 s, 1 min, 2 min, ... up to 6 h between attempts (some 20 attempts).
    fn default() -> Self {
        Self {
            min_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(6 * 60 * 60),
            window: Duration::from_secs(3 * 24 * 60 * 60),
        }
    }
}

impl RetryPolicy {
    /// The delay after `failed` failed attempts (1 after the first): `min_delay · 2^(failed-1)`
    /// capped at `max_delay`, with "full" jitter of up to the same again (backon's), so that
    /// deliveries failing together do not come back together.
    pub fn delay_after(&self, failed: u32) -> Duration {
        use backon::BackoffBuilder as _;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(failed.saturating_sub(1) as usize)
            .unwrap_or(self.max_delay)
    }

    /// What follows a failed attempt made at `now` of a delivery whose window began at
    /// `window_started_at`: a retry at the returned time, or `None` to give up (the next
    /// attempt would start after the window).
    pub fn next_attempt(
        &self,
        failed: u32,
        window_started_at: Timestamp,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let next = now.saturating_add(self.delay_after(failed));
        (next <= window_started_at.saturating_add(self.window)).then_some(next)
    }

    /// Whether an endpoint whose attempts have all failed since `failing_since` is to be
    /// disabled at `now`: it has failed for the whole window, or a delivery whose window began
    /// at `gave_up` has just been given up and the endpoint was already failing when that
    /// delivery was first tried (within one longest delay of its window's start), so that it has
    /// failed for about the window too. The second case matters for an endpoint that gets one
    /// event and nothing more: no later failure would ever show the whole window.
    pub fn endpoint_exhausted(
        &self,
        failing_since: Timestamp,
        gave_up: Option<Timestamp>,
        now: Timestamp,
    ) -> bool {
        now >= failing_since.saturating_add(self.window)
            || gave_up.is_some_and(|start| failing_since <= start.saturating_add(self.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn delays_double_with_jitter_and_are_capped() {
        let p = policy();
        for failed in 1..=30 {
            let base = p
                .min_delay
                .saturating_mul(2u32.saturating_pow(failed - 1))
                .min(p.max_delay);
            let d = p.delay_after(failed);
            assert!(d >= base, "attempt {failed}: {d:?} < {base:?}");
            assert!(
                d <= base.saturating_mul(2),
                "attempt {failed}: {d:?} > 2 × {base:?}"
            );
        }
    }

    #[test]
    fn the_default_schedule_retries_for_about_three_days_then_gives_up() {
        let p = policy();
        let start = Timestamp::from_micros(1_000_000);
        let mut now = start;
        let mut failed = 0;
        while let Some(next) = p.next_attempt(failed + 1, start, now) {
            failed += 1;
            now = next;
        }
        let span = now.as_micros() - start.as_micros();
        // The last retry lands within the last max-delay-and-jitter of the window.
        assert!(span as u128 <= p.window.as_micros());
        assert!(span as u128 >= (p.window - 2 * p.max_delay).as_micros());
        assert!((12..=30).contains(&failed), "{failed} retries");
    }

    #[test]
    fn an_endpoint_is_exhausted_after_the_whole_window_or_a_delivery_given_up_in_its_streak() {
        let p = policy();
        let since = Timestamp::from_micros(1_000_000);
        let half = since.saturating_add(p.window / 2);
        assert!(!p.endpoint_exhausted(since, None, half));
        assert!(p.endpoint_exhausted(since, None, since.saturating_add(p.window)));
        // A delivery made when the streak began, given up: the whole window failed.
        assert!(p.endpoint_exhausted(since, Some(since), half));
        // A delivery made long after the streak began, given up: also (it started later).
        assert!(p.endpoint_exhausted(since, Some(half), half));
        // A delivery made before a later streak began (a success came after it): not yet.
        let later_streak = since.saturating_add(p.max_delay * 2);
        assert!(!p.endpoint_exhausted(later_streak, Some(since), half));
    }

    #[test]
    fn an_endpoint_without_types_wants_every_event() {
        let mut e = WebhookEndpoint {
            id: WebhookEndpointId::generate(),
            account: super::super::parse_account("acct_a").expect("account"),
            url: "https://example.com/hook".into(),
            description: String::new(),
            event_types: BTreeSet::new(),
            enabled: true,
            disabled_reason: String::new(),
            cursor: 0,
            failing_since: None,
            previous_secret_expires_at: None,
            created_at: Timestamp::from_micros(0),
            updated_at: Timestamp::from_micros(0),
        };
        assert!(EventType::ALL.iter().all(|t| e.wants(*t)));
        e.event_types.insert(EventType::RefundSucceeded);
        assert!(e.wants(EventType::RefundSucceeded));
        assert!(!e.wants(EventType::RefundCreated));
    }
}
