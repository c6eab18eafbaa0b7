//! `serve`'s connection flags, and `refund-service connections`: accounts' own provider
//! credentials, managed on the database directly (like `keys`), sealed with the master key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{DatabaseArgs, open_store, rfc3339};
use crate::config::ConnectionSettings;
use crate::domain::{ConnectionActor, ConnectionId, ProviderName, parse_account};
use crate::metrics::Metrics;
use crate::providers::connections::{ConnectionAdapters, ProviderDefaults};
use crate::secret::Secret;
use crate::service::{Connections, NewConnection};

/// `serve`'s flags for connections.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// File with the master key (32 bytes as 64 hex digits or base64; `openssl rand -hex 32`)
    /// that seals accounts' connection credentials at rest. Without it, connections can be
    /// neither made nor used; the platform's configured providers work as before.
    #[arg(long, env = "REFUND_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,

    /// The master key before --secrets-key-file, while rotating it: credentials sealed under it
    /// still open until `connections rekey` has resealed them.
    #[arg(
        long,
        env = "REFUND_PREVIOUS_SECRETS_KEY_FILE",
        requires = "secrets_key_file"
    )]
    pub previous_secrets_key_file: Option<PathBuf>,

    /// Comma-separated accounts that may refund through the platform's (configured) provider
    /// credentials when they have no connection of their own. Default: every account.
    #[arg(long, env = "REFUND_PLATFORM_ACCOUNTS", value_delimiter = ',')]
    pub platform_accounts: Option<Vec<String>>,
}

impl ConnectionArgs {
    pub fn into_settings(
        self,
        provider_defaults: Vec<ProviderDefaults>,
    ) -> anyhow::Result<ConnectionSettings> {
        let platform_accounts = self
            .platform_accounts
            .map(|accounts| {
                accounts
                    .iter()
                    .map(|a| a.trim())
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        parse_account(a)
                            .map_err(|e| anyhow::anyhow!("--platform-accounts {a:?}: {e}"))
                    })
                    .collect::<anyhow::Result<BTreeSet<_>>>()
            })
            .transpose()?;
        Ok(ConnectionSettings {
            secrets_key_file: self.secrets_key_file,
            previous_secrets_key_file: self.previous_secrets_key_file,
            platform_accounts,
            provider_defaults,
        })
    }
}

/// The master key files of a `connections` command.
#[derive(Debug, Args)]
pub struct KeyFileArgs {
    /// The master key file, as given to `serve`.
    #[arg(long, env = "REFUND_SECRETS_KEY_FILE")]
    pub secrets_key_file: PathBuf,
    /// The previous master key, while rotating (for `rekey`).
    #[arg(long, env = "REFUND_PREVIOUS_SECRETS_KEY_FILE")]
    pub previous_secrets_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Give an account its own credentials for a provider. Prints the connection's id.
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        keys: KeyFileArgs,
        #[arg(long)]
        account: String,
        /// A provider that takes connections, e.g. stripe or mercadopago.
        #[arg(long)]
        provider: String,
        /// File holding the provider's API credential (Stripe secret key, Mercado Pago access
        /// token, ...).
        #[arg(long, visible_alias = "secret-key-file")]
        credential_file: PathBuf,
        /// File holding the secret that signs the provider's webhooks to this connection
        /// (delivered to /webhooks/PROVIDER/CONNECTION_ID).
        #[arg(long)]
        webhook_secret_file: Option<PathBuf>,
        /// Where the provider's API is, when not where the server's --PROVIDER-api-base says.
        #[arg(long)]
        api_base: Option<String>,
        /// A setting of the provider's own, e.g. `merchant-account=ShopEU` for Adyen; repeatable.
        #[arg(long = "setting", value_name = "WORD=VALUE", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
    },
    /// List live connections (never their credentials).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
    },
    /// Replace a connection's credential (and webhook signing secret, when given).
    Rotate {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        keys: KeyFileArgs,
        #[arg(long)]
        account: String,
        /// The connection (`conn_…`).
        id: String,
        #[arg(long, visible_alias = "secret-key-file")]
        credential_file: PathBuf,
        #[arg(long)]
        webhook_secret_file: Option<PathBuf>,
    },
    /// Delete a connection: no new refund goes through it. Refused while refunds made through
    /// it are unsettled.
    Delete {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        account: String,
        id: String,
    },
    /// Reseal every connection under --secrets-key-file, opening them with it or with
    /// --previous-secrets-key-file: the last step of rotating the master key.
    Rekey {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        keys: KeyFileArgs,
    },
}

