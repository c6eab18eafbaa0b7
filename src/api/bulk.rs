//! Bulk refund handlers and their proto <-> domain conversions.

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{
    IDEMPOTENCY_KEY_HEADER, bulk_id as parse_bulk_id, header, new_refund, new_refund_to_pb,
    refund_to_pb, timestamp_to_pb,
};
use super::pb;
use super::status::to_status;
use crate::domain::{
    AccountId, Bulk, BulkEvent, BulkJob, BulkState, FieldViolation, IdempotencyKey, ItemResult,
    ItemStatus, NewBulk, Principal, ProviderWait, RefundError, SequencedEvent, Violations,
    parse_metadata,
};
use crate::service::RefundService;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::BulkRefundEvent, Status>> + Send>>;

pub async fn bulk_refund(
    service: &RefundService,
    principal: Principal,
    request: Request<pb::BulkRefundRequest>,
) -> Result<Response<EventStream>, Status> {
    let account = principal.account;
    let header_key = header(&request, IDEMPOTENCY_KEY_HEADER);
    let msg = request.into_inner();
    let max_jobs = service.config().bulk.max_jobs as usize;
    if msg.jobs.len() > max_jobs {
        // Refuse before parsing thousands of jobs.
        return Err(to_status(RefundError::invalid(
            "jobs",
            format!(
                "a batch may have at most {max_jobs} jobs (the configured limit); got {}. Split it into several batches",
                msg.jobs.len()
            ),
        )));
    }
    let mut new = new_bulk(msg, header_key, service)
        .map_err(|v| to_status(RefundError::InvalidArgument(v)))?;
    new.created_by = Some(principal.key_id);
    let (bulk, _created) = service
        .create_bulk(&account, new)
        .await
        .map_err(to_status)?;
    let events = service
        .watch_bulk(&account, &bulk.id, 0)
        .await
        .map_err(to_status)?;
    Ok(Response::new(stream(events)))
}

pub async fn watch_bulk_refund(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::WatchBulkRefundRequest>,
) -> Result<Response<EventStream>, Status> {
    let pb::WatchBulkRefundRequest {
        bulk_id,
        after_sequence,
    } = request.into_inner();
    let bulk_id = parse_bulk_id(&bulk_id).map_err(to_status)?;
    let events = service
        .watch_bulk(&account, &bulk_id, after_sequence)
        .await
        .map_err(to_status)?;
    Ok(Response::new(stream(events)))
}

pub async fn get_bulk_refund(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::GetBulkRefundRequest>,
) -> Result<Response<pb::BulkRefundBatch>, Status> {
    let pb::GetBulkRefundRequest { bulk_id } = request.into_inner();
    let bulk_id = parse_bulk_id(&bulk_id).map_err(to_status)?;
    let bulk = service
        .get_bulk(&account, &bulk_id)
        .await
        .map_err(to_status)?;
    Ok(Response::new(bulk_to_pb(bulk)))
}

pub async fn cancel_bulk_refund(
    service: &RefundService,
    principal: Principal,
    request: Request<pb::CancelBulkRefundRequest>,
) -> Result<Response<pb::BulkRefundBatch>, Status> {
    let pb::CancelBulkRefundRequest { bulk_id } = request.into_inner();
    let bulk_id = parse_bulk_id(&bulk_id).map_err(to_status)?;
    let bulk = service
        .cancel_bulk(&principal.account, Some(&principal.key_id), &bulk_id)
        .await
        .map_err(to_status)?;
    Ok(Response::new(bulk_to_pb(bulk)))
}

pub async fn list_bulk_refund_items(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::ListBulkRefundItemsRequest>,
) -> Result<Response<pb::ListBulkRefundItemsResponse>, Status> {
    let pb::ListBulkRefundItemsRequest {
        bulk_id,
        status,
        page_size,
        page_token,
    } = request.into_inner();
    let bulk_id = parse_bulk_id(&bulk_id).map_err(to_status)?;
    let status = pb::BulkItemStatus::try_from(status)
        .map(item_status_from_pb)
        .map_err(|_| {
            to_status(RefundError::invalid(
                "status",
                "status is not a known BulkItemStatus",
            ))
        })?;
    let (items, next_page_token) = service
        .list_bulk_items(&account, &bulk_id, status, page_size, &page_token)
        .await
        .map_err(to_status)?;
    Ok(Response::new(pb::ListBulkRefundItemsResponse {
        items: items.into_iter().map(item_to_pb).collect(),
        next_page_token,
    }))
}

