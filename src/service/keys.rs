//! API keys: authenticating a token, and the key management behind `refund-service keys`.

use std::collections::BTreeSet;

use super::{RefundService, internal};
use crate::domain::{
    AccountId, ApiKey, ApiKeyId, NewToken, Principal, RefundError, Scope, Timestamp, token_hash,
};
use crate::store::Store;

impl RefundService {
    /// The caller a bearer token stands for; `None` for unknown or revoked keys.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, RefundError> {
        self.store()
            .principal_for(&token_hash(token))
            .await
            .map_err(internal)
    }
}

/// Makes a key for `account` with `scopes`. Returns it and its token, which exists nowhere else:
/// only its hash is stored.
pub async fn create_api_key(
    store: &Store,
    account: AccountId,
    name: String,
    scopes: BTreeSet<Scope>,
) -> Result<(ApiKey, String), RefundError> {
    let token = NewToken::generate();
    let key = ApiKey {
        id: ApiKeyId::generate(),
        account,
        name,
        scopes,
        created_at: Timestamp::now(),
        revoked_at: None,
    };
    store
        .create_api_key(&key, &token.hash, "cli")
        .await
        .map_err(internal)?;
    Ok((key, token.token))
}

/// On a fresh installation (no usable key at all), makes an admin key for the default account:
/// with `token` when the operator supplied one, otherwise a new random token, which is returned
/// to be shown once. Does nothing when any key exists.
pub async fn bootstrap_admin_key(
    store: &Store,
    token: Option<&str>,
) -> Result<Option<String>, RefundError> {
    if store.active_api_keys().await.map_err(internal)? > 0 {
        return Ok(None);
    }
    let scopes = BTreeSet::from([Scope::Admin]);
    let name = "bootstrap admin key".to_owned();
    match token {
        Some(token) => {
            let key = ApiKey {
                id: ApiKeyId::generate(),
                account: AccountId::default_account(),
                name,
                scopes,
                created_at: Timestamp::now(),
                revoked_at: None,
            };
            store
                .create_api_key(&key, &token_hash(token), "bootstrap")
                .await
                .map_err(internal)?;
            Ok(None)
        }
        None => {
            let (_, token) =
                create_api_key(store, AccountId::default_account(), name, scopes).await?;
            Ok(Some(token))
        }
    }
}
