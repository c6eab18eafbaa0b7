//! The HTTP port: liveness and readiness probes, Prometheus metrics, provider webhooks under
//! `/webhooks/{provider}`, the embedded sandbox's API under `/sandbox`, and the operator
//! console under `/console` (whose gRPC-Web calls the API layer answers on this port too).

pub mod console;
pub mod tls;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::sandbox::{self, Sandbox};
use crate::service::RefundService;

/// `draining` turns `/readyz` to 503 while the process drains (see `app::Application::run_until`).
pub fn router(
    service: RefundService,
    sandbox: Option<Arc<Sandbox>>,
    metrics: Arc<Metrics>,
    webhook_tolerance: Duration,
    draining: Arc<AtomicBool>,
) -> Router {
    let mut router = Router::new()
        .route(
            "/metrics",
            get(move |State(service): State<RefundService>| async move {
                // Queued jobs live in the database, shared by replicas: read at scrape time.
                match service.store().queued_bulk_jobs().await {
                    Ok(n) => metrics.set_bulk_jobs_queued(n),
                    Err(e) => {
                        tracing::warn!(error = ?anyhow::Error::new(e), "cannot count queued bulk jobs")
                    }
                }
                prometheus_text(&metrics)
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move |state| ready(state, draining.load(Ordering::Relaxed))),
        )
        .with_state(service.clone())
        .nest("/webhooks", webhooks::router(service, webhook_tolerance));
    if let Some(sandbox) = sandbox {
        router = router.nest("/sandbox", sandbox::http::router(sandbox));
    }
    router
}

/// Ready when the database answers, until the process starts draining.
async fn ready(State(service): State<RefundService>, draining: bool) -> (StatusCode, &'static str) {
    if draining {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    match service.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = ?anyhow::Error::new(e), "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition format.
fn prometheus_text(metrics: &Metrics) -> impl axum::response::IntoResponse + use<> {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
