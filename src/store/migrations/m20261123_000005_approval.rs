//! Four-eyes approval: per-account thresholds, and who created and who approved a refund.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("approval_thresholds")
                    .col(string_len("account_id", 64))
                    .col(string_len("currency", 3))
                    // Refunds above this many minor units need approval.
                    .col(big_integer("amount"))
                    .col(big_integer("updated_at"))
                    .primary_key(Index::create().col("account_id").col("currency"))
                    .to_owned(),
            )
            .await?;
        // SQLite adds one column per ALTER TABLE.
        for (table, column) in [
            ("refunds", "created_by_key"),
            ("refunds", "approved_by_key"),
            ("bulks", "created_by_key"),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(string_len_null(column, 64))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
