//! Four eyes: refunds above an account's threshold wait for a second key.

use std::process::Command;

use refund_service::api::pb;
use refund_service::domain::{AccountId, Currency, Scope, parse_account};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::*;

async fn key(app: &TestApp, scopes: &str) -> String {
    refund_service::service::create_api_key(
        app.service.store(),
        parse_account(AccountId::DEFAULT).expect("account"),
        format!("{scopes} key"),
        Scope::parse_list(scopes).expect("scopes"),
    )
    .await
    .expect("key")
    .1
}

/// Refunds above 50.00 USD need approval in the default account.
async fn with_threshold(app: &TestApp) {
    app.service
        .store()
        .set_approval_threshold(
            &AccountId::default_account(),
            Currency::parse("USD").expect("USD"),
            Some(5_000),
        )
        .await
        .expect("threshold");
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_refund_above_the_threshold_waits_and_only_another_key_can_approve_it() {
    let (app, db) = spawn_app().await;
    with_threshold(&app).await;
    let payment = app.seed(20_000, "USD").await;
    let clerk = key(&app, "refunds:read,refunds:write,refunds:approve").await;
    let mut clerk = client_with_key(app.grpc_addr, Some(&clerk)).await;
    let manager = key(&app, "refunds:read,refunds:approve").await;
    let mut manager = client_with_key(app.grpc_addr, Some(&manager)).await;

    // At the threshold: no approval needed.
    let small = clerk
        .create_refund(refund_request(&payment, Some(5_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&small), pb::RefundStatus::Succeeded);

    let big = clerk
        .create_refund(refund_request(&payment, Some(9_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        status_of(&big),
        pb::RefundStatus::RequiresApproval,
        "{big:?}"
    );
    assert!(big.created_by_key_id.starts_with("key_"));
    assert_eq!(
        app.ledger(&payment).await.len(),
        1,
        "not sent to the provider"
    );
    // Its amount is held: only 6,000 remain.
    let err = clerk
        .create_refund(refund_request(&payment, Some(6_001), "USD"))
        .await
        .expect_err("over-refund");
    assert_eq!(reason(&err), "OVER_REFUND");

    // The key that asked cannot approve it.
    let err = clerk
        .approve_refund(pb::ApproveRefundRequest { id: big.id.clone() })
        .await
        .expect_err("self-approval");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "SELF_APPROVAL");
    // A key without refunds:approve cannot either.
    let writer = key(&app, "refunds:write").await;
    let err = client_with_key(app.grpc_addr, Some(&writer))
        .await
        .approve_refund(pb::ApproveRefundRequest { id: big.id.clone() })
        .await
        .expect_err("no refunds:approve");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err), "MISSING_SCOPE");

    let approved = manager
        .approve_refund(pb::ApproveRefundRequest { id: big.id.clone() })
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(
        status_of(&approved),
        pb::RefundStatus::Succeeded,
        "{approved:?}"
    );
    assert!(approved.approved_by_key_id.starts_with("key_"));
    assert_ne!(approved.approved_by_key_id, approved.created_by_key_id);
    assert_eq!(app.ledger(&payment).await.len(), 2, "sent once approved");
    let err = manager
        .approve_refund(pb::ApproveRefundRequest { id: big.id.clone() })
        .await
        .expect_err("twice");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "NOT_AWAITING_APPROVAL");

    let history = status_history(&db, &big.id).await;
    let sources: Vec<(&str, &str)> = history
        .iter()
        .map(|(_, to, source)| (to.as_str(), source.as_str()))
        .collect();
    assert_eq!(
        sources,
        [
            ("requires_approval", "api"),
            ("pending", "approval"),
            ("succeeded", "api")
        ]
    );
}

#[tokio::test]
async fn rejecting_cancels_the_refund_and_releases_its_amount() {
    let (app, _db) = spawn_app().await;
    with_threshold(&app).await;
    let payment = app.seed(10_000, "USD").await;
    let manager = key(&app, "refunds:approve").await;
    let mut manager = client_with_key(app.grpc_addr, Some(&manager)).await;
    let big = app
        .client
        .clone()
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&big), pb::RefundStatus::RequiresApproval);
    assert_eq!(big.amount, 10_000, "the whole remainder is held");

    let rejected = manager
        .reject_refund(pb::RejectRefundRequest { id: big.id.clone() })
        .await
        .expect("reject")
        .into_inner();
    assert_eq!(status_of(&rejected), pb::RefundStatus::Canceled);
    assert_eq!(rejected.failure_code, "rejected");
    assert!(app.ledger(&payment).await.is_empty());
    // Released: the payment can be refunded again (below the threshold, no approval).
    let again = app
        .client
        .clone()
        .create_refund(refund_request(&payment, Some(4_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&again), pb::RefundStatus::Succeeded);
}

