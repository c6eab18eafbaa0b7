//! Adyen's standard webhooks ("Webhook structure and types", "Verify HMAC signatures").
//!
//! A JSON webhook is `{"live": "false", "notificationItems": [{"NotificationRequestItem":
//! {...}}]}`. Each item is signed on its own: `additionalData.hmacSignature` is the base64
//! HMAC-SHA256 of `pspReference:originalReference:merchantAccountCode:merchantReference:
//! value:currency:eventCode:success` (a missing field is an empty string), keyed with the
//! webhook's HMAC key, which Adyen shows as hex and which is used as the bytes it encodes.
//!
//! The signature is inside the body, so the body is parsed before it is verified; nothing read
//! from it is used until every item's signature checks out against one of the configured keys.
//! Adyen signs no timestamp: a replayed notification is recognised by its event id (event code,
//! PSP reference and success) and, being forward-only, cannot undo anything.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde::Deserialize;
use sha2::Sha256;

use super::is_psp_reference;
use crate::domain::{Currency, PaymentRef};
use crate::providers::{
    EventSubject, ProviderRefund, ProviderRefundStatus, RefundUpdate, WebhookDelivery,
    WebhookEvent, WebhookRejection,
};

#[derive(Debug, Deserialize)]
struct Notification {
    #[serde(rename = "notificationItems")]
    items: Vec<ItemWrapper>,
}

#[derive(Debug, Deserialize)]
struct ItemWrapper {
    #[serde(rename = "NotificationRequestItem")]
    item: Item,
}

/// A `NotificationRequestItem`: every field optional, as the signature treats a missing one as
/// empty.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    #[serde(default)]
    pub additional_data: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub amount: Option<ItemAmount>,
    #[serde(default)]
    pub event_code: Option<String>,
    #[serde(default)]
    pub psp_reference: Option<String>,
    #[serde(default)]
    pub original_reference: Option<String>,
    #[serde(default)]
    pub merchant_account_code: Option<String>,
    #[serde(default)]
    pub merchant_reference: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub success: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ItemAmount {
    #[serde(default)]
    pub value: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// What an item's HMAC is computed over.
pub fn signing_string(item: &Item) -> String {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let amount = item.amount.as_ref();
    [
        text(&item.psp_reference),
        text(&item.original_reference),
        text(&item.merchant_account_code),
        text(&item.merchant_reference),
        amount
            .and_then(|a| a.value)
            .map(|v| v.to_string())
            .unwrap_or_default(),
        amount.and_then(|a| a.currency.clone()).unwrap_or_default(),
        text(&item.event_code),
        text(&item.success),
    ]
    .join(":")
}

/// The base64 HMAC-SHA256 of `signing_string` with a hex HMAC key; `None` when the key is not
/// hex.
pub fn hmac_signature(hex_key: &str, signing_string: &str) -> Option<String> {
    let key = hex::decode(hex_key.trim()).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(signing_string.as_bytes());
    Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Whether `item` carries a signature that one of `hex_keys` makes. Constant-time comparison.
fn verify(item: &Item, hex_keys: &[&str]) -> Result<(), String> {
    let signature = item
        .additional_data
        .as_ref()
        .and_then(|d| d.get("hmacSignature"))
        .and_then(|v| v.as_str())
        .ok_or("the notification item has no additionalData.hmacSignature")?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| "hmacSignature is not base64")?;
    let signed = signing_string(item);
    let matched = hex_keys.iter().any(|key| {
        let Ok(key) = hex::decode(key.trim()) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature).is_ok()
    });
    if matched {
        Ok(())
    } else {
        Err("no configured HMAC key produces the item's hmacSignature".to_owned())
    }
}

/// Verifies every item of a delivery, then reads it. Items of another merchant account than
/// ours are acknowledged and ignored.
pub(super) fn read(
    delivery: &WebhookDelivery<'_>,
    merchant_account: &str,
) -> Result<WebhookEvent, WebhookRejection> {
    let n: Notification = serde_json::from_slice(delivery.body).map_err(|e| {
        WebhookRejection::Unreadable(format!("not an Adyen standard notification: {e}"))
    })?;
    if n.items.is_empty() {
        return Err(WebhookRejection::Unreadable(
            "an Adyen notification without notificationItems".to_owned(),
        ));
    }
    let keys: Vec<&str> = delivery.secrets.iter().map(|s| s.expose()).collect();
    for wrapper in &n.items {
        verify(&wrapper.item, &keys).map_err(WebhookRejection::Signature)?;
    }
    let mut ids = Vec::new();
    let mut subjects = Vec::new();
    for ItemWrapper { item } in n.items {
        ids.push(event_id(&item));
        let ours = item.merchant_account_code.as_deref() == Some(merchant_account);
        subjects.push(if ours {
            subject(item).map_err(WebhookRejection::Unreadable)?
        } else {
            tracing::info!(
                merchant_account = item.merchant_account_code.as_deref().unwrap_or(""),
                "Adyen notification for another merchant account; ignored"
            );
            Mapped::Ignored
        });
    }
    let kind = ids
        .first()
        .map(|(_, kind)| kind.clone())
        .unwrap_or_default();
    // Several items: the first one's id, and a digest of all of theirs, so that two batches
    // that only begin alike are two events (the service numbers the refunds within one).
    let id = match ids.as_slice() {
        [(id, _)] => id.clone(),
        [(first, _), rest @ ..] => {
            use sha2::Digest as _;
            let mut all = Sha256::new();
            for (id, _) in &ids {
                all.update(id.as_bytes());
                all.update(b"\n");
            }
            format!(
                "{first}+{}@{}",
                rest.len(),
                &hex::encode(all.finalize())[..16]
            )
        }
        [] => String::new(),
    };
    let subject = combine(subjects).map_err(WebhookRejection::Unreadable)?;
    Ok(WebhookEvent { id, kind, subject })
}

