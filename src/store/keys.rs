//! API keys.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    TransactionTrait,
};

use super::audit::{AuditEntry, insert_audit};
use super::entities::{api_key, approval_threshold};
use super::{Store, StoreError};
use crate::domain::{AccountId, ApiKey, ApiKeyId, Currency, Principal, Scope, Timestamp};

impl Store {
    /// Stores a new key (its token's hash only), with its audit record; `source` says who made
    /// it (`cli`, `bootstrap`).
    pub async fn create_api_key(
        &self,
        key: &ApiKey,
        token_hash: &str,
        source: &str,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        api_key::Entity::insert(api_key::ActiveModel {
            id: Set(key.id.as_str().to_owned()),
            account_id: Set(key.account.as_str().to_owned()),
            name: Set(key.name.clone()),
            token_hash: Set(token_hash.to_owned()),
            scopes: Set(Scope::join(&key.scopes)),
            created_at: Set(key.created_at.as_micros()),
            revoked_at: Set(None),
        })
        .exec_without_returning(&txn)
        .await?;
        insert_audit(
            &txn,
            AuditEntry {
                account: key.account.as_str(),
                actor_key: None,
                source,
                action: "api_key.create",
                resource_id: key.id.as_str(),
                request_id: None,
                outcome: "active",
                detail: format!("scopes {}; name {:?}", Scope::join(&key.scopes), key.name),
                now: key.created_at.as_micros(),
            },
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// The caller a token stands for, if it is a key that exists and is not revoked.
    pub async fn principal_for(&self, token_hash: &str) -> Result<Option<Principal>, StoreError> {
        let Some(row) = api_key::Entity::find()
            .filter(api_key::Column::TokenHash.eq(token_hash))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(self.reads())
            .await?
        else {
            return Ok(None);
        };
        let key = to_domain(row)?;
        Ok(Some(Principal {
            key_id: key.id,
            account: key.account,
            scopes: key.scopes,
        }))
    }

    /// Keys, oldest first; only `account`'s when given. Revoked keys included.
    pub async fn list_api_keys(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let mut query = api_key::Entity::find().order_by_asc(api_key::Column::Id);
        if let Some(account) = account {
            query = query.filter(api_key::Column::AccountId.eq(account.as_str()));
        }
        query
            .all(self.reads())
            .await?
            .into_iter()
            .map(to_domain)
            .collect()
    }

    /// Revokes a key. Returns false when there is no such key or it was already revoked.
    pub async fn revoke_api_key(&self, id: &ApiKeyId, now: Timestamp) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        let Some(row) = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now.as_micros()))
            .filter(api_key::Column::Id.eq(id.as_str()))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec_with_returning(&txn)
            .await?
            .pop()
        else {
            txn.rollback().await?;
            return Ok(false);
        };
        insert_audit(
            &txn,
            AuditEntry {
                account: &row.account_id,
                actor_key: None,
                source: "cli",
                action: "api_key.revoke",
                resource_id: &row.id,
                request_id: None,
                outcome: "revoked",
                detail: String::new(),
                now: now.as_micros(),
            },
        )
        .await?;
        // Every replica forgets the keys it remembers when this commits (PostgreSQL; a SQLite
        // service finds out when its cache's TTL ends).
        super::changes::announce_in(
            &txn,
            "keys",
            super::Changed {
                api_keys: true,
                ..super::Changed::default()
            },
        )
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// How many keys are not revoked.
    pub async fn active_api_keys(&self) -> Result<u64, StoreError> {
        Ok(api_key::Entity::find()
            .filter(api_key::Column::RevokedAt.is_null())
            .count(self.reads())
            .await?)
    }
}

impl Store {
    /// Refunds of `account` in `currency` above this many minor units need approval.
    pub async fn approval_threshold(
        &self,
        account: &AccountId,
        currency: Currency,
    ) -> Result<Option<i64>, StoreError> {
        Ok(approval_threshold::Entity::find_by_id((
            account.as_str().to_owned(),
            currency.code().to_owned(),
        ))
        .one(self.reads())
        .await?
        .map(|row| row.amount))
    }

    /// Sets (`Some`) or removes (`None`) an account's approval threshold for a currency.
    pub async fn set_approval_threshold(
        &self,
        account: &AccountId,
        currency: Currency,
        amount: Option<i64>,
    ) -> Result<(), StoreError> {
        // One transaction: a refund stored meanwhile sees the old threshold or the new one,
        // never none.
        let txn = self.db.begin().await?;
        let pk = (account.as_str().to_owned(), currency.code().to_owned());
        approval_threshold::Entity::delete_by_id(pk)
            .exec(&txn)
            .await?;
        if let Some(amount) = amount {
            approval_threshold::Entity::insert(approval_threshold::ActiveModel {
                account_id: Set(account.as_str().to_owned()),
                currency: Set(currency.code().to_owned()),
                amount: Set(amount),
                updated_at: Set(Timestamp::now().as_micros()),
            })
            .exec_without_returning(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

fn to_domain(row: api_key::Model) -> Result<ApiKey, StoreError> {
    let scopes = Scope::parse_list(&row.scopes).map_err(|e| StoreError::Corrupt {
        table: "api_keys",
        detail: format!("{}: {e}", row.id),
    })?;
    Ok(ApiKey {
        id: ApiKeyId::from_trusted(row.id),
        account: AccountId::from_trusted(row.account_id),
        name: row.name,
        scopes,
        created_at: Timestamp::from_micros(row.created_at),
        revoked_at: row.revoked_at.map(Timestamp::from_micros),
    })
}
