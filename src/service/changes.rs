//! Wakes the streams and runners of every replica when one of them changes something they
//! wait for. Within a process, a change bumps a watch channel; across replicas of one
//! PostgreSQL database, [`RefundService::relay_changes`] sends the bumps as notices
//! (`Store::announce_changes`) and turns the others' notices into local bumps. Notices are
//! coalesced over [`COALESCE`]: a batch writes hundreds of events a second, and one notice per
//! few milliseconds is enough to wake every watcher. Polling stays the fallback: a lost notice
//! costs a poll interval, never a result.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::store::{ChangeListener, Changed, Heard};

use super::RefundService;

/// How long local changes gather before one notice tells the other replicas of them all.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Wait before listening again after the listener failed.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

const BULK_EVENTS: u8 = 1;
const REFUNDS: u8 = 2;
const BULK_WORK: u8 = 4;
const CLIENT_EVENTS: u8 = 8;

/// This process's changes not yet announced to the other replicas.
pub(super) struct ChangeFeed {
    /// Who this process is, in notices: its own come back to it and are ignored.
    origin: String,
    unannounced: AtomicU8,
    wake: tokio::sync::Notify,
}

impl ChangeFeed {
    pub(super) fn new() -> Self {
        Self {
            origin: format!("proc_{}", uuid::Uuid::new_v4().simple()),
            unannounced: AtomicU8::new(0),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn note(&self, kind: u8) {
        if self.unannounced.fetch_or(kind, Ordering::AcqRel) & kind == 0 {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Changed {
        let bits = self.unannounced.swap(0, Ordering::AcqRel);
        Changed {
            bulk_events: bits & BULK_EVENTS != 0,
            refunds: bits & REFUNDS != 0,
            bulk_work: bits & BULK_WORK != 0,
            client_events: bits & CLIENT_EVENTS != 0,
            // Keys are revoked by the `keys` command, which announces it itself.
            api_keys: false,
        }
    }
}

impl RefundService {
    /// Some batch has new events: wakes their streams here and on the other replicas.
    pub(super) fn events_changed(&self) {
        self.wake_bulk_streams();
        self.inner.changes.note(BULK_EVENTS);
    }

    /// A refund changed status or provider id: wakes WatchRefund streams everywhere.
    pub(super) fn refund_changed(&self) {
        self.wake_refund_watchers();
        self.inner.changes.note(REFUNDS);
    }

    /// A batch was created, resumed or canceled: wakes the bulk runners everywhere.
    pub(super) fn bulk_work_changed(&self) {
        self.inner.bulk_wakeup.notify_one();
        self.inner.changes.note(BULK_WORK);
    }

    fn wake_bulk_streams(&self) {
        self.inner
            .bulk_events
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    fn wake_refund_watchers(&self) {
        self.inner
            .refund_changes
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    fn wake_for(&self, changed: Changed) {
        if changed.bulk_events {
            self.wake_bulk_streams();
        }
        if changed.refunds {
            self.wake_refund_watchers();
        }
        if changed.bulk_work {
            self.inner.bulk_wakeup.notify_one();
        }
        if changed.client_events {
            self.inner
                .remote_events
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        if changed.api_keys {
            self.forget_keys();
        }
    }

    /// Relays changes between this replica and the others of its database until `stop`
    /// completes: announces this one's (coalesced) and applies theirs. Returns at once on
    /// SQLite, which has no other replicas.
    pub async fn relay_changes(&self, stop: impl Future<Output = ()>) {
        let listener = match self.store().listen_changes().await {
            Ok(None) => return,
            Ok(Some(listener)) => Some(listener),
            Err(e) => {
                tracing::warn!(error = ?anyhow::Error::new(e), "cannot listen for the other replicas' changes; polling meanwhile");
                None
            }
        };
        // Its own task: a listener's receive is not to be cut short by a select.
        let hearing = tokio::spawn({
            let service = self.clone();
            async move { service.hear_changes(listener).await }
        });
        let feed = &self.inner.changes;
        // The store tells of the client events this process appends; they are announced too.
        let mut appended = self.store().events_appended();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Ok(()) = appended.changed() => {
                    appended.borrow_and_update();
                    feed.note(CLIENT_EVENTS);
                }
                () = feed.wake.notified() => {
                    tokio::time::sleep(COALESCE).await;
                    self.announce(feed.take()).await;
                }
            }
        }
        hearing.abort();
        // Changes made while stopping still reach the others.
        self.announce(feed.take()).await;
    }

    async fn announce(&self, changed: Changed) {
        let feed = &self.inner.changes;
        if let Err(e) = self.store().announce_changes(&feed.origin, changed).await {
            // The others poll: this delays their streams, it loses nothing.
            tracing::warn!(error = ?anyhow::Error::new(e), "cannot tell the other replicas of a change");
        }
    }

    /// Applies the other replicas' notices, listening again whenever the listener fails.
    async fn hear_changes(&self, mut listener: Option<ChangeListener>) {
        loop {
            let Some(l) = listener.as_mut() else {
                tokio::time::sleep(RELISTEN_AFTER).await;
                match self.store().listen_changes().await {
                    Ok(l) => {
                        // Anything may have changed while nobody listened.
                        self.wake_for(Changed::all());
                        listener = l;
                    }
                    Err(e) => {
                        tracing::debug!(error = ?anyhow::Error::new(e), "still cannot listen for the other replicas' changes");
                    }
                }
                continue;
            };
            match l.next().await {
                Ok(Heard::Notice { origin, changed }) => {
                    if origin != self.inner.changes.origin {
                        self.wake_for(changed);
                    }
                }
                Ok(Heard::Lost) => {
                    tracing::warn!(
                        "lost the connection that hears the other replicas' changes; reconnecting"
                    );
                    self.wake_for(Changed::all());
                }
                Err(e) => {
                    tracing::warn!(error = ?anyhow::Error::new(e), "the other replicas' changes cannot be heard; polling meanwhile");
                    listener = None;
                }
            }
        }
    }
}
