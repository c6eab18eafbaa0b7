//! Typed settings. Every setting has a command-line flag and an environment variable (see
//! [`crate::cli`]); this module holds the validated result.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::AccountId;
use crate::providers::connections::ProviderDefaults;
use crate::providers::registry::ProviderSettings;
use crate::providers::traffic::TrafficConfig;
use crate::secret::Secret;
use crate::service::RefundsConfig;
use crate::store::StoreOptions;
use crate::vault::{MasterKey, Vault};

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
    /// How long, after SIGTERM and before it stops accepting calls, the process reports
    /// NOT_SERVING while still serving (for load balancers to take it out of rotation).
    pub drain_delay: Duration,
    /// Leave the schema to `refund-service migrate` (a deployment's migration job): refuse to
    /// start when a migration is pending instead of applying it.
    pub skip_migrations: bool,
    /// Requests per second each API key may make; 0 = unlimited.
    pub api_key_rate_limit: u32,
    /// TLS on both ports (and mTLS when a client CA is given); `None` serves plaintext.
    pub tls: Option<TlsSettings>,
    /// The admin key of a fresh installation, when the operator supplies it (e.g. from a
    /// Kubernetes secret). Without it, a fresh installation on loopback makes one up and shows it.
    pub bootstrap_api_key: Option<Secret>,
    /// Connections: the master key that seals their credentials, who may use the platform's, and
    /// where each provider is for connections that do not say.
    pub connections: ConnectionSettings,
    /// What browsers get: the origins allowed to call the API with gRPC-Web (CORS), and where
    /// the operator console comes from.
    pub browsers: BrowserSettings,
}

/// Settings of browser access: gRPC-Web from other origins, and the operator console.
#[derive(Debug, Clone, Default)]
pub struct BrowserSettings {
    pub cors_allowed_origins: CorsOrigins,
    /// Serve the console from this directory instead of the copy built into the binary.
    pub console_dir: Option<PathBuf>,
}

/// Web origins whose pages may call the API from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No other origin (the console at `/console` is same-origin and needs none).
    #[default]
    None,
    /// Any origin (`*`). Calls still need an API key: CORS only decides which pages may read
    /// the answers.
    Any,
    /// These origins, each as a browser sends it: `scheme://host[:port]`, the port only when
    /// it is not the scheme's default.
    List(Vec<String>),
}

impl CorsOrigins {
    /// Parses `--cors-allowed-origins` values: `*` alone, or `http(s)://host[:port]` origins
    /// (normalized: lower case, default port dropped, no trailing slash).
    pub fn parse(values: &[String]) -> anyhow::Result<Self> {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            return Ok(Self::None);
        }
        if values.contains(&"*") {
            anyhow::ensure!(
                values.len() == 1,
                "--cors-allowed-origins: `*` allows every origin and cannot be combined with others"
            );
            return Ok(Self::Any);
        }
        let mut origins = Vec::with_capacity(values.len());
        for value in values {
            let bad = |why: &str| {
                anyhow::anyhow!(
                    "--cors-allowed-origins: {value:?} {why}; an origin is scheme://host[:port], e.g. https://ops.example.com"
                )
            };
            let url =
                reqwest::Url::parse(value).map_err(|e| bad(&format!("is not a URL ({e})")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad("is not an http or https origin"));
            }
            if !url.username().is_empty()
                || url.password().is_some()
                || !matches!(url.path(), "" | "/")
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(bad("has more than scheme, host and port"));
            }
            let origin = url.origin().ascii_serialization();
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(Self::List(origins))
    }
}

/// Settings of accounts' provider connections.
#[derive(Debug, Clone, Default)]
pub struct ConnectionSettings {
    /// The file holding the master key that seals connection credentials; without it, no
    /// connection can be made or used.
    pub secrets_key_file: Option<PathBuf>,
    /// The master key before the current one, while rotating (see `connections rekey`).
    pub previous_secrets_key_file: Option<PathBuf>,
    /// The accounts that may refund through the platform's (configured) credentials; `None`
    /// means every account.
    pub platform_accounts: Option<BTreeSet<AccountId>>,
    /// Per provider, the API base and traffic settings connections use (the platform's flags).
    pub provider_defaults: Vec<ProviderDefaults>,
}

impl ConnectionSettings {
    /// The vault from the key files, if a key is configured; errors name the file.
    pub fn vault(&self) -> anyhow::Result<Option<Arc<Vault>>> {
        let Some(current) = &self.secrets_key_file else {
            anyhow::ensure!(
                self.previous_secrets_key_file.is_none(),
                "--previous-secrets-key-file needs --secrets-key-file (the new key)"
            );
            return Ok(None);
        };
        let current =
            MasterKey::read(current).map_err(|e| anyhow::anyhow!("--secrets-key-file {e}"))?;
        let previous = self
            .previous_secrets_key_file
            .as_deref()
            .map(MasterKey::read)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--previous-secrets-key-file {e}"))?;
        Ok(Some(Arc::new(Vault::new(current, previous))))
    }
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
            drain_delay: Duration::ZERO,
            skip_migrations: false,
            api_key_rate_limit: 0,
            bootstrap_api_key: None,
            tls: None,
            connections: ConnectionSettings::default(),
            browsers: BrowserSettings::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(values: &[&str]) -> anyhow::Result<CorsOrigins> {
        CorsOrigins::parse(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn cors_origins_are_normalized_as_browsers_send_them() {
        assert_eq!(origins(&[]).unwrap(), CorsOrigins::None);
        assert_eq!(origins(&[" "]).unwrap(), CorsOrigins::None);
        assert_eq!(origins(&["*"]).unwrap(), CorsOrigins::Any);
        assert_eq!(
            origins(&[
                "HTTPS://Ops.Example.com:443/",
                "http://127.0.0.1:5173",
                "https://ops.example.com"
            ])
            .unwrap(),
            CorsOrigins::List(vec![
                "https://ops.example.com".to_owned(),
                "http://127.0.0.1:5173".to_owned()
            ])
        );
    }

    #[test]
    fn cors_origins_refuse_what_is_not_an_origin() {
        for bad in [
            "ops.example.com",
            "ftp://ops.example.com",
            "https://ops.example.com/console",
            "https://user@ops.example.com",
            "https://ops.example.com?x=1",
        ] {
            let err = origins(&[bad]).expect_err(bad).to_string();
            assert!(err.contains("--cors-allowed-origins"), "{err}");
        }
        assert!(origins(&["*", "https://a.example"]).is_err());
    }
}
