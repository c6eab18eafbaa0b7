//! Provider connections: which credentials a refund goes through, and their management (the
//! connection RPCs and `refund-service connections`).
//!
//! A new refund goes through its account's live connection for the provider; without one,
//! through the platform's (the configured flags), unless the platform's are restricted to other
//! accounts. A refund keeps its route for life: its look-ups, re-sends and webhooks use the
//! same credentials, even after the connection is rotated.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{RefundService, internal};
use crate::domain::{
    AccountId, Connection, ConnectionActor, ConnectionId, ProviderName, RefundError, Route,
    Timestamp,
};
use crate::providers::connections::{ConnectionAdapter, ConnectionAdapters, OpenedConnection};
use crate::providers::traffic::ControlledProvider;
use crate::providers::{Provider as _, ProviderSummary};
use crate::secret::Secret;
use crate::store::{CreateConnectionOutcome, DeleteConnectionOutcome, Store, StoredConnection};
use crate::vault::Vault;

/// Longest credential or signing secret accepted.
const MAX_SECRET_LEN: usize = 4096;

/// What connections need: the vault that seals their credentials, their adapters, and who may
/// use the platform's.
pub struct Connections {
    vault: Option<Arc<Vault>>,
    adapters: ConnectionAdapters,
    /// The accounts that may refund through the platform's connections; `None`: every account.
    platform_accounts: Option<BTreeSet<AccountId>>,
}

/// A connection to make.
#[derive(Debug, Clone)]
pub struct NewConnection {
    pub provider: ProviderName,
    pub credential: Secret,
    pub webhook_secret: Option<Secret>,
    /// Only operators (the CLI) set it: an API caller must not point the service, and the
    /// credentials it sends, at an address of its choosing.
    pub api_base: Option<String>,
    /// The provider's own settings (`ProviderSpec::extra`) by word.
    pub settings: BTreeMap<String, String>,
}

impl Connections {
    pub fn new(
        vault: Option<Arc<Vault>>,
        adapters: ConnectionAdapters,
        platform_accounts: Option<BTreeSet<AccountId>>,
    ) -> Self {
        Self {
            vault,
            adapters,
            platform_accounts,
        }
    }

    pub fn adapters(&self) -> &ConnectionAdapters {
        &self.adapters
    }

    pub(super) fn vault(&self) -> Result<&Vault, RefundError> {
        self.vault.as_deref().ok_or_else(|| RefundError::NotSetUp {
            reason: "NO_SECRETS_KEY",
            message: "this server has no secrets key (--secrets-key-file), so it cannot seal or \
                      open connection credentials or webhook signing secrets"
                .to_owned(),
        })
    }

    /// The adapter of a stored connection, built on first use and after each rotation.
    fn adapter(&self, stored: &StoredConnection) -> Result<ConnectionAdapter, RefundError> {
        let c = &stored.connection;
        if let Some(adapter) = self.adapters.cached(&c.id, c.rotated_at) {
            return Ok(adapter);
        }
        let vault = self.vault()?;
        let unreadable = |e: crate::vault::OpenError| {
            tracing::error!(connection_id = %c.id, error = %e, "connection credentials do not open");
            RefundError::NotSetUp {
                reason: "CONNECTION_UNREADABLE",
                message: format!(
                    "the credentials of connection {} cannot be opened with this server's \
                     secrets key: {e}",
                    c.id
                ),
            }
        };
        let credential = vault
            .open(c.id.as_str(), &stored.credential_sealed)
            .map_err(unreadable)?;
        let webhook_secret = stored
            .webhook_secret_sealed
            .as_deref()
            .map(|sealed| vault.open(&webhook_record(&c.id), sealed))
            .transpose()
            .map_err(unreadable)?;
        self.adapters
            .build(OpenedConnection {
                id: c.id.clone(),
                rotated_at: c.rotated_at,
                provider: c.provider.as_str().to_owned(),
                api_base: c.api_base.clone(),
                settings: c.settings.clone(),
                credential,
                webhook_secret,
            })
            .map_err(|e| RefundError::Internal(anyhow::anyhow!("connection {}: {e}", c.id)))
    }

