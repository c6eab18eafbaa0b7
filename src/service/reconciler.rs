//! The reconciler: settles PENDING refunds by asking their provider, at start-up and then
//! periodically, on an exponential back-off per refund.
//!
//! A refund whose provider call ended ambiguously is looked up before anything is re-sent:
//! found means we record the provider's answer; not found means the provider never processed
//! it, and only then is it sent again, with the same idempotency key. Claims are conditional
//! writes, so several replicas can run reconcilers over one database without doubling work.
//!
//! A provider that cannot be asked about refunds (`Capabilities::refund_lookup` false, Adyen) is
//! neither asked nor sent anything again: its refunds stay PENDING until their notification, and
//! the pass reports those pending too long (`watch_webhook_only`).

use std::future::Future;
use std::time::Duration;

use tracing::Instrument as _;

use super::{Origin, RefundService, internal};
use crate::domain::{Failure, Refund, RefundError, Timestamp};
use crate::providers::{Provider as _, ProviderError};
use crate::store::PendingRefund;

/// How many due refunds one pass takes.
const BATCH: u64 = 100;

/// Why the refund of a job taken over was not resolved.
pub(crate) enum TakenOverError {
    /// Its provider could not be asked; `attempts` is the refund's count after the job's claim.
    Unreachable {
        error: RefundError,
        attempts: u32,
    },
    Failed(RefundError),
}

impl From<RefundError> for TakenOverError {
    fn from(e: RefundError) -> Self {
        Self::Failed(e)
    }
}

/// What one reconciliation of a claimed refund did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// The provider was asked: the refund now has its answer (settled, or PENDING there), or
    /// it was sent again because the provider had never seen it.
    Asked,
    /// The provider could not be asked now (unreachable, or pacing us); the refund waits for a
    /// later pass.
    Unreachable,
    /// Nothing can be asked (the provider looks no refund up, or is not configured here): the
    /// refund waits for its notification.
    Unaskable,
}

impl RefundService {
    /// One pass over the refunds that are due now. Returns how many it looked at.
    pub async fn reconcile_once(&self) -> Result<usize, RefundError> {
        let now = self.clock().now();
        let due = self
            .store()
            .due_pending(now, BATCH)
            .await
            .map_err(internal)?;
        let mut handled = 0;
        for pending in due {
            // Each claim's lease starts when it is taken, not when the pass began: the refunds
            // before it may have taken minutes.
            let lease = self.clock().now().saturating_add(self.reconcile_lease());
            if !self
                .store()
                .claim(&pending, lease)
                .await
                .map_err(internal)?
            {
                continue; // another worker took it
            }
            handled += 1;
            let id = pending.refund.id.clone();
            let span = tracing::info_span!("reconcile", refund_id = %id, provider = %pending.refund.provider);
            if let Err(e) = self.reconcile_one(pending, lease).instrument(span).await {
                tracing::error!(refund_id = %id, error = ?anyhow::Error::new(e), "reconciling a refund failed");
            }
        }
        Ok(handled)
    }

    /// A reconciler claim covers a look-up and, when the provider never saw the refund, sending
    /// it: two provider budgets, plus the margin.
    fn reconcile_lease(&self) -> std::time::Duration {
        self.config()
            .provider_budget
            .saturating_mul(2)
            .saturating_add(self.config().lease_margin)
    }

