//! Spans, looked at in memory (OpenTelemetry's in-memory exporter): names, kinds, parent/child
//! links, attributes, error status, and the trace context arriving and leaving.

use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use refund_service::api::pb;
use refund_service::providers::registry::ProviderSettings;
use refund_service::providers::traffic::TrafficConfig;
use refund_service::secret::Secret;
use refund_service::telemetry::{self, LogFormat, Telemetry, TelemetryConfig};
use serde_json::json;
use tokio_stream::StreamExt as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, TestDb, eventually, spawn_app_with, telemetry_lock};

const PAYMENT: &str = "20359978";

fn in_memory() -> (Telemetry, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let telemetry = telemetry::init_with_exporter(
        TelemetryConfig {
            test_writer: true,
            ..TelemetryConfig::logs_only(LogFormat::Pretty)
        },
        exporter.clone(),
    );
    (telemetry, exporter)
}

/// The finished spans of one trace.
fn trace(exporter: &InMemorySpanExporter, trace_id: &str) -> Vec<SpanData> {
    exporter
        .get_finished_spans()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .collect()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}

fn attr_i64(span: &SpanData, key: &str) -> Option<i64> {
    match attr(span, key)? {
        Value::I64(n) => Some(*n),
        other => other.as_str().parse().ok(),
    }
}

/// Whether `span` is `ancestor` or lies under it.
fn under(spans: &[SpanData], span: &SpanData, ancestor: &SpanData) -> bool {
    let mut current = span;
    loop {
        if current.span_context.span_id() == ancestor.span_context.span_id() {
            return true;
        }
        if current.parent_span_id == SpanId::INVALID {
            return false;
        }
        match spans
            .iter()
            .find(|s| s.span_context.span_id() == current.parent_span_id)
        {
            Some(parent) => current = parent,
            None => return false,
        }
    }
}

async fn mercadopago_app(db: &TestDb, api: &MockServer) -> TestApp {
    let settings = ProviderSettings {
        name: "mercadopago".to_owned(),
        api_base: api.uri(),
        credential: Secret::opaque("APP_USR-test".to_owned()),
        traffic: TrafficConfig {
            call_timeout: Duration::from_secs(5),
            max_attempts: 1,
            ..TrafficConfig::default()
        },
        webhook_secrets: Vec::new(),
        extra: Default::default(),
    };
    spawn_app_with(db, move |s| s.providers.push(settings)).await
}

fn with_traceparent<T>(message: T, trace_id: &str, parent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent}-01")
            .parse()
            .expect("metadata"),
    );
    request
}

