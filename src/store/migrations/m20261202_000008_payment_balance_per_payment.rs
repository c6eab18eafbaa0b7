//! One balance row per real payment. The over-refund guard was keyed by (account, provider,
//! payment), so two accounts refunding the same payment each reserved against a row of their
//! own and could together exceed the capture. The row is now keyed by (provider, payment), and
//! `account_id` is the account that owns the payment here: the one that refunded it first.
//!
//! Existing rows of one payment are merged: reservations are added up and the owner is the
//! account whose row is oldest. If accounts had together reserved more than the capture, the
//! CHECK constraint stops the migration: that is an over-refund to look at, not to paper over.

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
                    .table("payment_balances")
                    .col(string_len("provider", 64))
                    .col(string_len("payment_id", 255))
                    .col(string_len("account_id", 64))
                    .col(string_len("currency", 3))
                    .col(big_integer("captured_amount"))
                    .col(big_integer("reserved_amount"))
                    .col(big_integer("created_at"))
                    .col(big_integer("updated_at"))
                    .primary_key(Index::create().col("provider").col("payment_id"))
                    .check(Expr::col("reserved_amount").gte(0))
                    .check(Expr::col("reserved_amount").lte(Expr::col("captured_amount")))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO payment_balances \
                 (provider, payment_id, account_id, currency, captured_amount, reserved_amount, \
                  created_at, updated_at) \
                 SELECT p.provider, p.payment_id, \
                   (SELECT o.account_id FROM payments o \
                    WHERE o.provider = p.provider AND o.payment_id = p.payment_id \
                    ORDER BY o.created_at, o.account_id LIMIT 1), \
                   MIN(p.currency), MAX(p.captured_amount), SUM(p.reserved_amount), \
                   MIN(p.created_at), MAX(p.updated_at) \
                 FROM payments p GROUP BY p.provider, p.payment_id",
            )
            .await?;
        manager
            .drop_table(Table::drop().table("payments").to_owned())
            .await?;
        manager
            .rename_table(
                Table::rename()
                    .table("payment_balances", "payments")
                    .to_owned(),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait as _, Database, Statement};
    use sea_orm_migration::MigratorTrait as _;

    use super::super::Migrator;

    #[tokio::test]
    async fn rows_of_one_payment_merge_into_one_balance_owned_by_the_first_account() {
        let db = Database::connect("sqlite::memory:").await.expect("sqlite");
        Migrator::up(&db, Some(7)).await.expect("migrations 1-7");
        db.execute_unprepared(
            "INSERT INTO payments (account_id, provider, payment_id, currency, captured_amount, \
             reserved_amount, created_at, updated_at) VALUES \
             ('acct_b', 'sandbox', 'ch_1', 'USD', 10000, 3000, 20, 21), \
             ('acct_a', 'sandbox', 'ch_1', 'USD', 10000, 4000, 10, 11), \
             ('acct_a', 'sandbox', 'ch_2', 'USD', 500, 500, 30, 31)",
        )
        .await
        .expect("old rows");
        Migrator::up(&db, None).await.expect("migration 8");
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT provider, payment_id, account_id, reserved_amount, created_at \
                 FROM payments ORDER BY payment_id",
            ))
            .await
            .expect("read");
        let got: Vec<(String, String, i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get("", "payment_id").expect("payment_id"),
                    r.try_get("", "account_id").expect("account_id"),
                    r.try_get("", "reserved_amount").expect("reserved"),
                    r.try_get("", "created_at").expect("created_at"),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("ch_1".into(), "acct_a".into(), 7000, 10),
                ("ch_2".into(), "acct_a".into(), 500, 30)
            ]
        );
        // One row per payment now: a second row for ch_1 is refused.
        let dup = db
            .execute_unprepared(
                "INSERT INTO payments (provider, payment_id, account_id, currency, \
                 captured_amount, reserved_amount, created_at, updated_at) VALUES \
                 ('sandbox', 'ch_1', 'acct_c', 'USD', 10000, 0, 40, 40)",
            )
            .await;
        assert!(dup.is_err(), "{dup:?}");
    }
}
