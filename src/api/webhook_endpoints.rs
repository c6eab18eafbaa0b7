//! The webhook endpoint and delivery handlers and their proto forms.

use tonic::{Request, Response, Status};

use super::convert::timestamp_to_pb;
use super::pb;
use super::status::to_status;
use crate::domain::{AccountId, DeliveryStatus, RefundError, WebhookDelivery, WebhookEndpoint};
use crate::service::{DeliveryQuery, EndpointUpdate, NewEndpoint, RefundService};
use crate::webhooks_out::signing::WebhookSecret;

pub async fn create(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::CreateWebhookEndpointRequest>,
) -> Result<Response<pb::WebhookEndpointSecret>, Status> {
    let pb::CreateWebhookEndpointRequest {
        url,
        event_types,
        description,
    } = request.into_inner();
    let (endpoint, secret) = service
        .create_webhook_endpoint(
            &account,
            NewEndpoint {
                url,
                event_types,
                description,
            },
        )
        .await
        .map_err(to_status)?;
    Ok(Response::new(with_secret(endpoint, &secret)))
}

pub async fn list(
    service: &RefundService,
    account: AccountId,
) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
    let endpoints = service
        .list_webhook_endpoints(&account)
        .await
        .map_err(to_status)?
        .into_iter()
        .map(endpoint_to_pb)
        .collect();
    Ok(Response::new(pb::ListWebhookEndpointsResponse {
        endpoints,
    }))
}

pub async fn update(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::UpdateWebhookEndpointRequest>,
) -> Result<Response<pb::WebhookEndpoint>, Status> {
    let pb::UpdateWebhookEndpointRequest {
        id,
        url,
        event_types,
        description,
        enabled,
    } = request.into_inner();
    let endpoint = service
        .update_webhook_endpoint(
            &account,
            &id,
            EndpointUpdate {
                url,
                event_types: event_types.map(|t| t.types),
                description,
                enabled,
            },
        )
        .await
        .map_err(to_status)?;
    Ok(Response::new(endpoint_to_pb(endpoint)))
}

pub async fn delete(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::DeleteWebhookEndpointRequest>,
) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
    let pb::DeleteWebhookEndpointRequest { id } = request.into_inner();
    service
        .delete_webhook_endpoint(&account, &id)
        .await
        .map_err(to_status)?;
    Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
}

pub async fn rotate(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::RotateWebhookSecretRequest>,
) -> Result<Response<pb::WebhookEndpointSecret>, Status> {
    let pb::RotateWebhookSecretRequest { id, overlap } = request.into_inner();
    let overlap = match overlap {
        None => None,
        Some(d) => Some(std::time::Duration::try_from(d).map_err(|_| {
            to_status(RefundError::invalid(
                "overlap",
                "the overlap must be a non-negative duration",
            ))
        })?),
    };
    let (endpoint, secret) = service
        .rotate_webhook_secret(&account, &id, overlap)
        .await
        .map_err(to_status)?;
    Ok(Response::new(with_secret(endpoint, &secret)))
}

pub async fn list_deliveries(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::ListWebhookDeliveriesRequest>,
) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
    let pb::ListWebhookDeliveriesRequest {
        endpoint_id,
        status,
        event_id,
        page_size,
        page_token,
    } = request.into_inner();
    let status = match pb::WebhookDeliveryStatus::try_from(status) {
        Ok(pb::WebhookDeliveryStatus::Unspecified) => String::new(),
        Ok(pb::WebhookDeliveryStatus::Pending) => DeliveryStatus::Pending.as_str().to_owned(),
        Ok(pb::WebhookDeliveryStatus::Delivered) => DeliveryStatus::Delivered.as_str().to_owned(),
        Ok(pb::WebhookDeliveryStatus::Failed) => DeliveryStatus::Failed.as_str().to_owned(),
        Err(_) => {
            return Err(to_status(RefundError::invalid(
                "status",
                format!("unknown delivery status {status}"),
            )));
        }
    };
    let page = service
        .list_webhook_deliveries(
            &account,
            DeliveryQuery {
                endpoint_id,
                status,
                event_id,
                page_size,
                page_token,
            },
        )
        .await
        .map_err(to_status)?;
    Ok(Response::new(pb::ListWebhookDeliveriesResponse {
        deliveries: page.deliveries.into_iter().map(delivery_to_pb).collect(),
        next_page_token: page.next_page_token,
    }))
}

pub async fn retry_delivery(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::RetryWebhookDeliveryRequest>,
) -> Result<Response<pb::WebhookDelivery>, Status> {
    let pb::RetryWebhookDeliveryRequest { id } = request.into_inner();
    let delivery = service
        .retry_webhook_delivery(&account, &id)
        .await
        .map_err(to_status)?;
    Ok(Response::new(delivery_to_pb(delivery)))
}

pub async fn replay(
    service: &RefundService,
    account: AccountId,
    request: Request<pb::ReplayWebhookEventsRequest>,
) -> Result<Response<pb::ReplayWebhookEventsResponse>, Status> {
    let pb::ReplayWebhookEventsRequest {
        endpoint_id,
        after_sequence,
    } = request.into_inner();
    let rearmed = service
        .replay_webhook_events(&account, &endpoint_id, after_sequence)
        .await
        .map_err(to_status)?;
    Ok(Response::new(pb::ReplayWebhookEventsResponse { rearmed }))
}

fn with_secret(endpoint: WebhookEndpoint, secret: &WebhookSecret) -> pb::WebhookEndpointSecret {
    pb::WebhookEndpointSecret {
        endpoint: Some(endpoint_to_pb(endpoint)),
        secret: secret.expose(),
    }
}

pub fn endpoint_to_pb(e: WebhookEndpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: e.id.as_str().to_owned(),
        url: e.url,
        event_types: e
            .event_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect(),
        description: e.description,
        enabled: e.enabled,
        disabled_reason: e.disabled_reason,
        cursor: e.cursor,
        failing_since: e.failing_since.map(timestamp_to_pb),
        previous_secret_expires_at: e.previous_secret_expires_at.map(timestamp_to_pb),
        created_at: Some(timestamp_to_pb(e.created_at)),
        updated_at: Some(timestamp_to_pb(e.updated_at)),
    }
}

pub fn delivery_to_pb(d: WebhookDelivery) -> pb::WebhookDelivery {
    let status = match d.status {
        DeliveryStatus::Pending => pb::WebhookDeliveryStatus::Pending,
        DeliveryStatus::Delivered => pb::WebhookDeliveryStatus::Delivered,
        DeliveryStatus::Failed => pb::WebhookDeliveryStatus::Failed,
    };
    pb::WebhookDelivery {
        id: d.id.as_str().to_owned(),
        endpoint_id: d.endpoint_id.as_str().to_owned(),
        event_id: d.event_id.as_str().to_owned(),
        event_type: d.event_type.as_str().to_owned(),
        event_sequence: d.event_sequence,
        status: status.into(),
        attempts: d.attempts,
        last_status_code: d.last_status_code.map_or(0, u32::from),
        last_error: d.last_error,
        next_attempt_at: (d.status == DeliveryStatus::Pending)
            .then_some(d.next_attempt_at)
            .flatten()
            .map(timestamp_to_pb),
        delivered_at: d.delivered_at.map(timestamp_to_pb),
        created_at: Some(timestamp_to_pb(d.created_at)),
    }
}
