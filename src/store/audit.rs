//! The audit trail: written inside the transactions that change state, read by ListAuditEvents.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::entities::audit_event;
use super::{Store, StoreError};
use crate::domain::{AccountId, ApiKeyId, AuditEvent, AuditId, Timestamp};

/// Which audit records to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub resource_id: Option<String>,
    pub action: Option<String>,
    pub actor_key: Option<ApiKeyId>,
    pub since: Option<Timestamp>,
    /// Keyset cursor: only records with a smaller id (older).
    pub before_id: Option<AuditId>,
}

/// What a state change records, beyond what its transaction knows already.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub account: &'a str,
    pub actor_key: Option<&'a ApiKeyId>,
    pub source: &'a str,
    pub action: &'a str,
    pub resource_id: &'a str,
    pub request_id: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: String,
    pub now: i64,
}

/// Appends an audit record on `conn` (the transaction making the change).
pub(super) async fn insert_audit<C: ConnectionTrait>(
    conn: &C,
    e: AuditEntry<'_>,
) -> Result<(), StoreError> {
    audit_event::Entity::insert(audit_event::ActiveModel {
        id: Set(AuditId::generate().as_str().to_owned()),
        account_id: Set(e.account.to_owned()),
        actor_key_id: Set(e.actor_key.map(|k| k.as_str().to_owned())),
        source: Set(e.source.to_owned()),
        action: Set(e.action.to_owned()),
        resource_id: Set(e.resource_id.to_owned()),
        request_id: Set(e.request_id.map(str::to_owned)),
        outcome: Set(e.outcome.to_owned()),
        detail: Set(e.detail),
        created_at: Set(e.now),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

impl Store {
    /// `account`'s audit records matching `filter`, newest first, at most `limit`.
    pub async fn list_audit_events(
        &self,
        account: &AccountId,
        filter: &AuditFilter,
        limit: u64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut query = audit_event::Entity::find()
            .filter(audit_event::Column::AccountId.eq(account.as_str()))
            .order_by_desc(audit_event::Column::Id)
            .limit(limit);
        if let Some(resource) = &filter.resource_id {
            query = query.filter(audit_event::Column::ResourceId.eq(resource.as_str()));
        }
        if let Some(action) = &filter.action {
            query = query.filter(audit_event::Column::Action.eq(action.as_str()));
        }
        if let Some(key) = &filter.actor_key {
            query = query.filter(audit_event::Column::ActorKeyId.eq(key.as_str()));
        }
        if let Some(since) = filter.since {
            query = query.filter(audit_event::Column::CreatedAt.gte(since.as_micros()));
        }
        if let Some(before) = &filter.before_id {
            query = query.filter(audit_event::Column::Id.lt(before.as_str()));
        }
        Ok(query
            .all(self.reads())
            .await?
            .into_iter()
            .map(|row| AuditEvent {
                id: AuditId::from_trusted(row.id),
                account: AccountId::from_trusted(row.account_id),
                actor_key: row.actor_key_id.map(ApiKeyId::from_trusted),
                source: row.source,
                action: row.action,
                resource_id: row.resource_id,
                request_id: row.request_id,
                outcome: row.outcome,
                detail: row.detail,
                created_at: Timestamp::from_micros(row.created_at),
            })
            .collect())
    }
}
