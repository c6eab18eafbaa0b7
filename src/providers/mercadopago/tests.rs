//! The adapter against recorded answers and a wiremock server shaped by the reference.
use std::collections::BTreeMap;

use proptest::prelude::*;
use wiremock::matchers::{any as any_request, bearer_token, body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::webhook::{SignatureError, verify_signature};
use super::*;
use crate::domain::{Amount, RefundReason};

const TOKEN: &str = "APP_USR-test-token";
const PAYMENT: &str = "18552260055";

/// A refund object as the "Create refund" reference shows it.
fn refund_json(id: u64, amount: &str, status: &str) -> String {
    format!(
        r#"{{"id": {id}, "payment_id": {PAYMENT}, "amount": {amount}, "metadata": {{}},
        "source": {{"id": "1003743392", "name": "Firstname Lastname", "type": "collector"}},
        "date_created": "2021-01-19T09:43:10.000-04:00", "unique_sequence_number": null,
        "refund_mode": "standard", "adjustment_amount": 0, "status": "{status}",
        "reason": null, "labels": [], "amount_refunded_to_payer": {amount},
        "partition_details": []}}"#
    )
}

/// A payment object as the "Get payment" reference shows it (trimmed to what matters).
fn payment_json(
    status: &str,
    amount: &str,
    refunded: &str,
    currency: &str,
    refunds: &str,
) -> String {
    format!(
        r#"{{"id": {PAYMENT}, "status": "{status}", "status_detail": "accredited",
        "transaction_amount": {amount}, "transaction_amount_refunded": {refunded},
        "currency_id": "{currency}", "refunds": [{refunds}],
        "transaction_details": {{"net_received_amount": 95.31, "total_paid_amount": 100.5}}}}"#
    )
}

fn json(status: u16, body: impl Into<String>) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.into(), "application/json")
}

fn provider(base: &str) -> MercadoPagoProvider {
    match MercadoPagoProvider::new(base, Secret::opaque(TOKEN.into()), Duration::from_secs(5)) {
        Ok(p) => p,
        Err(e) => panic!("client: {e}"),
    }
}

fn pref(id: &str) -> PaymentRef {
    match PaymentRef::parse(id) {
        Ok(p) => p,
        Err(e) => panic!("payment ref: {e}"),
    }
}

fn call(minor: i64, currency: &str) -> RefundCall {
    let mut metadata = BTreeMap::new();
    metadata.insert("refund_id".to_owned(), "rf_1".to_owned());
    RefundCall {
        payment: pref(PAYMENT),
        amount: Amount::new(minor).unwrap_or_else(|e| panic!("{e}")),
        currency: Currency::parse(currency).unwrap_or_else(|e| panic!("{e}")),
        reason: RefundReason::RequestedByCustomer,
        metadata,
        idempotency_key: "rf_1".to_owned(),
    }
}

fn brl() -> Currency {
    Currency::parse("BRL").unwrap_or_else(|e| panic!("{e}"))
}

// --- money on the wire ---

proptest! {
    /// What `minor_to_decimal` writes is a JSON number that serde_json keeps verbatim, so the
    /// body carries the exact amount.
    #[test]
    fn written_amounts_stay_verbatim_in_json(minor in 0i64..=i64::MAX, exponent in 0u32..=3) {
        let text = minor_to_decimal(minor, exponent).unwrap_or_default();
        let raw = RawValue::from_string(text.clone());
        prop_assert_eq!(raw.map(|r| r.get().to_owned()).ok(), Some(text));
    }
}

// --- classification ---

fn err(status: u16, body: &str, kind: Call) -> ProviderError {
    error_from_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
        None,
        body.as_bytes(),
        kind,
    )
}

/// A conflict (another request with our `X-Idempotency-Key` still being processed) or a
/// request timeout proves nothing about the creation: it is ambiguous, never a refusal.
#[test]
fn a_conflict_on_a_creation_is_ambiguous_never_a_refusal() {
    let conflict = r#"{"message": "request with the same idempotency key in progress", "error": "conflict", "status": 409, "cause": []}"#;
    assert!(matches!(
        err(409, conflict, Call::Write),
        ProviderError::Ambiguous(_)
    ));
    assert!(matches!(
        err(408, "", Call::Write),
        ProviderError::Ambiguous(_)
    ));
    assert!(matches!(
        err(409, conflict, Call::Read),
        ProviderError::Unavailable(_)
    ));
}

