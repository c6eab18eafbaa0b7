//! The live replicas of a shared (PostgreSQL) database: each heartbeats its row, so that every
//! replica knows how many share each provider's rate budget. Times are the database's own clock,
//! so that the replicas' clocks need not agree.

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
                    .table("replicas")
                    .col(string_len("id", 64).primary_key())
                    .col(timestamp_with_time_zone("started_at"))
                    .col(timestamp_with_time_zone("heartbeat_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("replicas").to_owned())
            .await
    }
}
