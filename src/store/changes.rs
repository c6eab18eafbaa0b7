//! Change notices between replicas of one PostgreSQL database (LISTEN/NOTIFY): a replica that
//! wrote bulk events, changed a refund or queued bulk work says so on one channel, and the
//! others wake their streams and runners at once instead of at their next poll. A notice carries
//! no data — the readers read the rows — so a lost one costs only a poll interval. SQLite has
//! one process and no notices.

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::{Store, StoreError};

/// The one channel every replica of a database listens on.
const CHANNEL: &str = "refund_service_changes";

/// What changed, as one notice tells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// Some batch has new events (WatchBulkRefund, BulkRefund streams).
    pub bulk_events: bool,
    /// Some refund changed status or provider id (WatchRefund streams).
    pub refunds: bool,
    /// Some batch has jobs to run, or was canceled (bulk runners).
    pub bulk_work: bool,
    /// Some account has new client events (WatchEvents streams, webhook deliveries).
    pub client_events: bool,
    /// Some API key was revoked (every replica forgets the keys it remembers).
    pub api_keys: bool,
}

impl Changed {
    pub fn any(self) -> bool {
        self.bulk_events || self.refunds || self.bulk_work || self.client_events || self.api_keys
    }

    /// Everything: what a listener assumes after it may have missed notices.
    pub fn all() -> Self {
        Self {
            bulk_events: true,
            refunds: true,
            bulk_work: true,
            client_events: true,
            api_keys: true,
        }
    }

    /// `"<origin> <letters>"`: who sent it, and one letter per kind of change.
    fn payload(self, origin: &str) -> String {
        let mut kinds = String::with_capacity(5);
        for (on, letter) in [
            (self.bulk_events, 'e'),
            (self.refunds, 'r'),
            (self.bulk_work, 'w'),
            (self.client_events, 'v'),
            (self.api_keys, 'k'),
        ] {
            if on {
                kinds.push(letter);
            }
        }
        format!("{origin} {kinds}")
    }

    fn parse(payload: &str) -> Option<(&str, Self)> {
        let (origin, kinds) = payload.split_once(' ')?;
        let changed = Self {
            bulk_events: kinds.contains('e'),
            refunds: kinds.contains('r'),
            bulk_work: kinds.contains('w'),
            client_events: kinds.contains('v'),
            api_keys: kinds.contains('k'),
        };
        Some((origin, changed))
    }
}

/// A subscription to the other replicas' notices: one database connection held open.
pub struct ChangeListener {
    listener: PgListener,
}

/// What a listener heard.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// A notice from replica `origin`.
    Notice { origin: String, changed: Changed },
    /// The connection was lost (and is being re-made): notices may have been missed.
    Lost,
}

impl Store {
    /// Tells the other replicas what `origin` changed. Nothing on SQLite.
    pub async fn announce_changes(&self, origin: &str, changed: Changed) -> Result<(), StoreError> {
        announce_in(&self.db, origin, changed).await
    }

    /// Listens for the replicas' notices; `None` on SQLite, where there are no other replicas.
    pub async fn listen_changes(&self) -> Result<Option<ChangeListener>, StoreError> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let pool = self.db.get_postgres_connection_pool();
        let mut listener = PgListener::connect_with(pool)
            .await
            .map_err(|e| StoreError::Connect(format!("cannot listen for changes: {e}")))?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(|e| StoreError::Connect(format!("cannot listen for changes: {e}")))?;
        Ok(Some(ChangeListener { listener }))
    }
}

/// Announces `changed` through `db`: in a transaction, the notice is sent when (and only if) it
/// commits. Nothing on SQLite.
pub(super) async fn announce_in(
    db: &impl ConnectionTrait,
    origin: &str,
    changed: Changed,
) -> Result<(), StoreError> {
    if db.get_database_backend() != DbBackend::Postgres || !changed.any() {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), changed.payload(origin).into()],
    ))
    .await?;
    Ok(())
}

impl ChangeListener {
    /// The next notice, or [`Heard::Lost`] when the connection dropped (it reconnects on the
    /// next call). An error when it cannot reconnect.
    pub async fn next(&mut self) -> Result<Heard, StoreError> {
        loop {
            let notice = self
                .listener
                .try_recv()
                .await
                .map_err(|e| StoreError::Connect(format!("lost the change notices: {e}")))?;
            let Some(notice) = notice else {
                return Ok(Heard::Lost);
            };
            match Changed::parse(notice.payload()) {
                Some((origin, changed)) => {
                    return Ok(Heard::Notice {
                        origin: origin.to_owned(),
                        changed,
                    });
                }
                None => {
                    tracing::warn!(
                        payload = notice.payload(),
                        "ignoring a malformed change notice"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_reads_back_as_written() {
        for bits in 0u8..32 {
            let changed = Changed {
                bulk_events: bits & 1 != 0,
                refunds: bits & 2 != 0,
                bulk_work: bits & 4 != 0,
                client_events: bits & 8 != 0,
                api_keys: bits & 16 != 0,
            };
            let payload = changed.payload("replica_1");
            assert_eq!(Changed::parse(&payload), Some(("replica_1", changed)));
        }
        assert_eq!(Changed::parse("no-space"), None);
    }
}
