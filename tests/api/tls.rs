//! TLS on both ports, and mTLS: certificates made for the test with rcgen.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use refund_service::api::pb;
use refund_service::api::pb::refund_service_client::RefundServiceClient;
use refund_service::config::TlsSettings;
use refund_service::secret::Secret;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::*;

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let ca = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["billing-backend".into()]);
    Pki {
        ca: ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// A service with TLS (and mTLS), on its gRPC and HTTP addresses.
async fn spawn_tls(
    db: &TestDb,
    pki: &Pki,
    mtls: bool,
) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let tls = TlsSettings {
        cert_pem: pki.server_cert.clone().into_bytes(),
        key_pem: Secret::opaque(pki.server_key.clone()),
        client_ca_pem: mtls.then(|| pki.ca.clone().into_bytes()),
    };
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let db_url = db.url.clone();
    tokio::spawn(async move {
        let mut settings = refund_service::config::ServeSettings::local(db_url);
        settings.bootstrap_api_key = Some(Secret::opaque(ADMIN_KEY.to_owned()));
        settings.tls = Some(tls);
        let app = refund_service::app::Application::build(settings)
            .await
            .expect("build");
        let _ = addr_tx.send((app.grpc_addr(), app.http_addr()));
        app.run_until(std::future::pending()).await
    });
    addr_rx.await.expect("addresses")
}

async fn tls_client(
    addr: std::net::SocketAddr,
    pki: &Pki,
    with_cert: bool,
) -> Result<Client, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_cert {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("url")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(RefundServiceClient::with_interceptor(
        channel,
        Bearer(Some(ADMIN_KEY.to_owned())),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_speak_tls_and_plaintext_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = pki();
    let db = TestDb::new().await;
    let (grpc, http) = spawn_tls(&db, &pki, false).await;

    let mut client = tls_client(grpc, &pki, false).await.expect("TLS connects");
    client
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("a call over TLS");
    let plaintext = client_with_key(grpc, Some(ADMIN_KEY))
        .await
        .list_refunds(pb::ListRefundsRequest::default())
        .await;
    assert!(plaintext.is_err(), "plaintext gRPC is refused");

    let ca = reqwest::Certificate::from_pem(pki.ca.as_bytes()).expect("CA");
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve("localhost", http)
        .build()
        .expect("client");
    let ready = https
        .get(format!("https://localhost:{}/healthz", http.port()))
        .send()
        .await
        .expect("HTTPS answers");
    assert!(ready.status().is_success());
    assert!(
        reqwest::get(format!("http://{http}/healthz"))
            .await
            .is_err(),
        "plain HTTP is refused"
    );

    // Clients that connect and say nothing do not hold up anyone else's handshake (each may
    // take up to 5 s; one after the other, these two would take 10).
    let _silent: Vec<tokio::net::TcpStream> = vec![
        tokio::net::TcpStream::connect(http).await.expect("connect"),
        tokio::net::TcpStream::connect(http).await.expect("connect"),
    ];
    // A new client: the one above would reuse its connection and need no handshake.
    let fresh = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).expect("CA"))
        .resolve("localhost", http)
        .build()
        .expect("client");
    let ready = fresh
        .get(format!("https://localhost:{}/healthz", http.port()))
        .timeout(std::time::Duration::from_secs(4))
        .send()
        .await
        .expect("served beside silent connections");
    assert!(ready.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mtls_a_client_without_a_certificate_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = pki();
    let db = TestDb::new().await;
    let (grpc, http) = spawn_tls(&db, &pki, true).await;

    let refused = match tls_client(grpc, &pki, false).await {
        Err(_) => true,
        Ok(mut client) => client
            .list_refunds(pb::ListRefundsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "no client certificate, no service");
    let mut client = tls_client(grpc, &pki, true).await.expect("mTLS connects");
    client
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("a call with a client certificate");

    let ca = reqwest::Certificate::from_pem(pki.ca.as_bytes()).expect("CA");
    let without = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .resolve("localhost", http)
        .build()
        .expect("client");
    assert!(
        without
            .get(format!("https://localhost:{}/healthz", http.port()))
            .send()
            .await
            .is_err(),
        "the HTTP port asks for a certificate too"
    );
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", pki.client_cert, pki.client_key).as_bytes())
            .expect("identity");
    let with = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(identity)
        .resolve("localhost", http)
        .build()
        .expect("client");
    let ok = with
        .get(format!("https://localhost:{}/healthz", http.port()))
        .send()
        .await
        .expect("HTTPS with a client certificate");
    assert!(ok.status().is_success());
}
