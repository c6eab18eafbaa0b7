//! Parsing a refund request once, at the edge, into types the core can trust.
//!
//! Every check reports a field violation instead of stopping at the first one, so a client learns
//! everything wrong with a request in one round trip.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::{Amount, Currency, RefundReason};

pub const MAX_PAYMENT_ID_LEN: usize = 255;
pub const MAX_PROVIDER_LEN: usize = 64;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
pub const MAX_REASON_DETAIL_LEN: usize = 500;
/// Stripe's metadata limits, so metadata we accept can be forwarded to Stripe unchanged.
pub const MAX_METADATA_ENTRIES: usize = 50;
pub const MAX_METADATA_KEY_LEN: usize = 40;
pub const MAX_METADATA_VALUE_LEN: usize = 500;

/// One thing wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Collects violations while a request is parsed.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Keeps the value when it parsed, records the violation when it did not.
    pub fn check<T, E: fmt::Display>(&mut self, field: &str, parsed: Result<T, E>) -> Option<T> {
        parsed.map_err(|e| self.push(field, e.to_string())).ok()
    }

    pub fn into_result<T>(
        self,
        value: impl FnOnce() -> Option<T>,
    ) -> Result<T, Vec<FieldViolation>> {
        if self.0.is_empty() {
            // Every `check` succeeded, so every value is present.
            value().ok_or_else(|| vec![FieldViolation::new("", "request could not be parsed")])
        } else {
            Err(self.0)
        }
    }
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

/// The provider's reference of a payment (`ch_...`, `pi_...`, a sandbox id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentRef(String);

impl PaymentRef {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("payment_id is required".into());
        }
        if s.len() > MAX_PAYMENT_ID_LEN {
            return Err(format!(
                "payment_id is longer than {MAX_PAYMENT_ID_LEN} bytes"
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return Err("payment_id may contain only letters, digits and _ - . :".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of a configured provider, e.g. `sandbox` or `stripe`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderName(String);

impl ProviderName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= MAX_PROVIDER_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "provider must be 1 to {MAX_PROVIDER_LEN} lower-case letters, digits, _ or -"
            ))
        }
    }

    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's idempotency key: 1 to 255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY_LEN || !printable(s) {
            return Err(format!(
                "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn parse_metadata(
    metadata: BTreeMap<String, String>,
    violations: &mut Violations,
) -> BTreeMap<String, String> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        violations.push(
            "metadata",
            format!(
                "metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
                metadata.len()
            ),
        );
    }
    for (key, value) in &metadata {
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_LEN {
            violations.push(
                format!("metadata[{key}]"),
                format!("metadata keys must be 1 to {MAX_METADATA_KEY_LEN} characters"),
            );
        }
        if value.chars().count() > MAX_METADATA_VALUE_LEN {
            violations.push(
                format!("metadata[{key}]"),
                format!("metadata values must be at most {MAX_METADATA_VALUE_LEN} characters"),
            );
        }
    }
    metadata
}

/// The request a client makes, before any field is checked.
#[derive(Debug, Clone, Default)]
pub struct RawRefundRequest {
    pub payment_id: String,
    pub provider: String,
    pub amount: Option<i64>,
    pub currency: String,
    pub reason: Option<RefundReason>,
    pub reason_detail: String,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: String,
}

/// A refund request whose every field is valid. The provider is resolved (defaulted) here, so
/// the request fingerprint covers the provider the refund will really go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefund {
    pub payment: PaymentRef,
    pub provider: ProviderName,
    pub amount: Option<Amount>,
    pub currency: Currency,
    pub reason: RefundReason,
    pub reason_detail: String,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: Option<IdempotencyKey>,
}

impl NewRefund {
    /// `field_prefix` names fields inside a larger message (e.g. `jobs[3].`); empty otherwise.
    pub fn parse(
        raw: RawRefundRequest,
        default_provider: &ProviderName,
        field_prefix: &str,
    ) -> Result<Self, Vec<FieldViolation>> {
        let f = |name: &str| format!("{field_prefix}{name}");
        let mut v = Violations::default();
        let payment = v.check(&f("payment_id"), PaymentRef::parse(&raw.payment_id));
        let provider = if raw.provider.is_empty() {
            Some(default_provider.clone())
        } else {
            v.check(&f("provider"), ProviderName::parse(&raw.provider))
        };
        let amount = match raw.amount {
            None => Some(None),
            Some(n) => v.check(&f("amount"), Amount::new(n)).map(Some),
        };
        let currency = if raw.currency.is_empty() {
            v.push(f("currency"), "currency is required (ISO 4217, e.g. USD)");
            None
        } else {
            v.check(&f("currency"), Currency::parse(&raw.currency))
        };
        let reason = match raw.reason {
            Some(r) => Some(r),
            None => {
                v.push(f("reason"), "reason is not a known RefundReason");
                None
            }
        };
        if raw.reason_detail.chars().count() > MAX_REASON_DETAIL_LEN {
            v.push(
                f("reason_detail"),
                format!("reason_detail must be at most {MAX_REASON_DETAIL_LEN} characters"),
            );
        }
        let metadata = parse_metadata(raw.metadata, &mut v);
        let idempotency_key = if raw.idempotency_key.is_empty() {
            Some(None)
        } else {
            v.check(
                &f("idempotency_key"),
                IdempotencyKey::parse(&raw.idempotency_key),
            )
            .map(Some)
        };
        let reason_detail = raw.reason_detail;
        v.into_result(|| {
            Some(Self {
                payment: payment?,
                provider: provider?,
                amount: amount?,
                currency: currency?,
                reason: reason?,
                reason_detail,
                metadata,
                idempotency_key: idempotency_key?,
            })
        })
    }

