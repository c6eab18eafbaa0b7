//! Webhook endpoints (accounts' subscriptions to their events, with sealed signing secrets and a
//! cursor over the event log) and the deliveries of events to them, leased by the dispatcher.

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
                    .table("webhook_endpoints")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("account_id", 64))
                    .col(text("url"))
                    .col(text("description"))
                    .col(text("event_types"))
                    .col(boolean("enabled"))
                    .col(text("disabled_reason"))
                    .col(text("secret_sealed"))
                    .col(text_null("previous_secret_sealed"))
                    .col(big_integer_null("previous_secret_expires_at"))
                    .col(big_integer("cursor"))
                    .col(big_integer_null("failing_since"))
                    .col(big_integer("created_at"))
                    .col(big_integer("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("webhook_deliveries")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("endpoint_id", 64))
                    .col(string_len("account_id", 64))
                    .col(string_len("event_id", 64))
                    .col(string_len("event_type", 64))
                    .col(big_integer("event_sequence"))
                    .col(string_len("status", 16))
                    .col(integer("attempts"))
                    .col(integer_null("last_status_code"))
                    .col(text("last_error"))
                    .col(big_integer_null("next_attempt_at"))
                    .col(big_integer("window_started_at"))
                    .col(big_integer_null("delivered_at"))
                    .col(big_integer("created_at"))
                    .col(big_integer("updated_at"))
                    .to_owned(),
            )
            .await?;
        for (name, table, cols, unique) in [
            (
                "webhook_endpoints_account",
                "webhook_endpoints",
                &["account_id", "created_at"][..],
                false,
            ),
            (
                "webhook_deliveries_endpoint_event",
                "webhook_deliveries",
                &["endpoint_id", "event_id"][..],
                true,
            ),
            (
                "webhook_deliveries_endpoint_sequence",
                "webhook_deliveries",
                &["endpoint_id", "event_sequence"][..],
                false,
            ),
            (
                "webhook_deliveries_due",
                "webhook_deliveries",
                &["status", "next_attempt_at"][..],
                false,
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(table);
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
            .drop_table(Table::drop().table("webhook_deliveries").to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table("webhook_endpoints").to_owned())
            .await
    }
}
