//! Provider connections: an account's own credentials for a provider, sealed (the store never
//! sees them in the clear), and which connection each refund, payment balance and webhook went
//! through. NULL is the platform's connection (the configured flags), so existing rows keep
//! their meaning. And the captures that providers without a payment look-up notify, per route.

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
                    .table("connections")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("account_id", 64))
                    .col(string_len("provider", 64))
                    .col(string_len_null("api_base", 2048))
                    // The provider's own settings (Adyen's merchant account), a JSON object.
                    .col(text("settings"))
                    .col(text("credential_sealed"))
                    .col(text_null("webhook_secret_sealed"))
                    .col(big_integer("created_at"))
                    .col(big_integer("rotated_at"))
                    .col(big_integer_null("deleted_at"))
                    .to_owned(),
            )
            .await?;
        // One live connection per account and provider; deleted ones stay for the refunds that
        // name them. (A partial index reads the same on SQLite and PostgreSQL.)
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX connections_live_per_account \
                 ON connections (account_id, provider) WHERE deleted_at IS NULL",
            )
            .await?;
        // What providers that cannot be asked about a payment (Adyen) notified of its capture,
        // per route: one route's notifications (signed with its tenant's key) never speak for
        // another's payments. `route` is '' for the platform's, else the connection id.
        manager
            .create_table(
                Table::create()
                    .table("notified_captures")
                    .col(string_len("provider", 64))
                    .col(string_len("route", 64))
                    .col(string_len("payment_id", 255))
                    .col(string_len("currency", 3))
                    .col(big_integer("captured_amount"))
                    .col(big_integer("updated_at"))
                    .primary_key(
                        Index::create()
                            .col("provider")
                            .col("route")
                            .col("payment_id"),
                    )
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite adds one column per ALTER TABLE.
        for table in ["refunds", "payments", "webhook_events"] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(ColumnDef::new("connection_id").string_len(64).null())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
