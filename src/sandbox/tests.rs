//! Unit tests of the sandbox: its ledger rules, its faults, and its HTTP API
//! through the real client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::client::{ClientError, SandboxClient};
use super::*;

fn seed_request(amount: i64) -> NewPayments {
    NewPayments {
        amount,
        currency: "usd".to_owned(),
        id: None,
        count: None,
        status: None,
        fail_refunds: false,
    }
}

fn seed(sandbox: &Sandbox, amount: i64) -> String {
    let mut payments = sandbox
        .create_payments(seed_request(amount))
        .expect("seeding");
    payments.remove(0).id
}

fn refund(payment: &str, amount: Option<i64>) -> NewRefund {
    NewRefund {
        payment: payment.to_owned(),
        amount,
        reason: None,
        metadata: BTreeMap::new(),
    }
}

fn code(result: Result<impl fmt::Debug, SandboxError>) -> String {
    match result {
        Err(err) => err.code().to_owned(),
        Ok(value) => panic!("expected an error, got {value:?}"),
    }
}

#[test]
fn seeding_validates_and_normalizes() {
    let sandbox = Sandbox::default();
    let payments = sandbox
        .create_payments(NewPayments {
            count: Some(3),
            ..seed_request(500)
        })
        .expect("seeding");
    assert_eq!(payments.len(), 3);
    for payment in &payments {
        assert_eq!(payment.currency, "USD");
        assert_eq!(payment.status, PaymentStatus::Succeeded);
        assert_eq!(payment.amount_refunded, 0);
        let suffix = payment.id.strip_prefix("ch_sbx_").expect("prefix");
        assert_eq!(suffix.len(), 24);
        assert!(suffix.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    assert_ne!(payments[0].id, payments[1].id);

    let named = NewPayments {
        id: Some("pay_1".to_owned()),
        ..seed_request(100)
    };
    assert_eq!(
        sandbox.create_payments(named.clone()).expect("named")[0].id,
        "pay_1"
    );
    assert_eq!(
        code(sandbox.create_payments(named.clone())),
        "resource_already_exists"
    );
    assert_eq!(
        code(sandbox.create_payments(NewPayments {
            count: Some(2),
            id: Some("pay_2".to_owned()),
            ..named
        })),
        "parameter_invalid"
    );
    assert_eq!(
        code(sandbox.create_payments(seed_request(0))),
        "invalid_amount"
    );
    for currency in ["US", "XQQ", "", "€UR"] {
        let req = NewPayments {
            currency: currency.to_owned(),
            ..seed_request(100)
        };
        assert_eq!(
            code(sandbox.create_payments(req)),
            "parameter_invalid",
            "{currency}"
        );
    }
    for count in [0, 100_001] {
        let req = NewPayments {
            count: Some(count),
            ..seed_request(100)
        };
        assert_eq!(code(sandbox.create_payments(req)), "parameter_invalid");
    }
    let bad_id = NewPayments {
        id: Some("a/b".to_owned()),
        ..seed_request(100)
    };
    assert_eq!(code(sandbox.create_payments(bad_id)), "parameter_invalid");
}

#[tokio::test]
async fn refunds_respect_the_payment_limits() {
    let sandbox = Sandbox::default();
    let id = seed(&sandbox, 1_000);

    let first = sandbox
        .create_refund(refund(&id, Some(300)), None)
        .await
        .expect("partial");
    assert_eq!(first.amount, 300);
    assert_eq!(first.currency, "USD");
    assert_eq!(first.status, RefundStatus::Succeeded);
    assert!(first.id.starts_with("re_sbx_") && first.id.len() == 7 + 24);

    assert_eq!(
        code(sandbox.create_refund(refund(&id, Some(0)), None).await),
        "invalid_amount"
    );
    assert_eq!(
        code(sandbox.create_refund(refund(&id, Some(-5)), None).await),
        "invalid_amount"
    );
    match sandbox.create_refund(refund(&id, Some(701)), None).await {
        Err(SandboxError::InvalidRequest { code, message }) => {
            assert_eq!(code, "amount_too_large");
            assert!(message.contains("700"), "{message}");
        }
        other => panic!("expected amount_too_large, got {other:?}"),
    }

    let rest = sandbox
        .create_refund(refund(&id, None), None)
        .await
        .expect("rest");
    assert_eq!(rest.amount, 700);
    let payment = sandbox.get_payment(&id).await.expect("payment");
    assert_eq!(payment.amount_refunded, 1_000);
    assert_eq!(
        code(sandbox.create_refund(refund(&id, None), None).await),
        "charge_already_refunded"
    );
    assert_eq!(
        code(sandbox.create_refund(refund(&id, Some(1)), None).await),
        "charge_already_refunded"
    );

    assert_eq!(
        code(sandbox.create_refund(refund("ch_nope", None), None).await),
        "resource_missing"
    );
    let uncaptured = sandbox
        .create_payments(NewPayments {
            status: Some(PaymentStatus::RequiresCapture),
            ..seed_request(100)
        })
        .expect("seeding")[0]
        .id
        .clone();
    assert_eq!(
        code(sandbox.create_refund(refund(&uncaptured, None), None).await),
        "charge_not_refundable"
    );

    let ledger = sandbox.ledger(Some(&id));
    assert_eq!(
        ledger.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [&first.id, &rest.id]
    );
    assert_eq!(sandbox.stats().refunds_created, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_never_over_refund() {
    let sandbox = Arc::new(Sandbox::default());
    let partial = seed(&sandbox, 1_000);
    let full = seed(&sandbox, 1_000);

    let mut tasks = Vec::new();
    for i in 0..64 {
        let sandbox = Arc::clone(&sandbox);
        let (partial, full) = (partial.clone(), full.clone());
        tasks.push(tokio::spawn(async move {
            // Half the tasks take 30 of one payment, the other half everything of the other.
            if i % 2 == 0 {
                sandbox
                    .create_refund(refund(&partial, Some(30)), None)
                    .await
            } else {
                sandbox.create_refund(refund(&full, None), None).await
            }
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => ok += 1,
            Err(err) => assert!(
                matches!(err.code(), "amount_too_large" | "charge_already_refunded"),
                "{err:?}"
            ),
        }
    }
    // 32 refunds of 30 fit in 1 000; exactly one full refund wins.
    assert_eq!(ok, 32 + 1);
    let refunded: i64 = sandbox
        .ledger(Some(&partial))
        .iter()
        .map(|r| r.amount)
        .sum();
    assert_eq!(refunded, 960);
    assert_eq!(sandbox.ledger(Some(&full)).len(), 1);
    assert_eq!(
        sandbox
            .get_payment(&full)
            .await
            .expect("payment")
            .amount_refunded,
        1_000
    );

    // Fill the partial payment to its limit from many tasks at once.
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let sandbox = Arc::clone(&sandbox);
        let partial = partial.clone();
        tasks.push(tokio::spawn(async move {
            sandbox.create_refund(refund(&partial, Some(7)), None).await
        }));
    }
    for task in tasks {
        let _ = task.await.expect("task");
    }
    let refunded: i64 = sandbox
        .ledger(Some(&partial))
        .iter()
        .map(|r| r.amount)
        .sum();
    assert_eq!(refunded, 960 + 5 * 7);
    assert!(refunded <= 1_000);
}

#[tokio::test]
async fn idempotency_keys_replay_or_reject() {
    let sandbox = Sandbox::default();
    let id = seed(&sandbox, 1_000);
    let mut req = refund(&id, Some(400));
    req.reason = Some("requested_by_customer".to_owned());
    req.metadata.insert("order".to_owned(), "42".to_owned());

    let original = sandbox
        .create_refund(req.clone(), Some("key-1"))
        .await
        .expect("original");
    assert_eq!(original.idempotency_key.as_deref(), Some("key-1"));
    let replay = sandbox
        .create_refund(req.clone(), Some("key-1"))
        .await
        .expect("replay");
    assert_eq!(replay, original);
    assert_eq!(sandbox.ledger(None).len(), 1);
    assert_eq!(
        sandbox
            .get_payment(&id)
            .await
            .expect("payment")
            .amount_refunded,
        400
    );

    for changed in [
        NewRefund {
            amount: Some(401),
            ..req.clone()
        },
        NewRefund {
            amount: None,
            ..req.clone()
        },
        NewRefund {
            reason: None,
            ..req.clone()
        },
        NewRefund {
            metadata: BTreeMap::new(),
            ..req.clone()
        },
    ] {
        assert_eq!(
            code(sandbox.create_refund(changed, Some("key-1")).await),
            "idempotency_key_reused"
        );
    }
    // Keys are global: another payment cannot reuse it either.
    let other = seed(&sandbox, 1_000);
    assert_eq!(
        code(
            sandbox
                .create_refund(refund(&other, Some(400)), Some("key-1"))
                .await
        ),
        "idempotency_key_reused"
    );

    // A replay still answers after the payment has been refunded in full.
    sandbox
        .create_refund(refund(&id, None), Some("key-2"))
        .await
        .expect("rest");
    assert_eq!(
        sandbox
            .create_refund(req, Some("key-1"))
            .await
            .expect("replay"),
        original
    );

    let stats = sandbox.stats();
    assert_eq!(stats.refunds_created, 2);
    assert_eq!(stats.idempotent_replays, 2);

    let by_key = sandbox
        .list_refunds(RefundFilter {
            payment: None,
            idempotency_key: Some("key-1".to_owned()),
        })
        .await
        .expect("list");
    assert_eq!(by_key, std::slice::from_ref(&original));
    let mismatch = sandbox
        .list_refunds(RefundFilter {
            payment: Some(other),
            idempotency_key: Some("key-1".to_owned()),
        })
        .await
        .expect("list");
    assert!(mismatch.is_empty());
    assert_eq!(
        code(sandbox.create_refund(refund(&id, None), Some("")).await),
        "parameter_invalid"
    );
}

#[tokio::test]
async fn fail_refunds_records_failed_refunds() {
    let sandbox = Sandbox::default();
    let id = sandbox
        .create_payments(NewPayments {
            fail_refunds: true,
            ..seed_request(1_000)
        })
        .expect("seeding")[0]
        .id
        .clone();
    let failed = sandbox
        .create_refund(refund(&id, None), None)
        .await
        .expect("recorded");
    assert_eq!(failed.status, RefundStatus::Failed);
    assert_eq!(failed.amount, 1_000);
    assert_eq!(
        failed.failure_code.as_deref(),
        Some("expired_or_canceled_card")
    );
    assert!(failed.failure_reason.is_some());
    // A failed refund gives nothing back, so the full amount stays refundable.
    assert_eq!(
        sandbox
            .get_payment(&id)
            .await
            .expect("payment")
            .amount_refunded,
        0
    );
    let again = sandbox
        .create_refund(refund(&id, None), None)
        .await
        .expect("recorded");
    assert_eq!(again.status, RefundStatus::Failed);
    assert_eq!(sandbox.ledger(Some(&id)).len(), 2);
    assert_eq!(
        code(sandbox.create_refund(refund(&id, Some(1_001)), None).await),
        "amount_too_large"
    );
}

#[tokio::test]
async fn pending_refunds_settle_after_the_delay() {
    let sandbox = Sandbox::new(FaultConfig {
        settle_delay_ms: 5_000,
        ..FaultConfig::default()
    });
    let id = seed(&sandbox, 1_000);
    let pending = sandbox
        .create_refund(refund(&id, Some(600)), None)
        .await
        .expect("refund");
    assert_eq!(pending.status, RefundStatus::Pending);
    // Pending refunds already use up the payment.
    assert_eq!(
        sandbox
            .get_payment(&id)
            .await
            .expect("payment")
            .amount_refunded,
        600
    );
    assert_eq!(
        code(sandbox.create_refund(refund(&id, Some(401)), None).await),
        "amount_too_large"
    );

    sandbox.clock.advance(Duration::from_millis(4_000));
    assert_eq!(
        sandbox.get_refund(&pending.id).await.expect("get").status,
        RefundStatus::Pending
    );
    sandbox.clock.advance(Duration::from_millis(1_000));
    assert_eq!(
        sandbox.get_refund(&pending.id).await.expect("get").status,
        RefundStatus::Succeeded
    );
    assert_eq!(sandbox.ledger(None)[0].status, RefundStatus::Succeeded);
    assert_eq!(
        sandbox
            .get_payment(&id)
            .await
            .expect("payment")
            .amount_refunded,
        600
    );
    assert_eq!(
        code(sandbox.get_refund("re_nope").await),
        "resource_missing"
    );
}

#[tokio::test]
async fn rate_limit_answers_with_retry_after() {
    let sandbox = Sandbox::new(FaultConfig {
        rate_limit_per_sec: 2,
        ..FaultConfig::default()
    });
    let id = seed(&sandbox, 1_000);
    sandbox.get_payment(&id).await.expect("first");
    sandbox.get_payment(&id).await.expect("second");
    assert_eq!(code(sandbox.get_payment(&id).await), "rate_limit");
    // Writes have a bucket of their own, as at Stripe.
    sandbox
        .create_refund(refund(&id, Some(10)), None)
        .await
        .expect("first write");
    sandbox
        .create_refund(refund(&id, Some(10)), None)
        .await
        .expect("second write");
    match sandbox.create_refund(refund(&id, Some(10)), None).await {
        Err(SandboxError::RateLimited { retry_after_secs }) => assert!(retry_after_secs >= 1),
        other => panic!("expected a rate limit, got {other:?}"),
    }
    // Nothing was processed by the refused request.
    assert_eq!(sandbox.ledger(None).len(), 2);
    // Seeding, ledger, stats and faults are never limited.
    seed(&sandbox, 1);
    let stats = sandbox.stats();
    assert_eq!((stats.requests, stats.rate_limited), (6, 2));
    assert_eq!(stats.max_writes_per_sec, 3);

    sandbox.clock.advance(Duration::from_secs(1));
    sandbox
        .create_refund(refund(&id, None), None)
        .await
        .expect("after the wait");

    // Changing the faults rebuilds the bucket.
    sandbox.set_faults(FaultConfig {
        rate_limit_per_sec: 1,
        ..FaultConfig::default()
    });
    sandbox.get_payment(&id).await.expect("fresh bucket");
    assert_eq!(code(sandbox.get_payment(&id).await), "rate_limit");
}

#[tokio::test]
async fn stats_track_the_busiest_second() {
    let sandbox = Sandbox::default();
    let id = seed(&sandbox, 1_000);
    for _ in 0..5 {
        sandbox.get_payment(&id).await.expect("get");
    }
    sandbox.clock.advance(Duration::from_secs(2));
    for _ in 0..3 {
        sandbox.get_payment(&id).await.expect("get");
    }
    let stats = sandbox.stats();
    assert_eq!(stats.requests, 8);
    assert_eq!(stats.max_requests_per_sec, 5);

    // The window slides: requests straddling a second boundary still count together.
    sandbox.clock.advance(Duration::from_millis(700));
    for _ in 0..4 {
        sandbox.get_payment(&id).await.expect("get");
    }
    assert_eq!(sandbox.stats().max_requests_per_sec, 7);
}

#[tokio::test]
async fn injected_errors_process_nothing() {
    let sandbox = Sandbox::new(FaultConfig {
        error_rate: 1.0,
        ..FaultConfig::default()
    });
    let id = seed(&sandbox, 1_000);
    match sandbox.create_refund(refund(&id, None), Some("k")).await {
        Err(err @ SandboxError::Api { .. }) => assert_eq!(err.http_status(), 500),
        other => panic!("expected an api error, got {other:?}"),
    }
    assert!(sandbox.ledger(None).is_empty());
    assert_eq!(sandbox.stats().errors_injected, 1);

    sandbox.set_faults(FaultConfig::default());
    // The key was not consumed by the failed attempt.
    sandbox
        .create_refund(refund(&id, Some(5)), Some("k"))
        .await
        .expect("refund");
}

#[tokio::test]
async fn timed_out_refunds_are_recorded_and_replayable() {
    let sandbox = Sandbox::new(FaultConfig {
        timeout_rate: 1.0,
        hang_ms: 60_000,
        ..FaultConfig::default()
    });
    let id = seed(&sandbox, 1_000);
    let req = refund(&id, Some(250));
    let attempt = tokio::time::timeout(
        Duration::from_millis(50),
        sandbox.create_refund(req.clone(), Some("retry-me")),
    )
    .await;
    assert!(attempt.is_err(), "the answer should hang");
    let ledger = sandbox.ledger(None);
    assert_eq!(ledger.len(), 1);
    assert_eq!(sandbox.stats().timeouts_injected, 1);

    sandbox.set_faults(FaultConfig::default());
    let replay = sandbox
        .create_refund(req, Some("retry-me"))
        .await
        .expect("replay");
    assert_eq!(replay, ledger[0]);
    assert_eq!(
        sandbox
            .get_payment(&id)
            .await
            .expect("payment")
            .amount_refunded,
        250
    );
}

#[tokio::test]
async fn latency_delays_api_calls_only() {
    let sandbox = Sandbox::new(FaultConfig {
        latency_ms: 60,
        ..FaultConfig::default()
    });
    let start = std::time::Instant::now();
    let id = seed(&sandbox, 1_000);
    let _ = sandbox.ledger(None);
    assert!(start.elapsed() < Duration::from_millis(60));
    sandbox.get_payment(&id).await.expect("get");
    assert!(start.elapsed() >= Duration::from_millis(60));
}

#[test]
fn fault_rates_are_clamped_in_process_and_validated_over_http() {
    let bad = FaultConfig {
        error_rate: 7.0,
        timeout_rate: f64::NAN,
        ..FaultConfig::default()
    };
    assert_eq!(
        bad.validate().map_err(|e| e.code().to_owned()),
        Err("parameter_invalid".to_owned())
    );
    let sandbox = Sandbox::new(bad);
    let faults = sandbox.faults();
    assert_eq!((faults.error_rate, faults.timeout_rate), (1.0, 0.0));
    let parsed: FaultConfig = serde_json::from_str(r#"{"latency_ms": 5}"#).expect("json");
    assert_eq!(
        parsed,
        FaultConfig {
            latency_ms: 5,
            ..FaultConfig::default()
        }
    );
    assert_eq!(parsed.hang_ms, 30_000);
}

/// Serves the router the way the service does, nested under `/sandbox`.
async fn serve(sandbox: Arc<Sandbox>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().nest("/sandbox", http::router(sandbox));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/sandbox")
}

#[tokio::test]
async fn http_round_trip_through_the_client() {
    let sandbox = Arc::new(Sandbox::default());
    let base = serve(Arc::clone(&sandbox)).await;
    let client = SandboxClient::new(&format!("{base}/"), Duration::from_secs(5)).expect("client");

    let payments = client
        .create_payments(&NewPayments {
            count: Some(2),
            ..seed_request(1_000)
        })
        .await
        .expect("seed");
    assert_eq!(payments.len(), 2);
    let id = payments[0].id.clone();
    assert_eq!(client.get_payment(&id).await.expect("get"), payments[0]);

    let mut req = refund(&id, Some(300));
    req.metadata.insert("order".to_owned(), "a b&c".to_owned());
    let created = client
        .create_refund(&req, Some("http-key"))
        .await
        .expect("refund");
    assert_eq!(
        client
            .create_refund(&req, Some("http-key"))
            .await
            .expect("replay"),
        created
    );
    assert_eq!(client.get_refund(&created.id).await.expect("get"), created);
    let filter = RefundFilter {
        payment: Some(id.clone()),
        idempotency_key: Some("http-key".to_owned()),
    };
    assert_eq!(
        client.list_refunds(&filter).await.expect("list"),
        std::slice::from_ref(&created)
    );
    assert_eq!(
        client.ledger(Some(&id)).await.expect("ledger"),
        std::slice::from_ref(&created)
    );
    assert_eq!(
        client.ledger(None).await.expect("ledger"),
        sandbox.ledger(None)
    );
    assert!(
        client
            .ledger(Some(&payments[1].id))
            .await
            .expect("ledger")
            .is_empty()
    );

    match client.create_refund(&refund(&id, Some(701)), None).await {
        Err(ClientError::Sandbox(SandboxError::InvalidRequest { code, .. })) => {
            assert_eq!(code, "amount_too_large")
        }
        other => panic!("expected amount_too_large, got {other:?}"),
    }
    match client
        .create_refund(
            &NewRefund {
                amount: Some(1),
                ..req.clone()
            },
            Some("http-key"),
        )
        .await
    {
        Err(ClientError::Sandbox(err)) => assert_eq!(err.code(), "idempotency_key_reused"),
        other => panic!("expected idempotency_key_reused, got {other:?}"),
    }
    match client.get_payment("ch_missing/../x").await {
        Err(ClientError::Sandbox(SandboxError::NotFound { code, .. })) => {
            assert_eq!(code, "resource_missing")
        }
        other => panic!("expected a 404, got {other:?}"),
    }

    let faults = FaultConfig {
        rate_limit_per_sec: 1,
        ..FaultConfig::default()
    };
    assert_eq!(client.set_faults(&faults).await.expect("set"), faults);
    assert_eq!(client.faults().await.expect("get"), faults);
    client.get_payment(&id).await.expect("within the limit");
    match client.get_payment(&id).await {
        Err(ClientError::Sandbox(SandboxError::RateLimited { retry_after_secs })) => {
            assert!(retry_after_secs >= 1)
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    // The ledger of payments answers whatever the faults: a checker relies on it.
    let mut seeded = payments.clone();
    seeded.sort_by(|a, b| a.id.cmp(&b.id));
    let listed = client.ledger_payments().await.expect("ledger of payments");
    assert_eq!(
        listed.iter().map(|p| &p.id).collect::<Vec<_>>(),
        seeded.iter().map(|p| &p.id).collect::<Vec<_>>()
    );
    let refunded = listed
        .iter()
        .find(|p| p.id == id)
        .expect("the refunded payment");
    assert_eq!(refunded.amount_refunded, 300);
    assert_eq!(listed, sandbox.ledger_payments());

    // Raw HTTP, as a script would see it.
    let raw = reqwest::Client::new();
    let answer = raw
        .get(format!("{base}/payments/{id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("retry-after"));
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["retry_after"]
            .as_u64()
            .is_some_and(|s| s >= 1)
    );

    let answer = raw
        .post(format!("{base}/refunds"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 400);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "parameter_invalid");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let answer = raw
        .put(format!("{base}/faults"))
        .body(r#"{"error_rate": 2}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 400);
    let answer = raw
        .get(format!("{base}/nowhere"))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 404);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "resource_missing");

    let stats = client.stats().await.expect("stats");
    assert_eq!(stats, sandbox.stats());
    assert_eq!(stats.refunds_created, 1);
    assert_eq!(stats.idempotent_replays, 1);
    assert!(stats.rate_limited >= 2);
}

#[tokio::test]
async fn client_reports_timeouts_and_connection_failures() {
    let sandbox = Arc::new(Sandbox::new(FaultConfig {
        timeout_rate: 1.0,
        hang_ms: 30_000,
        ..FaultConfig::default()
    }));
    let base = serve(Arc::clone(&sandbox)).await;
    let client = SandboxClient::new(&base, Duration::from_millis(300)).expect("client");
    let id = client
        .create_payments(&seed_request(100))
        .await
        .expect("seed")[0]
        .id
        .clone();
    match client.create_refund(&refund(&id, None), Some("slow")).await {
        Err(ClientError::Timeout) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    // It timed out, yet the sandbox did refund: the ambiguity the service must resolve.
    assert_eq!(sandbox.ledger(Some(&id)).len(), 1);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let nowhere = SandboxClient::new(
        &format!("http://127.0.0.1:{port}/sandbox"),
        Duration::from_secs(2),
    )
    .expect("client");
    assert!(matches!(
        nowhere.stats().await,
        Err(ClientError::Connect(_))
    ));
    assert!(matches!(
        SandboxClient::new("not a url", Duration::from_secs(1)),
        Err(ClientError::Connect(_))
    ));
    match client
        .create_refund(&refund(&id, None), Some("bad\nkey"))
        .await
    {
        Err(ClientError::Sandbox(err)) => assert_eq!(err.code(), "parameter_invalid"),
        other => panic!("expected parameter_invalid, got {other:?}"),
    }
}

// === Faults of real PSPs ===

/// Lets spawned tasks run until `done` holds. Yields, never sleeps: the tasks
/// need only to be polled, and paused time must not move meanwhile.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn errors_after_processing_are_recorded() {
    let sandbox = Sandbox::new(FaultConfig {
        error_after_rate: 1.0,
        ..FaultConfig::default()
    });
    let id = seed(&sandbox, 1_000);
    let req = refund(&id, Some(300));
    match sandbox.create_refund(req.clone(), Some("after")).await {
        Err(err @ SandboxError::Api { .. }) => {
            assert_eq!(err.http_status(), 500);
            assert!(err.to_string().contains("may have been processed"), "{err}");
        }
        other => panic!("expected an api error, got {other:?}"),
    }
    // Unlike `error_rate`, the refund was processed.
    let ledger = sandbox.ledger(None);
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].amount, 300);
    assert_eq!(
        sandbox
            .get_payment(&id)
            .await
            .expect("payment")
            .amount_refunded,
        300
    );
    let stats = sandbox.stats();
    assert_eq!(
        (stats.errors_after_processing, stats.errors_injected),
        (1, 0)
    );

    sandbox.set_faults(FaultConfig::default());
    let replay = sandbox
        .create_refund(req, Some("after"))
        .await
        .expect("replay");
    assert_eq!(replay, ledger[0]);
}

#[tokio::test]
async fn lost_answers_are_recorded() {
    let sandbox = Sandbox::new(FaultConfig {
        reset_after_rate: 1.0,
        ..FaultConfig::default()
    });
    let id = seed(&sandbox, 1_000);
    let req = refund(&id, None);
    match sandbox.create_refund(req.clone(), Some("lost")).await {
        Err(err @ SandboxError::AnswerLost { .. }) => assert_eq!(err.code(), "answer_lost"),
        other => panic!("expected a lost answer, got {other:?}"),
    }
    let ledger = sandbox.ledger(None);
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].amount, 1_000);
    assert_eq!(sandbox.stats().resets_injected, 1);
    // A retry is answered from the ledger too, and its answer may be lost again.
    assert!(matches!(
        sandbox.create_refund(req.clone(), Some("lost")).await,
        Err(SandboxError::AnswerLost { .. })
    ));
    sandbox.set_faults(FaultConfig::default());
    let replay = sandbox
        .create_refund(req, Some("lost"))
        .await
        .expect("replay");
    assert_eq!(replay, ledger[0]);
    assert_eq!(sandbox.ledger(None).len(), 1);
}

#[tokio::test]
async fn a_key_in_flight_during_a_slow_creation_gets_409() {
    tokio::time::pause();
    let sandbox = Arc::new(Sandbox::new(FaultConfig {
        slow_create_rate: 1.0,
        slow_create_ms: 10_000,
        ..FaultConfig::default()
    }));
    let id = seed(&sandbox, 1_000);
    let req = refund(&id, Some(400));
    let first = tokio::spawn({
        let (sandbox, req) = (Arc::clone(&sandbox), req.clone());
        async move { sandbox.create_refund(req, Some("slow")).await }
    });
    until(|| sandbox.stats().slow_creates_injected == 1).await;

    // Nothing is recorded yet: a look-up finds nothing, a retry is refused.
    let by_key = RefundFilter {
        payment: None,
        idempotency_key: Some("slow".to_owned()),
    };
    assert!(
        sandbox
            .list_refunds(by_key.clone())
            .await
            .expect("list")
            .is_empty()
    );
    match sandbox.create_refund(req.clone(), Some("slow")).await {
        Err(err @ SandboxError::Conflict { .. }) => {
            assert_eq!(err.code(), "idempotency_key_in_use");
            assert_eq!(err.http_status(), 409);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Whatever the parameters: the key is busy.
    assert_eq!(
        code(sandbox.create_refund(refund(&id, None), Some("slow")).await),
        "idempotency_key_in_use"
    );
    assert!(sandbox.ledger(None).is_empty());
    assert_eq!(sandbox.stats().conflicts, 2);

    // Paused time moves on by itself once every task waits.
    let created = first.await.expect("task").expect("refund");
    assert_eq!(sandbox.ledger(None), std::slice::from_ref(&created));
    assert_eq!(
        sandbox.list_refunds(by_key).await.expect("list"),
        std::slice::from_ref(&created)
    );
    sandbox.set_faults(FaultConfig::default());
    assert_eq!(
        sandbox
            .create_refund(req, Some("slow"))
            .await
            .expect("replay"),
        created
    );
    let stats = sandbox.stats();
    assert_eq!((stats.refunds_created, stats.idempotent_replays), (1, 1));
}

#[tokio::test]
async fn a_hanging_creation_keeps_its_key_in_flight_until_it_ends() {
    tokio::time::pause();
    let sandbox = Arc::new(Sandbox::new(FaultConfig {
        timeout_rate: 1.0,
        hang_ms: 60_000,
        ..FaultConfig::default()
    }));
    let id = seed(&sandbox, 1_000);
    let req = refund(&id, Some(250));
    let hanging = tokio::spawn({
        let (sandbox, req) = (Arc::clone(&sandbox), req.clone());
        async move { sandbox.create_refund(req, Some("hang")).await }
    });
    until(|| sandbox.stats().timeouts_injected == 1).await;
    // Recorded, but not answered: the key is still in flight.
    assert_eq!(sandbox.ledger(None).len(), 1);
    assert_eq!(
        code(sandbox.create_refund(req.clone(), Some("hang")).await),
        "idempotency_key_in_use"
    );
    // The caller goes away (its future is dropped): the key is released.
    hanging.abort();
    assert!(hanging.await.expect_err("aborted").is_cancelled());
    sandbox.set_faults(FaultConfig::default());
    let replay = sandbox
        .create_refund(req, Some("hang"))
        .await
        .expect("replay");
    assert_eq!(replay, sandbox.ledger(None)[0]);
}

#[tokio::test]
async fn random_429s_carry_their_retry_after_and_process_nothing() {
    let sandbox = Sandbox::new(FaultConfig {
        retry_after_rate: 1.0,
        retry_after_secs: 7,
        ..FaultConfig::default()
    });
    let id = seed(&sandbox, 1_000);
    assert_eq!(
        sandbox.get_payment(&id).await,
        Err(SandboxError::RateLimited {
            retry_after_secs: 7
        })
    );
    assert_eq!(
        sandbox.create_refund(refund(&id, None), Some("k")).await,
        Err(SandboxError::RateLimited {
            retry_after_secs: 7
        })
    );
    assert!(sandbox.ledger(None).is_empty());
    assert_eq!(sandbox.stats().rate_limited, 2);
    sandbox.set_faults(FaultConfig::default());
    sandbox
        .create_refund(refund(&id, None), Some("k"))
        .await
        .expect("the key was not used");
}

#[tokio::test]
async fn refunds_can_fail_after_pending_and_give_the_amount_back() {
    let sandbox = Sandbox::new(FaultConfig {
        fail_after_pending_rate: 1.0,
        ..FaultConfig::default()
    });
    let id = seed(&sandbox, 1_000);
    let pending = sandbox
        .create_refund(refund(&id, Some(600)), Some("doomed"))
        .await
        .expect("refund");
    assert_eq!(pending.status, RefundStatus::Pending);
    assert_eq!(pending.failure_code, None);
    // While pending it uses up the payment, as any pending refund does.
    assert_eq!(
        sandbox
            .get_payment(&id)
            .await
            .expect("payment")
            .amount_refunded,
        600
    );
    assert_eq!(
        code(sandbox.create_refund(refund(&id, Some(401)), None).await),
        "amount_too_large"
    );

    // With no settle delay configured, it stays pending for 200 ms.
    sandbox.clock.advance(Duration::from_millis(199));
    assert_eq!(
        sandbox.get_refund(&pending.id).await.expect("get").status,
        RefundStatus::Pending
    );
    sandbox.clock.advance(Duration::from_millis(1));
    let failed = sandbox.get_refund(&pending.id).await.expect("get");
    assert_eq!(failed.status, RefundStatus::Failed);
    assert_eq!(
        failed.failure_code.as_deref(),
        Some("expired_or_canceled_card")
    );
    assert!(failed.failure_reason.is_some());
    assert_eq!(sandbox.ledger(None), std::slice::from_ref(&failed));
    // A replay answers what the refund has become.
    assert_eq!(
        sandbox
            .create_refund(refund(&id, Some(600)), Some("doomed"))
            .await
            .expect("replay"),
        failed
    );
    assert_eq!(
        sandbox
            .get_payment(&id)
            .await
            .expect("payment")
            .amount_refunded,
        0
    );
    // The whole amount can be refunded again; with a settle delay, that is how long it pends.
    sandbox.set_faults(FaultConfig {
        fail_after_pending_rate: 1.0,
        settle_delay_ms: 5_000,
        ..FaultConfig::default()
    });
    let again = sandbox
        .create_refund(refund(&id, None), None)
        .await
        .expect("refund");
    assert_eq!((again.amount, again.status), (1_000, RefundStatus::Pending));
    sandbox.clock.advance(Duration::from_millis(4_999));
    assert_eq!(
        sandbox.get_refund(&again.id).await.expect("get").status,
        RefundStatus::Pending
    );
    sandbox.clock.advance(Duration::from_millis(1));
    assert_eq!(
        sandbox.get_refund(&again.id).await.expect("get").status,
        RefundStatus::Failed
    );
    assert_eq!(sandbox.stats().failed_after_pending, 2);
    let refunds = sandbox
        .list_refunds(RefundFilter {
            payment: Some(id.clone()),
            idempotency_key: None,
        })
        .await
        .expect("list");
    assert!(refunds.iter().all(|r| r.status == RefundStatus::Failed));
}

#[tokio::test]
async fn a_refund_that_fails_after_pending_is_announced_failed() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let receiver = axum::Router::new().route(
        "/webhooks/sandbox",
        axum::routing::post(move |body: axum::body::Bytes| async move {
            let _ = tx.send(serde_json::from_slice(&body).expect("json"));
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, receiver).await;
    });

    let sandbox = Sandbox::new(FaultConfig {
        fail_after_pending_rate: 1.0,
        ..FaultConfig::default()
    });
    sandbox.set_webhook_target(Some(WebhookTarget {
        url: format!("http://{addr}/webhooks/sandbox"),
        secret: "whsec_test".to_owned(),
    }));
    let id = seed(&sandbox, 1_000);
    let pending = sandbox
        .create_refund(refund(&id, None), None)
        .await
        .expect("refund");
    let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a webhook in time")
        .expect("a webhook");
    assert_eq!(event["type"], "refund.updated");
    let object = &event["data"]["object"];
    assert_eq!(object["id"], pending.id.as_str());
    assert_eq!(object["status"], "failed");
    assert_eq!(object["failure_reason"], "expired_or_canceled_card");
    assert_eq!(
        event["id"],
        format!("evt_sbx_{}_failed", pending.id).as_str()
    );
}

#[tokio::test]
async fn a_seeded_configuration_makes_the_same_decisions_again() {
    let faults = FaultConfig {
        error_rate: 0.3,
        retry_after_rate: 0.2,
        error_after_rate: 0.3,
        fail_after_pending_rate: 0.5,
        seed: Some(42),
        ..FaultConfig::default()
    };
    async fn run(sandbox: &Sandbox, id: &str) -> Vec<String> {
        let mut outcomes = Vec::new();
        for i in 0..40 {
            let outcome = if i % 2 == 0 {
                sandbox.get_payment(id).await.map(|_| "ok".to_owned())
            } else {
                sandbox
                    .create_refund(refund(id, Some(1)), None)
                    .await
                    .map(|r| format!("{:?}", r.status))
            };
            outcomes.push(outcome.unwrap_or_else(|err| err.code().to_owned()));
        }
        outcomes
    }
    let sandbox = Sandbox::new(faults.clone());
    let id = seed(&sandbox, 1_000);
    let first = run(&sandbox, &id).await;
    for outcome in ["ok", "api_error", "rate_limit", "Pending"] {
        assert!(first.iter().any(|o| o == outcome), "{outcome}: {first:?}");
    }
    // Setting the faults again starts the dice from the seed again.
    sandbox.set_faults(faults.clone());
    assert_eq!(run(&sandbox, &id).await, first);
    // And another sandbox with the same seed decides alike.
    let other = Sandbox::new(faults.clone());
    let other_id = seed(&other, 1_000);
    assert_eq!(run(&other, &other_id).await, first);
    // Another seed decides otherwise.
    let reseeded = Sandbox::new(FaultConfig {
        seed: Some(43),
        ..faults
    });
    let reseeded_id = seed(&reseeded, 1_000);
    assert_ne!(run(&reseeded, &reseeded_id).await, first);
}

#[test]
fn new_fault_fields_default_off_and_are_validated() {
    let parsed: FaultConfig = serde_json::from_str("{}").expect("json");
    assert_eq!(parsed, FaultConfig::default());
    assert_eq!(
        (
            parsed.error_after_rate,
            parsed.reset_after_rate,
            parsed.slow_create_rate,
            parsed.retry_after_rate,
            parsed.fail_after_pending_rate,
            parsed.retry_after_secs,
            parsed.seed,
        ),
        (0.0, 0.0, 0.0, 0.0, 0.0, 1, None)
    );
    // An unset seed is left out of the JSON.
    let json = serde_json::to_value(&parsed).expect("json");
    assert!(json.get("seed").is_none(), "{json}");
    assert!(parsed.validate().is_ok());

    for field in [
        "error_after_rate",
        "reset_after_rate",
        "slow_create_rate",
        "retry_after_rate",
        "fail_after_pending_rate",
    ] {
        let bad: FaultConfig =
            serde_json::from_str(&format!(r#"{{"{field}": 1.5}}"#)).expect("json");
        match bad.validate() {
            Err(SandboxError::InvalidRequest { code, message }) => {
                assert_eq!(code, "parameter_invalid");
                assert!(message.contains(field), "{message}");
            }
            other => panic!("{field}: expected parameter_invalid, got {other:?}"),
        }
    }
    let zero_wait: FaultConfig = serde_json::from_str(r#"{"retry_after_secs": 0}"#).expect("json");
    assert!(zero_wait.validate().is_err());

    let sandbox = Sandbox::new(FaultConfig {
        reset_after_rate: 1.5,
        slow_create_rate: f64::NAN,
        retry_after_secs: 0,
        ..FaultConfig::default()
    });
    let faults = sandbox.faults();
    assert_eq!(
        (
            faults.reset_after_rate,
            faults.slow_create_rate,
            faults.retry_after_secs
        ),
        (1.0, 0.0, 1)
    );

    // Statistics written before these counters existed still parse.
    let old = r#"{"requests": 3, "rate_limited": 0, "errors_injected": 0,
        "timeouts_injected": 0, "refunds_created": 1, "idempotent_replays": 0,
        "max_requests_per_sec": 3}"#;
    let stats: Stats = serde_json::from_str(old).expect("json");
    assert_eq!(
        (stats.requests, stats.conflicts, stats.resets_injected),
        (3, 0, 0)
    );
}

#[tokio::test]
async fn lost_answers_and_conflicts_over_http() {
    let sandbox = Arc::new(Sandbox::default());
    let base = serve(Arc::clone(&sandbox)).await;
    let client = SandboxClient::new(&base, Duration::from_secs(5)).expect("client");
    let id = client
        .create_payments(&seed_request(1_000))
        .await
        .expect("seed")[0]
        .id
        .clone();

    // The answer starts, then the connection drops: a transport error, yet refunded.
    client
        .set_faults(&FaultConfig {
            reset_after_rate: 1.0,
            ..FaultConfig::default()
        })
        .await
        .expect("faults");
    match client
        .create_refund(&refund(&id, Some(300)), Some("reset"))
        .await
    {
        Err(ClientError::Transport(_)) => {}
        other => panic!("expected a transport error, got {other:?}"),
    }
    let ledger = client.ledger(Some(&id)).await.expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].idempotency_key.as_deref(), Some("reset"));
    // On the wire: a 200 arrives, and its body breaks off.
    let raw = reqwest::Client::new();
    let answer = raw
        .post(format!("{base}/refunds"))
        .header("Idempotency-Key", "reset")
        .body(format!(r#"{{"payment": "{id}", "amount": 300}}"#))
        .send()
        .await
        .expect("the status and headers arrive");
    assert_eq!(answer.status(), 200);
    assert!(answer.bytes().await.is_err(), "the body should break off");
    assert_eq!(client.ledger(Some(&id)).await.expect("ledger"), ledger);
    assert_eq!(client.stats().await.expect("stats").resets_injected, 2);

    // A creation holds its key in flight (in process here); the same key over HTTP gets a 409.
    client
        .set_faults(&FaultConfig {
            slow_create_rate: 1.0,
            slow_create_ms: 60_000,
            ..FaultConfig::default()
        })
        .await
        .expect("faults");
    let slow = tokio::spawn({
        let (sandbox, id) = (Arc::clone(&sandbox), id.clone());
        async move {
            sandbox
                .create_refund(refund(&id, Some(100)), Some("busy"))
                .await
        }
    });
    until(|| sandbox.stats().slow_creates_injected == 1).await;
    match client
        .create_refund(&refund(&id, Some(100)), Some("busy"))
        .await
    {
        Err(ClientError::Sandbox(SandboxError::Conflict { code, message })) => {
            assert_eq!(code, "idempotency_key_in_use");
            assert!(message.contains("still being processed"), "{message}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let answer = raw
        .post(format!("{base}/refunds"))
        .header("Idempotency-Key", "busy")
        .body(format!(r#"{{"payment": "{id}", "amount": 100}}"#))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 409);
    let body: serde_json::Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "idempotency_key_in_use");
    assert_eq!(body["error"]["type"], "idempotency_error");
    slow.abort();
    assert_eq!(client.ledger(Some(&id)).await.expect("ledger").len(), 1);

    // Random 429s carry their Retry-After on the wire.
    client
        .set_faults(&FaultConfig {
            retry_after_rate: 1.0,
            retry_after_secs: 7,
            ..FaultConfig::default()
        })
        .await
        .expect("faults");
    let answer = raw
        .get(format!("{base}/payments/{id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 429);
    assert_eq!(answer.headers()["retry-after"], "7");
    match client.get_payment(&id).await {
        Err(ClientError::Sandbox(SandboxError::RateLimited { retry_after_secs })) => {
            assert_eq!(retry_after_secs, 7)
        }
        other => panic!("expected a 429, got {other:?}"),
    }

    // Bad fault values are refused and change nothing.
    for bad in [r#"{"reset_after_rate": 1.5}"#, r#"{"retry_after_secs": 0}"#] {
        let answer = raw
            .put(format!("{base}/faults"))
            .body(bad)
            .send()
            .await
            .expect("send");
        assert_eq!(answer.status(), 400, "{bad}");
        let body: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(body["error"]["code"], "parameter_invalid");
    }
    assert_eq!(sandbox.faults().retry_after_secs, 7);
    let stats = client.stats().await.expect("stats");
    assert_eq!(stats.conflicts, 2);
}
