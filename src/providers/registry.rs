//! The providers this build can be configured with, each described once. Their flags and
//! environment variables (`cli`) and how they are built (`app`) are derived from the
//! description, so adding a provider is its adapter and one line in [`REGISTRY`].
//!
//! The built-in sandbox is not here: it is always there, needs no credentials, and is the
//! default.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::traffic::TrafficConfig;
use super::{Provider, adyen, mercadopago, stripe};
use crate::secret::Secret;

/// What a provider brings to the configuration.
#[derive(Debug)]
pub struct ProviderSpec {
    /// Its name in requests, routes (`/webhooks/{name}`) and flags: `stripe`.
    pub name: &'static str,
    /// Its name for people: `Stripe`.
    pub title: &'static str,
    /// The prefix of its environment variables: `STRIPE` gives `STRIPE_API_BASE`.
    pub env_prefix: &'static str,
    /// Its credential as a flag word (`secret-key` gives `--stripe-secret-key`) and in prose.
    pub credential: &'static str,
    pub default_api_base: &'static str,
    /// Our own limit on calls per second to it, for reads and for writes separately; below the
    /// provider's own.
    pub default_rate_limit: u32,
    /// How its webhooks are signed, for `--help`.
    pub webhook_signing: &'static str,
    /// Settings of its own beyond the common ones (Adyen's merchant account): each one a flag
    /// `--<name>-<word>` and an environment variable `<PREFIX>_<WORD>`.
    pub extra: &'static [ExtraSetting],
    /// Builds the adapter from its settings; the error names what is wrong.
    pub build: fn(&ProviderSettings) -> Result<Arc<dyn Provider>, String>,
}

/// A provider's own setting, as text.
#[derive(Debug)]
pub struct ExtraSetting {
    /// Its flag word: `merchant-account` gives `--adyen-merchant-account` and
    /// `ADYEN_MERCHANT_ACCOUNT`.
    pub word: &'static str,
    /// For `--help`.
    pub help: &'static str,
    /// Whether the provider cannot be configured without it.
    pub required: bool,
}

/// Every provider that can be configured besides the sandbox. One line each.
pub const REGISTRY: &[ProviderSpec] = &[stripe::SPEC, mercadopago::SPEC, adyen::SPEC];

/// The description of `name`, if this build has it.
pub fn spec(name: &str) -> Option<&'static ProviderSpec> {
    REGISTRY.iter().find(|s| s.name == name)
}

/// One configured provider: which, where, with what credential, at what pace, and the secrets
/// that sign its webhooks.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// A [`ProviderSpec::name`].
    pub name: String,
    /// e.g. `https://api.stripe.com` (no version path).
    pub api_base: String,
    pub credential: Secret,
    pub traffic: TrafficConfig,
    /// The current and, while rotating, the previous signing secret; empty refuses webhooks.
    pub webhook_secrets: Vec<Secret>,
    /// The values of its [`ProviderSpec::extra`] settings that were given, by word.
    pub extra: BTreeMap<String, String>,
}

impl ProviderSettings {
    /// The value of the extra setting `word`, if given.
    pub fn extra(&self, word: &str) -> Option<&str> {
        self.extra.get(word).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_variables_are_unique() {
        for (i, a) in REGISTRY.iter().enumerate() {
            for b in &REGISTRY[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.env_prefix, b.env_prefix);
            }
            assert_ne!(a.name, "sandbox", "the sandbox is built in");
            assert_eq!(spec(a.name).map(|s| s.title), Some(a.title));
            for (j, x) in a.extra.iter().enumerate() {
                let common = ["api-base", "webhook-secret", "rate-limit", a.credential];
                assert!(!common.contains(&x.word), "{}: {}", a.name, x.word);
                assert!(a.extra[j + 1..].iter().all(|y| y.word != x.word));
            }
        }
    }
}