pub async fn list_bulk_refunds(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::ListBulkRefundsRequest>,
) -> Result<Response<pb::ListBulkRefundsResponse>, Status> {
    let pb::ListBulkRefundsRequest {
        state,
        page_size,
        page_token,
    } = request.into_inner();
    let state = pb::BulkRefundState::try_from(state)
        .map(state_from_pb)
        .map_err(|_| {
            to_status(RefundError::invalid(
                "state",
                "state is not a known BulkRefundState",
            ))
        })?;
    let (bulks, next_page_token) = service
        .list_bulks(&account, state, page_size, &page_token)
        .await
        .map_err(to_status)?;
    Ok(Response::new(pb::ListBulkRefundsResponse {
        batches: bulks.into_iter().map(bulk_to_pb).collect(),
        next_page_token,
    }))
}

fn stream(events: tokio::sync::mpsc::Receiver<Result<SequencedEvent, RefundError>>) -> EventStream {
    Box::pin(ReceiverStream::new(events).map(|e| e.map(event_to_pb).map_err(to_status)))
}

fn new_bulk(
    msg: pb::BulkRefundRequest,
    header_key: Option<String>,
    service: &RefundService,
) -> Result<NewBulk, Vec<FieldViolation>> {
    let pb::BulkRefundRequest {
        jobs,
        abort_on_error,
        max_concurrency,
        idempotency_key,
        metadata,
    } = msg;
    let default_provider = service.providers().default_name();
    let jobs: Vec<BulkJob> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| new_refund(job, None, default_provider, &format!("jobs[{i}].")))
        .collect();
    let mut v = Violations::default();
    let max_concurrency = match u32::try_from(max_concurrency) {
        Ok(n) => n,
        Err(_) => {
            v.push("max_concurrency", "max_concurrency must not be negative");
            0
        }
    };
    let key = if idempotency_key.is_empty() {
        header_key.unwrap_or_default()
    } else {
        idempotency_key
    };
    let idempotency_key = if key.is_empty() {
        Some(None)
    } else {
        v.check("idempotency_key", IdempotencyKey::parse(&key))
            .map(Some)
    };
    let metadata = parse_metadata(metadata.into_iter().collect(), &mut v);
    v.into_result(|| {
        Some(NewBulk {
            jobs,
            abort_on_error,
            max_concurrency,
            idempotency_key: idempotency_key?,
            metadata,
            created_by: None,
        })
    })
}

fn item_status_from_pb(s: pb::BulkItemStatus) -> Option<ItemStatus> {
    Some(match s {
        pb::BulkItemStatus::Unspecified => return None,
        pb::BulkItemStatus::Queued => ItemStatus::Queued,
        pb::BulkItemStatus::Running => ItemStatus::Running,
        pb::BulkItemStatus::Succeeded => ItemStatus::Succeeded,
        pb::BulkItemStatus::RequiresApproval => ItemStatus::RequiresApproval,
        pb::BulkItemStatus::Failed => ItemStatus::Failed,
        pb::BulkItemStatus::Skipped => ItemStatus::Skipped,
        pb::BulkItemStatus::Canceled => ItemStatus::Canceled,
    })
}

fn item_status_to_pb(s: ItemStatus) -> pb::BulkItemStatus {
    match s {
        ItemStatus::Queued => pb::BulkItemStatus::Queued,
        ItemStatus::Running => pb::BulkItemStatus::Running,
        ItemStatus::Succeeded => pb::BulkItemStatus::Succeeded,
        ItemStatus::RequiresApproval => pb::BulkItemStatus::RequiresApproval,
        ItemStatus::Failed => pb::BulkItemStatus::Failed,
        ItemStatus::Skipped => pb::BulkItemStatus::Skipped,
        ItemStatus::Canceled => pb::BulkItemStatus::Canceled,
    }
}

fn state_from_pb(s: pb::BulkRefundState) -> Option<BulkState> {
    Some(match s {
        pb::BulkRefundState::Unspecified => return None,
        pb::BulkRefundState::Running => BulkState::Running,
        pb::BulkRefundState::Completed => BulkState::Completed,
        pb::BulkRefundState::Aborted => BulkState::Aborted,
        pb::BulkRefundState::Canceled => BulkState::Canceled,
    })
}

fn state_to_pb(s: BulkState) -> pb::BulkRefundState {
    match s {
        BulkState::Running => pb::BulkRefundState::Running,
        BulkState::Completed => pb::BulkRefundState::Completed,
        BulkState::Aborted => pb::BulkRefundState::Aborted,
        BulkState::Canceled => pb::BulkRefundState::Canceled,
    }
}

