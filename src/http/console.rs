//! The operator console: a single-page app under `/console`, built from `console/` into
//! `console/dist/` (committed) and compiled into the binary, so that a service needs nothing else
//! to serve it. Its calls are gRPC-Web to its own origin (the API answers them on this port).
//!
//! `/console/app.js` and `/console/app.css` are the bundle; every other path under `/console`
//! is the page itself, so that the app's own URLs (`/console/batches/bk_…`) survive a reload.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page may load only its own script and style, call only its own origin, and not be
/// framed; it never needs more.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'self'; form-action 'self'; \
     frame-ancestors 'none'";

/// A file of the bundle: its name in `console/dist/`, content type, and the copy built in.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    embedded: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    embedded: include_bytes!("../../console/dist/index.html"),
};

const ASSETS: [Asset; 2] = [
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        embedded: include_bytes!("../../console/dist/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        embedded: include_bytes!("../../console/dist/app.css"),
    },
];

/// Where the files come from: the built-in copy, or a directory (`--console-dir`) read on
/// each request, for working on the console without rebuilding the service.
#[derive(Clone)]
struct Source(Option<Arc<PathBuf>>);

pub fn router(dir: Option<PathBuf>) -> Router {
    Router::new()
        .route("/console", get(page))
        .route("/console/", get(page))
        .route("/console/{*path}", get(path))
        .with_state(Source(dir.map(Arc::new)))
}

async fn page(State(source): State<Source>) -> Response {
    serve(&source, &INDEX).await
}

async fn path(State(source): State<Source>, Path(path): Path<String>) -> Response {
    let asset = ASSETS.iter().find(|a| a.name == path).unwrap_or(&INDEX);
    serve(&source, asset).await
}

async fn serve(source: &Source, asset: &Asset) -> Response {
    let body = match &source.0 {
        None => asset.embedded.to_vec(),
        Some(dir) => match tokio::fs::read(dir.join(asset.name)).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(file = %dir.join(asset.name).display(), error = %e, "cannot read a console file");
                return (
                    StatusCode::NOT_FOUND,
                    format!("console file {} is missing from --console-dir", asset.name),
                )
                    .into_response();
            }
        },
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Unversioned names: revalidate, so that an upgraded service's console is used at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
