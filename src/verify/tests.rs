//! The checker on hand-built snapshots: a clean one, then one broken invariant at a time.

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::store::{Books, BulkItemRow, BulkRow, EventRow, KeyRow, PaymentTotals, RefundRow};
use crate::verify::ViolationKind;

const ACCT: &str = "acct_default";

fn payment(id: &str, captured: i64, reserved: i64) -> PaymentTotals {
    PaymentTotals {
        provider: LEDGER_PROVIDER.to_owned(),
        payment_id: id.to_owned(),
        currency: "USD".to_owned(),
        captured,
        reserved,
        rows: 1,
    }
}

fn refund(id: &str, payment: &str, amount: i64, status: &str) -> RefundRow {
    RefundRow {
        id: id.to_owned(),
        account_id: ACCT.to_owned(),
        provider: LEDGER_PROVIDER.to_owned(),
        payment_id: payment.to_owned(),
        provider_refund_id: Some(format!("re_{id}")),
        amount,
        currency: "USD".to_owned(),
        status: status.to_owned(),
        idempotency_key: None,
        created_at: 1_000,
    }
}

fn ledger_payment(id: &str, captured: i64, refunded: i64) -> LedgerPayment {
    LedgerPayment {
        id: id.to_owned(),
        captured,
        refunded,
        currency: "USD".to_owned(),
    }
}

/// The provider's refund for our refund `ours`, as the service sends it.
fn ledger_refund(ours: &str, payment: &str, amount: i64, status: LedgerStatus) -> LedgerRefund {
    LedgerRefund {
        id: format!("re_{ours}"),
        payment: payment.to_owned(),
        amount,
        currency: "USD".to_owned(),
        status,
        idempotency_key: Some(ours.to_owned()),
        refund_id: Some(ours.to_owned()),
    }
}

fn bulk(id: &str, state: &str) -> BulkRow {
    BulkRow {
        id: id.to_owned(),
        account_id: ACCT.to_owned(),
        state: state.to_owned(),
        created_at: 1_000,
    }
}

fn item(bulk: &str, index: i32, status: &str, payment: &str, refund: Option<&str>) -> BulkItemRow {
    BulkItemRow {
        bulk_id: bulk.to_owned(),
        index,
        account_id: ACCT.to_owned(),
        status: status.to_owned(),
        payment_id: payment.to_owned(),
        provider: LEDGER_PROVIDER.to_owned(),
        refund_id: refund.map(str::to_owned),
        error_code: None,
        idempotency_key: Some(format!("{bulk}:{index}")),
        updated_at: 2_000,
    }
}

/// A consistent world: a full refund, a partial one next to a failed one, one waiting for
/// approval, one still pending at the provider, a refund at another provider, and a finished
/// batch whose jobs match their refunds.
fn clean() -> (Books, Ledger) {
    use LedgerStatus::*;
    let mut books = Books {
        payments: vec![
            payment("ch_full", 1000, 1000),
            payment("ch_part", 1000, 300 + 200 + 100),
            PaymentTotals {
                provider: "stripe".to_owned(),
                ..payment("ch_stripe", 500, 500)
            },
        ],
        refunds: vec![
            refund("rf_1", "ch_full", 1000, "succeeded"),
            refund("rf_2", "ch_part", 300, "succeeded"),
            refund("rf_3", "ch_part", 400, "failed"),
            RefundRow {
                provider_refund_id: None,
                ..refund("rf_4", "ch_part", 200, "requires_approval")
            },
            refund("rf_5", "ch_part", 100, "pending"),
            RefundRow {
                provider: "stripe".to_owned(),
                ..refund("rf_6", "ch_stripe", 500, "succeeded")
            },
        ],
        bulks: vec![bulk("bulk_1", "completed")],
        items: vec![
            item("bulk_1", 0, "succeeded", "ch_full", Some("rf_1")),
            BulkItemRow {
                error_code: Some("OVER_REFUND".to_owned()),
                ..item("bulk_1", 1, "failed", "ch_full", None)
            },
            BulkItemRow {
                error_code: Some("expired_or_canceled_card".to_owned()),
                ..item("bulk_1", 2, "failed", "ch_part", Some("rf_3"))
            },
        ],
        keys: vec![KeyRow {
            account_id: ACCT.to_owned(),
            key: "bulk_1:0".to_owned(),
            refund_id: "rf_1".to_owned(),
        }],
        events: Vec::new(),
    };
    books.refunds[0].idempotency_key = Some("bulk_1:0".to_owned());
    let ledger = Ledger {
        payments: vec![
            ledger_payment("ch_full", 1000, 1000),
            ledger_payment("ch_part", 1000, 400),
            ledger_payment("ch_untouched", 5000, 0),
        ],
        refunds: vec![
            ledger_refund("rf_1", "ch_full", 1000, Succeeded),
            ledger_refund("rf_2", "ch_part", 300, Succeeded),
            ledger_refund("rf_3", "ch_part", 400, Failed),
            ledger_refund("rf_5", "ch_part", 100, Pending),
        ],
        seen_before_books: None,
    };
    (books, ledger)
}

