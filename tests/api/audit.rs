//! The audit trail: each state change leaves a record (who, what, request id, outcome), listed
//! per account with ListAuditEvents.

use refund_service::api::pb;
use refund_service::domain::{AccountId, Currency, Scope, parse_account};
use tonic::Code;

use crate::helpers::*;

async fn key(app: &TestApp, account: &str, scopes: &str) -> (String, String) {
    let (key, token) = refund_service::service::create_api_key(
        app.service.store(),
        parse_account(account).expect("account"),
        format!("{scopes} key"),
        Scope::parse_list(scopes).expect("scopes"),
    )
    .await
    .expect("key");
    (key.id.as_str().to_owned(), token)
}

async fn trail(client: &mut Client, request: pb::ListAuditEventsRequest) -> Vec<pb::AuditEvent> {
    client
        .list_audit_events(request)
        .await
        .expect("list audit events")
        .into_inner()
        .events
}

#[tokio::test]
async fn refunds_leave_a_trail_with_the_key_the_request_id_and_the_outcome() {
    let (app, _db) = spawn_app().await;
    app.service
        .store()
        .set_approval_threshold(
            &AccountId::default_account(),
            Currency::parse("USD").expect("USD"),
            Some(5_000),
        )
        .await
        .expect("threshold");
    let payment = app.seed(20_000, "USD").await;
    let (clerk_id, clerk) = key(&app, AccountId::DEFAULT, "refunds:read,refunds:write").await;
    let mut clerk = client_with_key(app.grpc_addr, Some(&clerk)).await;
    let (manager_id, manager) = key(&app, AccountId::DEFAULT, "refunds:read,refunds:approve").await;
    let mut manager = client_with_key(app.grpc_addr, Some(&manager)).await;

    let mut request = tonic::Request::new(refund_request(&payment, Some(1_000), "USD"));
    request
        .metadata_mut()
        .insert("x-request-id", "req-checkout-42".parse().expect("ascii"));
    let response = clerk.create_refund(request).await.expect("create");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-checkout-42"),
        "the request id comes back"
    );
    let small = response.into_inner();

    let big = clerk
        .create_refund(refund_request(&payment, Some(9_000), "USD"))
        .await
        .expect("create")
        .into_inner();
    let approved = manager
        .approve_refund(pb::ApproveRefundRequest { id: big.id.clone() })
        .await;
    assert!(approved.is_ok(), "{approved:?}");

    let small_trail = trail(
        &mut manager,
        pb::ListAuditEventsRequest {
            resource_id: small.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let summary: Vec<(&str, &str, &str, &str)> = small_trail
        .iter()
        .rev()
        .map(|e| {
            (
                e.action.as_str(),
                e.outcome.as_str(),
                e.actor_key_id.as_str(),
                e.request_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "refund.create",
                "pending",
                clerk_id.as_str(),
                "req-checkout-42"
            ),
            ("refund.settle", "succeeded", "", "req-checkout-42"),
        ]
    );
    assert!(
        small_trail
            .iter()
            .all(|e| e.account_id == AccountId::DEFAULT)
    );

    let big_trail = trail(
        &mut manager,
        pb::ListAuditEventsRequest {
            resource_id: big.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let summary: Vec<(&str, &str, &str, &str)> = big_trail
        .iter()
        .rev()
        .map(|e| {
            (
                e.action.as_str(),
                e.outcome.as_str(),
                e.actor_key_id.as_str(),
                e.source.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "refund.create",
                "requires_approval",
                clerk_id.as_str(),
                "api"
            ),
            ("refund.approve", "pending", manager_id.as_str(), "approval"),
            ("refund.settle", "succeeded", "", "api"),
        ]
    );
    assert!(big_trail.iter().all(|e| e.request_id.starts_with("req")));

    // Filters: everything the manager's key did.
    let by_manager = trail(
        &mut manager,
        pb::ListAuditEventsRequest {
            actor_key_id: manager_id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_manager.len(), 1);
    assert_eq!(by_manager[0].action, "refund.approve");
}

#[tokio::test]
async fn the_trail_pages_and_stays_within_the_account() {
    let (mut app, _db) = spawn_app().await;
    let payments = app.seed_many(3, 100).await;
    for p in &payments {
        app.client
            .create_refund(refund_request(p, None, "USD"))
            .await
            .expect("create");
    }
    // 3 refunds × (create + settle), plus the keys made at start and below.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_audit_events(pb::ListAuditEventsRequest {
                action: "refund.create".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.events.into_iter().map(|e| e.resource_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let first = app
        .client
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "refund.create".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let err = app
        .client
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "refund.settle".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("token for other filters");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Another account sees none of it, and may not ask for acct_default's trail.
    let (_, other) = key(&app, "acct_other", "refunds:read").await;
    let mut other = client_with_key(app.grpc_addr, Some(&other)).await;
    assert!(
        trail(&mut other, pb::ListAuditEventsRequest::default())
            .await
            .iter()
            .all(|e| e.account_id == "acct_other")
    );
    let err = other
        .list_audit_events(pb::ListAuditEventsRequest {
            account_id: AccountId::DEFAULT.into(),
            ..Default::default()
        })
        .await
        .expect_err("not admin");
    assert_eq!(err.code(), Code::PermissionDenied);
    // The admin key may read another account's trail: the key made for acct_other is in it.
    let theirs = trail(
        &mut app.client,
        pb::ListAuditEventsRequest {
            account_id: "acct_other".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        theirs.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["api_key.create"]
    );
}
