//! Stripe's webhook signature scheme, which the sandbox uses too.
//!
//! The provider sends `<Header>: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, where each `v1` is
//! HMAC-SHA256, keyed with a signing secret, over `"<t>.<raw body>"`. A request is genuine when any
//! `v1` matches any of our secrets (several of each exist while a secret is being rotated) and `t`
//! is within the tolerance of our clock, which bounds replays. Comparison is constant-time
//! (`hmac`'s `verify_slice`). See <https://docs.stripe.com/webhooks#verify-manually>.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// Stripe's default tolerance between the signature's timestamp and our clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature's timestamp is {age_secs} s away from now, beyond the tolerance")]
    Stale { age_secs: i64 },
    #[error("no signature matches the payload with any configured secret")]
    NoMatch,
    #[error("no signing secret is configured")]
    NoSecret,
}

/// The header value for `payload` signed with `secret` at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(
            mac(secret.as_bytes(), timestamp, payload)
                .finalize()
                .into_bytes()
        )
    )
}

/// Checks `header` against `payload` with each of `secrets`, at `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[Secret],
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            return Err(SignatureError::Malformed("expected key=value pairs"));
        };
        match key {
            "t" => {
                let t = value
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("t is not a unix timestamp"))?;
                timestamp = Some(t);
            }
            "v1" => {
                let bytes = hex::decode(value)
                    .map_err(|_| SignatureError::Malformed("v1 is not hexadecimal"))?;
                signatures.push(bytes);
            }
            // Other schemes (Stripe's test-mode v0) are not trusted; unknown keys are ignored.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t= timestamp"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1= signature"));
    }
    let age = now.saturating_sub(timestamp);
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if age.saturating_abs() > tolerance {
        return Err(SignatureError::Stale { age_secs: age });
    }
    let matches = secrets.iter().any(|secret| {
        let expected = mac(secret.expose().as_bytes(), timestamp, payload);
        signatures
            .iter()
            .any(|sig| expected.clone().verify_slice(sig).is_ok())
    });
    if matches {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

fn mac(secret: &[u8], timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PAYLOAD: &[u8] = br#"{"id":"evt_1","type":"refund.updated"}"#;

    fn secrets(s: &[&str]) -> Vec<Secret> {
        s.iter().map(|s| Secret::new((*s).to_owned())).collect()
    }

    fn check(header: &str, secret: &[&str], now: i64) -> Result<(), SignatureError> {
        verify(
            Some(header),
            PAYLOAD,
            &secrets(secret),
            now,
            DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn matches_a_signature_computed_independently() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test", b"1700000000." +
        //   b"{\"id\":\"evt_1\",\"type\":\"refund.updated\"}", hashlib.sha256).hexdigest())'
        let expected =
            "t=1700000000,v1=278fcb5fa884d4e428712b48422f192c9b52ee752c2a3c9dbb6b0b9a1ae4a8bd";
        assert_eq!(sign("whsec_test", 1_700_000_000, PAYLOAD), expected);
        assert_eq!(check(expected, &["whsec_test"], 1_700_000_000), Ok(()));
    }

    #[test]
    fn a_tampered_payload_or_wrong_secret_does_not_verify() {
        let header = sign("whsec_a", 1000, PAYLOAD);
        assert_eq!(
            check(&header, &["whsec_b"], 1000),
            Err(SignatureError::NoMatch)
        );
        let tampered = verify(
            Some(&header),
            br#"{"id":"evt_1","type":"refund.failed"}"#,
            &secrets(&["whsec_a"]),
            1000,
            DEFAULT_TOLERANCE,
        );
        assert_eq!(tampered, Err(SignatureError::NoMatch));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let header = sign("s", 1000, PAYLOAD);
        assert_eq!(check(&header, &["s"], 1300), Ok(()));
        assert_eq!(
            check(&header, &["s"], 1301),
            Err(SignatureError::Stale { age_secs: 301 })
        );
        assert_eq!(
            check(&header, &["s"], 699),
            Err(SignatureError::Stale { age_secs: -301 })
        );
    }

    #[test]
    fn any_secret_and_any_v1_may_match_during_rotation() {
        let old = sign("old", 1000, PAYLOAD);
        let new = sign("new", 1000, PAYLOAD);
        let new_sig = new.split_once(",v1=").map(|(_, s)| s).unwrap_or_default();
        let both = format!("{old},v1={new_sig}");
        assert_eq!(check(&both, &["new"], 1000), Ok(()));
        assert_eq!(check(&both, &["old"], 1000), Ok(()));
        assert_eq!(check(&old, &["new", "old"], 1000), Ok(()));
    }

    #[test]
    fn malformed_headers_are_told_apart() {
        for (header, want) in [
            ("", SignatureError::Malformed("expected key=value pairs")),
            ("v1=00", SignatureError::Malformed("no t= timestamp")),
            ("t=1000", SignatureError::Malformed("no v1= signature")),
            (
                "t=x,v1=00",
                SignatureError::Malformed("t is not a unix timestamp"),
            ),
            (
                "t=1000,v1=zz",
                SignatureError::Malformed("v1 is not hexadecimal"),
            ),
            (
                "t=1000,v0=00",
                SignatureError::Malformed("no v1= signature"),
            ),
        ] {
            assert_eq!(check(header, &["s"], 1000), Err(want), "{header:?}");
        }
        assert_eq!(
            verify(None, PAYLOAD, &secrets(&["s"]), 0, DEFAULT_TOLERANCE),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("t=1,v1=00"), PAYLOAD, &[], 0, DEFAULT_TOLERANCE),
            Err(SignatureError::NoSecret)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic_and_never_verify(header in ".{0,200}", now in any::<i64>()) {
            prop_assert!(check(&header, &["s"], now).is_err());
        }

        #[test]
        fn what_we_sign_verifies(secret in "[ -~]{1,64}", t in 0i64..4_000_000_000, body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let header = sign(&secret, t, &body);
            prop_assert_eq!(verify(Some(&header), &body, &[Secret::new(secret)], t, DEFAULT_TOLERANCE), Ok(()));
        }
    }
}
