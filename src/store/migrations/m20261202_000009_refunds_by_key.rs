//! Refunds by their idempotency key, however old: how a bulk job finds the refund it made
//! (the key's row in `idempotency_keys` expires, the refund's own column does not).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("refunds_account_idempotency_key")
                    .table("refunds")
                    .col("account_id")
                    .col("idempotency_key")
                    .to_owned(),
            )
            .await
    }
}