#[test]
fn mercado_pago_errors_are_classified() {
    let gateway = r#"{"message": "Invalid value for gateway_operation", "error": "bad_request",
        "status": 400, "cause": [{"code": 2085, "description": "Invalid value for gateway_operation"}]}"#;
    assert_eq!(
        err(400, gateway, Call::Write),
        ProviderError::Rejected {
            code: "2085".into(),
            message: "Invalid value for gateway_operation".into()
        }
    );
    let string_code = r#"{"message": "m", "error": "bad_request", "status": 400,
        "cause": [{"code": "2063", "description": "The action requested is not valid for the current payment state"}]}"#;
    assert_eq!(
        err(400, string_code, Call::Write),
        ProviderError::Rejected {
            code: "invalid_payment_state".into(),
            message: "The action requested is not valid for the current payment state \
                      (Mercado Pago cause 2063)"
                .into()
        }
    );
    let no_cause = r#"{"message": "amount must be positive", "error": "bad_request", "status": 400, "cause": []}"#;
    assert_eq!(
        err(422, no_cause, Call::Write),
        ProviderError::Rejected {
            code: "bad_request".into(),
            message: "amount must be positive".into()
        }
    );
    let missing_cause =
        r#"{"message": "invalid access token", "error": "unauthorized", "status": 401}"#;
    assert!(matches!(
        err(401, missing_cause, Call::Read),
        ProviderError::Rejected { code, .. } if code == "unauthorized"
    ));
    assert!(matches!(
        err(403, "<html>forbidden</html>", Call::Read),
        ProviderError::Rejected { code, .. } if code == "http_403"
    ));
    // One object instead of a list.
    let object_cause = r#"{"message": "m", "error": "e", "cause": {"code": 3024, "description": "Not valid action - partial refund unsupported for this transaction"}}"#;
    assert!(matches!(
        err(400, object_cause, Call::Write),
        ProviderError::Rejected { code, .. } if code == "partial_refund_unsupported"
    ));
    // The reference lists "payment too old" under 404: a refusal, not a missing payment.
    let too_old = r#"{"message": "Payment too old to be refunded", "error": "not_found", "status": 404, "cause": [{"code": 2024, "description": "Payment too old to be refunded"}]}"#;
    assert!(matches!(
        err(404, too_old, Call::Write),
        ProviderError::Rejected { code, .. } if code == "payment_too_old_to_refund"
    ));
    let too_old = r#"{"error": "bad_request", "cause": [{"code": 15016, "description": "Payment too old to be refunded"}]}"#;
    assert!(matches!(
        err(400, too_old, Call::Write),
        ProviderError::Rejected { code, .. } if code == "payment_too_old_to_refund"
    ));
    let missing = r#"{"message": "Payment not found", "error": "not_found", "status": 404, "cause": [{"code": 2000, "description": "Payment not found"}]}"#;
    assert_eq!(
        err(404, missing, Call::Read),
        ProviderError::NotFound("Payment not found".into())
    );
    assert!(matches!(
        err(400, missing, Call::Write),
        ProviderError::NotFound(_)
    ));
    assert!(matches!(
        err(404, "", Call::Read),
        ProviderError::NotFound(_)
    ));
    assert!(matches!(
        err(500, "{}", Call::Write),
        ProviderError::Ambiguous(_)
    ));
    assert!(matches!(
        err(502, "bad gateway", Call::Read),
        ProviderError::Unavailable(_)
    ));
    assert_eq!(
        error_from_response(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            b"{}",
            Call::Write
        ),
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(3))
        }
    );
}

