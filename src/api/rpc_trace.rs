//! A tower layer giving every gRPC call a server span: `rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`, continuing the caller's trace from the W3C
//! `traceparent` / `tracestate` metadata. The span stays open until the call's status is known:
//! for a streaming call, until its trailers are sent, so a stream's span covers the whole stream
//! and carries the status it ended with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Response};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::metrics::Metrics;

/// The request id metadata, read from calls and returned on responses.
pub const REQUEST_ID: &str = "x-request-id";

/// Wraps the tonic server's services; see the module docs. Also records call durations.
#[derive(Debug, Clone)]
pub struct RpcTraceLayer {
    metrics: Arc<Metrics>,
}

impl RpcTraceLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower_layer::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower_service::Service<Request<B>> for RpcTrace<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body,
{
    type Response = Response<TracedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let name = request.uri().path().trim_start_matches('/').to_owned();
        let (service, method) = split_path(request.uri().path());
        let span = tracing::info_span!(
            "grpc",
            otel.name = format!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            request_id = tracing::field::Empty,
            // Recorded once the caller's API key checked out.
            api_key_id = tracing::field::Empty,
            account_id = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(parent);
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            span.record("trace_id", span_context.trace_id().to_string());
            span.record("span_id", span_context.span_id().to_string());
        }
        // The caller's x-request-id when it is a sensible one, else one of ours; it goes into the
        // audit trail, the span and the response.
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()));
        span.record("request_id", request_id.as_str());
        let response_id = HeaderValue::from_str(&request_id).ok();
        let future = {
            let _entered = span.enter();
            crate::service::context::with_request_id(request_id, self.inner.call(request))
        };
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let outcome = Outcome {
                    span: tracing::Span::current(),
                    started,
                    name,
                    metrics,
                    recorded: false,
                };
                match future.await {
                    Ok(mut response) => {
                        if let Some(id) = response_id {
                            response.headers_mut().insert(REQUEST_ID, id);
                        }
                        // An error, or an answer with no message, travels as a trailers-only
                        // response (the status in the headers); otherwise the status comes in
                        // the trailers at the end of the body, however long a stream runs.
                        let mut outcome = outcome;
                        if let Some(code) = grpc_status(response.headers()) {
                            outcome.record(code);
                        }
                        Ok(response.map(|inner| TracedBody { inner, outcome }))
                    }
                    Err(e) => {
                        let mut outcome = outcome;
                        outcome.record(2);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// A call's span and timing, kept until its status is known: for a stream, when its trailers
/// are sent. Holding the span keeps it open (and its duration running) until then.
struct Outcome {
    span: tracing::Span,
    started: Instant,
    name: String,
    metrics: Arc<Metrics>,
    recorded: bool,
}

impl Outcome {
    fn record(&mut self, code: i32) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        // Entered for the recording: OpenTelemetry takes a span's end time from its last exit,
        // so a stream's span ends here, when its status is sent, not when its headers were.
        let _entered = self.span.enter();
        self.span.record("rpc.grpc.status_code", code);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .observe_rpc(&self.name, code, self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // The body ended without trailers: the client went away (CANCELLED) before the end.
        self.record(1);
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the `grpc-status` trailer.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        outcome: Outcome,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.outcome.record(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.outcome.record(2),
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `/refunds.v1.RefundService/CreateRefund` → (`refunds.v1.RefundService`, `CreateRefund`).
pub fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// The `grpc-status` header, when the response carries one.
pub fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The codes OpenTelemetry's semantic conventions count as server errors.
fn is_server_error(code: i32) -> bool {
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/refunds.v1.RefundService/CreateRefund"),
            ("refunds.v1.RefundService", "CreateRefund")
        );
        assert_eq!(split_path("/odd"), ("odd", ""));
    }

    #[test]
    fn reads_grpc_status() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", "9".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(9));
        assert!(is_server_error(13) && !is_server_error(9) && !is_server_error(0));
    }
}
