//! The client-facing event log: appended inside the transactions that make the changes it tells
//! of (a transactional outbox), read by ListEvents and WatchEvents, and pruned after retention.
//!
//! Sequences are per account and commit in order. Appending takes the account's
//! `event_sequences` row with an upsert that is the transaction's **last** statement: on
//! PostgreSQL the row stays locked until commit, so a second transaction of the same account
//! waits there and commits after the first — a reader that sees sequence `n` has every event
//! before it, and a cursor never skips one committed later. The lock is held only for the
//! commit itself, and a transaction holding it waits for nothing else, so it cannot deadlock.
//! SQLite runs one transaction at a time and needs none of this, but takes the same path.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};

use super::entities::event;
use super::{Store, StoreError};
use crate::domain::{AccountId, Bulk, Event, EventId, EventResource, EventType, Refund, Timestamp};

/// Which events to list or follow.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only these types; empty means all.
    pub types: Vec<EventType>,
    pub resource_id: Option<String>,
    pub created_from: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
}

/// An event to append: what happened to which resource, as the resource now is.
pub(super) struct NewEvent {
    pub kind: EventType,
    pub resource: EventResource,
}

impl NewEvent {
    pub fn refund(kind: EventType, refund: &Refund) -> Self {
        Self {
            kind,
            resource: EventResource::Refund(Box::new(refund.clone())),
        }
    }

    pub fn bulk(kind: EventType, bulk: &Bulk) -> Self {
        Self {
            kind,
            resource: EventResource::Bulk(Box::new(bulk.clone())),
        }
    }
}

/// Appends `events` for `account` on `conn`, the transaction making the change. Call it as the
/// transaction's last statement (see the module's comment), and [`Store::events_appended`]'s
/// sender after commit.
pub(super) async fn append_events<C: ConnectionTrait>(
    conn: &C,
    account: &AccountId,
    events: &[NewEvent],
    now: i64,
) -> Result<(), StoreError> {
    let Ok(n) = i64::try_from(events.len()) else {
        return Err(corrupt("too many events in one transaction"));
    };
    if n == 0 {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        rows.push((
            e.kind,
            e.resource.id().to_owned(),
            e.resource
                .to_json()
                .map_err(|err| corrupt(format!("event data does not serialize: {err}")))?,
        ));
    }
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "INSERT INTO event_sequences (account_id, last_sequence) VALUES ($1, $2) \
             ON CONFLICT (account_id) DO UPDATE \
             SET last_sequence = event_sequences.last_sequence + EXCLUDED.last_sequence \
             RETURNING last_sequence"
        }
        _ => {
            "INSERT INTO event_sequences (account_id, last_sequence) VALUES (?, ?) \
             ON CONFLICT (account_id) DO UPDATE \
             SET last_sequence = event_sequences.last_sequence + excluded.last_sequence \
             RETURNING last_sequence"
        }
    };
    let last: i64 = conn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [account.as_str().into(), n.into()],
        ))
        .await?
        .ok_or_else(|| corrupt("the sequence upsert returned no row"))?
        .try_get("", "last_sequence")?;
    let models =
        rows.into_iter()
            .zip(last - n + 1..)
            .map(|((kind, resource_id, data), sequence)| event::ActiveModel {
                id: Set(EventId::generate().as_str().to_owned()),
                account_id: Set(account.as_str().to_owned()),
                sequence: Set(sequence),
                kind: Set(kind.as_str().to_owned()),
                resource_id: Set(resource_id),
                data: Set(data),
                created_at: Set(now),
            });
    event::Entity::insert_many(models)
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