fn refund_status(status: &str) -> ProviderRefundStatus {
    let r: MpRefund = match serde_json::from_str(&refund_json(1, "10.5", status)) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    match r.into_provider(PAYMENT, brl(), Call::Read) {
        Ok(r) => r.status,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn refund_statuses_map() {
    assert_eq!(refund_status("approved"), ProviderRefundStatus::Succeeded);
    assert_eq!(refund_status("in_process"), ProviderRefundStatus::Pending);
    assert_eq!(refund_status("authorized"), ProviderRefundStatus::Pending);
    assert_eq!(refund_status("pending"), ProviderRefundStatus::Pending);
    assert_eq!(refund_status("cancelled"), ProviderRefundStatus::Canceled);
    assert_eq!(
        refund_status("something_new"),
        ProviderRefundStatus::Pending
    );
    assert_eq!(
        refund_status("rejected"),
        ProviderRefundStatus::Failed {
            code: "rejected".into(),
            reason: "Mercado Pago rejected the refund".into()
        }
    );
}

#[test]
fn refund_ids_are_composite() {
    assert_eq!(
        split_refund_id("18552260055/1009042015").ok(),
        Some(("18552260055", "1009042015"))
    );
    for bad in [
        "",
        "1009042015",
        "/1",
        "1/",
        "a/1",
        "1/b",
        "1/2/3",
        "1 /2",
        "-1/2",
    ] {
        assert!(
            matches!(split_refund_id(bad), Err(ProviderError::NotFound(_))),
            "{bad:?} was accepted"
        );
    }
}

// --- against a mock server ---

#[tokio::test]
async fn get_payment_reads_an_approved_payment() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}")))
        .and(bearer_token(TOKEN))
        .respond_with(json(200, payment_json("approved", "100.5", "0", "BRL", "")))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server.uri()).get_payment(&pref(PAYMENT)).await;
    assert_eq!(
        p,
        Ok(ProviderPayment {
            id: PAYMENT.into(),
            captured: 10_050,
            refunded: 0,
            currency: brl(),
            status: PaymentStatus::Captured,
        })
    );
}

#[tokio::test]
async fn get_payment_reports_refunds_and_statuses() {
    let server = MockServer::start().await;
    let p = provider(&server.uri());
    let cases = [
        ("approved", "25.25", PaymentStatus::Captured, 2_525),
        // Fully refunded: refunded == captured, so the service answers ALREADY_REFUNDED.
        ("refunded", "100.5", PaymentStatus::Captured, 10_050),
        (
            "pending",
            "0",
            PaymentStatus::NotRefundable("pending".into()),
            0,
        ),
        (
            "charged_back",
            "0",
            PaymentStatus::NotRefundable("charged_back".into()),
            0,
        ),
        (
            "in_mediation",
            "0",
            PaymentStatus::NotRefundable("in_mediation".into()),
            0,
        ),
        (
            "authorized",
            "0",
            PaymentStatus::NotRefundable("authorized".into()),
            0,
        ),
        (
            "cancelled",
            "0",
            PaymentStatus::NotRefundable("cancelled".into()),
            0,
        ),
    ];
    for (status, refunded_text, expected, refunded) in cases {
        server.reset().await;
        Mock::given(method("GET"))
            .and(path(format!("/v1/payments/{PAYMENT}")))
            .respond_with(json(
                200,
                payment_json(status, "100.5", refunded_text, "BRL", ""),
            ))
            .mount(&server)
            .await;
        let got = p.get_payment(&pref(PAYMENT)).await;
        assert_eq!(
            got.as_ref().map(|p| (&p.status, p.captured, p.refunded)),
            Ok((&expected, 10_050, refunded)),
            "{status}"
        );
    }
}

