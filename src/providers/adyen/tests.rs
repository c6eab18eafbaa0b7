//! The adapter's mapping, on answers and notifications shaped as Adyen's reference shows them.

use std::collections::HashMap;

use super::webhook::Item;
use super::*;
use crate::domain::{Amount, Currency, RefundReason};
use crate::providers::{EventSubject, RefundUpdate};

/// The HMAC key and expected signature of Adyen's own libraries' test (adyen-ruby-api-library,
/// `spec/utils/hmac_validator_spec.rb`).
const LIBRARY_KEY: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
const KEY: &str = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
const MERCHANT: &str = "TestMerchant";

#[test]
fn the_signature_of_adyens_library_test_is_reproduced() {
    let item: Item = serde_json::from_value(serde_json::json!({
        "amount": {"value": 1130, "currency": "EUR"},
        "pspReference": "7914073381342284",
        "eventCode": "AUTHORISATION",
        "merchantAccountCode": "TestMerchant",
        "merchantReference": "TestPayment-1407325143704",
        "paymentMethod": "visa",
        "success": "true",
    }))
    .expect("an item");
    let signed = signing_string(&item);
    assert_eq!(
        signed,
        "7914073381342284::TestMerchant:TestPayment-1407325143704:1130:EUR:AUTHORISATION:true"
    );
    assert_eq!(
        hmac_signature(LIBRARY_KEY, &signed).as_deref(),
        Some("coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0=")
    );
    assert_eq!(hmac_signature("not hex", &signed), None);
}

/// A notification item as Adyen's webhook reference shows it, signed with `key`.
fn item(event: &str, success: &str, key: &str) -> serde_json::Value {
    let mut item = serde_json::json!({
        "additionalData": {},
        "amount": {"currency": "EUR", "value": 2500},
        "eventCode": event,
        "eventDate": "2026-12-03T10:02:11+01:00",
        "merchantAccountCode": MERCHANT,
        "merchantReference": "rf_01JEXAMPLE",
        "originalReference": "V4HZ4RBFJGXXGN82",
        "pspReference": "KHQC5N7G84BLNK43",
        "reason": "",
        "success": success,
    });
    if event == "AUTHORISATION" {
        item["pspReference"] = "V4HZ4RBFJGXXGN82".into();
        item.as_object_mut().map(|o| o.remove("originalReference"));
    }
    sign(&mut item, key);
    item
}

fn sign(item: &mut serde_json::Value, key: &str) {
    let parsed: Item = serde_json::from_value(item.clone()).expect("an item");
    let signature = hmac_signature(key, &signing_string(&parsed)).expect("hex key");
    item["additionalData"]["hmacSignature"] = signature.into();
}

fn body(items: Vec<serde_json::Value>) -> Vec<u8> {
    let items: Vec<_> = items
        .into_iter()
        .map(|i| serde_json::json!({"NotificationRequestItem": i}))
        .collect();
    serde_json::json!({"live": "false", "notificationItems": items})
        .to_string()
        .into_bytes()
}

fn read(body: &[u8], keys: &[&str]) -> Result<WebhookEvent, WebhookRejection> {
    let headers = reqwest::header::HeaderMap::new();
    let query = HashMap::new();
    let secrets: Vec<Secret> = keys
        .iter()
        .map(|k| Secret::opaque((*k).to_owned()))
        .collect();
    webhook::read(
        &WebhookDelivery {
            headers: &headers,
            query: &query,
            body,
            secrets: &secrets,
            now_unix: 0,
            tolerance: Duration::from_secs(300),
        },
        MERCHANT,
    )
}

fn only_update(event: WebhookEvent) -> RefundUpdate {
    match event.subject {
        EventSubject::Refunds(mut updates) if updates.len() == 1 => updates.remove(0),
        other => panic!("one refund expected, got {other:?}"),
    }
}

#[test]
fn a_refund_notification_reports_our_refund_by_its_merchant_reference() {
    let event = read(&body(vec![item("REFUND", "true", KEY)]), &["ffff", KEY]).expect("reads");
    assert_eq!(event.kind, "REFUND");
    assert_eq!(event.id, "REFUND:KHQC5N7G84BLNK43:true");
    let u = only_update(event);
    assert_eq!(u.refund_id.as_deref(), Some("rf_01JEXAMPLE"));
    assert_eq!(u.refund.id, "KHQC5N7G84BLNK43");
    assert_eq!(u.refund.amount, 2500);
    assert_eq!(u.refund.status, ProviderRefundStatus::Succeeded);
    assert_eq!(
        u.payment.map(|p| p.as_str().to_owned()).as_deref(),
        Some("V4HZ4RBFJGXXGN82")
    );
}

