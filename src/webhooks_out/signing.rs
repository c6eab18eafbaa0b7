//! Signatures of the webhooks we send, in the Standard Webhooks scheme
//! (<https://www.standardwebhooks.com>, spec `spec/standard-webhooks.md` of
//! github.com/standard-webhooks/standard-webhooks).
//!
//! A webhook carries three headers: `webhook-id` (the message id, the same on every retry, so the
//! receiver can drop duplicates), `webhook-timestamp` (unix seconds of this attempt, so the receiver
//! can refuse replays) and `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//! The header is a space-separated list so that, while a subscriber rotates its secret, we sign with
//! the old and the new secret at once and the receiver accepts whichever one it holds.
//!
//! We use this scheme rather than our own (or Stripe's, which the inbound side speaks) because
//! receivers then verify with an off-the-shelf library in their language; `tests/signing_interop.rs`
//! proves the Python reference library accepts what we sign.
//!
//! Secrets are `whsec_` + base64 of the raw key; the HMAC key is the decoded bytes, not the text.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, KeyInit as _, Mac as _};
use rand::RngCore as _;
use sha2::Sha256;

/// The header names, lower case as the spec writes them (HTTP header names are case-insensitive).
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// What marks a Standard Webhooks symmetric secret, so it is recognised wherever it is pasted.
pub const SECRET_PREFIX: &str = "whsec_";

/// The reference libraries' tolerance between a webhook's timestamp and the receiver's clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The spec's bounds on a key: "Random. Between 24 bytes (192 bits) and 64 bytes (512 bits)".
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;
/// What we generate: 256 bits, the HMAC-SHA256 output size; more adds nothing.
const GENERATED_KEY_BYTES: usize = 32;

/// The version tag of the symmetric (HMAC-SHA256) scheme. `v1a` is the asymmetric one, not ours.
const VERSION: &str = "v1";

// === impl WebhookSecret ===

/// A subscriber's signing secret. `Debug` never shows the key and there is no `Display`, so it
/// cannot reach a log by accident; [`WebhookSecret::expose`] is the one way to read it.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Box<[u8]>,
    /// HMAC keyed once, when the secret is made: keying is the only fallible step of HMAC, so
    /// doing it here lets [`sign`] be infallible and keeps a failure (there is none for HMAC,
    /// which takes keys of any length) a parse error rather than a panic.
    mac: Hmac<Sha256>,
}

/// Why a string is not a usable `whsec_` secret. The messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with \"whsec_\"")]
    MissingPrefix,
    #[error("the part of the webhook secret after \"whsec_\" is not standard base64")]
    NotBase64,
    #[error(
        "the webhook secret's key is {len} bytes; Standard Webhooks secrets are 24 to 64 random bytes"
    )]
    BadLength { len: usize },
}

impl WebhookSecret {
    /// A new secret of 32 random bytes from the thread-local CSPRNG (ChaCha seeded by the OS).
    pub fn generate() -> Self {
        let mut key = [0u8; GENERATED_KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        match Self::from_key(&key) {
            Ok(secret) => secret,
            // 32 is within 24..=64 and HMAC accepts every length.
            Err(_) => unreachable!("a 32-byte key is always a valid secret"),
        }
    }

    /// Parses `whsec_<base64>`. Padding is optional, as in the reference libraries (Python adds
    /// the missing `=`); anything else that is not base64 is refused rather than skipped, as
    /// Python's lenient decoder would, so a mangled secret fails here and not at the receiver.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let encoded = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = STANDARD_PAD_INDIFFERENT
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        Self::from_key(&key)
    }

