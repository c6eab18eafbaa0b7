//! Outbound adapters to payment providers, behind one trait shaped like real PSP APIs.
//!
//! Each adapter speaks its provider's wire format and maps it into the types here; nothing outside
//! this module sees a provider's JSON. Errors are classified once, exhaustively, into what the
//! service must do next: give up, try again, or — for ambiguous failures — look the refund up
//! before anything else.

pub mod adyen;
pub mod connections;
mod http;
pub mod mercadopago;
pub mod registry;
pub mod sandbox;
pub mod signature;
pub mod stripe;
pub mod traffic;

pub(crate) use http::send_traced;
pub use http::url_template;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{Amount, Currency, PaymentRef, ProviderName, RefundReason};
use crate::secret::Secret;
use traffic::{ControlledProvider, ProviderHealth};

/// A payment as its provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPayment {
    pub id: String,
    pub captured: i64,
    pub refunded: i64,
    pub currency: Currency,
    pub status: PaymentStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Captured: the money moved, so it can be refunded.
    Captured,
    /// Anything else (authorized only, failed, canceled), in the provider's words.
    NotRefundable(String),
}

/// What the service asks a provider to refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCall {
    pub payment: PaymentRef,
    pub amount: Amount,
    pub currency: Currency,
    pub reason: RefundReason,
    pub metadata: BTreeMap<String, String>,
    /// Sent as the provider's idempotency key; also our refund id, carried in metadata where the
    /// provider has it, so the refund can be found again after an ambiguous failure.
    pub idempotency_key: String,
}

/// A refund as its provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRefund {
    pub id: String,
    pub amount: i64,
    pub status: ProviderRefundStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderRefundStatus {
    Pending,
    Succeeded,
    Failed { code: String, reason: String },
    Canceled,
}

/// A provider's webhook notification, in our terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    /// The provider's event id: the same event delivered twice is applied once.
    pub id: String,
    /// The provider's event type, e.g. `refund.updated`.
    pub kind: String,
    pub subject: EventSubject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSubject {
    /// Refunds as of the event (a Stripe `charge.refunded` can carry several).
    Refunds(Vec<RefundUpdate>),
    /// The provider says a payment's money moved (an Adyen `CAPTURE`): how a provider that cannot
    /// be asked for a payment ([`Capabilities::payment_lookup`] false) tells the service what
    /// there is to refund. The service records it in its payments ledger.
    Captured {
        payment: PaymentRef,
        /// What is captured, in minor units of `currency`.
        amount: i64,
        currency: Currency,
    },
    /// Something happened to a payment without the refunds in the event (Mercado Pago's
    /// notifications, Stripe's `charge.refunded` in API versions that no longer expand refunds):
    /// its PENDING refunds are looked up at the provider now.
    Payment(PaymentRef),
    /// An event type the service does not act on.
    Ignored,
}

/// One refund as a webhook reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundUpdate {
    pub refund: ProviderRefund,
    /// Our refund id, when the provider carries it back (Stripe and sandbox metadata).
    pub refund_id: Option<String>,
    pub payment: Option<PaymentRef>,
}

/// How a provider call went wrong. Matched exhaustively wherever a decision is made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The payment or refund does not exist at the provider.
    #[error("not found at the provider: {0}")]
    NotFound(String),
    /// The provider processed the request and said no. Final: retrying cannot help.
    #[error("rejected by the provider: {code}: {message}")]
    Rejected { code: String, message: String },
    /// Too many requests. Nothing was processed.
    #[error("rate limited by the provider")]
    RateLimited { retry_after: Option<Duration> },
    /// The provider could not be reached or answered 5xx before processing. Nothing was processed.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// No answer in time. The provider may or may not have processed the request.
    #[error("the provider did not answer in time")]
    Timeout,
    /// The connection failed after the request was sent, or the answer could not be understood.
    /// The provider may or may not have processed the request.
    #[error("answer from the provider was lost: {0}")]
    Ambiguous(String),
}

impl ProviderError {
    /// Whether the provider may have acted on the request although we got no clear answer. Such a
    /// refund stays PENDING and is looked up at the provider before anything is sent again.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Timeout | Self::Ambiguous(_) => true,
            Self::NotFound(_)
            | Self::Rejected { .. }
            | Self::RateLimited { .. }
            | Self::Unavailable(_) => false,
        }
    }
}

/// What kinds of refund a provider can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Refunding the whole remaining balance of a payment.
    pub full_refunds: bool,
    /// Refunding part of a payment (several partial refunds may follow one another).
    pub partial_refunds: bool,
    /// A refund can be looked up (`get_refund`, `find_refund`). Without it, an ambiguous creation
    /// is never looked up nor sent again, and the reconciler leaves the refund PENDING.
    pub refund_lookup: bool,
    /// A payment can be looked up (`get_payment`) for the pre-flight. Without it, the pre-flight
    /// reads the captured amount the provider's capture notifications left in our ledger.
    pub payment_lookup: bool,
    /// Refunds settle only by webhook: their age while PENDING is watched and reported.
    pub settles_by_webhook_only: bool,
}

impl Capabilities {
    /// A provider that can be asked about payments and refunds, full and partial.
    pub const LOOKUPS: Self = Self {
        full_refunds: true,
        partial_refunds: true,
        refund_lookup: true,
        payment_lookup: true,
        settles_by_webhook_only: false,
    };
}