#[tokio::test]
async fn get_payment_not_found_and_non_numeric_ids() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payments/123"))
        .respond_with(json(
            404,
            r#"{"message": "Payment not found", "error": "not_found", "status": 404, "cause": [{"code": 2000, "description": "Payment not found", "data": null}]}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server.uri());
    assert_eq!(
        p.get_payment(&pref("123")).await,
        Err(ProviderError::NotFound("Payment not found".into()))
    );
    // Not a Mercado Pago id: answered without a request (the mock expects exactly one).
    assert!(matches!(
        p.get_payment(&pref("ch_123")).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.create_refund(&RefundCall {
            payment: pref("pi_1"),
            ..call(100, "BRL")
        })
        .await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.get_refund("pi_1/re_2").await,
        Err(ProviderError::NotFound(_))
    ));
    let sent = server.received_requests().await.map(|r| r.len());
    assert_eq!(sent, Some(1), "only the numeric id reached Mercado Pago");
}

#[tokio::test]
async fn get_payment_with_an_inexact_amount_is_not_guessed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(json(
            200,
            payment_json("approved", "100.505", "0", "BRL", ""),
        ))
        .mount(&server)
        .await;
    assert!(matches!(
        provider(&server.uri()).get_payment(&pref(PAYMENT)).await,
        Err(ProviderError::Unavailable(_))
    ));
}

