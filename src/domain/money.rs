//! Money: integer minor units of an ISO 4217 currency. Never floats.
//!
//! A payment's balance is not computed here: the rule that matters most — never refund beyond
//! what was captured — is one conditional write in the store (see `store::refunds`), so that
//! concurrent requests and replicas cannot race it; `tests/api/money.rs` checks it against a
//! model over random sequences.

use std::fmt;
use std::str::FromStr;

/// A strictly positive amount in minor units (cents for USD, yen for JPY).
///
/// ```
/// use refund_service::domain::Amount;
///
/// assert_eq!(Amount::new(2_500).map(Amount::minor_units), Ok(2_500));
/// assert!(Amount::new(0).is_err());
/// assert!(Amount::new(-1).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

/// The largest amount the service accepts: well beyond any real payment, and far enough from
/// `i64::MAX` that sums of a payment's refunds cannot overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000; // 10^15 minor units

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be greater than zero, got {0}")]
    NotPositive(i64),
    #[error("amount must be at most {MAX_AMOUNT}, got {0}")]
    TooLarge(i64),
}

impl Amount {
    pub fn new(minor_units: i64) -> Result<Self, AmountError> {
        if minor_units <= 0 {
            Err(AmountError::NotPositive(minor_units))
        } else if minor_units > MAX_AMOUNT {
            Err(AmountError::TooLarge(minor_units))
        } else {
            Ok(Self(minor_units))
        }
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An ISO 4217 currency, stored and shown as its upper-case alphabetic code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ISO 4217 currency code (e.g. USD, EUR, JPY)")]
pub struct CurrencyError(pub String);

impl Currency {
    /// Parses a code case-insensitively: providers such as Stripe use lower case.
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let upper = code.trim().to_ascii_uppercase();
        if upper.len() != 3 {
            return Err(CurrencyError(code.to_owned()));
        }
        iso_currency::Currency::from_code(&upper)
            .map(Self)
            .ok_or_else(|| CurrencyError(code.to_owned()))
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// How many decimal digits the minor unit has (2 for BRL, 0 for CLP and JPY): what converts
    /// a provider's decimal major-unit amount to minor units exactly. `None` for codes without
    /// a minor unit in ISO 4217 (XAU, XDR, …), which no amount here can be expressed in.
    pub fn exponent(self) -> Option<u32> {
        self.0.exponent().map(u32::from)
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a decimal amount could not be read exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("{0:?} is not a plain non-negative decimal number")]
    Syntax(String),
    #[error("{text} has more decimals than the currency's {exponent}")]
    TooPrecise { text: String, exponent: u32 },
    #[error("{0} does not fit in minor units")]
    Overflow(String),
}

/// Converts a decimal number in major units (e.g. a provider's JSON number text `100.5`) to minor units
/// with `exponent` decimals, exactly. Accepts only digits with an optional fraction: no sign, no
/// exponent, no leading zeros, no surrounding space; zeros beyond `exponent` are accepted
/// (`100.0` with exponent 0), other digits beyond it are not.
pub fn decimal_to_minor(text: &str, exponent: u32) -> Result<i64, DecimalError> {
    let syntax = || DecimalError::Syntax(text.to_owned());
    let overflow = || DecimalError::Overflow(text.to_owned());
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return Err(syntax()),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (int.len() > 1 && int.starts_with('0')) {
        return Err(syntax());
    }
    let scale = 10i64.checked_pow(exponent).ok_or_else(overflow)?;
    // `frac` is ASCII digits only, so any index is a character boundary.
    let width = usize::try_from(exponent).unwrap_or(usize::MAX);
    let (kept, beyond) = frac.split_at(frac.len().min(width));
    if beyond.bytes().any(|b| b != b'0') {
        return Err(DecimalError::TooPrecise {
            text: text.to_owned(),
            exponent,
        });
    }
    let number = |s: &str| {
        s.bytes().try_fold(0i64, |n, b| {
            n.checked_mul(10)?.checked_add(i64::from(b - b'0'))
        })
    };
    let major = number(int).ok_or_else(overflow)?;
    let missing = u32::try_from(width - kept.len()).map_err(|_| overflow())?;
    let minor = number(kept)
        .and_then(|f| f.checked_mul(10i64.checked_pow(missing)?))
        .ok_or_else(overflow)?;
    major
        .checked_mul(scale)
        .and_then(|m| m.checked_add(minor))
        .ok_or_else(overflow)
}

/// Writes `minor` units as a decimal number in major units with exactly `exponent` decimals
/// (`1050`, 2 → `10.50`; `5000`, 0 → `5000`). `None` for negative amounts or an exponent too
/// large for `i64`.
pub fn minor_to_decimal(minor: i64, exponent: u32) -> Option<String> {
    if minor < 0 {
        return None;
    }
    let scale = 10i64.checked_pow(exponent)?;
    let (major, frac) = (minor / scale, minor % scale);
    if exponent == 0 {
        Some(major.to_string())
    } else {
        let width = usize::try_from(exponent).ok()?;
        Some(format!("{major}.{frac:0width$}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amount_rejects_zero_negative_and_huge() {
        assert_eq!(Amount::new(0), Err(AmountError::NotPositive(0)));
        assert_eq!(Amount::new(-5), Err(AmountError::NotPositive(-5)));
        assert_eq!(
            Amount::new(MAX_AMOUNT + 1),
            Err(AmountError::TooLarge(MAX_AMOUNT + 1))
        );
        assert_eq!(Amount::new(1).map(Amount::minor_units), Ok(1));
    }

    #[test]
    fn currency_is_case_insensitive_and_iso_only() {
        assert_eq!(Currency::parse("usd").map(Currency::code), Ok("USD"));
        assert_eq!(Currency::parse("JPY").map(Currency::code), Ok("JPY"));
        assert!(Currency::parse("XYZ").is_err());
        assert!(Currency::parse("US").is_err());
        assert!(Currency::parse("").is_err());
        assert!(Currency::parse("USDD").is_err());
    }

    proptest! {
        #[test]
        fn amount_parses_exactly_the_valid_range(n in any::<i64>()) {
            let parsed = Amount::new(n);
            prop_assert_eq!(parsed.is_ok(), n > 0 && n <= MAX_AMOUNT);
            if let Ok(a) = parsed {
                prop_assert_eq!(a.minor_units(), n);
            }
        }

        #[test]
        fn currency_parse_round_trips(code in "[A-Za-z]{3}") {
            if let Ok(c) = Currency::parse(&code) {
                prop_assert_eq!(c.code(), code.to_ascii_uppercase());
                prop_assert_eq!(Currency::parse(c.code()), Ok(c));
            }
        }
    }

    // --- decimal text ---

    #[test]
    fn decimals_convert_exactly() {
        assert_eq!(decimal_to_minor("100.5", 2), Ok(10_050));
        assert_eq!(decimal_to_minor("100.50", 2), Ok(10_050));
        assert_eq!(decimal_to_minor("0.01", 2), Ok(1));
        assert_eq!(decimal_to_minor("0", 2), Ok(0));
        assert_eq!(decimal_to_minor("10", 2), Ok(1_000));
        assert_eq!(decimal_to_minor("15000", 0), Ok(15_000));
        assert_eq!(decimal_to_minor("1.234", 3), Ok(1_234));
        // Zeros beyond the exponent change nothing.
        assert_eq!(decimal_to_minor("15000.0", 0), Ok(15_000));
        assert_eq!(decimal_to_minor("10.500", 2), Ok(1_050));
        // Digits beyond it would be lost.
        assert!(matches!(
            decimal_to_minor("10.505", 2),
            Err(DecimalError::TooPrecise { .. })
        ));
        assert!(matches!(
            decimal_to_minor("100.5", 0),
            Err(DecimalError::TooPrecise { .. })
        ));
        for bad in [
            "", "-1", "-0", "+1", "1e2", "1E2", "1.5e1", ".5", "5.", "01", " 1", "1 ", "1,5",
            "\"10.5\"", "null", "NaN", "1.2.3", "١",
        ] {
            assert!(
                matches!(decimal_to_minor(bad, 2), Err(DecimalError::Syntax(_))),
                "{bad:?} was accepted"
            );
        }
        assert!(matches!(
            decimal_to_minor("92233720368547758.08", 2),
            Err(DecimalError::Overflow(_))
        ));
        assert_eq!(
            decimal_to_minor("92233720368547758.07", 2),
            Ok(i64::MAX),
            "the largest amount still fits"
        );
        assert!(matches!(
            decimal_to_minor("1", 19),
            Err(DecimalError::Overflow(_))
        ));
    }

    #[test]
    fn minor_units_are_written_with_the_currency_digits() {
        assert_eq!(minor_to_decimal(1_050, 2).as_deref(), Some("10.50"));
        assert_eq!(minor_to_decimal(1, 2).as_deref(), Some("0.01"));
        assert_eq!(minor_to_decimal(5_000, 0).as_deref(), Some("5000"));
        assert_eq!(minor_to_decimal(1_234, 3).as_deref(), Some("1.234"));
        assert_eq!(minor_to_decimal(-1, 2), None);
        assert_eq!(minor_to_decimal(1, 19), None);
    }

    proptest! {
        #[test]
        fn minor_units_round_trip_through_decimal_text(minor in 0i64..=i64::MAX, exponent in 0u32..=3) {
            let text = minor_to_decimal(minor, exponent);
            prop_assert!(text.is_some());
            let text = text.unwrap_or_default();
            prop_assert_eq!(decimal_to_minor(&text, exponent), Ok(minor));
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,40}", exponent in any::<u32>()) {
            let _ = decimal_to_minor(&text, exponent);
        }

        #[test]
        fn parsing_number_like_text_never_panics(text in "[-+0-9.eE]{0,30}", exponent in 0u32..=20) {
            if let Ok(minor) = decimal_to_minor(&text, exponent) {
                prop_assert!(minor >= 0);
                prop_assert!(!text.contains(['-', '+', 'e', 'E']));
            }
        }
    }
}