/// One delivery to `POST /webhooks/{provider}`, as the HTTP layer received it, with what its
/// signature is checked against.
pub struct WebhookDelivery<'a> {
    pub headers: &'a reqwest::header::HeaderMap,
    /// The query string's parameters (Mercado Pago signs one of them).
    pub query: &'a HashMap<String, String>,
    pub body: &'a [u8],
    /// The current and, while rotating, the previous signing secret; never empty.
    pub secrets: &'a [Secret],
    pub now_unix: i64,
    /// Largest accepted age (or clock skew) of a signature's timestamp.
    pub tolerance: Duration,
}

/// Why a webhook delivery is refused. Nothing of a refused delivery is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRejection {
    /// The provider takes no webhooks (none configured, or it sends none).
    #[error("webhooks from this provider are not enabled")]
    NotEnabled,
    /// The signature is missing, malformed, stale or made with no configured secret: the body
    /// was not read.
    #[error("{0}")]
    Signature(String),
    /// Signed, but not a notification this adapter can read.
    #[error("{0}")]
    Unreadable(String),
}

impl From<signature::SignatureError> for WebhookRejection {
    fn from(e: signature::SignatureError) -> Self {
        match e {
            signature::SignatureError::NoSecret => Self::NotEnabled,
            other => Self::Signature(other.to_string()),
        }
    }
}

/// A payment provider's refund API, and how it tells us about refunds (webhooks).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// What this provider supports, for discovery (`ListProviders`).
    fn capabilities(&self) -> Capabilities;
    /// Pre-flight: the payment's captured amount, refunded amount, currency and status.
    async fn get_payment(&self, payment: &PaymentRef) -> Result<ProviderPayment, ProviderError>;
    /// Creates a refund, sending `call.idempotency_key` as the provider's idempotency key.
    async fn create_refund(&self, call: &RefundCall) -> Result<ProviderRefund, ProviderError>;
    /// A refund by the provider's id.
    async fn get_refund(&self, provider_refund_id: &str) -> Result<ProviderRefund, ProviderError>;
    /// Finds the refund made for `idempotency_key` on `payment`, if the provider has one: how an
    /// ambiguous failure is resolved before any retry.
    async fn find_refund(
        &self,
        payment: &PaymentRef,
        idempotency_key: &str,
    ) -> Result<Option<ProviderRefund>, ProviderError>;
    /// Verifies a webhook delivery with the provider's own scheme and reads it into our terms;
    /// nothing in it is trusted before its signature checks out. Only the adapter knows the
    /// provider's headers, signature and event format. The default takes no webhooks.
    fn read_webhook(
        &self,
        delivery: &WebhookDelivery<'_>,
    ) -> Result<WebhookEvent, WebhookRejection> {
        let _ = delivery;
        Err(WebhookRejection::NotEnabled)
    }
    /// The body of the HTTP answer to a webhook delivery once it is stored, when the provider
    /// expects a particular one (Adyen: `[accepted]`, as text). `None`: our JSON receipt.
    fn webhook_ack(&self) -> Option<&'static str> {
        None
    }
}

/// The configured providers, by name, and which one serves requests that name none. Each is
/// wrapped in traffic control; each may have secrets that sign its inbound webhooks.
#[derive(Clone)]
pub struct Providers {
    by_name: HashMap<ProviderName, Entry>,
    default: ProviderName,
}

#[derive(Clone)]
struct Entry {
    provider: Arc<ControlledProvider>,
    /// Current and previous signing secrets (rotation); empty means webhooks are refused.
    webhook_secrets: Vec<Secret>,
}

/// One configured provider as `ListProviders` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSummary {
    pub name: ProviderName,
    pub is_default: bool,
    pub capabilities: Capabilities,
    pub health: ProviderHealth,
    pub webhooks_enabled: bool,
}

impl Providers {
    pub fn new(default: ProviderName, provider: Arc<ControlledProvider>) -> Self {
        Self {
            by_name: HashMap::new(),
            default: default.clone(),
        }
        .with(default, provider)
    }

    pub fn with(mut self, name: ProviderName, provider: Arc<ControlledProvider>) -> Self {
        self.by_name.insert(
            name,
            Entry {
                provider,
                webhook_secrets: Vec::new(),
            },
        );
        self
    }

    /// Accepts webhooks from `name` signed with any of `secrets`. Unknown names are ignored.
    pub fn with_webhook_secrets(mut self, name: &ProviderName, secrets: Vec<Secret>) -> Self {
        if let Some(entry) = self.by_name.get_mut(name) {
            entry.webhook_secrets = secrets;
        }
        self
    }

    pub fn default_name(&self) -> &ProviderName {
        &self.default
    }

    pub fn get(&self, name: &ProviderName) -> Option<&Arc<ControlledProvider>> {
        self.by_name.get(name).map(|e| &e.provider)
    }

    /// The secrets that sign `name`'s webhooks; empty when none are configured.
    pub fn webhook_secrets(&self, name: &ProviderName) -> &[Secret] {
        self.by_name
            .get(name)
            .map_or(&[], |e| e.webhook_secrets.as_slice())
    }

    pub fn names(&self) -> impl Iterator<Item = &ProviderName> {
        self.by_name.keys()
    }

    /// Every configured provider with its capabilities and health, sorted by name.
    pub fn summaries(&self) -> Vec<ProviderSummary> {
        let mut all: Vec<ProviderSummary> = self
            .by_name
            .iter()
            .map(|(name, e)| ProviderSummary {
                name: name.clone(),
                is_default: *name == self.default,
                capabilities: e.provider.capabilities(),
                health: e.provider.health(),
                webhooks_enabled: !e.webhook_secrets.is_empty(),
            })
            .collect();
        all.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        all
    }
}
