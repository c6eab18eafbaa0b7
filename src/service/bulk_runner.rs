//! The bulk runner: runs the jobs of every RUNNING batch, with work leased from the database.
//!
//! Each process has one runner with its own owner id. For each running batch it starts a
//! driver that claims jobs (a compare-and-set on the batch's dispatch cursor, or jobs whose
//! lease expired), runs up to the batch's concurrency at once through the ordinary refund path,
//! and records each result with its event. A heartbeat keeps the leases of running jobs alive;
//! when a process dies its leases expire and another runner — on restart, or another replica —
//! takes the jobs over. Jobs carry fixed idempotency keys, so a job taken over never refunds
//! twice: its refund is found, not made again.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

use tokio::sync::watch;
use tokio::task::{self, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::reconciler::TakenOverError;
use super::{Origin, RefundService, internal};
use crate::domain::{
    Bulk, BulkId, JobOutcome, ProviderName, ProviderWait, RefundError, StopReason, Timestamp,
};
use crate::providers::traffic::Availability;
use crate::store::ClaimedItem;

/// How far apart the clocks of two replicas may be, for finding a job's refund.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);

/// Runs batches until `shutdown` completes; then stops dispatching, lets the jobs in flight
/// finish and returns.
pub async fn run_bulk_runner(service: RefundService, shutdown: impl Future<Output = ()>) {
    let runner = format!("runner_{}", uuid::Uuid::new_v4().simple());
    let mut started = 0u64;
    let cfg = service.config().bulk.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut drivers: HashMap<BulkId, JoinHandle<()>> = HashMap::new();
    let mut poll = tokio::time::interval(cfg.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = service.inner.bulk_wakeup.notified() => {}
            _ = poll.tick() => {}
        }
        drivers.retain(|_, driver| !driver.is_finished());
        match service.store().running_bulks().await {
            Ok(bulks) => {
                for bulk in bulks {
                    if drivers.contains_key(&bulk.id) {
                        continue;
                    }
                    let id = bulk.id.clone();
                    started += 1;
                    let driver = Driver {
                        service: service.clone(),
                        // Each driver its own owner: the jobs of one that failed are not
                        // renewed by the next for the same batch, but lapse and are taken over.
                        owner: format!("{runner}_{started}"),
                        bulk,
                        stop: stop_rx.clone(),
                        fence: watch::Sender::new(Instant::now()),
                    };
                    let span = tracing::info_span!("bulk.driver", bulk_id = %id);
                    drivers.insert(id, tokio::spawn(driver.run().instrument(span)));
                }
            }
            Err(e) => {
                tracing::error!(error = ?anyhow::Error::new(e), "listing running batches failed")
            }
        }
    }
    let _ = stop_tx.send(true);
    // Drivers stop dispatching, and keep their leases alive while their jobs in flight finish.
    for (_, driver) in drivers {
        let _ = driver.await;
    }
}

struct Driver {
    service: RefundService,
    owner: String,
    bulk: Bulk,
    stop: watch::Receiver<bool>,
    /// When this driver's job leases may lapse, for want of a renewal: the last renewal's start
    /// plus the lease, less a margin for the other workers' clocks. Every job it runs stops
    /// there on its own (see [`Driver::spawn`]), whatever the driver itself is busy with.
    fence: watch::Sender<Instant>,
}

/// What became of one dispatched job.
enum JobEnd {
    /// It has its result.
    Done(JobOutcome),
    /// Its outcome could not be told (its refund may exist but could not be read): it is handed
    /// back rather than given a result that could be wrong.
    Undetermined,
    /// Its provider is down or pacing us, and nothing was made, or the refund a dead worker
    /// made could not be looked up: the job can wait and run again (with the same idempotency
    /// key, in `item`).
    ProviderDown {
        item: ClaimedItem,
        waiting: Box<Waiting>,
    },
}

/// Why a job waits for its provider.
struct Waiting {
    error: RefundError,
    /// The result it has if the batch stops waiting: its refund's, when it has one (it then
    /// stays PENDING for the reconciler), else `error`'s.
    if_given_up: Option<JobOutcome>,
    /// The attempts of the job's refund after the job claimed it, when it did: its next try
    /// finds the lease its own (see `RefundService::resolve_taken_over`).
    refund_attempts: Option<u32>,
}

