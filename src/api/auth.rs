//! Authentication and authorization of gRPC calls, in one tower layer: `authorization: Bearer
//! <API key>` metadata, a request rate limit per key, and the scope each method needs, from one
//! table checked against the service descriptor. Handlers find the caller's [`Principal`] in
//! the request's extensions; none of them checks a key or a scope itself.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::codegen::http::{HeaderMap, Request as HttpRequest, Response as HttpResponse};
use tonic::server::NamedService;
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use super::pb;
use super::status::{ERROR_DOMAIN, to_status};
use crate::domain::{Principal, Scope};
use crate::service::RefundService;

/// The scope each `refunds.v1.RefundService` method needs. Every method of the service's
/// descriptor must be here, or the server does not start; a call to a path that is not here
/// never reaches a handler.
const METHOD_SCOPES: &[(&str, Scope)] = &[
    ("CreateRefund", Scope::RefundsWrite),
    ("GetRefund", Scope::RefundsRead),
    ("ApproveRefund", Scope::RefundsApprove),
    ("RejectRefund", Scope::RefundsApprove),
    ("ListRefunds", Scope::RefundsRead),
    ("WatchRefund", Scope::RefundsRead),
    ("ListProviders", Scope::RefundsRead),
    ("BulkRefund", Scope::BulkWrite),
    ("WatchBulkRefund", Scope::RefundsRead),
    ("GetBulkRefund", Scope::RefundsRead),
    ("CancelBulkRefund", Scope::BulkWrite),
    ("ListBulkRefundItems", Scope::RefundsRead),
    ("ListBulkRefunds", Scope::RefundsRead),
    ("ListAuditEvents", Scope::RefundsRead),
    ("CreateConnection", Scope::Admin),
    ("ListConnections", Scope::Admin),
    ("RotateConnection", Scope::Admin),
    ("DeleteConnection", Scope::Admin),
    ("ListEvents", Scope::RefundsRead),
    ("WatchEvents", Scope::RefundsRead),
    ("CreateWebhookEndpoint", Scope::WebhooksManage),
    ("ListWebhookEndpoints", Scope::WebhooksManage),
    ("UpdateWebhookEndpoint", Scope::WebhooksManage),
    ("DeleteWebhookEndpoint", Scope::WebhooksManage),
    ("RotateWebhookSecret", Scope::WebhooksManage),
    ("ListWebhookDeliveries", Scope::WebhooksManage),
    ("RetryWebhookDelivery", Scope::WebhooksManage),
    ("ReplayWebhookEvents", Scope::WebhooksManage),
];

/// `/refunds.v1.RefundService/Method` → scope, for every method of the descriptor. Fails when a
/// method has no scope in [`METHOD_SCOPES`], or the table names a method that does not exist.
fn method_scopes() -> anyhow::Result<HashMap<String, Scope>> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)?;
    let service = set
        .file
        .iter()
        .filter(|f| f.package() == "refunds.v1")
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "RefundService")
        .ok_or_else(|| anyhow::anyhow!("the descriptor has no refunds.v1.RefundService"))?;
    let mut table = HashMap::new();
    let mut unscoped = Vec::new();
    for method in &service.method {
        match METHOD_SCOPES.iter().find(|(m, _)| *m == method.name()) {
            Some((name, scope)) => {
                table.insert(format!("/refunds.v1.RefundService/{name}"), *scope);
            }
            None => unscoped.push(method.name().to_owned()),
        }
    }
    anyhow::ensure!(
        unscoped.is_empty(),
        "RefundService methods without a scope in api::auth::METHOD_SCOPES: {}",
        unscoped.join(", ")
    );
    anyhow::ensure!(
        table.len() == METHOD_SCOPES.len(),
        "api::auth::METHOD_SCOPES names a method that RefundService does not have"
    );
    Ok(table)
}

/// Checks each call's API key. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    service: RefundService,
    /// Requests per second per key; `None` when unlimited.
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