fn item_to_pb(i: ItemResult) -> pb::BulkJobResult {
    let ItemResult {
        index,
        payment_id,
        provider,
        status,
        refund,
        error,
        attempts,
        job,
    } = i;
    pb::BulkJobResult {
        index: i32::try_from(index).unwrap_or(i32::MAX),
        payment_id,
        success: matches!(status, ItemStatus::Succeeded | ItemStatus::RequiresApproval),
        refund: refund.map(refund_to_pb),
        error: error.map(|e| pb::BulkJobError {
            code: e.code,
            message: e.message,
            retryable: e.retryable,
        }),
        provider,
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        status: item_status_to_pb(status).into(),
        job: job.map(new_refund_to_pb),
    }
}

fn event_to_pb(e: SequencedEvent) -> pb::BulkRefundEvent {
    use pb::bulk_refund_event::Event;
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let event = match e.event {
        BulkEvent::Accepted { bulk_id, total } => Event::Accepted(pb::BulkAccepted {
            bulk_id: bulk_id.as_str().to_owned(),
            total: count(total),
        }),
        BulkEvent::Result(item) => Event::Result(item_to_pb(*item)),
        BulkEvent::Summary {
            counts,
            state,
            duration_micros,
        } => Event::Summary(pb::BulkSummary {
            total: count(counts.total),
            succeeded: count(counts.succeeded),
            failed: count(counts.failed),
            skipped: count(counts.skipped),
            canceled: count(counts.canceled),
            duration: Some(duration_to_pb(duration_micros)),
            state: state_to_pb(state).into(),
        }),
        BulkEvent::ProviderWaiting(wait) => Event::ProviderWaiting(wait_to_pb(wait)),
        BulkEvent::ProviderWaitEnded {
            provider,
            waited_micros,
            gave_up,
            failed_jobs,
        } => Event::ProviderWaitEnded(pb::BulkProviderWaitEnded {
            provider: provider.as_str().to_owned(),
            waited: Some(duration_to_pb(waited_micros)),
            gave_up,
            failed_jobs: count(failed_jobs),
        }),
        BulkEvent::Progress { counts, state } => Event::Progress(pb::BulkProgress {
            total: count(counts.total),
            succeeded: count(counts.succeeded),
            failed: count(counts.failed),
            skipped: count(counts.skipped),
            canceled: count(counts.canceled),
            pending: count(counts.pending()),
            state: state_to_pb(state).into(),
        }),
    };
    pb::BulkRefundEvent {
        sequence: e.sequence,
        event: Some(event),
    }
}

fn duration_to_pb(micros: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    }
}

fn wait_to_pb(w: ProviderWait) -> pb::BulkProviderWaiting {
    pb::BulkProviderWaiting {
        provider: w.provider.as_str().to_owned(),
        reason: w.reason,
        waiting_since: Some(timestamp_to_pb(w.since)),
        next_attempt_time: Some(timestamp_to_pb(w.next_attempt)),
        give_up_time: Some(timestamp_to_pb(w.give_up_at)),
        held_jobs: i32::try_from(w.held_jobs).unwrap_or(i32::MAX),
    }
}

pub fn bulk_to_pb(b: Bulk) -> pb::BulkRefundBatch {
    let Bulk {
        id,
        account: _,
        state,
        stop: _,
        counts,
        abort_on_error,
        max_concurrency,
        idempotency_key,
        metadata,
        last_sequence,
        created_at,
        updated_at,
        finished_at,
        created_by: _,
        provider_waits,
    } = b;
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    pb::BulkRefundBatch {
        id: id.as_str().to_owned(),
        state: state_to_pb(state).into(),
        total: count(counts.total),
        succeeded: count(counts.succeeded),
        failed: count(counts.failed),
        skipped: count(counts.skipped),
        canceled: count(counts.canceled),
        pending: count(counts.pending()),
        abort_on_error,
        max_concurrency: count(max_concurrency),
        idempotency_key: idempotency_key
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        metadata: metadata.into_iter().collect(),
        last_sequence,
        created_at: Some(timestamp_to_pb(created_at)),
        updated_at: Some(timestamp_to_pb(updated_at)),
        finished_at: finished_at.map(timestamp_to_pb),
        provider_waits: provider_waits.into_iter().map(wait_to_pb).collect(),
    }
}
