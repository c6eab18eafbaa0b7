//! Accounts' own provider connections: each account refunds through its own credentials, sealed
//! at rest; an account's connection sees only its own payments and signs only its own webhooks.
//!
//! Two localstripe instances stand for two Stripe accounts, each behind a proxy that records
//! the API key of every request it forwards.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use refund_service::api::pb;
use refund_service::domain::{ConnectionActor, ProviderName, parse_account};
use refund_service::providers::connections::ProviderDefaults;
use refund_service::secret::Secret;
use refund_service::service::NewConnection;
use sea_orm::{ConnectionTrait as _, Database, Statement};
use tonic::Code;

use crate::helpers::*;
use crate::stripe::{localstripe, start_localstripe, stripe_request, stripe_settings};

const MASTER_KEY: &str = "8f1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";
const PLATFORM_KEY: &str = "sk_test_localstripe";
const KEY_A: &str = "sk_test_account_a_0001";
const KEY_A2: &str = "sk_test_account_a_0002";
const KEY_B: &str = "sk_test_account_b_0001";

/// Forwards every request to `upstream` and records `(method, path, bearer key)`.
#[derive(Clone)]
struct KeyRecorder {
    base: String,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[derive(Clone)]
struct Upstream {
    base: String,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
    http: reqwest::Client,
}

impl KeyRecorder {
    async fn start(upstream: &str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Upstream {
            base: upstream.to_owned(),
            seen: seen.clone(),
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("recorder addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://{addr}"),
            seen,
        }
    }

    /// The keys that reached `POST /v1/refunds`.
    fn refund_keys(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(m, p, _)| m == "POST" && p.starts_with("/v1/refunds"))
            .map(|(_, _, k)| k.clone())
            .collect()
    }

    fn all_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, _, k)| k.clone())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