    /// Checks and seals a new connection, and stores it.
    pub async fn create(
        &self,
        store: &Store,
        account: &AccountId,
        new: NewConnection,
        actor: ConnectionActor<'_>,
    ) -> Result<Connection, RefundError> {
        if !self.adapters.supports(new.provider.as_str()) {
            let known: Vec<&str> = crate::providers::registry::REGISTRY
                .iter()
                .map(|s| s.name)
                .collect();
            return Err(RefundError::invalid(
                "provider",
                format!(
                    "{} takes no connections; providers that do: {}",
                    new.provider,
                    known.join(", ")
                ),
            ));
        }
        check_secret("credential", &new.credential)?;
        if let Some(secret) = &new.webhook_secret {
            check_secret("webhook_secret", secret)?;
        }
        check_settings(&new.provider, &new.settings)?;
        let vault = self.vault()?;
        let now = Timestamp::now();
        let id = ConnectionId::generate();
        // Building its adapter checks the settings (e.g. the API base) before anything is stored.
        self.adapters
            .build(OpenedConnection {
                id: id.clone(),
                rotated_at: now,
                provider: new.provider.as_str().to_owned(),
                api_base: new.api_base.clone(),
                settings: new.settings.clone(),
                credential: new.credential.clone(),
                webhook_secret: new.webhook_secret.clone(),
            })
            .map_err(|e| {
                let field = if new.api_base.is_some() {
                    "api_base"
                } else {
                    "settings"
                };
                RefundError::invalid(field, e)
            })?;
        let stored = StoredConnection {
            connection: Connection {
                id: id.clone(),
                account: account.clone(),
                provider: new.provider.clone(),
                api_base: new.api_base,
                settings: new.settings,
                webhooks_enabled: new.webhook_secret.is_some(),
                created_at: now,
                rotated_at: now,
            },
            credential_sealed: vault.seal(id.as_str(), &new.credential),
            webhook_secret_sealed: new
                .webhook_secret
                .as_ref()
                .map(|s| vault.seal(&webhook_record(&id), s)),
            deleted: false,
        };
        match store
            .create_connection(&stored, actor)
            .await
            .map_err(internal)?
        {
            CreateConnectionOutcome::Created => Ok(stored.connection),
            CreateConnectionOutcome::Exists(existing) => {
                self.adapters.forget(&id);
                Err(RefundError::ConnectionExists {
                    account: account.as_str().to_owned(),
                    provider: new.provider,
                    id: existing.as_str().to_owned(),
                })
            }
        }
    }

