//! The gRPC API: tonic services, proto <-> domain conversion, and the error-to-Status map.
//!
//! Architecture invariant: this is the only layer that knows tonic and the generated protobuf
//! types. Handlers parse, call one use case, and convert back.

mod auth;
mod bulk;
mod convert;
mod events;
mod refunds;
mod rpc_trace;
mod status;
mod webhook_endpoints;
mod whole_body;

pub use auth::{Auth, AuthLayer};
pub use refunds::RefundsApi;
pub use rpc_trace::RpcTraceLayer;
pub use status::{ERROR_DOMAIN, to_status};

/// Generated protobuf and tonic code for `refunds.v1`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("refunds.v1");

    /// Encoded descriptor set of every file in `proto/`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("refunds_descriptor");
}

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::server::Router;

use crate::config::CorsOrigins;
use crate::metrics::Metrics;
use crate::service::RefundService;

/// Smallest limit on gRPC message size; the limit grows with the configured batch size.
pub const MIN_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest total size of one call's metadata (HTTP/2 header list).
pub const MAX_METADATA_BYTES: u32 = 16 * 1024;

/// Room per bulk job in a BulkRefund request: a job with a few metadata entries is well under
/// 1 KiB; one that needs more can go in a smaller batch.
pub const BYTES_PER_BULK_JOB: usize = 2 * 1024;

/// The gRPC message size limit that lets a BulkRefund request carry `max_jobs` jobs.
pub fn max_message_bytes(max_jobs: u32) -> usize {
    (max_jobs as usize)
        .saturating_mul(BYTES_PER_BULK_JOB)
        .max(MIN_MESSAGE_BYTES)
}

/// What grpc.health.v1 reports for this process: SERVING for the whole server (`""`) and for
/// `refunds.v1.RefundService`, until [`Health::draining`].
#[derive(Clone)]
pub struct Health(tonic_health::server::HealthReporter);

impl Health {
    /// Reports NOT_SERVING for both names, so that readiness probes take this process out of
    /// rotation while it still answers the calls that reach it.
    pub async fn draining(&self) {
        self.0
            .set_not_serving::<pb::refund_service_server::RefundServiceServer<RefundsApi>>()
            .await;
        self.0
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// The gRPC server: every service this process answers (refunds, health, reflection), over
/// native gRPC and gRPC-Web.
pub type GrpcRouter = Router<
    tower_layer::Stack<
        RpcTraceLayer,
        tower_layer::Stack<
            tonic_web::GrpcWebLayer,
            tower_layer::Stack<
                whole_body::WholeBodyLayer,
                tower_layer::Stack<tower_http::cors::CorsLayer, tower_layer::Identity>,
            >,
        >,
    >,
>;

/// What the API serves: the gRPC port's router, RefundService over gRPC-Web for the HTTP port
/// (same origin as the console), and the switch of the health service.
pub struct Api {
    pub grpc: GrpcRouter,
    /// `/refunds.v1.RefundService/*` for gRPC-Web over HTTP/1.1, with the same layers.
    pub web: axum::Router,
    pub health: Health,
}

/// The tonic router with every service this process answers, RefundService again for the HTTP
/// port, and the switch of its health service.
pub async fn router(
    service: RefundService,
    metrics: Arc<Metrics>,
    per_key_rate: u32,
    tls: Option<&crate::config::TlsSettings>,
    cors_origins: &CorsOrigins,
) -> anyhow::Result<Api> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::refund_service_server::RefundServiceServer<RefundsApi>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    // grpcurl builds of the 1.8 line speak only reflection v1alpha; newer clients use v1.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So that clients such as grpcurl can decode google.rpc error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max_message = max_message_bytes(service.config().bulk.max_jobs);
    let refunds =
        pb::refund_service_server::RefundServiceServer::new(RefundsApi::new(service.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
    // Health and reflection answer without a key; every RefundService call is authorized here.
    let refunds = tower_layer::Layer::layer(
        &AuthLayer::new(Auth::new(service.clone(), per_key_rate))?,
        refunds,
    );
    let cors = cors(cors_origins);

    // The HTTP port (HTTP/1.1) answers RefundService's gRPC-Web calls too, so that a page it
    // serves (the console) calls its own origin; the layers are the gRPC port's.
    let web_service = {
        use tower_layer::Layer as _;
        cors.layer(
            whole_body::WholeBodyLayer::new(max_message).layer(
                tonic_web::GrpcWebLayer::new().layer(
                    RpcTraceLayer::new(metrics.clone())
                        .layer(tonic::service::Routes::new(refunds.clone())),
                ),
            ),
        )
    };
    let web = axum::Router::new().route_service(
        &format!(
            "/{}/{{*method}}",
            <pb::refund_service_server::RefundServiceServer<RefundsApi> as tonic::server::NamedService>::NAME
        ),
        web_service,
    );

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let mut config = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, tls.key_pem.expose()),
        );
        if let Some(ca) = &tls.client_ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder
            .tls_config(config)
            .map_err(|e| anyhow::anyhow!("bad TLS configuration: {e}"))?;
    }
    let grpc = builder
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Metadata (headers) of one call: API key, idempotency key, trace context and request id
        // fit many times over; more is refused before any handler runs.
        .http2_max_header_list_size(MAX_METADATA_BYTES)
        // gRPC-Web: browsers' calls arrive over HTTP/1.1 (or HTTP/2), translated to gRPC before
        // the trace layer and the services see them; native gRPC passes through untouched.
        .accept_http1(true)
        .layer(cors)
        // Over HTTP/1.1, read the call's one message before anything may refuse it.
        .layer(whole_body::WholeBodyLayer::new(max_message))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(RpcTraceLayer::new(metrics))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(refunds);
    Ok(Api {
        grpc,
        web,
        health: Health(health_reporter),
    })
}

/// Request headers a browser's gRPC-Web call may send (connect-web and grpc-web send the first
/// five; the rest are this API's own metadata).
const CORS_ALLOWED_HEADERS: [&str; 9] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "idempotency-key",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// Response headers a page may read: a trailers-only answer (every error before the first
/// message) carries the status in headers, which a browser hides unless they are exposed.
const CORS_EXPOSED_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

/// CORS for gRPC-Web calls from pages of other origins. With no origin allowed, preflights
/// are answered without an allowed origin, so browsers refuse the call.
fn cors(origins: &CorsOrigins) -> tower_http::cors::CorsLayer {
    use tonic::codegen::http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow_origin = match origins {
        CorsOrigins::None => AllowOrigin::list([]),
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => {
            AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        }
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST])
        .allow_headers(CORS_ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(CORS_EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(600))
}
