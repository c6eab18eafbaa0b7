//! Provider connections: an account's own credentials for a provider (what hyperswitch calls a
//! merchant connector account). A refund goes through its account's connection for the
//! provider, or, when the account has none, through the platform's (the configured flags).

use super::{AccountId, ProviderName, Timestamp};

prefixed_id!(
    /// A connection: `conn_` and a UUIDv7.
    ConnectionId,
    "conn_"
);

/// Which credentials a refund goes through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// The provider as configured with flags or environment, shared by the accounts allowed to.
    Platform,
    /// An account's own connection.
    Connection(ConnectionId),
}

impl Route {
    pub fn connection(&self) -> Option<&ConnectionId> {
        match self {
            Self::Platform => None,
            Self::Connection(id) => Some(id),
        }
    }

    pub fn from_connection(id: Option<ConnectionId>) -> Self {
        id.map_or(Self::Platform, Self::Connection)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Platform => f.write_str("platform"),
            Self::Connection(id) => f.write_str(id.as_str()),
        }
    }
}

/// A connection as it is shown: never its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: ConnectionId,
    pub account: AccountId,
    pub provider: ProviderName,
    /// Where its API is, when not the provider's default.
    pub api_base: Option<String>,
    /// The provider's own settings by word (Adyen's `merchant-account`); not secret.
    pub settings: std::collections::BTreeMap<String, String>,
    /// Whether it holds a secret that signs its webhooks (`/webhooks/{provider}/{id}`).
    pub webhooks_enabled: bool,
    pub created_at: Timestamp,
    /// When its credentials were last replaced (`created_at` until then).
    pub rotated_at: Timestamp,
}

/// Who changes a connection, for the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionActor<'a> {
    /// `api` or `cli`.
    pub source: &'static str,
    pub key: Option<&'a super::ApiKeyId>,
    pub request_id: Option<&'a str>,
}
