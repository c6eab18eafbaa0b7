//! Adapters for accounts' own connections: built from the registry like the platform's, each in
//! traffic control of its own (its own rate limit and circuit breaker: one account's outage or
//! 429s do not hold back another's), and kept while the connection's credentials stay the same.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use super::registry::{self, ProviderSettings};
use super::traffic::{BudgetShare, ControlledProvider, TrafficConfig};
use crate::domain::{ConnectionId, Timestamp};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Where a provider is and at what pace it is called, for connections that do not say.
#[derive(Debug, Clone)]
pub struct ProviderDefaults {
    /// A [`registry::ProviderSpec::name`].
    pub name: String,
    pub api_base: String,
    pub traffic: TrafficConfig,
}

impl ProviderDefaults {
    /// The registry's defaults for `spec`.
    pub fn of(spec: &registry::ProviderSpec) -> Self {
        Self {
            name: spec.name.to_owned(),
            api_base: spec.default_api_base.to_owned(),
            traffic: TrafficConfig {
                rate_per_sec: spec.default_rate_limit,
                ..TrafficConfig::default()
            },
        }
    }
}

/// One connection's credentials in the clear, as the service opened them, to build its adapter.
pub struct OpenedConnection {
    pub id: ConnectionId,
    /// When its credentials last changed: a change builds a new adapter.
    pub rotated_at: Timestamp,
    pub provider: String,
    pub api_base: Option<String>,
    /// The provider's own settings (`ProviderSpec::extra`) by word.
    pub settings: BTreeMap<String, String>,
    pub credential: Secret,
    pub webhook_secret: Option<Secret>,
}

/// A connection's adapter, with the secret its webhooks are signed with.
#[derive(Clone)]
pub struct ConnectionAdapter {
    pub provider: Arc<ControlledProvider>,
    /// Empty when the connection takes no webhooks.
    pub webhook_secrets: Vec<Secret>,
}

/// The adapters of the connections used so far, by id.
pub struct ConnectionAdapters {
    defaults: HashMap<String, ProviderDefaults>,
    metrics: Arc<Metrics>,
    /// This replica's share of each connection's rate budget.
    share: Arc<BudgetShare>,
    built: Mutex<HashMap<ConnectionId, (Timestamp, ConnectionAdapter)>>,
}

impl ConnectionAdapters {
    /// `defaults` override the registry's per provider (the platform's `--{provider}-api-base`
    /// and rate limit).
    pub fn new(
        defaults: Vec<ProviderDefaults>,
        metrics: Arc<Metrics>,
        share: Arc<BudgetShare>,
    ) -> Self {
        let mut by_name: HashMap<String, ProviderDefaults> = registry::REGISTRY
            .iter()
            .map(|spec| (spec.name.to_owned(), ProviderDefaults::of(spec)))
            .collect();
        by_name.extend(defaults.into_iter().map(|d| (d.name.clone(), d)));
        Self {
            defaults: by_name,
            metrics,
            share,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// The longest operation any connection's traffic settings allow: the provider budget must
    /// cover it.
    pub fn longest_budget(&self) -> std::time::Duration {
        self.defaults
            .values()
            .map(|d| d.traffic.budget())
            .max()
            .unwrap_or_default()
    }

    /// Whether `provider` can have connections (the registry's providers; not the sandbox).
    pub fn supports(&self, provider: &str) -> bool {
        self.defaults.contains_key(provider)
    }

    /// The adapter of `id` if it is built for the credentials of `rotated_at`.
    pub fn cached(&self, id: &ConnectionId, rotated_at: Timestamp) -> Option<ConnectionAdapter> {
        self.lock()
            .get(id)
            .filter(|(at, _)| *at == rotated_at)
            .map(|(_, adapter)| adapter.clone())
    }

    /// Builds (and keeps) the adapter of an opened connection.
    pub fn build(&self, c: OpenedConnection) -> Result<ConnectionAdapter, String> {
        let spec = registry::spec(&c.provider)
            .ok_or_else(|| format!("no provider named {:?} in this build", c.provider))?;
        let defaults = self
            .defaults
            .get(spec.name)
            .cloned()
            .unwrap_or_else(|| ProviderDefaults::of(spec));
        let settings = ProviderSettings {
            name: spec.name.to_owned(),
            api_base: c.api_base.unwrap_or(defaults.api_base),
            credential: c.credential,
            traffic: defaults.traffic.clone(),
            webhook_secrets: c.webhook_secret.into_iter().collect(),
            extra: c.settings,
        };
        let client = (spec.build)(&settings)?;
        let adapter = ConnectionAdapter {
            provider: Arc::new(
                ControlledProvider::new(spec.name, client, settings.traffic)
                    .with_metrics(self.metrics.clone())
                    .with_share(self.share.clone()),
            ),
            webhook_secrets: settings.webhook_secrets,
        };
        self.lock().insert(c.id, (c.rotated_at, adapter.clone()));
        Ok(adapter)
    }

    /// Forgets a deleted or rotated connection's adapter.
    pub fn forget(&self, id: &ConnectionId) {
        self.lock().remove(id);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, (Timestamp, ConnectionAdapter)>> {
        // The map holds no invariant a panicking holder could break.
        self.built.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
