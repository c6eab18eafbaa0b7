//! Batches, their jobs and their event streams.

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
                    .table("bulks")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("account_id", 64))
                    .col(string_len_null("idempotency_key", 255))
                    .col(string_len("fingerprint", 64))
                    .col(string_len("state", 16))
                    .col(string_len_null("stop_reason", 16))
                    .col(integer("total"))
                    .col(integer("succeeded").default(0))
                    .col(integer("failed").default(0))
                    .col(integer("skipped").default(0))
                    .col(integer("canceled").default(0))
                    .col(boolean("abort_on_error"))
                    .col(integer("max_concurrency"))
                    .col(text("metadata"))
                    .col(integer("dispatch_cursor").default(0))
                    .col(big_integer("last_sequence").default(0))
                    .col(big_integer("created_at"))
                    .col(big_integer("updated_at"))
                    .col(big_integer_null("finished_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("bulks_account_idempotency_key")
                    .table("bulks")
                    .col("account_id")
                    .col("idempotency_key")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("bulks_state")
                    .table("bulks")
                    .col("state")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("bulk_items")
                    .col(string_len("bulk_id", 64))
                    .col(string_len("account_id", 64))
                    .col(integer("idx"))
                    .col(string_len("status", 16))
                    .col(text_null("job"))
                    .col(string_len("payment_id", 255))
                    .col(string_len("provider", 64))
                    .col(string_len_null("refund_id", 64))
                    .col(string_len_null("error_code", 255))
                    .col(text_null("error_message"))
                    .col(boolean("retryable").default(false))
                    .col(integer("attempts").default(0))
                    .col(string_len_null("lease_owner", 64))
                    .col(big_integer_null("lease_until"))
                    .col(big_integer("updated_at"))
                    .primary_key(Index::create().col("bulk_id").col("idx"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("bulk_items_status")
                    .table("bulk_items")
                    .col("bulk_id")
                    .col("status")
                    .col("idx")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("bulk_events")
                    .col(string_len("bulk_id", 64))
                    .col(string_len("account_id", 64))
                    .col(big_integer("sequence"))
                    .col(string_len("kind", 16))
                    .col(integer_null("item_idx"))
                    .col(big_integer("created_at"))
                    .primary_key(Index::create().col("bulk_id").col("sequence"))
                    .to_owned(),
            )
            .await
    }
}
