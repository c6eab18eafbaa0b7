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

/// A client of another account, with refund scopes.
async fn other_account_client(app: &TestApp, account: &str) -> Client {
    let scopes =
        refund_service::domain::Scope::parse_list("refunds:read,refunds:write").expect("scopes");
    let (_, token) = refund_service::service::create_api_key(
        app.service.store(),
        refund_service::domain::parse_account(account).expect("account"),
        "other account".into(),
        scopes,
    )
    .await
    .expect("key");
    client_with_key(app.grpc_addr, Some(&token)).await
}

/// Defect: the balance row was keyed by (account, provider, payment), so each account reserved
/// against its own row: account B could refund account A's payment, and two accounts together
/// could reserve more than the capture. The guard is now one row per real payment (provider and
/// payment id), owned by the account that refunded it first; to any other account the payment
/// does not exist.
#[tokio::test]
async fn another_account_can_neither_refund_a_payment_nor_push_it_past_its_capture() {
    let (app, db) = spawn_app().await;
    let mut other = other_account_client(&app, "acct_other").await;
    let payment = app.seed(10_000, "USD").await;

    app.client
        .clone()
        .create_refund(refund_request(&payment, Some(4_000), "USD"))
        .await
        .expect("the first account refunds part of it");
    let err = other
        .create_refund(refund_request(&payment, Some(6_000), "USD"))
        .await
        .expect_err("another account's payment");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(reserved_amount(&db, &payment).await, 4_000);
    assert_eq!(app.ledger(&payment).await.len(), 1);

    // Two accounts racing for a fresh payment: one balance, never beyond the capture.
    for _ in 0..5 {
        let payment = app.seed(10_000, "USD").await;
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let mut client = if i % 2 == 0 {
                    app.client.clone()
                } else {
                    other.clone()
                };
                let req = refund_request(&payment, Some(3_000), "USD");
                tokio::spawn(async move { client.create_refund(req).await })
            })
            .collect();
        let mut refunded = 0;
        for call in calls {
            match call.await.expect("task") {
                Ok(r) => {
                    assert_eq!(status_of(r.get_ref()), pb::RefundStatus::Succeeded);
                    refunded += 3_000;
                }
                Err(e) => assert!(
                    matches!(e.code(), Code::FailedPrecondition | Code::NotFound),
                    "{e:?}"
                ),
            }
        }
        assert_eq!(refunded, 9_000, "three of 3,000 fit in 10,000");
        assert_eq!(reserved_amount(&db, &payment).await, 9_000);
    }
}

/// Defect: a payment's balance row belonged to whoever refunded it first, for ever: one refund
/// that held nothing in the end (refused, or here rejected by an approver) kept the payment
/// from everyone else — e.g. a tenant sending a refund with its own credentials for a payment
/// not its own. While no refund holds money, the row is nobody's, and the next refund takes it.
#[tokio::test]
async fn a_payment_whose_refunds_hold_nothing_can_be_refunded_by_another_account() {
    let (app, db) = spawn_app().await;
    let mut other = other_account_client(&app, "acct_other").await;
    let payment = app.seed(10_000, "USD").await;
    app.service
        .store()
        .set_approval_threshold(
            &refund_service::domain::AccountId::default_account(),
            refund_service::domain::Currency::parse("USD").expect("USD"),
            Some(100),
        )
        .await
        .expect("threshold");
    let waiting = app
        .client
        .clone()
        .create_refund(refund_request(&payment, Some(4_000), "USD"))
        .await
        .expect("waits for approval")
        .into_inner();
    assert_eq!(status_of(&waiting), pb::RefundStatus::RequiresApproval);
    let err = other
        .create_refund(refund_request(&payment, Some(1_000), "USD"))
        .await
        .expect_err("held by the first account's refund");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let (_, token) = refund_service::service::create_api_key(
        app.service.store(),
        refund_service::domain::AccountId::default_account(),
        "approver".into(),
        refund_service::domain::Scope::parse_list("refunds:approve").expect("scopes"),
    )
    .await
    .expect("key");
    client_with_key(app.grpc_addr, Some(&token))
        .await
        .reject_refund(pb::RejectRefundRequest { id: waiting.id })
        .await
        .expect("rejected");
    assert_eq!(reserved_amount(&db, &payment).await, 0);

    let r = other
        .create_refund(refund_request(&payment, Some(10_000), "USD"))
        .await
        .expect("nothing held: the other account may refund it")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Succeeded, "{r:?}");
    assert_eq!(reserved_amount(&db, &payment).await, 10_000);
    // And now it is that account's.
    let err = app
        .client
        .clone()
        .create_refund(refund_request(&payment, Some(1), "USD"))
        .await
        .expect_err("the other account's now");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}
