//! The checker proper: our books against the provider's ledger. No I/O of its own — it takes the
//! two snapshots and returns a [`Report`] — so every invariant is unit-tested with hand-built
//! snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::report::{Report, Violation, ViolationKind as K};
use crate::domain::{BulkState, ItemStatus, RefundStatus};
use crate::store::{Books, RefundRow};

/// The one provider with a ledger to compare with; other providers' refunds are counted as not
/// checked.
pub const LEDGER_PROVIDER: &str = "sandbox";

/// The provider's status of one of its refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerStatus {
    Pending,
    Succeeded,
    Failed,
    Canceled,
}

impl LedgerStatus {
    /// Pending and succeeded refunds take money from the payment; failed and canceled ones do not.
    pub fn is_active(self) -> bool {
        match self {
            Self::Pending | Self::Succeeded => true,
            Self::Failed | Self::Canceled => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }
}

/// A payment at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPayment {
    pub id: String,
    pub captured: i64,
    /// What the provider itself reports refunded (pending and succeeded refunds).
    pub refunded: i64,
    pub currency: String,
}

/// A refund in the provider's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRefund {
    /// The provider's refund id.
    pub id: String,
    pub payment: String,
    pub amount: i64,
    pub currency: String,
    pub status: LedgerStatus,
    /// The key it was created with: our refund id.
    pub idempotency_key: Option<String>,
    /// `metadata.refund_id`: our refund id again.
    pub refund_id: Option<String>,
}

/// The provider's side of the truth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub payments: Vec<LedgerPayment>,
    /// Read after our books, so a provider status is never older than ours.
    pub refunds: Vec<LedgerRefund>,
    /// The provider refund ids already in the ledger before our books were read. A refund is
    /// stored here before it is sent, so only those can be judged orphans: a later one may be
    /// a refund created while we read. `None` judges all.
    pub seen_before_books: Option<HashSet<String>>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Faults have stopped and everything has had time to settle: a PENDING refund the
    /// provider has settled, or never saw, is a violation rather than a warning.
    pub settled: bool,
}

/// Checks every invariant; see [`K`] for the list.
pub fn check(books: &Books, ledger: &Ledger, options: CheckOptions) -> Report {
    let mut c = Checker {
        report: Report {
            settled: options.settled,
            ..Report::default()
        },
        unresolved: Vec::new(),
    };
    let ours = c.parse_refunds(books);
    let mut payments = c.check_balances(books, &ours);
    c.check_provider_payments(ledger, &mut payments);
    let by_ours = c.match_ledger(ledger, &ours);
    c.check_refunds(books, &ours, &by_ours);
    c.check_bulks(books, &ours);
    let (event_violations, events_checked) = super::events::check_events(books);
    c.report.violations.extend(event_violations);
    c.report.events_checked = events_checked;

    let Checker {
        mut report,
        unresolved,
    } = c;
    report.payments_checked = payments.len() as u64;
    report.provider_refunds = ledger.refunds.len() as u64;
    report.unresolved = unresolved.len() as u64;
    if options.settled {
        report.violations.extend(unresolved);
    } else {
        report.warnings = unresolved;
    }
    report.ok = report.violations.is_empty();
    report
}

struct Checker {
    report: Report,
    unresolved: Vec<Violation>,
}

