//! The server around the API: health, reflection, HTTP probes, graceful drain.

use std::time::Duration;

use refund_service::api::pb;
use refund_service::sandbox::FaultConfig;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;

async fn channel(app: &TestApp) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_reports_serving_for_the_refund_service() {
    let (app, _db) = spawn_app().await;
    let mut health = HealthClient::new(channel(&app).await);
    for service in ["", "refunds.v1.RefundService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_protocol_versions() {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Req;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Resp;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1a;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as V1aReq;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as V1aResp;

    let (app, _db) = spawn_app().await;
    let mut v1 = V1::new(channel(&app).await);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1Req::ListServices(String::new())),
    };
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(resp)) = stream.next().await else {
        panic!("no v1 answer")
    };
    let Some(V1Resp::ListServicesResponse(list)) = resp.message_response else {
        panic!("v1 list")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"refunds.v1.RefundService".to_owned()),
        "{names:?}"
    );

    let mut v1a = V1a::new(channel(&app).await);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1aReq::ListServices(String::new())),
    };
    let mut stream = v1a
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(resp)) = stream.next().await else {
        panic!("no v1alpha answer")
    };
    let Some(V1aResp::ListServicesResponse(list)) = resp.message_response else {
        panic!("v1alpha list")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"refunds.v1.RefundService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn http_probes_answer() {
    let (app, _db) = spawn_app().await;
    let http = reqwest::Client::new();
    for path in ["healthz", "readyz"] {
        let resp = http
            .get(format!("http://{}/{path}", app.http_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_refund_finish() {
    let (sandbox_url, sandbox) = spawn_sandbox(FaultConfig {
        latency_ms: 400,
        ..FaultConfig::default()
    })
    .await;
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |s| {
        s.sandbox_url = Some(sandbox_url);
        s.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let payment = app.seed(1_000, "USD").await;
    let before = sandbox.stats().requests;
    let mut client = app.client.clone();
    let in_flight = tokio::spawn(async move {
        client
            .create_refund(refund_request(&payment, Some(100), "USD"))
            .await
    });
    // Once the call has reached the provider (whose answers take 400 ms each), stop.
    eventually(
        Duration::from_secs(10),
        "the call to reach the provider",
        || async { (sandbox.stats().requests > before).then_some(()) },
    )
    .await;
    app.stop().await;
    let refund = in_flight
        .await
        .unwrap()
        .expect("drained, not cut off")
        .into_inner();
    assert_eq!(status_of(&refund), pb::RefundStatus::Succeeded);
}

#[tokio::test]
async fn a_draining_server_reports_not_serving_while_it_still_serves() {
    let db = TestDb::new().await;
    let mut app = spawn_app_with(&db, |s| s.drain_delay = Duration::from_secs(30)).await;
    let mut health = HealthClient::new(channel(&app).await);
    app.begin_stop();
    // Both health names and the HTTP readiness probe turn away new traffic...
    for service in ["", "refunds.v1.RefundService"] {
        eventually(
            Duration::from_secs(10),
            "health to report NOT_SERVING",
            || {
                let mut health = health.clone();
                async move {
                    let status = health
                        .check(HealthCheckRequest {
                            service: service.into(),
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .status;
                    (status == ServingStatus::NotServing as i32).then_some(())
                }
            },
        )
        .await;
    }
    let ready = reqwest::get(format!("http://{}/readyz", app.http_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.text().await.unwrap().trim(), "draining");
    let live = reqwest::get(format!("http://{}/healthz", app.http_addr))
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "a draining server is still alive");
    // ...while calls that still arrive (before the load balancer has noticed) are served.
    let payment = app.seed(1_000, "USD").await;
    let refund = app
        .client
        .clone()
        .create_refund(refund_request(&payment, Some(100), "USD"))
        .await
        .expect("served while draining")
        .into_inner();
    assert_eq!(status_of(&refund), pb::RefundStatus::Succeeded);
    let _ = health
        .check(HealthCheckRequest::default())
        .await
        .expect("health still answers");
}

#[tokio::test]
async fn skip_migrations_refuses_a_database_whose_schema_is_behind() {
    let db = TestDb::new().await;
    let mut settings = refund_service::config::ServeSettings::local(db.url.clone());
    settings.skip_migrations = true;
    let Err(e) = refund_service::app::Application::build(settings).await else {
        panic!("started on an empty database without migrating it");
    };
    let message = refund_service::cli::error_chain(&e);
    assert!(
        message.contains("refund-service migrate") && message.contains("behind this build"),
        "{message}"
    );
    // Once migrated (as the Helm hook does), the same settings start.
    spawn_app_with(&db, |_| {}).await.stop().await;
    let app = spawn_app_with(&db, |s| s.skip_migrations = true).await;
    let payment = app.seed(1_000, "USD").await;
    app.client
        .clone()
        .create_refund(refund_request(&payment, Some(100), "USD"))
        .await
        .expect("serves");
    app.stop().await;
}
