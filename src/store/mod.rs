//! Persistence: SQLite (the embedded default) or PostgreSQL (production, shared by replicas).
//!
//! Architecture invariant: only this module knows SeaORM. It takes and returns domain types; the
//! one money rule it owns — a payment's reserved amount never exceeds its captured amount — is
//! enforced by conditional writes inside transactions, never by a read followed by a blind write.

mod audit;
mod bulks;
mod captures;
mod changes;
mod connect_check;
mod connections;
mod endpoints;
mod entities;
mod events;
mod keys;
mod migrations;
mod refunds;
mod replicas;
mod verify;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};
use sea_orm_migration::MigratorTrait;

pub use audit::AuditFilter;
pub use bulks::{ClaimedItem, CreateBulkOutcome};
pub use changes::{ChangeListener, Changed, Heard};
pub use connections::{CreateConnectionOutcome, DeleteConnectionOutcome, StoredConnection};
pub use endpoints::{
    DeliveryFilter, EndpointChanges, NewEndpointRow, QueueStats, SecretRotation, StoredEndpoint,
};
pub use events::EventFilter;
pub use refunds::{BeginOutcome, BeginRefund, ListFilter, PendingRefund, Settlement};
pub use verify::{Books, BulkItemRow, BulkRow, EventRow, KeyRow, PaymentTotals, RefundRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] DbErr),
    /// The database could not be reached or opened; the message names the cause and, where
    /// there is one, the fix. It never holds the URL's password.
    #[error("{0}")]
    Connect(String),
    /// A row that domain types cannot represent: a bug or a hand-edited database.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

/// Whether SQLite was built with the query planner stability guarantee on (see
/// `.cargo/config.toml`), so that prepared statements are kept whatever their parameters.
async fn planner_is_stable(db: &DatabaseConnection) -> Result<bool, StoreError> {
    use sea_orm::{ConnectionTrait as _, Statement};
    let options = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA compile_options",
        ))
        .await?;
    Ok(options.iter().any(|row| {
        row.try_get_by_index::<String>(0)
            .is_ok_and(|option| option == "ENABLE_QPSG")
    }))
}

/// Whether the query string of `url` sets `name`.
fn url_has_param(url: &str, name: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    })
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL pool size. SQLite always uses one connection: SQLite allows one writer at a time,
    /// and one connection makes that queueing explicit instead of failing with SQLITE_BUSY.
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Longest wait for the first connection at start-up: past it, the database is reported
    /// unreachable instead of the pool retrying until `acquire_timeout`.
    pub connect_timeout: Duration,
    /// Take a SQLite file for this process alone (what a service does: SQLite is single-node),
    /// so that a second service on the same file refuses to start rather than share it. Short
    /// commands (`keys`, `migrate`, `verify`) leave it off and share the file as SQLite allows.
    /// PostgreSQL is always shared.
    pub exclusive: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            exclusive: false,
        }
    }
}

/// How many connections read a SQLite file beside its one writer. WAL lets readers run
/// alongside the writer and each other, so a read (authenticating a call, GetRefund, a stream's
/// events) never queues behind a write transaction.
const SQLITE_READERS: u32 = 4;

#[derive(Clone, Debug)]
pub struct Store {
    /// Every write, every transaction (its reads included), and on PostgreSQL every read.
    db: DatabaseConnection,
    /// Reads outside a transaction: a pool of read-only connections on a SQLite file; the same
    /// pool as `db` otherwise. What they see is the last commit, as on PostgreSQL.
    reads: DatabaseConnection,
    separate_reads: bool,
    /// Bumped after each commit that appended client events (`events.rs`).
    appended: Arc<tokio::sync::watch::Sender<u64>>,
    /// The lock on a SQLite file of an exclusive store, held as long as any clone lives.
    _exclusive: Option<Arc<std::fs::File>>,
}

