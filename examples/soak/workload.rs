//! The random mix the soak drives through the gRPC API, from several concurrent workers: single
//! refunds (partial and full, with and without idempotency keys, retried with the same key),
//! replays of finished keyed requests, races for the last units of a payment, batches (with
//! re-sends of their failed jobs under the original keys, and cancellations), and approvals
//! (sometimes twice at once). Each worker has its own RNG seeded from the run's seed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use refund_service::api::pb;
use refund_service::api::pb::bulk_refund_event::Event;
use tokio_stream::StreamExt as _;

use crate::client::{self, Client, item_status, refund_status, retryable, status_label};

/// Refunds above this (minor units of USD) wait for approval.
pub const APPROVAL_THRESHOLD: i64 = 8_000;
/// Per-call deadline of the driver's gRPC calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of one call, first included, on retryable codes.
const MAX_ATTEMPTS: u32 = 10;

/// Counts by operation kind and outcome, plus what the driver saw that must not happen.
#[derive(Default)]
pub struct Tally {
    ops: Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>,
    pub retries: AtomicU64,
    violations: Mutex<Vec<String>>,
}

impl Tally {
    pub fn record(&self, kind: &'static str, outcome: impl Into<String>) {
        *lock(&self.ops)
            .entry(kind)
            .or_default()
            .entry(outcome.into())
            .or_default() += 1;
    }

    /// Something the client itself saw that breaks a promise of the API.
    pub fn violation(&self, what: String) {
        eprintln!("soak: VIOLATION (client-observed): {what}");
        lock(&self.violations).push(what);
    }

    pub fn ops(&self) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
        lock(&self.ops).clone()
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    pub fn total(&self) -> u64 {
        lock(&self.ops).values().flat_map(|m| m.values()).sum()
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Debug)]
pub struct SeededPayment {
    pub id: String,
    pub amount: i64,
}