    fn from_key(key: &[u8]) -> Result<Self, SecretError> {
        let len = key.len();
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&len) {
            return Err(SecretError::BadLength { len });
        }
        let mac =
            Hmac::<Sha256>::new_from_slice(key).map_err(|_| SecretError::BadLength { len })?;
        Ok(Self {
            key: key.into(),
            mac,
        })
    }

    /// The secret in its canonical form, `whsec_` + padded standard base64: what is shown to the
    /// subscriber (once) and stored sealed. A secret parsed without padding comes back padded; it
    /// is the same key, and the padded form is the one every reference library accepts.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// The HMAC over `"{id}.{timestamp}.{body}"`, fed in pieces so the body is not copied.
    fn signature(&self, id: &str, timestamp_secs: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// === signing ===

/// The `webhook-signature` header value for a webhook with id `id`, sent at `timestamp_secs`
/// (the value of `webhook-timestamp`) with exactly the bytes `body`: one `v1,<base64>` per
/// secret, space-separated, in the order given. Pass two secrets during a rotation so receivers
/// holding either one accept.
///
/// The id and timestamp must be sent as they were signed, and `body` must be the bytes on the
/// wire (a re-serialised JSON body would not match). With no secret the result is empty, which
/// no receiver accepts: the caller must not send a webhook it has no secret for.
pub fn sign(id: &str, timestamp_secs: i64, body: &[u8], secrets: &[WebhookSecret]) -> String {
    let mut header = String::new();
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str(VERSION);
        header.push(',');
        let mac = secret.signature(id, timestamp_secs, body).finalize();
        STANDARD.encode_string(mac.into_bytes(), &mut header);
    }
    header
}

// === verifying ===

/// Why [`verify`] refused a webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a whole number of unix seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {age_secs} s away from now, beyond the tolerance")]
    Stale { age_secs: i64 },
    #[error("no v1 signature in webhook-signature matches the payload with this secret")]
    NoMatch,
}