impl Store {
    /// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://...`).
    ///
    /// A SQLite file is created when missing, unless the URL sets `mode=`. A PostgreSQL server
    /// is tried once, directly, before the pool is made, so that an unreachable server fails in
    /// `connect_timeout` with its cause (refused, unknown host, authentication, no such
    /// database) instead of a pool time-out.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let is_sqlite = url.starts_with("sqlite:");
        let create_file = is_sqlite && !url_has_param(url, "mode");
        let mut exclusive = None;
        // An in-memory database is private to its one connection: it is read there too.
        let mut separate_reads = false;
        if is_sqlite {
            let file = connect_check::sqlite(url)?;
            separate_reads = file.is_some();
            if let Some(file) = file.filter(|_| options.exclusive) {
                exclusive = Some(Arc::new(connect_check::lock_sqlite(&file)?));
            }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            connect_check::postgres(url, options.connect_timeout).await?;
        } else {
            return Err(StoreError::Connect(
                "unsupported database URL: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE".into(),
            ));
        }
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(if is_sqlite {
            1
        } else {
            options.max_connections
        })
        .min_connections(if is_sqlite { 1 } else { 0 })
        .acquire_timeout(options.acquire_timeout)
        // A ping on every checkout is a round trip per transaction, a sizeable share of a
        // refund's statements; only connections idle long enough to have been dropped by the
        // server or a proxy are pinged.
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        .sqlx_logging(false);
        if is_sqlite {
            // WAL keeps readers of the file (ours, an operator's sqlite3 shell) from blocking
            // the writer, and the writer from blocking them.
            opts.map_sqlx_sqlite_opts(move |o| {
                // A URL's own `mode=` (rwc, rw, ro) is kept as given.
                let o = if create_file {
                    o.create_if_missing(true)
                } else {
                    o
                };
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
            });
        }
        let db = Database::connect(opts.clone())
            .await
            .map_err(|e| connect_check::explain(url, e))?;
        let reads = if separate_reads {
            // The writer made the file and put it in WAL mode; readers only open it.
            opts.max_connections(SQLITE_READERS)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|o| {
                    o.read_only(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .busy_timeout(Duration::from_secs(5))
                });
            Database::connect(opts)
                .await
                .map_err(|e| connect_check::explain(url, e))?
        } else {
            db.clone()
        };
        if is_sqlite && !planner_is_stable(&db).await? {
            tracing::warn!(
                "this build's SQLite lacks SQLITE_ENABLE_QPSG (set in .cargo/config.toml): \
                 every query with a LIMIT is parsed again on each execution, several times slower"
            );
        }
        Ok(Self {
            db,
            reads,
            separate_reads,
            appended: Arc::new(tokio::sync::watch::Sender::new(0)),
            _exclusive: exclusive,
        })
    }

    /// Where reads outside a transaction go.
    fn reads(&self) -> &DatabaseConnection {
        &self.reads
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// The names of the migrations this build has that the database has not applied, oldest
    /// first.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        Ok(migrations::Migrator::get_pending_migrations(&self.db)
            .await?
            .iter()
            .map(|m| m.name().to_owned())
            .collect())
    }

    pub fn backend_name(&self) -> &'static str {
        match self.db.get_database_backend() {
            DbBackend::Sqlite => "sqlite",
            DbBackend::Postgres => "postgres",
            DbBackend::MySql => "mysql",
            _ => "other",
        }
    }

    /// Cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await?;
        Ok(())
    }

    pub async fn close(self) -> Result<(), StoreError> {
        if self.separate_reads {
            self.reads.close().await?;
        }
        self.db.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without it every `.one()` is parsed again at each execution (`.cargo/config.toml`).
    #[tokio::test]
    async fn sqlite_is_built_with_a_stable_query_planner() {
        let store = Store::connect("sqlite::memory:", &StoreOptions::default())
            .await
            .expect("connect");
        assert!(planner_is_stable(&store.db).await.expect("pragma"));
    }
}