impl Auth {
    /// `per_key_rate`: requests per second each key may make (bursts up to that many); 0 means
    /// unlimited.
    pub fn new(service: RefundService, per_key_rate: u32) -> Self {
        let limiter = NonZeroU32::new(per_key_rate)
            .map(|rate| Arc::new(RateLimiter::keyed(Quota::per_second(rate))));
        Self { service, limiter }
    }

    /// The caller, if its key is valid, not revoked, within its rate limit, and holds `scope`.
    async fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<Principal, Status> {
        let token = bearer_token(headers)?;
        let principal = self
            .service
            .authenticate(token)
            .await
            .map_err(to_status)?
            .ok_or_else(|| Status::unauthenticated("invalid or revoked API key"))?;
        let span = tracing::Span::current();
        span.record("api_key_id", principal.key_id.as_str());
        span.record("account_id", principal.account.as_str());
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check_key(&principal.key_id.as_str().to_owned())
        {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()));
            return Err(Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "API key {} is over its request rate limit; retry in {} ms",
                    principal.key_id,
                    wait.as_millis().max(1)
                ),
                ErrorDetails::with_retry_info(Some(wait)),
            ));
        }
        if !principal.allows(scope) {
            return Err(Status::with_error_details(
                Code::PermissionDenied,
                format!(
                    "API key {} lacks the scope {scope} (it has {})",
                    principal.key_id,
                    Scope::join(&principal.scopes)
                ),
                ErrorDetails::with_error_info(
                    "MISSING_SCOPE",
                    ERROR_DOMAIN,
                    [("scope".to_owned(), scope.as_str().to_owned())],
                ),
            ));
        }
        Ok(principal)
    }
}

/// Wraps the RefundService server: a call reaches it only with a key that holds its method's
/// scope, and carries the [`Principal`] in its extensions.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Auth,
    scopes: Arc<HashMap<String, Scope>>,
}

impl AuthLayer {
    pub fn new(auth: Auth) -> anyhow::Result<Self> {
        Ok(Self {
            auth,
            scopes: Arc::new(method_scopes()?),
        })
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            auth: self.auth.clone(),
            scopes: self.scopes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: Auth,
    scopes: Arc<HashMap<String, Scope>>,
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower_service::Service<HttpRequest<B>> for Authorized<S>
where
    S: tower_service::Service<HttpRequest<B>, Response = HttpResponse<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = HttpResponse<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest<B>) -> Self::Future {
        // The service that was polled ready serves this call; a clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let scope = self.scopes.get(request.uri().path()).copied();
        Box::pin(async move {
            let Some(scope) = scope else {
                return Ok(Status::unimplemented(format!(
                    "unknown method {}",
                    request.uri().path()
                ))
                .into_http());
            };
            match auth.check(request.headers(), scope).await {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The caller of a call that passed [`AuthLayer`].
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::internal("the call reached its handler without authorization"))
}

/// The token of `authorization: Bearer <token>`.
fn bearer_token(headers: &HeaderMap) -> Result<&str, Status> {
    let value = headers.get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing API key: send the metadata `authorization: Bearer <key>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be `Bearer <API key>`")
        })?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert("authorization", v.parse().expect("ascii"));
        }
        headers
    }

    #[test]
    fn every_method_has_a_scope() {
        let table = method_scopes().expect("table");
        assert_eq!(
            table.get("/refunds.v1.RefundService/CreateRefund"),
            Some(&Scope::RefundsWrite)
        );
    }

    #[test]
    fn bearer_tokens_are_read_and_anything_else_is_unauthenticated() {
        assert_eq!(
            bearer_token(&with_auth(Some("Bearer rsk_abc"))).ok(),
            Some("rsk_abc")
        );
        for bad in [
            None,
            Some("rsk_abc"),
            Some("Basic dXNlcg=="),
            Some("Bearer   "),
        ] {
            let err = bearer_token(&with_auth(bad)).expect_err("refused");
            assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}");
        }
    }
}