fn run(books: &Books, ledger: &Ledger) -> Report {
    check(books, ledger, CheckOptions::default())
}

/// The kinds of the report's violations, in order.
fn kinds(report: &Report) -> Vec<ViolationKind> {
    report.violations.iter().map(|v| v.kind).collect()
}

/// The one violation of `report`, which must be of `kind`.
fn only(report: &Report, kind: ViolationKind) -> &Violation {
    assert_eq!(kinds(report), [kind], "{}", report.human());
    &report.violations[0]
}

#[test]
fn a_consistent_world_has_no_violation() {
    let (books, ledger) = clean();
    let report = run(&books, &ledger);
    assert!(report.ok, "{}", report.human());
    assert!(report.violations.is_empty());
    assert!(report.warnings.is_empty());
    assert_eq!(report.refunds_checked, 5);
    assert_eq!(report.refunds_not_checked, 1);
    assert_eq!(report.provider_refunds, 4);
    // ch_full, ch_part and stripe's ch_stripe; the payment nobody refunded is not counted.
    assert_eq!(report.payments_checked, 3);
    assert_eq!(report.bulks_checked, 1);
    assert_eq!(report.bulk_items_checked, 3);
    assert_eq!(report.unresolved, 0);
    let settled = check(&books, &ledger, CheckOptions { settled: true });
    assert!(settled.ok, "{}", settled.human());
}

#[test]
fn the_provider_refunding_beyond_the_capture_is_a_violation() {
    let (books, mut ledger) = clean();
    // Someone refunded ch_part at the provider, outside this service, beyond what is left.
    ledger.refunds.push(LedgerRefund {
        idempotency_key: Some("rf_2".to_owned()),
        ..ledger_refund("rf_2", "ch_part", 700, LedgerStatus::Succeeded)
    });
    ledger.refunds.last_mut().unwrap().id = "re_other".to_owned();
    let report = run(&books, &ledger);
    let v = report
        .violations
        .iter()
        .find(|v| v.kind == ViolationKind::ProviderOverRefund)
        .expect("over-refund reported");
    assert_eq!(v.payment_id.as_deref(), Some("ch_part"));
    assert!(v.message.contains("total 1100"), "{}", v.message);
    assert!(v.message.contains("captured 1000"), "{}", v.message);

    // The provider's own counter is believed too, even without the refunds to show for it.
    let (books, mut ledger) = clean();
    ledger.payments[0].refunded = 1001;
    let v = only(&run(&books, &ledger), ViolationKind::ProviderOverRefund).clone();
    assert_eq!(v.payment_id.as_deref(), Some("ch_full"));
}

#[test]
fn a_reserved_amount_that_is_not_the_sum_of_holding_refunds_is_a_violation() {
    let (mut books, ledger) = clean();
    books.payments[1].reserved = 500;
    let report = run(&books, &ledger);
    let v = only(&report, ViolationKind::ReservationMismatch);
    assert_eq!(
        (v.provider.as_deref(), v.payment_id.as_deref()),
        (Some("sandbox"), Some("ch_part"))
    );
    assert!(v.message.contains("is 500"), "{}", v.message);
    assert!(v.message.contains("sum to 600"), "{}", v.message);

    // Refunds holding a reservation against a payment without a balance row.
    let (mut books, ledger) = clean();
    books.payments.remove(0);
    let v = only(&run(&books, &ledger), ViolationKind::ReservationMismatch).clone();
    assert!(v.message.contains("no balance row"), "{}", v.message);
}

