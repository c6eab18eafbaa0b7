//! API keys: authenticating a token, and the key management behind `refund-service keys`.
//!
//! A key that checked out is remembered for `api_key_cache_ttl` (by its token's hash), so a
//! client's calls do not each cost a database query. A revocation therefore applies to this
//! process at the latest that long after it was committed; on PostgreSQL the revoking command
//! also sends a notice that empties every replica's cache at once (`changes.rs`). Unknown and
//! revoked tokens are never remembered: they are asked about every time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::{RefundService, internal};
use crate::domain::{
    AccountId, ApiKey, ApiKeyId, NewToken, Principal, RefundError, Scope, Timestamp, token_hash,
};
use crate::store::Store;

/// More distinct live keys than this in one TTL and the cache starts afresh: it never grows
/// with the number of keys a client can make up, only with the keys that exist.
const MAX_CACHED_KEYS: usize = 10_000;

impl RefundService {
    /// The caller a bearer token stands for; `None` for unknown or revoked keys.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, RefundError> {
        let hash = token_hash(token);
        let cache = &self.inner.key_cache;
        let now = self.clock().now();
        if let Some(principal) = cache.get(&hash, now) {
            return Ok(Some(principal));
        }
        let generation = cache.generation();
        let principal = self.store().principal_for(&hash).await.map_err(internal)?;
        if let Some(principal) = &principal {
            cache.insert(hash, principal.clone(), now, generation);
        }
        Ok(principal)
    }

    /// Forgets every remembered key: some key may have been revoked.
    pub(super) fn forget_keys(&self) {
        self.inner.key_cache.clear();
    }
}

/// Principals of tokens that checked out recently, each until its expiry.
#[derive(Debug)]
pub(super) struct KeyCache {
    ttl: Duration,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Bumped by every [`KeyCache::clear`]: an answer read from the database before a clear
    /// may predate the revocation that caused it, and is not kept.
    generation: u64,
    entries: HashMap<String, (Principal, Timestamp)>,
}

impl KeyCache {
    /// A TTL of zero remembers nothing.
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // The state is a cache: whatever a panicking holder left is still a valid one.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, hash: &str, now: Timestamp) -> Option<Principal> {
        let state = self.lock();
        let (principal, expires) = state.entries.get(hash)?;
        (now < *expires).then(|| principal.clone())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn insert(&self, hash: String, principal: Principal, now: Timestamp, generation: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        if state.entries.len() >= MAX_CACHED_KEYS {
            state.entries.retain(|_, (_, expires)| now < *expires);
            if state.entries.len() >= MAX_CACHED_KEYS {
                state.entries.clear();
            }
        }
        let expires = now.saturating_add(self.ttl);
        state.entries.insert(hash, (principal, expires));
    }

    fn clear(&self) {
        let mut state = self.lock();
        state.generation = state.generation.wrapping_add(1);
        state.entries.clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            key_id: ApiKeyId::generate(),
            account: AccountId::default_account(),
            scopes: BTreeSet::from([Scope::RefundsRead]),
        }
    }

    #[test]
    fn a_key_is_remembered_until_its_ttl_ends() {
        let cache = KeyCache::new(Duration::from_secs(1));
        let now = Timestamp::from_micros(1_000_000);
        cache.insert("h".into(), principal(), now, cache.generation());
        assert!(
            cache
                .get("h", now.saturating_add(Duration::from_millis(999)))
                .is_some()
        );
        assert!(
            cache
                .get("h", now.saturating_add(Duration::from_secs(1)))
                .is_none()
        );
    }

    #[test]
    fn an_answer_read_before_a_clear_is_not_kept() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let now = Timestamp::from_micros(1_000_000);
        let read_at = cache.generation();
        cache.clear();
        cache.insert("h".into(), principal(), now, read_at);
        assert!(cache.get("h", now).is_none());
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let cache = KeyCache::new(Duration::ZERO);
        let now = Timestamp::from_micros(1_000_000);
        cache.insert("h".into(), principal(), now, cache.generation());
        assert!(cache.get("h", now).is_none());
    }

    #[test]
    fn the_cache_never_holds_more_than_its_bound() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let now = Timestamp::from_micros(1_000_000);
        for i in 0..=MAX_CACHED_KEYS {
            cache.insert(format!("h{i}"), principal(), now, cache.generation());
        }
        assert!(cache.lock().entries.len() <= MAX_CACHED_KEYS);
    }
}