    /// The PENDING refund of a bulk job taken over from a worker whose lease lapsed, resolved as
    /// part of the job instead of when the reconciler comes round: looked up at its provider
    /// and, when the provider never saw it, sent (with its own idempotency key).
    ///
    /// Whose attempt holds the refund decides when. Still its creating attempt's (`attempts` 1,
    /// never approved, nobody claimed it since), the lease is taken over at once: that attempt
    /// was the dead worker's job, and a job stops at its driver's fence, before the job's
    /// lease can lapse (see `bulk_runner`), so it is over. Any other holder — a reconciler's
    /// claim, an approval sending it — may be calling the provider now: the job waits until
    /// that lease ends, at most [`Self::reconcile_lease`] (no lease is longer; a check further
    /// off is a scheduled one, after an attempt that asked, and the refund is left as it is).
    /// `ours` is the refund's attempts as this job's previous try left them, when that try
    /// claimed it and could not reach the provider: unchanged, nobody else has claimed it
    /// since, and that lease is the job's own. Returns the refund as it is then, or
    /// [`TakenOverError::Unreachable`] when the provider could not be asked: the job waits for
    /// it rather than report a refund never sent.
    pub(crate) async fn resolve_taken_over(
        &self,
        refund: Refund,
        ours: Option<u32>,
    ) -> Result<Refund, TakenOverError> {
        let reread = || async { Ok(self.get_refund(&refund.account, &refund.id).await?) };
        let mut waited = false;
        let pending = loop {
            let Some(pending) = self
                .store()
                .pending_refund(&refund.id)
                .await
                .map_err(internal)?
            else {
                return reread().await; // settled meanwhile
            };
            let now = self.clock().now();
            let due_in = pending
                .next_check_at
                .map(|at| {
                    Duration::from_micros(
                        u64::try_from(at.saturating_sub(now.as_micros())).unwrap_or(0),
                    )
                })
                .unwrap_or_default();
            let creating_attempt =
                pending.refund.attempts == 1 && pending.refund.approved_by.is_none();
            let our_own = ours == Some(pending.refund.attempts);
            if due_in.is_zero() || (!waited && (creating_attempt || our_own)) {
                break pending;
            }
            if waited || due_in > self.reconcile_lease() {
                return Ok(pending.refund); // scheduled, or still held: as it is
            }
            tracing::info!(refund_id = %refund.id, attempts = pending.refund.attempts, wait = ?due_in, "the refund of the job taken over is held by another attempt; waiting for its lease to end");
            tokio::time::sleep(due_in).await;
            waited = true;
        };
        let lease = self.clock().now().saturating_add(self.reconcile_lease());
        if !self
            .store()
            .claim(&pending, lease)
            .await
            .map_err(internal)?
        {
            return reread().await; // someone else took it just now
        }
        let provider = pending.refund.provider.clone();
        let attempts = pending.refund.attempts.saturating_add(1);
        let span = tracing::info_span!("reconcile", refund_id = %refund.id, provider = %provider, taken_over = true);
        match self.reconcile_one(pending, lease).instrument(span).await? {
            Resolution::Asked | Resolution::Unaskable => reread().await,
            Resolution::Unreachable => Err(TakenOverError::Unreachable {
                error: RefundError::ProviderUnavailable {
                    provider,
                    message: format!(
                        "refund {} of the job taken over could not be looked up at its provider",
                        refund.id
                    ),
                    retry_after: None,
                    transient: true,
                },
                attempts,
            }),
        }
    }

    /// Settles one claimed refund; every provider call ends before `lease_until`.
    async fn reconcile_one(
        &self,
        p: PendingRefund,
        lease_until: Timestamp,
    ) -> Result<Resolution, RefundError> {
        // Counting the claim just made.
        let attempts = i32::try_from(p.refund.attempts)
            .unwrap_or(i32::MAX)
            .saturating_add(1);
        let refund = p.refund;
        let Some(provider) = self.adapter_of(&refund.provider, &refund.route).await? else {
            tracing::warn!(refund_id = %refund.id, provider = %refund.provider, "provider is not configured; refund stays PENDING");
            self.later(&refund, attempts).await?;
            return Ok(Resolution::Unaskable);
        };
        if !provider.capabilities().refund_lookup {
            // Nothing can be asked and nothing may be sent again without knowing: its
            // notification settles it (`watch_webhook_only` reports it when that is late).
            tracing::debug!(refund_id = %refund.id, "provider cannot be asked about refunds; it stays PENDING until notified");
            self.later(&refund, attempts).await?;
            return Ok(Resolution::Unaskable);
        }
        let found = match &refund.provider_refund_id {
            Some(pid) => self
                .call_within(lease_until, provider.get_refund(pid))
                .await
                .map(Some),
            None => {
                let key = refund.provider_idempotency_key();
                self.call_within(lease_until, provider.find_refund(&refund.payment, key))
                    .await
            }
        };
        match found {
            Ok(Some(provider_refund)) => {
                self.apply(refund, provider_refund, attempts, Origin::RECONCILER)
                    .await?;
            }
            // The provider has no trace of it: the request never arrived, so sending it again
            // (with the same idempotency key) cannot refund twice.
            Ok(None) | Err(ProviderError::NotFound(_)) if refund.provider_refund_id.is_none() => {
                if attempts > self.config().max_attempts {
                    let failure = Failure {
                        code: "provider_unreachable".to_owned(),
                        reason: format!(
                            "the provider never received the refund after {} attempts",
                            attempts - 1
                        ),
                    };
                    self.finish(refund, failure, Origin::RECONCILER).await?;
                } else {
                    tracing::info!(refund_id = %refund.id, attempts, "provider never received the refund; sending it again");
                    self.submit(provider.as_ref(), refund, Origin::RECONCILER, lease_until)
                        .await?;
                }
            }
            Ok(None) | Err(_) => {
                self.later(&refund, attempts).await?;
                return Ok(Resolution::Unreachable);
            }
        }
        Ok(Resolution::Asked)
    }

