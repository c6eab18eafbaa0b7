//! Inbound provider webhooks: one row per event, which makes a redelivered event a no-op and keeps
//! events for refunds we cannot match yet until the reconciler can.

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
                    .table("webhook_events")
                    .col(string_len("provider", 64))
                    .col(string_len("event_id", 255))
                    .col(string_len("event_type", 64))
                    // RECEIVED, APPLIED, IGNORED, UNMATCHED, NUDGED
                    .col(string_len("outcome", 16))
                    .col(string_len_null("payment_id", 255))
                    .col(string_len_null("provider_refund_id", 255))
                    // Our refund id: carried by the provider (a hint) or matched.
                    .col(string_len_null("refund_id", 64))
                    .col(string_len_null("account_id", 64))
                    // The refund's status as the event reports it, in our terms.
                    .col(string_len_null("refund_status", 32))
                    .col(big_integer_null("refund_amount"))
                    .col(string_len_null("failure_code", 255))
                    .col(text_null("failure_reason"))
                    .col(big_integer("received_at"))
                    .col(big_integer_null("processed_at"))
                    .primary_key(Index::create().col("provider").col("event_id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_events_outcome")
                    .table("webhook_events")
                    .col("outcome")
                    .col("received_at")
                    .to_owned(),
            )
            .await?;
        // Webhooks and look-ups find our refund by the provider's refund id.
        manager
            .create_index(
                Index::create()
                    .name("refunds_provider_refund_id")
                    .table("refunds")
                    .col("provider")
                    .col("provider_refund_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("refunds_provider_payment_id")
                    .table("refunds")
                    .col("provider")
                    .col("payment_id")
                    .to_owned(),
            )
            .await
    }
}
