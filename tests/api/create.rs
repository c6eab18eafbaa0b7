//! CreateRefund and GetRefund: the happy paths and every error case.

use std::collections::HashMap;

use refund_service::api::pb;
use refund_service::sandbox::{NewPayments, PaymentStatus};
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn partial_then_full_refund_leaves_nothing_refundable() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(10_000, "USD").await;

    let partial = app
        .client
        .create_refund(refund_request(&payment, Some(2_500), "USD"))
        .await
        .expect("partial refund")
        .into_inner();
    assert_eq!(partial.amount, 2_500);
    assert_eq!(partial.currency, "USD");
    assert_eq!(status_of(&partial), pb::RefundStatus::Succeeded);
    assert!(partial.id.starts_with("rf_"), "{}", partial.id);
    assert!(!partial.provider_refund_id.is_empty());
    assert_eq!(partial.provider, "sandbox");
    assert!(partial.created_at.is_some() && partial.updated_at.is_some());

    // No amount: the whole remainder.
    let rest = app
        .client
        .create_refund(refund_request(&payment, None, "usd"))
        .await
        .expect("full refund")
        .into_inner();
    assert_eq!(rest.amount, 7_500);
    assert_eq!(status_of(&rest), pb::RefundStatus::Succeeded);

    let err = app
        .client
        .create_refund(refund_request(&payment, Some(1), "USD"))
        .await
        .expect_err("nothing left");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err), "ALREADY_REFUNDED");

    let ledger = app.ledger(&payment).await;
    assert_eq!(ledger.iter().map(|r| r.amount).sum::<i64>(), 10_000);
    assert_eq!(ledger.len(), 2);
    // Each provider refund carries our refund id as its idempotency key.
    assert_eq!(
        ledger[0].idempotency_key.as_deref(),
        Some(partial.id.as_str())
    );
}

#[tokio::test]
async fn get_returns_what_create_returned() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(5_000, "EUR").await;
    let mut req = refund_request(&payment, Some(1_000), "EUR");
    req.reason = pb::RefundReason::Duplicate.into();
    req.reason_detail = "charged twice".into();
    req.metadata = HashMap::from([("order".to_owned(), "ORD-1".to_owned())]);
    let created = app.client.create_refund(req).await.unwrap().into_inner();

    let got = app
        .client
        .get_refund(pb::GetRefundRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    assert_eq!(got.reason, i32::from(pb::RefundReason::Duplicate));
    assert_eq!(got.reason_detail, "charged twice");
    assert_eq!(got.metadata.get("order").map(String::as_str), Some("ORD-1"));
}

#[tokio::test]
async fn over_refund_names_the_remaining_amount() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(10_000, "USD").await;
    app.client
        .create_refund(refund_request(&payment, Some(6_000), "USD"))
        .await
        .unwrap();
    let err = app
        .client
        .create_refund(refund_request(&payment, Some(4_001), "USD"))
        .await
        .expect_err("over refund");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err), "OVER_REFUND");
    assert_eq!(
        error_metadata(&err, "remaining_amount").as_deref(),
        Some("4000")
    );
    assert_eq!(error_metadata(&err, "currency").as_deref(), Some("USD"));
    assert_eq!(
        app.ledger(&payment).await.len(),
        1,
        "nothing reached the provider"
    );
}

#[tokio::test]
async fn unknown_payment_is_not_found() {
    let (mut app, _db) = spawn_app().await;
    let err = app
        .client
        .create_refund(refund_request("ch_does_not_exist", Some(100), "USD"))
        .await
        .expect_err("unknown payment");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("ch_does_not_exist"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn uncaptured_payment_is_a_failed_precondition() {
    let (mut app, _db) = spawn_app().await;
    let payment = app
        .seed_with(NewPayments {
            amount: 1_000,
            currency: "USD".into(),
            id: None,
            count: None,
            status: Some(PaymentStatus::RequiresCapture),
            fail_refunds: false,
        })
        .await;
    let err = app
        .client
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .expect_err("not captured");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err), "PAYMENT_NOT_REFUNDABLE");
    assert_eq!(
        error_metadata(&err, "payment_status").as_deref(),
        Some("requires_capture")
    );
}

#[tokio::test]
async fn bad_fields_are_all_reported_as_violations() {
    let (mut app, _db) = spawn_app().await;
    let req = pb::CreateRefundRequest {
        payment_id: String::new(),
        amount: Some(-5),
        currency: "dollars".into(),
        reason: 42,
        metadata: (0..51).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
        ..Default::default()
    };
    let err = app.client.create_refund(req).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        ["amount", "currency", "metadata", "payment_id", "reason"]
    );
}

