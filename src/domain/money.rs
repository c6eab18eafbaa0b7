//! Money: integer minor units of an ISO 4217 currency. Never floats.
//!
//! The balance arithmetic of a payment lives here too ([`Balance`]), so the one rule that matters
//! most — never refund beyond what was captured — is stated once, checked, and property-tested.
//! The store enforces the same rule atomically with a conditional write; this type is what the
//! rest of the code reasons with.

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

/// What the service knows of a payment's refundable balance: the captured amount and the amount
/// reserved by refunds that have not failed or been canceled (pending ones count).
///
/// Invariant: `0 <= reserved <= captured`.
///
/// ```
/// use refund_service::domain::{Amount, Balance, BalanceError};
///
/// let balance = Balance::new(10_000, 6_000).unwrap();
/// assert_eq!(balance.remaining(), 4_000);
/// // No amount: the whole remainder.
/// assert_eq!(balance.refund_amount(None).map(Amount::minor_units), Ok(4_000));
/// // More than remains is refused, with what remains.
/// assert_eq!(
///     balance.refund_amount(Some(Amount::new(4_001).unwrap())),
///     Err(BalanceError::OverRefund { requested: 4_001, remaining: 4_000 })
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    captured: i64,
    reserved: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    #[error("balance is inconsistent: reserved {reserved} of captured {captured}")]
    Inconsistent { captured: i64, reserved: i64 },
    #[error("refund of {requested} exceeds the remaining refundable amount {remaining}")]
    OverRefund { requested: i64, remaining: i64 },
    #[error("the payment is fully refunded")]
    AlreadyRefunded,
    #[error("cannot release {released}: only {reserved} is reserved")]
    ReleaseExceedsReserved { released: i64, reserved: i64 },
}

impl Balance {
    pub fn new(captured: i64, reserved: i64) -> Result<Self, BalanceError> {
        if captured < 0 || reserved < 0 || reserved > captured {
            return Err(BalanceError::Inconsistent { captured, reserved });
        }
        Ok(Self { captured, reserved })
    }

    pub fn captured(self) -> i64 {
        self.captured
    }

    pub fn reserved(self) -> i64 {
        self.reserved
    }

    pub fn remaining(self) -> i64 {
        self.captured - self.reserved
    }

    /// The amount a refund takes: the requested amount if it fits, the whole remainder when no
    /// amount was requested.
    pub fn refund_amount(self, requested: Option<Amount>) -> Result<Amount, BalanceError> {
        let remaining = self.remaining();
        if remaining == 0 {
            return Err(BalanceError::AlreadyRefunded);
        }
        match requested {
            Some(amount) if amount.minor_units() > remaining => Err(BalanceError::OverRefund {
                requested: amount.minor_units(),
                remaining,
            }),
            Some(amount) => Ok(amount),
            // remaining > 0 and <= captured: a valid amount unless captured exceeds MAX_AMOUNT.
            None => Amount::new(remaining).map_err(|_| BalanceError::Inconsistent {
                captured: self.captured,
                reserved: self.reserved,
            }),
        }
    }

    /// The balance after reserving `amount`.
    pub fn reserve(self, amount: Amount) -> Result<Self, BalanceError> {
        let amount = self.refund_amount(Some(amount))?;
        Ok(Self {
            captured: self.captured,
            reserved: self.reserved + amount.minor_units(),
        })
    }

    /// The balance after a failed or canceled refund gives back its `amount`.
    pub fn release(self, amount: Amount) -> Result<Self, BalanceError> {
        if amount.minor_units() > self.reserved {
            return Err(BalanceError::ReleaseExceedsReserved {
                released: amount.minor_units(),
                reserved: self.reserved,
            });
        }
        Ok(Self {
            captured: self.captured,
            reserved: self.reserved - amount.minor_units(),
        })
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

    #[test]
    fn full_refund_takes_the_remainder_and_then_nothing_is_left() {
        let balance = Balance::new(10_000, 2_500).unwrap();
        let amount = balance.refund_amount(None).unwrap();
        assert_eq!(amount.minor_units(), 7_500);
        let after = balance.reserve(amount).unwrap();
        assert_eq!(after.remaining(), 0);
        assert_eq!(
            after.refund_amount(None),
            Err(BalanceError::AlreadyRefunded)
        );
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

        #[test]
        fn reservations_never_exceed_captured(
            captured in 0i64..=MAX_AMOUNT,
            requests in proptest::collection::vec(proptest::option::of(1i64..=MAX_AMOUNT), 0..40),
        ) {
            let mut balance = Balance::new(captured, 0).unwrap();
            let mut granted = 0i64;
            for request in requests {
                let requested = request.map(|n| Amount::new(n).unwrap());
                match balance.refund_amount(requested) {
                    Ok(amount) => {
                        balance = balance.reserve(amount).unwrap();
                        granted += amount.minor_units();
                    }
                    Err(BalanceError::OverRefund { requested, remaining }) => {
                        prop_assert!(requested > remaining);
                        prop_assert_eq!(remaining, balance.remaining());
                    }
                    Err(BalanceError::AlreadyRefunded) => prop_assert_eq!(balance.remaining(), 0),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
                prop_assert!(balance.reserved() <= balance.captured());
                prop_assert_eq!(balance.reserved(), granted);
            }
        }

        #[test]
        fn release_gives_back_exactly_what_was_reserved(
            captured in 1i64..=MAX_AMOUNT,
            fraction in 1u32..=100,
        ) {
            let amount = Amount::new((captured / 100 * i64::from(fraction)).max(1)).unwrap();
            let before = Balance::new(captured, 0).unwrap();
            let reserved = before.reserve(amount).unwrap();
            prop_assert_eq!(reserved.release(amount).unwrap(), before);
            prop_assert!(before.release(amount).is_err());
        }
    }
}
