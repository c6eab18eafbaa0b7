//! ListEvents and WatchEvents handlers and the event's proto form.

use std::pin::Pin;

use prost_types::Timestamp as PbTimestamp;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::bulk::bulk_to_pb;
use super::convert::{refund_to_pb, timestamp_from_pb, timestamp_to_pb};
use super::pb;
use super::status::to_status;
use crate::domain::{
    API_VERSION, AccountId, Event, EventResource, RefundError, Timestamp, Violations,
};
use crate::service::{EventQuery, RefundService};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

pub async fn list_events(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::ListEventsRequest>,
) -> Result<Response<pb::ListEventsResponse>, Status> {
    let pb::ListEventsRequest {
        types,
        resource_id,
        created_from,
        created_before,
        page_size,
        page_token,
    } = request.into_inner();
    let mut v = Violations::default();
    let created_from = time("created_from", created_from, &mut v);
    let created_before = time("created_before", created_before, &mut v);
    v.into_result(|| Some(()))
        .map_err(|v| to_status(RefundError::InvalidArgument(v)))?;
    let page = service
        .list_events(
            &account,
            EventQuery {
                types,
                resource_id,
                created_from,
                created_before,
                page_size,
                page_token,
            },
        )
        .await
        .map_err(to_status)?;
    Ok(Response::new(pb::ListEventsResponse {
        events: page.events.into_iter().map(event_to_pb).collect(),
        next_page_token: page.next_page_token,
    }))
}

pub async fn watch_events(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::WatchEventsRequest>,
) -> Result<Response<EventStream>, Status> {
    let pb::WatchEventsRequest {
        after_sequence,
        types,
    } = request.into_inner();
    let events = service
        .watch_events(&account, after_sequence, &types)
        .await
        .map_err(to_status)?;
    Ok(Response::new(Box::pin(
        ReceiverStream::new(events).map(|e| e.map(event_to_pb).map_err(to_status)),
    )))
}

fn time(field: &str, t: Option<PbTimestamp>, v: &mut Violations) -> Option<Timestamp> {
    let t = t?;
    let parsed = timestamp_from_pb(t);
    if parsed.is_none() {
        v.push(field, "not a valid timestamp");
    }
    parsed
}

pub fn event_to_pb(e: Event) -> pb::Event {
    let resource = match e.resource {
        EventResource::Refund(r) => pb::event::Resource::Refund(refund_to_pb(*r)),
        EventResource::Bulk(b) => pb::event::Resource::BulkRefund(bulk_to_pb(*b)),
    };
    pb::Event {
        id: e.id.as_str().to_owned(),
        r#type: e.kind.as_str().to_owned(),
        sequence: e.sequence,
        created_at: Some(timestamp_to_pb(e.created_at)),
        api_version: API_VERSION.to_owned(),
        resource: Some(resource),
    }
}