#[tokio::test]
async fn bulk_jobs_above_the_threshold_wait_for_approval_too() {
    let (mut app, _db) = spawn_app().await;
    with_threshold(&app).await;
    let small = app.seed(1_000, "USD").await;
    let big = app.seed(8_000, "USD").await;
    let results: Vec<pb::BulkJobResult> = app
        .client
        .bulk_refund(pb::BulkRefundRequest {
            jobs: vec![
                refund_request(&small, None, "USD"),
                refund_request(&big, None, "USD"),
            ],
            ..Default::default()
        })
        .await
        .expect("bulk")
        .into_inner()
        .filter_map(|e| match e.ok()?.event? {
            pb::bulk_refund_event::Event::Result(r) => Some(r),
            _ => None,
        })
        .collect()
        .await;
    let big_result = results
        .iter()
        .find(|r| r.payment_id == big)
        .expect("the big job's result");
    assert_eq!(
        big_result.status(),
        pb::BulkItemStatus::RequiresApproval,
        "reported as waiting for approval"
    );
    assert!(big_result.success);
    let waiting = big_result.refund.clone().expect("the big job's refund");
    assert_eq!(status_of(&waiting), pb::RefundStatus::RequiresApproval);
    assert!(app.ledger(&big).await.is_empty());
    assert_eq!(app.ledger(&small).await.len(), 1);

    // The batch's key (the admin key here) cannot approve its own jobs' refunds.
    let err = app
        .client
        .approve_refund(pb::ApproveRefundRequest {
            id: waiting.id.clone(),
        })
        .await
        .expect_err("self-approval");
    assert_eq!(reason(&err), "SELF_APPROVAL");
}

#[tokio::test]
async fn thresholds_are_set_and_cleared_with_the_cli() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |_| {}).await;
    let bin = env!("CARGO_BIN_EXE_refund-service");
    let run = |extra: &[&str]| {
        Command::new(bin)
            .args([
                "accounts",
                "set-approval-threshold",
                "--account",
                "acct_default",
            ])
            .args(["--currency", "USD", "--database-url", &db.url])
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run")
    };
    let out = run(&["--amount", "100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let payment = app.seed(1_000, "USD").await;
    let r = app
        .client
        .create_refund(refund_request(&payment, Some(101), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::RequiresApproval);
    let out = run(&["--clear"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = app
        .client
        .create_refund(refund_request(&payment, Some(101), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Succeeded);
    assert!(
        !run(&[]).status.success(),
        "an amount or --clear is required"
    );
}

/// Defect: of two concurrent ApproveRefund calls by the same key, the loser read the refund back
/// PENDING with its own key as approver and sent it to the provider again. Exactly one approval
/// may send; the others are told the refund no longer awaits approval. (The calls go straight to
/// the service, so that nothing in front of it staggers them.)
#[tokio::test]
async fn concurrent_approvals_by_one_key_send_the_refund_once() {
    let (app, _db) = spawn_app().await;
    with_threshold(&app).await;
    let scopes = Scope::parse_list("refunds:read,refunds:approve").expect("scopes");
    let (manager, _) = refund_service::service::create_api_key(
        app.service.store(),
        AccountId::default_account(),
        "manager".into(),
        scopes.clone(),
    )
    .await
    .expect("key");
    let manager = refund_service::domain::Principal {
        key_id: manager.id,
        account: AccountId::default_account(),
        scopes,
    };
    // A slow provider keeps the winner's call in flight while the others run.
    app.sandbox
        .set_faults(&refund_service::sandbox::FaultConfig {
            latency_ms: 300,
            ..Default::default()
        })
        .await
        .expect("faults");

    for round in 0..3 {
        let payment = app.seed(20_000, "USD").await;
        let big = app
            .client
            .clone()
            .create_refund(refund_request(&payment, Some(9_000), "USD"))
            .await
            .expect("create")
            .into_inner();
        assert_eq!(status_of(&big), pb::RefundStatus::RequiresApproval);
        let before = app.sandbox.stats().await.expect("stats");

        let calls: Vec<_> = (0..8)
            .map(|_| {
                let service = app.service.clone();
                let manager = manager.clone();
                let id = refund_service::domain::RefundId::parse(&big.id).expect("a refund id");
                tokio::spawn(async move { service.approve_refund(&manager, &id).await })
            })
            .collect();
        let mut approved = 0;
        for call in calls {
            match call.await.expect("task") {
                Ok(_) => approved += 1,
                Err(e) => assert!(
                    matches!(
                        e,
                        refund_service::domain::RefundError::NotAwaitingApproval { .. }
                    ),
                    "{e:?}"
                ),
            }
        }
        assert_eq!(approved, 1, "round {round}: exactly one approval wins");
        let after = app.sandbox.stats().await.expect("stats");
        assert_eq!(app.ledger(&payment).await.len(), 1);
        assert_eq!(
            after.idempotent_replays, before.idempotent_replays,
            "round {round}: the refund reached the provider once"
        );
    }
}

/// Defect: the threshold was cached per process for 10 s, so right after it was lowered a refund
/// above the new threshold went through without a second person. Four eyes have no window: the
/// threshold is read in the transaction that stores the refund.
#[tokio::test]
async fn a_lowered_threshold_applies_to_the_very_next_refund() {
    let (app, _db) = spawn_app().await;
    let payment = app.seed(20_000, "USD").await;
    let mut client = app.client.clone();
    let before = client
        .create_refund(refund_request(&payment, Some(1_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(status_of(&before), pb::RefundStatus::Succeeded);

    with_threshold(&app).await;
    let big = client
        .create_refund(refund_request(&payment, Some(9_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(
        status_of(&big),
        pb::RefundStatus::RequiresApproval,
        "{big:?}"
    );
}
