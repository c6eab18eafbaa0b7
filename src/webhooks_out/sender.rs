//! Sending one signed webhook: the HTTP side of a delivery attempt.
//!
//! The endpoint's URL passes the SSRF guard again ([`target::resolve`]), and the connection is
//! pinned to the addresses it approved; redirects are not followed (a 3xx is a failed attempt)
//! and no proxy from the environment is used. The attempt is bounded by a timeout, and so is
//! the answer's body: only its first [`MAX_RESPONSE_BODY`] bytes are read, to show in the
//! delivery's last error.
//!
//! A [`Sender`] keeps one HTTP client (with its connection pool) per host and set of approved
//! addresses, so that deliveries to an endpoint reuse their connections; a host that resolves
//! to other addresses gets another client, pinned to those.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::signing::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookSecret};
use super::target::{self, Endpoint, EndpointPolicy};

/// How much of an endpoint's answer is read and kept.
pub const MAX_RESPONSE_BODY: usize = 1024;
/// Longest wait for the endpoint's host name to resolve; part of the attempt's time.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How webhooks are sent.
#[derive(Debug, Clone, Copy)]
pub struct SendConfig {
    pub policy: EndpointPolicy,
    /// Longest wait for the endpoint's answer, from connecting to its status line and headers.
    pub timeout: Duration,
}

impl SendConfig {
    /// The longest an attempt can take (resolving, then the request, then reading the body):
    /// what a delivery's lease must outlast.
    pub fn attempt_bound(&self) -> Duration {
        RESOLVE_TIMEOUT + self.timeout * 2
    }
}

/// One webhook to send.
pub struct Outbound<'a> {
    pub url: &'a str,
    /// The `webhook-id`: the event's id, the same on every attempt, for receivers to dedupe.
    pub id: &'a str,
    pub timestamp_secs: i64,
    pub body: &'a [u8],
    /// Every secret that signs it (two during a rotation overlap).
    pub secrets: &'a [WebhookSecret],
    /// Sent as they are (the trace context).
    pub extra_headers: &'a [(String, String)],
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The endpoint answered 2xx.
    Delivered { status: u16 },
    /// It answered something else; `body` is the start of its answer.
    Refused { status: u16, body: String },
    /// No answer: the URL is no longer allowed, the name does not resolve, the connection failed
    /// or timed out.
    NoAnswer { error: String },
}

/// Clients kept at most; past it the cache starts over (their connections close).
const MAX_CLIENTS: usize = 256;

/// Sends webhooks, reusing a pinned client per host and addresses.
pub struct Sender {
    config: SendConfig,
    clients: Mutex<HashMap<(String, Vec<SocketAddr>), reqwest::Client>>,
}

impl Sender {
    pub fn new(config: SendConfig) -> Self {
        Self {
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &SendConfig {
        &self.config
    }

    /// The client for `host` pinned to `addrs`, made on first use.
    fn client(&self, host: &str, addrs: &[SocketAddr]) -> Result<reqwest::Client, String> {
        let key = (host.to_owned(), addrs.to_vec());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        // reqwest is built without a default TLS crypto provider; installing fails harmlessly
        // when another part of the process already did it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(self.config.timeout)
            .resolve_to_addrs(host, addrs)
            .user_agent(concat!(
                "refund-service/",
                env!("CARGO_PKG_VERSION"),
                " webhooks"
            ))
            .build()
            .map_err(|e| crate::error_chain::causes(&e))?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Sends `webhook`.
    pub async fn send(&self, webhook: Outbound<'_>) -> SendOutcome {
        send(self, webhook).await
    }
}

async fn send(sender: &Sender, webhook: Outbound<'_>) -> SendOutcome {
    let config = &sender.config;
    let no_answer = |error: String| SendOutcome::NoAnswer { error };
    if webhook.secrets.is_empty() {
        return no_answer("the endpoint has no signing secret".to_owned());
    }
    let endpoint = match Endpoint::parse(webhook.url, config.policy) {
        Ok(e) => e,
        Err(e) => return no_answer(e.to_string()),
    };
    let addrs = match tokio::time::timeout(
        RESOLVE_TIMEOUT,
        target::resolve(&endpoint, config.policy),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => return no_answer(e.to_string()),
        Err(_) => {
            return no_answer(format!(
                "resolving {} took longer than {RESOLVE_TIMEOUT:?}",
                endpoint.host_str()
            ));
        }
    };
    let client = match sender.client(endpoint.host_str(), &addrs) {
        Ok(c) => c,
        Err(e) => return no_answer(e),
    };
    let signature = signing::sign(
        webhook.id,
        webhook.timestamp_secs,
        webhook.body,
        webhook.secrets,
    );
    let mut request = client
        .post(endpoint.url().clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(HEADER_ID, webhook.id)
        .header(HEADER_TIMESTAMP, webhook.timestamp_secs.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(webhook.body.to_vec());
    for (name, value) in webhook.extra_headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return no_answer(format!("no answer within {:?}", config.timeout));
        }
        Err(e) => return no_answer(crate::error_chain::causes(&e)),
    };
    let status = response.status().as_u16();
    if response.status().is_success() {
        return SendOutcome::Delivered { status };
    }
    let mut body = Vec::new();
    let read = async {
        while body.len() < MAX_RESPONSE_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    // A slow body is not worth waiting for beyond the attempt's time.
    let _ = tokio::time::timeout(config.timeout, read).await;
    body.truncate(MAX_RESPONSE_BODY);
    SendOutcome::Refused {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
