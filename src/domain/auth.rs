//! Who is calling: API keys, their scopes, and the principal a request acts as.

use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest as _, Sha256};

use super::AccountId;

prefixed_id!(
    /// An API key's public id (`key_…`): what lists, audit records and revocation name. The
    /// secret token itself is shown once, at creation, and stored only as a hash.
    ApiKeyId,
    "key_"
);

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    RefundsRead,
    RefundsWrite,
    RefundsApprove,
    BulkWrite,
    /// The account's webhook endpoints and their deliveries.
    WebhooksManage,
    /// Everything the other scopes allow, within the key's account.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::RefundsRead,
        Scope::RefundsWrite,
        Scope::RefundsApprove,
        Scope::BulkWrite,
        Scope::WebhooksManage,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefundsRead => "refunds:read",
            Self::RefundsWrite => "refunds:write",
            Self::RefundsApprove => "refunds:approve",
            Self::BulkWrite => "bulk:write",
            Self::WebhooksManage => "webhooks:manage",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// A comma-separated list, e.g. `refunds:read,refunds:write`. Names every unknown scope.
    pub fn parse_list(s: &str) -> Result<BTreeSet<Scope>, String> {
        let mut scopes = BTreeSet::new();
        let mut unknown = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match Self::parse(part) {
                Some(scope) => {
                    scopes.insert(scope);
                }
                None => unknown.push(part.to_owned()),
            }
        }
        if !unknown.is_empty() {
            return Err(format!(
                "unknown scope(s) {}; known: {}",
                unknown.join(", "),
                Self::ALL.map(Scope::as_str).join(", ")
            ));
        }
        if scopes.is_empty() {
            return Err("at least one scope is needed".to_owned());
        }
        Ok(scopes)
    }

    pub fn join(scopes: &BTreeSet<Scope>) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of a request, once its API key checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: ApiKeyId,
    pub account: AccountId,
    pub scopes: BTreeSet<Scope>,
}

impl Principal {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// An API key as stored (never its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub account: AccountId,
    pub name: String,
    pub scopes: BTreeSet<Scope>,
    pub created_at: super::Timestamp,
    pub revoked_at: Option<super::Timestamp>,
}

/// A newly made API key token: `rsk_` and 43 random base64url characters (256 bits). Only its
/// SHA-256 is stored: the token is random enough that a slow password hash would add nothing.
pub struct NewToken {
    pub token: String,
    pub hash: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &"[redacted]")
            .field("hash", &self.hash)
            .finish()
    }
}

pub const TOKEN_PREFIX: &str = "rsk_";

impl NewToken {
    pub fn generate() -> Self {
        use base64::Engine as _;
        use rand::RngCore as _;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let hash = token_hash(&token);
        Self { token, hash }
    }
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Account ids are chosen by operators: 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn parse_account(s: &str) -> Result<AccountId, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(AccountId::from_trusted(s.to_owned()))
    } else {
        Err(format!(
            "invalid account id {s:?}: 1 to 64 letters, digits, '_' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn scopes_parse_from_a_list_and_name_unknown_ones() {
        let scopes = Scope::parse_list("refunds:read, refunds:write").expect("valid");
        assert_eq!(Scope::join(&scopes), "refunds:read,refunds:write");
        let err = Scope::parse_list("refunds:read,refunds:delete,root").expect_err("unknown");
        assert!(err.contains("refunds:delete, root"), "{err}");
        assert!(Scope::parse_list(" , ").is_err());
    }

    #[test]
    fn admin_allows_everything_and_others_only_themselves() {
        let principal = |scopes: &[Scope]| Principal {
            key_id: ApiKeyId::generate(),
            account: AccountId::default_account(),
            scopes: scopes.iter().copied().collect(),
        };
        let admin = principal(&[Scope::Admin]);
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
        let reader = principal(&[Scope::RefundsRead]);
        assert!(reader.allows(Scope::RefundsRead));
        assert!(!reader.allows(Scope::RefundsWrite));
        assert!(!reader.allows(Scope::Admin));
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (NewToken::generate(), NewToken::generate());
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with(TOKEN_PREFIX) && a.token.len() == 4 + 43);
        assert_eq!(a.hash, token_hash(&a.token));
        assert_eq!(a.hash.len(), 64);
        assert!(!format!("{a:?}").contains(&a.token));
    }

    proptest! {
        #[test]
        fn account_ids_are_checked_not_trusted(s in ".{0,80}") {
            let ok = parse_account(&s).is_ok();
            let expected = (1..=64).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            prop_assert_eq!(ok, expected);
        }

        #[test]
        fn scope_lists_never_panic(s in ".{0,100}") {
            let _ = Scope::parse_list(&s);
        }
    }
}