/// One item, in our terms.
enum Mapped {
    Refund(RefundUpdate),
    Captured(EventSubject),
    Ignored,
}

/// Adyen's advice for recognising a redelivery: the event code with the PSP reference (and
/// whether it succeeded).
fn event_id(item: &Item) -> (String, String) {
    let kind = item.event_code.clone().unwrap_or_else(|| "UNKNOWN".into());
    let id = format!(
        "{kind}:{}:{}",
        item.psp_reference.as_deref().unwrap_or(""),
        item.success.as_deref().unwrap_or("")
    );
    (id, kind)
}

fn subject(item: Item) -> Result<Mapped, String> {
    let success = match item.success.as_deref() {
        Some("true") => true,
        Some("false") => false,
        other => return Err(format!("success is {other:?}, not \"true\" or \"false\"")),
    };
    let psp = |field: &str, v: &Option<String>| match v.as_deref() {
        Some(r) if is_psp_reference(r) => Ok(r.to_owned()),
        other => Err(format!("{field} {other:?} is not an Adyen PSP reference")),
    };
    let reason = || {
        item.reason
            .clone()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "Adyen did not make the refund".to_owned())
    };
    let refund = |status: ProviderRefundStatus| -> Result<Mapped, String> {
        Ok(Mapped::Refund(RefundUpdate {
            refund: ProviderRefund {
                id: psp("pspReference", &item.psp_reference)?,
                amount: item.amount.as_ref().and_then(|a| a.value).unwrap_or(0),
                status,
            },
            refund_id: item.merchant_reference.clone().filter(|r| !r.is_empty()),
            payment: item
                .original_reference
                .as_deref()
                .filter(|r| is_psp_reference(r))
                .map(|r| PaymentRef::from_trusted(r.to_owned())),
        }))
    };
    let captured = |payment: String| -> Result<Mapped, String> {
        let amount = item.amount.as_ref();
        let value = amount
            .and_then(|a| a.value)
            .filter(|v| *v >= 0)
            .ok_or("a capture without a non-negative amount.value")?;
        let currency = Currency::parse(amount.and_then(|a| a.currency.as_deref()).unwrap_or(""))
            .map_err(|e| format!("bad currency: {e}"))?;
        Ok(Mapped::Captured(EventSubject::Captured {
            payment: PaymentRef::from_trusted(payment),
            amount: value,
            currency,
        }))
    };
    match (item.event_code.as_deref(), success) {
        (Some("REFUND"), true) => refund(ProviderRefundStatus::Succeeded),
        // The refund request was refused: Adyen did nothing.
        (Some("REFUND"), false) => refund(ProviderRefundStatus::Failed {
            code: "refund_refused".to_owned(),
            reason: reason(),
        }),
        // The refund was accepted and then failed at the scheme or bank: the money stayed.
        (Some("REFUND_FAILED"), _) => refund(ProviderRefundStatus::Failed {
            code: "refund_failed".to_owned(),
            reason: reason(),
        }),
        (Some("CAPTURE"), true) => captured(psp("originalReference", &item.original_reference)?),
        // Automatic capture (Adyen's default): the authorised amount is captured.
        (Some("AUTHORISATION"), true) => captured(psp("pspReference", &item.psp_reference)?),
        // Failed captures and authorisations, chargebacks, cancellations, reports …: nothing
        // for a refund to act on.
        _ => Ok(Mapped::Ignored),
    }
}

/// The items of one delivery as one event: refunds together; a capture only on its own (Adyen
/// sends one item per JSON webhook).
fn combine(items: Vec<Mapped>) -> Result<EventSubject, String> {
    let mut refunds = Vec::new();
    let mut captures = Vec::new();
    for m in items {
        match m {
            Mapped::Refund(u) => refunds.push(u),
            Mapped::Captured(c) => captures.push(c),
            Mapped::Ignored => {}
        }
    }
    match (refunds.is_empty(), captures.len()) {
        (true, 0) => Ok(EventSubject::Ignored),
        (false, 0) => Ok(EventSubject::Refunds(refunds)),
        (true, 1) => Ok(captures.remove(0)),
        _ => Err("a delivery mixing captures with other events is not supported".to_owned()),
    }
}
