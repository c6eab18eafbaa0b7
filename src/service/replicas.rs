//! Replicas sharing one database (PostgreSQL) count each other by heartbeat, so that each takes
//! an even share of every provider's rate budget (`providers::traffic::BudgetShare`): a
//! provider's limit is its account's, not a process's. No cluster protocol: a row per replica,
//! renewed every [`HEARTBEAT_EVERY`] on the database's clock; a replica is live while its row is
//! younger than [`LIVE_FOR`]. A replica that joins is counted by the others within one beat, one
//! that stops leaves at once, and one that dies is counted out within [`LIVE_FOR`] of its last
//! beat. On SQLite there is nobody to share with.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::providers::traffic::BudgetShare;
use crate::store::{Store, StoreError};

/// How often a replica renews its heartbeat (and re-counts the others).
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
/// How long a heartbeat keeps its replica counted. The others re-count within a beat of it
/// going stale: a replica that died is counted out within about a second. Five beats: a
/// replica whose beats are slow (a loaded database) stays counted, and keeps its share.
pub const LIVE_FOR: Duration = Duration::from_millis(1000);
/// A beat that takes longer is given up, and the next one tried: one stuck statement must not
/// keep the replica from beating until it is counted out.
const BEAT_TIMEOUT: Duration = Duration::from_millis(400);
/// Heartbeats between two tidy-ups of replicas long gone (about a minute).
const TIDY_EVERY: u32 = 300;

/// This process's place among the replicas of its database.
pub struct ReplicaHeartbeat {
    store: Store,
    share: Arc<BudgetShare>,
    metrics: Arc<Metrics>,
    id: String,
}

impl ReplicaHeartbeat {
    /// Joins the replicas of `store`'s database, before the process serves: its first
    /// heartbeat, and when there are others, a second one a beat later — by then each of them
    /// has counted this one and lowered its own share, so the budget is never taken twice.
    pub async fn join(
        store: Store,
        share: Arc<BudgetShare>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let heartbeat = Self {
            store,
            share,
            metrics,
            id: format!("replica_{}", uuid::Uuid::new_v4().simple()),
        };
        let started = Instant::now();
        match heartbeat
            .store
            .replica_heartbeat(&heartbeat.id, LIVE_FOR, false)
            .await?
        {
            None => {} // SQLite: alone
            Some(1) => {
                heartbeat.share.set(1, started + LIVE_FOR);
                heartbeat.metrics.set_replicas(1);
            }
            Some(replicas) => {
                tracing::info!(
                    replica = %heartbeat.id,
                    replicas,
                    "joining other replicas: waiting a heartbeat for them to count this one"
                );
                tokio::time::sleep(HEARTBEAT_EVERY + HEARTBEAT_EVERY / 2).await;
                heartbeat.beat(false).await?;
            }
        }
        Ok(heartbeat)
    }

    /// Beats until `stop` completes, then leaves (the others take this one's share at once).
    /// Call it once the process no longer calls providers.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let mut every = tokio::time::interval(HEARTBEAT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut beats = 0u32;
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = every.tick() => {}
            }
            beats = beats.wrapping_add(1);
            let beat = self.beat(beats.is_multiple_of(TIDY_EVERY));
            match tokio::time::timeout(BEAT_TIMEOUT, beat).await {
                Ok(Ok(())) => {}
                // Not counted by the others for long, this replica pauses its provider calls
                // (`BudgetShare`) until a beat gets through.
                Ok(Err(e)) => {
                    tracing::warn!(replica = %self.id, error = ?anyhow::Error::new(e), "replica heartbeat failed")
                }
                Err(_) => {
                    tracing::warn!(replica = %self.id, timeout = ?BEAT_TIMEOUT, "replica heartbeat timed out")
                }
            }
        }
        if let Err(e) = self.store.replica_leave(&self.id).await {
            tracing::warn!(replica = %self.id, error = ?anyhow::Error::new(e), "cannot leave the replicas; the others count this one out when its heartbeat goes stale");
        }
    }

    async fn beat(&self, tidy: bool) -> Result<(), StoreError> {
        // The row's time is taken after this instant: the others count this replica until
        // at least `started + LIVE_FOR`.
        let started = Instant::now();
        if let Some(replicas) = self
            .store
            .replica_heartbeat(&self.id, LIVE_FOR, tidy)
            .await?
        {
            if replicas != self.share.replicas() {
                tracing::info!(replica = %self.id, replicas, "replicas sharing the provider budgets changed");
            }
            self.share.set(replicas, started + LIVE_FOR);
            self.metrics.set_replicas(replicas);
        }
        Ok(())
    }
}
