//! What the adapters that speak HTTP (Stripe, Mercado Pago) share: the client, the API base,
//! and how a failed request is classified.

use std::time::Duration;

use super::ProviderError;

/// `api_base` without a trailing slash, if it is an http(s) URL.
pub(super) fn api_base(api_base: &str, provider: &str) -> Result<String, String> {
    let base = api_base.trim_end_matches('/').to_owned();
    if base.starts_with("http://") || base.starts_with("https://") {
        Ok(base)
    } else {
        Err(format!(
            "invalid {provider} API base '{api_base}': expected an http(s) URL"
        ))
    }
}

/// A client whose every call is bounded by `timeout`.
pub(super) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    // reqwest is built without a default TLS crypto provider; installing fails harmlessly when
    // another part of the process already did it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| format!("could not build the HTTP client: {}", chain(&e)))
}

/// What a transport failure says about the request: timed out (maybe processed), never sent
/// (nothing happened), or lost on the way back (maybe processed).
pub(super) fn from_reqwest(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_connect() || e.is_builder() {
        // Nothing was sent: the connection was never made, or the request never built.
        ProviderError::Unavailable(chain(&e))
    } else {
        ProviderError::Ambiguous(chain(&e))
    }
}

/// An error and its sources on one line; reqwest's own message alone rarely says what went wrong.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
