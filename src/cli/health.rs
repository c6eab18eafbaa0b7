//! `refund-service health`: a grpc.health.v1 client, for probes that cannot speak gRPC
//! themselves (a `helm test` pod runs it from the service's own image, which has no shell).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service's gRPC address: host:port, http://host:port, or https://host:port (with
    /// --ca-cert).
    #[arg(long, env = "REFUND_SERVER", default_value = crate::bulk_cli::DEFAULT_SERVER)]
    pub server: String,

    /// The service to ask about, e.g. refunds.v1.RefundService; empty (the default) asks about
    /// the whole server.
    #[arg(long, default_value = "")]
    pub service: String,

    /// PEM CA certificate that signed the server's certificate (https only).
    #[arg(long, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,

    /// Longest wait for the answer, connecting included.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Asks the server's health service; `Ok` only when it answers SERVING.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let url = match args.server.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => args.server.clone(),
        None if !args.server.is_empty() && !args.server.contains('/') => {
            format!("http://{}", args.server)
        }
        _ => {
            return Err(anyhow!(
                "--server {:?}: expected host:port, http://host:port or https://host:port",
                args.server
            ));
        }
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow!("--server {:?} is not a valid address: {e}", args.server))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if url.starts_with("https://") {
        let ca = args
            .ca_cert
            .as_ref()
            .ok_or_else(|| anyhow!("an https --server needs --ca-cert"))?;
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read --ca-cert {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .context("bad TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|status| {
            anyhow!(
                "{} answered {:?}: {}",
                args.server,
                status.code(),
                status.message()
            )
        })?;
    let status = answer.into_inner().status();
    let name = if args.service.is_empty() {
        "the server"
    } else {
        args.service.as_str()
    };
    println!("{name}: {}", status.as_str_name());
    match status {
        ServingStatus::Serving => Ok(()),
        other => Err(anyhow!("{name} is {}", other.as_str_name())),
    }
}