/// What the workers share.
pub struct Ctx {
    pub seed: u64,
    /// One client per replica for the requester (the bootstrap admin key) and the approver.
    pub requester: Vec<Client>,
    pub approver: Vec<Client>,
    /// Payments any operation may refund.
    pub payments: Vec<SeededPayment>,
    /// Untouched payments kept for races, taken one per race.
    pub race_pool: Mutex<Vec<SeededPayment>>,
    /// Refunds (single requests plus batch jobs) still to be asked for.
    pub budget: AtomicI64,
    /// No new operation starts after this.
    pub drive_until: Instant,
    /// Retries and batch streams give up after this.
    pub give_up_at: Instant,
    pub tally: Tally,
    /// Keyed requests that ended with a refund, for replays.
    pub finished: Mutex<Vec<(pb::CreateRefundRequest, String)>>,
    pub bulk_ids: Mutex<Vec<String>>,
    next_key: AtomicU64,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seed: u64,
        requester: Vec<Client>,
        approver: Vec<Client>,
        payments: Vec<SeededPayment>,
        race_pool: Vec<SeededPayment>,
        budget: i64,
        drive_until: Instant,
        give_up_at: Instant,
    ) -> Self {
        Self {
            seed,
            requester,
            approver,
            payments,
            race_pool: Mutex::new(race_pool),
            budget: AtomicI64::new(budget),
            drive_until,
            give_up_at,
            tally: Tally::default(),
            finished: Mutex::new(Vec::new()),
            bulk_ids: Mutex::new(Vec::new()),
            next_key: AtomicU64::new(1),
        }
    }

    fn key(&self, what: &str) -> String {
        format!(
            "soak-{}-{what}-{}",
            self.seed,
            self.next_key.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn requester(&self, rng: &mut StdRng) -> Client {
        self.requester[rng.random_range(0..self.requester.len())].clone()
    }

    fn approver(&self, rng: &mut StdRng) -> Client {
        self.approver[rng.random_range(0..self.approver.len())].clone()
    }

    /// Takes `n` refunds from the budget; false when it is spent.
    fn spend(&self, n: i64) -> bool {
        self.budget.fetch_sub(n, Ordering::Relaxed) >= n
    }

    fn payment(&self, rng: &mut StdRng) -> &SeededPayment {
        &self.payments[rng.random_range(0..self.payments.len())]
    }
}

/// One worker: operations until the drive ends or the budget is spent.
pub async fn worker(ctx: Arc<Ctx>, index: u64) {
    let ctx = &ctx;
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    while Instant::now() < ctx.drive_until && ctx.budget.load(Ordering::Relaxed) > 0 {
        let roll = rng.random_range(0..100);
        match roll {
            0..30 => single(ctx, &mut rng, false).await,
            30..40 => single(ctx, &mut rng, true).await,
            40..46 => replay(ctx, &mut rng).await,
            46..56 => race(ctx, &mut rng).await,
            56..72 => bulk(ctx, &mut rng, false).await,
            72..77 => bulk(ctx, &mut rng, true).await,
            _ => approval(ctx, &mut rng).await,
        }
    }
}

fn refund_request(
    ctx: &Ctx,
    rng: &mut StdRng,
    payment: &SeededPayment,
    full: bool,
    keyed: bool,
) -> pb::CreateRefundRequest {
    let amount = if full {
        None
    } else if rng.random_bool(0.1) {
        // Above the threshold: waits for approval.
        Some((APPROVAL_THRESHOLD + 500).min(payment.amount))
    } else {
        Some(rng.random_range(1..=30) * 100)
    };
    pb::CreateRefundRequest {
        payment_id: payment.id.clone(),
        amount,
        currency: "USD".into(),
        reason: pb::RefundReason::RequestedByCustomer as i32,
        metadata: HashMap::from([("soak".to_owned(), "1".to_owned())]),
        idempotency_key: if keyed { ctx.key("rf") } else { String::new() },
        ..Default::default()
    }
}

/// CreateRefund, sent again with the same request on retryable codes when it has a key. Without a
/// key a retry could legitimately refund twice, so it is not retried.
async fn create(
    ctx: &Ctx,
    rng: &mut StdRng,
    req: &pb::CreateRefundRequest,
) -> Result<pb::Refund, tonic::Status> {
    let retry = !req.idempotency_key.is_empty();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut call = tonic::Request::new(req.clone());
        call.set_timeout(CALL_TIMEOUT);
        match ctx.requester(rng).create_refund(call).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s)
                if retry
                    && retryable(s.code())
                    && attempt < MAX_ATTEMPTS
                    && Instant::now() < ctx.give_up_at =>
            {
                ctx.tally.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(rng, attempt)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

fn backoff(rng: &mut StdRng, attempt: u32) -> Duration {
    let base = 200u64 << attempt.min(4);
    Duration::from_millis(rng.random_range(base / 2..=base))
}

fn outcome(result: &Result<pb::Refund, tonic::Status>, retried_key: bool) -> String {
    match result {
        Ok(r) => refund_status(r.status).to_owned(),
        Err(s) if retried_key && retryable(s.code()) => format!("gave up: {}", status_label(s)),
        Err(s) => status_label(s),
    }
}

async fn single(ctx: &Arc<Ctx>, rng: &mut StdRng, full: bool) {
    if !ctx.spend(1) {
        return;
    }
    let keyed = rng.random_bool(0.75);
    let payment = ctx.payment(rng).clone();
    let req = refund_request(ctx, rng, &payment, full, keyed);
    let result = create(ctx, rng, &req).await;
    let kind = match (full, keyed) {
        (false, true) => "create_partial_keyed",
        (false, false) => "create_partial_unkeyed",
        (true, true) => "create_full_keyed",
        (true, false) => "create_full_unkeyed",
    };
    ctx.tally.record(kind, outcome(&result, keyed));
    if keyed && let Ok(r) = &result {
        let mut finished = lock(&ctx.finished);
        if finished.len() < 2_000 {
            finished.push((req, r.id.clone()));
        }
    }
}

/// Sends a finished keyed request again: it must come back as the same refund.
async fn replay(ctx: &Arc<Ctx>, rng: &mut StdRng) {
    let picked = {
        let finished = lock(&ctx.finished);
        if finished.is_empty() {
            None
        } else {
            Some(finished[rng.random_range(0..finished.len())].clone())
        }
    };
    let Some((req, id)) = picked else {
        return single(ctx, rng, false).await;
    };
    let result = create(ctx, rng, &req).await;
    match &result {
        Ok(r) if r.id != id => {
            ctx.tally.record("replay", "DIFFERENT REFUND");
            ctx.tally.violation(format!(
                "replay of key {} returned refund {} instead of {id}",
                req.idempotency_key, r.id
            ));
        }
        Ok(_) => ctx.tally.record("replay", "same refund"),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            ctx.tally.record("replay", status_label(s));
            ctx.tally.violation(format!(
                "replay of key {} (refund {id}) with the same parameters was refused: {}",
                req.idempotency_key,
                status_label(s)
            ));
        }
        Err(_) => ctx.tally.record("replay", outcome(&result, true)),
    }
}

/// 2 to 4 concurrent refunds of one untouched payment, each of more than half of it (or of all
/// of it): at most one may hold money.
async fn race(ctx: &Arc<Ctx>, rng: &mut StdRng) {
    let popped = lock(&ctx.race_pool).pop();
    let Some(payment) = popped else {
        return single(ctx, rng, false).await;
    };
    let n: i64 = rng.random_range(2..=4);
    if !ctx.spend(n) {
        return;
    }
    let full = rng.random_bool(0.4);
    let over_half = payment.amount / 2 + 100;
    let mut calls = Vec::new();
    for _ in 0..n {
        let keyed = rng.random_bool(0.8);
        let mut req = refund_request(ctx, rng, &payment, full, keyed);
        if !full {
            req.amount = Some(over_half);
        }
        let ctx = Arc::clone(ctx);
        let mut call_rng = StdRng::seed_from_u64(rng.random());
        calls.push(tokio::spawn(async move {
            let result = create(&ctx, &mut call_rng, &req).await;
            (req, result)
        }));
    }
    let kind = if full { "race_full" } else { "race_partial" };
    let mut winners = Vec::new();
    for call in calls {
        let Ok((req, result)) = call.await else {
            ctx.tally.record(kind, "driver task panicked");
            continue;
        };
        ctx.tally
            .record(kind, outcome(&result, !req.idempotency_key.is_empty()));
        if let Ok(r) = &result
            && client::holds_money(r.status)
        {
            winners.push(format!("{} ({})", r.id, refund_status(r.status)));
        }
    }
    // Each asked for more than half of the payment (or all of it), so two of them SUCCEEDED (a
    // final status) is more than was captured. Two answered PENDING can be legitimate (one may
    // fail later and release its amount before a retry of the other); the end check judges those.
    let succeeded = winners
        .iter()
        .filter(|w| w.ends_with("(SUCCEEDED)"))
        .count();
    if succeeded > 1 {
        ctx.tally.violation(format!(
            "race on payment {} (captured {}): {succeeded} of {n} concurrent {} refunds answered SUCCEEDED: {}",
            payment.id,
            payment.amount,
            if full { "full" } else { "over-half" },
            winners.join(", ")
        ));
    } else if winners.len() > 1 {
        ctx.tally.record(
            kind,
            "(race with 2+ answered holding money; judged at the end)",
        );
    }
}

/// What following a batch's stream gave.
#[derive(Default)]
struct BatchRun {
    bulk_id: Option<String>,
    results: BTreeMap<i32, pb::BulkJobResult>,
    summary: Option<pb::BulkSummary>,
    refused: Option<String>,
}

/// A batch of 5 to 25 jobs (or, to cancel, 30 to 60 at concurrency 2). Every job of some batches
/// has its own key; then the failed ones are sent again with those keys, in a new batch, as a
/// user re-sends a dead-letter file.
async fn bulk(ctx: &Arc<Ctx>, rng: &mut StdRng, cancel: bool) {
    let n: i64 = if cancel {
        rng.random_range(30..=60)
    } else {
        rng.random_range(5..=25)
    };
    if !ctx.spend(n) {
        return;
    }
    let job_keys = rng.random_bool(0.7);
    let jobs: Vec<pb::CreateRefundRequest> = (0..n)
        .map(|_| {
            let payment = ctx.payment(rng).clone();
            let full = rng.random_bool(0.3);
            refund_request(ctx, rng, &payment, full, job_keys)
        })
        .collect();
    let req = pb::BulkRefundRequest {
        jobs,
        abort_on_error: false,
        max_concurrency: if cancel { 2 } else { rng.random_range(2..=8) },
        idempotency_key: ctx.key("blk"),
        metadata: HashMap::new(),
    };
    let cancel_after = cancel.then(|| Duration::from_millis(rng.random_range(100..=1_500)));
    let run = follow(ctx, rng, &req, cancel_after).await;
    let kind = if cancel { "bulk_cancel" } else { "bulk" };
    tally_batch(ctx, kind, &run);

    if !job_keys || cancel || !rng.random_bool(0.6) {
        return;
    }
    // The dead-letter re-send: failed jobs, and jobs we never heard about, with their keys.
    let again: Vec<pb::CreateRefundRequest> = req
        .jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            run.results
                .get(&i32::try_from(*i).unwrap_or(i32::MAX))
                .is_none_or(|r| !r.success)
        })
        .map(|(_, job)| job.clone())
        .collect();
    if again.is_empty() {
        return;
    }
    let resend = pb::BulkRefundRequest {
        jobs: again,
        idempotency_key: ctx.key("blk-resend"),
        ..req
    };
    let run = follow(ctx, rng, &resend, None).await;
    tally_batch(ctx, "bulk_resend", &run);
}