    pub async fn list(
        &self,
        store: &Store,
        account: Option<&AccountId>,
    ) -> Result<Vec<Connection>, RefundError> {
        Ok(store
            .list_connections(account)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|s| s.connection)
            .collect())
    }

    /// Replaces a connection's credential (and its webhook signing secret, when given). Refunds
    /// already sent keep going through the connection, now with the new credential.
    pub async fn rotate(
        &self,
        store: &Store,
        account: &AccountId,
        id: &ConnectionId,
        credential: Secret,
        webhook_secret: Option<Secret>,
        actor: ConnectionActor<'_>,
    ) -> Result<Connection, RefundError> {
        check_secret("credential", &credential)?;
        if let Some(secret) = &webhook_secret {
            check_secret("webhook_secret", secret)?;
        }
        let vault = self.vault()?;
        // The new secrets must make a working adapter before they replace the old ones.
        let current = store
            .connection_by_id(id)
            .await
            .map_err(internal)?
            .filter(|s| !s.deleted && s.connection.account == *account)
            .ok_or_else(|| RefundError::ConnectionNotFound {
                id: id.as_str().to_owned(),
            })?;
        let webhook_check = match &webhook_secret {
            Some(secret) => Some(secret.clone()),
            None => current
                .webhook_secret_sealed
                .as_deref()
                .map(|sealed| vault.open(&webhook_record(id), sealed))
                .transpose()
                .map_err(|e| RefundError::NotSetUp {
                    reason: "CONNECTION_UNREADABLE",
                    message: format!("connection {id}: {e}"),
                })?,
        };
        self.adapters
            .build(OpenedConnection {
                id: id.clone(),
                rotated_at: Timestamp::now(),
                provider: current.connection.provider.as_str().to_owned(),
                api_base: current.connection.api_base.clone(),
                settings: current.connection.settings.clone(),
                credential: credential.clone(),
                webhook_secret: webhook_check,
            })
            .map_err(|e| RefundError::invalid("credential", e))?;
        self.adapters.forget(id);
        let rotated = store
            .rotate_connection(
                account,
                id,
                vault.seal(id.as_str(), &credential),
                webhook_secret
                    .as_ref()
                    .map(|s| vault.seal(&webhook_record(id), s)),
                Timestamp::now(),
                actor,
            )
            .await
            .map_err(internal)?
            .ok_or_else(|| RefundError::ConnectionNotFound {
                id: id.as_str().to_owned(),
            })?;
        self.adapters.forget(id);
        Ok(rotated.connection)
    }

    pub async fn delete(
        &self,
        store: &Store,
        account: &AccountId,
        id: &ConnectionId,
        actor: ConnectionActor<'_>,
    ) -> Result<(), RefundError> {
        match store
            .delete_connection(account, id, Timestamp::now(), actor)
            .await
            .map_err(internal)?
        {
            DeleteConnectionOutcome::Deleted => {
                self.adapters.forget(id);
                Ok(())
            }
            DeleteConnectionOutcome::NotFound => Err(RefundError::ConnectionNotFound {
                id: id.as_str().to_owned(),
            }),
            DeleteConnectionOutcome::Unsettled(n) => Err(RefundError::NotSetUp {
                reason: "CONNECTION_IN_USE",
                message: format!(
                    "connection {id} has {n} unsettled refund(s); they need its credentials \
                     until they settle"
                ),
            }),
        }
    }

    /// Reseals every connection under the current master key (after `--secrets-key-file` was
    /// changed and the old key given as `--previous-secrets-key-file`). Returns how many were
    /// resealed; those already under the current key are left.
    pub async fn rekey(&self, store: &Store) -> Result<usize, RefundError> {
        let vault = self.vault()?;
        let mut resealed = 0;
        for stored in store.all_connections().await.map_err(internal)? {
            let id = &stored.connection.id;
            let current = vault.is_current(&stored.credential_sealed)
                && stored
                    .webhook_secret_sealed
                    .as_deref()
                    .is_none_or(|s| vault.is_current(s));
            if current {
                continue;
            }
            let open = |record: &str, sealed: &str| {
                vault
                    .open(record, sealed)
                    .map_err(|e| RefundError::NotSetUp {
                        reason: "CONNECTION_UNREADABLE",
                        message: format!("connection {id}: {e}"),
                    })
            };
            let credential = open(id.as_str(), &stored.credential_sealed)?;
            let webhook = stored
                .webhook_secret_sealed
                .as_deref()
                .map(|s| open(&webhook_record(id), s))
                .transpose()?;
            // A rotation meanwhile sealed it under the current key already, with new values.
            if store
                .reseal_connection(
                    &stored,
                    vault.seal(id.as_str(), &credential),
                    webhook.as_ref().map(|s| vault.seal(&webhook_record(id), s)),
                )
                .await
                .map_err(internal)?
            {
                resealed += 1;
            }
        }
        Ok(resealed)
    }
}

