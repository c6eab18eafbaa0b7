//! Provider connections. Credentials arrive sealed and leave sealed: the store never holds a key
//! to open them.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, SqlErr,
    TransactionTrait,
};

use super::audit::{AuditEntry, insert_audit};
use super::entities::{connection, refund};
use super::{Store, StoreError};
use crate::domain::{
    AccountId, Connection, ConnectionActor, ConnectionId, ProviderName, RefundStatus, Timestamp,
};

/// A connection as stored: what it shows, and its sealed credentials.
#[derive(Debug, Clone)]
pub struct StoredConnection {
    pub connection: Connection,
    pub credential_sealed: String,
    pub webhook_secret_sealed: Option<String>,
    pub deleted: bool,
}

#[derive(Debug)]
pub enum CreateConnectionOutcome {
    Created,
    /// The account already has a live connection for the provider.
    Exists(ConnectionId),
}

#[derive(Debug)]
pub enum DeleteConnectionOutcome {
    Deleted,
    NotFound,
    /// Refunds through it are not settled yet; they need its credentials.
    Unsettled(u64),
}

impl Store {
    /// Stores a new connection with its audit record, unless the account has one for the
    /// provider already (one live connection per account and provider, kept by a unique index).
    pub async fn create_connection(
        &self,
        stored: &StoredConnection,
        actor: ConnectionActor<'_>,
    ) -> Result<CreateConnectionOutcome, StoreError> {
        let c = &stored.connection;
        let txn = self.db.begin().await?;
        let inserted = connection::Entity::insert(connection::ActiveModel {
            id: Set(c.id.as_str().to_owned()),
            account_id: Set(c.account.as_str().to_owned()),
            provider: Set(c.provider.as_str().to_owned()),
            api_base: Set(c.api_base.clone()),
            settings: Set(
                serde_json::to_string(&c.settings).map_err(|e| StoreError::Corrupt {
                    table: "connections",
                    detail: format!("settings do not serialize: {e}"),
                })?,
            ),
            credential_sealed: Set(stored.credential_sealed.clone()),
            webhook_secret_sealed: Set(stored.webhook_secret_sealed.clone()),
            created_at: Set(c.created_at.as_micros()),
            rotated_at: Set(c.rotated_at.as_micros()),
            deleted_at: Set(None),
        })
        .exec_without_returning(&txn)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                txn.rollback().await?;
                let existing = self
                    .live_connection(&c.account, &c.provider)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt {
                        table: "connections",
                        detail: format!("{} conflicted but no live connection exists", c.id),
                    })?;
                return Ok(CreateConnectionOutcome::Exists(existing.connection.id));
            }
            Err(e) => return Err(e.into()),
        }
        insert_audit(
            &txn,
            AuditEntry {
                account: c.account.as_str(),
                actor_key: actor.key,
                source: actor.source,
                action: "connection.create",
                resource_id: c.id.as_str(),
                request_id: actor.request_id,
                outcome: "active",
                detail: format!("provider {}", c.provider),
                now: c.created_at.as_micros(),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(CreateConnectionOutcome::Created)
    }

    /// The account's live connection for a provider.
    pub async fn live_connection(
        &self,
        account: &AccountId,
        provider: &ProviderName,
    ) -> Result<Option<StoredConnection>, StoreError> {
        connection::Entity::find()
            .filter(connection::Column::AccountId.eq(account.as_str()))
            .filter(connection::Column::Provider.eq(provider.as_str()))
            .filter(connection::Column::DeletedAt.is_null())
            .one(self.reads())
            .await?
            .map(to_stored)
            .transpose()
    }

    /// A connection by id, deleted or not (refunds made through it settle through it).
    pub async fn connection_by_id(
        &self,
        id: &ConnectionId,
    ) -> Result<Option<StoredConnection>, StoreError> {
        connection::Entity::find_by_id(id.as_str().to_owned())
            .one(self.reads())
            .await?
            .map(to_stored)
            .transpose()
    }

    /// Live connections, oldest first; only `account`'s when given.
    pub async fn list_connections(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<StoredConnection>, StoreError> {
        let mut query = connection::Entity::find()
            .filter(connection::Column::DeletedAt.is_null())
            .order_by_asc(connection::Column::Id);
        if let Some(account) = account {
            query = query.filter(connection::Column::AccountId.eq(account.as_str()));
        }
        query
            .all(self.reads())
            .await?
            .into_iter()
            .map(to_stored)
            .collect()
    }

    /// Every connection, deleted ones included: what `connections rekey` reseals.
    pub async fn all_connections(&self) -> Result<Vec<StoredConnection>, StoreError> {
        connection::Entity::find()
            .order_by_asc(connection::Column::Id)
            .all(self.reads())
            .await?
            .into_iter()
            .map(to_stored)
            .collect()
    }

    /// Replaces a live connection's sealed credentials (`webhook_secret_sealed: None` keeps the
    /// current one). Returns the connection as it is now, or `None` when `account` has no such
    /// live connection.
    pub async fn rotate_connection(
        &self,
        account: &AccountId,
        id: &ConnectionId,
        credential_sealed: String,
        webhook_secret_sealed: Option<String>,
        now: Timestamp,
        actor: ConnectionActor<'_>,
    ) -> Result<Option<StoredConnection>, StoreError> {
        let txn = self.db.begin().await?;
        let mut update = connection::Entity::update_many()
            .col_expr(
                connection::Column::CredentialSealed,
                Expr::value(credential_sealed),
            )
            .col_expr(connection::Column::RotatedAt, Expr::value(now.as_micros()));
        if let Some(sealed) = webhook_secret_sealed {
            update = update.col_expr(connection::Column::WebhookSecretSealed, Expr::value(sealed));
        }
        let Some(row) = update
            .filter(connection::Column::Id.eq(id.as_str()))
            .filter(connection::Column::AccountId.eq(account.as_str()))
            .filter(connection::Column::DeletedAt.is_null())
            .exec_with_returning(&txn)
            .await?
            .pop()
        else {
            txn.rollback().await?;
            return Ok(None);
        };
        insert_audit(
            &txn,
            AuditEntry {
                account: account.as_str(),
                actor_key: actor.key,
                source: actor.source,
                action: "connection.rotate",
                resource_id: id.as_str(),
                request_id: actor.request_id,
                outcome: "active",
                detail: format!("provider {}", row.provider),
                now: now.as_micros(),
            },
        )
        .await?;
        txn.commit().await?;
        to_stored(row).map(Some)
    }

    /// Reseals a connection under another master key; the credentials stay the same. Only if
    /// it is still sealed as `was` read it (a rotation meanwhile wins); returns whether it was.
    pub async fn reseal_connection(
        &self,
        was: &StoredConnection,
        credential_sealed: String,
        webhook_secret_sealed: Option<String>,
    ) -> Result<bool, StoreError> {
        let id = &was.connection.id;
        let mut update = connection::Entity::update_many()
            .col_expr(
                connection::Column::CredentialSealed,
                Expr::value(credential_sealed),
            )
            .col_expr(
                connection::Column::WebhookSecretSealed,
                Expr::value(webhook_secret_sealed),
            )
            .filter(connection::Column::Id.eq(id.as_str()))
            .filter(connection::Column::CredentialSealed.eq(was.credential_sealed.as_str()));
        update = match &was.webhook_secret_sealed {
            Some(sealed) => {
                update.filter(connection::Column::WebhookSecretSealed.eq(sealed.as_str()))
            }
            None => update.filter(connection::Column::WebhookSecretSealed.is_null()),
        };
        Ok(update.exec(&self.db).await?.rows_affected == 1)
    }

    /// Deletes a live connection: no new refund goes through it. Refused while refunds made
    /// through it are unsettled (PENDING or waiting for approval).
    pub async fn delete_connection(
        &self,
        account: &AccountId,
        id: &ConnectionId,
        now: Timestamp,
        actor: ConnectionActor<'_>,
    ) -> Result<DeleteConnectionOutcome, StoreError> {
        let txn = self.db.begin().await?;
        // The account's own live connection first (another account's is not there to see); the
        // write locks it, so a refund being stored through it meanwhile is counted below.
        let deleted = connection::Entity::update_many()
            .col_expr(connection::Column::DeletedAt, Expr::value(now.as_micros()))
            .filter(connection::Column::Id.eq(id.as_str()))
            .filter(connection::Column::AccountId.eq(account.as_str()))
            .filter(connection::Column::DeletedAt.is_null())
            .exec(&txn)
            .await?
            .rows_affected;
        if deleted == 0 {
            txn.rollback().await?;
            return Ok(DeleteConnectionOutcome::NotFound);
        }
        let unsettled = refund::Entity::find()
            .filter(refund::Column::ConnectionId.eq(id.as_str()))
            .filter(refund::Column::Status.is_in([
                RefundStatus::Pending.as_str(),
                RefundStatus::RequiresApproval.as_str(),
            ]))
            .count(&txn)
            .await?;
        if unsettled > 0 {
            txn.rollback().await?;
            return Ok(DeleteConnectionOutcome::Unsettled(unsettled));
        }
        insert_audit(
            &txn,
            AuditEntry {
                account: account.as_str(),
                actor_key: actor.key,
                source: actor.source,
                action: "connection.delete",
                resource_id: id.as_str(),
                request_id: actor.request_id,
                outcome: "deleted",
                detail: String::new(),
                now: now.as_micros(),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(DeleteConnectionOutcome::Deleted)
    }
}

fn to_stored(row: connection::Model) -> Result<StoredConnection, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt {
        table: "connections",
        detail: format!("{}: {e}", row.id),
    };
    let provider = ProviderName::parse(&row.provider).map_err(corrupt)?;
    let settings =
        serde_json::from_str(&row.settings).map_err(|e| corrupt(format!("settings: {e}")))?;
    Ok(StoredConnection {
        connection: Connection {
            id: ConnectionId::from_trusted(row.id),
            account: AccountId::from_trusted(row.account_id),
            provider,
            api_base: row.api_base,
            settings,
            webhooks_enabled: row.webhook_secret_sealed.is_some(),
            created_at: Timestamp::from_micros(row.created_at),
            rotated_at: Timestamp::from_micros(row.rotated_at),
        },
        credential_sealed: row.credential_sealed,
        webhook_secret_sealed: row.webhook_secret_sealed,
        deleted: row.deleted_at.is_some(),
    })
}