#[test]
fn refused_and_failed_refunds_are_failures_with_adyens_reason() {
    let mut refused = item("REFUND", "false", KEY);
    refused["reason"] = "Insufficient balance on payment".into();
    sign(&mut refused, KEY);
    let u = only_update(read(&body(vec![refused]), &[KEY]).expect("reads"));
    assert_eq!(
        u.refund.status,
        ProviderRefundStatus::Failed {
            code: "refund_refused".into(),
            reason: "Insufficient balance on payment".into()
        }
    );
    let u =
        only_update(read(&body(vec![item("REFUND_FAILED", "true", KEY)]), &[KEY]).expect("reads"));
    assert!(
        matches!(&u.refund.status, ProviderRefundStatus::Failed { code, .. } if code == "refund_failed"),
        "{u:?}"
    );
}

#[test]
fn captures_and_authorisations_report_the_captured_amount_of_the_payment() {
    for event in ["CAPTURE", "AUTHORISATION"] {
        let e = read(&body(vec![item(event, "true", KEY)]), &[KEY]).expect("reads");
        assert_eq!(
            e.subject,
            EventSubject::Captured {
                payment: PaymentRef::from_trusted("V4HZ4RBFJGXXGN82".into()),
                amount: 2500,
                currency: Currency::parse("EUR").expect("EUR"),
            },
            "{event}"
        );
        let failed = read(&body(vec![item(event, "false", KEY)]), &[KEY]).expect("reads");
        assert_eq!(failed.subject, EventSubject::Ignored, "{event}");
    }
    let other = read(&body(vec![item("CHARGEBACK", "true", KEY)]), &[KEY]).expect("reads");
    assert_eq!(other.subject, EventSubject::Ignored);
}

#[test]
fn tampered_unsigned_or_foreign_notifications_are_refused_or_ignored() {
    let mut tampered = item("REFUND", "false", KEY);
    tampered["success"] = "true".into();
    assert!(matches!(
        read(&body(vec![tampered]), &[KEY]),
        Err(WebhookRejection::Signature(_))
    ));
    let mut unsigned = item("REFUND", "true", KEY);
    unsigned["additionalData"] = serde_json::json!({});
    assert!(matches!(
        read(&body(vec![unsigned]), &[KEY]),
        Err(WebhookRejection::Signature(_))
    ));
    assert!(matches!(
        read(&body(vec![item("REFUND", "true", KEY)]), &["AABB"]),
        Err(WebhookRejection::Signature(_))
    ));
    // One bad item spoils the delivery: nothing of it is applied.
    let mut second = item("REFUND", "true", KEY);
    second["pspReference"] = "ZZZZ5N7G84BLNK43".into();
    assert!(matches!(
        read(&body(vec![item("REFUND", "true", KEY), second]), &[KEY]),
        Err(WebhookRejection::Signature(_))
    ));
    let mut foreign = item("REFUND", "true", KEY);
    foreign["merchantAccountCode"] = "SomeoneElse".into();
    sign(&mut foreign, KEY);
    let e = read(&body(vec![foreign]), &[KEY]).expect("signed");
    assert_eq!(e.subject, EventSubject::Ignored);
    assert!(matches!(
        read(b"[accepted]", &[KEY]),
        Err(WebhookRejection::Unreadable(_))
    ));
}

fn call() -> RefundCall {
    RefundCall {
        payment: PaymentRef::from_trusted("V4HZ4RBFJGXXGN82".into()),
        amount: Amount::new(2500).expect("amount"),
        currency: Currency::parse("EUR").expect("EUR"),
        reason: RefundReason::RequestedByCustomer,
        metadata: Default::default(),
        idempotency_key: "rf_01JEXAMPLE".into(),
    }
}

