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

/// Whether a non-2xx answer leaves open that the provider acted on the request, or is worth
/// asking again: a 5xx (it may have failed after processing), 408 (it stopped waiting, maybe
/// half-way) or 409 (a request with the same idempotency key is still being processed, e.g. our
/// own attempt that timed out). On a creation such an answer is ambiguous, never a refusal: the
/// refund is looked up before anything else. Other 4xx answers are the provider saying no.
pub(super) fn is_inconclusive(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 409)
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
