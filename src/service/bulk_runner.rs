//! The bulk runner: runs the jobs of every RUNNING batch, with work leased from the database.
//!
//! Each process has one runner with its own owner id. For each running batch it starts a
//! driver that claims jobs (a compare-and-set on the batch's dispatch cursor, or jobs whose
//! lease expired), runs up to the batch's concurrency at once through the ordinary refund path,
//! and records each result with its event. A heartbeat keeps the leases of running jobs alive;
//! when a process dies its leases expire and another runner — on restart, or another replica —
//! takes the jobs over. Jobs carry fixed idempotency keys, so a job taken over never refunds
//! twice: its refund is found, not made again.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

use tokio::sync::watch;
use tokio::task::{self, JoinHandle, JoinSet};
use tracing::Instrument as _;

use super::{Origin, RefundService, internal};
use crate::domain::{Bulk, BulkId, JobOutcome, RefundError, Timestamp};
use crate::store::ClaimedItem;

/// How far apart the clocks of two replicas may be, for finding a job's refund.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);

/// Runs batches until `shutdown` completes; then stops dispatching, lets the jobs in flight
/// finish and returns.
pub async fn run_bulk_runner(service: RefundService, shutdown: impl Future<Output = ()>) {
    let owner = format!("runner_{}", uuid::Uuid::new_v4().simple());
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
                    let driver = Driver {
                        service: service.clone(),
                        owner: owner.clone(),
                        bulk,
                        stop: stop_rx.clone(),
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
}

impl Driver {
    async fn run(mut self) {
        let id = self.bulk.id.clone();
        if let Err(e) = self.drive().await {
            tracing::error!(bulk_id = %id, error = ?anyhow::Error::new(e), "bulk driver failed; the runner will restart it");
        }
    }

    async fn drive(&mut self) -> Result<(), RefundError> {
        let cfg = self.service.config().bulk.clone();
        let concurrency = self.bulk.max_concurrency.max(1);
        // `None`: the job's outcome could not be told (its refund may exist but could not be
        // read); it is handed back rather than given a result that could be wrong.
        let mut in_flight: JoinSet<Option<JobOutcome>> = JoinSet::new();
        // Which job each task runs, so that even a task that panicked gets its job a result.
        let mut jobs: HashMap<task::Id, u32> = HashMap::new();
        let mut stopping = *self.stop.borrow();
        // The driver renews its own jobs' leases, three times per lease period so that one slow
        // renewal loses nothing. Doing it here, between its own writes, means a renewal never
        // contends with this driver's recording of results (on PostgreSQL a batch renewal
        // running beside a result transaction could deadlock on the same rows).
        let mut heartbeat = tokio::time::interval(cfg.lease / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = concurrency.saturating_sub(in_flight.len() as u32);
            // Claim in chunks (a quarter of the concurrency at a time) rather than one job per
            // finished job: every claim is a transaction, and the database is the bottleneck.
            let refill = (concurrency / 4).max(1);
            if !stopping && (room >= refill || (room > 0 && in_flight.is_empty())) {
                let now = Timestamp::now();
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
                self.service.inner.metrics.bulk_jobs_started(claimed.len());
                for item in claimed {
                    let index = item.index;
                    let span = tracing::info_span!("bulk.job", bulk_id = %self.bulk.id, index);
                    let job =
                        run_job(self.service.clone(), self.bulk.clone(), item).instrument(span);
                    jobs.insert(in_flight.spawn(job).id(), index);
                }
            }
            if in_flight.is_empty() {
                if stopping {
                    return Ok(());
                }
                if self
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
                // whose leases will expire). Look again later.
                match self
                    .service
                    .store()
                    .get_bulk(&self.bulk.account, &self.bulk.id)
                    .await
                {
                    Ok(Some(b)) if b.state != crate::domain::BulkState::Running => return Ok(()),
                    _ => {}
                }
                tokio::select! {
                    () = tokio::time::sleep(cfg.poll_interval) => {}
                    _ = self.stop.changed() => stopping = true,
                }
                continue;
            }
            let first = tokio::select! {
                joined = in_flight.join_next_with_id() => joined,
                _ = heartbeat.tick() => {
                    let until = Timestamp::now().saturating_add(cfg.lease);
                    if let Err(e) = self
                        .service
                        .store()
                        .heartbeat(&self.owner, std::slice::from_ref(&self.bulk.id), until)
                        .await
                    {
                        tracing::error!(bulk_id = %self.bulk.id, error = ?anyhow::Error::new(e), "renewing job leases failed");
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
                let (id, outcome) = match joined {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => {
                        // It may have made its refund before it failed.
                        tracing::error!(bulk_id = %self.bulk.id, error = %e, "bulk job task failed; the job will be taken over");
                        (e.id(), None)
                    }
                };
                match (jobs.remove(&id), outcome) {
                    (Some(index), Some(outcome)) => finished.push((index, outcome)),
                    (Some(index), None) => undetermined.push(index),
                    (None, _) => {}
                }
                next = in_flight.try_join_next_with_id();
            }
            self.record(&finished).await?;
            if !undetermined.is_empty() {
                // Taken over (by this driver or another), the job looks its refund up first. If
                // even this write fails, the driver fails and its leases lapse all the same.
                self.service
                    .store()
                    .release_items(&self.bulk.id, &self.owner, &undetermined)
                    .await
                    .map_err(internal)?;
            }
        }
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
async fn run_job(service: RefundService, bulk: Bulk, item: ClaimedItem) -> Option<JobOutcome> {
    // Debug events: not logged by default, but events of the job's span in traces.
    tracing::debug!(
        payment_id = item.request.payment.as_str(),
        taken_over = item.taken_over,
        "job dispatched"
    );
    let made_before = if item.taken_over {
        job_refund(&service, &bulk, &item).await?
    } else {
        None
    };
    let outcome = match made_before {
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
                match job_refund(&service, &bulk, &item).await? {
                    Some(refund) => JobOutcome::of_refund(&refund),
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
    Some(outcome)
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