async fn forward(
    State(up): State<Upstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    up.seen
        .lock()
        .expect("lock")
        .push((method.to_string(), uri.path().to_owned(), key));
    let mut req = up.http.request(method, format!("{}{path}", up.base));
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    match req.body(body).send().await {
        Ok(resp) => {
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::OK);
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// A captured charge at the localstripe at `base`.
async fn charge_at(base: &str, amount: i64) -> String {
    let c: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/charges"))
        .bearer_auth(PLATFORM_KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("amount={amount}&currency=usd&source=pm_card_visa"))
        .send()
        .await
        .expect("localstripe answers")
        .json()
        .await
        .expect("JSON");
    c["id"].as_str().expect("charge id").to_owned()
}

fn key_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("master.key");
    std::fs::write(&path, format!("{MASTER_KEY}\n")).expect("write key file");
    path
}

/// The service with the platform's Stripe at `platform`, connections sealed with the test key.
async fn spawn_connected(
    db: &TestDb,
    platform: &str,
    keys: &tempfile::TempDir,
    platform_accounts: Option<Vec<&str>>,
) -> TestApp {
    let settings = stripe_settings(platform);
    let key_path = key_file(keys);
    let platform_accounts = platform_accounts.map(|accounts| {
        accounts
            .into_iter()
            .map(|a| parse_account(a).expect("account"))
            .collect()
    });
    spawn_app_with(db, move |s| {
        s.connections.provider_defaults = vec![ProviderDefaults {
            name: "stripe".into(),
            api_base: settings.api_base.clone(),
            traffic: settings.traffic.clone(),
        }];
        s.providers.push(settings);
        s.connections.secrets_key_file = Some(key_path);
        s.connections.platform_accounts = platform_accounts;
    })
    .await
}

async fn refund(client: &mut Client, charge: &str) -> Result<pb::Refund, tonic::Status> {
    client
        .create_refund(stripe_request(charge, None))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn two_accounts_refund_through_their_own_stripe_keys() {
    let first = KeyRecorder::start(localstripe()).await;
    let second_stripe = start_localstripe().expect("a second localstripe");
    let second = KeyRecorder::start(&second_stripe).await;
    let db = TestDb::new().await;
    let keys = tempfile::tempdir().expect("temp dir");
    let app = spawn_connected(&db, &first.base, &keys, None).await;
    let mut a = client_of(&app, "acct_a", "admin").await;
    let mut b = client_of(&app, "acct_b", "refunds:write,refunds:read").await;
    let mut c = client_of(&app, "acct_c", "refunds:write").await;

    // A connects over the API, to where the platform's Stripe is (the API cannot say where).
    let conn_a = a
        .create_connection(pb::CreateConnectionRequest {
            provider: "stripe".into(),
            credential: KEY_A.into(),
            webhook_secret: String::new(),
            settings: Default::default(),
        })
        .await
        .expect("A's connection")
        .into_inner();
    assert!(conn_a.id.starts_with("conn_"), "{conn_a:?}");
    // B's operator connects it to the second Stripe account, as `connections create` does.
    let conn_b = app
        .service
        .connections()
        .create(
            app.service.store(),
            &parse_account("acct_b").expect("account"),
            NewConnection {
                provider: ProviderName::parse("stripe").expect("name"),
                credential: Secret::opaque(KEY_B.into()),
                webhook_secret: None,
                api_base: Some(second.base.clone()),
                settings: Default::default(),
            },
            ConnectionActor {
                source: "cli",
                key: None,
                request_id: None,
            },
        )
        .await
        .expect("B's connection");

    let charge_a = charge_at(localstripe(), 4_000).await;
    let charge_b = charge_at(&second_stripe, 2_500).await;

    let ra = refund(&mut a, &charge_a).await.expect("A refunds");
    assert_eq!(status_of(&ra), pb::RefundStatus::Succeeded, "{ra:?}");
    assert_eq!(ra.connection_id, conn_a.id);
    let rb = refund(&mut b, &charge_b).await.expect("B refunds");
    assert_eq!(status_of(&rb), pb::RefundStatus::Succeeded, "{rb:?}");
    assert_eq!(rb.connection_id, conn_b.id.as_str());
    assert_eq!(first.refund_keys(), vec![KEY_A.to_owned()]);
    assert_eq!(second.refund_keys(), vec![KEY_B.to_owned()]);
    assert_eq!(second.all_keys(), vec![KEY_B.to_owned()], "B's calls only");

    // B's Stripe account has no such charge: to B, it does not exist.
    let hidden = refund(&mut b, &charge_a)
        .await
        .expect_err("not B's payment");
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");

    // An account without a connection goes through the platform's key, as before connections.
    let charge_c = charge_at(localstripe(), 1_000).await;
    let rc = refund(&mut c, &charge_c).await.expect("C refunds");
    assert_eq!(status_of(&rc), pb::RefundStatus::Succeeded, "{rc:?}");
    assert!(rc.connection_id.is_empty(), "{rc:?}");
    assert_eq!(
        first.refund_keys(),
        vec![KEY_A.to_owned(), PLATFORM_KEY.to_owned()]
    );

    // Rotation: the next refund goes with the new key.
    a.rotate_connection(pb::RotateConnectionRequest {
        id: conn_a.id.clone(),
        credential: KEY_A2.into(),
        webhook_secret: String::new(),
    })
    .await
    .expect("rotate");
    let charge_a2 = charge_at(localstripe(), 700).await;
    refund(&mut a, &charge_a2).await.expect("A refunds again");
    assert_eq!(first.refund_keys().last().map(String::as_str), Some(KEY_A2));

    // Listed without credentials; ListProviders says which connection A's Stripe refunds use.
    let listed = a
        .list_connections(pb::ListConnectionsRequest {})
        .await
        .expect("list")
        .into_inner()
        .connections;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(!format!("{listed:?}").contains("sk_test"), "{listed:?}");
    let providers = a
        .list_providers(pb::ListProvidersRequest {})
        .await
        .expect("providers")
        .into_inner()
        .providers;
    let stripe = providers
        .iter()
        .find(|p| p.name == "stripe")
        .expect("stripe listed");
    assert_eq!(stripe.connection_id, conn_a.id);

    // Deleted: A's refunds go through the platform's key again.
    a.delete_connection(pb::DeleteConnectionRequest {
        id: conn_a.id.clone(),
    })
    .await
    .expect("delete");
    let charge_a3 = charge_at(localstripe(), 600).await;
    let r = refund(&mut a, &charge_a3)
        .await
        .expect("A refunds via the platform");
    assert!(r.connection_id.is_empty(), "{r:?}");
    assert_eq!(
        first.refund_keys().last().map(String::as_str),
        Some(PLATFORM_KEY)
    );

    // At rest: sealed, not the key; and the key file is what opens it.
    let raw = Database::connect(&db.url).await.expect("db");
    let rows = raw
        .query_all_raw(Statement::from_string(
            raw.get_database_backend(),
            "SELECT id, credential_sealed FROM connections ORDER BY id",
        ))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2);
    for row in rows {
        let sealed: String = row.try_get("", "credential_sealed").expect("column");
        assert!(sealed.starts_with("v1."), "{sealed}");
        for key in [KEY_A, KEY_A2, KEY_B, "account_a", "account_b"] {
            assert!(!sealed.contains(key), "{sealed} holds {key}");
        }
    }
    raw.close().await.ok();
    app.stop().await;
}

#[tokio::test]
async fn connection_requests_are_checked() {
    let db = TestDb::new().await;
    let keys = tempfile::tempdir().expect("temp dir");
    let app = spawn_connected(&db, localstripe(), &keys, None).await;
    let mut admin = app.client.clone();
    let create = |provider: &str, credential: &str| pb::CreateConnectionRequest {
        provider: provider.into(),
        credential: credential.into(),
        webhook_secret: String::new(),
        settings: Default::default(),
    };

    let e = admin
        .create_connection(create("sandbox", KEY_A))
        .await
        .expect_err("the sandbox takes no credentials");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(violated_fields(&e), vec!["provider"]);
    let e = admin
        .create_connection(create("stripe", ""))
        .await
        .expect_err("empty credential");
    assert_eq!(violated_fields(&e), vec!["credential"]);
    let e = admin
        .create_connection(create("stripe", "sk_test with space"))
        .await
        .expect_err("whitespace");
    assert_eq!(violated_fields(&e), vec!["credential"]);

    admin
        .create_connection(create("stripe", KEY_A))
        .await
        .expect("first");
    let e = admin
        .create_connection(create("stripe", KEY_B))
        .await
        .expect_err("second for the same provider");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(error_reason(&e), "CONNECTION_EXISTS");

    let e = admin
        .rotate_connection(pb::RotateConnectionRequest {
            id: "conn_0123456789abcdef0123456789abcdef".into(),
            credential: KEY_B.into(),
            webhook_secret: String::new(),
        })
        .await
        .expect_err("no such connection");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = admin
        .delete_connection(pb::DeleteConnectionRequest { id: "42".into() })
        .await
        .expect_err("not an id");
    assert_eq!(violated_fields(&e), vec!["id"]);
    // Another account's connection is not there to see.
    let mut other = client_of(&app, "acct_other", "admin").await;
    let mine = admin
        .list_connections(pb::ListConnectionsRequest {})
        .await
        .expect("list")
        .into_inner()
        .connections;
    let e = other
        .delete_connection(pb::DeleteConnectionRequest {
            id: mine[0].id.clone(),
        })
        .await
        .expect_err("not its connection");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        other
            .list_connections(pb::ListConnectionsRequest {})
            .await
            .expect("list")
            .into_inner()
            .connections
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn without_a_secrets_key_no_connection_is_made() {
    let db = TestDb::new().await;
    let settings = stripe_settings(localstripe());
    let mut app = spawn_app_with(&db, move |s| s.providers.push(settings)).await;
    let e = app
        .client
        .create_connection(pb::CreateConnectionRequest {
            provider: "stripe".into(),
            credential: KEY_A.into(),
            webhook_secret: String::new(),
            settings: Default::default(),
        })
        .await
        .expect_err("nothing to seal with");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(error_reason(&e), "NO_SECRETS_KEY");
    assert!(e.message().contains("--secrets-key-file"), "{e:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_platform_connection_can_be_kept_to_some_accounts() {
    let db = TestDb::new().await;
    let keys = tempfile::tempdir().expect("temp dir");
    let app = spawn_connected(&db, localstripe(), &keys, Some(vec!["acct_platform"])).await;
    let mut outsider = app.client.clone();
    let mut insider = client_of(&app, "acct_platform", "refunds:write").await;
    let charge = charge_at(localstripe(), 900).await;
    let e = refund(&mut outsider, &charge)
        .await
        .expect_err("acct_default may not use the platform's Stripe");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(error_reason(&e), "NO_CONNECTION");
    let r = refund(&mut insider, &charge).await.expect("allowed");
    assert_eq!(status_of(&r), pb::RefundStatus::Succeeded, "{r:?}");
    // The sandbox is not a credentialed provider: every account keeps it.
    let payment = app.seed(500, "USD").await;
    let r = outsider
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .expect("sandbox refund")
        .into_inner();
    assert_eq!(status_of(&r), pb::RefundStatus::Succeeded, "{r:?}");
    // With its own connection, the outsider refunds at Stripe.
    outsider
        .create_connection(pb::CreateConnectionRequest {
            provider: "stripe".into(),
            credential: KEY_A.into(),
            webhook_secret: String::new(),
            settings: Default::default(),
        })
        .await
        .expect("connection");
    let charge = charge_at(localstripe(), 800).await;
    let r = refund(&mut outsider, &charge)
        .await
        .expect("own connection");
    assert!(!r.connection_id.is_empty(), "{r:?}");
    app.stop().await;
}

/// A connection's webhook secret vouches for its own refunds only: an event signed with it
/// cannot settle a refund made through the platform's credentials, nor shadow the platform's
/// event of the same id.
#[tokio::test]
async fn a_connections_webhooks_touch_only_its_own_refunds() {
    let db = TestDb::new().await;
    let keys = tempfile::tempdir().expect("temp dir");
    let app = spawn_connected(&db, localstripe(), &keys, None).await;
    let whsec = "whsec_connection_a";
    let conn = app
        .client
        .clone()
        .create_connection(pb::CreateConnectionRequest {
            provider: "stripe".into(),
            credential: KEY_A.into(),
            webhook_secret: whsec.into(),
            settings: Default::default(),
        })
        .await
        .expect("connection")
        .into_inner();
    assert_eq!(conn.webhook_path, format!("/webhooks/stripe/{}", conn.id));
    // A platform refund of another account, left PENDING (its id is all a forger needs).
    let mut other = client_of(&app, "acct_other", "refunds:write").await;
    let charge = charge_at(localstripe(), 1_500).await;
    let platform_refund = refund(&mut other, &charge).await.expect("refund");
    assert!(platform_refund.connection_id.is_empty());

    let event = |refund_id: &str, status: &str| {
        serde_json::json!({
            "id": "evt_forged_1",
            "object": "event",
            "type": "refund.updated",
            "data": {"object": {
                "id": "re_forged", "object": "refund", "amount": 1500, "currency": "usd",
                "charge": charge, "status": status,
                "metadata": {"refund_id": refund_id},
            }},
        })
        .to_string()
    };
    let body = event(&platform_refund.id, "failed");
    let signature = stripe_signature(&body, whsec, unix_now());
    let resp = reqwest::Client::new()
        .post(format!("http://{}{}", app.http_addr, conn.webhook_path))
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 200);
    let answer: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(answer["results"][0]["outcome"], "UNMATCHED", "{answer}");
    let still = app
        .client
        .clone()
        .get_refund(pb::GetRefundRequest {
            id: platform_refund.id.clone(),
        })
        .await;
    // (acct_default cannot see acct_other's refund; read it as its owner.)
    assert_eq!(still.expect_err("other account").code(), Code::NotFound);
    let mut reader = client_of(&app, "acct_other", "refunds:read").await;
    let unchanged = reader
        .get_refund(pb::GetRefundRequest {
            id: platform_refund.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(unchanged.status, platform_refund.status, "{unchanged:?}");
    assert_eq!(unchanged.failure_code, "");

    // The connection's webhooks with a wrong secret, or to a connection without one, are refused.
    let body = event(&platform_refund.id, "failed");
    let resp = reqwest::Client::new()
        .post(format!("http://{}{}", app.http_addr, conn.webhook_path))
        .header(
            "stripe-signature",
            stripe_signature(&body, "whsec_other", unix_now()),
        )
        .body(body.clone())
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/webhooks/stripe/conn_0123456789abcdef0123456789abcdef",
            app.http_addr
        ))
        .header(
            "stripe-signature",
            stripe_signature(&body, whsec, unix_now()),
        )
        .body(body)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 404);
    app.stop().await;
}

/// `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`, as Stripe signs.
fn stripe_signature(body: &str, secret: &str, t: i64) -> String {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A connection that unsettled refunds still need cannot be deleted; to another account it is
/// not there at all, whatever its refunds.
#[tokio::test]
async fn a_connection_in_use_is_not_deleted_and_is_not_anothers_to_ask_about() {
    let db = TestDb::new().await;
    let keys = tempfile::tempdir().expect("temp dir");
    let app = spawn_connected(&db, localstripe(), &keys, None).await;
    let mut admin = app.client.clone();
    let conn = admin
        .create_connection(pb::CreateConnectionRequest {
            provider: "stripe".into(),
            credential: KEY_A.into(),
            webhook_secret: String::new(),
            settings: Default::default(),
        })
        .await
        .expect("connection")
        .into_inner();
    // Above the threshold, the refund waits for approval: unsettled, through the connection.
    app.service
        .store()
        .set_approval_threshold(
            &refund_service::domain::AccountId::default_account(),
            refund_service::domain::Currency::parse("USD").expect("USD"),
            Some(100),
        )
        .await
        .expect("threshold");
    let charge = charge_at(localstripe(), 5_000).await;
    let waiting = refund(&mut admin, &charge).await.expect("refund");
    assert_eq!(status_of(&waiting), pb::RefundStatus::RequiresApproval);
    assert_eq!(waiting.connection_id, conn.id);

    let delete = pb::DeleteConnectionRequest {
        id: conn.id.clone(),
    };
    let e = admin
        .delete_connection(delete.clone())
        .await
        .expect_err("in use");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(error_reason(&e), "CONNECTION_IN_USE");
    let mut other = client_of(&app, "acct_other", "admin").await;
    let e = other
        .delete_connection(delete.clone())
        .await
        .expect_err("not its connection");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let mut approver = client_of(
        &app,
        refund_service::domain::AccountId::DEFAULT,
        "refunds:approve",
    )
    .await;
    approver
        .reject_refund(pb::RejectRefundRequest {
            id: waiting.id.clone(),
        })
        .await
        .expect("reject");
    admin
        .delete_connection(delete)
        .await
        .expect("settled: deletable");
    app.stop().await;
}