#[test]
fn balances_are_summed_over_rows_of_several_accounts() {
    // Before the re-keying a payment could have one balance row per account: the sums must
    // still add up, and their total must stay within the capture.
    let (mut books, ledger) = clean();
    books.payments[0] = PaymentTotals {
        reserved: 1000 + 1000,
        rows: 2,
        ..payment("ch_full", 1000, 0)
    };
    books.refunds.push(RefundRow {
        account_id: "acct_other".to_owned(),
        provider_refund_id: None,
        ..refund("rf_7", "ch_full", 1000, "requires_approval")
    });
    let report = run(&books, &ledger);
    let v = only(&report, ViolationKind::ReservedOverCaptured);
    assert!(v.message.contains("2000"), "{}", v.message);
    assert!(v.message.contains("2 balance rows"), "{}", v.message);
}

#[test]
fn two_provider_refunds_for_one_refund_are_a_violation() {
    // By metadata: sent twice with different keys.
    let (books, mut ledger) = clean();
    ledger.refunds.push(LedgerRefund {
        id: "re_again".to_owned(),
        idempotency_key: Some("some-other-key".to_owned()),
        ..ledger_refund("rf_1", "ch_full", 1000, LedgerStatus::Failed)
    });
    let report = run(&books, &ledger);
    let v = only(&report, ViolationKind::DuplicateProviderRefund);
    assert_eq!(v.refund_id.as_deref(), Some("rf_1"));
    assert!(v.message.contains("re_rf_1") && v.message.contains("re_again"));

    // By idempotency key alone.
    let (books, mut ledger) = clean();
    ledger.refunds.push(LedgerRefund {
        id: "re_again".to_owned(),
        refund_id: None,
        ..ledger_refund("rf_3", "ch_part", 400, LedgerStatus::Failed)
    });
    let v = only(
        &run(&books, &ledger),
        ViolationKind::DuplicateProviderRefund,
    )
    .clone();
    assert_eq!(v.refund_id.as_deref(), Some("rf_3"));
}

#[test]
fn a_released_refund_the_provider_paid_is_a_violation() {
    // FAILED here, released; the provider refunded it anyway: the payment can be refunded twice.
    let (books, mut ledger) = clean();
    ledger.refunds[2].status = LedgerStatus::Succeeded;
    ledger.payments[1].refunded = 800;
    let report = run(&books, &ledger);
    let v = only(&report, ViolationKind::ReleasedButRefunded);
    assert_eq!(v.refund_id.as_deref(), Some("rf_3"));
    assert_eq!(v.provider_refund_id.as_deref(), Some("re_rf_3"));

    // CANCELED here (rejected), pending at the provider.
    let (mut books, mut ledger) = clean();
    books.refunds[2].status = "canceled".to_owned();
    books.items.remove(2); // the job that reports rf_3 failed
    ledger.refunds[2].status = LedgerStatus::Pending;
    let v = only(&run(&books, &ledger), ViolationKind::ReleasedButRefunded).clone();
    assert!(v.message.starts_with("canceled here"), "{}", v.message);
}

#[test]
fn a_succeeded_refund_must_have_succeeded_at_the_provider() {
    let (books, mut ledger) = clean();
    ledger.refunds.remove(1);
    ledger.payments[1].refunded = 100;
    let v = only(
        &run(&books, &ledger),
        ViolationKind::SucceededMissingAtProvider,
    )
    .clone();
    assert_eq!(v.refund_id.as_deref(), Some("rf_2"));

    let (books, mut ledger) = clean();
    ledger.refunds[1].status = LedgerStatus::Failed;
    ledger.payments[1].refunded = 100;
    let v = only(&run(&books, &ledger), ViolationKind::SucceededNotAtProvider).clone();
    assert!(v.message.contains("failed"), "{}", v.message);
}

#[test]
fn amounts_must_agree_with_the_provider() {
    let (books, mut ledger) = clean();
    ledger.refunds[1].amount = 350;
    ledger.payments[1].refunded = 450;
    let v = only(&run(&books, &ledger), ViolationKind::AmountMismatch).clone();
    assert_eq!(v.refund_id.as_deref(), Some("rf_2"));
    assert!(v.message.contains("300") && v.message.contains("350"));
}

#[test]
fn our_provider_refund_id_must_be_the_providers() {
    let (mut books, ledger) = clean();
    books.refunds[1].provider_refund_id = Some("re_someone_else".to_owned());
    let v = only(
        &run(&books, &ledger),
        ViolationKind::ProviderRefundIdMismatch,
    )
    .clone();
    assert_eq!(v.provider_refund_id.as_deref(), Some("re_someone_else"));
}

