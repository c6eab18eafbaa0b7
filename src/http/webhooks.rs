//! `POST /webhooks/{provider}`: signed provider notifications.
//!
//! Every delivery is verified against the provider's signing secrets before anything is read
//! from it: a bad or stale signature is 400 and changes nothing. A verified event is recorded and
//! applied (see [`crate::service`]); the provider gets 200 once it is stored, so it stops
//! redelivering, and a 5xx when we could not store it, so it tries again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::domain::ProviderName;
use crate::providers::signature::{self, SignatureError};
use crate::providers::{WebhookEvent, stripe};
use crate::service::RefundService;

/// The header carrying the sandbox's signature (same scheme as Stripe's).
pub const SANDBOX_SIGNATURE_HEADER: &str = "sandbox-signature";
pub const STRIPE_SIGNATURE_HEADER: &str = "stripe-signature";

#[derive(Clone)]
struct WebhookState {
    service: RefundService,
    tolerance: Duration,
}

/// The webhook routes, to be nested under `/webhooks`.
pub fn router(service: RefundService, tolerance: Duration) -> Router {
    Router::new()
        .route("/stripe", post(stripe_webhook))
        .route("/sandbox", post(sandbox_webhook))
        .with_state(WebhookState { service, tolerance })
}

async fn stripe_webhook(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    stripe_scheme(&state, "stripe", STRIPE_SIGNATURE_HEADER, &headers, &body).await
}

async fn sandbox_webhook(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    stripe_scheme(&state, "sandbox", SANDBOX_SIGNATURE_HEADER, &headers, &body).await
}

/// Providers that sign like Stripe and send Stripe-shaped events (Stripe and the sandbox).
async fn stripe_scheme(
    state: &WebhookState,
    provider: &str,
    header: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let provider = ProviderName::from_trusted(provider.to_owned());
    let secrets = state.service.providers().webhook_secrets(&provider);
    let signature = headers.get(header).and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify(signature, body, secrets, unix_now(), state.tolerance) {
        return refused(&provider, &e);
    }
    match stripe::parse_webhook(body) {
        Ok(event) => receive(state, &provider, event).await,
        Err(message) => bad_request(&provider, &message),
    }
}

async fn receive(state: &WebhookState, provider: &ProviderName, event: WebhookEvent) -> Response {
    let (event_id, kind) = (event.id.clone(), event.kind.clone());
    match state.service.receive_webhook(provider, event).await {
        Ok(receipts) => {
            let results: Vec<_> = receipts
                .iter()
                .map(|r| json!({"outcome": r.outcome.as_str(), "duplicate": r.duplicate}))
                .collect();
            tracing::info!(provider = %provider, event_id = %event_id, kind = %kind, ?receipts, "webhook received");
            (
                StatusCode::OK,
                Json(json!({"received": true, "event_id": event_id, "results": results})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(provider = %provider, event_id = %event_id, error = ?anyhow::Error::new(e), "webhook could not be stored");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "the event could not be stored; deliver it again"})),
            )
                .into_response()
        }
    }
}

fn refused(provider: &ProviderName, e: &SignatureError) -> Response {
    let status = match e {
        SignatureError::NoSecret => StatusCode::NOT_FOUND,
        SignatureError::Missing
        | SignatureError::Malformed(_)
        | SignatureError::Stale { .. }
        | SignatureError::NoMatch => StatusCode::BAD_REQUEST,
    };
    let message = match e {
        SignatureError::NoSecret => {
            format!("webhooks from {provider} are not enabled: no signing secret is configured")
        }
        other => other.to_string(),
    };
    tracing::warn!(provider = %provider, reason = %e, "webhook refused");
    (status, Json(json!({"error": message}))).into_response()
}

fn bad_request(provider: &ProviderName, message: &str) -> Response {
    tracing::warn!(provider = %provider, %message, "signed webhook could not be read");
    (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
