//! ListRefunds: filters, newest-first order, and stable cursor pagination.

use std::collections::HashSet;

use refund_service::api::pb;
use refund_service::sandbox::NewPayments;
use tonic::Code;

use crate::helpers::*;

async fn refund(app: &mut TestApp, payment: &str, amount: i64) -> pb::Refund {
    app.client
        .create_refund(refund_request(payment, Some(amount), "USD"))
        .await
        .expect("refund")
        .into_inner()
}

async fn list(app: &mut TestApp, req: pb::ListRefundsRequest) -> pb::ListRefundsResponse {
    app.client
        .list_refunds(req)
        .await
        .expect("list")
        .into_inner()
}

#[tokio::test]
async fn pages_are_newest_first_without_gaps_or_duplicates_while_refunds_arrive() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(1_000_000, "USD").await;
    let mut existing = Vec::new();
    for i in 0..7 {
        existing.push(refund(&mut app, &payment, 100 + i).await.id);
    }
    existing.reverse(); // newest first

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(
            &mut app,
            pb::ListRefundsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        assert!(page.refunds.len() <= 3);
        seen.extend(page.refunds.into_iter().map(|r| r.id));
        // New refunds arrive between pages; they must not shift what later pages return.
        refund(&mut app, &payment, 1).await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, existing);
}

#[tokio::test]
async fn filters_by_status_payment_and_time() {
    let (mut app, _db) = spawn_app().await;
    let good = app.seed(10_000, "USD").await;
    let bad = app
        .seed_with(NewPayments {
            amount: 10_000,
            currency: "USD".into(),
            id: None,
            count: None,
            status: None,
            fail_refunds: true,
        })
        .await;
    let first = refund(&mut app, &good, 100).await;
    let failed = refund(&mut app, &bad, 100).await;
    assert_eq!(status_of(&failed), pb::RefundStatus::Failed);
    let last = refund(&mut app, &good, 200).await;

    let by_payment = list(
        &mut app,
        pb::ListRefundsRequest {
            payment_id: good.clone(),
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<_> = by_payment.refunds.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, [last.id.clone(), first.id.clone()]);
    assert!(by_payment.next_page_token.is_empty());

    let by_status = list(
        &mut app,
        pb::ListRefundsRequest {
            status: pb::RefundStatus::Failed.into(),
            ..Default::default()
        },
    )
    .await;
    let failed_ids: Vec<&str> = by_status.refunds.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(failed_ids, [failed.id.as_str()]);

    let by_provider = list(
        &mut app,
        pb::ListRefundsRequest {
            provider: "sandbox".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_provider.refunds.len(), 3);
    let other_provider = list(
        &mut app,
        pb::ListRefundsRequest {
            provider: "stripe".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(other_provider.refunds.is_empty());

    // [created_after, created_before): from the failed refund up to (not including) the last.
    let window = list(
        &mut app,
        pb::ListRefundsRequest {
            created_after: failed.created_at,
            created_before: last.created_at,
            ..Default::default()
        },
    )
    .await;
    let ids: HashSet<_> = window.refunds.iter().map(|r| r.id.clone()).collect();
    assert!(ids.contains(&failed.id), "{ids:?}");
    assert!(
        !ids.contains(&last.id) && !ids.contains(&first.id),
        "{ids:?}"
    );
}

#[tokio::test]
async fn bad_tokens_and_sizes_are_invalid_arguments() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(10_000, "USD").await;
    for _ in 0..3 {
        refund(&mut app, &payment, 10).await;
    }
    let page = list(
        &mut app,
        pb::ListRefundsRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page.refunds.len(), 1);
    assert!(!page.next_page_token.is_empty());

    // The token belongs to the unfiltered listing.
    let err = app
        .client
        .list_refunds(pb::ListRefundsRequest {
            page_size: 1,
            page_token: page.next_page_token.clone(),
            status: pb::RefundStatus::Failed.into(),
            ..Default::default()
        })
        .await
        .expect_err("token for other filters");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["page_token"]);

    for (req, field) in [
        (
            pb::ListRefundsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListRefundsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListRefundsRequest {
                status: 77,
                ..Default::default()
            },
            "status",
        ),
        (
            pb::ListRefundsRequest {
                created_after: Some(prost_types::Timestamp {
                    seconds: 10,
                    nanos: 0,
                }),
                created_before: Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "created_before",
        ),
    ] {
        let err = app.client.list_refunds(req).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&err), [field]);
    }

    // Above the maximum is clamped, not refused.
    let big = list(
        &mut app,
        pb::ListRefundsRequest {
            page_size: 100_000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(big.refunds.len(), 3);
}