    /// Counts, per provider that settles refunds only by webhook, the refunds PENDING for longer
    /// than `webhook_only_pending_alert` (the gauge `refund_webhook_only_pending_overdue`), and
    /// warns when that number changes and is not zero: their notification may be lost, and only
    /// an operator can find out what became of them (in the provider's dashboard).
    pub async fn watch_webhook_only(&self) -> Result<(), RefundError> {
        let threshold = self.config().webhook_only_pending_alert;
        let before = self.clock().now().saturating_sub(threshold);
        for name in self.webhook_only_providers().await? {
            let overdue = self
                .store()
                .pending_since_before(&name, before)
                .await
                .map_err(internal)?;
            let previous = self
                .metrics()
                .set_webhook_only_overdue(name.as_str(), overdue);
            if overdue > 0 && i64::try_from(overdue).ok() != Some(previous) {
                tracing::warn!(provider = %name, overdue, threshold = %humantime::format_duration(threshold), "refunds of a provider that settles only by webhook have been PENDING too long: their notification may be lost; check them in the provider's dashboard");
            }
        }
        Ok(())
    }

    /// The providers, configured or reached through accounts' connections, that settle only by
    /// webhook.
    async fn webhook_only_providers(
        &self,
    ) -> Result<Vec<crate::domain::ProviderName>, RefundError> {
        let mut names: Vec<_> = self
            .providers()
            .names()
            .filter(|n| {
                self.providers()
                    .get(n)
                    .is_some_and(|p| p.capabilities().settles_by_webhook_only)
            })
            .cloned()
            .collect();
        for stored in self
            .store()
            .list_connections(None)
            .await
            .map_err(internal)?
        {
            let name = &stored.connection.provider;
            if names.contains(name) {
                continue;
            }
            let settles_by_webhook = self
                .adapter_of(
                    name,
                    &crate::domain::Route::Connection(stored.connection.id),
                )
                .await
                // A connection that cannot be opened is reported where refunds use it.
                .ok()
                .flatten()
                .is_some_and(|p| p.capabilities().settles_by_webhook_only);
            if settles_by_webhook {
                names.push(name.clone());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn later(
        &self,
        refund: &crate::domain::Refund,
        attempts: i32,
    ) -> Result<(), RefundError> {
        let next = self.clock().now().saturating_add(self.backoff(attempts));
        self.store()
            .keep_pending(&refund.id, None, next)
            .await
            .map_err(internal)
    }
}

/// Runs the reconciler until `shutdown` completes: once at once (start-up recovery), then every
/// `reconcile_interval`. Expired idempotency keys are purged on the way.
pub async fn run_reconciler(service: RefundService, shutdown: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(service.config().reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        // Drain everything due before sleeping again.
        loop {
            match service.reconcile_once().await {
                Ok(n) if n as u64 >= BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = ?anyhow::Error::new(e), "reconciler pass failed");
                    break;
                }
            }
        }
        if let Err(e) = service.watch_webhook_only().await {
            tracing::error!(error = ?anyhow::Error::new(e), "counting overdue webhook-only refunds failed");
        }
        match service.retry_webhooks().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "stored webhook events processed again"),
            Err(e) => {
                tracing::error!(error = ?anyhow::Error::new(e), "retrying stored webhooks failed")
            }
        }
        match service.prune_webhook_deliveries().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                pruned = n,
                "finished webhook deliveries past retention pruned"
            ),
            Err(e) => {
                tracing::error!(error = ?anyhow::Error::new(e), "pruning webhook deliveries failed")
            }
        }
        match service.prune_events().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "events past their retention pruned"),
            Err(e) => {
                tracing::error!(error = ?anyhow::Error::new(e), "pruning events failed")
            }
        }
        match service
            .store()
            .purge_expired_idempotency_keys(Timestamp::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired idempotency keys purged"),
            Err(e) => {
                tracing::error!(error = ?anyhow::Error::new(e), "purging idempotency keys failed")
            }
        }
    }
}
