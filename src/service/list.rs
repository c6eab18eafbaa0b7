//! Listing refunds: filters, page sizes and opaque page tokens.
//!
//! A page token is the id of the last refund served plus a digest of the filters it was made for,
//! base64url-encoded. Ids are time-ordered and unique, so "older than the last one served" is a
//! stable cursor: refunds created while a client pages never shift later pages.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::{RefundService, internal};
use crate::domain::{
    AccountId, PaymentRef, ProviderName, Refund, RefundError, RefundId, RefundStatus, Timestamp,
    Violations,
};
use crate::store::ListFilter;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 500;

/// A list request as the client sent it; empty strings mean "no filter".
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<RefundStatus>,
    pub payment_id: String,
    pub provider: String,
    pub created_from: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub page_size: i32,
    pub page_token: String,
}

#[derive(Debug, Clone)]
pub struct ListPage {
    pub refunds: Vec<Refund>,
    /// Empty on the last page.
    pub next_page_token: String,
}

impl RefundService {
    pub async fn list_refunds(
        &self,
        account: &AccountId,
        q: ListQuery,
    ) -> Result<ListPage, RefundError> {
        let mut v = Violations::default();
        let payment = (!q.payment_id.is_empty())
            .then(|| v.check("payment_id", PaymentRef::parse(&q.payment_id)))
            .flatten();
        let provider = (!q.provider.is_empty())
            .then(|| v.check("provider", ProviderName::parse(&q.provider)))
            .flatten();
        let page_size = match q.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                v.push("page_size", "page_size must not be negative");
                DEFAULT_PAGE_SIZE
            }
            n => u32::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
        };
        if let (Some(from), Some(before)) = (q.created_from, q.created_before)
            && from >= before
        {
            v.push(
                "created_before",
                "created_before must be later than created_after",
            );
        }
        let filter_digest = digest(&q);
        let before_id = if q.page_token.is_empty() {
            None
        } else {
            match decode_token(&q.page_token) {
                Some((id, digest)) if digest == filter_digest => Some(id),
                Some(_) => {
                    v.push(
                        "page_token",
                        "page_token was made for different filters; send the same filters as the first page",
                    );
                    None
                }
                None => {
                    v.push(
                        "page_token",
                        "page_token is not a token this service issued",
                    );
                    None
                }
            }
        };
        if let Err(violations) = v.into_result(|| Some(())) {
            return Err(RefundError::InvalidArgument(violations));
        }

        let filter = ListFilter {
            status: q.status,
            payment,
            provider,
            created_from: q.created_from,
            created_before: q.created_before,
            before_id,
        };
        // One row more than the page tells whether there is a next page.
        let mut refunds = self
            .store()
            .list_refunds(account, &filter, u64::from(page_size) + 1)
            .await
            .map_err(internal)?;
        let next_page_token = if refunds.len() > page_size as usize {
            refunds.truncate(page_size as usize);
            refunds
                .last()
                .map(|last| encode_token(&last.id, &filter_digest))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListPage {
            refunds,
            next_page_token,
        })
    }
}

fn digest(q: &ListQuery) -> String {
    let mut h = Sha256::new();
    for part in [
        q.status.map_or("", RefundStatus::as_str),
        &q.payment_id,
        &q.provider,
        &q.created_from
            .map_or_else(String::new, |t| t.as_micros().to_string()),
        &q.created_before
            .map_or_else(String::new, |t| t.as_micros().to_string()),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    // 8 bytes are plenty to tell filter sets apart; the token is not a security boundary.
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn encode_token(last: &RefundId, digest: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1.{}.{digest}", last.as_str()))
}

fn decode_token(token: &str) -> Option<(RefundId, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix("v1.")?;
    let (id, digest) = rest.split_once('.')?;
    Some((RefundId::parse(id)?, digest.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let id = RefundId::generate();
        let token = encode_token(&id, "abcd");
        assert_eq!(decode_token(&token), Some((id, "abcd".to_owned())));
        assert_eq!(decode_token("not a token"), None);
        assert_eq!(decode_token(&URL_SAFE_NO_PAD.encode("v1.rf_x.abcd")), None);
    }

    #[test]
    fn digest_depends_on_every_filter_but_not_on_paging() {
        let base = ListQuery::default();
        let d = digest(&base);
        assert_eq!(
            d,
            digest(&ListQuery {
                page_size: 7,
                page_token: "t".into(),
                ..base.clone()
            })
        );
        for other in [
            ListQuery {
                status: Some(RefundStatus::Failed),
                ..base.clone()
            },
            ListQuery {
                payment_id: "ch_1".into(),
                ..base.clone()
            },
            ListQuery {
                provider: "stripe".into(),
                ..base.clone()
            },
            ListQuery {
                created_from: Some(Timestamp::from_micros(1)),
                ..base.clone()
            },
            ListQuery {
                created_before: Some(Timestamp::from_micros(1)),
                ..base.clone()
            },
        ] {
            assert_ne!(digest(&other), d, "{other:?}");
        }
    }
}