#[test]
fn the_creation_answer_is_a_pending_refund_under_adyens_reference() {
    let answer: wire::RefundResponse = serde_json::from_value(serde_json::json!({
        "merchantAccount": MERCHANT,
        "paymentPspReference": "V4HZ4RBFJGXXGN82",
        "pspReference": "KHQC5N7G84BLNK43",
        "reference": "rf_01JEXAMPLE",
        "status": "received",
        "amount": {"currency": "EUR", "value": 2500},
    }))
    .expect("decodes");
    let r = answer
        .into_provider("V4HZ4RBFJGXXGN82", &call())
        .expect("maps");
    assert_eq!(r.id, "KHQC5N7G84BLNK43");
    assert_eq!(r.status, ProviderRefundStatus::Pending);

    let other: wire::RefundResponse = serde_json::from_value(serde_json::json!({
        "pspReference": "KHQC5N7G84BLNK43",
        "paymentPspReference": "OTHERPAYMENT0001",
        "status": "received",
    }))
    .expect("decodes");
    assert!(
        other
            .into_provider("V4HZ4RBFJGXXGN82", &call())
            .is_err_and(|e| e.is_ambiguous())
    );
}

#[test]
fn errors_are_refusals_except_when_adyen_may_have_acted() {
    let body = |code: &str| {
        format!(
            r#"{{"status":422,"errorCode":"{code}","message":"m","errorType":"validation","pspReference":"X"}}"#
        )
    };
    let map = |status: u16, b: &str| {
        error_from_response(
            StatusCode::from_u16(status).expect("status"),
            None,
            b.as_bytes(),
            Call::Write,
        )
    };
    assert_eq!(
        map(422, &body("167")),
        ProviderError::Rejected {
            code: "adyen_167".into(),
            message: "m".into()
        }
    );
    assert!(map(422, &body("704")).is_ambiguous());
    assert!(map(500, "oops").is_ambiguous());
    assert!(map(503, "").is_ambiguous());
    assert!(matches!(map(429, ""), ProviderError::RateLimited { .. }));
    assert!(
        matches!(map(401, "not json"), ProviderError::Rejected { code, .. } if code == "http_401")
    );
    assert!(matches!(map(404, ""), ProviderError::NotFound(_)));
}

#[tokio::test]
async fn nothing_is_looked_up_and_bad_references_are_not_sent() {
    let p = AdyenProvider::new(
        "http://127.0.0.1:9",
        Secret::opaque("key".into()),
        MERCHANT,
        Duration::from_secs(1),
    )
    .expect("builds");
    let caps = p.capabilities();
    assert!(!caps.refund_lookup && !caps.payment_lookup && caps.settles_by_webhook_only);
    assert_eq!(p.webhook_ack(), Some("[accepted]"));
    let payment = PaymentRef::from_trusted("V4HZ4RBFJGXXGN82".into());
    assert!(matches!(
        p.get_payment(&payment).await,
        Err(ProviderError::Rejected { .. })
    ));
    assert!(matches!(
        p.find_refund(&payment, "rf_1").await,
        Err(ProviderError::Rejected { .. })
    ));
    let mut bad = call();
    bad.payment = PaymentRef::from_trusted("../v71/other".into());
    assert!(matches!(
        p.create_refund(&bad).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(
        AdyenProvider::new(
            "ftp://x",
            Secret::opaque("k".into()),
            MERCHANT,
            Duration::from_secs(1)
        )
        .is_err()
    );
    assert!(
        AdyenProvider::new(
            "http://x",
            Secret::opaque("k".into()),
            " ",
            Duration::from_secs(1)
        )
        .is_err()
    );
}

/// Defect: a delivery of several items was recorded as "<first item>+<n>", so two different
/// deliveries that began with the same item were one event, and the second one's refunds were
/// dropped as a redelivery.
#[test]
fn deliveries_of_several_items_that_only_begin_alike_are_different_events() {
    let first = item("REFUND", "true", KEY);
    let mut other = item("REFUND", "true", KEY);
    other["pspReference"] = "ZZZZ5N7G84BLNK43".into();
    sign(&mut other, KEY);
    let mut third = item("REFUND", "true", KEY);
    third["pspReference"] = "YYYY5N7G84BLNK43".into();
    sign(&mut third, KEY);
    let a = read(&body(vec![first.clone(), other.clone()]), &[KEY]).expect("reads");
    let b = read(&body(vec![first.clone(), third]), &[KEY]).expect("reads");
    let again = read(&body(vec![first, other]), &[KEY]).expect("reads");
    assert_ne!(a.id, b.id);
    assert_eq!(a.id, again.id, "a redelivery is recognised");
    assert!(
        a.id.starts_with("REFUND:KHQC5N7G84BLNK43:true+1@"),
        "{}",
        a.id
    );
}
