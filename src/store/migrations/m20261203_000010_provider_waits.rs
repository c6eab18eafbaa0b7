//! A batch's waits for unavailable providers: the events that tell watchers (with their details,
//! which result and summary events read from other rows), and the waits going on now, for
//! GetBulkRefund on any replica.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table("bulk_events")
                    .add_column(ColumnDef::new("detail").text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("bulks")
                    .add_column(ColumnDef::new("provider_waits").text().null())
                    .to_owned(),
            )
            .await
    }
}
