//! What the adapters that speak HTTP (Stripe, Mercado Pago) share: the client, the API base,
//! the traced exchange (send, `Retry-After`, body), and how a failed request is classified.
//! Adapters keep only their own mapping: their error bodies and their JSON.

use std::time::Duration;

use super::ProviderError;

/// How a call is used: a 5xx, 408 or 409, or an undecodable answer, on a creation may hide a
/// processed refund; on a read nothing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Read,
    Write,
}

/// A non-2xx answer, for the adapter to map with its own error format.
pub(super) struct ErrorAnswer<'a> {
    pub status: reqwest::StatusCode,
    /// The provider's `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
    pub body: &'a [u8],
}

/// Sends `request` (traced: [`send_traced`]) and reads the whole answer: the body of a 2xx, or
/// `on_error`'s reading of anything else. A transport failure is classified here, once.
pub(super) async fn exchange(
    request: reqwest::RequestBuilder,
    on_error: impl FnOnce(ErrorAnswer<'_>) -> ProviderError,
) -> Result<Vec<u8>, ProviderError> {
    let response = send_traced(request).await.map_err(from_reqwest)?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await.map_err(from_reqwest)?;
    if status.is_success() {
        Ok(body.to_vec())
    } else {
        Err(on_error(ErrorAnswer {
            status,
            retry_after,
            body: &body,
        }))
    }
}

/// `Retry-After` in seconds, as Stripe and Mercado Pago send it.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Sends a provider's HTTP request inside the current provider-call span (see
/// [`traffic::ControlledProvider`]): records `http.request.method`, `url.template` and, once
/// answered, `http.response.status_code` on it, and sends its W3C trace context (`traceparent`)
/// on to the provider.
pub(crate) async fn send_traced(
    request: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let span = tracing::Span::current();
    let mut request = request;
    for (name, value) in crate::telemetry::trace_headers() {
        request = request.header(name, value);
    }
    let (client, built) = request.build_split();
    let built = built?;
    span.record("http.request.method", built.method().as_str());
    span.record("url.template", url_template(built.url().path()));
    let response = client.execute(built).await;
    if let Ok(r) = &response {
        span.record("http.response.status_code", i64::from(r.status().as_u16()));
    }
    response
}

/// A URL path with its ids replaced by `{id}`, so that traces show the route, not payment or
/// refund ids: a segment that follows a collection (`payments`, `charges`, `payment_intents`,
/// `refunds`) is an id.
pub fn url_template(path: &str) -> String {
    const COLLECTIONS: [&str; 4] = ["payments", "charges", "payment_intents", "refunds"];
    let mut previous = "";
    path.split('/')
        .map(|segment| {
            let out = if COLLECTIONS.contains(&previous) && !segment.is_empty() {
                "{id}"
            } else {
                segment
            };
            previous = segment;
            out
        })
        .collect::<Vec<_>>()
        .join("/")
}

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
        .map_err(|e| {
            format!(
                "could not build the HTTP client: {}",
                crate::error_chain::causes(&e)
            )
        })
}

/// What a transport failure says about the request: timed out (maybe processed), never sent
/// (nothing happened), or lost on the way back (maybe processed).
pub(super) fn from_reqwest(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_connect() || e.is_builder() {
        // Nothing was sent: the connection was never made, or the request never built.
        ProviderError::Unavailable(crate::error_chain::causes(&e))
    } else {
        ProviderError::Ambiguous(crate::error_chain::causes(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_templates_hide_ids() {
        for (path, template) in [
            ("/v1/refunds", "/v1/refunds"),
            ("/v1/refunds/re_123", "/v1/refunds/{id}"),
            ("/v1/charges/ch_1", "/v1/charges/{id}"),
            ("/v1/payment_intents/pi_9", "/v1/payment_intents/{id}"),
            (
                "/v1/payments/18552260055/refunds",
                "/v1/payments/{id}/refunds",
            ),
            ("/v1/payments/1/refunds/2", "/v1/payments/{id}/refunds/{id}"),
            ("/sandbox/payments/ch_sbx_x", "/sandbox/payments/{id}"),
            ("/sandbox/refunds", "/sandbox/refunds"),
        ] {
            assert_eq!(url_template(path), template, "{path}");
        }
    }
}
