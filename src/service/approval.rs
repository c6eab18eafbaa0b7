//! Four eyes: refunds above their account's threshold wait in REQUIRES_APPROVAL, holding their
//! amount, until another API key with `refunds:approve` approves them (then they are sent to the
//! provider) or anyone with that scope rejects them (CANCELED, amount released).

use super::{Origin, RefundService};
use crate::domain::{Principal, Refund, RefundError, RefundId, RefundStatus};
use crate::store::Settlement;

impl RefundService {
    /// Approves a waiting refund and sends it to its provider. The key that asked for the refund
    /// cannot approve it.
    pub async fn approve_refund(
        &self,
        approver: &Principal,
        id: &RefundId,
    ) -> Result<Refund, RefundError> {
        let refund = self.get_refund(&approver.account, id).await?;
        self.awaiting_approval(&refund)?;
        if refund.created_by.as_ref() == Some(&approver.key_id) {
            return Err(RefundError::SelfApproval {
                id: refund.id.as_str().to_owned(),
            });
        }
        let provider = self
            .adapter_of(&refund.provider, &refund.route)
            .await?
            .ok_or_else(|| {
                RefundError::invalid(
                    "id",
                    format!(
                        "the refund's provider {} is not configured",
                        refund.provider
                    ),
                )
            })?;
        let lease = self.clock().now().saturating_add(self.request_lease());
        let won = self
            .try_settle(
                &refund,
                Settlement {
                    from: RefundStatus::RequiresApproval,
                    to: RefundStatus::Pending,
                    provider_refund_id: None,
                    failure: None,
                    source: "approval",
                    approved_by: Some(approver.key_id.clone()),
                    lease_until: Some(lease),
                    actor: Some(approver.key_id.clone()),
                    request_id: super::context::request_id(),
                },
            )
            .await?;
        // Only the call that moved it out of REQUIRES_APPROVAL sends it: a concurrent approval,
        // even by the same key, finds it PENDING and must not send it again.
        let Some(pending) = won else {
            let now = self.reread(refund).await?;
            return Err(RefundError::NotAwaitingApproval {
                id: now.id.as_str().to_owned(),
                status: now.status,
            });
        };
        tracing::info!(refund_id = %pending.id, approver = %approver.key_id, "refund approved; sending it to the provider");
        self.submit(provider.as_ref(), pending, Origin::API, lease)
            .await
    }

    /// Rejects a waiting refund: it ends CANCELED and its amount is released.
    pub async fn reject_refund(
        &self,
        rejecter: &Principal,
        id: &RefundId,
    ) -> Result<Refund, RefundError> {
        let refund = self.get_refund(&rejecter.account, id).await?;
        self.awaiting_approval(&refund)?;
        let canceled = self
            .settle(
                refund,
                Settlement {
                    from: RefundStatus::RequiresApproval,
                    to: RefundStatus::Canceled,
                    provider_refund_id: None,
                    failure: Some(crate::domain::Failure {
                        code: "rejected".to_owned(),
                        reason: format!("rejected by {}", rejecter.key_id),
                    }),
                    source: "approval",
                    approved_by: None,
                    lease_until: None,
                    actor: Some(rejecter.key_id.clone()),
                    request_id: super::context::request_id(),
                },
            )
            .await?;
        if canceled.status != RefundStatus::Canceled {
            return Err(RefundError::NotAwaitingApproval {
                id: canceled.id.as_str().to_owned(),
                status: canceled.status,
            });
        }
        Ok(canceled)
    }

    fn awaiting_approval(&self, refund: &Refund) -> Result<(), RefundError> {
        if refund.status == RefundStatus::RequiresApproval {
            Ok(())
        } else {
            Err(RefundError::NotAwaitingApproval {
                id: refund.id.as_str().to_owned(),
                status: refund.status,
            })
        }
    }
}
