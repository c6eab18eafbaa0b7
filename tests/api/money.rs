//! The over-refund guard as the store enforces it (one conditional write in SQL), checked
//! against a model over random sequences of refunds, failures and successes: what is reserved
//! is always the sum of the refunds that hold money, never more than was captured, and every
//! refusal names what remains.

use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config, TestRunner};
use refund_service::domain::{
    AccountId, Failure, NewRefund, ProviderName, RawRefundRequest, RefundId, RefundReason,
    RefundStatus, Route, Timestamp, parse_account,
};
use refund_service::store::{BeginOutcome, BeginRefund, Settlement, Store, StoreOptions};

use crate::helpers::TestDb;

#[derive(Debug, Clone)]
enum Op {
    /// A refund of this many minor units, or of all that remains.
    Refund(Option<i64>),
    /// The provider failed the n-th refund made so far (modulo their number): money released.
    Fail(usize),
    /// The provider completed it: the money stays reserved.
    Succeed(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::option::of(prop_oneof![1i64..=3_000, 1i64..=1_000_000_000_000_000])
            .prop_map(Op::Refund),
        1 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Succeed),
    ]
}

fn case() -> impl Strategy<Value = (i64, Vec<Op>)> {
    (
        prop_oneof![1i64..=10_000, Just(1_000_000_000_000_000)],
        proptest::collection::vec(op(), 1..30),
    )
}

fn samples<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::new(Config::default());
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

fn request(payment: &str, amount: Option<i64>, n: usize) -> NewRefund {
    NewRefund::parse(
        RawRefundRequest {
            payment_id: payment.to_owned(),
            provider: "sandbox".to_owned(),
            amount,
            currency: "USD".to_owned(),
            reason: Some(RefundReason::Unspecified),
            idempotency_key: format!("key-{n}"),
            ..RawRefundRequest::default()
        },
        &ProviderName::from_trusted("sandbox".to_owned()),
        "",
    )
    .expect("a valid request")
}

fn settlement(to: RefundStatus) -> Settlement {
    Settlement {
        from: RefundStatus::Pending,
        to,
        provider_refund_id: None,
        failure: (to == RefundStatus::Failed).then(|| Failure {
            code: "card_expired".into(),
            reason: "the card expired".into(),
        }),
        source: "test",
        approved_by: None,
        lease_until: None,
        actor: None,
        request_id: None,
    }
}

#[tokio::test]
async fn reservations_follow_the_model_and_never_exceed_the_captured_amount() {
    let account: AccountId = parse_account(AccountId::DEFAULT).unwrap();
    let provider = ProviderName::from_trusted("sandbox".to_owned());
    for (case_no, (captured, ops)) in samples(case(), 24).into_iter().enumerate() {
        let db = TestDb::new().await;
        let store = Store::connect(&db.url, &StoreOptions::default())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let payment = format!("ch_prop_{case_no}");
        // The model: each refund made, with its amount and whether it still holds money.
        let mut made: Vec<(RefundId, i64, RefundStatus)> = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            let held: i64 = made
                .iter()
                .filter(|(_, _, s)| *s != RefundStatus::Failed)
                .map(|(_, a, _)| a)
                .sum();
            let remaining = captured - held;
            match op {
                Op::Refund(amount) => {
                    let new = request(&payment, *amount, n);
                    let now = Timestamp::now();
                    let outcome = store
                        .begin_refund(BeginRefund {
                            id: RefundId::generate(),
                            account: &account,
                            request: &new,
                            fingerprint: &new.fingerprint(),
                            captured,
                            provider_remaining: captured,
                            now,
                            lease_until: now.saturating_add(Duration::from_secs(30)),
                            idempotency_expires_at: now.saturating_add(Duration::from_secs(3600)),
                            source: "test",
                            created_by: None,
                            request_id: None,
                            route: &Route::Platform,
                        })
                        .await
                        .expect("begin");
                    match (outcome, amount) {
                        (BeginOutcome::AlreadyRefunded, _) => {
                            assert_eq!(remaining, 0, "case {case_no} op {n}: {op:?}");
                        }
                        (BeginOutcome::OverRefund { remaining: said }, Some(asked)) => {
                            assert_eq!(said, remaining, "case {case_no} op {n}");
                            assert!(*asked > remaining, "case {case_no} op {n}");
                        }
                        (BeginOutcome::Created(refund), _) => {
                            let expected = amount.unwrap_or(remaining);
                            assert!(
                                expected <= remaining && remaining > 0,
                                "case {case_no} op {n}"
                            );
                            assert_eq!(
                                refund.amount.minor_units(),
                                expected,
                                "case {case_no} op {n}"
                            );
                            made.push((refund.id, expected, RefundStatus::Pending));
                        }
                        (other, _) => panic!("case {case_no} op {n} {op:?}: {other:?}"),
                    }
                }
                Op::Fail(i) | Op::Succeed(i) if !made.is_empty() => {
                    let to = if matches!(op, Op::Fail(_)) {
                        RefundStatus::Failed
                    } else {
                        RefundStatus::Succeeded
                    };
                    let len = made.len();
                    let entry = &mut made[i % len];
                    let settled = store
                        .settle(&entry.0, settlement(to))
                        .await
                        .expect("settle");
                    // Only a PENDING refund moves; a settled one stays as it is.
                    assert_eq!(
                        settled.is_some(),
                        entry.2 == RefundStatus::Pending,
                        "case {case_no} op {n}"
                    );
                    if settled.is_some() {
                        entry.2 = to;
                    }
                }
                Op::Fail(_) | Op::Succeed(_) => {}
            }
            let held: i64 = made
                .iter()
                .filter(|(_, _, s)| *s != RefundStatus::Failed)
                .map(|(_, a, _)| a)
                .sum();
            let (stored_captured, reserved) = store
                .payment_balance(
                    &account,
                    &provider,
                    &refund_service::domain::PaymentRef::from_trusted(payment.clone()),
                )
                .await
                .expect("balance")
                .unwrap_or((captured, 0));
            assert_eq!(stored_captured, captured, "case {case_no} op {n}");
            assert_eq!(reserved, held, "case {case_no} op {n}: {ops:?}");
            assert!(reserved <= captured, "case {case_no} op {n}");
        }
        store.close().await.ok();
    }
}
