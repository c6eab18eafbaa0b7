//! Payments balances, refunds, idempotency keys and the refund status history.

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
                    .table("payments")
                    .col(string_len("account_id", 64))
                    .col(string_len("provider", 64))
                    .col(string_len("payment_id", 255))
                    .col(string_len("currency", 3))
                    .col(big_integer("captured_amount"))
                    .col(big_integer("reserved_amount"))
                    .col(big_integer("created_at"))
                    .col(big_integer("updated_at"))
                    .primary_key(
                        Index::create()
                            .col("account_id")
                            .col("provider")
                            .col("payment_id"),
                    )
                    .check(Expr::col("reserved_amount").gte(0))
                    .check(Expr::col("reserved_amount").lte(Expr::col("captured_amount")))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("refunds")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("account_id", 64))
                    .col(string_len("payment_id", 255))
                    .col(string_len("provider", 64))
                    .col(string_len_null("provider_refund_id", 255))
                    .col(big_integer("amount"))
                    .col(string_len("currency", 3))
                    .col(string_len("status", 32))
                    .col(string_len("reason", 32))
                    .col(text("reason_detail"))
                    .col(text("metadata"))
                    .col(string_len_null("failure_code", 255))
                    .col(text_null("failure_reason"))
                    .col(string_len_null("idempotency_key", 255))
                    .col(integer("attempts").default(0))
                    .col(big_integer_null("next_check_at"))
                    .col(big_integer("created_at"))
                    .col(big_integer("updated_at"))
                    .check(Expr::col("amount").gt(0))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("refunds_account_id", &["account_id", "id"][..]),
            (
                "refunds_account_payment_id",
                &["account_id", "payment_id", "id"][..],
            ),
            (
                "refunds_status_next_check",
                &["status", "next_check_at"][..],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table("refunds");
            for col in cols {
                index.col(*col);
            }
            manager.create_index(index.to_owned()).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table("idempotency_keys")
                    .col(string_len("account_id", 64))
                    .col(string_len("key", 255))
                    .col(string_len("fingerprint", 64))
                    .col(string_len("refund_id", 64))
                    .col(big_integer("created_at"))
                    .col(big_integer("expires_at"))
                    .primary_key(Index::create().col("account_id").col("key"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idempotency_keys_expires_at")
                    .table("idempotency_keys")
                    .col("expires_at")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table("refund_events")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("refund_id", 64))
                    .col(string_len("account_id", 64))
                    .col(string_len_null("from_status", 32))
                    .col(string_len("to_status", 32))
                    .col(string_len("source", 32))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("refund_events_refund_id")
                    .table("refund_events")
                    .col("refund_id")
                    .col("id")
                    .to_owned(),
            )
            .await
    }
}
