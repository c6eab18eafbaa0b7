//! A PostgreSQL database made for one benchmark run and dropped at its end (shared by
//! `bench_bulk` and `bench_db` through `#[path]`).

use anyhow::Context as _;
use sea_orm::ConnectionTrait as _;

/// A database `name` made through the admin URL `admin_url`.
pub struct ScratchDb {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl ScratchDb {
    /// Makes database `name` on the server of `admin_url` (`postgres://…/DB`).
    pub async fn create(admin_url: &str, name: String) -> anyhow::Result<Self> {
        let base = admin_url
            .rsplit_once('/')
            .context("admin URL ends in /DB")?
            .0;
        let admin = sea_orm::Database::connect(admin_url).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    /// Drops it, whoever is still connected.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        let admin = sea_orm::Database::connect(&self.admin_url).await?;
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}
