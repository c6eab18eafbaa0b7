//! Typed settings. Every setting has a command-line flag and an environment variable (see
//! [`crate::cli`]); this module holds the validated result.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::providers::registry::ProviderSettings;
use crate::providers::traffic::TrafficConfig;
use crate::secret::Secret;
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
    /// The providers configured besides the sandbox (those of
    /// [`crate::providers::registry::REGISTRY`] given a credential), each registered by its name.
    pub providers: Vec<ProviderSettings>,
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
            providers: Vec::new(),
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
