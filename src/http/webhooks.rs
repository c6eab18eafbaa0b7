//! `POST /webhooks/{provider}`: signed provider notifications.
//!
//! Every delivery is verified against the provider's signing secrets before anything is read
//! from it: a bad or stale signature is 400 and changes nothing. A verified event is recorded and
//! applied (see [`crate::service`]); the provider gets 200 once it is stored, so it stops
//! redelivering, and a 5xx when we could not store it, so it tries again.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::domain::ProviderName;
use crate::providers::signature::{self, SignatureError};
use crate::providers::{EventSubject, WebhookEvent, mercadopago, stripe};
use crate::service::RefundService;

/// The header carrying the sandbox's signature (same scheme as Stripe's).
pub const SANDBOX_SIGNATURE_HEADER: &str = "sandbox-signature";
pub const STRIPE_SIGNATURE_HEADER: &str = "stripe-signature";
/// Largest webhook body accepted.
pub const MAX_WEBHOOK_BYTES: usize = 256 * 1024;

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
        .route("/mercadopago", post(mercadopago_webhook))
        // Provider events are a few kilobytes; anything near this is not one.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
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

/// Mercado Pago signs `id:<data.id>;request-id:<x-request-id>;ts:<ts>;` (data.id from the query
/// string) rather than the body, so the body is read only after the signature checks out.
async fn mercadopago_webhook(
    State(state): State<WebhookState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider = ProviderName::from_trusted("mercadopago".to_owned());
    let secrets = state.service.providers().webhook_secrets(&provider);
    if secrets.is_empty() {
        return refused(&provider, &SignatureError::NoSecret);
    }
    let Some(signature) = headers.get("x-signature").and_then(|v| v.to_str().ok()) else {
        return refused(&provider, &SignatureError::Missing);
    };
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    let data_id = query.get("data.id").map(String::as_str);
    let secrets: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
    if let Err(e) = mercadopago::verify_signature(
        signature,
        request_id,
        data_id,
        &secrets,
        unix_now(),
        state.tolerance,
    ) {
        tracing::warn!(provider = %provider, reason = %e, "webhook refused");
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response();
    }
    match mercadopago::parse_webhook(&body, request_id) {
        // The signature covers data.id from the query string, not the body: a body naming another
        // payment than the signed id is refused.
        Ok(event) if !names_signed_payment(&event, data_id) => bad_request(
            &provider,
            "the notification's data.id differs from the signed one in the query string",
        ),
        Ok(event) => receive(&state, &provider, event).await,
        Err(message) => bad_request(&provider, &message),
    }
}

fn names_signed_payment(event: &WebhookEvent, signed: Option<&str>) -> bool {
    match &event.subject {
        EventSubject::Payment(p) => signed.is_some_and(|id| id.eq_ignore_ascii_case(p.as_str())),
        EventSubject::Refunds(_) | EventSubject::Ignored => true,
    }
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
        Err(crate::domain::RefundError::InvalidArgument(violations)) => {
            let message = violations
                .iter()
                .map(|v| v.description.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            bad_request(provider, &message)
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