/// Checks a webhook as a receiver holding `secret` would, at `now_secs`: the timestamp within
/// `tolerance` and any `v1` signature of the header matching. Other versions (`v1a`) and
/// malformed entries are skipped, as the reference libraries do, so one bad entry cannot hide a
/// good one. Comparison is constant-time (`hmac`'s `verify_slice`).
///
/// Ours is for tests and tools; subscribers use the reference libraries, which
/// `tests/signing_interop.rs` checks against.
pub fn verify(
    secret: &WebhookSecret,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    // Digits only: i64's parser also takes a leading '+', which would be signed as "+…" and so
    // never match, but refusing it here says why.
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    let timestamp_secs: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let age_secs = now_secs.saturating_sub(timestamp_secs);
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if age_secs.saturating_abs() > tolerance {
        return Err(VerifyError::Stale { age_secs });
    }
    let expected = secret.signature(id, timestamp_secs, body);
    let matches = signature_header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, signature)| STANDARD.decode(signature).ok())
        .any(|signature| expected.clone().verify_slice(&signature).is_ok());
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The official test vector, from the Standard Webhooks reference libraries' tests
    /// (github.com/standard-webhooks/standard-webhooks: `libraries/python/tests/test_webhooks.py`
    /// `test_sign_function`; the same values in the Go, JavaScript, Java, C# and PHP tests).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::parse(s).expect("valid secret")
    }

    fn check(
        secret: &WebhookSecret,
        header: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        verify(
            secret,
            VECTOR_ID,
            &VECTOR_TIMESTAMP.to_string(),
            header,
            body,
            now,
            DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn signs_the_official_test_vector_like_the_reference_libraries() {
        let header = sign(
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            VECTOR_BODY,
            &[secret(VECTOR_SECRET)],
        );
        assert_eq!(header, VECTOR_SIGNATURE);
    }

    #[test]
    fn verifies_the_official_test_vector() {
        let s = secret(VECTOR_SECRET);
        assert_eq!(
            check(&s, VECTOR_SIGNATURE, VECTOR_BODY, VECTOR_TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn rotation_signs_with_every_secret_in_order() {
        let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
        let header = sign(
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            VECTOR_BODY,
            &[old.clone(), new.clone()],
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert_eq!(
            parts[0],
            sign(
                VECTOR_ID,
                VECTOR_TIMESTAMP,
                VECTOR_BODY,
                std::slice::from_ref(&old)
            )
        );
        assert_eq!(
            parts[1],
            sign(
                VECTOR_ID,
                VECTOR_TIMESTAMP,
                VECTOR_BODY,
                std::slice::from_ref(&new)
            )
        );
        // A receiver holding either one accepts; one holding neither does not.
        assert_eq!(check(&old, &header, VECTOR_BODY, VECTOR_TIMESTAMP), Ok(()));
        assert_eq!(check(&new, &header, VECTOR_BODY, VECTOR_TIMESTAMP), Ok(()));
        let other = WebhookSecret::generate();
        assert_eq!(
            check(&other, &header, VECTOR_BODY, VECTOR_TIMESTAMP),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn no_secret_gives_an_empty_header_that_nothing_accepts() {
        let header = sign(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, &[]);
        assert_eq!(header, "");
        assert_eq!(
            check(
                &secret(VECTOR_SECRET),
                &header,
                VECTOR_BODY,
                VECTOR_TIMESTAMP
            ),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn every_signed_part_matters() {
        let s = secret(VECTOR_SECRET);
        let at = |id: &str, ts: &str, body: &[u8]| {
            verify(
                &s,
                id,
                ts,
                VECTOR_SIGNATURE,
                body,
                VECTOR_TIMESTAMP,
                DEFAULT_TOLERANCE,
            )
        };
        let ts = VECTOR_TIMESTAMP.to_string();
        assert_eq!(at(VECTOR_ID, &ts, VECTOR_BODY), Ok(()));
        assert_eq!(at("msg_other", &ts, VECTOR_BODY), Err(VerifyError::NoMatch));
        assert_eq!(
            at(VECTOR_ID, &(VECTOR_TIMESTAMP + 1).to_string(), VECTOR_BODY),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            at(VECTOR_ID, &ts, br#"{"test": 2432232315}"#),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            at(VECTOR_ID, &ts, br#"{"test":2432232314}"#),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn verify_refuses_stale_and_future_timestamps() {
        let s = secret(VECTOR_SECRET);
        let tolerance = 300;
        assert_eq!(
            check(
                &s,
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                VECTOR_TIMESTAMP + tolerance
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &s,
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                VECTOR_TIMESTAMP + tolerance + 1
            ),
            Err(VerifyError::Stale { age_secs: 301 })
        );
        assert_eq!(
            check(
                &s,
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                VECTOR_TIMESTAMP - tolerance - 1
            ),
            Err(VerifyError::Stale { age_secs: -301 })
        );
        assert_eq!(
            check(&s, VECTOR_SIGNATURE, VECTOR_BODY, i64::MIN),
            Err(VerifyError::Stale { age_secs: i64::MIN })
        );
    }

    #[test]
    fn verify_refuses_malformed_timestamps() {
        let s = secret(VECTOR_SECRET);
        for ts in [
            "",
            "+1614265330",
            "-1",
            "1614265330.0",
            " 1614265330",
            "99999999999999999999",
            "x",
        ] {
            assert_eq!(
                verify(
                    &s,
                    VECTOR_ID,
                    ts,
                    VECTOR_SIGNATURE,
                    VECTOR_BODY,
                    VECTOR_TIMESTAMP,
                    DEFAULT_TOLERANCE
                ),
                Err(VerifyError::BadTimestamp),
                "{ts:?}"
            );
        }
    }

    #[test]
    fn verify_skips_other_versions_and_malformed_entries() {
        let s = secret(VECTOR_SECRET);
        let good = VECTOR_SIGNATURE;
        let sig = good.trim_start_matches("v1,");
        for header in [
            format!("v1a,{sig} {good}"),
            format!("garbage {good}"),
            format!("v1,not*base64 {good}"),
            format!("v1,{sig}AA {good}"),
            format!("{good} v2,{sig}"),
        ] {
            assert_eq!(
                check(&s, &header, VECTOR_BODY, VECTOR_TIMESTAMP),
                Ok(()),
                "{header}"
            );
        }
        for header in [
            format!("v1a,{sig}"),
            format!("V1,{sig}"),
            format!("v2,{sig}"),
            String::new(),
            " ".into(),
        ] {
            assert_eq!(
                check(&s, &header, VECTOR_BODY, VECTOR_TIMESTAMP),
                Err(VerifyError::NoMatch),
                "{header}"
            );
        }
    }

    #[test]
    fn generated_secrets_are_32_random_bytes_in_canonical_form() {
        let a = WebhookSecret::generate().expose();
        let b = WebhookSecret::generate().expose();
        assert_ne!(a, b);
        let encoded = a.strip_prefix("whsec_").expect("prefix");
        assert_eq!(STANDARD.decode(encoded).expect("base64").len(), 32);
        // What we hand out parses back to the same secret.
        assert_eq!(secret(&a).expose(), a);
    }

    #[test]
    fn parse_accepts_padded_and_unpadded_and_renders_padded() {
        // 24 bytes: no padding either way.
        assert_eq!(secret(VECTOR_SECRET).expose(), VECTOR_SECRET);
        let padded = WebhookSecret::generate().expose();
        assert!(padded.ends_with('='), "32 bytes need one '=': {padded}");
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(secret(unpadded).expose(), padded);
        assert_eq!(
            unpadded.parse::<WebhookSecret>().map(|s| s.expose()),
            Ok(padded)
        );
    }

    #[test]
    fn parse_refuses_what_is_not_a_secret() {
        let cases: &[(&str, SecretError)] = &[
            ("", SecretError::MissingPrefix),
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                SecretError::MissingPrefix,
            ),
            (
                "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                SecretError::MissingPrefix,
            ),
            ("whsec_", SecretError::BadLength { len: 0 }),
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ",
                SecretError::NotBase64,
            ),
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8I LPZIo2LaLaSw",
                SecretError::NotBase64,
            ),
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa-w",
                SecretError::NotBase64,
            ),
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw====",
                SecretError::NotBase64,
            ),
            ("whsec_é", SecretError::NotBase64),
            // Base64 whose last symbol has bits set past the data's end: not canonical.
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
                SecretError::NotBase64,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                WebhookSecret::parse(input).map(|s| s.expose()).as_ref(),
                Err(want),
                "{input:?}"
            );
        }
        let too_short = format!("whsec_{}", STANDARD.encode([7u8; 23]));
        assert_eq!(
            WebhookSecret::parse(&too_short).map(|s| s.expose()),
            Err(SecretError::BadLength { len: 23 })
        );
        let too_long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(
            WebhookSecret::parse(&too_long).map(|s| s.expose()),
            Err(SecretError::BadLength { len: 65 })
        );
        let longest = format!("whsec_{}", STANDARD.encode([7u8; 64]));
        assert_eq!(secret(&longest).expose(), longest);
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let s = secret(VECTOR_SECRET);
        let shown = format!("{s:?} {:?}", Some(s.clone()));
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        // Nor do parse errors echo the input.
        let err = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa-w").map(|_| ());
        assert!(!format!("{err:?} {}", err.clone().unwrap_err()).contains("MfKQ9r8"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in ".*") {
            let _ = WebhookSecret::parse(&input);
            let _ = WebhookSecret::parse(&format!("whsec_{input}"));
        }

        #[test]
        fn verify_never_panics(header in ".*", ts in ".*", id in ".*", now in any::<i64>()) {
            let s = secret(VECTOR_SECRET);
            let _ = verify(&s, &id, &ts, &header, VECTOR_BODY, now, DEFAULT_TOLERANCE);
        }

        #[test]
        fn what_we_sign_verifies_and_a_changed_body_does_not(
            id in "[a-zA-Z0-9_.-]{1,40}",
            ts in 0i64..4_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<proptest::sample::Index>(),
        ) {
            let s = WebhookSecret::generate();
            let header = sign(&id, ts, &body, std::slice::from_ref(&s));
            prop_assert_eq!(verify(&s, &id, &ts.to_string(), &header, &body, ts, DEFAULT_TOLERANCE), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 1;
                prop_assert_eq!(
                    verify(&s, &id, &ts.to_string(), &header, &tampered, ts, DEFAULT_TOLERANCE),
                    Err(VerifyError::NoMatch)
                );
            }
        }
    }
}
