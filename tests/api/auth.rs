//! API keys: authentication, scopes, tenant isolation, revocation, per-key rate limits and the
//! first key of a fresh installation.

use std::process::Command;
use std::time::Duration;

use refund_service::api::pb;
use refund_service::app::Application;
use refund_service::config::ServeSettings;
use refund_service::domain::{AccountId, Scope, parse_account};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_refund-service");

/// A key for `account` with `scopes`, made through the store.
async fn key(app: &TestApp, account: &str, scopes: &str) -> String {
    let (_, token) = refund_service::service::create_api_key(
        app.service.store(),
        parse_account(account).expect("account"),
        format!("test key for {account}"),
        Scope::parse_list(scopes).expect("scopes"),
    )
    .await
    .expect("create key");
    token
}

async fn client(app: &TestApp, key: Option<&str>) -> Client {
    client_with_key(app.grpc_addr, key).await
}

fn missing_scope(status: &tonic::Status) -> Option<String> {
    let details = status.get_error_details();
    let info = details.error_info()?;
    (info.reason == "MISSING_SCOPE")
        .then(|| info.metadata.get("scope").cloned().unwrap_or_default())
}

#[tokio::test]
async fn calls_without_a_valid_key_are_unauthenticated() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(1_000, "USD").await;
    for key in [None, Some("rsk_not_a_key"), Some("")] {
        let mut anonymous = client(&app, key).await;
        let err = anonymous
            .create_refund(refund_request(&payment, None, "USD"))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{key:?}: {err:?}");
        let err = anonymous
            .list_refunds(pb::ListRefundsRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = anonymous
            .bulk_refund(pb::BulkRefundRequest::default())
            .await
            .map(|_| ())
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    assert!(
        app.ledger(&payment).await.is_empty(),
        "nothing reached the provider"
    );
    // Health checks need no key.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");
    assert_eq!(health.into_inner().status, 1);
    // And the admin key works.
    app.client
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .expect("admin can refund");
}

#[tokio::test]
async fn a_key_without_the_scope_is_permission_denied() {
    let (app, _db) = spawn_app().await;
    let payment = app.seed(1_000, "USD").await;
    let reader = key(&app, AccountId::DEFAULT, "refunds:read").await;
    let mut reader = client(&app, Some(&reader)).await;
    let err = reader
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .expect_err("read-only key");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(missing_scope(&err).as_deref(), Some("refunds:write"));
    reader
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("reading is allowed");

    let writer = key(&app, AccountId::DEFAULT, "refunds:read,refunds:write").await;
    let mut writer = client(&app, Some(&writer)).await;
    let err = writer
        .bulk_refund(pb::BulkRefundRequest {
            jobs: vec![refund_request(&payment, None, "USD")],
            ..Default::default()
        })
        .await
        .map(|_| ())
        .expect_err("no bulk:write");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(missing_scope(&err).as_deref(), Some("bulk:write"));
    writer
        .create_refund(refund_request(&payment, None, "USD"))
        .await
        .expect("refunds:write may refund");
}

#[tokio::test]
async fn accounts_never_see_or_touch_each_others_refunds() {
    let (mut app, _db) = spawn_app().await;
    let payment = app.seed(10_000, "USD").await;
    let theirs = app
        .client
        .create_refund(pb::CreateRefundRequest {
            idempotency_key: "order-7".into(),
            ..refund_request(&payment, Some(1_000), "USD")
        })
        .await
        .expect("refund in acct_default")
        .into_inner();

    let other = key(&app, "acct_other", "refunds:read,refunds:write,bulk:write").await;
    let mut other = client(&app, Some(&other)).await;
    let err = other
        .get_refund(pb::GetRefundRequest {
            id: theirs.id.clone(),
        })
        .await
        .expect_err("another account's refund");
    assert_eq!(err.code(), Code::NotFound, "existence is not leaked");
    let err = other
        .watch_refund(pb::WatchRefundRequest {
            id: theirs.id.clone(),
        })
        .await
        .map(|_| ())
        .expect_err("another account's refund");
    assert_eq!(err.code(), Code::NotFound);
    let listed = other
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.refunds.is_empty(), "{listed:?}");

    // The same idempotency key in another account is another key: a new refund, not a replay.
    // (Of a payment of its own: the first account's payment does not exist for it.)
    let own_payment = app.seed(5_000, "USD").await;
    let mine = other
        .create_refund(pb::CreateRefundRequest {
            idempotency_key: "order-7".into(),
            ..refund_request(&own_payment, Some(1_000), "USD")
        })
        .await
        .expect("refund in acct_other")
        .into_inner();
    assert_ne!(mine.id, theirs.id);
    let listed = other
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed
            .refunds
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        [mine.id.as_str()]
    );
    let own = app
        .client
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        own.refunds
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        [theirs.id.as_str()]
    );
}

