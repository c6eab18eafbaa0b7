//! The Adyen provider end to end, against a local fake of its Checkout API (wiremock on
//! loopback) answering with the shapes of Adyen's API reference, and standard notifications
//! signed as Adyen signs them.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use refund_service::api::pb;
use refund_service::providers::registry::ProviderSettings;
use refund_service::providers::traffic::TrafficConfig;
use refund_service::secret::Secret;
use serde_json::json;
use sha2::Sha256;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    TestApp, TestDb, error_reason, eventually, metric_value, reserved_amount, scrape_metrics,
    spawn_app_with, status_history, status_of,
};

const API_KEY: &str = "AQEyhmfxK4-test-key";
const MERCHANT: &str = "RefundServiceECOM";
const HMAC_KEY: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
const PAYMENT: &str = "V4HZ4RBFJGXXGN82";
const REFUND_PSP: &str = "KHQC5N7G84BLNK43";

struct Config {
    call_timeout: Duration,
    /// The reconciler's pace: fast when a test watches it leave a refund alone.
    reconcile_delay: Duration,
    pending_alert: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(5),
            reconcile_delay: Duration::from_secs(3600),
            pending_alert: Duration::from_secs(24 * 3600),
        }
    }
}

async fn spawn(db: &TestDb, api: &MockServer, c: Config) -> TestApp {
    let settings = ProviderSettings {
        name: "adyen".to_owned(),
        api_base: api.uri(),
        credential: Secret::opaque(API_KEY.to_owned()),
        traffic: TrafficConfig {
            call_timeout: c.call_timeout,
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..TrafficConfig::default()
        },
        webhook_secrets: vec![Secret::opaque(HMAC_KEY.to_owned())],
        extra: [("merchant-account".to_owned(), MERCHANT.to_owned())].into(),
    };
    spawn_app_with(db, move |s| {
        s.providers.push(settings);
        s.refunds.reconcile_delay = c.reconcile_delay;
        s.refunds.reconcile_max_delay = c.reconcile_delay;
        s.refunds.reconcile_interval = Duration::from_millis(20);
        s.refunds.webhook_only_pending_alert = c.pending_alert;
    })
    .await
}

fn json_response(status: u16, body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_string(), "application/json")
}

/// `POST /v71/payments/{PAYMENT}/refunds`, answered as Adyen's reference shows: 201 received.
async fn mount_refund(api: &MockServer, expect: u64) {
    Mock::given(method("POST"))
        .and(path(format!("/v71/payments/{PAYMENT}/refunds")))
        .and(header("x-api-key", API_KEY))
        .respond_with(json_response(
            201,
            json!({
                "merchantAccount": MERCHANT,
                "paymentPspReference": PAYMENT,
                "pspReference": REFUND_PSP,
                "status": "received",
                "amount": {"currency": "EUR", "value": 2500},
            }),
        ))
        .expect(expect)
        .mount(api)
        .await;
}