#[test]
fn a_refund_awaiting_approval_must_not_be_at_the_provider() {
    let (books, mut ledger) = clean();
    ledger.refunds.push(ledger_refund(
        "rf_4",
        "ch_part",
        200,
        LedgerStatus::Succeeded,
    ));
    ledger.payments[1].refunded = 600;
    let v = only(&run(&books, &ledger), ViolationKind::SentWithoutApproval).clone();
    assert_eq!(v.refund_id.as_deref(), Some("rf_4"));
}

#[test]
fn a_provider_refund_with_no_refund_of_ours_is_an_orphan() {
    let (books, mut ledger) = clean();
    ledger.refunds.push(LedgerRefund {
        id: "re_orphan".to_owned(),
        idempotency_key: Some("rf_unknown".to_owned()),
        refund_id: None,
        ..ledger_refund("x", "ch_part", 50, LedgerStatus::Succeeded)
    });
    ledger.payments[1].refunded = 450;
    let report = run(&books, &ledger);
    let v = only(&report, ViolationKind::OrphanProviderRefund);
    assert_eq!(v.provider_refund_id.as_deref(), Some("re_orphan"));
    assert!(v.message.contains("rf_unknown"), "{}", v.message);

    // One that appeared after our books were read may be a refund created meanwhile.
    ledger.seen_before_books = Some(
        ledger
            .refunds
            .iter()
            .map(|r| r.id.clone())
            .filter(|id| id != "re_orphan")
            .collect::<HashSet<_>>(),
    );
    let report = run(&books, &ledger);
    assert!(report.ok, "{}", report.human());
    assert_eq!(report.provider_refunds_too_new, 1);
}

#[test]
fn a_pending_refund_the_provider_settled_is_unresolved() {
    let (books, mut ledger) = clean();
    ledger.refunds[3].status = LedgerStatus::Succeeded;
    let report = run(&books, &ledger);
    assert!(report.ok, "a warning only: {}", report.human());
    assert_eq!(report.unresolved, 1);
    assert_eq!(report.warnings[0].kind, ViolationKind::Unresolved);
    assert_eq!(report.warnings[0].refund_id.as_deref(), Some("rf_5"));

    let report = check(&books, &ledger, CheckOptions { settled: true });
    let v = only(&report, ViolationKind::Unresolved);
    assert!(v.message.contains("succeeded"), "{}", v.message);

    // Absent at the provider: never sent, or sent and lost.
    let (books, mut ledger) = clean();
    ledger.refunds.remove(3);
    let report = check(&books, &ledger, CheckOptions { settled: true });
    let v = only(&report, ViolationKind::Unresolved);
    assert!(v.message.contains("no refund"), "{}", v.message);
}

#[test]
fn a_finished_batch_has_only_finished_jobs() {
    let (mut books, ledger) = clean();
    books
        .items
        .push(item("bulk_1", 3, "running", "ch_part", None));
    let v = only(&run(&books, &ledger), ViolationKind::BulkItemNotTerminal).clone();
    assert_eq!(
        (v.bulk_id.as_deref(), v.item_index),
        (Some("bulk_1"), Some(3))
    );

    // A running batch may have running jobs.
    books.bulks[0].state = "running".to_owned();
    assert!(run(&books, &ledger).ok);
}

#[test]
fn a_job_must_name_a_refund_that_exists_and_agrees() {
    let (mut books, ledger) = clean();
    books.items[0].refund_id = Some("rf_gone".to_owned());
    let v = only(&run(&books, &ledger), ViolationKind::BulkItemUnknownRefund).clone();
    assert_eq!(v.refund_id.as_deref(), Some("rf_gone"));

    let (mut books, ledger) = clean();
    books.items[2].refund_id = Some("rf_2".to_owned());
    let v = only(&run(&books, &ledger), ViolationKind::BulkItemStatusMismatch).clone();
    assert!(v.message.contains("succeeded"), "{}", v.message);

    let (mut books, ledger) = clean();
    books.items[0].refund_id = None;
    only(&run(&books, &ledger), ViolationKind::BulkItemWithoutRefund);
}