#[tokio::test]
async fn keys_are_made_listed_and_revoked_with_the_cli() {
    let (app, db) = spawn_app().await;
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("keys")
            .args(args)
            .args(["--database-url", &db.url])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run keys");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&[
        "create",
        "--account",
        "acct_cli",
        "--scopes",
        "refunds:read",
        "--name",
        "dashboard",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let token = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        token.starts_with("rsk_"),
        "the token on the last line: {stdout}"
    );
    let key_id = stdout
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .expect("the key id")
        .to_owned();

    let mut cli_client = client(&app, Some(&token)).await;
    cli_client
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("the new key works");

    let (code, listed, _) = run(&["list", "--account", "acct_cli"]);
    assert_eq!(code, Some(0));
    assert!(
        listed.contains(&key_id) && listed.contains("dashboard"),
        "{listed}"
    );
    assert!(!listed.contains(&token), "tokens are never listed");

    let (code, _, stderr) = run(&["revoke", &key_id]);
    assert_eq!(code, Some(0), "{stderr}");
    // A service may trust a key it has just checked for `--api-key-cache-ttl` (1 s).
    app.service.clock().advance(Duration::from_secs(1));
    let err = cli_client
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    let (code, _, stderr) = run(&["revoke", &key_id]);
    assert_ne!(code, Some(0), "revoking twice fails: {stderr}");

    let (code, _, stderr) = run(&[
        "create",
        "--account",
        "acct_cli",
        "--scopes",
        "refunds:delete",
    ]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("refunds:delete"), "{stderr}");
    let (code, _, stderr) = run(&["create", "--account", "no spaces", "--scopes", "admin"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("invalid account id"), "{stderr}");
}

#[tokio::test]
async fn each_key_has_a_request_rate_limit() {
    let db = TestDb::new().await;
    let app = spawn_app_with(&db, |s| s.api_key_rate_limit = 1).await;
    let fast = key(&app, AccountId::DEFAULT, "refunds:read").await;
    let mut fast = client(&app, Some(&fast)).await;
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = fast.list_refunds(pb::ListRefundsRequest::default()).await {
            limited = Some(e);
            break;
        }
    }
    let err = limited.expect("a second call within a second is over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let retry = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("retry info");
    assert!(retry <= Duration::from_secs(1), "{retry:?}");
    // Other keys have their own budget.
    app.client
        .clone()
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("another key is not limited");
    tokio::time::sleep(retry).await;
    fast.list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("after the delay");
}

#[tokio::test]
async fn a_fresh_installation_on_loopback_gets_one_admin_key_shown_once() {
    let db = TestDb::new().await;
    let build = |addr: [u8; 4]| {
        let mut settings = ServeSettings::local(db.url.clone());
        settings.grpc_addr = (addr, 0).into();
        settings.http_addr = ([127, 0, 0, 1], 0).into();
        Application::build(settings)
    };
    // Not on loopback: no key is made up.
    let public = build([0, 0, 0, 0]).await.expect("build");
    assert!(public.bootstrap_key().is_none());
    drop(public);

    let first = build([127, 0, 0, 1]).await.expect("build");
    let token = first
        .bootstrap_key()
        .expect("a key on first start")
        .to_owned();
    let principal = first
        .service()
        .authenticate(&token)
        .await
        .expect("store")
        .expect("the key is valid");
    assert!(principal.allows(Scope::Admin));
    assert_eq!(principal.account.as_str(), AccountId::DEFAULT);
    drop(first);

    let second = build([127, 0, 0, 1]).await.expect("build");
    assert!(second.bootstrap_key().is_none(), "only once");
}

/// The scope each `refunds.v1.RefundService` method needs: the contract's, written down once
/// more here so that the server's table is checked against it, not against itself.
const EXPECTED_SCOPES: &[(&str, &str)] = &[
    ("CreateRefund", "refunds:write"),
    ("GetRefund", "refunds:read"),
    ("ApproveRefund", "refunds:approve"),
    ("RejectRefund", "refunds:approve"),
    ("ListRefunds", "refunds:read"),
    ("WatchRefund", "refunds:read"),
    ("ListProviders", "refunds:read"),
    ("BulkRefund", "bulk:write"),
    ("WatchBulkRefund", "refunds:read"),
    ("GetBulkRefund", "refunds:read"),
    ("CancelBulkRefund", "bulk:write"),
    ("ListBulkRefundItems", "refunds:read"),
    ("ListBulkRefunds", "refunds:read"),
    ("ListAuditEvents", "refunds:read"),
    ("CreateConnection", "admin"),
    ("ListConnections", "admin"),
    ("RotateConnection", "admin"),
    ("DeleteConnection", "admin"),
    ("ListEvents", "refunds:read"),
    ("WatchEvents", "refunds:read"),
    ("CreateWebhookEndpoint", "webhooks:manage"),
    ("ListWebhookEndpoints", "webhooks:manage"),
    ("UpdateWebhookEndpoint", "webhooks:manage"),
    ("DeleteWebhookEndpoint", "webhooks:manage"),
    ("RotateWebhookSecret", "webhooks:manage"),
    ("ListWebhookDeliveries", "webhooks:manage"),
    ("RetryWebhookDelivery", "webhooks:manage"),
    ("ReplayWebhookEvents", "webhooks:manage"),
];