    /// A digest of everything that defines the refund (not the key itself): the same key with a
    /// different fingerprint is a different request reusing a key.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |name: &str, value: &str| {
            // Length-prefixed so that no two different requests hash the same bytes.
            h.update(name.as_bytes());
            h.update((value.len() as u64).to_be_bytes());
            h.update(value.as_bytes());
        };
        field("payment", self.payment.as_str());
        field("provider", self.provider.as_str());
        field(
            "amount",
            &self
                .amount
                .map_or_else(|| "full".to_owned(), |a| a.minor_units().to_string()),
        );
        field("currency", self.currency.code());
        field("reason", self.reason.as_str());
        field("reason_detail", &self.reason_detail);
        for (k, v) in &self.metadata {
            field("metadata.key", k);
            field("metadata.value", v);
        }
        let digest = h.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sandbox() -> ProviderName {
        ProviderName::parse("sandbox").unwrap()
    }

    fn valid() -> RawRefundRequest {
        RawRefundRequest {
            payment_id: "ch_123".into(),
            amount: Some(500),
            currency: "usd".into(),
            reason: Some(RefundReason::RequestedByCustomer),
            ..Default::default()
        }
    }

    fn fields(raw: RawRefundRequest) -> Vec<String> {
        match NewRefund::parse(raw, &sandbox(), "") {
            Ok(_) => vec![],
            Err(v) => v.into_iter().map(|v| v.field).collect(),
        }
    }

    #[test]
    fn a_valid_request_parses_and_defaults_the_provider() {
        let r = NewRefund::parse(valid(), &sandbox(), "").unwrap();
        assert_eq!(r.provider, sandbox());
        assert_eq!(r.currency.code(), "USD");
        assert_eq!(r.amount.map(Amount::minor_units), Some(500));
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let raw = RawRefundRequest {
            payment_id: String::new(),
            provider: "Not A Provider".into(),
            amount: Some(0),
            currency: "dollars".into(),
            reason: None,
            reason_detail: "x".repeat(501),
            metadata: (0..51).map(|i| (format!("k{i}"), "v".into())).collect(),
            idempotency_key: "has space".into(),
        };
        assert_eq!(
            fields(raw),
            [
                "payment_id",
                "provider",
                "amount",
                "currency",
                "reason",
                "reason_detail",
                "metadata",
                "idempotency_key"
            ]
        );
    }

    #[test]
    fn prefix_names_fields_inside_a_batch() {
        let raw = RawRefundRequest {
            amount: Some(-1),
            ..valid()
        };
        let err = NewRefund::parse(raw, &sandbox(), "jobs[7].").unwrap_err();
        assert_eq!(err[0].field, "jobs[7].amount");
    }

    #[test]
    fn fingerprint_changes_with_every_field_but_not_the_key() {
        let base = NewRefund::parse(valid(), &sandbox(), "").unwrap();
        let with_key = NewRefund {
            idempotency_key: Some(IdempotencyKey::parse("k1").unwrap()),
            ..base.clone()
        };
        assert_eq!(base.fingerprint(), with_key.fingerprint());
        let variants = [
            NewRefund {
                amount: None,
                ..base.clone()
            },
            NewRefund {
                amount: Some(Amount::new(501).unwrap()),
                ..base.clone()
            },
            NewRefund {
                reason: RefundReason::Duplicate,
                ..base.clone()
            },
            NewRefund {
                reason_detail: "x".into(),
                ..base.clone()
            },
            NewRefund {
                currency: Currency::parse("EUR").unwrap(),
                ..base.clone()
            },
            NewRefund {
                payment: PaymentRef::parse("ch_124").unwrap(),
                ..base.clone()
            },
            NewRefund {
                metadata: [("a".into(), "b".into())].into(),
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.fingerprint(), base.fingerprint(), "{v:?}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_accepts_only_valid_amounts(
            payment_id in ".{0,300}",
            amount in proptest::option::of(any::<i64>()),
            currency in ".{0,5}",
            detail_len in 0usize..600,
            key in ".{0,300}",
        ) {
            let raw = RawRefundRequest {
                payment_id, amount, currency,
                reason: Some(RefundReason::Other),
                reason_detail: "d".repeat(detail_len),
                idempotency_key: key,
                ..Default::default()
            };
            if let Ok(r) = NewRefund::parse(raw.clone(), &sandbox(), "") {
                prop_assert_eq!(r.amount.map(Amount::minor_units), raw.amount);
                prop_assert!(raw.amount.is_none_or(|n| n > 0));
                prop_assert_eq!(r.payment.as_str(), raw.payment_id.as_str());
            }
        }

        #[test]
        fn metadata_within_limits_is_accepted(
            metadata in proptest::collection::btree_map("[a-z]{1,40}", ".{0,500}", 0..=50),
        ) {
            let raw = RawRefundRequest { metadata: metadata.clone(), ..valid() };
            let parsed = NewRefund::parse(raw, &sandbox(), "").unwrap();
            prop_assert_eq!(parsed.metadata, metadata);
        }
    }
}
