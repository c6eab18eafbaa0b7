//! An HTTP client for a standalone sandbox ([`super::http`]).
//!
//! It maps the sandbox's error answers back to [`SandboxError`], so code
//! written against the in-process [`super::Sandbox`] sees the same errors over
//! the network, and it sorts transport failures by what they imply for a
//! retry: [`ClientError::Connect`] means nothing was sent, while
//! [`ClientError::Timeout`] and [`ClientError::Transport`] mean the request
//! may have been processed (the reason refunds carry idempotency keys).

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::http::{ErrorBody, IDEMPOTENCY_KEY_HEADER, ListBody, PaymentsBody};
use super::{
    FaultConfig, NewPayments, NewRefund, Payment, Refund, RefundFilter, SandboxError, Stats,
};

/// A failed call to the sandbox over HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The sandbox answered with an error.
    #[error(transparent)]
    Sandbox(SandboxError),
    /// No answer in time; the request may have been processed.
    #[error("request to the sandbox timed out")]
    Timeout,
    /// Nothing was sent: no connection could be made (or the client could
    /// not be set up for the given URL).
    #[error("could not connect to the sandbox: {0}")]
    Connect(String),
    /// The connection failed after sending; the request may have been processed.
    #[error("connection to the sandbox failed: {0}")]
    Transport(String),
    /// An answer that is not what the API promises.
    #[error("unexpected answer from the sandbox: {0}")]
    Protocol(String),
}

/// A client for one sandbox; cheap to clone (connections are pooled and shared).
#[derive(Clone, Debug)]
pub struct SandboxClient {
    http: reqwest::Client,
    base: Url,
}

impl SandboxClient {
    /// A client for the sandbox at `base_url`, e.g.
    /// `http://127.0.0.1:8080/sandbox` (a trailing slash is tolerated), with
    /// `timeout` per request.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ClientError> {
        let base = Url::parse(base_url).map_err(|err| {
            ClientError::Connect(format!("invalid sandbox URL '{base_url}': {err}"))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::Connect(format!(
                "invalid sandbox URL '{base_url}': expected an http(s) URL"
            )));
        }
        // reqwest is built without a default TLS crypto provider; it panics
        // when building a client unless one is installed. Installing fails
        // harmlessly when another part of the process already did it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|err| {
                ClientError::Connect(format!(
                    "could not build the HTTP client: {}",
                    crate::error_chain::causes(&err)
                ))
            })?;
        Ok(Self { http, base })
    }

    /// Seeds payments (`POST /payments`).
    pub async fn create_payments(&self, req: &NewPayments) -> Result<Vec<Payment>, ClientError> {
        let body: PaymentsBody = self
            .send(self.http.post(self.url(&["payments"])?).json(req))
            .await?;
        Ok(body.payments)
    }

    /// `GET /payments/{id}`.
    pub async fn get_payment(&self, id: &str) -> Result<Payment, ClientError> {
        self.send(self.http.get(self.url(&["payments", id])?)).await
    }

    /// `POST /refunds`, with the key in the `Idempotency-Key` header.
    pub async fn create_refund(
        &self,
        req: &NewRefund,
        idempotency_key: Option<&str>,
    ) -> Result<Refund, ClientError> {
        let mut request = self.http.post(self.url(&["refunds"])?).json(req);
        if let Some(key) = idempotency_key {
            // The sandbox would reject such a key the same way; checking here
            // keeps reqwest from failing on an unencodable header instead.
            super::validate_idempotency_key(key).map_err(ClientError::Sandbox)?;
            request = request.header(IDEMPOTENCY_KEY_HEADER, key);
        }
        self.send(request).await
    }

    /// `GET /refunds/{id}`.
    pub async fn get_refund(&self, id: &str) -> Result<Refund, ClientError> {
        self.send(self.http.get(self.url(&["refunds", id])?)).await
    }

    /// `GET /refunds?payment=..&idempotency_key=..`, oldest first.
    pub async fn list_refunds(&self, filter: &RefundFilter) -> Result<Vec<Refund>, ClientError> {
        let mut url = self.url(&["refunds"])?;
        append_query(&mut url, "payment", filter.payment.as_deref());
        append_query(
            &mut url,
            "idempotency_key",
            filter.idempotency_key.as_deref(),
        );
        let body: ListBody<Refund> = self.send(self.http.get(url)).await?;
        Ok(body.data)
    }

    /// `GET /ledger?payment=..`: the provider's record, no faults.
    pub async fn ledger(&self, payment: Option<&str>) -> Result<Vec<Refund>, ClientError> {
        let mut url = self.url(&["ledger"])?;
        append_query(&mut url, "payment", payment);
        let body: ListBody<Refund> = self.send(self.http.get(url)).await?;
        Ok(body.data)
    }

    /// `GET /ledger/payments`: every payment with its refunded amount, no faults.
    pub async fn ledger_payments(&self) -> Result<Vec<Payment>, ClientError> {
        let body: ListBody<Payment> = self
            .send(self.http.get(self.url(&["ledger", "payments"])?))
            .await?;
        Ok(body.data)
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.send(self.http.get(self.url(&["stats"])?)).await
    }

    /// `GET /faults`.
    pub async fn faults(&self) -> Result<FaultConfig, ClientError> {
        self.send(self.http.get(self.url(&["faults"])?)).await
    }

    /// `PUT /faults`: replaces the whole configuration.
    pub async fn set_faults(&self, f: &FaultConfig) -> Result<FaultConfig, ClientError> {
        self.send(self.http.put(self.url(&["faults"])?).json(f))
            .await
    }

    /// The base URL with `segments` appended, each percent-encoded as one
    /// path segment (so an id can never escape into another route).
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                ClientError::Connect(format!("sandbox URL '{}' cannot take a path", self.base))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends a request and decodes a success body as `T` or an error body as
    /// [`ClientError::Sandbox`].
    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let response = crate::providers::send_traced(request)
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        // A timeout while reading the body is still a timeout: the request
        // was processed or not, we cannot tell.
        let body = response.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            serde_json::from_slice(&body)
                .map_err(|err| ClientError::Protocol(format!("undecodable {status} answer: {err}")))
        } else {
            Err(error_answer(status, retry_after, &body))
        }
    }
}