#[tokio::test]
async fn create_refund_sends_the_exact_amount_and_the_idempotency_key() {
    let server = MockServer::start().await;
    let p = provider(&server.uri());
    // Partial: 10.50 of 100.50.
    Mock::given(method("POST"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
        .and(bearer_token(TOKEN))
        .and(header("X-Idempotency-Key", "rf_1"))
        .and(header("X-Render-In-Process-Refunds", "true"))
        .and(header("Content-Type", "application/json"))
        .and(body_string(r#"{"amount":10.50}"#))
        .respond_with(json(201, refund_json(1009042015, "10.5", "approved")))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        p.create_refund(&call(1_050, "BRL")).await,
        Ok(ProviderRefund {
            id: format!("{PAYMENT}/1009042015"),
            amount: 1_050,
            status: ProviderRefundStatus::Succeeded,
        })
    );

    // Full: the whole 100.50, still stated explicitly.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
        .and(header("X-Idempotency-Key", "rf_1"))
        .and(body_string(r#"{"amount":100.50}"#))
        .respond_with(json(201, refund_json(1009042016, "100.5", "in_process")))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        p.create_refund(&call(10_050, "BRL")).await,
        Ok(ProviderRefund {
            id: format!("{PAYMENT}/1009042016"),
            amount: 10_050,
            status: ProviderRefundStatus::Pending,
        })
    );
}

#[tokio::test]
async fn clp_amounts_have_no_decimals() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}")))
        .respond_with(json(
            200,
            payment_json("approved", "15000", "2500", "CLP", ""),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds")))
        .and(body_string(r#"{"amount":5000}"#))
        .respond_with(json(201, refund_json(77, "5000", "approved")))
        .expect(1)
        .mount(&server)
        .await;
    let p = provider(&server.uri());
    let payment = p.get_payment(&pref(PAYMENT)).await;
    assert_eq!(
        payment
            .as_ref()
            .map(|p| (p.captured, p.refunded, p.currency.code())),
        Ok((15_000, 2_500, "CLP"))
    );
    let refund = p.create_refund(&call(5_000, "CLP")).await;
    assert_eq!(refund.map(|r| r.amount), Ok(5_000));
}

#[tokio::test]
async fn create_refund_errors() {
    let server = MockServer::start().await;
    let p = provider(&server.uri());
    let refunds = format!("/v1/payments/{PAYMENT}/refunds");

    Mock::given(method("POST"))
        .and(path(refunds.as_str()))
        .respond_with(json(
            400,
            r#"{"message": "Invalid value for gateway_operation", "error": "bad_request", "status": 400, "cause": [{"code": 2085, "description": "Invalid value for gateway_operation"}]}"#,
        ))
        .mount(&server)
        .await;
    assert_eq!(
        p.create_refund(&call(1_050, "BRL")).await,
        Err(ProviderError::Rejected {
            code: "2085".into(),
            message: "Invalid value for gateway_operation".into()
        })
    );

    server.reset().await;
    Mock::given(method("POST"))
        .and(path(refunds.as_str()))
        .respond_with(
            json(
                429,
                r#"{"message": "too many requests", "error": "too_many_requests", "status": 429}"#,
            )
            .insert_header("Retry-After", "7"),
        )
        .mount(&server)
        .await;
    assert_eq!(
        p.create_refund(&call(1_050, "BRL")).await,
        Err(ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        })
    );

    // 5xx: ambiguous on the creation, plain unavailability on a read.
    server.reset().await;
    Mock::given(any_request())
        .respond_with(json(500, r#"{"message": "internal_error", "error": "internal_error", "status": 500, "cause": []}"#))
        .mount(&server)
        .await;
    assert!(matches!(
        p.create_refund(&call(1_050, "BRL")).await,
        Err(ProviderError::Ambiguous(_))
    ));
    assert!(matches!(
        p.get_payment(&pref(PAYMENT)).await,
        Err(ProviderError::Unavailable(_))
    ));

    // A garbled or inexact success on the creation: the refund may exist.
    for garbled in [
        "{\"id\": 1",
        "<html>ok</html>",
        &refund_json(1, "10.505", "approved"),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .and(path(refunds.as_str()))
            .respond_with(json(201, garbled))
            .mount(&server)
            .await;
        assert!(
            matches!(
                p.create_refund(&call(1_050, "BRL")).await,
                Err(ProviderError::Ambiguous(_))
            ),
            "{garbled}"
        );
    }

    // No answer in time.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(
            json(201, refund_json(1, "10.5", "approved")).set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let impatient = match MercadoPagoProvider::new(
        &server.uri(),
        Secret::opaque(TOKEN.into()),
        Duration::from_millis(200),
    ) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        impatient.create_refund(&call(1_050, "BRL")).await,
        Err(ProviderError::Timeout)
    );
}

#[tokio::test]
async fn refused_connection_is_unavailable_and_a_dropped_answer_ambiguous() {
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    drop(listener);
    let p = provider(&format!("http://{addr}"));
    assert!(matches!(
        p.create_refund(&call(1_050, "BRL")).await,
        Err(ProviderError::Unavailable(_))
    ));

    // A server that reads the request and closes without answering.
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        panic!("bind");
    };
    let Ok(addr) = listener.local_addr() else {
        panic!("addr");
    };
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let p = provider(&format!("http://{addr}"));
    assert!(matches!(
        p.create_refund(&call(1_050, "BRL")).await,
        Err(ProviderError::Ambiguous(_))
    ));
}

#[tokio::test]
async fn get_refund_splits_the_composite_id() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds/1009042015")))
        .and(bearer_token(TOKEN))
        .and(header("X-Render-In-Process-Refunds", "true"))
        .respond_with(json(200, refund_json(1009042015, "10.5", "in_process")))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}")))
        .respond_with(json(
            200,
            payment_json("approved", "100.5", "10.5", "BRL", ""),
        ))
        .mount(&server)
        .await;
    let p = provider(&server.uri());
    assert_eq!(
        p.get_refund(&format!("{PAYMENT}/1009042015")).await,
        Ok(ProviderRefund {
            id: format!("{PAYMENT}/1009042015"),
            amount: 1_050,
            status: ProviderRefundStatus::Pending,
        })
    );
    // Malformed ids are answered without a request.
    assert!(matches!(
        p.get_refund("1009042015").await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.get_refund("re_1").await,
        Err(ProviderError::NotFound(_))
    ));
    // A refund of another payment is not taken for this one's.
    assert!(matches!(
        p.get_refund("999/1009042015").await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(
        provider(&server.uri())
            .get_refund(&format!("{PAYMENT}/1009042015"))
            .await
            .is_ok()
    );

    server.reset().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/payments/{PAYMENT}/refunds/5")))
        .respond_with(json(
            404,
            r#"{"message": "Refund not found", "error": "not_found", "status": 404, "cause": [{"code": 2032, "description": "Refund not found"}]}"#,
        ))
        .mount(&server)
        .await;
    assert_eq!(
        p.get_refund(&format!("{PAYMENT}/5")).await,
        Err(ProviderError::NotFound("Refund not found".into()))
    );
}

#[tokio::test]
async fn get_refund_checks_the_refund_belongs_to_the_payment() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/payments/42/refunds/1"))
        .respond_with(json(200, refund_json(1, "10.5", "approved")))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/payments/42"))
        .respond_with(json(
            200,
            payment_json("approved", "100.5", "10.5", "BRL", ""),
        ))
        .mount(&server)
        .await;
    assert!(matches!(
        provider(&server.uri()).get_refund("42/1").await,
        Err(ProviderError::Unavailable(_))
    ));
}

#[tokio::test]
async fn find_refund_answers_none_only_for_a_payment_without_refunds() {
    let server = MockServer::start().await;
    let p = provider(&server.uri());
    let list = format!("/v1/payments/{PAYMENT}/refunds");
    let payment = format!("/v1/payments/{PAYMENT}");

    // No refund anywhere: the creation never arrived.
    Mock::given(method("GET"))
        .and(path(list.as_str()))
        .and(header("X-Render-In-Process-Refunds", "true"))
        .respond_with(json(200, "[]"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(payment.as_str()))
        .respond_with(json(200, payment_json("approved", "100.5", "0", "BRL", "")))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(p.find_refund(&pref(PAYMENT), "rf_1").await, Ok(None));

    // Refunds that cannot be told apart: never guessed, never "none".
    server.reset().await;
    let two = format!(
        "[{}, {}]",
        refund_json(1, "10.5", "approved"),
        refund_json(2, "5", "in_process")
    );
    Mock::given(method("GET"))
        .and(path(list.as_str()))
        .respond_with(json(200, two))
        .mount(&server)
        .await;
    assert!(matches!(
        p.find_refund(&pref(PAYMENT), "rf_1").await,
        Err(ProviderError::Rejected { code, .. }) if code == "refund_not_identifiable"
    ));

    // An empty list that the payment contradicts is not "none" either.
    for (status, refunded, refunds) in [
        ("approved", "10.5", ""),
        ("approved", "0", refund_json(3, "10.5", "approved").as_str()),
        ("refunded", "0", ""),
    ] {
        server.reset().await;
        Mock::given(method("GET"))
            .and(path(list.as_str()))
            .respond_with(json(200, "[]"))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(payment.as_str()))
            .respond_with(json(
                200,
                payment_json(status, "100.5", refunded, "BRL", refunds),
            ))
            .mount(&server)
            .await;
        assert!(
            matches!(
                p.find_refund(&pref(PAYMENT), "rf_1").await,
                Err(ProviderError::Rejected { code, .. }) if code == "refund_not_identifiable"
            ),
            "{status} {refunded} {refunds}"
        );
    }

    // Something that is not a list, or a read that fails, is not "none".
    server.reset().await;
    Mock::given(method("GET"))
        .and(path(list.as_str()))
        .respond_with(json(200, "{}"))
        .mount(&server)
        .await;
    assert!(matches!(
        p.find_refund(&pref(PAYMENT), "rf_1").await,
        Err(ProviderError::Unavailable(_))
    ));
    server.reset().await;
    Mock::given(method("GET"))
        .and(path(list.as_str()))
        .respond_with(json(200, "[]"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(payment.as_str()))
        .respond_with(json(503, "{}"))
        .mount(&server)
        .await;
    assert!(matches!(
        p.find_refund(&pref(PAYMENT), "rf_1").await,
        Err(ProviderError::Unavailable(_))
    ));
    server.reset().await;
    Mock::given(method("GET"))
        .and(path(list.as_str()))
        .respond_with(json(
            404,
            r#"{"message": "Payment not found", "error": "not_found", "status": 404, "cause": [{"code": 2000, "description": "Payment not found"}]}"#,
        ))
        .mount(&server)
        .await;
    assert!(matches!(
        p.find_refund(&pref(PAYMENT), "rf_1").await,
        Err(ProviderError::NotFound(_))
    ));
}

#[test]
fn api_base_must_be_a_url() {
    assert!(
        MercadoPagoProvider::new(
            "api.mercadopago.com",
            Secret::opaque("t".into()),
            Duration::from_secs(1)
        )
        .is_err()
    );
    assert!(
        MercadoPagoProvider::new(
            DEFAULT_API_BASE,
            Secret::opaque("t".into()),
            Duration::from_secs(1)
        )
        .is_ok()
    );
}

// --- webhook signatures ---

const SECRET: &str = "your_secret_key_here";
const REQUEST_ID: &str = "bb56a2f1-6aae-46ac-982e-9dcd3581d08e";
// python3 -c 'import hmac,hashlib;print(hmac.new(b"your_secret_key_here",b"id:123456abc;request-id:bb56a2f1-6aae-46ac-982e-9dcd3581d08e;ts:1704908010;",hashlib.sha256).hexdigest())'
const V1_FULL: &str = "206651f0ca80796b0b91222fd2d1e9015bbd416d3cd706b6e65c3bbea33f955a";
// python3 -c 'import hmac,hashlib;print(hmac.new(b"your_secret_key_here",b"request-id:bb56a2f1-6aae-46ac-982e-9dcd3581d08e;ts:1704908010;",hashlib.sha256).hexdigest())'
const V1_NO_ID: &str = "1e14733af285d181f3a4518f56aeaab5e8057184b4f937cab41d186aaa0f634a";
// python3 -c 'import hmac,hashlib;print(hmac.new(b"your_secret_key_here",b"id:123456abc;request-id:bb56a2f1-6aae-46ac-982e-9dcd3581d08e;ts:1704908010123;",hashlib.sha256).hexdigest())'
const V1_MILLIS: &str = "1c9e28026e56a5e6465565cee9e1b641dcd0125d8e5d6cc4ae6f5f019fc3549b";
const TS: i64 = 1_704_908_010;
const FIVE_MIN: Duration = Duration::from_secs(300);

#[test]
fn a_known_signature_verifies() {
    let header = format!("ts={TS},v1={V1_FULL}");
    // data.id is lower-cased before signing.
    assert_eq!(
        verify_signature(
            &header,
            Some(REQUEST_ID),
            Some("123456ABC"),
            &[SECRET],
            TS + 10,
            FIVE_MIN
        ),
        Ok(())
    );
    // Spaces around parts, and the parts in another order.
    let header = format!(" v1={V1_FULL} , ts={TS} ");
    assert_eq!(
        verify_signature(
            &header,
            Some(REQUEST_ID),
            Some("123456abc"),
            &[SECRET],
            TS,
            FIVE_MIN
        ),
        Ok(())
    );
    // A missing data.id is left out of the manifest.
    let header = format!("ts={TS},v1={V1_NO_ID}");
    assert_eq!(
        verify_signature(&header, Some(REQUEST_ID), None, &[SECRET], TS, FIVE_MIN),
        Ok(())
    );
    assert_eq!(
        verify_signature(&header, Some(REQUEST_ID), Some(""), &[SECRET], TS, FIVE_MIN),
        Ok(())
    );
    // A timestamp in milliseconds, signed as sent.
    let header = format!("ts={}123,v1={V1_MILLIS}", TS);
    assert_eq!(
        verify_signature(
            &header,
            Some(REQUEST_ID),
            Some("123456abc"),
            &[SECRET],
            TS + 1,
            FIVE_MIN
        ),
        Ok(())
    );
}

#[test]
fn rotated_secrets_are_all_tried() {
    let header = format!("ts={TS},v1={V1_FULL}");
    assert_eq!(
        verify_signature(
            &header,
            Some(REQUEST_ID),
            Some("123456abc"),
            &["new-secret", SECRET],
            TS,
            FIVE_MIN
        ),
        Ok(())
    );
    assert_eq!(
        verify_signature(
            &header,
            Some(REQUEST_ID),
            Some("123456abc"),
            &["new-secret"],
            TS,
            FIVE_MIN
        ),
        Err(SignatureError::NoMatchingSignature)
    );
    assert_eq!(
        verify_signature(
            &header,
            Some(REQUEST_ID),
            Some("123456abc"),
            &[],
            TS,
            FIVE_MIN
        ),
        Err(SignatureError::NoMatchingSignature)
    );
}

#[test]
fn tampering_and_staleness_are_refused() {
    let header = format!("ts={TS},v1={V1_FULL}");
    let check = |request_id: Option<&str>, data_id: Option<&str>, now: i64| {
        verify_signature(&header, request_id, data_id, &[SECRET], now, FIVE_MIN)
    };
    assert_eq!(
        check(Some(REQUEST_ID), Some("123456abd"), TS),
        Err(SignatureError::NoMatchingSignature)
    );
    assert_eq!(
        check(Some("other"), Some("123456abc"), TS),
        Err(SignatureError::NoMatchingSignature)
    );
    assert_eq!(
        check(None, Some("123456abc"), TS),
        Err(SignatureError::NoMatchingSignature)
    );
    // Another ts with the same v1.
    assert_eq!(
        verify_signature(
            &format!("ts={},v1={V1_FULL}", TS + 1),
            Some(REQUEST_ID),
            Some("123456abc"),
            &[SECRET],
            TS,
            FIVE_MIN
        ),
        Err(SignatureError::NoMatchingSignature)
    );
    assert_eq!(
        check(Some(REQUEST_ID), Some("123456abc"), TS + 301),
        Err(SignatureError::Stale {
            ts: TS,
            skew_secs: 301
        })
    );
    assert_eq!(
        check(Some(REQUEST_ID), Some("123456abc"), TS - 301),
        Err(SignatureError::Stale {
            ts: TS,
            skew_secs: 301
        })
    );
    assert_eq!(check(Some(REQUEST_ID), Some("123456abc"), TS + 300), Ok(()));
    assert!(matches!(
        check(Some(REQUEST_ID), Some("123456abc"), i64::MIN),
        Err(SignatureError::Stale { .. })
    ));
}

#[test]
fn malformed_headers_are_refused() {
    for header in [
        String::new(),
        "garbage".into(),
        format!("v1={V1_FULL}"),
        format!("ts={TS}"),
        format!("ts=,v1={V1_FULL}"),
        format!("ts=-1,v1={V1_FULL}"),
        format!("ts=12a,v1={V1_FULL}"),
        format!("ts=99999999999999999999,v1={V1_FULL}"),
        format!("ts={TS},ts={TS},v1={V1_FULL}"),
        format!("ts={TS},v1=zz"),
        format!("ts={TS},v1=abcd"),
        format!("ts={TS},v1={V1_FULL},junk"),
    ] {
        assert!(
            matches!(
                verify_signature(
                    &header,
                    Some(REQUEST_ID),
                    Some("123456abc"),
                    &[SECRET],
                    TS,
                    FIVE_MIN
                ),
                Err(SignatureError::Malformed(_))
            ),
            "{header:?} was accepted"
        );
    }
}

proptest! {
    #[test]
    fn verification_never_panics(header in "\\PC{0,120}", request_id in proptest::option::of("\\PC{0,20}"), now in any::<i64>()) {
        let _ = verify_signature(&header, request_id.as_deref(), Some("1"), &[SECRET], now, FIVE_MIN);
    }
}

#[test]
fn notifications_name_the_payment_and_others_are_ignored() {
    let event = parse_webhook(
        br#"{"id": 12345, "type": "payment", "action": "payment.updated", "data": {"id": "999"}}"#,
        Some("req-1"),
    )
    .expect("parses");
    assert_eq!(event.id, "12345");
    assert_eq!(event.kind, "payment.updated");
    assert_eq!(
        event.subject,
        EventSubject::Payment(PaymentRef::from_trusted("999".into()))
    );
    let other =
        parse_webhook(br#"{"type": "plan", "data": {"id": "x"}}"#, Some("req-2")).expect("parses");
    assert_eq!(other.subject, EventSubject::Ignored);
    assert_eq!(
        other.id, "plan:x:req-2",
        "kind, resource and request id without an id"
    );
    assert!(parse_webhook(br#"{"type": "payment", "data": {"id": "abc"}}"#, None).is_err());
}

proptest! {
    #[test]
    fn notification_bodies_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        kind in "(payment|[a-z_]{0,12})",
        data_id in ".{0,30}",
    ) {
        let _ = parse_webhook(&bytes, None);
        let body = serde_json::json!({"type": kind, "data": {"id": data_id}});
        let _ = parse_webhook(body.to_string().as_bytes(), Some("r"));
    }
}
