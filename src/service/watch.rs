//! WatchRefund: a refund's current state, then each change, until it is terminal.
//!
//! Changes are read from the database, so a change made by any replica (its API, a webhook it
//! received, its reconciler) reaches every watcher: this process's own changes wake the stream at
//! once, other replicas' are seen within the poll interval.

use tokio::sync::mpsc;

use super::{RefundService, internal};
use crate::domain::{AccountId, Refund, RefundError};

impl RefundService {
    /// Streams the refund `id` of `account`. Unknown ids (and other accounts' refunds) are
    /// answered NOT_FOUND before the stream starts.
    pub async fn watch_refund(
        &self,
        account: &AccountId,
        id: &crate::domain::RefundId,
    ) -> Result<mpsc::Receiver<Result<Refund, RefundError>>, RefundError> {
        let first = self.get_refund(account, id).await?;
        let (tx, rx) = mpsc::channel(4);
        let service = self.clone();
        tokio::spawn(async move { service.pump_refund(first, tx).await });
        Ok(rx)
    }

    async fn pump_refund(&self, first: Refund, tx: mpsc::Sender<Result<Refund, RefundError>>) {
        let poll = self.config().watch_poll_interval;
        let mut changed = self.inner.refund_changes.subscribe();
        let mut last = first.clone();
        if tx.send(Ok(first)).await.is_err() || last.status.is_terminal() {
            return;
        }
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = changed.changed() => {}
                () = tokio::time::sleep(poll) => {}
            }
            // Marked seen before the read, so a change written after it still wakes us.
            changed.borrow_and_update();
            let current = match self.store().get_refund(&last.account, &last.id).await {
                Ok(Some(refund)) => refund,
                Ok(None) => {
                    let gone =
                        RefundError::Internal(anyhow::anyhow!("refund {} disappeared", last.id));
                    let _ = tx.send(Err(gone)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            if differs(&last, &current) {
                last = current.clone();
                if tx.send(Ok(current)).await.is_err() || last.status.is_terminal() {
                    return;
                }
            }
        }
    }
}

/// Whether a watcher should hear about the change from `a` to `b`.
fn differs(a: &Refund, b: &Refund) -> bool {
    a.status != b.status || a.provider_refund_id != b.provider_refund_id || a.failure != b.failure
}