fn mp_refund_request(amount: i64) -> pb::CreateRefundRequest {
    pb::CreateRefundRequest {
        payment_id: PAYMENT.into(),
        provider: "mercadopago".into(),
        amount: Some(amount),
        currency: "BRL".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_span_continues_the_callers_trace_and_holds_the_provider_http_calls() {
    let _exporter = telemetry_lock().await;
    let (telemetry, exporter) = in_memory();
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(
                json!({"id": 20359978, "status": "approved", "currency_id": "BRL",
                   "transaction_amount": 50, "transaction_amount_refunded": 0})
                .to_string(),
                "application/json",
            ),
        )
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
        .respond_with(
            ResponseTemplate::new(201).set_body_raw(
                json!({"id": 777, "payment_id": 20359978, "amount": 12.5, "status": "approved"})
                    .to_string(),
                "application/json",
            ),
        )
        .mount(&api)
        .await;
    let db = TestDb::new().await;
    let app = mercadopago_app(&db, &api).await;

    let trace_id = "5b8efff798038103d269b633813fc60c";
    let caller = "eee19b7ec3c1b174";
    app.client
        .clone()
        .create_refund(with_traceparent(mp_refund_request(1_250), trace_id, caller))
        .await
        .expect("create refund");

    let spans = eventually(Duration::from_secs(5), "the spans", || {
        let spans = trace(&exporter, trace_id);
        async move { (spans.len() >= 3).then_some(spans) }
    })
    .await;
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("a server span");
    assert_eq!(server.name, "refunds.v1.RefundService/CreateRefund");
    assert_eq!(server.parent_span_id.to_string(), caller);
    assert_eq!(attr_str(server, "rpc.system"), "grpc");
    assert_eq!(attr_str(server, "rpc.service"), "refunds.v1.RefundService");
    assert_eq!(attr_str(server, "rpc.method"), "CreateRefund");
    assert_eq!(attr_i64(server, "rpc.grpc.status_code"), Some(0));
    assert_eq!(server.status, Status::Unset);

    let client = |op: &str| {
        spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Client && attr_str(s, "operation") == op)
            .unwrap_or_else(|| panic!("a client span for {op}: {spans:#?}"))
    };
    let preflight = client("get_payment");
    let create = client("create_refund");
    assert_eq!(create.name, "mercadopago create_refund");
    for (span, verb, template, code) in [
        (preflight, "GET", "/v1/payments/{id}", 200),
        (create, "POST", "/v1/payments/{id}/refunds", 201),
    ] {
        assert!(
            under(&spans, span, server),
            "{span:#?} is not under the RPC"
        );
        assert_eq!(attr_str(span, "provider"), "mercadopago");
        assert_eq!(attr_i64(span, "attempt"), Some(1));
        assert_eq!(attr_str(span, "http.request.method"), verb);
        assert_eq!(
            attr_str(span, "url.template"),
            template,
            "no ids in templates"
        );
        assert_eq!(attr_i64(span, "http.response.status_code"), Some(code));
    }
    assert!(attr_str(create, "refund_id").starts_with("rf_"));

    // The trace went on to the provider.
    let received = api.received_requests().await.unwrap_or_default();
    assert_eq!(received.len(), 2);
    for request in &received {
        let traceparent = request
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "traceparent {traceparent:?} on {}",
            request.url
        );
    }
    drop(app);
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_call_marks_its_span_as_an_error() {
    let _exporter = telemetry_lock().await;
    let (telemetry, exporter) = in_memory();
    let api = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}")))
        .respond_with(
            ResponseTemplate::new(503).set_body_raw(
                json!({"message": "service unavailable", "error": "internal_error", "status": 503})
                    .to_string(),
                "application/json",
            ),
        )
        .mount(&api)
        .await;
    let db = TestDb::new().await;
    let app = mercadopago_app(&db, &api).await;
    let trace_id = "aaaabbbbccccddddeeeeffff00001111";
    let err = app
        .client
        .clone()
        .create_refund(with_traceparent(
            mp_refund_request(100),
            trace_id,
            "1111222233334444",
        ))
        .await
        .expect_err("the provider is down");
    assert_eq!(err.code(), tonic::Code::Unavailable);

    let spans = eventually(Duration::from_secs(5), "the spans", || {
        let spans = trace(&exporter, trace_id);
        async move { (spans.len() >= 2).then_some(spans) }
    })
    .await;
    let failed = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .expect("a client span");
    assert!(
        matches!(failed.status, Status::Error { .. }),
        "{:?}",
        failed.status
    );
    assert_eq!(attr_i64(failed, "http.response.status_code"), Some(503));
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("a server span");
    assert_eq!(attr_i64(server, "rpc.grpc.status_code"), Some(14));
    assert!(matches!(server.status, Status::Error { .. }));
    drop(app);
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_has_a_span_with_one_span_per_job_and_the_provider_calls_beneath() {
    let _exporter = telemetry_lock().await;
    let (telemetry, exporter) = in_memory();
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |_| {}).await;
    let payments = app.seed_many(3, 700).await;
    let jobs = payments
        .iter()
        .map(|p| crate::helpers::refund_request(p, None, "USD"))
        .collect();
    let trace_id = "0123456789abcdef0123456789abcdef";
    let events: Vec<_> = app
        .client
        .bulk_refund(with_traceparent(
            pb::BulkRefundRequest {
                jobs,
                ..Default::default()
            },
            trace_id,
            "0123456789abcdef",
        ))
        .await
        .expect("bulk")
        .into_inner()
        .collect()
        .await;
    let bulk_id = match events
        .first()
        .and_then(|e| e.as_ref().ok())
        .and_then(|e| e.event.clone())
    {
        Some(pb::bulk_refund_event::Event::Accepted(a)) => a.bulk_id,
        other => panic!("accepted first: {other:?}"),
    };

    let spans = eventually(Duration::from_secs(10), "the batch's spans", || {
        let all = exporter.get_finished_spans().unwrap_or_default();
        let bulk_id = bulk_id.clone();
        async move {
            let batch = all
                .iter()
                .find(|s| s.name == "bulk.driver" && attr_str(s, "bulk_id") == bulk_id)?
                .clone();
            let in_batch: Vec<SpanData> = all
                .iter()
                .filter(|s| s.span_context.trace_id() == batch.span_context.trace_id())
                .cloned()
                .collect();
            let provider_creates = in_batch
                .iter()
                .filter(|s| attr_str(s, "operation") == "create_refund")
                .count();
            (provider_creates == 3).then_some((batch, in_batch))
        }
    })
    .await;
    let (batch, in_batch) = spans;
    let jobs: Vec<_> = in_batch.iter().filter(|s| s.name == "bulk.job").collect();
    assert_eq!(jobs.len(), 3, "{in_batch:#?}");
    for job in &jobs {
        assert_eq!(job.parent_span_id, batch.span_context.span_id());
        let events: Vec<&str> = job.events.iter().map(|e| e.name.as_ref()).collect();
        assert!(
            events.contains(&"job dispatched") && events.contains(&"job result"),
            "dispatch and result events on the job span: {events:?}"
        );
    }
    for create in in_batch
        .iter()
        .filter(|s| attr_str(s, "operation") == "create_refund")
    {
        assert_eq!(create.span_kind, SpanKind::Client);
        assert!(
            jobs.iter().any(|job| under(&in_batch, create, job)),
            "provider call not under a job: {create:#?}"
        );
    }

    // The streaming RPC's span lasted until its trailers, and carries their status.
    let rpc = trace(&exporter, trace_id)
        .into_iter()
        .find(|s| s.name == "refunds.v1.RefundService/BulkRefund")
        .expect("the BulkRefund span");
    assert_eq!(attr_i64(&rpc, "rpc.grpc.status_code"), Some(0));
    assert!(
        rpc.end_time >= batch.start_time,
        "the stream span covers the batch: rpc {:?}..{:?}, batch {:?}..{:?}",
        rpc.start_time,
        rpc.end_time,
        batch.start_time,
        batch.end_time
    );
    drop(app);
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("flush");
}
