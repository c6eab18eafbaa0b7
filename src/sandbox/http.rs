//! The sandbox's HTTP API, so the provider can run standalone and outlive the
//! refund service, and so scripts in any language can seed it, drive it and
//! read its ledger.
//!
//! Paths are relative; the service nests the router under `/sandbox`. Bodies
//! are JSON (read whatever the Content-Type, so a bare `curl -d` works).
//! Errors follow Stripe's shape:
//! `{"error":{"type":"invalid_request_error","code":"amount_too_large","message":"..."}}`,
//! and a 429 also carries `retry_after` and a `Retry-After` header. A
//! creation whose idempotency key is in flight gets a 409
//! `idempotency_key_in_use`. An answer lost by fault injection
//! ([`SandboxError::AnswerLost`]) is a 200 whose body breaks off: the
//! connection drops mid-answer, as when a PSP or a proxy dies while writing.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `POST /payments` | [`NewPayments`] | 201 `{"payments":[Payment]}` |
//! | `GET /payments/{id}` | | [`Payment`] |
//! | `POST /refunds` (optional `Idempotency-Key` header) | [`NewRefund`] | [`Refund`] |
//! | `GET /refunds/{id}` | | [`Refund`] |
//! | `GET /refunds?payment=&idempotency_key=` | | `{"data":[Refund]}` |
//! | `GET /ledger?payment=` | | `{"data":[Refund]}`, no faults |
//! | `GET /ledger/payments` | | `{"data":[Payment]}`, every payment, no faults |
//! | `GET /stats` | | [`Stats`] |
//! | `GET /faults`, `PUT /faults` | [`FaultConfig`], missing fields default (off) | [`FaultConfig`]; a rate outside 0.0..=1.0 is a 400 |

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    FaultConfig, NewPayments, NewRefund, Payment, Refund, RefundFilter, Sandbox, SandboxError,
    Stats,
};

/// The request header carrying an idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// The sandbox's HTTP API over `sandbox`, with relative paths.
pub fn router(sandbox: Arc<Sandbox>) -> Router {
    Router::new()
        .route("/payments", axum::routing::post(create_payments))
        .route("/payments/{id}", get(get_payment))
        .route("/refunds", get(list_refunds).post(create_refund))
        .route("/refunds/{id}", get(get_refund))
        .route("/ledger", get(ledger))
        .route("/ledger/payments", get(ledger_payments))
        .route("/stats", get(stats))
        .route("/faults", get(get_faults).put(put_faults))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(sandbox)
}

/// Wire shape of error answers, shared with the client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorDetail {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) code: String,
    pub(crate) message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after: Option<u64>,
}

/// `{"payments":[...]}`
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PaymentsBody {
    pub(crate) payments: Vec<Payment>,
}

/// `{"data":[...]}`
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ListBody<T> {
    pub(crate) data: Vec<T>,
}

#[derive(Debug, Default, Deserialize)]
struct LedgerQuery {
    #[serde(default)]
    payment: Option<String>,
}

/// A [`SandboxError`] on its way out as an HTTP answer.
struct ApiError(SandboxError);

impl From<SandboxError> for ApiError {
    fn from(err: SandboxError) -> Self {
        Self(err)
    }
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self(SandboxError::InvalidRequest {
            code: "parameter_invalid".to_owned(),
            message: message.into(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let err = self.0;
        let status =
            StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (kind, retry_after) = match &err {
            SandboxError::NotFound { .. } | SandboxError::InvalidRequest { .. } => {
                ("invalid_request_error", None)
            }
            SandboxError::RateLimited { retry_after_secs } => {
                ("rate_limit_error", Some(*retry_after_secs))
            }
            SandboxError::Conflict { .. } => ("idempotency_error", None),
            SandboxError::Api { .. } => ("api_error", None),
            SandboxError::AnswerLost { .. } => {
                return (
                    status,
                    [(header::CONTENT_TYPE, "application/json")],
                    axum::body::Body::new(LostAnswer::default()),
                )
                    .into_response();
            }
        };
        let body = ErrorBody {
            error: ErrorDetail {
                kind: kind.to_owned(),
                code: err.code().to_owned(),
                message: err.to_string(),
                retry_after,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The body of a lost answer: the start of a refund, then an error, on which
/// hyper aborts the connection without ending the chunked body. It first
/// returns `Pending` once, so the status line, headers and first bytes are
/// flushed before the error: the client sees the answer begin and break off.
#[derive(Default)]
struct LostAnswer {
    step: u8,
}

impl http_body::Body for LostAnswer {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.step = self.step.saturating_add(1);
        match self.step {
            1 => Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                br#"{"id":"re_sbx_"#,
            ))))),
            2 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "answer lost (injected fault)",
            )))),
        }
    }
}

