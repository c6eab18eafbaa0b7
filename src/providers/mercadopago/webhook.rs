//! Verification of Mercado Pago's webhook signatures ("Notifications" guide, "Validate
//! notification origin").
//!
//! A notification carries `x-signature: ts=<ts>,v1=<hex>` and `x-request-id`. The signed manifest
//! is `id:{data.id};request-id:{x-request-id};ts:{ts};`, where `data.id` is the query parameter
//! (lower-cased when alphanumeric) and any part whose value is missing is left out; `v1` is the
//! hex HMAC-SHA256 of the manifest keyed with the application's secret signature.
//!
//! The guide calls `ts` "the timestamp (in milliseconds)" while its own example,
//! `ts=1704908010`, is in seconds. Both are accepted: a value of 10^11 or more (as seconds, a
//! date past the year 5000) is read as milliseconds. The manifest always uses the text as sent.
use std::time::Duration;

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// Why a notification's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed x-signature header: {0}")]
    Malformed(String),
    #[error(
        "the notification's timestamp {ts} is {skew_secs}s away from now, beyond the tolerance"
    )]
    Stale { ts: i64, skew_secs: u64 },
    #[error("no configured secret produces the notification's signature")]
    NoMatchingSignature,
}

/// Timestamps from here on are milliseconds.
const MILLIS_FROM: i64 = 100_000_000_000;

/// Checks a notification's `x-signature` against each of `secrets` (several during a
/// rotation), then that its timestamp is within `tolerance` of `now_unix` (seconds). The
/// comparison is constant-time.
pub fn verify_signature(
    x_signature: &str,
    x_request_id: Option<&str>,
    data_id: Option<&str>,
    secrets: &[&str],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let malformed = |what: &str| SignatureError::Malformed(what.to_owned());
    let mut ts_text: Option<&str> = None;
    let mut signatures: Vec<Vec<u8>> = Vec::new();
    for part in x_signature.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(malformed("a part is not key=value"));
        };
        match key.trim() {
            "ts" if ts_text.is_some() => return Err(malformed("ts is given twice")),
            "ts" => ts_text = Some(value.trim()),
            "v1" => {
                let sig =
                    hex::decode(value.trim()).map_err(|_| malformed("v1 is not hexadecimal"))?;
                if sig.len() != 32 {
                    return Err(malformed("v1 is not a SHA-256 HMAC"));
                }
                signatures.push(sig);
            }
            // Other schemes (a future v2) are not ours to check.
            _ => {}
        }
    }
    let ts_text = ts_text.ok_or_else(|| malformed("no ts"))?;
    if signatures.is_empty() {
        return Err(malformed("no v1 signature"));
    }
    if ts_text.is_empty() || !ts_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("ts is not a number"));
    }
    let ts: i64 = ts_text
        .parse()
        .map_err(|_| malformed("ts is out of range"))?;

    let mut manifest = String::new();
    if let Some(id) = data_id.filter(|s| !s.is_empty()) {
        manifest.push_str(&format!("id:{};", id.to_ascii_lowercase()));
    }
    if let Some(request_id) = x_request_id.filter(|s| !s.is_empty()) {
        manifest.push_str(&format!("request-id:{request_id};"));
    }
    manifest.push_str(&format!("ts:{ts_text};"));

    let matched = secrets.iter().any(|secret| {
        signatures.iter().any(|sig| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                return false;
            };
            mac.update(manifest.as_bytes());
            mac.verify_slice(sig).is_ok()
        })
    });
    if !matched {
        return Err(SignatureError::NoMatchingSignature);
    }

    let ts_secs = if ts >= MILLIS_FROM { ts / 1000 } else { ts };
    let skew = (i128::from(now_unix) - i128::from(ts_secs)).unsigned_abs();
    let skew_secs = u64::try_from(skew).unwrap_or(u64::MAX);
    if skew_secs > tolerance.as_secs() {
        return Err(SignatureError::Stale { ts, skew_secs });
    }
    Ok(())
}
