//! Observability: spans exported over OTLP to a real receiver.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use refund_service::telemetry::{self, LogFormat, TelemetryConfig};
use serde_json::Value;

use crate::helpers::{eventually, refund_request, scrape_metrics, spawn_app, telemetry_lock};

/// `scripts/otlp_receiver.py` on a free port, writing spans as JSON lines to a file.
struct Receiver {
    child: Child,
    /// OTLP/gRPC.
    port: u16,
    /// OTLP/HTTP (`POST /v1/traces`).
    http_port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".tools/venv/bin/python");
        let has_deps = |python: &Path| {
            Command::new(python)
                .args(["-c", "import grpc, opentelemetry.proto"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !has_deps(&python) {
            let status = Command::new(root.join("scripts/install-tools.sh"))
                .arg("otlp")
                .status()
                .expect("run scripts/install-tools.sh otlp");
            assert!(status.success(), "scripts/install-tools.sh otlp failed");
        }
        let free_port = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        };
        let (port, http_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("spans.jsonl");
        let child = Command::new(&python)
            .arg(root.join("scripts/otlp_receiver.py"))
            .args(["--grpc", &format!("127.0.0.1:{port}")])
            .args(["--http", &format!("127.0.0.1:{http_port}"), "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the OTLP receiver");
        Self {
            child,
            port,
            http_port,
            out,
            _dir: dir,
        }
    }

    async fn wait_until_listening(&self) {
        for port in [self.port, self.http_port] {
            let addr = format!("127.0.0.1:{port}");
            eventually(
                Duration::from_secs(20),
                "the OTLP receiver to listen",
                || {
                    let addr = addr.clone();
                    async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
                },
            )
            .await;
        }
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refund_exports_a_server_span_continuing_the_callers_trace() {
    let _exporter = telemetry_lock().await;
    let receiver = Receiver::start();
    receiver.wait_until_listening().await;
    let telemetry = telemetry::init(TelemetryConfig {
        otlp_endpoint: Some(format!("http://127.0.0.1:{}", receiver.port)),
        test_writer: true,
        ..TelemetryConfig::logs_only(LogFormat::Pretty)
    })
    .expect("telemetry");
    let (app, _db) = spawn_app().await;
    let payment = app.seed(10_000, "USD").await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(refund_request(&payment, Some(2_500), "USD"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .expect("metadata"),
    );
    app.client
        .clone()
        .create_refund(request)
        .await
        .expect("create refund");
    app.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("flush");

    let spans = eventually(Duration::from_secs(10), "the spans to arrive", || {
        let spans = receiver.spans();
        async move {
            let server = spans.iter().find(|s| {
                s["name"] == "refunds.v1.RefundService/CreateRefund" && s["trace_id"] == trace_id
            })?;
            let _client = spans
                .iter()
                .find(|s| s["trace_id"] == trace_id && s["kind"] == "SPAN_KIND_CLIENT")?;
            Some((server.clone(), spans.clone()))
        }
    })
    .await;
    let (server, all) = spans;
    assert_eq!(server["kind"], "SPAN_KIND_SERVER");
    assert_eq!(server["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(server["attributes"]["rpc.system"], "grpc");
    assert_eq!(
        server["attributes"]["rpc.service"],
        "refunds.v1.RefundService"
    );
    assert_eq!(server["attributes"]["rpc.method"], "CreateRefund");
    assert_eq!(server["attributes"]["rpc.grpc.status_code"], 0);
    let create = all
        .iter()
        .find(|s| {
            s["trace_id"] == trace_id
                && s["kind"] == "SPAN_KIND_CLIENT"
                && s["attributes"]["operation"] == "create_refund"
        })
        .expect("a client span for the provider's create_refund");
    assert_eq!(create["attributes"]["provider"], "sandbox");
    assert_eq!(create["attributes"]["attempt"], 1);
    assert!(
        create["attributes"]["refund_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("rf_")),
        "refund id on the provider span: {create:#}"
    );
    // The provider call happened inside the request: its span is in the server span's subtree.
    let mut parent = create["parent_span_id"].clone();
    let mut found = false;
    while let Some(p) = all.iter().find(|s| s["span_id"] == parent) {
        if p["span_id"] == server["span_id"] {
            found = true;
            break;
        }
        parent = p["parent_span_id"].clone();
    }
    assert!(
        found,
        "provider span is not under the server span: {all:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_also_exported_over_otlp_http_protobuf() {
    let _exporter = telemetry_lock().await;
    let receiver = Receiver::start();
    receiver.wait_until_listening().await;
    let telemetry = telemetry::init(TelemetryConfig {
        otlp_endpoint: Some(format!("http://127.0.0.1:{}/v1/traces", receiver.http_port)),
        otlp_protocol: telemetry::OtlpProtocol::HttpProtobuf,
        test_writer: true,
        ..TelemetryConfig::logs_only(LogFormat::Pretty)
    })
    .expect("telemetry");
    let (app, _db) = spawn_app().await;
    let payment = app.seed(10_000, "USD").await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut request = tonic::Request::new(refund_request(&payment, Some(100), "USD"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01")
            .parse()
            .expect("metadata"),
    );
    app.client
        .clone()
        .create_refund(request)
        .await
        .expect("create refund");
    app.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("flush");
    eventually(
        Duration::from_secs(10),
        "the spans to arrive over HTTP",
        || {
            let spans = receiver.spans();
            async move {
                spans
                    .iter()
                    .any(|s| {
                        s["name"] == "refunds.v1.RefundService/CreateRefund"
                            && s["trace_id"] == trace_id
                            && s["kind"] == "SPAN_KIND_SERVER"
                    })
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn metrics_count_grpc_calls() {
    let (app, _db) = spawn_app().await;
    let payment = app.seed(10_000, "USD").await;
    app.client
        .clone()
        .create_refund(refund_request(&payment, Some(1_000), "USD"))
        .await
        .expect("create refund");
    let _ = app
        .client
        .clone()
        .create_refund(refund_request("ch_does_not_exist", Some(1_000), "USD"))
        .await
        .expect_err("unknown payment");

    let body = scrape_metrics(app.http_addr).await;
    assert!(
        body.contains(
            r#"refund_rpc_duration_seconds_count{method="refunds.v1.RefundService/CreateRefund",code="0"} 1"#
        ),
        "{body}"
    );
    // NOT_FOUND is 5.
    assert!(
        body.contains(
            r#"refund_rpc_duration_seconds_count{method="refunds.v1.RefundService/CreateRefund",code="5"} 1"#
        ),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_refunds_money_and_provider_calls() {
    let (mut app, _db) = spawn_app().await;
    let payments = app.seed_many(3, 1_000).await;
    app.client
        .create_refund(refund_request(&payments[0], Some(250), "USD"))
        .await
        .expect("refund");
    let mut stream = app
        .client
        .bulk_refund(refund_service::api::pb::BulkRefundRequest {
            jobs: payments[1..]
                .iter()
                .map(|p| refund_request(p, None, "USD"))
                .collect(),
            ..Default::default()
        })
        .await
        .expect("bulk")
        .into_inner();
    while let Some(event) = tokio_stream::StreamExt::next(&mut stream).await {
        event.expect("event");
    }

    let body = scrape_metrics(app.http_addr).await;
    for expected in [
        r#"refund_refunds_total{provider="sandbox",status="pending"} 3"#,
        r#"refund_refunds_total{provider="sandbox",status="succeeded"} 3"#,
        // 250 + 1,000 + 1,000.
        r#"refund_refunded_minor_units_total{currency="USD"} 2250"#,
        r#"refund_provider_request_duration_seconds_count{provider="sandbox",operation="create_refund",outcome="ok"} 3"#,
        r#"refund_provider_request_duration_seconds_count{provider="sandbox",operation="get_payment",outcome="ok"} 3"#,
        r#"refund_provider_circuit_open{provider="sandbox"} 0"#,
        // Six attempts reached the provider: a pre-flight and a creation per refund.
        r#"refund_provider_traffic_events_total{provider="sandbox",event="call"} 6"#,
        "refund_bulk_jobs_in_flight 0",
        "refund_bulk_jobs_queued 0",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_show_bulk_jobs_queued_while_a_batch_runs() {
    let (mut app, _db) = spawn_app().await;
    app.sandbox
        .set_faults(&refund_service::sandbox::FaultConfig {
            latency_ms: 300,
            ..Default::default()
        })
        .await
        .expect("faults");
    let payments = app.seed_many(6, 100).await;
    let mut stream = app
        .client
        .bulk_refund(refund_service::api::pb::BulkRefundRequest {
            jobs: payments
                .iter()
                .map(|p| refund_request(p, None, "USD"))
                .collect(),
            max_concurrency: 1,
            ..Default::default()
        })
        .await
        .expect("bulk")
        .into_inner();
    // The first event: the batch is stored; at most one job has been handed out.
    tokio_stream::StreamExt::next(&mut stream)
        .await
        .expect("accepted")
        .expect("ok");
    let body = scrape_metrics(app.http_addr).await;
    let queued: i64 = body
        .lines()
        .find_map(|l| l.strip_prefix("refund_bulk_jobs_queued "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refund_bulk_jobs_queued in:\n{body}"));
    assert!((4..=6).contains(&queued), "queued {queued}");
    while let Some(event) = tokio_stream::StreamExt::next(&mut stream).await {
        event.expect("event");
    }
    assert!(
        scrape_metrics(app.http_addr)
            .await
            .contains("refund_bulk_jobs_queued 0")
    );
}