/// A JSON body whose failures are answered in the sandbox's error shape
/// (axum's own `Json` answers in plain text) and which ignores the
/// Content-Type, like a lenient PSP.
struct JsonBody<T>(T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            ApiError::invalid(format!(
                "could not read the request body: {}",
                rejection.body_text()
            ))
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|err| ApiError::invalid(format!("malformed JSON body: {err}")))
    }
}

type Shared = State<Arc<Sandbox>>;
type ApiResult<T> = Result<T, ApiError>;

fn path_id(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    path.map(|Path(id)| id)
        .map_err(|rejection| ApiError::invalid(rejection.body_text()))
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| ApiError::invalid(rejection.body_text()))
}

async fn create_payments(
    State(sandbox): Shared,
    JsonBody(req): JsonBody<NewPayments>,
) -> ApiResult<(StatusCode, Json<PaymentsBody>)> {
    let payments = sandbox.create_payments(req)?;
    Ok((StatusCode::CREATED, Json(PaymentsBody { payments })))
}

async fn get_payment(
    State(sandbox): Shared,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Payment>> {
    let id = path_id(id)?;
    Ok(Json(sandbox.get_payment(&id).await?))
}

async fn create_refund(
    State(sandbox): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewRefund>,
) -> ApiResult<Json<Refund>> {
    let key = match headers.get(IDEMPOTENCY_KEY_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?,
        ),
    };
    Ok(Json(sandbox.create_refund(req, key).await?))
}

async fn get_refund(
    State(sandbox): Shared,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Refund>> {
    let id = path_id(id)?;
    Ok(Json(sandbox.get_refund(&id).await?))
}

async fn list_refunds(
    State(sandbox): Shared,
    filter: Result<Query<RefundFilter>, QueryRejection>,
) -> ApiResult<Json<ListBody<Refund>>> {
    let filter = query(filter)?;
    let data = sandbox.list_refunds(filter).await?;
    Ok(Json(ListBody { data }))
}

async fn ledger(
    State(sandbox): Shared,
    q: Result<Query<LedgerQuery>, QueryRejection>,
) -> ApiResult<Json<ListBody<Refund>>> {
    let q = query(q)?;
    Ok(Json(ListBody {
        data: sandbox.ledger(q.payment.as_deref()),
    }))
}

async fn ledger_payments(State(sandbox): Shared) -> Json<ListBody<Payment>> {
    Json(ListBody {
        data: sandbox.ledger_payments(),
    })
}

async fn stats(State(sandbox): Shared) -> Json<Stats> {
    Json(sandbox.stats())
}

async fn get_faults(State(sandbox): Shared) -> Json<FaultConfig> {
    Json(sandbox.faults())
}

async fn put_faults(
    State(sandbox): Shared,
    JsonBody(faults): JsonBody<FaultConfig>,
) -> ApiResult<Json<FaultConfig>> {
    faults.validate()?;
    sandbox.set_faults(faults);
    Ok(Json(sandbox.faults()))
}

async fn unknown_route() -> ApiError {
    ApiError(SandboxError::NotFound {
        code: "resource_missing".to_owned(),
        message: "Unrecognized request URL".to_owned(),
    })
}

async fn method_not_allowed() -> Response {
    let mut response = ApiError::invalid("Method not allowed for this URL").into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
