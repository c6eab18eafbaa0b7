//! The audit trail.

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
                    .table("audit_events")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("account_id", 64))
                    .col(string_len_null("actor_key_id", 64))
                    .col(string_len("source", 32))
                    .col(string_len("action", 64))
                    .col(string_len("resource_id", 64))
                    .col(string_len_null("request_id", 128))
                    .col(string_len("outcome", 64))
                    .col(text("detail"))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("audit_events_account", &["account_id", "id"][..]),
            (
                "audit_events_resource",
                &["account_id", "resource_id", "id"][..],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table("audit_events");
            for col in cols {
                index.col(*col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }
}