/// The record a connection's webhook secret is sealed for: not the credential's, so that the
/// two sealed values cannot be swapped.
fn webhook_record(id: &ConnectionId) -> String {
    format!("{id}#webhook")
}

/// The provider's own settings: only those it has, those it needs, none empty.
fn check_settings(
    provider: &ProviderName,
    settings: &BTreeMap<String, String>,
) -> Result<(), RefundError> {
    let spec = crate::providers::registry::spec(provider.as_str());
    let known: Vec<&str> = spec.map_or(Vec::new(), |s| s.extra.iter().map(|x| x.word).collect());
    let mut violations = Vec::new();
    for (word, value) in settings {
        let field = format!("settings[{word}]");
        if !known.contains(&word.as_str()) {
            violations.push(crate::domain::FieldViolation::new(
                field,
                if known.is_empty() {
                    format!("{provider} has no settings of its own")
                } else {
                    format!("{provider}'s settings are: {}", known.join(", "))
                },
            ));
        } else if value.trim().is_empty() || value.len() > 255 {
            violations.push(crate::domain::FieldViolation::new(
                field,
                "must be 1 to 255 characters",
            ));
        }
    }
    for required in spec
        .into_iter()
        .flat_map(|s| s.extra)
        .filter(|x| x.required)
    {
        if !settings.contains_key(required.word) {
            violations.push(crate::domain::FieldViolation::new(
                format!("settings[{}]", required.word),
                format!("{provider} needs its {} ({})", required.word, required.help),
            ));
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(RefundError::InvalidArgument(violations))
    }
}

fn check_secret(field: &str, secret: &Secret) -> Result<(), RefundError> {
    let value = secret.expose();
    if value.is_empty() {
        return Err(RefundError::invalid(field, "is empty"));
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(RefundError::invalid(
            field,
            format!("is longer than {MAX_SECRET_LEN} bytes"),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RefundError::invalid(
            field,
            "contains whitespace or control characters",
        ));
    }
    Ok(())
}

impl RefundService {
    pub fn connections(&self) -> &Connections {
        &self.inner.connections
    }

    /// Where a new refund of `account` at `provider` goes: the account's own connection, or
    /// the platform's. Errors when neither may be used.
    pub(super) async fn route_new(
        &self,
        account: &AccountId,
        provider: &ProviderName,
    ) -> Result<(Route, Arc<ControlledProvider>), RefundError> {
        let connections = self.connections();
        if connections.adapters.supports(provider.as_str())
            && let Some(stored) = self
                .store()
                .live_connection(account, provider)
                .await
                .map_err(internal)?
        {
            let adapter = connections.adapter(&stored)?;
            return Ok((Route::Connection(stored.connection.id), adapter.provider));
        }
        let Some(platform) = self.providers().get(provider) else {
            let mut known: Vec<_> = self
                .providers()
                .names()
                .map(|n| n.as_str().to_owned())
                .collect();
            known.sort();
            return Err(RefundError::invalid(
                "provider",
                format!(
                    "unknown provider {:?}; configured: {}{}",
                    provider.as_str(),
                    known.join(", "),
                    if connections.adapters.supports(provider.as_str()) {
                        format!(
                            " (or create a {provider} connection for account {})",
                            account.as_str()
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
        };
        let restricted = connections.adapters.supports(provider.as_str())
            && connections
                .platform_accounts
                .as_ref()
                .is_some_and(|allowed| !allowed.contains(account));
        if restricted {
            return Err(RefundError::NotSetUp {
                reason: "NO_CONNECTION",
                message: format!(
                    "account {} has no {provider} connection, and the platform's is not \
                     open to it; create one (`refund-service connections create`)",
                    account.as_str()
                ),
            });
        }
        Ok((Route::Platform, platform.clone()))
    }

    /// The adapter an existing refund goes through, if this server has it.
    pub(super) async fn adapter_of(
        &self,
        provider: &ProviderName,
        route: &Route,
    ) -> Result<Option<Arc<ControlledProvider>>, RefundError> {
        match route {
            Route::Platform => Ok(self.providers().get(provider).cloned()),
            Route::Connection(id) => {
                let Some(stored) = self.store().connection_by_id(id).await.map_err(internal)?
                else {
                    return Ok(None);
                };
                Ok(Some(self.connections().adapter(&stored)?.provider))
            }
        }
    }

    /// The adapter that reads `provider`'s webhooks for `connection` (or the platform's), with
    /// the secrets they are signed with; `None` when such webhooks are not taken.
    pub async fn webhook_receiver(
        &self,
        provider: &ProviderName,
        connection: Option<&ConnectionId>,
    ) -> Result<Option<(Route, Arc<ControlledProvider>, Vec<crate::secret::Secret>)>, RefundError>
    {
        let Some(id) = connection else {
            let secrets = self.providers().webhook_secrets(provider).to_vec();
            return Ok(self
                .providers()
                .get(provider)
                .filter(|_| !secrets.is_empty())
                .map(|p| (Route::Platform, p.clone(), secrets)));
        };
        let Some(stored) = self.store().connection_by_id(id).await.map_err(internal)? else {
            return Ok(None);
        };
        if stored.deleted || stored.connection.provider != *provider {
            return Ok(None);
        }
        let adapter = self.connections().adapter(&stored)?;
        if adapter.webhook_secrets.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            Route::Connection(id.clone()),
            adapter.provider,
            adapter.webhook_secrets,
        )))
    }

    /// The providers `account` can refund at, each with the connection it would go through
    /// (`None`: the platform's): its own connections in place of the platform's, and the
    /// platform's it may use.
    pub async fn providers_for(
        &self,
        account: &AccountId,
    ) -> Result<Vec<(ProviderSummary, Option<ConnectionId>)>, RefundError> {
        let own = self
            .store()
            .list_connections(Some(account))
            .await
            .map_err(internal)?;
        let restricted = self
            .connections()
            .platform_accounts
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(account));
        let mut all: Vec<(ProviderSummary, Option<ConnectionId>)> = self
            .providers()
            .summaries()
            .into_iter()
            .filter(|p| !own.iter().any(|c| c.connection.provider == p.name))
            .filter(|p| !(restricted && self.connections().adapters.supports(p.name.as_str())))
            .map(|p| (p, None))
            .collect();
        for stored in own {
            let adapter = self.connections().adapter(&stored)?;
            let c = stored.connection;
            all.push((
                ProviderSummary {
                    is_default: false,
                    capabilities: adapter.provider.capabilities(),
                    health: adapter.provider.health(),
                    webhooks_enabled: !adapter.webhook_secrets.is_empty(),
                    name: c.provider,
                },
                Some(c.id),
            ));
        }
        all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(all)
    }

    pub async fn create_connection(
        &self,
        account: &AccountId,
        new: NewConnection,
        actor: ConnectionActor<'_>,
    ) -> Result<Connection, RefundError> {
        self.connections()
            .create(self.store(), account, new, actor)
            .await
    }

    pub async fn list_connections(
        &self,
        account: &AccountId,
    ) -> Result<Vec<Connection>, RefundError> {
        self.connections().list(self.store(), Some(account)).await
    }

    pub async fn rotate_connection(
        &self,
        account: &AccountId,
        id: &ConnectionId,
        credential: Secret,
        webhook_secret: Option<Secret>,
        actor: ConnectionActor<'_>,
    ) -> Result<Connection, RefundError> {
        self.connections()
            .rotate(self.store(), account, id, credential, webhook_secret, actor)
            .await
    }

    pub async fn delete_connection(
        &self,
        account: &AccountId,
        id: &ConnectionId,
        actor: ConnectionActor<'_>,
    ) -> Result<(), RefundError> {
        self.connections()
            .delete(self.store(), account, id, actor)
            .await
    }
}
