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
use tokio::task::{JoinHandle, JoinSet};

use super::{Origin, RefundService, internal};
use crate::domain::{Bulk, BulkId, JobOutcome, JobRef, RefundError, Timestamp};
use crate::store::ClaimedItem;

/// Runs batches until `shutdown` completes; then stops dispatching, lets the jobs in flight
/// finish and returns.
pub async fn run_bulk_runner(service: RefundService, shutdown: impl Future<Output = ()>) {
    let owner = format!("runner_{}", uuid::Uuid::new_v4().simple());
    let cfg = service.config().bulk.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut drivers: HashMap<BulkId, JoinHandle<()>> = HashMap::new();
    let mut poll = tokio::time::interval(cfg.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Renew leases three times per lease period, so one slow heartbeat does not lose them.
    let mut heartbeat = tokio::time::interval(cfg.lease / 3);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = service.inner.bulk_wakeup.notified() => {}
            _ = poll.tick() => {}
            _ = heartbeat.tick() => {
                let until = Timestamp::now().saturating_add(cfg.lease);
                if let Err(e) = service.store().heartbeat(&owner, until).await {
                    tracing::error!(error = ?anyhow::Error::new(e), "renewing job leases failed");
                }
                continue;
            }
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
                    drivers.insert(id, tokio::spawn(driver.run()));
                }
            }
            Err(e) => {
                tracing::error!(error = ?anyhow::Error::new(e), "listing running batches failed")
            }
        }
    }
    let _ = stop_tx.send(true);
    // Keep the leases alive while the jobs in flight finish.
    let finish = async {
        for (_, driver) in drivers {
            let _ = driver.await;
        }
    };
    tokio::pin!(finish);
    loop {
        tokio::select! {
            () = &mut finish => return,
            _ = heartbeat.tick() => {
                let until = Timestamp::now().saturating_add(cfg.lease);
                let _ = service.store().heartbeat(&owner, until).await;
            }
        }
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
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut stopping = *self.stop.borrow();
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
                for item in claimed {
                    let job = Job {
                        service: self.service.clone(),
                        bulk: self.bulk.clone(),
                        owner: self.owner.clone(),
                    };
                    in_flight.spawn(job.run(item));
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
            tokio::select! {
                Some(_) = in_flight.join_next() => {}
                _ = self.stop.changed() => stopping = true,
            }
        }
    }
}

struct Job {
    service: RefundService,
    bulk: Bulk,
    owner: String,
}

impl Job {
    async fn run(self, item: ClaimedItem) {
        let index = item.index;
        let job = JobRef::new(self.bulk.id.clone(), index, self.owner.clone());
        let result = self
            .service
            .create(&self.bulk.account, item.request, Origin::job(&job))
            .await;
        if job.is_done() {
            // Written with the refund's settlement.
            self.service.events_changed();
            return;
        }
        let outcome = match result {
            // Replayed, or still PENDING at the provider (the reconciler settles it).
            Ok(refund) => JobOutcome::of_refund(&refund),
            Err(e) => {
                if let RefundError::Internal(cause) = &e {
                    tracing::error!(bulk_id = %self.bulk.id, index, error = ?cause, "bulk job failed internally");
                }
                JobOutcome::of_error(&e)
            }
        };
        // The refund is stored whatever happens here; what remains is recording the job's
        // result. A database hiccup must not leave the job leased (and heart-beaten) forever,
        // so keep trying; the refund's idempotency key makes a re-run harmless meanwhile.
        let record = || async { self.service.store().complete_item(&job, &outcome).await };
        let recorded = record
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(10))
                    .with_max_times(20)
                    .with_jitter(),
            )
            .notify(|e, after| {
                tracing::warn!(bulk_id = %self.bulk.id, index, error = ?e, retry_in = ?after, "recording a job result failed; retrying");
            })
            .await;
        match recorded {
            Ok(Some(_)) => self.service.events_changed(),
            Ok(None) => {
                tracing::warn!(bulk_id = %self.bulk.id, index, "job was taken over by another worker; its result is theirs");
            }
            Err(e) => {
                tracing::error!(bulk_id = %self.bulk.id, index, error = ?anyhow::Error::new(e), "giving up recording a job result");
            }
        }
    }
}