impl Waiting {
    fn new(error: RefundError) -> Self {
        Self {
            error,
            if_given_up: None,
            refund_attempts: None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match &self.error {
            RefundError::ProviderUnavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The job's result now that it waits no more, with `error` as the reason when it has no
    /// refund.
    fn given_up(self, error: &RefundError) -> JobOutcome {
        self.if_given_up
            .unwrap_or_else(|| JobOutcome::of_error(error))
    }
}

/// One provider whose jobs the driver holds back, queued, until it answers again.
struct Hold {
    jobs: VecDeque<ClaimedItem>,
    since: Instant,
    since_at: Timestamp,
    /// When the next held job goes out, as the probe; the others follow once it gets through.
    next_try: Instant,
    reason: String,
    /// The held job in flight as the probe.
    probe: Option<task::Id>,
}

/// The shortest pause before a held provider is tried again.
const MIN_HOLD_RETRY: Duration = Duration::from_millis(250);

/// What a driver holds back, kept outside its loop so that whatever way the loop ends, the jobs
/// are let go of (their leases given up) and the waits ended.
#[derive(Default)]
struct Held {
    /// Jobs held back per unavailable provider.
    holds: HashMap<ProviderName, Hold>,
    /// Jobs released from a hold, to run as room allows.
    ready: VecDeque<ClaimedItem>,
    /// Providers whose wait reached its bound (and how long it was): their jobs fail rather
    /// than wait again, until one of them gets through.
    gave_up: HashMap<ProviderName, Duration>,
    /// The results held jobs have if they run no more, by index, for those that have one
    /// other than their error: a job taken over whose refund exists reports that refund.
    if_given_up: HashMap<u32, JobOutcome>,
    /// Held jobs' `Waiting::refund_attempts`, by index.
    refund_attempts: HashMap<u32, u32>,
}

impl Driver {
    async fn run(mut self) {
        let id = self.bulk.id.clone();
        let mut held = Held::default();
        if let Err(e) = self.drive(&mut held).await {
            tracing::error!(bulk_id = %id, error = ?anyhow::Error::new(e), "bulk driver failed; the runner will restart it");
        }
        if let Err(e) = self.let_go(&mut held).await {
            tracing::error!(bulk_id = %id, error = ?anyhow::Error::new(e), "giving back held jobs failed; their leases will lapse");
        }
    }

    /// Gives the held jobs back to the database (whoever runs the batch next takes them over)
    /// and ends their waits.
    async fn let_go(&self, held: &mut Held) -> Result<(), RefundError> {
        let indices = self.drain_holds(&mut held.holds, &mut held.ready).await;
        held.if_given_up.clear();
        held.refund_attempts.clear();
        self.release(&indices).await
    }

    async fn drive(&mut self, held: &mut Held) -> Result<(), RefundError> {
        let cfg = self.service.config().bulk.clone();
        let concurrency = self.bulk.max_concurrency.max(1);
        let mut in_flight: JoinSet<JobEnd> = JoinSet::new();
        // Which job each task runs (and for which provider), so that even a task that panicked
        // gets its job a result.
        let mut jobs: HashMap<task::Id, (u32, ProviderName)> = HashMap::new();
        let Held {
            holds,
            ready,
            gave_up,
            if_given_up,
            refund_attempts,
        } = held;
        // Held jobs beyond which no more jobs are claimed: the rest stay queued in the database,
        // free for other replicas.
        let hold_cap = (concurrency as usize).saturating_mul(2).max(64);
        let mut stopping = *self.stop.borrow();
        // The driver renews its own jobs' leases (held ones included), three times per lease
        // period so that one slow renewal loses nothing. Doing it here, between its own writes,
        // means a renewal never contends with this driver's recording of results (on
        // PostgreSQL a batch renewal running beside a result transaction could deadlock on the
        // same rows).
        let mut heartbeat = tokio::time::interval(cfg.lease / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The fence: when this driver's leases may lapse for want of a renewal (the database
        // unreachable), its jobs in flight are stopped first, so that whoever takes them over is
        // alone with their refunds (see `RefundService::resolve_taken_over`). A job's leases
        // all end at or after the last renewal's, so the fence is that renewal's start plus the
        // lease, less a margin for the other workers' clocks. Each job also stops at the fence
        // by itself, should the driver be stuck in a write when it comes.
        let fence_margin = cfg.lease / 6;
        let fence_at = |renewed: Instant| {
            renewed
                .checked_add(cfg.lease - fence_margin)
                .unwrap_or(renewed + Duration::from_secs(86_400 * 365))
        };
        self.fence.send_replace(fence_at(Instant::now()));
        loop {
            let fence = *self.fence.borrow();
            if !in_flight.is_empty() && Instant::now() >= fence {
                in_flight.abort_all();
                return Err(RefundError::Internal(anyhow::anyhow!(
                    "the job leases of batch {} could not be renewed for {}; its jobs in flight \
                     were stopped before their leases lapse, for other workers to take over",
                    self.bulk.id,
                    humantime::format_duration(cfg.lease - fence_margin)
                )));
            }
            if !holds.is_empty() {
                self.end_overdue_holds(holds, gave_up, if_given_up, cfg.max_provider_wait)
                    .await?;
                // A hold left with nothing in it (its last job, the probe, was handed back)
                // ends: there is nothing to wait for.
                let empty: Vec<ProviderName> = holds
                    .iter()
                    .filter(|(_, h)| h.jobs.is_empty() && h.probe.is_none())
                    .map(|(p, _)| p.clone())
                    .collect();
                for provider in empty {
                    if let Some(hold) = holds.remove(&provider) {
                        self.wait_ended(&provider, hold.since.elapsed(), false, 0)
                            .await;
                    }
                }
            }
            if stopping && (!holds.is_empty() || !ready.is_empty()) {
                // Held jobs go back to the database for whoever runs the batch next.
                let mut let_go = Held {
                    holds: std::mem::take(holds),
                    ready: std::mem::take(ready),
                    gave_up: HashMap::new(),
                    if_given_up: std::mem::take(if_given_up),
                    refund_attempts: std::mem::take(refund_attempts),
                };
                self.let_go(&mut let_go).await?;
            }

            // Dispatch: jobs released from a hold first, then due probes, then new claims.
            let mut room = concurrency.saturating_sub(in_flight.len() as u32);
            let now = Instant::now();
            let due = !ready.is_empty()
                || holds
                    .values()
                    .any(|h| h.probe.is_none() && h.next_try <= now && !h.jobs.is_empty());
            // Held jobs run only in a batch that still dispatches (a cancel or an abort may have
            // come while they waited); claims check that themselves.
            if room > 0
                && due
                && let Ok(Some(Bulk {
                    stop: Some(stop), ..
                })) = self
                    .service
                    .store()
                    .get_bulk(&self.bulk.account, &self.bulk.id)
                    .await
            {
                self.stop_holds(stop, holds, ready, if_given_up).await?;
                continue;
            }
            while room > 0
                && let Some(item) = ready.pop_front()
            {
                let ours = refund_attempts.get(&item.index).copied();
                if self.route(item, ours, holds, &mut in_flight, &mut jobs) {
                    room -= 1;
                }
            }
            for (provider, hold) in holds.iter_mut() {
                if room == 0 {
                    break;
                }
                if hold.probe.is_some() || hold.next_try > now {
                    continue;
                }
                if let Some(item) = hold.jobs.pop_front() {
                    self.service
                        .inner
                        .metrics
                        .bulk_jobs_held(provider.as_str(), -1);
                    tracing::info!(bulk_id = %self.bulk.id, provider = %provider, index = item.index, "trying a held job: the provider's probe");
                    let ours = refund_attempts.get(&item.index).copied();
                    hold.probe = Some(self.spawn(item, ours, &mut in_flight, &mut jobs));
                    room -= 1;
                }
            }
            let held: usize = ready.len() + holds.values().map(|h| h.jobs.len()).sum::<usize>();
            // Claim in chunks (a quarter of the concurrency at a time) rather than one job per
            // finished job: every claim is a transaction, and the database is the bottleneck.
            let refill = (concurrency / 4).max(1);
            if !stopping
                && held < hold_cap
                && (room >= refill || (room > 0 && in_flight.is_empty()))
            {
                let now = Timestamp::now();
                let claim_started = Instant::now();
                let claimed = self
                    .service
                    .store()
                    .claim_items(
                        &self.bulk.id,
                        &self.owner,
                        room,
                        now,
                        now.saturating_add(cfg.lease),
                    )
                    .await
                    .map_err(internal)?;
                if !claimed.is_empty()
                    && in_flight.is_empty()
                    && holds.is_empty()
                    && ready.is_empty()
                {
                    // All this driver's leases are the ones just taken.
                    self.fence.send_replace(fence_at(claim_started));
                }
                for item in claimed {
                    self.route(item, None, holds, &mut in_flight, &mut jobs);
                }
            }
            // When the driver next has something to do for its holds: a probe (only when there
            // is room to send it; else a job that finishes wakes the driver), or a bound.
            let can_dispatch = in_flight.len() < concurrency as usize;
            let wake = holds
                .values()
                .map(|h| {
                    let bound = h.since + cfg.max_provider_wait;
                    if h.probe.is_none() && can_dispatch && !h.jobs.is_empty() {
                        h.next_try.min(bound)
                    } else {
                        bound
                    }
                })
                .min();
            if in_flight.is_empty() {
                if stopping {
                    return Ok(());
                }
                let holding = !holds.is_empty() || !ready.is_empty();
                if !holding
                    && self
                        .service
                        .store()
                        .finish_bulk_if_done(&self.bulk.id)
                        .await
                        .map_err(internal)?
                {
                    tracing::info!(bulk_id = %self.bulk.id, "bulk refund finished");
                    self.service.events_changed();
                    return Ok(());
                }
                // Nothing to claim now: the rest is leased to other workers (or to a dead one,
                // whose leases will expire), or held here. Look again later.
                match self
                    .service
                    .store()
                    .get_bulk(&self.bulk.account, &self.bulk.id)
                    .await
                {
                    Ok(Some(b)) if b.state != crate::domain::BulkState::Running => return Ok(()),
                    // Canceled (or aborted) while jobs are held: they will not run.
                    Ok(Some(Bulk {
                        stop: Some(stop), ..
                    })) if holding => {
                        self.stop_holds(stop, holds, ready, if_given_up).await?;
                        continue;
                    }
                    _ => {}
                }
                let nap = tokio::time::sleep(cfg.poll_interval);
                tokio::select! {
                    () = nap => {}
                    () = sleep_until_or_never(wake) => {}
                    // Held jobs are leased like running ones: a wait must not let them lapse.
                    _ = heartbeat.tick(), if holding => {
                        let started = Instant::now();
                        if self.renew(cfg.lease).await {
                            self.fence.send_replace(fence_at(started));
                        }
                    }
                    _ = self.stop.changed() => stopping = true,
                }
                continue;
            }
            let first = tokio::select! {
                joined = in_flight.join_next_with_id() => joined,
                () = sleep_until_or_never(wake) => continue,
                () = tokio::time::sleep_until(fence) => continue,
                _ = heartbeat.tick() => {
                    let started = Instant::now();
                    if self.renew(cfg.lease).await {
                        self.fence.send_replace(fence_at(started));
                    }
                    // A batch canceled (or aborted) while jobs are held: they will not run.
                    if (!holds.is_empty() || !ready.is_empty())
                        && let Ok(Some(Bulk { stop: Some(stop), .. })) = self
                            .service
                            .store()
                            .get_bulk(&self.bulk.account, &self.bulk.id)
                            .await
                    {
                        self.stop_holds(stop, holds, ready, if_given_up).await?;
                    }
                    continue;
                }
                _ = self.stop.changed() => {
                    stopping = true;
                    continue;
                }
            };
            // Record every job that has finished by now in one transaction.
            let mut finished = Vec::new();
            let mut undetermined = Vec::new();
            let mut next = first;
            while let Some(joined) = next {
                self.service.inner.metrics.bulk_jobs_finished(1);
                let (id, end) = match joined {
                    Ok((id, end)) => (id, end),
                    Err(e) => {
                        // It may have made its refund before it failed.
                        tracing::error!(bulk_id = %self.bulk.id, error = %e, "bulk job task failed; the job will be taken over");
                        (e.id(), JobEnd::Undetermined)
                    }
                };
                next = in_flight.try_join_next_with_id();
                let Some((index, provider)) = jobs.remove(&id) else {
                    continue;
                };
                let was_probe = holds.get(&provider).is_some_and(|h| h.probe == Some(id));
                match end {
                    JobEnd::ProviderDown { item, waiting } => {
                        if let Some(waited) = gave_up.get(&provider) {
                            let cause = match &waiting.error {
                                RefundError::ProviderUnavailable { message, .. } => message.clone(),
                                other => other.to_string(),
                            };
                            let error = gave_up_error(&provider, *waited, &cause);
                            finished.push((index, waiting.given_up(&error)));
                            continue;
                        }
                        if cfg.max_provider_wait.is_zero() {
                            let waiting = *waiting;
                            let outcome = match waiting.if_given_up {
                                Some(outcome) => outcome,
                                None => JobOutcome::of_error(&waiting.error),
                            };
                            finished.push((index, outcome));
                            continue;
                        }
                        let availability = self.availability(&provider).await;
                        let pause = Self::pause(availability.as_ref(), waiting.retry_after());
                        let reason = Self::reason(availability, &waiting.error);
                        if let Some(outcome) = waiting.if_given_up {
                            if_given_up.insert(index, outcome);
                        }
                        if let Some(attempts) = waiting.refund_attempts {
                            refund_attempts.insert(index, attempts);
                        }
                        match holds.get_mut(&provider) {
                            Some(hold) => {
                                hold.jobs.push_front(item);
                                self.service
                                    .inner
                                    .metrics
                                    .bulk_jobs_held(provider.as_str(), 1);
                                if was_probe {
                                    // Still down: wait again, and tell the watchers when.
                                    hold.probe = None;
                                    hold.next_try = Instant::now() + pause;
                                    hold.reason = reason;
                                    self.announce(&provider, hold, cfg.max_provider_wait).await;
                                }
                            }
                            None => {
                                tracing::warn!(bulk_id = %self.bulk.id, provider = %provider, reason = %reason, retry_in = ?pause, "provider unavailable; holding its jobs instead of failing them");
                                let hold = Hold {
                                    jobs: VecDeque::from([item]),
                                    since: Instant::now(),
                                    since_at: Timestamp::now(),
                                    next_try: Instant::now() + pause,
                                    reason,
                                    probe: None,
                                };
                                self.service
                                    .inner
                                    .metrics
                                    .bulk_jobs_held(provider.as_str(), 1);
                                self.announce(&provider, &hold, cfg.max_provider_wait).await;
                                holds.insert(provider, hold);
                            }
                        }
                    }
                    JobEnd::Done(outcome) => {
                        gave_up.remove(&provider);
                        if_given_up.remove(&index);
                        refund_attempts.remove(&index);
                        if was_probe {
                            self.resume(&provider, holds, ready).await;
                        }
                        finished.push((index, outcome));
                    }
                    JobEnd::Undetermined => {
                        // Handed back; a database hiccup says nothing about the provider.
                        if was_probe && let Some(hold) = holds.get_mut(&provider) {
                            hold.probe = None;
                            hold.next_try = Instant::now() + MIN_HOLD_RETRY;
                        }
                        undetermined.push(index);
                    }
                }
            }
            self.record(&finished).await?;
            // Taken over (by this driver or another), the job looks its refund up first. If
            // even this write fails, the driver fails and its leases lapse all the same.
            self.release(&undetermined).await?;
        }
    }

    /// Renews the leases of this driver's jobs in the batch, running and held; whether it
    /// did.
    async fn renew(&self, lease: Duration) -> bool {
        let until = Timestamp::now().saturating_add(lease);
        if let Err(e) = self
            .service
            .store()
            .heartbeat(&self.owner, std::slice::from_ref(&self.bulk.id), until)
            .await
        {
            tracing::error!(bulk_id = %self.bulk.id, error = ?anyhow::Error::new(e), "renewing job leases failed");
            return false;
        }
        true
    }

    /// Runs `item` now, or holds it when its provider is being waited for. A job taken over
    /// from another worker always runs: it first looks for the refund that worker may have made
    /// (and is held only once that look-up found none). Returns whether it runs.
    fn route(
        &self,
        item: ClaimedItem,
        ours: Option<u32>,
        holds: &mut HashMap<ProviderName, Hold>,
        in_flight: &mut JoinSet<JobEnd>,
        jobs: &mut HashMap<task::Id, (u32, ProviderName)>,
    ) -> bool {
        match holds
            .get_mut(&item.request.provider)
            .filter(|_| !item.taken_over)
        {
            Some(hold) => {
                self.service
                    .inner
                    .metrics
                    .bulk_jobs_held(item.request.provider.as_str(), 1);
                hold.jobs.push_back(item);
                false
            }
            None => {
                self.spawn(item, ours, in_flight, jobs);
                true
            }
        }
    }

    fn spawn(
        &self,
        item: ClaimedItem,
        ours: Option<u32>,
        in_flight: &mut JoinSet<JobEnd>,
        jobs: &mut HashMap<task::Id, (u32, ProviderName)>,
    ) -> task::Id {
        let index = item.index;
        let provider = item.request.provider.clone();
        let span = tracing::info_span!("bulk.job", bulk_id = %self.bulk.id, index);
        self.service.inner.metrics.bulk_jobs_started(1);
        let job = run_job(self.service.clone(), self.bulk.clone(), item, ours);
        let fence = self.fence.subscribe();
        let job = async move {
            tokio::select! {
                end = job => end,
                () = fence_passed(fence) => {
                    // Its lease may lapse now, and another worker take the job over: stopped
                    // here, the job is that worker's alone. Whatever it did is found by its key.
                    tracing::warn!("job stopped at its driver's fence: its lease could not be renewed");
                    JobEnd::Undetermined
                }
            }
        }
        .instrument(span);
        let id = in_flight.spawn(job).id();
        jobs.insert(id, (index, provider));
        id
    }

    /// The circuit of the batch's route to `provider` (its account's connection, or the
    /// platform's), as the traffic layer sees it now.
    async fn availability(&self, provider: &ProviderName) -> Option<Availability> {
        self.service
            .route_new(&self.bulk.account, provider)
            .await
            .ok()
            .map(|(_, p)| p.availability())
    }

    /// How long to hold a provider's jobs before the next try: as long as its circuit stays
    /// open or it asked us to pause, and never less than [`MIN_HOLD_RETRY`].
    fn pause(availability: Option<&Availability>, retry_after: Option<Duration>) -> Duration {
        let circuit = match availability {
            Some(Availability::Waiting { retry_in, .. }) => *retry_in,
            Some(Availability::Ready) | None => Duration::ZERO,
        };
        retry_after
            .unwrap_or_default()
            .max(circuit)
            .max(MIN_HOLD_RETRY)
    }

    /// Why a provider's jobs are held: the traffic layer's account when it has one.
    fn reason(availability: Option<Availability>, error: &RefundError) -> String {
        match availability {
            Some(Availability::Waiting { reason, .. }) => reason,
            Some(Availability::Ready) | None => match error {
                RefundError::ProviderUnavailable { message, .. } => message.clone(),
                other => other.to_string(),
            },
        }
    }

    /// Tells the batch's watchers that it holds `provider`'s jobs, and until when.
    async fn announce(&self, provider: &ProviderName, hold: &Hold, max_wait: Duration) {
        let now = Instant::now();
        let at = |instant: Instant| {
            let from_now = instant.saturating_duration_since(now);
            Timestamp::now().saturating_add(from_now)
        };
        let wait = ProviderWait {
            provider: provider.clone(),
            reason: hold.reason.clone(),
            since: hold.since_at,
            next_attempt: at(hold.next_try),
            give_up_at: hold.since_at.saturating_add(max_wait),
            held_jobs: u32::try_from(hold.jobs.len() + usize::from(hold.probe.is_some()))
                .unwrap_or(u32::MAX),
        };
        match self
            .service
            .store()
            .provider_waiting(&self.bulk.id, &wait)
            .await
        {
            Ok(()) => self.service.events_changed(),
            Err(e) => {
                tracing::error!(bulk_id = %self.bulk.id, error = ?anyhow::Error::new(e), "recording a provider wait failed")
            }
        }
    }

    /// The probe got through: the held jobs run again.
    async fn resume(
        &self,
        provider: &ProviderName,
        holds: &mut HashMap<ProviderName, Hold>,
        ready: &mut VecDeque<ClaimedItem>,
    ) {
        let Some(mut hold) = holds.remove(provider) else {
            return;
        };
        let waited = hold.since.elapsed();
        tracing::info!(bulk_id = %self.bulk.id, provider = %provider, waited = ?waited, held = hold.jobs.len(), "provider answers again; running its held jobs");
        let released: Vec<ClaimedItem> = hold.jobs.drain(..).collect();
        self.service
            .inner
            .metrics
            .bulk_jobs_held(provider.as_str(), -(released.len() as i64));
        ready.extend(released);
        self.wait_ended(provider, waited, false, 0).await;
    }

    /// Holds that reached `max_wait`: their jobs fail, retryably, saying so.
    async fn end_overdue_holds(
        &self,
        holds: &mut HashMap<ProviderName, Hold>,
        gave_up: &mut HashMap<ProviderName, Duration>,
        if_given_up: &mut HashMap<u32, JobOutcome>,
        max_wait: Duration,
    ) -> Result<(), RefundError> {
        let overdue: Vec<ProviderName> = holds
            .iter()
            .filter(|(_, h)| h.since.elapsed() >= max_wait)
            .map(|(p, _)| p.clone())
            .collect();
        for provider in overdue {
            let Some(mut hold) = holds.remove(&provider) else {
                continue;
            };
            let waited = hold.since.elapsed();
            let error = gave_up_error(&provider, waited, &hold.reason);
            let failed: Vec<(u32, JobOutcome)> = hold
                .jobs
                .drain(..)
                .map(|item| {
                    let outcome = if_given_up
                        .remove(&item.index)
                        .unwrap_or_else(|| JobOutcome::of_error(&error));
                    (item.index, outcome)
                })
                .collect();
            tracing::warn!(bulk_id = %self.bulk.id, provider = %provider, waited = ?waited, failed = failed.len(), "gave up waiting for the provider; its held jobs fail");
            self.service
                .inner
                .metrics
                .bulk_jobs_held(provider.as_str(), -(failed.len() as i64));
            self.record(&failed).await?;
            self.wait_ended(&provider, waited, true, failed.len() as u32)
                .await;
            gave_up.insert(provider, waited);
        }
        Ok(())
    }

    /// The batch stopped (canceled, or aborted by a failure): held jobs will not run.
    async fn stop_holds(
        &self,
        stop: StopReason,
        holds: &mut HashMap<ProviderName, Hold>,
        ready: &mut VecDeque<ClaimedItem>,
        if_given_up: &mut HashMap<u32, JobOutcome>,
    ) -> Result<(), RefundError> {
        let undispatched = JobOutcome {
            status: stop.undispatched_status(),
            refund_id: None,
            error: None,
            attempts: 0,
        };
        let stopped: Vec<(u32, JobOutcome)> = self
            .drain_holds(holds, ready)
            .await
            .into_iter()
            .map(|index| {
                // A job whose refund exists reports it, stopped or not.
                let outcome = if_given_up
                    .remove(&index)
                    .unwrap_or_else(|| undispatched.clone());
                (index, outcome)
            })
            .collect();
        self.record(&stopped).await
    }

    /// Empties the ready queue and every hold, ending each hold's wait (not given up), and
    /// returns the indices of the jobs they held.
    async fn drain_holds(
        &self,
        holds: &mut HashMap<ProviderName, Hold>,
        ready: &mut VecDeque<ClaimedItem>,
    ) -> Vec<u32> {
        let mut indices: Vec<u32> = ready.drain(..).map(|i| i.index).collect();
        for (provider, mut hold) in holds.drain() {
            let n = hold.jobs.len();
            indices.extend(hold.jobs.drain(..).map(|i| i.index));
            self.service
                .inner
                .metrics
                .bulk_jobs_held(provider.as_str(), -(n as i64));
            self.wait_ended(&provider, hold.since.elapsed(), false, 0)
                .await;
        }
        indices
    }

    async fn wait_ended(
        &self,
        provider: &ProviderName,
        waited: Duration,
        gave_up: bool,
        failed: u32,
    ) {
        self.service
            .inner
            .metrics
            .bulk_provider_waited(provider.as_str(), waited.as_secs_f64());
        match self
            .service
            .store()
            .provider_wait_ended(&self.bulk.id, provider, waited, gave_up, failed)
            .await
        {
            Ok(()) => self.service.events_changed(),
            Err(e) => {
                tracing::error!(bulk_id = %self.bulk.id, error = ?anyhow::Error::new(e), "recording the end of a provider wait failed")
            }
        }
    }

    async fn release(&self, indices: &[u32]) -> Result<(), RefundError> {
        if indices.is_empty() {
            return Ok(());
        }
        self.service
            .store()
            .release_items(&self.bulk.id, &self.owner, indices)
            .await
            .map_err(internal)
    }

    /// Writes finished jobs' results. A database hiccup must not lose them (the jobs would stay
    /// leased to a live worker), so keep trying for a while; if the database stays away, fail
    /// the driver: its jobs' leases then lapse and the runner starts over, and the refunds'
    /// idempotency keys make the re-runs return the refunds already made.
    async fn record(&self, finished: &[(u32, JobOutcome)]) -> Result<(), RefundError> {
        let write = || async {
            self.service
                .store()
                .complete_items(&self.bulk.id, &self.owner, finished)
                .await
        };
        let recorded = write
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(10))
                    .with_max_times(20)
                    .with_jitter(),
            )
            .notify(|e, after| {
                tracing::warn!(bulk_id = %self.bulk.id, error = ?e, retry_in = ?after, "recording job results failed; retrying");
            })
            .await
            .map_err(internal)?;
        if recorded.len() < finished.len() {
            tracing::warn!(bulk_id = %self.bulk.id, taken_over = finished.len() - recorded.len(), "jobs were taken over by another worker; their results are theirs");
        }
        if !recorded.is_empty() {
            self.service.events_changed();
        }
        Ok(())
    }
}

/// Runs one job through the ordinary refund path. A job whose refund exists reports that refund,
/// whatever went wrong on the way: a job taken over from a dead worker looks for it first (the
/// worker may have made it, and the key's ordinary expiry does not apply within a batch), and
/// any job that fails looks for it before reporting the failure. `None` when that look-up
/// itself fails: the job is then handed back, never reported failed with a refund out there.
async fn run_job(
    service: RefundService,
    bulk: Bulk,
    item: ClaimedItem,
    ours: Option<u32>,
) -> JobEnd {
    match try_job(&service, &bulk, &item, ours).await {
        Some(Ok(outcome)) => JobEnd::Done(outcome),
        Some(Err(waiting)) => JobEnd::ProviderDown {
            item,
            waiting: Box::new(waiting),
        },
        None => JobEnd::Undetermined,
    }
}

/// The job's outcome; `Err` when its provider is down (or pacing us) and nothing was made, or
/// a dead worker's refund could not be looked up, so that the job can wait; `None` when the
/// outcome could not be told.
async fn try_job(
    service: &RefundService,
    bulk: &Bulk,
    item: &ClaimedItem,
    ours: Option<u32>,
) -> Option<Result<JobOutcome, Waiting>> {
    // Debug events: not logged by default, but events of the job's span in traces.
    tracing::debug!(
        payment_id = item.request.payment.as_str(),
        taken_over = item.taken_over,
        "job dispatched"
    );
    let made_before = if item.taken_over {
        job_refund(service, bulk, item).await?
    } else {
        None
    };
    let outcome = match made_before {
        Some(refund) if refund.status == crate::domain::RefundStatus::Pending => {
            // Its worker may have died before the provider had it: find out (and send it when
            // the provider never saw it) now, not when the reconciler comes round.
            tracing::info!(refund_id = %refund.id, "the job taken over had made its refund already; it is PENDING: resolving it");
            let as_it_is = JobOutcome::of_refund(&refund);
            match service.resolve_taken_over(refund, ours).await {
                Ok(refund) => JobOutcome::of_refund(&refund),
                Err(TakenOverError::Unreachable { error, attempts }) => {
                    return Some(Err(Waiting {
                        error,
                        if_given_up: Some(as_it_is),
                        refund_attempts: Some(attempts),
                    }));
                }
                Err(TakenOverError::Failed(error @ RefundError::ProviderUnavailable { .. })) => {
                    return Some(Err(Waiting {
                        error,
                        if_given_up: Some(as_it_is),
                        refund_attempts: None,
                    }));
                }
                Err(TakenOverError::Failed(e)) => {
                    tracing::error!(bulk_id = %bulk.id, index = item.index, error = ?anyhow::Error::new(e), "cannot resolve the refund of a job taken over; handing the job back");
                    return None;
                }
            }
        }
        Some(refund) => {
            tracing::info!(refund_id = %refund.id, "the job taken over had made its refund already");
            JobOutcome::of_refund(&refund)
        }
        None => match service
            .create(
                &bulk.account,
                bulk.created_by.as_ref(),
                item.request.clone(),
                Origin::BULK,
            )
            .await
        {
            // Succeeded, failed at the provider, replayed, or PENDING there (the reconciler
            // settles it).
            Ok(refund) => JobOutcome::of_refund(&refund),
            Err(e) => {
                if let RefundError::Internal(cause) = &e {
                    tracing::error!(bulk_id = %bulk.id, index = item.index, error = ?cause, "bulk job failed internally");
                }
                match job_refund(service, bulk, item).await? {
                    Some(refund) => JobOutcome::of_refund(&refund),
                    // Nothing made, and the provider may answer later: the job can wait.
                    None if matches!(
                        e,
                        RefundError::ProviderUnavailable {
                            transient: true,
                            ..
                        }
                    ) =>
                    {
                        tracing::debug!(error = %e, "provider unavailable; the job waits");
                        return Some(Err(Waiting::new(e)));
                    }
                    None => JobOutcome::of_error(&e),
                }
            }
        },
    };
    tracing::debug!(
        status = outcome.status.as_str(),
        refund_id = outcome.refund_id.as_ref().map(|id| id.as_str()),
        error = outcome.error.as_ref().map(|e| e.code.as_str()),
        "job result"
    );
    Some(Ok(outcome))
}

/// The retryable error of a job whose batch stopped waiting for its provider.
fn gave_up_error(provider: &ProviderName, waited: Duration, cause: &str) -> RefundError {
    RefundError::ProviderUnavailable {
        provider: provider.clone(),
        message: format!(
            "the batch gave up waiting for the provider after {} (--bulk-max-provider-wait); \
             send the job again later: {cause}",
            humantime::format_duration(Duration::from_secs(waited.as_secs()))
        ),
        retry_after: None,
        transient: true,
    }
}

/// Completes once the fence has passed: at the instant it holds, unless it was moved on by then.
/// A driver that is gone moves it no more.
async fn fence_passed(mut fence: watch::Receiver<Instant>) {
    loop {
        let at = *fence.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep_until(at) => {
                if *fence.borrow() <= at {
                    return;
                }
            }
            changed = fence.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(at).await;
                    return;
                }
            }
        }
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until_or_never(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The refund the job's key made in this batch's lifetime: `Some(None)` when there is none,
/// `None` when it could not be read.
async fn job_refund(
    service: &RefundService,
    bulk: &Bulk,
    item: &ClaimedItem,
) -> Option<Option<crate::domain::Refund>> {
    let Some(key) = item.request.idempotency_key.as_ref() else {
        return Some(None);
    };
    // From a while before the batch was made, should the clocks of replicas disagree; but not
    // from any time, or a refund of an earlier use of an expired key could be taken for this one.
    let since = Timestamp::from_micros(
        bulk.created_at
            .as_micros()
            .saturating_sub(CLOCK_SKEW_ALLOWANCE.as_micros() as i64),
    );
    match service
        .store()
        .refund_by_key(&bulk.account, key, since)
        .await
    {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::error!(bulk_id = %bulk.id, index = item.index, error = ?anyhow::Error::new(e), "cannot tell whether the job's refund exists; handing the job back");
            None
        }
    }
}
