//! The over-refund guard under concurrent requests.

use refund_service::api::pb;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn sixty_four_concurrent_partial_refunds_never_exceed_the_capture() {
    let (app, _db) = spawn_app().await;
    let captured = 10_000;
    let amount = 300;
    let payment = app.seed(captured, "USD").await;

    let calls: Vec<_> = (0..64)
        .map(|_| {
            let mut client = app.client.clone();
            let req = refund_request(&payment, Some(amount), "USD");
            tokio::spawn(async move { client.create_refund(req).await })
        })
        .collect();
    let (mut succeeded, mut over) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                assert_eq!(status_of(r.get_ref()), pb::RefundStatus::Succeeded);
                succeeded += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(
                    ["OVER_REFUND", "ALREADY_REFUNDED"].contains(&error_reason(&status).as_str()),
                    "{status:?}"
                );
                over += 1;
            }
        }
    }
    assert_eq!(
        succeeded,
        captured / amount,
        "exactly floor(captured/amount) succeed"
    );
    assert_eq!(over, 64 - captured / amount);

    let ledger = app.ledger(&payment).await;
    assert_eq!(
        ledger.len() as i64,
        captured / amount,
        "the provider agrees"
    );
    assert_eq!(
        ledger.iter().map(|r| r.amount).sum::<i64>(),
        succeeded * amount
    );
}

#[tokio::test]
async fn concurrent_full_refunds_refund_the_payment_once() {
    let (app, _db) = spawn_app().await;
    let payment = app.seed(4_200, "JPY").await;
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let mut client = app.client.clone();
            let req = refund_request(&payment, None, "JPY");
            tokio::spawn(async move { client.create_refund(req).await })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.get_ref().amount, 4_200);
                ok += 1;
            }
            Err(status) => assert_eq!(error_reason(&status), "ALREADY_REFUNDED", "{status:?}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(app.ledger(&payment).await.len(), 1);
}