impl Store {
    /// Bumped after every commit that appended events, in this process: what WatchEvents
    /// streams wait on (the other replicas' appends reach them through the change notices).
    pub fn events_appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// After a commit that appended events.
    pub(super) fn note_events_appended(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// `account`'s events matching `filter`, newest first, older than sequence `before` if
    /// given, at most `limit`.
    pub async fn list_events(
        &self,
        account: &AccountId,
        filter: &EventFilter,
        before: Option<u64>,
        limit: u64,
    ) -> Result<Vec<Event>, StoreError> {
        let mut query = self.filtered(account, filter);
        if let Some(before) = before {
            query = query.filter(event::Column::Sequence.lt(seq(before)));
        }
        query
            .order_by_desc(event::Column::Sequence)
            .limit(limit)
            .all(self.reads())
            .await?
            .into_iter()
            .map(to_domain)
            .collect()
    }

    /// `account`'s events after sequence `after` matching `filter`, oldest first, at most
    /// `limit`, each with its stored JSON data (what a webhook sends).
    pub async fn events_after(
        &self,
        account: &AccountId,
        filter: &EventFilter,
        after: u64,
        limit: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.filtered(account, filter)
            .filter(event::Column::Sequence.gt(seq(after)))
            .order_by_asc(event::Column::Sequence)
            .limit(limit)
            .all(self.reads())
            .await?
            .into_iter()
            .map(to_domain)
            .collect()
    }

    /// The oldest sequence `account` still has (older ones were pruned), if it has any.
    pub async fn oldest_event_sequence(
        &self,
        account: &AccountId,
    ) -> Result<Option<u64>, StoreError> {
        let oldest: Option<i64> = event::Entity::find()
            .select_only()
            .column(event::Column::Sequence)
            .filter(event::Column::AccountId.eq(account.as_str()))
            .order_by_asc(event::Column::Sequence)
            .limit(1)
            .into_tuple()
            .one(self.reads())
            .await?;
        Ok(oldest.map(|s| u64::try_from(s).unwrap_or(0)))
    }

    /// Deletes events created before `cutoff`, at most `limit` of them (so one pass never holds
    /// the database long). Returns how many.
    pub async fn prune_events(&self, cutoff: Timestamp, limit: u64) -> Result<u64, StoreError> {
        let ids: Vec<String> = event::Entity::find()
            .select_only()
            .column(event::Column::Id)
            .filter(event::Column::CreatedAt.lt(cutoff.as_micros()))
            .order_by_asc(event::Column::CreatedAt)
            .limit(limit)
            .into_tuple()
            .all(self.reads())
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(event::Entity::delete_many()
            .filter(event::Column::Id.is_in(ids))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    fn filtered(&self, account: &AccountId, f: &EventFilter) -> sea_orm::Select<event::Entity> {
        let mut query = event::Entity::find().filter(event::Column::AccountId.eq(account.as_str()));
        if !f.types.is_empty() {
            query = query.filter(event::Column::Kind.is_in(f.types.iter().map(|t| t.as_str())));
        }
        if let Some(resource) = &f.resource_id {
            query = query.filter(event::Column::ResourceId.eq(resource.as_str()));
        }
        if let Some(t) = f.created_from {
            query = query.filter(event::Column::CreatedAt.gte(t.as_micros()));
        }
        if let Some(t) = f.created_before {
            query = query.filter(event::Column::CreatedAt.lt(t.as_micros()));
        }
        query
    }
}

/// A cursor as the database compares it: sequences start at 1 and stay far below `i64::MAX`.
pub(super) fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn to_domain(row: event::Model) -> Result<Event, StoreError> {
    let account = AccountId::from_trusted(row.account_id);
    let kind = EventType::parse(&row.kind)
        .ok_or_else(|| corrupt(format!("unknown event type {:?}", row.kind)))?;
    let resource = EventResource::from_json(&account, &row.data).map_err(corrupt)?;
    Ok(Event {
        id: EventId::from_trusted(row.id),
        account,
        sequence: u64::try_from(row.sequence).map_err(|_| corrupt("negative sequence"))?,
        kind,
        created_at: Timestamp::from_micros(row.created_at),
        resource,
        data: row.data,
    })
}

fn corrupt(detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table: "events",
        detail: detail.to_string(),
    }
}
