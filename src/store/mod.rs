//! Persistence: SQLite (the embedded default) or PostgreSQL (production, shared by replicas).
//!
//! Architecture invariant: only this module knows SeaORM. It takes and returns domain types; the
//! one money rule it owns — a payment's reserved amount never exceeds its captured amount — is
//! enforced by conditional writes inside transactions, never by a read followed by a blind write.

mod audit;
mod bulks;
mod entities;
mod keys;
mod migrations;
mod refunds;
mod verify;
mod webhooks;

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};
use sea_orm_migration::MigratorTrait;

pub use audit::AuditFilter;
pub use bulks::{ClaimedItem, CreateBulkOutcome};
pub use refunds::{BeginOutcome, BeginRefund, ListFilter, PendingRefund, Settlement};
pub use verify::{Books, BulkItemRow, BulkRow, KeyRow, PaymentTotals, RefundRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] DbErr),
    /// A row that domain types cannot represent: a bug or a hand-edited database.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// PostgreSQL pool size. SQLite always uses one connection: SQLite allows one writer at a time,
    /// and one connection makes that queueing explicit instead of failing with SQLITE_BUSY.
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects to `url` (`sqlite://path?mode=rwc`, `sqlite::memory:`, `postgres://...`).
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let is_sqlite = url.starts_with("sqlite:");
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
            // WAL keeps readers of the file (an operator's sqlite3 shell) from blocking the service.
            opts.map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
            });
        }
        let db = Database::connect(opts).await?;
        Ok(Self { db })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::Migrator::up(&self.db, None).await?;
        Ok(())
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
        self.db.close().await?;
        Ok(())
    }
}