#[test]
fn a_failed_job_whose_refund_exists_must_name_it() {
    // Found through the idempotency key table.
    let (mut books, ledger) = clean();
    books.items[0].status = "failed".to_owned();
    books.items[0].refund_id = None;
    books.items[0].error_code = Some("UNAVAILABLE".to_owned());
    let v = only(
        &run(&books, &ledger),
        ViolationKind::BulkItemFailedWithRefund,
    )
    .clone();
    assert_eq!(v.refund_id.as_deref(), Some("rf_1"));
    assert!(v.message.contains("bulk_1:0"), "{}", v.message);

    // Found through the refund's own key column once the key row is gone (expired, purged).
    books.keys.clear();
    only(
        &run(&books, &ledger),
        ViolationKind::BulkItemFailedWithRefund,
    );

    // A key first used for another request is that request's refund, not the job's.
    books.items[0].error_code = Some("IDEMPOTENCY_KEY_REUSED".to_owned());
    assert!(run(&books, &ledger).ok);

    // A refund made with the key after the job reported (the batch sent again, whose own job
    // names it) does not make the job's failure false.
    let (mut books, ledger) = clean();
    books.items[0].status = "failed".to_owned();
    books.items[0].refund_id = None;
    books.items[0].error_code = Some("ALREADY_REFUNDED".to_owned());
    books.items[0].updated_at = 500;
    assert!(
        !run(&books, &ledger)
            .violations
            .iter()
            .any(|v| v.kind == ViolationKind::BulkItemFailedWithRefund)
    );
}

#[test]
fn rows_the_service_never_writes_are_reported() {
    let (mut books, ledger) = clean();
    books.refunds[4].status = "settled".to_owned();
    books.bulks[0].state = "done".to_owned();
    books.items[1].status = "weird".to_owned();
    // The unparseable refund neither holds nor frees its reservation: the balance is off too.
    let report = run(&books, &ledger);
    assert_eq!(
        kinds(&report),
        [
            ViolationKind::CorruptRow,
            ViolationKind::ReservationMismatch,
            ViolationKind::CorruptRow,
            ViolationKind::CorruptRow,
        ],
        "{}",
        report.human()
    );
}

#[test]
fn the_json_report_names_kinds_and_ids() {
    let (mut books, ledger) = clean();
    books.payments[1].reserved = 500;
    let json = serde_json::to_value(run(&books, &ledger)).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["violations"][0]["kind"], "reservation_mismatch");
    assert_eq!(json["violations"][0]["payment_id"], "ch_part");
    assert!(json["violations"][0].get("refund_id").is_none());
    assert_eq!(json["refunds_checked"], 5);
}

// === bookkeeping, property-tested ===

/// What can happen to a refund after it is created.
#[derive(Debug, Clone, Copy)]
enum Fate {
    StaysPending,
    Succeeds,
    Fails,
    WaitsForApproval,
    Rejected,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        Just(Fate::StaysPending),
        Just(Fate::Succeeds),
        Just(Fate::Fails),
        Just(Fate::WaitsForApproval),
        Just(Fate::Rejected),
    ]
}

/// Books kept the way the store keeps them — reserve on creation, release on FAILED or
/// CANCELED — over random refunds of a few payments, with the matching ledger.
fn bookkeeping(refunds: &[(usize, i64, Fate)]) -> (Books, Ledger) {
    let captured = 10_000;
    let ids = ["ch_a", "ch_b", "ch_c"];
    let mut books = Books::default();
    let mut ledger = Ledger::default();
    let mut reserved = [0i64; 3];
    let mut refunded = [0i64; 3];
    for (n, &(p, amount, fate)) in refunds.iter().enumerate() {
        if reserved[p] + amount > captured {
            continue; // refused as an over-refund: nothing stored
        }
        let id = format!("rf_{n}");
        let (status, at_provider) = match fate {
            Fate::StaysPending => ("pending", Some(LedgerStatus::Pending)),
            Fate::Succeeds => ("succeeded", Some(LedgerStatus::Succeeded)),
            Fate::Fails => ("failed", Some(LedgerStatus::Failed)),
            Fate::WaitsForApproval => ("requires_approval", None),
            Fate::Rejected => ("canceled", None),
        };
        reserved[p] += amount;
        if matches!(fate, Fate::Fails | Fate::Rejected) {
            reserved[p] -= amount;
        }
        let mut row = refund(&id, ids[p], amount, status);
        if let Some(s) = at_provider {
            if s.is_active() {
                refunded[p] += amount;
            }
            ledger.refunds.push(ledger_refund(&id, ids[p], amount, s));
        } else {
            row.provider_refund_id = None;
        }
        books.refunds.push(row);
    }
    for (p, id) in ids.iter().enumerate() {
        if books.refunds.iter().any(|r| r.payment_id == *id) {
            books.payments.push(payment(id, captured, reserved[p]));
        }
        ledger
            .payments
            .push(ledger_payment(id, captured, refunded[p]));
    }
    (books, ledger)
}

