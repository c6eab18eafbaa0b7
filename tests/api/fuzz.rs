//! Random requests and random webhook bodies against a real server: whatever a client or a
//! stranger sends, the answer is a precise client error, never INTERNAL or a 500, and the
//! service stays up.

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config, TestRunner};
use refund_service::api::pb;
use tonic::Code;

use crate::helpers::*;

/// Draws `n` values from `strategy` (no shrinking: each is sent to the server as it is).
fn samples<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::new(Config::default());
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

fn requests(payment: String) -> impl Strategy<Value = pb::CreateRefundRequest> {
    let payment_id = prop_oneof![Just(payment), ".{0,300}"];
    (
        payment_id,
        prop_oneof![Just(String::new()), Just("sandbox".to_owned()), ".{0,70}"],
        proptest::option::of(prop_oneof![any::<i64>(), 1i64..20_000]),
        prop_oneof![Just("USD".to_owned()), ".{0,5}"],
        any::<i32>(),
        proptest::collection::btree_map(".{0,50}", ".{0,520}", 0..55),
        ".{0,260}",
    )
        .prop_map(
            |(payment_id, provider, amount, currency, reason, metadata, idempotency_key)| {
                pb::CreateRefundRequest {
                    payment_id,
                    provider,
                    amount,
                    currency,
                    reason,
                    reason_detail: String::new(),
                    metadata: metadata.into_iter().collect(),
                    idempotency_key,
                }
            },
        )
}

#[tokio::test]
async fn random_requests_get_client_errors_never_internal() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(10_000, "USD").await;
    for request in samples(requests(payment.clone()), 60) {
        match app.client.create_refund(request.clone()).await {
            Ok(refund) => assert!(refund.into_inner().amount > 0),
            Err(status) => assert!(
                matches!(
                    status.code(),
                    Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition
                ),
                "{:?} for {request:?}: {status:?}",
                status.code()
            ),
        }
    }
    for id in samples(".{0,100}", 30) {
        let err = app
            .client
            .get_refund(pb::GetRefundRequest { id: id.clone() })
            .await
            .expect_err("no such refund");
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::NotFound),
            "{id:?}: {err:?}"
        );
    }
    for (page_size, page_token) in samples((any::<i32>(), ".{0,80}"), 30) {
        if let Err(err) = app
            .client
            .list_refunds(pb::ListRefundsRequest {
                page_size,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
        {
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{page_size} {page_token:?}"
            );
        }
    }
    // Still serving, and the money rule held whatever was accepted.
    let refunded: i64 = app.ledger(&payment).await.iter().map(|r| r.amount).sum();
    assert!(refunded <= 10_000, "{refunded}");
}

#[tokio::test]
async fn random_webhook_deliveries_are_refused_without_a_500() {
    let (app, _db) = spawn_app().await;
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..400),
        prop_oneof![Just(None), ".{0,120}".prop_map(Some)],
        prop_oneof![Just("sandbox"), Just("stripe"), Just("mercadopago")],
    );
    let http = reqwest::Client::new();
    for (body, signature, provider) in samples(strategy, 60) {
        let mut request = http
            .post(format!("http://{}/webhooks/{provider}", app.http_addr))
            .body(body);
        if let Some(sig) = signature.filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b))) {
            request = request
                .header("sandbox-signature", sig.clone())
                .header("stripe-signature", sig.clone())
                .header("x-signature", sig);
        }
        let status = request.send().await.expect("answers").status().as_u16();
        assert!(
            matches!(status, 400 | 404),
            "{provider}: a forged delivery got {status}"
        );
    }
}

#[tokio::test]
async fn oversized_metadata_and_webhook_bodies_are_refused() {
    let (app, _db) = spawn_app().await;
    let mut request = tonic::Request::new(pb::ListRefundsRequest::default());
    request
        .metadata_mut()
        .insert("x-padding", "x".repeat(20 * 1024).parse().expect("ascii"));
    let err = app
        .client
        .clone()
        .list_refunds(request)
        .await
        .expect_err("metadata over the limit");
    assert_ne!(err.code(), Code::Ok);
    assert_ne!(err.code(), Code::Internal, "{err:?}");
    let status = reqwest::Client::new()
        .post(format!("http://{}/webhooks/sandbox", app.http_addr))
        .body(vec![b'{'; 300 * 1024])
        .send()
        .await
        .expect("answers")
        .status()
        .as_u16();
    assert_eq!(status, 413);
    // Still serving.
    app.client
        .clone()
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("a normal call");
}

#[tokio::test]
async fn a_deadline_shorter_than_the_provider_is_honoured_and_loses_nothing() {
    let (mut app, _db) = spawn_app().await;
    app.sandbox
        .set_faults(&refund_service::sandbox::FaultConfig {
            latency_ms: 1_500,
            ..Default::default()
        })
        .await
        .expect("faults");
    let payment = app.seed(3_000, "USD").await;
    let mut request = tonic::Request::new(pb::CreateRefundRequest {
        idempotency_key: "deadline-1".into(),
        ..refund_request(&payment, Some(3_000), "USD")
    });
    // The deadline as the server sees it (a client-side timeout would fire first otherwise).
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().expect("ascii"));
    let started = std::time::Instant::now();
    let err = app
        .client
        .create_refund(request)
        .await
        .expect_err("past the deadline");
    // tonic reports an expired grpc-timeout as CANCELLED ("Timeout expired").
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "the call ended at its deadline, not after the provider's 1.5 s"
    );
    app.sandbox
        .set_faults(&refund_service::sandbox::FaultConfig::default())
        .await
        .expect("faults");
    // Retrying with the same key answers with the one refund, settled or settling, never two.
    let again = eventually(Duration::from_secs(20), "the refund to be settled", || {
        let mut client = app.client.clone();
        let payment = payment.clone();
        async move {
            let r = client
                .create_refund(pb::CreateRefundRequest {
                    idempotency_key: "deadline-1".into(),
                    ..refund_request(&payment, Some(3_000), "USD")
                })
                .await
                .ok()?
                .into_inner();
            (status_of(&r) == pb::RefundStatus::Succeeded).then_some(r)
        }
    })
    .await;
    assert_eq!(again.amount, 3_000);
    assert!(app.ledger(&payment).await.len() <= 1);
}
