//! The event log against the books it tells of: every refund and batch has the events its
//! changes wrote in their own transactions — one `refund.created`, one end event matching how
//! it ended and none before — and each account's sequences run without a repeat or a gap.
//!
//! Events past their retention are pruned, oldest first: only refunds and batches created at or
//! after the account's oldest kept event are judged, and an account with no events at all is not
//! judged (nothing of it is recent enough to be kept).

use std::collections::HashMap;

use super::report::{Violation, ViolationKind as K};
use crate::domain::{BulkState, EventType, RefundStatus};
use crate::store::{Books, EventRow};

/// Checks the events of `books`; returns the violations and how many events were read.
pub(super) fn check_events(books: &Books) -> (Vec<Violation>, u64) {
    let mut found = Vec::new();
    // Per account: the oldest kept event's time, and its sequences in order.
    let mut oldest: HashMap<&str, i64> = HashMap::new();
    let mut by_account: HashMap<&str, Vec<&EventRow>> = HashMap::new();
    let mut told: HashMap<(&str, &str), u32> = HashMap::new();
    for e in &books.events {
        let t = oldest.entry(e.account_id.as_str()).or_insert(e.created_at);
        *t = (*t).min(e.created_at);
        by_account.entry(e.account_id.as_str()).or_default().push(e);
        *told
            .entry((e.resource_id.as_str(), e.kind.as_str()))
            .or_default() += 1;
        if EventType::parse(&e.kind).is_none() {
            found.push(Violation::new(
                K::CorruptRow,
                format!(
                    "event {} of account {} has the type {:?}, not one the service writes",
                    e.sequence, e.account_id, e.kind
                ),
            ));
        }
    }
    for (account, mut events) in by_account {
        events.sort_by_key(|e| e.sequence);
        for pair in events.windows(2) {
            let (a, b) = (pair[0].sequence, pair[1].sequence);
            if b != a + 1 {
                found.push(Violation::new(
                    K::EventSequenceGap,
                    if a == b {
                        format!("account {account} has two events numbered {a}")
                    } else {
                        format!("account {account}'s events jump from sequence {a} to {b}")
                    },
                ));
            }
        }
    }
    let count = |resource: &str, kind: EventType| -> u32 {
        told.get(&(resource, kind.as_str())).copied().unwrap_or(0)
    };
    let judged = |account: &str, created_at: i64| {
        oldest
            .get(account)
            .is_some_and(|&cutoff| created_at >= cutoff)
    };

    for r in &books.refunds {
        let Some(status) = RefundStatus::parse(&r.status) else {
            continue; // reported as a corrupt row by the refund checks
        };
        if !judged(&r.account_id, r.created_at) {
            continue;
        }
        let created = count(&r.id, EventType::RefundCreated);
        if created != 1 {
            found.push(
                Violation::new(
                    if created == 0 {
                        K::EventMissing
                    } else {
                        K::EventMismatch
                    },
                    format!("the refund has {created} refund.created events, not one"),
                )
                .refund(&r.id),
            );
        }
        if count(&r.id, EventType::RefundRequiresApproval) > 1 {
            found.push(
                Violation::new(
                    K::EventMismatch,
                    "the refund's approval was asked for twice",
                )
                .refund(&r.id),
            );
        }
        let ends = [
            EventType::RefundSucceeded,
            EventType::RefundFailed,
            EventType::RefundCanceled,
        ];
        let told_ends: Vec<(EventType, u32)> = ends
            .into_iter()
            .map(|t| (t, count(&r.id, t)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let expected = status
            .is_terminal()
            .then(|| EventType::of_refund_status(status))
            .flatten();
        match (expected, told_ends.as_slice()) {
            (None, []) => {}
            (Some(want), [(got, 1)]) if *got == want => {}
            (Some(want), []) => found.push(
                Violation::new(
                    K::EventMissing,
                    format!(
                        "the refund is {} but has no {} event",
                        r.status,
                        want.as_str()
                    ),
                )
                .refund(&r.id),
            ),
            (_, told_ends) => found.push(
                Violation::new(
                    K::EventMismatch,
                    format!(
                        "the refund is {} but its end was told as {}",
                        r.status,
                        told_ends
                            .iter()
                            .map(|(t, n)| format!("{} x{n}", t.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .refund(&r.id),
            ),
        }
    }

    for b in &books.bulks {
        let Some(state) = BulkState::parse(&b.state) else {
            continue;
        };
        if !judged(&b.account_id, b.created_at) {
            continue;
        }
        let mut problems = Vec::new();
        let accepted = count(&b.id, EventType::BulkAccepted);
        if accepted != 1 {
            problems.push((
                if accepted == 0 {
                    K::EventMissing
                } else {
                    K::EventMismatch
                },
                format!("the batch has {accepted} bulk_refund.accepted events, not one"),
            ));
        }
        let completed = count(&b.id, EventType::BulkCompleted);
        let canceled = count(&b.id, EventType::BulkCanceled);
        let want = match state {
            BulkState::Running => (0, 0),
            BulkState::Completed | BulkState::Aborted => (1, 0),
            BulkState::Canceled => (0, 1),
        };
        if (completed, canceled) != want {
            let kind = if completed + canceled == 0 {
                K::EventMissing
            } else {
                K::EventMismatch
            };
            problems.push((
                kind,
                format!(
                    "the batch is {} but has {completed} bulk_refund.completed and {canceled} \
                     bulk_refund.canceled events",
                    b.state
                ),
            ));
        }
        for (kind, message) in problems {
            let mut v = Violation::new(kind, message);
            v.bulk_id = Some(b.id.clone());
            found.push(v);
        }
    }
    (found, books.events.len() as u64)
}
