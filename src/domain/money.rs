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
}
