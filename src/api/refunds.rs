//! `refunds.v1.RefundService` handlers.

use std::pin::Pin;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::auth::principal;
use super::bulk;
use super::convert;
use super::events;
use super::pb;
use super::status::to_status;
use super::webhook_endpoints;
use crate::domain::{AccountId, ConnectionActor, Principal, RefundError, Scope};
use crate::service::RefundService;

pub type RefundStream = Pin<Box<dyn Stream<Item = Result<pb::Refund, Status>> + Send>>;

/// The handlers. Every call reaches them through [`super::auth::AuthLayer`], which has checked
/// the caller's key and the method's scope and put the [`crate::domain::Principal`] in the
/// request's extensions.
pub struct RefundsApi {
    service: RefundService,
}

impl RefundsApi {
    pub fn new(service: RefundService) -> Self {
        Self { service }
    }
}

/// The account the caller acts for.
fn account<T>(request: &Request<T>) -> Result<AccountId, Status> {
    Ok(principal(request)?.account)
}

#[tonic::async_trait]
impl pb::refund_service_server::RefundService for RefundsApi {
    async fn create_refund(
        &self,
        request: Request<pb::CreateRefundRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let principal = principal(&request)?;
        let header_key = convert::header(&request, convert::IDEMPOTENCY_KEY_HEADER);
        let new = convert::new_refund(
            request.into_inner(),
            header_key,
            self.service.providers().default_name(),
            "",
        )
        .map_err(|v| to_status(RefundError::InvalidArgument(v)))?;
        let refund = self
            .service
            .create_refund(&principal.account, Some(&principal.key_id), new)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::refund_to_pb(refund)))
    }

    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let account = account(&request)?;
        let pb::GetRefundRequest { id } = request.into_inner();
        let id = convert::refund_id("id", &id).map_err(to_status)?;
        let refund = self
            .service
            .get_refund(&account, &id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::refund_to_pb(refund)))
    }

    async fn list_refunds(
        &self,
        request: Request<pb::ListRefundsRequest>,
    ) -> Result<Response<pb::ListRefundsResponse>, Status> {
        let account = account(&request)?;
        let query = convert::list_query(request.into_inner())
            .map_err(|v| to_status(RefundError::InvalidArgument(v)))?;
        let page = self
            .service
            .list_refunds(&account, query)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListRefundsResponse {
            refunds: page
                .refunds
                .into_iter()
                .map(convert::refund_to_pb)
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn approve_refund(
        &self,
        request: Request<pb::ApproveRefundRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let principal = principal(&request)?;
        let pb::ApproveRefundRequest { id } = request.into_inner();
        let id = convert::refund_id("id", &id).map_err(to_status)?;
        let refund = self
            .service
            .approve_refund(&principal, &id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::refund_to_pb(refund)))
    }

    async fn reject_refund(
        &self,
        request: Request<pb::RejectRefundRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let principal = principal(&request)?;
        let pb::RejectRefundRequest { id } = request.into_inner();
        let id = convert::refund_id("id", &id).map_err(to_status)?;
        let refund = self
            .service
            .reject_refund(&principal, &id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::refund_to_pb(refund)))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let principal = principal(&request)?;
        let pb::ListAuditEventsRequest {
            account_id,
            resource_id,
            action,
            actor_key_id,
            page_size,
            page_token,
        } = request.into_inner();
        let account = if account_id.is_empty() || account_id == principal.account.as_str() {
            principal.account.clone()
        } else if principal.allows(Scope::Admin) {
            crate::domain::parse_account(&account_id)
                .map_err(|e| to_status(RefundError::invalid("account_id", e)))?
        } else {
            return Err(Status::permission_denied(
                "another account's audit trail needs an admin key",
            ));
        };
        let page = self
            .service
            .list_audit_events(
                &account,
                crate::service::AuditQuery {
                    resource_id,
                    action,
                    actor_key_id,
                    page_size,
                    page_token,
                },
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: page.events.into_iter().map(convert::audit_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let account = account(&request)?;
        events::list_events(&self.service, account, request).await
    }

    type WatchEventsStream = events::EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let account = account(&request)?;
        events::watch_events(&self.service, account, request).await
    }

    type WatchRefundStream = RefundStream;

    async fn watch_refund(
        &self,
        request: Request<pb::WatchRefundRequest>,
    ) -> Result<Response<Self::WatchRefundStream>, Status> {
        let account = account(&request)?;
        let pb::WatchRefundRequest { id } = request.into_inner();
        let id = convert::refund_id("id", &id).map_err(to_status)?;
        let changes = self
            .service
            .watch_refund(&account, &id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Box::pin(
            ReceiverStream::new(changes).map(|r| r.map(convert::refund_to_pb).map_err(to_status)),
        )))
    }

    async fn list_providers(
        &self,
        request: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let account = account(&request)?;
        let providers = self
            .service
            .providers_for(&account)
            .await
            .map_err(to_status)?
            .into_iter()
            .map(|(summary, connection)| convert::provider_to_pb(summary, connection))
            .collect();
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }

    type BulkRefundStream = bulk::EventStream;

    async fn bulk_refund(
        &self,
        request: Request<pb::BulkRefundRequest>,
    ) -> Result<Response<Self::BulkRefundStream>, Status> {
        {
            let principal = principal(&request)?;
            bulk::bulk_refund(&self.service, principal, request).await
        }
    }

    type WatchBulkRefundStream = bulk::EventStream;

    async fn watch_bulk_refund(
        &self,
        request: Request<pb::WatchBulkRefundRequest>,
    ) -> Result<Response<Self::WatchBulkRefundStream>, Status> {
        {
            let account = account(&request)?;
            bulk::watch_bulk_refund(&self.service, account, request).await
        }
    }

    async fn get_bulk_refund(
        &self,
        request: Request<pb::GetBulkRefundRequest>,
    ) -> Result<Response<pb::BulkRefundBatch>, Status> {
        {
            let account = account(&request)?;
            bulk::get_bulk_refund(&self.service, account, request).await
        }
    }

    async fn cancel_bulk_refund(
        &self,
        request: Request<pb::CancelBulkRefundRequest>,
    ) -> Result<Response<pb::BulkRefundBatch>, Status> {
        {
            let principal = principal(&request)?;
            bulk::cancel_bulk_refund(&self.service, principal, request).await
        }
    }

    async fn list_bulk_refund_items(
        &self,
        request: Request<pb::ListBulkRefundItemsRequest>,
    ) -> Result<Response<pb::ListBulkRefundItemsResponse>, Status> {
        {
            let account = account(&request)?;
            bulk::list_bulk_refund_items(&self.service, account, request).await
        }
    }

    async fn list_bulk_refunds(
        &self,
        request: Request<pb::ListBulkRefundsRequest>,
    ) -> Result<Response<pb::ListBulkRefundsResponse>, Status> {
        let account = account(&request)?;
        bulk::list_bulk_refunds(&self.service, account, request).await
    }

    async fn create_connection(
        &self,
        request: Request<pb::CreateConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let principal = principal(&request)?;
        let new = convert::new_connection(request.into_inner()).map_err(to_status)?;
        let request_id = crate::service::context::request_id();
        let connection = self
            .service
            .create_connection(
                &principal.account,
                new,
                api_actor(&principal, request_id.as_deref()),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::connection_to_pb(connection)))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let account = account(&request)?;
        let connections = self
            .service
            .list_connections(&account)
            .await
            .map_err(to_status)?
            .into_iter()
            .map(convert::connection_to_pb)
            .collect();
        Ok(Response::new(pb::ListConnectionsResponse { connections }))
    }

    async fn rotate_connection(
        &self,
        request: Request<pb::RotateConnectionRequest>,
    ) -> Result<Response<pb::Connection>, Status> {
        let principal = principal(&request)?;
        let pb::RotateConnectionRequest {
            id,
            credential,
            webhook_secret,
        } = request.into_inner();
        let id = convert::connection_id(&id).map_err(to_status)?;
        let request_id = crate::service::context::request_id();
        let connection = self
            .service
            .rotate_connection(
                &principal.account,
                &id,
                crate::secret::Secret::opaque(credential),
                convert::optional_secret(webhook_secret),
                api_actor(&principal, request_id.as_deref()),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::connection_to_pb(connection)))
    }

    async fn delete_connection(
        &self,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> Result<Response<pb::DeleteConnectionResponse>, Status> {
        let principal = principal(&request)?;
        let pb::DeleteConnectionRequest { id } = request.into_inner();
        let id = convert::connection_id(&id).map_err(to_status)?;
        let request_id = crate::service::context::request_id();
        self.service
            .delete_connection(
                &principal.account,
                &id,
                api_actor(&principal, request_id.as_deref()),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteConnectionResponse {}))
    }

    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpointSecret>, Status> {
        let account = account(&request)?;
        webhook_endpoints::create(&self.service, account, request).await
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let account = account(&request)?;
        webhook_endpoints::list(&self.service, account).await
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let account = account(&request)?;
        webhook_endpoints::update(&self.service, account, request).await
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        let account = account(&request)?;
        webhook_endpoints::delete(&self.service, account, request).await
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpointSecret>, Status> {
        let account = account(&request)?;
        webhook_endpoints::rotate(&self.service, account, request).await
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let account = account(&request)?;
        webhook_endpoints::list_deliveries(&self.service, account, request).await
    }

    async fn retry_webhook_delivery(
        &self,
        request: Request<pb::RetryWebhookDeliveryRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let account = account(&request)?;
        webhook_endpoints::retry_delivery(&self.service, account, request).await
    }

    async fn replay_webhook_events(
        &self,
        request: Request<pb::ReplayWebhookEventsRequest>,
    ) -> Result<Response<pb::ReplayWebhookEventsResponse>, Status> {
        let account = account(&request)?;
        webhook_endpoints::replay(&self.service, account, request).await
    }
}

/// A change made through the API, for the audit trail.
fn api_actor<'a>(principal: &'a Principal, request_id: Option<&'a str>) -> ConnectionActor<'a> {
    ConnectionActor {
        source: "api",
        key: Some(&principal.key_id),
        request_id,
    }
}
