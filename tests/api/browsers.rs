//! What browsers get: gRPC-Web on both ports (raw HTTP/1.1 requests, framed as the gRPC-Web
//! protocol says), CORS by allowed origin, the console's page, the batch list a console shows,
//! and the keep-alive on an idle batch stream.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use refund_service::api::pb;
use refund_service::config::CorsOrigins;
use refund_service::sandbox::FaultConfig;
use tokio_stream::StreamExt as _;

use crate::helpers::*;

/// A gRPC-Web answer: its HTTP headers, its messages, and its trailers (from the trailer frame,
/// or from the headers for a trailers-only answer).
struct WebAnswer {
    headers: reqwest::header::HeaderMap,
    messages: Vec<Vec<u8>>,
    trailers: HashMap<String, String>,
}

impl WebAnswer {
    fn status(&self) -> &str {
        self.trailers.get("grpc-status").map_or("", String::as_str)
    }
}

/// Calls `method` of RefundService at `base` (`http://host:port`) the way a browser's gRPC-Web
/// client does: POST, `application/grpc-web+proto`, one length-prefixed message.
async fn grpc_web(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    message: &impl prost::Message,
    key: Option<&str>,
    origin: Option<&str>,
) -> WebAnswer {
    let body = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(&body);
    let mut request = http
        .post(format!("{base}/refunds.v1.RefundService/{method}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(framed);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.expect("gRPC-Web call");
    assert_eq!(response.status(), 200, "gRPC-Web answers HTTP 200");
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let mut messages = Vec::new();
    let mut trailers = HashMap::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "a frame header");
        let flag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = &rest[5..5 + len];
        if flag & 0x80 != 0 {
            for line in std::str::from_utf8(payload)
                .expect("ascii trailers")
                .split("\r\n")
            {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
        } else {
            messages.push(payload.to_vec());
        }
        rest = &rest[5 + len..];
    }
    if trailers.is_empty() {
        // Trailers-only: the status came in the headers.
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            if let Some(v) = headers.get(name) {
                trailers.insert(name.to_owned(), v.to_str().expect("ascii").to_owned());
            }
        }
    }
    WebAnswer {
        headers,
        messages,
        trailers,
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_browser_call_over_grpc_web_gets_its_error_details_on_either_port() {
    let (app, _db) = spawn_app().await;
    let http = http_client();
    let bad = pb::CreateRefundRequest {
        payment_id: "pay 1".into(),
        amount: Some(-5),
        currency: "ZZZ".into(),
        ..Default::default()
    };
    for base in [
        format!("http://{}", app.http_addr),
        format!("http://{}", app.grpc_addr),
    ] {
        let answer = grpc_web(&http, &base, "CreateRefund", &bad, Some(ADMIN_KEY), None).await;
        assert_eq!(answer.status(), "3", "INVALID_ARGUMENT at {base}");
        assert!(answer.messages.is_empty());
        let details = answer
            .trailers
            .get("grpc-status-details-bin")
            .expect("details");
        let status = tonic_types::pb::Status::decode(
            &base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(details.trim_end_matches('='))
                .expect("base64")[..],
        )
        .expect("google.rpc.Status");
        let bad_request = status
            .details
            .iter()
            .find(|d| d.type_url.ends_with("google.rpc.BadRequest"))
            .map(|d| tonic_types::pb::BadRequest::decode(&d.value[..]).expect("BadRequest"))
            .expect("a BadRequest detail");
        let mut fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["amount", "currency", "payment_id"], "at {base}");
        assert!(
            answer.headers.contains_key("x-request-id"),
            "the request id comes back"
        );

        let unauthenticated = grpc_web(
            &http,
            &base,
            "GetRefund",
            &pb::GetRefundRequest::default(),
            None,
            None,
        )
        .await;
        assert_eq!(unauthenticated.status(), "16", "UNAUTHENTICATED at {base}");
    }
}

#[tokio::test]
async fn a_batch_streams_over_grpc_web_to_its_summary() {
    let (app, _db) = spawn_app().await;
    let payments = app.seed_many(5, 1_000).await;
    let http = http_client();
    let request = pb::BulkRefundRequest {
        jobs: payments
            .iter()
            .map(|p| refund_request(p, Some(400), "USD"))
            .chain([refund_request("pay_missing", Some(1), "USD")])
            .collect(),
        ..Default::default()
    };
    let answer = grpc_web(
        &http,
        &format!("http://{}", app.http_addr),
        "BulkRefund",
        &request,
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(answer.status(), "0", "{:?}", answer.trailers);
    let events: Vec<pb::BulkRefundEvent> = answer
        .messages
        .iter()
        .map(|m| pb::BulkRefundEvent::decode(&m[..]).expect("event"))
        .collect();
    use pb::bulk_refund_event::Event;
    assert!(matches!(events[0].event, Some(Event::Accepted(_))));
    let results = events
        .iter()
        .filter(|e| matches!(e.event, Some(Event::Result(_))))
        .count();
    assert_eq!(results, 6, "one result per job");
    let Some(Event::Summary(summary)) = &events.last().expect("events").event else {
        panic!("the stream ends with the summary: {events:?}");
    };
    assert_eq!((summary.succeeded, summary.failed), (5, 1));
}

#[tokio::test]
async fn cors_lets_allowed_origins_read_answers_and_no_one_else() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |s| {
        s.browsers.cors_allowed_origins =
            CorsOrigins::List(vec!["https://ops.example.com".to_owned()]);
    })
    .await;
    let http = http_client();
    let base = format!("http://{}", app.grpc_addr);
    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{base}/refunds.v1.RefundService/ListRefunds"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web,x-user-agent,idempotency-key",
        )
        .send()
    };

    let allowed = preflight("https://ops.example.com")
        .await
        .expect("preflight");
    assert!(allowed.status().is_success());
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_ascii_lowercase())
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://ops.example.com")
    );
    let allowed_headers =
        header(&allowed, "access-control-allow-headers").expect("allowed headers");
    for name in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "idempotency-key",
        "grpc-timeout",
    ] {
        assert!(
            allowed_headers.contains(name),
            "{name} in {allowed_headers}"
        );
    }

    let refused = preflight("https://evil.example").await.expect("preflight");
    assert_eq!(
        header(&refused, "access-control-allow-origin"),
        None,
        "a browser refuses the call"
    );

    // The call itself: an error a page of the allowed origin can read.
    let answer = grpc_web(
        &http,
        &base,
        "GetRefund",
        &pb::GetRefundRequest {
            id: "rf_00000000000000000000000000000000".into(),
        },
        Some(ADMIN_KEY),
        Some("https://ops.example.com"),
    )
    .await;
    assert_eq!(answer.status(), "5", "NOT_FOUND");
    let exposed = answer
        .headers
        .get("access-control-expose-headers")
        .expect("exposed headers")
        .to_str()
        .expect("ascii")
        .to_owned();
    for name in [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-request-id",
    ] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    assert_eq!(
        answer
            .headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://ops.example.com")
    );

    // Without --cors-allowed-origins, no other origin is allowed.
    let (plain, _db) = spawn_app().await;
    let refused = http
        .request(
            reqwest::Method::OPTIONS,
            format!(
                "http://{}/refunds.v1.RefundService/ListRefunds",
                plain.grpc_addr
            ),
        )
        .header("origin", "https://ops.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn the_console_page_is_served_for_its_own_urls_with_a_strict_policy() {
    let (app, _db) = spawn_app().await;
    let http = http_client();
    for path in ["/console", "/console/", "/console/batches/bk_0123"] {
        let page = http
            .get(format!("http://{}{path}", app.http_addr))
            .send()
            .await
            .expect("page");
        assert_eq!(page.status(), 200, "{path}");
        assert_eq!(
            page.headers()["content-type"],
            "text/html; charset=utf-8",
            "{path}"
        );
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .expect("ascii");
        assert!(csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"));
        let body = page.text().await.expect("body");
        assert!(
            body.as_bytes() == console_file("index.html"),
            "{path} is the built-in index.html"
        );
    }
    for (file, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let asset = http
            .get(format!("http://{}/console/{file}", app.http_addr))
            .send()
            .await
            .expect("asset");
        assert!(
            asset.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with(kind)
        );
        assert!(
            asset.bytes().await.expect("body")[..] == console_file(file)[..],
            "{file} is the built-in copy"
        );
    }
}

fn console_file(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/console/dist/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("dist")
}

#[tokio::test]
async fn batches_are_listed_newest_first_per_account_with_pages_and_a_state_filter() {
    let (mut app, _db) = spawn_app().await;
    let payments = app.seed_many(3, 1_000).await;
    let mut ids = Vec::new();
    for p in &payments {
        let mut stream = app
            .client
            .bulk_refund(pb::BulkRefundRequest {
                jobs: vec![refund_request(p, Some(100), "USD")],
                ..Default::default()
            })
            .await
            .expect("batch")
            .into_inner();
        let mut bulk_id = String::new();
        while let Some(event) = stream.next().await {
            match event.expect("event").event {
                Some(pb::bulk_refund_event::Event::Accepted(a)) => bulk_id = a.bulk_id,
                Some(pb::bulk_refund_event::Event::Summary(_)) => break,
                _ => {}
            }
        }
        ids.push(bulk_id);
    }
    ids.reverse(); // newest first

    let first = app
        .client
        .list_bulk_refunds(pb::ListBulkRefundsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let second = app
        .client
        .list_bulk_refunds(pb::ListBulkRefundsRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let listed: Vec<_> = first
        .batches
        .iter()
        .chain(&second.batches)
        .map(|b| b.id.clone())
        .collect();
    assert_eq!(listed, ids);
    assert!(second.next_page_token.is_empty());
    assert_eq!(first.batches[0].succeeded, 1, "with their counts");

    let running = app
        .client
        .list_bulk_refunds(pb::ListBulkRefundsRequest {
            state: pb::BulkRefundState::Running.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(running.batches.is_empty(), "all three are completed");

    let mut other = client_of(&app, "acct_other", "refunds:read").await;
    let theirs = other
        .list_bulk_refunds(pb::ListBulkRefundsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        theirs.batches.is_empty(),
        "accounts see only their own batches"
    );

    let bad = app
        .client
        .list_bulk_refunds(pb::ListBulkRefundsRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("a token we never issued");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["page_token"]);
    app.begin_stop();
}

#[tokio::test]
async fn an_idle_batch_stream_sends_progress_that_repeats_the_last_sequence() {
    // Each provider call takes 1.5 s and the batch runs one job at a time: its stream idles
    // between results for much longer than the keep-alive.
    let (sandbox_url, _sandbox) = spawn_sandbox(FaultConfig {
        latency_ms: 1_500,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.refunds.bulk.stream_keepalive = Duration::from_millis(200);
    })
    .await;
    let payments = app.seed_many(2, 1_000).await;
    let mut stream = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: payments
                .iter()
                .map(|p| refund_request(p, Some(100), "USD"))
                .collect(),
            max_concurrency: 1,
            ..Default::default()
        })
        .await
        .expect("batch")
        .into_inner();
    use pb::bulk_refund_event::Event;
    let mut last_sequence = 0;
    let mut progress = Vec::new();
    let mut results = 0;
    while let Some(event) = stream.next().await {
        let event = event.expect("event");
        match event.event {
            Some(Event::Progress(p)) => {
                assert_eq!(
                    event.sequence, last_sequence,
                    "a keep-alive repeats the latest sequence"
                );
                progress.push(p);
            }
            Some(Event::Summary(_)) => break,
            other => {
                assert_eq!(
                    event.sequence,
                    last_sequence + 1,
                    "stored events stay gapless"
                );
                last_sequence = event.sequence;
                if matches!(other, Some(Event::Result(_))) {
                    results += 1;
                }
            }
        }
    }
    assert_eq!(results, 2);
    assert!(!progress.is_empty(), "the idle stream was kept alive");
    assert!(progress.iter().all(|p| p.total == 2
        && p.state == i32::from(pb::BulkRefundState::Running)
        && p.succeeded + p.pending + p.failed == 2));

    // Re-attaching replays only stored events: no keep-alive is ever stored.
    let replay: Vec<_> = app
        .client
        .watch_bulk_refund(pb::WatchBulkRefundRequest {
            bulk_id: bulk_id_of(&app).await,
            after_sequence: 0,
        })
        .await
        .expect("watch")
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("events");
    assert!(
        replay
            .iter()
            .all(|e| !matches!(e.event, Some(Event::Progress(_))))
    );
    assert_eq!(
        replay.len() as u64,
        last_sequence + 1,
        "every stored event, with the summary"
    );
}

async fn bulk_id_of(app: &TestApp) -> String {
    let mut client = app.client.clone();
    client
        .list_bulk_refunds(pb::ListBulkRefundsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .batches
        .first()
        .expect("one batch")
        .id
        .clone()
}

/// Defect: a call refused before its handler (here, a wrong key) was answered over HTTP/1.1
/// before its body had been read; the server then closed the connection, and a client still
/// sending the body (chunked, as Node's does) got a broken pipe instead of the answer.
#[tokio::test]
async fn a_refused_grpc_web_call_over_http1_keeps_its_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (app, _db) = spawn_app().await;
    for addr in [app.http_addr, app.grpc_addr] {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = "POST /refunds.v1.RefundService/ListBulkRefunds HTTP/1.1\r\nhost: x\r\n\
                    content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n\
                    authorization: Bearer rsk_not_a_key\r\ntransfer-encoding: chunked\r\n\r\n";
        for round in 0..3 {
            conn.write_all(head.as_bytes()).await.expect("head");
            conn.write_all(b"5\r\n\0\0\0\0\0\r\n").await.expect("chunk");
            // The end of the body comes a little later, as it does from a client that writes
            // it separately.
            tokio::task::yield_now().await;
            conn.write_all(b"0\r\n\r\n").await.unwrap_or_else(|e| {
                panic!("round {round} at {addr}: the server closed the connection: {e}")
            });
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "round {round} at {addr}: closed before answering");
                answer.extend_from_slice(&buf[..n]);
            }
            let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            assert!(answer.contains("grpc-status: 16"), "{answer}");
            assert!(!answer.contains("connection: close"), "{answer}");
        }
    }
}