fn tally_batch(ctx: &Ctx, kind: &'static str, run: &BatchRun) {
    let outcome = match (&run.summary, &run.refused) {
        (Some(s), _) => client::batch_state(s.state).to_owned(),
        (None, Some(why)) => format!("refused: {why}"),
        (None, None) if run.bulk_id.is_some() => "no summary (gave up following)".to_owned(),
        (None, None) => "never accepted (gave up)".to_owned(),
    };
    ctx.tally.record(kind, outcome);
    let job_kind = match kind {
        "bulk_cancel" => "bulk_cancel_job",
        "bulk_resend" => "bulk_resend_job",
        _ => "bulk_job",
    };
    for r in run.results.values() {
        let label = match &r.error {
            Some(e) if !r.success => format!("{} ({})", item_status(r.status), e.code),
            _ => item_status(r.status).to_owned(),
        };
        ctx.tally.record(job_kind, label);
    }
}

/// Sends a batch and follows its stream to the summary: a stream cut before the batch was
/// accepted is re-sent with the same key (which re-attaches), one cut later is re-opened with
/// WatchBulkRefund after the last sequence seen.
async fn follow(
    ctx: &Arc<Ctx>,
    rng: &mut StdRng,
    req: &pb::BulkRefundRequest,
    cancel_after: Option<Duration>,
) -> BatchRun {
    let mut run = BatchRun::default();
    let mut last_sequence = 0;
    let mut cancel_scheduled = false;
    for attempt in 1..=20 {
        if Instant::now() > ctx.give_up_at {
            break;
        }
        if attempt > 1 {
            ctx.tally.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(rng, attempt.min(5))).await;
        }
        let mut client = ctx.requester(rng);
        let opened = match &run.bulk_id {
            None => client.bulk_refund(req.clone()).await,
            Some(id) => {
                client
                    .watch_bulk_refund(pb::WatchBulkRefundRequest {
                        bulk_id: id.clone(),
                        after_sequence: last_sequence,
                    })
                    .await
            }
        };
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(s) if retryable(s.code()) => continue,
            Err(s) => {
                run.refused = Some(status_label(&s));
                return run;
            }
        };
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
            let event = match next {
                Ok(Some(Ok(event))) => event,
                // A cut, an error or a silent stream: open it again.
                Err(_) | Ok(None) | Ok(Some(Err(_))) => break,
            };
            last_sequence = last_sequence.max(event.sequence);
            match event.event {
                Some(Event::Accepted(a)) => {
                    if run.bulk_id.is_none() {
                        lock(&ctx.bulk_ids).push(a.bulk_id.clone());
                    }
                    run.bulk_id = Some(a.bulk_id.clone());
                    if let (Some(after), false) = (cancel_after, cancel_scheduled) {
                        cancel_scheduled = true;
                        let ctx = Arc::clone(ctx);
                        let mut client = ctx.requester(rng);
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            let mut label = String::new();
                            for _ in 0..5 {
                                match client
                                    .cancel_bulk_refund(pb::CancelBulkRefundRequest {
                                        bulk_id: a.bulk_id.clone(),
                                    })
                                    .await
                                {
                                    Ok(b) => {
                                        label = format!(
                                            "OK, batch {}",
                                            client::batch_state(b.into_inner().state)
                                        );
                                        break;
                                    }
                                    Err(s) => {
                                        label = status_label(&s);
                                        if !retryable(s.code()) {
                                            break;
                                        }
                                        tokio::time::sleep(Duration::from_millis(500)).await;
                                    }
                                }
                            }
                            ctx.tally.record("cancel_bulk", label);
                        });
                    }
                }
                Some(Event::Result(r)) => {
                    run.results.insert(r.index, r);
                }
                Some(Event::Summary(s)) => {
                    run.summary = Some(s);
                    return run;
                }
                // The batch held a provider's jobs through a spell of failures.
                Some(Event::ProviderWaiting(_)) => {
                    ctx.tally.record("bulk_provider_wait", "waiting")
                }
                Some(Event::ProviderWaitEnded(end)) => ctx.tally.record(
                    "bulk_provider_wait",
                    if end.gave_up { "gave up" } else { "ended" },
                ),
                Some(Event::Progress(_)) | None => {}
            }
        }
    }
    run
}