proptest! {
    #[test]
    fn books_kept_by_the_rules_always_balance(
        refunds in prop::collection::vec((0usize..3, 1i64..4_000, fate()), 0..40),
    ) {
        let (books, ledger) = bookkeeping(&refunds);
        let report = run(&books, &ledger);
        prop_assert!(report.ok, "{}", report.human());
    }

    #[test]
    fn any_drift_of_a_reserved_amount_is_found_on_that_payment(
        refunds in prop::collection::vec((0usize..3, 1i64..4_000, fate()), 1..40),
        pick in any::<prop::sample::Index>(),
        drift in prop_oneof![-5_000i64..-1, 1i64..5_000],
    ) {
        let (mut books, ledger) = bookkeeping(&refunds);
        prop_assume!(!books.payments.is_empty());
        let i = pick.index(books.payments.len());
        books.payments[i].reserved += drift;
        let report = run(&books, &ledger);
        let mismatches: Vec<&Violation> = report
            .violations
            .iter()
            .filter(|v| v.kind == ViolationKind::ReservationMismatch)
            .collect();
        prop_assert_eq!(mismatches.len(), 1, "{}", report.human());
        prop_assert_eq!(
            mismatches[0].payment_id.as_deref(),
            Some(books.payments[i].payment_id.as_str())
        );
    }
}

#[test]
fn the_sandbox_ledger_converts_with_our_refund_id_from_its_metadata() {
    let refund = crate::sandbox::Refund {
        id: "re_sbx_1".to_owned(),
        payment: "ch_sbx_1".to_owned(),
        amount: 250,
        currency: "EUR".to_owned(),
        status: crate::sandbox::RefundStatus::Canceled,
        reason: None,
        metadata: [
            ("refund_id".to_owned(), "rf_9".to_owned()),
            ("order".to_owned(), "42".to_owned()),
        ]
        .into(),
        idempotency_key: Some("rf_9".to_owned()),
        failure_code: None,
        failure_reason: None,
        created: 0,
    };
    let converted = LedgerRefund::from(refund);
    assert_eq!(converted.refund_id.as_deref(), Some("rf_9"));
    assert_eq!(converted.idempotency_key.as_deref(), Some("rf_9"));
    assert_eq!(converted.status, LedgerStatus::Canceled);
    assert!(!converted.status.is_active());
    let payment = LedgerPayment::from(crate::sandbox::Payment {
        id: "ch_sbx_1".to_owned(),
        amount: 1000,
        amount_refunded: 250,
        currency: "EUR".to_owned(),
        status: crate::sandbox::PaymentStatus::Succeeded,
        fail_refunds: false,
        created: 0,
    });
    assert_eq!((payment.captured, payment.refunded), (1000, 250));
}

// === the event log ===

/// The events the service writes for `books`' refunds and batches, numbered from 1.
fn events_of(books: &Books) -> Vec<EventRow> {
    let mut told: Vec<(String, &str, i64)> = Vec::new();
    for b in &books.bulks {
        told.push((b.id.clone(), "bulk_refund.accepted", b.created_at));
    }
    for r in &books.refunds {
        told.push((r.id.clone(), "refund.created", r.created_at));
        match r.status.as_str() {
            "requires_approval" => {
                told.push((r.id.clone(), "refund.requires_approval", r.created_at))
            }
            "succeeded" => told.push((r.id.clone(), "refund.succeeded", r.created_at)),
            "failed" => told.push((r.id.clone(), "refund.failed", r.created_at)),
            "canceled" => told.push((r.id.clone(), "refund.canceled", r.created_at)),
            _ => {}
        }
    }
    for b in &books.bulks {
        match b.state.as_str() {
            "completed" | "aborted" => {
                told.push((b.id.clone(), "bulk_refund.completed", b.created_at))
            }
            "canceled" => told.push((b.id.clone(), "bulk_refund.canceled", b.created_at)),
            _ => {}
        }
    }
    told.into_iter()
        .zip(1..)
        .map(|((resource_id, kind, created_at), sequence)| EventRow {
            account_id: ACCT.to_owned(),
            sequence,
            kind: kind.to_owned(),
            resource_id,
            created_at,
        })
        .collect()
}