#[tokio::test]
async fn zero_amount_and_oversized_metadata_values_are_invalid() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(1_000, "USD").await;
    let err = app
        .client
        .create_refund(refund_request(&payment, Some(0), "USD"))
        .await
        .expect_err("zero");
    assert_eq!(violated_fields(&err), ["amount"]);

    let mut req = refund_request(&payment, Some(10), "USD");
    req.metadata = HashMap::from([("note".to_owned(), "x".repeat(501))]);
    let err = app.client.create_refund(req).await.expect_err("long value");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["metadata[note]"]);
}

#[tokio::test]
async fn currency_must_match_the_payment() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(1_000, "USD").await;
    let err = app
        .client
        .create_refund(refund_request(&payment, Some(100), "EUR"))
        .await
        .expect_err("mismatch");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["currency"]);
    assert!(err.message().contains("USD"), "{}", err.message());
}

#[tokio::test]
async fn unknown_provider_is_invalid() {
    let (mut app, _db) = spawn_app().await;
    let mut req = refund_request("ch_1", Some(100), "USD");
    req.provider = "paypal".into();
    let err = app
        .client
        .create_refund(req)
        .await
        .expect_err("unknown provider");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["provider"]);
    assert!(
        err.message().contains("sandbox"),
        "lists configured providers: {}",
        err.message()
    );
}

#[tokio::test]
async fn provider_rejection_is_a_failed_refund_and_releases_the_amount() {
    let (mut app, _db) = spawn_app().await;
    let payment = app
        .seed_with(NewPayments {
            amount: 3_000,
            currency: "USD".into(),
            id: None,
            count: None,
            status: None,
            fail_refunds: true,
        })
        .await;
    let failed = app
        .client
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .expect("a rejection is not an RPC error")
        .into_inner();
    assert_eq!(status_of(&failed), pb::RefundStatus::Failed);
    assert_eq!(failed.amount, 3_000);
    assert_eq!(failed.failure_code, "expired_or_canceled_card");
    assert!(!failed.failure_reason.is_empty());

    // The failed refund released its amount: the whole payment can be tried again.
    let again = app
        .client
        .create_refund(refund_request(&payment, Some(3_000), "USD"))
        .await
        .expect("balance released")
        .into_inner();
    assert_eq!(status_of(&again), pb::RefundStatus::Failed);
}

#[tokio::test]
async fn unreachable_provider_is_unavailable_and_stores_nothing() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| {
        // Nothing listens on port 1.
        s.sandbox_url = Some("http://127.0.0.1:1/sandbox".into());
    })
    .await;
    let err = app
        .client
        .create_refund(refund_request("ch_any", Some(100), "USD"))
        .await
        .expect_err("unreachable");
    assert_eq!(err.code(), Code::Unavailable);
    let page = app
        .client
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(page.refunds.is_empty());
}

#[tokio::test]
async fn get_unknown_or_malformed_id() {
    let (mut app, _db) = spawn_app().await;
    let err = app
        .client
        .get_refund(pb::GetRefundRequest {
            id: "rf_0190c5f4a4f07c3e9e2b7b6a1e1d2c3b".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    for bad in ["", "re_123", "rf_xyz"] {
        let err = app
            .client
            .get_refund(pb::GetRefundRequest { id: bad.into() })
            .await
            .expect_err("malformed");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert_eq!(violated_fields(&err), ["id"]);
    }
}

/// Ids are parsed at the API's edge: a malformed one is INVALID_ARGUMENT naming the field, for
/// every RPC that takes a refund id; a well-formed one that does not exist is NOT_FOUND.
#[tokio::test]
async fn malformed_refund_ids_are_invalid_arguments_and_unknown_ones_not_found() {
    use tonic_types::StatusExt as _;
    let (app, _db) = spawn_app().await;
    let mut client = app.client.clone();
    for (id, code) in [
        ("", Code::InvalidArgument),
        ("rf_nope", Code::InvalidArgument),
        ("rf_0190c5f4a4f07c3e9e2b7b6a1e1d2c3b", Code::NotFound),
    ] {
        let statuses = [
            client
                .get_refund(pb::GetRefundRequest { id: id.into() })
                .await
                .map(|_| ())
                .expect_err("get"),
            client
                .approve_refund(pb::ApproveRefundRequest { id: id.into() })
                .await
                .map(|_| ())
                .expect_err("approve"),
            client
                .reject_refund(pb::RejectRefundRequest { id: id.into() })
                .await
                .map(|_| ())
                .expect_err("reject"),
            client
                .watch_refund(pb::WatchRefundRequest { id: id.into() })
                .await
                .map(|_| ())
                .expect_err("watch"),
        ];
        for status in statuses {
            assert_eq!(status.code(), code, "{id:?}: {status:?}");
            if code == Code::InvalidArgument {
                let details = status.get_error_details();
                let fields: Vec<&str> = details
                    .bad_request()
                    .map(|b| {
                        b.field_violations
                            .iter()
                            .map(|v| v.field.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(fields, ["id"], "{id:?}: {status:?}");
            }
        }
    }
}