/// Every method of every service in the API's descriptor, as `/package.Service/Method`.
fn descriptor_methods() -> Vec<(String, String)> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor");
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("{}.{}", file.package(), service.name()),
                    method.name().to_owned(),
                ));
            }
        }
    }
    methods
}

/// Calls `path` with an empty message (every field at its default) and `key`, and returns the
/// status the call ended with. Server-streaming methods refuse before their first message, so a
/// unary call sees their refusal too.
async fn call_raw(app: &TestApp, path: &str, key: Option<&str>) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(());
    if let Some(key) = key {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("ascii"),
        );
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    match grpc
        .unary(request, path.parse().expect("path"), codec)
        .await
    {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// Defect guarded: authorization was a call each handler had to remember. Every RPC in the
/// descriptor refuses a call without a key, and a key lacking its scope; an RPC added without a
/// scope fails here.
#[tokio::test]
async fn every_rpc_refuses_a_missing_key_and_a_key_without_its_scope() {
    let (app, _db) = spawn_app().await;
    let mut methods = descriptor_methods();
    methods.sort();
    let mut listed: Vec<&str> = EXPECTED_SCOPES.iter().map(|(m, _)| *m).collect();
    listed.sort_unstable();
    let described: Vec<&str> = methods
        .iter()
        .filter(|(service, _)| service == "refunds.v1.RefundService")
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(
        described, listed,
        "every RefundService method has a scope here"
    );
    assert_eq!(
        methods.len(),
        described.len(),
        "a service other than RefundService was added to the API: give it a test like this one"
    );

    let all_but = |scope: &str| {
        Scope::ALL
            .into_iter()
            .filter(|s| *s != Scope::Admin && s.as_str() != scope)
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    for (method, scope) in EXPECTED_SCOPES {
        let path = format!("/refunds.v1.RefundService/{method}");
        let status = call_raw(&app, &path, None).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{method}: {status:?}");

        let status = call_raw(&app, &path, Some("rsk_not_a_key")).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{method}: {status:?}");

        let others = key(&app, AccountId::DEFAULT, &all_but(scope)).await;
        let status = call_raw(&app, &path, Some(&others)).await;
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{method}: {status:?}"
        );
        assert_eq!(missing_scope(&status).as_deref(), Some(*scope), "{method}");

        // With the scope, the call gets past authorization (the empty message may then be
        // refused as an invalid argument, or be answered).
        // A stream that follows live (WatchEvents from the start) stays open, past authorization,
        // which refuses at once.
        let allowed = key(&app, AccountId::DEFAULT, scope).await;
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            call_raw(&app, &path, Some(&allowed)),
        )
        .await
        .unwrap_or_else(|_| tonic::Status::ok("still streaming"));
        assert!(
            !matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ),
            "{method}: {status:?}"
        );
    }
}

/// Checked keys are remembered (`--api-key-cache-ttl`), so a revocation takes time to apply: on
/// SQLite at most the TTL; on PostgreSQL the revoking command's notice makes every replica forget
/// its keys at once, however long the TTL.
#[tokio::test]
async fn a_revoked_key_is_refused_once_the_cache_forgets_it() {
    let db = TestDb::new().await;
    let ttl = Duration::from_secs(3600);
    let app = spawn_app_with(&db, |s| s.refunds.api_key_cache_ttl = ttl).await;
    let token = key(&app, "acct_revoked", "refunds:read").await;
    let mut caller = client(&app, Some(&token)).await;
    caller
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect("the key works, and is remembered");
    let key_id = app
        .service
        .store()
        .list_api_keys(Some(&parse_account("acct_revoked").expect("account")))
        .await
        .expect("keys")
        .pop()
        .expect("the key")
        .id;
    // As `keys revoke` does: another connection to the database.
    let other = refund_service::store::Store::connect(&db.url, &Default::default())
        .await
        .expect("connect");
    assert!(
        other
            .revoke_api_key(&key_id, refund_service::domain::Timestamp::now())
            .await
            .expect("revoke")
    );

    if is_sqlite(&db) {
        // Only one process serves a SQLite file, and nothing tells it: the key is trusted
        // until its TTL ends, and not a moment longer.
        caller
            .list_refunds(pb::ListRefundsRequest::default())
            .await
            .expect("still remembered within the TTL");
        app.service.clock().advance(ttl);
    } else {
        // The notice arrives within milliseconds; the TTL is an hour.
        eventually(Duration::from_secs(10), "the revocation's notice", || {
            let mut caller = caller.clone();
            async move {
                caller
                    .list_refunds(pb::ListRefundsRequest::default())
                    .await
                    .err()
            }
        })
        .await;
    }
    let err = caller
        .list_refunds(pb::ListRefundsRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
}