fn with_events() -> (Books, Ledger) {
    let (mut books, ledger) = clean();
    books.events = events_of(&books);
    (books, ledger)
}

/// Re-numbers `events` 1, 2, 3, ... in their order (after one was removed or changed).
fn renumber(events: &mut [EventRow]) {
    for (e, n) in events.iter_mut().zip(1..) {
        e.sequence = n;
    }
}

#[test]
fn events_that_tell_every_change_once_are_consistent() {
    let (books, ledger) = with_events();
    let report = run(&books, &ledger);
    assert!(report.ok, "{}", report.human());
    assert_eq!(report.events_checked, books.events.len() as u64);
    // Six refunds created, one asking for approval, four ended; the batch accepted and ended.
    assert_eq!(report.events_checked, 13);
}

#[test]
fn a_settled_refund_without_its_end_event_is_reported() {
    let (mut books, ledger) = with_events();
    books
        .events
        .retain(|e| !(e.resource_id == "rf_1" && e.kind == "refund.succeeded"));
    renumber(&mut books.events);
    let report = run(&books, &ledger);
    let v = only(&report, ViolationKind::EventMissing);
    assert_eq!(v.refund_id.as_deref(), Some("rf_1"));
}

#[test]
fn an_end_that_contradicts_the_refund_or_is_told_twice_is_reported() {
    let (mut books, ledger) = with_events();
    for e in &mut books.events {
        if e.resource_id == "rf_3" && e.kind == "refund.failed" {
            e.kind = "refund.succeeded".to_owned();
        }
    }
    let report = run(&books, &ledger);
    let v = only(&report, ViolationKind::EventMismatch);
    assert_eq!(v.refund_id.as_deref(), Some("rf_3"));

    // A pending refund told as ended, and a creation told twice.
    let (mut books, ledger) = with_events();
    let mut extra = books.events[0].clone();
    extra.resource_id = "rf_5".to_owned();
    extra.kind = "refund.succeeded".to_owned();
    books.events.push(extra.clone());
    extra.kind = "refund.created".to_owned();
    extra.resource_id = "rf_2".to_owned();
    books.events.push(extra);
    renumber(&mut books.events);
    let report = run(&books, &ledger);
    assert_eq!(
        kinds(&report),
        [ViolationKind::EventMismatch, ViolationKind::EventMismatch],
        "{}",
        report.human()
    );
}

#[test]
fn sequences_that_repeat_or_skip_are_reported() {
    let (mut books, ledger) = with_events();
    books.events[3].sequence = 3;
    let report = run(&books, &ledger);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.kind == ViolationKind::EventSequenceGap
                && v.message.contains("two events numbered 3")),
        "{}",
        report.human()
    );

    let (mut books, ledger) = with_events();
    books.events.remove(5);
    let report = run(&books, &ledger);
    assert!(
        kinds(&report).contains(&ViolationKind::EventSequenceGap),
        "{}",
        report.human()
    );
}

#[test]
fn a_batch_whose_end_event_contradicts_its_state_is_reported() {
    let (mut books, ledger) = with_events();
    books.bulks[0].state = "canceled".to_owned();
    let report = run(&books, &ledger);
    let v = only(&report, ViolationKind::EventMismatch);
    assert_eq!(v.bulk_id.as_deref(), Some("bulk_1"));
}

#[test]
fn changes_older_than_the_oldest_kept_event_are_not_judged() {
    // rf_1 was made before the retention's cutoff: its events were pruned, oldest first.
    let (mut books, ledger) = clean();
    books.refunds[0].created_at = 500;
    books.events = events_of(&books);
    books.events.retain(|e| e.resource_id != "rf_1");
    // What is kept still runs without a gap, from where pruning stopped.
    renumber_from(&mut books.events, 3);
    let report = run(&books, &ledger);
    assert!(report.ok, "{}", report.human());
}

fn renumber_from(events: &mut [EventRow], first: i64) {
    for (e, n) in events.iter_mut().zip(first..) {
        e.sequence = n;
    }
}