/// A standard notification item, signed: base64 HMAC-SHA256 (key as hex bytes) of
/// `pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success`.
fn item(
    event: &str,
    success: &str,
    psp: &str,
    original: &str,
    reference: &str,
    value: i64,
) -> serde_json::Value {
    let signed = format!("{psp}:{original}:{MERCHANT}:{reference}:{value}:EUR:{event}:{success}");
    let mut mac = Hmac::<Sha256>::new_from_slice(&hex::decode(HMAC_KEY).expect("hex"))
        .expect("any key length");
    mac.update(signed.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let mut item = json!({
        "additionalData": {"hmacSignature": signature},
        "amount": {"currency": "EUR", "value": value},
        "eventCode": event,
        "eventDate": "2026-12-03T10:02:11+01:00",
        "merchantAccountCode": MERCHANT,
        "merchantReference": reference,
        "paymentMethod": "visa",
        "pspReference": psp,
        "reason": "",
        "success": success,
    });
    if !original.is_empty() {
        item["originalReference"] = original.into();
    }
    item
}

fn capture(value: i64) -> serde_json::Value {
    item(
        "CAPTURE",
        "true",
        "QFQTPCQ8HXSKGK82",
        PAYMENT,
        "order-1",
        value,
    )
}

fn refund_notification(event: &str, success: &str, refund_id: &str) -> serde_json::Value {
    item(event, success, REFUND_PSP, PAYMENT, refund_id, 2500)
}

/// Posts one notification item to `/webhooks/adyen`; the HTTP status and the answer's text.
async fn notify(app: &TestApp, item: serde_json::Value) -> (u16, String) {
    let body = json!({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]});
    let resp = reqwest::Client::new()
        .post(format!("http://{}/webhooks/adyen", app.http_addr))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("webhook endpoint answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn create(app: &mut TestApp, amount: i64) -> Result<pb::Refund, tonic::Status> {
    app.client
        .create_refund(pb::CreateRefundRequest {
            payment_id: PAYMENT.into(),
            provider: "adyen".into(),
            amount: Some(amount),
            currency: "EUR".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn creations(api: &MockServer) -> usize {
    api.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count()
}

/// How many times the reconciler has claimed a refund (each claim counts an attempt).
async fn attempts(db: &TestDb, refund_id: &str) -> i64 {
    use sea_orm::{ConnectionTrait as _, Database, Statement};
    assert!(
        refund_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    );
    let conn = Database::connect(&db.url).await.expect("connect");
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT attempts FROM refunds WHERE id = '{refund_id}'"),
        ))
        .await
        .expect("read refunds")
        .expect("the refund exists");
    let n = i64::from(row.try_get::<i32>("", "attempts").expect("attempts"));
    conn.close().await.ok();
    n
}

#[tokio::test]
async fn a_refund_is_pending_until_adyens_refund_notification_settles_it() {
    let api = MockServer::start().await;
    mount_refund(&api, 1).await;
    let db = TestDb::new().await;
    let mut app = spawn(&db, &api, Config::default()).await;

    let adyen = app
        .client
        .list_providers(pb::ListProvidersRequest {})
        .await
        .expect("providers")
        .into_inner()
        .providers
        .into_iter()
        .find(|p| p.name == "adyen")
        .expect("adyen listed");
    assert!(adyen.settles_by_webhook_only, "{adyen:?}");
    assert!(!adyen.supports_refund_lookup && !adyen.supports_payment_lookup);

    let (status, answer) = notify(&app, capture(10_000)).await;
    assert_eq!((status, answer.as_str()), (200, "[accepted]"));

    let r = create(&mut app, 2_500).await.expect("create");
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");
    assert_eq!(r.provider_refund_id, REFUND_PSP);
    let sent = api.received_requests().await.unwrap_or_default();
    let post = sent
        .iter()
        .find(|q| q.method.as_str() == "POST")
        .expect("the creation reached Adyen");
    assert_eq!(
        post.headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok()),
        Some(r.id.as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&post.body).expect("JSON body");
    assert_eq!(
        body,
        json!({"merchantAccount": MERCHANT, "amount": {"value": 2500, "currency": "EUR"}, "reference": r.id})
    );

    let (status, answer) = notify(&app, refund_notification("REFUND", "true", &r.id)).await;
    assert_eq!((status, answer.as_str()), (200, "[accepted]"));
    let done = app
        .wait_for_status(&r.id, pb::RefundStatus::Succeeded)
        .await;
    assert_eq!(done.provider_refund_id, REFUND_PSP);
    let history = status_history(&db, &r.id).await;
    assert_eq!(
        history.last().map(|(_, to, s)| (to.as_str(), s.as_str())),
        Some(("succeeded", "webhook")),
        "{history:?}"
    );
    // A redelivery is accepted and changes nothing.
    let (status, answer) = notify(&app, refund_notification("REFUND", "true", &r.id)).await;
    assert_eq!((status, answer.as_str()), (200, "[accepted]"));
    assert_eq!(reserved_amount(&db, PAYMENT).await, 2_500);
}

#[tokio::test]
async fn a_refund_failed_notification_fails_the_refund_and_releases_its_amount() {
    let api = MockServer::start().await;
    mount_refund(&api, 1).await;
    let db = TestDb::new().await;
    let mut app = spawn(&db, &api, Config::default()).await;
    assert_eq!(notify(&app, capture(10_000)).await.0, 200);
    let r = create(&mut app, 2_500).await.expect("create");
    assert_eq!(reserved_amount(&db, PAYMENT).await, 2_500);

    let (status, _) = notify(&app, refund_notification("REFUND_FAILED", "true", &r.id)).await;
    assert_eq!(status, 200);
    let failed = app.wait_for_status(&r.id, pb::RefundStatus::Failed).await;
    assert_eq!(failed.failure_code, "refund_failed", "{failed:?}");
    assert_eq!(reserved_amount(&db, PAYMENT).await, 0);
}

#[tokio::test]
async fn tampered_notifications_are_refused_and_change_nothing() {
    let api = MockServer::start().await;
    mount_refund(&api, 1).await;
    let db = TestDb::new().await;
    let mut app = spawn(&db, &api, Config::default()).await;

    // A capture with its amount raised after signing: refused, and nothing is refundable.
    let mut raised = capture(100);
    raised["amount"]["value"] = 1_000_000.into();
    assert_eq!(notify(&app, raised).await.0, 400);
    let refused = create(&mut app, 2_500)
        .await
        .expect_err("no capture recorded");
    assert_eq!(error_reason(&refused), "CAPTURE_NOT_NOTIFIED");

    assert_eq!(notify(&app, capture(10_000)).await.0, 200);
    let r = create(&mut app, 2_500).await.expect("create");
    // A refusal turned into a success after signing.
    let mut flipped = refund_notification("REFUND", "false", &r.id);
    flipped["success"] = "true".into();
    let (status, answer) = notify(&app, flipped).await;
    assert_eq!(status, 400, "{answer}");
    let mut unsigned = refund_notification("REFUND", "true", &r.id);
    unsigned["additionalData"] = json!({});
    assert_eq!(notify(&app, unsigned).await.0, 400);

    let still = app
        .client
        .get_refund(pb::GetRefundRequest { id: r.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(status_of(&still), pb::RefundStatus::Pending, "{still:?}");
    assert_eq!(status_history(&db, &r.id).await.len(), 1);
}

#[tokio::test]
async fn only_a_notified_capture_makes_a_payment_refundable_and_bounds_its_refunds() {
    let api = MockServer::start().await;
    mount_refund(&api, 1).await;
    let db = TestDb::new().await;
    let mut app = spawn(&db, &api, Config::default()).await;

    let refused = create(&mut app, 2_500).await.expect_err("nothing notified");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(error_reason(&refused), "CAPTURE_NOT_NOTIFIED");
    assert!(
        refused
            .message()
            .contains("Adyen has not notified a capture for payment V4HZ4RBFJGXXGN82"),
        "{refused:?}"
    );
    assert_eq!(creations(&api).await, 0, "nothing reaches Adyen");

    // Automatic capture: the successful authorisation is the capture.
    let auth = item("AUTHORISATION", "true", PAYMENT, "", "order-1", 3_000);
    assert_eq!(notify(&app, auth).await, (200, "[accepted]".to_owned()));
    let over = create(&mut app, 3_001)
        .await
        .expect_err("beyond the capture");
    assert_eq!(error_reason(&over), "OVER_REFUND");
    let r = create(&mut app, 2_500).await.expect("within the capture");
    assert_eq!(status_of(&r), pb::RefundStatus::Pending);
    let rest = create(&mut app, 501)
        .await
        .expect_err("beyond what is left");
    assert_eq!(error_reason(&rest), "OVER_REFUND");
    // A later, smaller capture never drops below what refunds already hold.
    assert_eq!(notify(&app, capture(1_000)).await.0, 200);
    let none_left = create(&mut app, 1).await.expect_err("nothing left");
    assert_eq!(error_reason(&none_left), "ALREADY_REFUNDED");
    assert_eq!(creations(&api).await, 1);
}

#[tokio::test]
async fn a_5xx_on_creation_stays_pending_and_is_never_sent_again() {
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v71/payments/{PAYMENT}/refunds")))
        .respond_with(json_response(
            500,
            json!({"status": 500, "errorCode": "905", "message": "Payment details are not supported", "errorType": "configuration"}),
        ))
        .expect(1)
        .mount(&api)
        .await;
    let db = TestDb::new().await;
    let mut app = spawn(
        &db,
        &api,
        Config {
            reconcile_delay: Duration::from_millis(10),
            pending_alert: Duration::ZERO,
            ..Config::default()
        },
    )
    .await;
    assert_eq!(notify(&app, capture(10_000)).await.0, 200);
    let r = create(&mut app, 2_500)
        .await
        .expect("an ambiguous answer is no error");
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");
    assert!(r.provider_refund_id.is_empty());

    // The reconciler takes it up again and again, and sends nothing.
    eventually(
        Duration::from_secs(20),
        "three reconciler passes",
        || async { (attempts(&db, &r.id).await >= 4).then_some(()) },
    )
    .await;
    assert_eq!(creations(&api).await, 1);
    let series = r#"refund_webhook_only_pending_overdue{provider="adyen"}"#;
    eventually(Duration::from_secs(20), "the overdue gauge", || async {
        (metric_value(&scrape_metrics(app.http_addr).await, series) == Some(1.0)).then_some(())
    })
    .await;

    // Its notification still settles it: it names our refund id.
    assert_eq!(
        notify(&app, refund_notification("REFUND", "true", &r.id))
            .await
            .0,
        200
    );
    let done = app
        .wait_for_status(&r.id, pb::RefundStatus::Succeeded)
        .await;
    assert_eq!(done.provider_refund_id, REFUND_PSP);
    eventually(
        Duration::from_secs(20),
        "the overdue gauge to clear",
        || async {
            (metric_value(&scrape_metrics(app.http_addr).await, series) == Some(0.0)).then_some(())
        },
    )
    .await;
    assert_eq!(creations(&api).await, 1);
}

#[tokio::test]
async fn a_timeout_on_creation_stays_pending_and_is_never_sent_again() {
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v71/payments/{PAYMENT}/refunds")))
        .respond_with(
            json_response(
                201,
                json!({"pspReference": REFUND_PSP, "paymentPspReference": PAYMENT, "status": "received"}),
            )
            .set_delay(Duration::from_secs(3)),
        )
        .mount(&api)
        .await;
    let db = TestDb::new().await;
    let mut app = spawn(
        &db,
        &api,
        Config {
            call_timeout: Duration::from_millis(300),
            reconcile_delay: Duration::from_millis(10),
            ..Config::default()
        },
    )
    .await;
    assert_eq!(notify(&app, capture(10_000)).await.0, 200);
    let r = create(&mut app, 2_500)
        .await
        .expect("a timeout is no error");
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");
    eventually(
        Duration::from_secs(20),
        "three reconciler passes",
        || async { (attempts(&db, &r.id).await >= 4).then_some(()) },
    )
    .await;
    assert_eq!(creations(&api).await, 1);
    let still = app
        .client
        .get_refund(pb::GetRefundRequest { id: r.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(status_of(&still), pb::RefundStatus::Pending, "{still:?}");
}

/// An account's own Adyen connection: its API key and merchant account, its HMAC key at
/// `/webhooks/adyen/{connection}`; a capture notified there enables refunds through it only.
#[tokio::test]
async fn an_accounts_own_adyen_connection_refunds_with_its_key_and_its_notifications() {
    const CONN_KEY: &str = "AQE-connection-key";
    const CONN_HMAC: &str = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
    const CONN_MERCHANT: &str = "ShopEU";
    const PAYMENT2: &str = "C9RPJ4SV4V7B8N82";
    const REFUND2: &str = "J5H7D4Q2ZRQG7G43";
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v71/payments/{PAYMENT2}/refunds")))
        .and(header("x-api-key", CONN_KEY))
        .respond_with(json_response(
            201,
            json!({
                "merchantAccount": CONN_MERCHANT,
                "paymentPspReference": PAYMENT2,
                "pspReference": REFUND2,
                "status": "received",
                "amount": {"currency": "EUR", "value": 1200},
            }),
        ))
        .expect(1)
        .mount(&api)
        .await;
    let db = TestDb::new().await;
    let keys = tempfile::tempdir().expect("temp dir");
    let key_file = keys.path().join("master.key");
    std::fs::write(&key_file, hex::encode([7u8; 32])).expect("key file");
    let settings = ProviderSettings {
        name: "adyen".to_owned(),
        api_base: api.uri(),
        credential: Secret::opaque(API_KEY.to_owned()),
        traffic: TrafficConfig::default(),
        webhook_secrets: vec![Secret::opaque(HMAC_KEY.to_owned())],
        extra: [("merchant-account".to_owned(), MERCHANT.to_owned())].into(),
    };
    let mut app = spawn_app_with(&db, move |s| {
        s.providers.push(settings);
        s.connections.secrets_key_file = Some(key_file);
    })
    .await;

    let request = |settings: &[(&str, &str)]| pb::CreateConnectionRequest {
        provider: "adyen".into(),
        credential: CONN_KEY.into(),
        webhook_secret: CONN_HMAC.into(),
        settings: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let e = app
        .client
        .create_connection(request(&[]))
        .await
        .expect_err("Adyen needs a merchant account");
    assert_eq!(
        crate::helpers::violated_fields(&e),
        vec!["settings[merchant-account]"]
    );
    let e = app
        .client
        .create_connection(request(&[
            ("merchant-account", CONN_MERCHANT),
            ("colour", "red"),
        ]))
        .await
        .expect_err("no such setting");
    assert_eq!(
        crate::helpers::violated_fields(&e),
        vec!["settings[colour]"]
    );
    let conn = app
        .client
        .create_connection(request(&[("merchant-account", CONN_MERCHANT)]))
        .await
        .expect("connection")
        .into_inner();
    assert_eq!(
        conn.settings.get("merchant-account").map(String::as_str),
        Some(CONN_MERCHANT)
    );

    let signed =
        |event: &str, psp: &str, original: &str, reference: &str, value: i64, key: &str| {
            let text =
                format!("{psp}:{original}:{CONN_MERCHANT}:{reference}:{value}:EUR:{event}:true");
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&hex::decode(key).expect("hex")).expect("key");
            mac.update(text.as_bytes());
            let signature =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            json!({"live": "false", "notificationItems": [{"NotificationRequestItem": {
                "additionalData": {"hmacSignature": signature},
                "amount": {"currency": "EUR", "value": value},
                "eventCode": event,
                "merchantAccountCode": CONN_MERCHANT,
                "merchantReference": reference,
                "originalReference": original,
                "pspReference": psp,
                "reason": "",
                "success": "true",
            }}]})
            .to_string()
        };
    let url = format!("http://{}{}", app.http_addr, conn.webhook_path);
    let post = |body: String| {
        let url = url.clone();
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .expect("answers");
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        }
    };
    let client = app.client.clone();
    let refund = || {
        let mut client = client.clone();
        async move {
            client
                .create_refund(pb::CreateRefundRequest {
                    payment_id: PAYMENT2.into(),
                    provider: "adyen".into(),
                    amount: Some(1_200),
                    currency: "EUR".into(),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };

    // Nothing notified to the connection yet; then a capture signed with the platform's key is
    // refused at the connection's endpoint.
    let e = refund().await.expect_err("no capture yet");
    assert_eq!(error_reason(&e), "CAPTURE_NOT_NOTIFIED");
    let capture = |key: &str| {
        signed(
            "CAPTURE",
            "QFQTPCQ8HXSKGK99",
            PAYMENT2,
            "order-9",
            5_000,
            key,
        )
    };
    assert_eq!(post(capture(HMAC_KEY)).await.0, 400);
    assert_eq!(
        post(capture(CONN_HMAC)).await,
        (200, "[accepted]".to_owned())
    );

    let r = refund().await.expect("refund through the connection");
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");
    assert_eq!(r.connection_id, conn.id);
    assert_eq!(r.provider_refund_id, REFUND2);
    let sent = api.received_requests().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&sent[0].body).expect("JSON body");
    assert_eq!(body["merchantAccount"], CONN_MERCHANT);

    let settle = signed("REFUND", REFUND2, PAYMENT2, &r.id, 1_200, CONN_HMAC);
    assert_eq!(post(settle).await, (200, "[accepted]".to_owned()));
    app.wait_for_status(&r.id, pb::RefundStatus::Succeeded)
        .await;

    // The tenant signs a capture of a payment that is not its own (the platform's PAYMENT),
    // before the real one arrives: it speaks only for the tenant's own route.
    let forged = signed(
        "CAPTURE",
        "QFQTPCQ8HXSKGK77",
        PAYMENT,
        "x",
        9_000,
        CONN_HMAC,
    );
    assert_eq!(post(forged).await, (200, "[accepted]".to_owned()));
    assert_eq!(notify(&app, crate::adyen::capture(10_000)).await.0, 200);
    mount_refund(&api, 1).await;
    let (_, token) = refund_service::service::create_api_key(
        app.service.store(),
        refund_service::domain::parse_account("acct_platform").expect("account"),
        "platform user".into(),
        refund_service::domain::Scope::parse_list("refunds:write").expect("scopes"),
    )
    .await
    .expect("key");
    let mut platform_user = crate::helpers::client_with_key(app.grpc_addr, Some(&token)).await;
    let r = platform_user
        .create_refund(pb::CreateRefundRequest {
            payment_id: PAYMENT.into(),
            provider: "adyen".into(),
            amount: Some(2_500),
            currency: "EUR".into(),
            ..Default::default()
        })
        .await
        .expect("the platform's payment is refundable through the platform")
        .into_inner();
    assert!(r.connection_id.is_empty(), "{r:?}");
    assert_eq!(status_of(&r), pb::RefundStatus::Pending, "{r:?}");
}
