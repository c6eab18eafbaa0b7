//! ListAuditEvents: an account's audit trail, newest first, with filters and cursor paging.

use super::page::{decode_token, encode_token, page_size};
use super::{RefundService, internal};
use crate::domain::{AccountId, ApiKeyId, AuditEvent, AuditId, RefundError, Violations};
use crate::store::AuditFilter;

pub const DEFAULT_AUDIT_PAGE: u32 = 50;
pub const MAX_AUDIT_PAGE: u32 = 500;

/// A ListAuditEvents request, unvalidated.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub resource_id: String,
    pub action: String,
    pub actor_key_id: String,
    pub page_size: i32,
    pub page_token: String,
}

#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub next_page_token: String,
}

impl RefundService {
    pub async fn list_audit_events(
        &self,
        account: &AccountId,
        q: AuditQuery,
    ) -> Result<AuditPage, RefundError> {
        let mut v = Violations::default();
        let size = page_size(q.page_size, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE, &mut v);
        let text = |s: &str, field: &str, v: &mut Violations| {
            if s.len() > 128 {
                v.push(field, format!("{field} is at most 128 characters"));
            }
            (!s.is_empty()).then(|| s.to_owned())
        };
        let resource_id = text(&q.resource_id, "resource_id", &mut v);
        let action = text(&q.action, "action", &mut v);
        let actor_key = match q.actor_key_id.as_str() {
            "" => None,
            id => {
                let parsed = ApiKeyId::parse(id);
                if parsed.is_none() {
                    v.push(
                        "actor_key_id",
                        "actor_key_id must look like key_ followed by 32 hex digits",
                    );
                }
                parsed
            }
        };
        let filters = format!(
            "{}|{}|{}|{}",
            account.as_str(),
            q.resource_id,
            q.action,
            q.actor_key_id
        );
        let before_id = decode_token(&q.page_token, "audit", &filters, &mut v).and_then(|cursor| {
            let id = AuditId::parse(&cursor);
            if id.is_none() {
                v.push(
                    "page_token",
                    "page_token is not a token this service issued",
                );
            }
            id
        });
        let filter = v
            .into_result(|| {
                Some(AuditFilter {
                    resource_id,
                    action,
                    actor_key,
                    since: None,
                    before_id,
                })
            })
            .map_err(RefundError::InvalidArgument)?;
        let mut events = self
            .store()
            .list_audit_events(account, &filter, u64::from(size) + 1)
            .await
            .map_err(internal)?;
        let next_page_token = if events.len() > size as usize {
            events.truncate(size as usize);
            events
                .last()
                .map(|e| encode_token("audit", e.id.as_str(), &filters))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(AuditPage {
            events,
            next_page_token,
        })
    }
}
