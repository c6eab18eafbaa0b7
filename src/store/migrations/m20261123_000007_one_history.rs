//! One status history: the audit trail records every status change (with its source, key and
//! request), so `refund_events` is folded into `audit_events` and dropped. Rows of refunds that
//! already have audit records are not copied (those changes are in the trail already).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // `||` and substr mean the same in SQLite and PostgreSQL.
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO audit_events \
                 (id, account_id, actor_key_id, source, action, resource_id, request_id, \
                  outcome, detail, created_at) \
                 SELECT 'aud_' || substr(e.id, 5), e.account_id, NULL, e.source, \
                   CASE WHEN e.from_status IS NULL THEN 'refund.create' \
                        WHEN e.from_status = 'requires_approval' AND e.to_status = 'pending' \
                          THEN 'refund.approve' \
                        WHEN e.from_status = 'requires_approval' THEN 'refund.reject' \
                        ELSE 'refund.settle' END, \
                   e.refund_id, NULL, e.to_status, '', e.created_at \
                 FROM refund_events e \
                 WHERE NOT EXISTS \
                   (SELECT 1 FROM audit_events a WHERE a.resource_id = e.refund_id)",
            )
            .await?;
        manager
            .drop_table(Table::drop().table("refund_events").to_owned())
            .await
    }
}
