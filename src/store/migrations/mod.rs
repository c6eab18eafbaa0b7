//! Schema migrations, one per file, applied in order at start-up and by `refund-service migrate`.

use sea_orm_migration::prelude::*;

mod m20261123_000001_initial;
mod m20261123_000002_bulk;
mod m20261123_000003_webhooks;
mod m20261123_000004_api_keys;
mod m20261123_000005_approval;
mod m20261123_000006_audit;
mod m20261123_000007_one_history;
mod m20261202_000008_payment_balance_per_payment;
mod m20261202_000009_refunds_by_key;
mod m20261203_000010_provider_waits;
mod m20261203_000011_connections;
mod m20261204_000012_replicas;
mod m20261207_000013_events;
mod m20261207_000014_webhook_endpoints;
mod m20261207_000015_bulks_by_account;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_initial::Migration),
            Box::new(m20261123_000002_bulk::Migration),
            Box::new(m20261123_000003_webhooks::Migration),
            Box::new(m20261123_000004_api_keys::Migration),
            Box::new(m20261123_000005_approval::Migration),
            Box::new(m20261123_000006_audit::Migration),
            Box::new(m20261123_000007_one_history::Migration),
            Box::new(m20261202_000008_payment_balance_per_payment::Migration),
            Box::new(m20261202_000009_refunds_by_key::Migration),
            Box::new(m20261203_000010_provider_waits::Migration),
            Box::new(m20261203_000011_connections::Migration),
            Box::new(m20261204_000012_replicas::Migration),
            Box::new(m20261207_000013_events::Migration),
            Box::new(m20261207_000014_webhook_endpoints::Migration),
            Box::new(m20261207_000015_bulks_by_account::Migration),
        ]
    }
}
