//! Mercado Pago's JSON objects as its reference shows them, and how they read into ours.

use super::*;

/// A Mercado Pago id as it comes: a JSON number, or (leniently) a string of digits.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum MpId {
    Number(u64),
    Text(String),
}

impl MpId {
    /// The id as text, whichever way it was sent.
    pub(super) fn text(self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Text(t) => t,
        }
    }

    pub(super) fn check(self, kind: Call) -> Result<String, ProviderError> {
        let id = match self {
            Self::Number(n) => n.to_string(),
            Self::Text(s) => s,
        };
        if is_mp_id(&id) {
            Ok(id)
        } else {
            Err(bad_answer(kind, format!("bad id {id:?}")))
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct MpPayment {
    pub(super) id: MpId,
    pub(super) status: String,
    pub(super) transaction_amount: Box<RawValue>,
    #[serde(default)]
    pub(super) transaction_amount_refunded: Option<Box<RawValue>>,
    pub(super) currency_id: String,
    #[serde(default)]
    pub(super) refunds: Vec<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
pub(super) struct MpRefund {
    pub(super) id: MpId,
    #[serde(default)]
    pub(super) payment_id: Option<MpId>,
    pub(super) amount: Box<RawValue>,
    #[serde(default)]
    pub(super) status: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

impl MpRefund {
    /// The refund as the service sees it; `payment` is the payment it was asked about.
    pub(super) fn into_provider(
        self,
        payment: &str,
        currency: Currency,
        kind: Call,
    ) -> Result<ProviderRefund, ProviderError> {
        let id = self.id.check(kind)?;
        if let Some(of) = self.payment_id {
            let of = of.check(kind)?;
            if of != payment {
                return Err(bad_answer(
                    kind,
                    format!("refund {id} belongs to payment {of}, not {payment}"),
                ));
            }
        }
        let amount = amount(&self.amount, currency, kind)?;
        let status = match self.status.as_deref() {
            Some("approved") => ProviderRefundStatus::Succeeded,
            Some("rejected") => ProviderRefundStatus::Failed {
                code: "rejected".to_owned(),
                reason: self
                    .reason
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or_else(|| "Mercado Pago rejected the refund".to_owned()),
            },
            Some("cancelled") => ProviderRefundStatus::Canceled,
            // "in_process", "authorized", "pending"; and any status Mercado Pago adds later, or
            // none at all: not known to be final, so pending, and looked up again later.
            _ => ProviderRefundStatus::Pending,
        };
        Ok(ProviderRefund {
            id: refund_id(payment, &id),
            amount,
            status,
        })
    }
}