/// Approves or rejects a refund waiting for approval; sometimes twice at once (approve +
/// approve, approve + reject: one must lose), sometimes with the key that asked (must be refused).
async fn approval(ctx: &Arc<Ctx>, rng: &mut StdRng) {
    let listed = ctx
        .approver(rng)
        .list_refunds(pb::ListRefundsRequest {
            status: pb::RefundStatus::RequiresApproval as i32,
            page_size: 50,
            ..Default::default()
        })
        .await;
    let waiting = match listed {
        Ok(r) => r.into_inner().refunds,
        Err(s) => {
            ctx.tally.record("list_awaiting_approval", status_label(&s));
            return;
        }
    };
    if waiting.is_empty() {
        // Make one: a refund above the threshold.
        if !ctx.spend(1) {
            return;
        }
        let payment = ctx.payment(rng).clone();
        let mut req = refund_request(ctx, rng, &payment, false, true);
        req.amount = Some((APPROVAL_THRESHOLD + 500).min(payment.amount));
        let result = create(ctx, rng, &req).await;
        ctx.tally
            .record("create_above_threshold", outcome(&result, true));
        return;
    }
    let id = waiting[rng.random_range(0..waiting.len())].id.clone();
    let roll = rng.random_range(0..100);
    if roll < 8 {
        // The requester approving its own refund.
        let result = ctx
            .requester(rng)
            .approve_refund(pb::ApproveRefundRequest { id: id.clone() })
            .await;
        match result {
            Ok(r) => {
                ctx.tally.record("self_approve", "OK");
                ctx.tally.violation(format!(
                    "refund {id} was approved by the key that asked for it (now {})",
                    refund_status(r.into_inner().status)
                ));
            }
            Err(s) => ctx.tally.record("self_approve", status_label(&s)),
        }
        return;
    }
    let actions: &[bool] = match roll {
        // true = approve, false = reject
        8..55 => &[true],
        55..75 => &[false],
        75..90 => &[true, true],
        _ => &[true, false],
    };
    let kind = match actions {
        [true] => "approve",
        [false] => "reject",
        [true, true] => "approve_twice_concurrently",
        _ => "approve_and_reject_concurrently",
    };
    let mut calls = Vec::new();
    for &approve in actions {
        let mut client = ctx.approver(rng);
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            let mut last = None;
            for attempt in 0..3 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let mut call_client = client.clone();
                let result = if approve {
                    call_client
                        .approve_refund(pb::ApproveRefundRequest { id: id.clone() })
                        .await
                } else {
                    call_client
                        .reject_refund(pb::RejectRefundRequest { id: id.clone() })
                        .await
                };
                let retry = matches!(&result, Err(s) if retryable(s.code()));
                last = Some(result.map(tonic::Response::into_inner));
                if !retry {
                    break;
                }
                client = call_client;
            }
            (approve, last)
        }));
    }
    let mut oks = Vec::new();
    for call in calls {
        let Ok((approve, Some(result))) = call.await else {
            continue;
        };
        let verb = if approve { "approve" } else { "reject" };
        match result {
            Ok(r) => {
                ctx.tally
                    .record(kind, format!("{verb}: OK -> {}", refund_status(r.status)));
                oks.push(verb);
            }
            Err(s) => ctx
                .tally
                .record(kind, format!("{verb}: {}", status_label(&s))),
        }
    }
    if actions.len() == 2 && oks.len() == 2 {
        ctx.tally.violation(format!(
            "refund {id}: {} at once both answered OK",
            oks.join(" and ")
        ));
    }
}