fn append_query(url: &mut Url, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        url.query_pairs_mut().append_pair(name, value);
    }
}

/// Classifies a reqwest failure by what it implies about the request.
fn transport_error(err: reqwest::Error) -> ClientError {
    if err.is_timeout() {
        ClientError::Timeout
    } else if err.is_connect() {
        ClientError::Connect(crate::error_chain::causes(&err))
    } else {
        ClientError::Transport(crate::error_chain::causes(&err))
    }
}

/// Maps an error answer back to the [`SandboxError`] the server started from.
fn error_answer(status: StatusCode, retry_after: Option<u64>, body: &[u8]) -> ClientError {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let err = match (status.as_u16(), detail) {
        // A 429 is unambiguous even without a body (e.g. from a proxy).
        (429, detail) => SandboxError::RateLimited {
            retry_after_secs: detail
                .and_then(|d| d.retry_after)
                .or(retry_after)
                .unwrap_or(1)
                .max(1),
        },
        (404, Some(d)) => SandboxError::NotFound {
            code: d.code,
            message: d.message,
        },
        (400, Some(d)) => SandboxError::InvalidRequest {
            code: d.code,
            message: d.message,
        },
        (409, Some(d)) => SandboxError::Conflict {
            code: d.code,
            message: d.message,
        },
        (500, Some(d)) => SandboxError::Api { message: d.message },
        (_, Some(d)) => {
            return ClientError::Protocol(format!("{status} answer: {} ({})", d.message, d.code));
        }
        (_, None) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            return ClientError::Protocol(format!("{status} answer without an error body: {text}"));
        }
    };
    ClientError::Sandbox(err)
}
