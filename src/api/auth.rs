//! Authentication and authorization of gRPC calls: `authorization: Bearer <API key>` metadata,
//! the key's scopes, and a request rate limit per key.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use super::status::{ERROR_DOMAIN, to_status};
use crate::domain::{Principal, Scope};
use crate::service::RefundService;

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
    pub async fn check<T>(&self, request: &Request<T>, scope: Scope) -> Result<Principal, Status> {
        let token = bearer_token(request)?;
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

/// The token of `authorization: Bearer <token>`.
fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
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

    fn with_auth(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(v) = value {
            request
                .metadata_mut()
                .insert("authorization", v.parse().expect("ascii"));
        }
        request
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
