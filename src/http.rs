//! The HTTP port: liveness and readiness probes, and the embedded sandbox's API under `/sandbox`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::sandbox::{self, Sandbox};
use crate::service::RefundService;

pub fn router(service: RefundService, sandbox: Option<Arc<Sandbox>>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(service);
    if let Some(sandbox) = sandbox {
        router = router.nest("/sandbox", sandbox::http::router(sandbox));
    }
    router
}

/// Ready when the database answers.
async fn ready(State(service): State<RefundService>) -> (StatusCode, &'static str) {
    match service.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = ?anyhow::Error::new(e), "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}
