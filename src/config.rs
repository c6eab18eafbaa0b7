//! Typed settings. Every setting has a command-line flag and an environment variable (see
//! [`crate::cli`]); this module holds the validated result.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::providers::traffic::TrafficConfig;
use crate::service::RefundsConfig;
use crate::store::StoreOptions;

/// The embedded default: a SQLite file in the working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://refund-service.db?mode=rwc";

/// Settings of `refund-service serve`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database_url: Secret,
    /// A standalone sandbox's base URL; `None` runs the sandbox in-process.
    pub sandbox_url: Option<String>,
    /// Rate limit, concurrency, timeouts, retries and circuit breaker for the sandbox provider.
    pub sandbox_traffic: TrafficConfig,
    /// The Stripe provider, registered as `stripe` when a secret key is configured.
    pub stripe: Option<StripeSettings>,
    /// The Mercado Pago provider, registered as `mercadopago` when an access token is configured.
    pub mercadopago: Option<MercadoPagoSettings>,
    /// Secrets that sign the sandbox's webhooks. Empty with the in-process sandbox means: make
    /// one up at start-up and have the sandbox send its webhooks to this process.
    pub sandbox_webhook_secrets: Vec<Secret>,
    /// Largest accepted gap between a webhook signature's timestamp and our clock.
    pub webhook_tolerance: Duration,
    pub store: StoreOptions,
    pub refunds: RefundsConfig,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Requests per second each API key may make; 0 = unlimited.
    pub api_key_rate_limit: u32,
    /// TLS on both ports (and mTLS when a client CA is given); `None` serves plaintext.
    pub tls: Option<TlsSettings>,
    /// The admin key of a fresh installation, when the operator supplies it (e.g. from a
    /// Kubernetes secret). Without it, a fresh installation on loopback makes one up and shows it.
    pub bootstrap_api_key: Option<Secret>,
}

impl ServeSettings {
    /// Settings for tests and embedding: both ports on 127.0.0.1:0 (any free port).
    pub fn local(database_url: impl Into<String>) -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: ([127, 0, 0, 1], 0).into(),
            database_url: Secret::new(database_url.into()),
            sandbox_url: None,
            sandbox_traffic: TrafficConfig::default(),
            stripe: None,
            mercadopago: None,
            sandbox_webhook_secrets: Vec::new(),
            webhook_tolerance: crate::providers::signature::DEFAULT_TOLERANCE,
            store: StoreOptions::default(),
            refunds: RefundsConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            api_key_rate_limit: 0,
            bootstrap_api_key: None,
            tls: None,
        }
    }
}

/// The Stripe provider's settings.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// e.g. `https://api.stripe.com` (without `/v1`).
    pub api_base: String,
    pub secret_key: Secret,
    pub traffic: TrafficConfig,
    /// Webhook signing secrets (`whsec_…`), several while one is rotated; empty refuses webhooks.
    pub webhook_secrets: Vec<Secret>,
}

/// The Mercado Pago provider's settings.
#[derive(Debug, Clone)]
pub struct MercadoPagoSettings {
    /// e.g. `https://api.mercadopago.com`.
    pub api_base: String,
    pub access_token: Secret,
    pub traffic: TrafficConfig,
    /// Secrets that sign its notifications (`x-signature`); empty refuses them.
    pub webhook_secrets: Vec<Secret>,
}

/// Certificate, key and (for mTLS) the CA client certificates must chain to, as PEM.
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_pem: Vec<u8>,
    pub key_pem: Secret,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// A rustls server configuration (HTTP port); checks that the PEMs parse.
    pub fn rustls_server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("the TLS certificate is not PEM: {e}"))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "the TLS certificate file has no certificate"
        );
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.expose().as_bytes())
            .map_err(|e| anyhow::anyhow!("the TLS key is not a PEM private key: {e}"))?;
        let builder = rustls::ServerConfig::builder();
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    roots
                        .add(cert.map_err(|e| anyhow::anyhow!("the client CA is not PEM: {e}"))?)
                        .map_err(|e| anyhow::anyhow!("bad client CA certificate: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| anyhow::anyhow!("cannot verify clients with that CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| anyhow::anyhow!("the TLS certificate and key do not fit: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A value that must not reach logs: `Debug` shows only its redacted form.
#[derive(Clone)]
pub struct Secret {
    value: String,
    redaction: Redaction,
}

#[derive(Clone, Copy)]
enum Redaction {
    /// A URL: only its password is hidden, the rest helps when reading logs.
    UrlPassword,
    /// An API key or similar: nothing of it is shown.
    Whole,
}

impl Secret {
    /// A URL whose password, if any, is redacted.
    pub fn new(value: String) -> Self {
        Self {
            value,
            redaction: Redaction::UrlPassword,
        }
    }

    /// A value (an API key) that is redacted entirely.
    pub fn opaque(value: String) -> Self {
        Self {
            value,
            redaction: Redaction::Whole,
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The value fit for logs and error messages.
    pub fn redacted(&self) -> String {
        match self.redaction {
            Redaction::UrlPassword => redact_url_password(&self.value),
            Redaction::Whole => "[redacted]".to_owned(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let s = Secret::new("postgres://app:hunter2@db:5432/refunds?sslmode=require".into());
        assert_eq!(
            s.redacted(),
            "postgres://app:***@db:5432/refunds?sslmode=require"
        );
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            Secret::new(DEFAULT_DATABASE_URL.into()).redacted(),
            DEFAULT_DATABASE_URL
        );
        assert_eq!(
            Secret::new("postgres://postgres@127.0.0.1/x".into()).redacted(),
            "postgres://postgres@127.0.0.1/x"
        );
    }

    #[test]
    fn api_keys_never_show() {
        let s = Secret::opaque("sk_live_abc123".into());
        assert!(!format!("{s:?}").contains("abc123"));
        assert_eq!(s.redacted(), "[redacted]");
        assert_eq!(s.expose(), "sk_live_abc123");
    }
}