/// Our refunds by id, with their parsed status (`None`: a status the service never writes).
type Ours<'a> = HashMap<&'a str, (&'a RefundRow, Option<RefundStatus>)>;

impl Checker {
    fn violation(&mut self, v: Violation) {
        self.report.violations.push(v);
    }

    fn parse_refunds<'a>(&mut self, books: &'a Books) -> Ours<'a> {
        let mut ours = HashMap::with_capacity(books.refunds.len());
        for r in &books.refunds {
            let status = RefundStatus::parse(&r.status);
            if status.is_none() {
                self.violation(
                    Violation::new(
                        K::CorruptRow,
                        format!(
                            "the refund's status {:?} is not one the service writes",
                            r.status
                        ),
                    )
                    .payment(&r.provider, &r.payment_id)
                    .refund(&r.id),
                );
            }
            ours.insert(r.id.as_str(), (r, status));
        }
        ours
    }

    /// Per payment in our books: `reserved_amount` is the sum of its refunds that hold a
    /// reservation, and at most what was captured. Returns the payments looked at.
    fn check_balances<'a>(
        &mut self,
        books: &'a Books,
        ours: &Ours<'a>,
    ) -> BTreeSet<(&'a str, &'a str)> {
        let mut holding: BTreeMap<(&str, &str), (i64, u64)> = BTreeMap::new();
        for (row, status) in ours.values() {
            if status.is_some_and(RefundStatus::holds_reservation) {
                let entry = holding
                    .entry((row.provider.as_str(), row.payment_id.as_str()))
                    .or_default();
                entry.0 += row.amount;
                entry.1 += 1;
            }
        }
        let totals: BTreeMap<(&str, &str), _> = books
            .payments
            .iter()
            .map(|t| ((t.provider.as_str(), t.payment_id.as_str()), t))
            .collect();
        let keys: BTreeSet<(&str, &str)> = totals.keys().chain(holding.keys()).copied().collect();
        for &(provider, payment) in &keys {
            let total = totals.get(&(provider, payment));
            let reserved = total.map_or(0, |t| t.reserved);
            let (sum, n) = holding.get(&(provider, payment)).copied().unwrap_or((0, 0));
            let rows = match total {
                Some(t) if t.rows > 1 => format!(" (over its {} balance rows)", t.rows),
                Some(_) => String::new(),
                None => " (it has no balance row)".to_owned(),
            };
            if reserved != sum {
                self.violation(
                    Violation::new(
                        K::ReservationMismatch,
                        format!(
                            "reserved_amount is {reserved}{rows} but its {n} refunds holding a \
                             reservation (pending, succeeded, requires_approval) sum to {sum}"
                        ),
                    )
                    .payment(provider, payment),
                );
            }
            if let Some(t) = total
                && t.reserved > t.captured
            {
                self.violation(
                    Violation::new(
                        K::ReservedOverCaptured,
                        format!(
                            "reserved_amount is {}{rows}, more than the {} captured",
                            t.reserved, t.captured
                        ),
                    )
                    .payment(provider, payment),
                );
            }
        }
        keys
    }

    /// Per payment at the provider: its pending and succeeded refunds are at most what it
    /// captured.
    fn check_provider_payments<'a>(
        &mut self,
        ledger: &'a Ledger,
        payments: &mut BTreeSet<(&'a str, &'a str)>,
    ) {
        let mut active: BTreeMap<&str, (i64, u64)> = BTreeMap::new();
        for r in &ledger.refunds {
            let entry = active.entry(r.payment.as_str()).or_default();
            if r.status.is_active() {
                entry.0 += r.amount;
                entry.1 += 1;
            }
        }
        let known: HashMap<&str, &LedgerPayment> =
            ledger.payments.iter().map(|p| (p.id.as_str(), p)).collect();
        for p in &ledger.payments {
            let (sum, n) = active.get(p.id.as_str()).copied().unwrap_or((0, 0));
            if sum == 0 && p.refunded == 0 && !active.contains_key(p.id.as_str()) {
                // Never refunded by anyone: nothing to check, unless our books name it.
                continue;
            }
            payments.insert((LEDGER_PROVIDER, p.id.as_str()));
            if sum.max(p.refunded) > p.captured {
                self.violation(
                    Violation::new(
                        K::ProviderOverRefund,
                        format!(
                            "the provider's {n} pending and succeeded refunds total {sum} (it \
                             reports {} refunded) but it captured {}",
                            p.refunded, p.captured
                        ),
                    )
                    .payment(LEDGER_PROVIDER, &p.id),
                );
            }
        }
        for (&payment, &(sum, n)) in &active {
            if !known.contains_key(payment) {
                payments.insert((LEDGER_PROVIDER, payment));
                self.violation(
                    Violation::new(
                        K::ProviderOverRefund,
                        format!(
                            "the provider has {n} pending and succeeded refunds totalling {sum} of \
                             this payment but does not list the payment: what it captured is \
                             unknown"
                        ),
                    )
                    .payment(LEDGER_PROVIDER, payment),
                );
            }
        }
    }

    /// The provider's refunds by the refund id of ours they carry (idempotency key or
    /// `metadata.refund_id`); reports those carrying none of ours.
    fn match_ledger<'a>(
        &mut self,
        ledger: &'a Ledger,
        ours: &Ours<'_>,
    ) -> HashMap<&'a str, Vec<&'a LedgerRefund>> {
        let mut by_ours: HashMap<&str, Vec<&LedgerRefund>> = HashMap::new();
        for r in &ledger.refunds {
            let mut names: Vec<&str> = r
                .idempotency_key
                .iter()
                .chain(r.refund_id.iter())
                .map(String::as_str)
                .filter(|name| ours.contains_key(name))
                .collect();
            names.dedup();
            if names.is_empty() {
                let judged = ledger
                    .seen_before_books
                    .as_ref()
                    .is_none_or(|seen| seen.contains(&r.id));
                if judged {
                    self.violation(
                        Violation::new(
                            K::OrphanProviderRefund,
                            format!(
                                "the provider's {} refund of {} {} carries no refund id of ours \
                                 (idempotency key {:?}, metadata.refund_id {:?})",
                                r.status.as_str(),
                                r.amount,
                                r.currency,
                                r.idempotency_key.as_deref().unwrap_or(""),
                                r.refund_id.as_deref().unwrap_or("")
                            ),
                        )
                        .payment(LEDGER_PROVIDER, &r.payment)
                        .provider_refund(&r.id),
                    );
                } else {
                    self.report.provider_refunds_too_new += 1;
                }
            }
            for name in names {
                by_ours.entry(name).or_default().push(r);
            }
        }
        by_ours
    }

    /// Each of our refunds at the ledger's provider against the provider's refunds for it.
    fn check_refunds(
        &mut self,
        books: &Books,
        ours: &Ours<'_>,
        by_ours: &HashMap<&str, Vec<&LedgerRefund>>,
    ) {
        for r in &books.refunds {
            if r.provider != LEDGER_PROVIDER {
                self.report.refunds_not_checked += 1;
                continue;
            }
            let Some((_, Some(status))) = ours.get(r.id.as_str()) else {
                continue;
            };
            let status = *status;
            self.report.refunds_checked += 1;
            let matches: &[&LedgerRefund] = by_ours.get(r.id.as_str()).map_or(&[], Vec::as_slice);
            let at = |v: Violation| v.payment(&r.provider, &r.payment_id).refund(&r.id);

            if matches.len() > 1 {
                let list: Vec<String> = matches
                    .iter()
                    .map(|m| format!("{} ({} {})", m.id, m.status.as_str(), m.amount))
                    .collect();
                self.violation(at(Violation::new(
                    K::DuplicateProviderRefund,
                    format!(
                        "{} provider refunds carry this refund id: {}",
                        matches.len(),
                        list.join(", ")
                    ),
                )));
            }
            for m in matches {
                if m.amount != r.amount
                    || !m.currency.eq_ignore_ascii_case(&r.currency)
                    || m.payment != r.payment_id
                {
                    self.violation(
                        at(Violation::new(
                            K::AmountMismatch,
                            format!(
                                "ours is {} {} of {}, the provider's is {} {} of {}",
                                r.amount, r.currency, r.payment_id, m.amount, m.currency, m.payment
                            ),
                        ))
                        .provider_refund(&m.id),
                    );
                }
            }
            // With no provider refund at all, the status checks below say what that means.
            if let Some(pid) = &r.provider_refund_id
                && !matches.is_empty()
                && !matches.iter().any(|m| &m.id == pid)
            {
                let ids: Vec<&str> = matches.iter().map(|m| m.id.as_str()).collect();
                self.violation(
                    at(Violation::new(
                        K::ProviderRefundIdMismatch,
                        format!(
                            "our row names provider refund {pid}, but the provider's refund for \
                             it is {}",
                            ids.join(", ")
                        ),
                    ))
                    .provider_refund(pid),
                );
            }
            match status {
                RefundStatus::RequiresApproval => {
                    for m in matches {
                        self.violation(
                            at(Violation::new(
                                K::SentWithoutApproval,
                                format!(
                                    "requires_approval here, yet the provider has it ({})",
                                    m.status.as_str()
                                ),
                            ))
                            .provider_refund(&m.id),
                        );
                    }
                }
                RefundStatus::Failed | RefundStatus::Canceled => {
                    for m in matches.iter().filter(|m| m.status.is_active()) {
                        self.violation(
                            at(Violation::new(
                                K::ReleasedButRefunded,
                                format!(
                                    "{} here and its {} released, but the provider's refund is \
                                     {}: the money can be refunded twice",
                                    status.as_str(),
                                    r.amount,
                                    m.status.as_str()
                                ),
                            ))
                            .provider_refund(&m.id),
                        );
                    }
                }
                RefundStatus::Succeeded => {
                    if matches.is_empty() {
                        self.violation(at(Violation::new(
                            K::SucceededMissingAtProvider,
                            "succeeded here, but the provider has no refund carrying this \
                             refund id",
                        )));
                    } else if !matches.iter().any(|m| m.status == LedgerStatus::Succeeded) {
                        let m = matches[0];
                        self.violation(
                            at(Violation::new(
                                K::SucceededNotAtProvider,
                                format!(
                                    "succeeded here, but the provider's refund is {}",
                                    m.status.as_str()
                                ),
                            ))
                            .provider_refund(&m.id),
                        );
                    }
                }
                RefundStatus::Pending => {
                    if matches.is_empty() {
                        self.unresolved.push(at(Violation::new(
                            K::Unresolved,
                            "pending here, and the provider has no refund carrying this refund id",
                        )));
                    } else if matches.iter().all(|m| m.status != LedgerStatus::Pending) {
                        let m = matches[0];
                        self.unresolved.push(
                            at(Violation::new(
                                K::Unresolved,
                                format!(
                                    "pending here, but the provider's refund is {}",
                                    m.status.as_str()
                                ),
                            ))
                            .provider_refund(&m.id),
                        );
                    }
                }
            }
        }
    }

    /// Batches: a finished batch has only finished jobs; a job's refund exists, is named, and
    /// agrees with the job's status.
    fn check_bulks(&mut self, books: &Books, ours: &Ours<'_>) {
        let mut states: HashMap<&str, Option<BulkState>> = HashMap::new();
        for b in &books.bulks {
            let state = BulkState::parse(&b.state);
            if state.is_none() {
                let mut v = Violation::new(
                    K::CorruptRow,
                    format!(
                        "the batch's state {:?} is not one the service writes",
                        b.state
                    ),
                );
                v.bulk_id = Some(b.id.clone());
                self.violation(v);
            }
            states.insert(b.id.as_str(), state);
        }
        self.report.bulks_checked = books.bulks.len() as u64;
        let keys: HashMap<(&str, &str), &str> = books
            .keys
            .iter()
            .map(|k| {
                (
                    (k.account_id.as_str(), k.key.as_str()),
                    k.refund_id.as_str(),
                )
            })
            .collect();
        let mut by_key: HashMap<(&str, &str), Vec<&RefundRow>> = HashMap::new();
        for r in &books.refunds {
            if let Some(key) = &r.idempotency_key {
                by_key
                    .entry((r.account_id.as_str(), key.as_str()))
                    .or_default()
                    .push(r);
            }
        }

        for item in &books.items {
            self.report.bulk_items_checked += 1;
            let at = |v: Violation| v.item(&item.bulk_id, item.index);
            let Some(status) = ItemStatus::parse(&item.status) else {
                self.violation(at(Violation::new(
                    K::CorruptRow,
                    format!(
                        "the job's status {:?} is not one the service writes",
                        item.status
                    ),
                )));
                continue;
            };
            let finished = matches!(states.get(item.bulk_id.as_str()), Some(Some(s)) if *s != BulkState::Running);
            if finished && !status.is_final() {
                let state = states
                    .get(item.bulk_id.as_str())
                    .copied()
                    .flatten()
                    .map_or("?", BulkState::as_str);
                self.violation(at(Violation::new(
                    K::BulkItemNotTerminal,
                    format!(
                        "the batch is {state} but this job is still {}",
                        status.as_str()
                    ),
                )));
            }
            match &item.refund_id {
                Some(id) => match ours.get(id.as_str()) {
                    None => self.violation(
                        at(Violation::new(
                            K::BulkItemUnknownRefund,
                            format!("the job names refund {id}, which does not exist"),
                        ))
                        .refund(id),
                    ),
                    Some((refund, refund_status)) => {
                        if status == ItemStatus::Failed
                            && *refund_status != Some(RefundStatus::Failed)
                        {
                            self.violation(
                                at(Violation::new(
                                    K::BulkItemStatusMismatch,
                                    format!(
                                        "the job reports failed, but its refund is {}",
                                        refund.status
                                    ),
                                ))
                                .refund(id),
                            );
                        }
                    }
                },
                None => {
                    if matches!(status, ItemStatus::Succeeded | ItemStatus::RequiresApproval) {
                        self.violation(at(Violation::new(
                            K::BulkItemWithoutRefund,
                            format!("the job reports {} but names no refund", status.as_str()),
                        )));
                    }
                    // A key used before for a different request is that request's refund, not
                    // this job's.
                    let reused = item.error_code.as_deref() == Some("IDEMPOTENCY_KEY_REUSED");
                    if status == ItemStatus::Failed
                        && !reused
                        && let Some(key) = &item.idempotency_key
                    {
                        let account = item.account_id.as_str();
                        let candidates: Vec<&RefundRow> = match keys.get(&(account, key.as_str())) {
                            Some(id) => ours.get(id).map(|(r, _)| *r).into_iter().collect(),
                            None => by_key
                                .get(&(account, key.as_str()))
                                .cloned()
                                .unwrap_or_default(),
                        };
                        // Only a refund that existed when the job reported: one made later with
                        // the same key (the batch sent again, a retry) is that request's, and
                        // the job's failure was true when it was written.
                        if let Some(refund) = candidates.into_iter().find(|r| {
                            r.payment_id == item.payment_id
                                && r.provider == item.provider
                                && r.created_at <= item.updated_at
                        }) {
                            self.violation(
                                at(Violation::new(
                                    K::BulkItemFailedWithRefund,
                                    format!(
                                        "the job reports failed ({}) without naming a refund, but \
                                         refund {} ({}) was made with its idempotency key {key}",
                                        item.error_code.as_deref().unwrap_or("no code"),
                                        refund.id,
                                        refund.status
                                    ),
                                ))
                                .refund(&refund.id),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
