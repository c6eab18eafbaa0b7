//! The live replicas of a shared database (PostgreSQL): a heartbeat row each, on the database's
//! clock. SQLite is single-node: there, a store has no replicas to count.

use std::time::Duration;

use sea_orm::{ConnectionTrait as _, DbBackend, Statement};

use super::{Store, StoreError};

/// Rows not renewed for this long are removed by the next heartbeat that tidies up: replicas
/// that died without leaving.
const FORGET_AFTER_SECS: i64 = 3600;

impl Store {
    /// Renews the heartbeat of replica `id` (adding its row on the first beat) and counts the
    /// live replicas, itself included: those whose heartbeat is younger than `live_for`. `None`
    /// on SQLite, which one process serves alone. With `tidy`, also forgets replicas silent for
    /// an hour.
    pub async fn replica_heartbeat(
        &self,
        id: &str,
        live_for: Duration,
        tidy: bool,
    ) -> Result<Option<u32>, StoreError> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        let live_for_micros = i64::try_from(live_for.as_micros()).unwrap_or(i64::MAX);
        // The others are counted as of before this statement's own write, which is added.
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH beat AS ( \
                   INSERT INTO replicas (id, started_at, heartbeat_at) \
                   VALUES ($1, clock_timestamp(), clock_timestamp()) \
                   ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp() \
                   RETURNING id) \
                 SELECT count(*) AS others FROM replicas \
                 WHERE id <> $1 AND heartbeat_at > clock_timestamp() - $2 * interval '1 microsecond'",
                [id.into(), live_for_micros.into()],
            ))
            .await?;
        let others: i64 = match row {
            Some(row) => row.try_get("", "others")?,
            None => 0,
        };
        if tidy {
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "DELETE FROM replicas WHERE heartbeat_at < clock_timestamp() - $1 * interval '1 second'",
                    [FORGET_AFTER_SECS.into()],
                ))
                .await?;
        }
        Ok(Some(
            u32::try_from(others)
                .unwrap_or(u32::MAX - 1)
                .saturating_add(1),
        ))
    }

    /// Removes replica `id`'s row: it stops, and the others take its share of the budgets now
    /// rather than when its heartbeat goes stale.
    pub async fn replica_leave(&self, id: &str) -> Result<(), StoreError> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM replicas WHERE id = $1",
                [id.into()],
            ))
            .await?;
        Ok(())
    }
}
