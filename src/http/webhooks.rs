//! `POST /webhooks/{provider}` (the platform's connection) and `POST /webhooks/{provider}/
//! {connection id}` (an account's own): signed provider notifications.
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
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::domain::{ConnectionId, ProviderName, Route};
use crate::providers::{Provider as _, WebhookDelivery, WebhookEvent, WebhookRejection};
use crate::service::RefundService;

/// Largest webhook body accepted.
pub const MAX_WEBHOOK_BYTES: usize = 256 * 1024;

#[derive(Clone)]
struct WebhookState {
    service: RefundService,
    tolerance: Duration,
}

/// The webhook route, to be nested under `/webhooks`: `/{provider}` for every configured
/// provider, each verified and read by its own adapter.
pub fn router(service: RefundService, tolerance: Duration) -> Router {
    Router::new()
        .route("/{provider}", post(platform_webhook))
        .route("/{provider}/{connection}", post(connection_webhook))
        // Provider events are a few kilobytes; anything near this is not one.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(WebhookState { service, tolerance })
}

async fn platform_webhook(
    State(state): State<WebhookState>,
    Path(provider): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    webhook(state, &provider, None, query, headers, body).await
}

async fn connection_webhook(
    State(state): State<WebhookState>,
    Path((provider, connection)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(id) = ConnectionId::parse(&connection) else {
        return not_enabled(&format!("{provider}/{connection}"));
    };
    webhook(state, &provider, Some(id), query, headers, body).await
}

async fn webhook(
    state: WebhookState,
    provider: &str,
    connection: Option<ConnectionId>,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = match &connection {
        Some(id) => format!("{provider}/{id}"),
        None => provider.to_owned(),
    };
    let Ok(provider) = ProviderName::parse(provider) else {
        return not_enabled(&target);
    };
    let (route, adapter, secrets) = match state
        .service
        .webhook_receiver(&provider, connection.as_ref())
        .await
    {
        Ok(Some(receiver)) => receiver,
        Ok(None) => return not_enabled(&target),
        Err(e) => {
            tracing::error!(webhook = %target, error = ?anyhow::Error::new(e), "webhook receiver unavailable");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "webhooks to this connection cannot be verified now; deliver it again"})),
            )
                .into_response();
        }
    };
    let delivery = WebhookDelivery {
        headers: &headers,
        query: &query,
        body: &body,
        secrets: &secrets,
        now_unix: unix_now(),
        tolerance: state.tolerance,
    };
    match adapter.read_webhook(&delivery) {
        Ok(event) => receive(&state, &provider, &route, event, adapter.webhook_ack()).await,
        Err(WebhookRejection::NotEnabled) => not_enabled(&target),
        Err(WebhookRejection::Signature(reason)) => {
            tracing::warn!(provider = %provider, %reason, "webhook refused");
            (StatusCode::BAD_REQUEST, Json(json!({"error": reason}))).into_response()
        }
        Err(WebhookRejection::Unreadable(message)) => bad_request(&provider, &message),
    }
}

/// 404: an unknown provider, or one whose webhooks have no signing secret.
fn not_enabled(provider: &str) -> Response {
    tracing::warn!(provider = %provider, "webhook refused: not enabled");
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!(
            "webhooks from {provider} are not enabled: no signing secret is configured"
        )})),
    )
        .into_response()
}

/// Stores and applies `event`; answers 200 with our JSON receipt, or with `ack` as text when the
/// provider expects its own acknowledgement.
async fn receive(
    state: &WebhookState,
    provider: &ProviderName,
    route: &Route,
    event: WebhookEvent,
    ack: Option<&'static str>,
) -> Response {
    let (event_id, kind) = (event.id.clone(), event.kind.clone());
    match state.service.receive_webhook(provider, route, event).await {
        Ok(receipts) => {
            let results: Vec<_> = receipts
                .iter()
                .map(|r| json!({"outcome": r.outcome.as_str(), "duplicate": r.duplicate}))
                .collect();
            tracing::info!(provider = %provider, event_id = %event_id, kind = %kind, ?receipts, "webhook received");
            if let Some(ack) = ack {
                return (
                    StatusCode::OK,
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; charset=utf-8",
                    )],
                    ack,
                )
                    .into_response();
            }
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
