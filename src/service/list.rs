//! Listing refunds: filters, page sizes and opaque page tokens.
//!
//! A page token is the id of the last refund served plus a digest of the filters it was made for,
//! base64url-encoded. Ids are time-ordered and unique, so "older than the last one served" is a
//! stable cursor: refunds created while a client pages never shift later pages.

use sha2::{Digest, Sha256};

use super::page::{decode_token, encode_token, page_size};
use super::{RefundService, internal};
use crate::domain::{
    AccountId, PaymentRef, ProviderName, Refund, RefundError, RefundId, RefundStatus, Timestamp,
    Violations,
};
use crate::store::ListFilter;

/// Tag of refund list tokens (`page` module).
const TOKEN_KIND: &str = "v1";
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
        let page_size = page_size(q.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, &mut v);
        if let (Some(from), Some(before)) = (q.created_from, q.created_before)
            && from >= before
        {
            v.push(
                "created_before",
                "created_before must be later than created_after",
            );
        }
        let filter_digest = digest(&q);
        let before_id =
            decode_token(&q.page_token, TOKEN_KIND, &filter_digest, &mut v).and_then(|cursor| {
                let id = RefundId::parse(&cursor);
                if id.is_none() {
                    v.push(
                        "page_token",
                        "page_token is not a token this service issued",
                    );
                }
                id
            });
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
                .map(|last| encode_token(TOKEN_KIND, last.id.as_str(), &filter_digest))
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

#[cfg(test)]
mod tests {
    use super::*;

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
