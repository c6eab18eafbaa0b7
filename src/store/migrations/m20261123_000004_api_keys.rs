//! API keys: stored as SHA-256 hashes of their tokens, each bound to one account and scopes.

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
                    .table("api_keys")
                    .col(string_len("id", 64).primary_key())
                    .col(string_len("account_id", 64))
                    .col(string_len("name", 200))
                    .col(string_len("token_hash", 64))
                    .col(string_len("scopes", 255))
                    .col(big_integer("created_at"))
                    .col(big_integer_null("revoked_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_keys_token_hash")
                    .table("api_keys")
                    .col("token_hash")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_keys_account_id")
                    .table("api_keys")
                    .col("account_id")
                    .col("id")
                    .to_owned(),
            )
            .await
    }
}