const CLI: ConnectionActor<'static> = ConnectionActor {
    source: "cli",
    key: None,
    request_id: None,
};

pub async fn run(command: ConnectionsCommand) -> anyhow::Result<()> {
    let (database, keys) = match &command {
        ConnectionsCommand::Create { database, keys, .. }
        | ConnectionsCommand::Rotate { database, keys, .. }
        | ConnectionsCommand::Rekey { database, keys } => (database, Some(keys)),
        ConnectionsCommand::List { database, .. } | ConnectionsCommand::Delete { database, .. } => {
            (database, None)
        }
    };
    let connections = match keys {
        Some(keys) => {
            let vault = ConnectionSettings {
                secrets_key_file: Some(keys.secrets_key_file.clone()),
                previous_secrets_key_file: keys.previous_secrets_key_file.clone(),
                ..ConnectionSettings::default()
            }
            .vault()?;
            Connections::new(vault, adapters(), None)
        }
        None => Connections::new(None, adapters(), None),
    };
    let store = open_store(database).await?;
    match command {
        ConnectionsCommand::Create {
            account,
            provider,
            credential_file,
            webhook_secret_file,
            api_base,
            settings,
            ..
        } => {
            let account = parse_account(&account).map_err(anyhow::Error::msg)?;
            let provider =
                ProviderName::parse(&provider).map_err(|e| anyhow::anyhow!("--provider: {e}"))?;
            let new = NewConnection {
                provider,
                credential: read_secret(&credential_file, "--credential-file")?,
                webhook_secret: webhook_secret_file
                    .map(|p| read_secret(&p, "--webhook-secret-file"))
                    .transpose()?,
                api_base,
                settings: settings.into_iter().collect(),
            };
            let c = connections
                .create(&store, &account, new, CLI)
                .await
                .context("cannot create the connection")?;
            println!(
                "created {} for account {} at {}",
                c.id,
                c.account.as_str(),
                c.provider
            );
            if c.webhooks_enabled {
                println!("its webhooks go to /webhooks/{}/{}", c.provider, c.id);
            }
        }
        ConnectionsCommand::List { account, .. } => {
            let account = account
                .map(|a| parse_account(&a))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let list = connections
                .list(&store, account.as_ref())
                .await
                .context("cannot list connections")?;
            println!("id\taccount\tprovider\twebhooks\tcreated\trotated");
            for c in list {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    c.id,
                    c.account.as_str(),
                    c.provider,
                    if c.webhooks_enabled { "yes" } else { "no" },
                    rfc3339(c.created_at),
                    rfc3339(c.rotated_at),
                );
            }
        }
        ConnectionsCommand::Rotate {
            account,
            id,
            credential_file,
            webhook_secret_file,
            ..
        } => {
            let account = parse_account(&account).map_err(anyhow::Error::msg)?;
            let id = connection_id(&id)?;
            let c = connections
                .rotate(
                    &store,
                    &account,
                    &id,
                    read_secret(&credential_file, "--credential-file")?,
                    webhook_secret_file
                        .map(|p| read_secret(&p, "--webhook-secret-file"))
                        .transpose()?,
                    CLI,
                )
                .await
                .context("cannot rotate the connection")?;
            println!("rotated {}", c.id);
        }
        ConnectionsCommand::Delete { account, id, .. } => {
            let account = parse_account(&account).map_err(anyhow::Error::msg)?;
            let id = connection_id(&id)?;
            connections
                .delete(&store, &account, &id, CLI)
                .await
                .context("cannot delete the connection")?;
            println!("deleted {id}");
        }
        ConnectionsCommand::Rekey { .. } => {
            let n = connections
                .rekey(&store)
                .await
                .context("cannot reseal the connections")?;
            println!("resealed {n} connection(s) under the current master key");
        }
    }
    store.close().await.ok();
    Ok(())
}

/// Adapters are built only to check a new connection's settings; the CLI calls no provider.
fn adapters() -> ConnectionAdapters {
    ConnectionAdapters::new(
        Vec::new(),
        Arc::new(Metrics::new()),
        crate::providers::traffic::BudgetShare::alone(),
    )
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(w, v)| (w.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{s:?} is not WORD=VALUE"))
}

fn connection_id(id: &str) -> anyhow::Result<ConnectionId> {
    ConnectionId::parse(id).ok_or_else(|| anyhow::anyhow!("{id:?} is not a connection id (conn_…)"))
}

/// A secret from a file, without surrounding whitespace; errors name the file, never its content.
fn read_secret(path: &Path, flag: &str) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {flag} {}", path.display()))?;
    Ok(Secret::opaque(text.trim().to_owned()))
}
