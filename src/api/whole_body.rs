//! A tower layer that reads an HTTP/1.x call's request body to its end before the call goes on.
//!
//! gRPC-Web calls arrive over HTTP/1.1, where a connection carries one exchange at a time. A call
//! refused before its handler decodes the request (a wrong key, a rate limit) was answered with
//! its body still unread; the server then closed the connection while the client was still
//! sending, and the client saw a broken pipe instead of the answer. Every request of this API is
//! one message (gRPC-Web has no client streaming), so reading it first costs nothing and the
//! answer always arrives. HTTP/2 calls (native gRPC, gRPC-Web over HTTP/2) pass untouched: a
//! stream can be answered early without harming the connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Body as HttpBody;
use http_body_util::{BodyExt as _, Full, Limited};
use tonic::body::Body;
use tonic::codegen::http::{Request, Response, StatusCode, Version};

/// See the module docs. `limit`: the most bytes a request body may have (a message at the
/// largest size the server accepts, framed, in base64 for `grpc-web-text`).
#[derive(Debug, Clone, Copy)]
pub struct WholeBodyLayer {
    limit: usize,
}

impl WholeBodyLayer {
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            // Base64 (grpc-web-text) takes 4 bytes for 3, plus the frame header and padding.
            limit: max_message_bytes
                .saturating_mul(4)
                .div_ceil(3)
                .saturating_add(64),
        }
    }
}

impl<S> tower_layer::Layer<S> for WholeBodyLayer {
    type Service = WholeBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WholeBody {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WholeBody<S> {
    inner: S,
    limit: usize,
}

impl<S, B> tower_service::Service<Request<B>> for WholeBody<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.version() >= Version::HTTP_2 {
            return Box::pin(self.inner.call(request.map(Body::new)));
        }
        // The service that was polled ready takes this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.limit;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            match Limited::new(body, limit).collect().await {
                Ok(body) => {
                    let body = Body::new(Full::new(body.to_bytes()));
                    inner.call(Request::from_parts(parts, body)).await
                }
                // Larger than any message the server accepts, or the client went away: either
                // way no call can be made of it.
                Err(e) => {
                    let status = if e.is::<http_body_util::LengthLimitError>() {
                        StatusCode::PAYLOAD_TOO_LARGE
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    let mut response = Response::new(Body::default());
                    *response.status_mut() = status;
                    Ok(response)
                }
            }
        })
    }
}
