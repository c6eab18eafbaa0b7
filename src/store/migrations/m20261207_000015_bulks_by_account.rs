//! An account's batches, newest first (ListBulkRefunds): batch ids are time-ordered.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("bulks_account_id")
                    .table("bulks")
                    .col("account_id")
                    .col("id")
                    .to_owned(),
            )
            .await
    }
}
