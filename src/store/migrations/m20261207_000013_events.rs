//! The client-facing event log (ListEvents, WatchEvents, webhooks to subscribers): one row per
//! event, numbered per account by `event_sequences`, whose row every appending transaction
//! updates last, so that an account's sequences commit in order.

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
                    .table("event_sequences")
                    .col(string_len("account_id", 64).primary_key())
                    .col(big_integer("last_sequence"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("events")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("account_id", 64))
                    .col(big_integer("sequence"))
                    .col(string_len("type", 64))
                    .col(string_len("resource_id", 64))
                    .col(text("data"))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        for (name, cols, unique) in [
            (
                "events_account_sequence",
                &["account_id", "sequence"][..],
                true,
            ),
            (
                "events_resource",
                &["account_id", "resource_id", "sequence"][..],
                false,
            ),
            ("events_created", &["created_at"][..], false),
        ] {
            let mut index = Index::create();
            index.name(name).table("events");
            if unique {
                index.unique();
            }
            for col in cols {
                index.col(*col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("events").to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table("event_sequences").to_owned())
            .await
    }
}
