//! `refund-service webhooks`: an account's webhook endpoints and their deliveries, managed over
//! gRPC with an API key that has the webhooks:manage scope (the account is the key's).

use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};

use crate::api::pb;
use crate::bulk_cli::{Client, DEFAULT_SERVER, connect};

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// The service's gRPC address.
    #[arg(long, env = "REFUND_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,

    /// API key with the webhooks:manage scope (sent as `authorization: Bearer`).
    #[arg(long, env = "REFUND_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,

    #[command(subcommand)]
    pub command: WebhooksCommand,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Make an endpoint; prints it and its signing secret (the last line, shown this once).
    Create {
        /// Where to POST the events (https, public).
        #[arg(long)]
        url: String,
        /// Comma-separated event types (e.g. refund.succeeded,refund.failed); default: all.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// The account's endpoints.
    List,
    /// Change an endpoint: its URL, event types or description, or enable or disable it.
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        /// Comma-separated event types; `all` for every type.
        #[arg(long)]
        events: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Delete an endpoint and its deliveries.
    Delete { id: String },
    /// A new signing secret (printed on the last line); the old one keeps signing for the
    /// overlap.
    RotateSecret {
        id: String,
        /// How long the old secret keeps signing beside the new one (e.g. 24h, 0s).
        #[arg(long, value_parser = humantime::parse_duration)]
        overlap: Option<Duration>,
    },
    /// Deliveries, newest first.
    Deliveries {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only PENDING, DELIVERED or FAILED ones.
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i32,
    },
    /// Send a delivery again now.
    Retry { delivery_id: String },
    /// Send an endpoint every kept event after a sequence again.
    Replay {
        endpoint_id: String,
        /// Events with a larger sequence are sent; 0 sends every kept event.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    let key = args.api_key.ok_or_else(|| {
        anyhow!("give an API key with webhooks:manage: --api-key or REFUND_API_KEY")
    })?;
    let mut client = connect(&args.server, &key, 1).await?;
    match args.command {
        WebhooksCommand::Create {
            url,
            events,
            description,
        } => {
            let created = call(
                "CreateWebhookEndpoint",
                client.create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                    url,
                    event_types: events,
                    description,
                }),
            )
            .await?;
            print_endpoint(created.endpoint.as_ref());
            println!("secret (shown once): ");
            println!("{}", created.secret);
        }
        WebhooksCommand::List => {
            let listed = call(
                "ListWebhookEndpoints",
                client.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}),
            )
            .await?;
            if listed.endpoints.is_empty() {
                println!("no webhook endpoints");
            }
            for e in &listed.endpoints {
                print_endpoint(Some(e));
                println!();
            }
        }
        WebhooksCommand::Update {
            id,
            url,
            events,
            description,
            enable,
            disable,
        } => {
            let event_types = events.map(|e| pb::EventTypes {
                types: if e.trim() == "all" {
                    Vec::new()
                } else {
                    e.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect()
                },
            });
            let enabled = (enable || disable).then_some(enable);
            let updated = call(
                "UpdateWebhookEndpoint",
                client.update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
                    id,
                    url,
                    event_types,
                    description,
                    enabled,
                }),
            )
            .await?;
            print_endpoint(Some(&updated));
        }
        WebhooksCommand::Delete { id } => {
            call(
                "DeleteWebhookEndpoint",
                client.delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest { id: id.clone() }),
            )
            .await?;
            println!("deleted {id}");
        }
        WebhooksCommand::RotateSecret { id, overlap } => {
            let overlap = overlap
                .map(|d| {
                    prost_types::Duration::try_from(d).map_err(|_| anyhow!("--overlap is too long"))
                })
                .transpose()?;
            let rotated = call(
                "RotateWebhookSecret",
                client.rotate_webhook_secret(pb::RotateWebhookSecretRequest { id, overlap }),
            )
            .await?;
            print_endpoint(rotated.endpoint.as_ref());
            println!("secret (shown once): ");
            println!("{}", rotated.secret);
        }
        WebhooksCommand::Deliveries {
            endpoint,
            status,
            limit,
        } => deliveries(&mut client, endpoint, status, limit).await?,
        WebhooksCommand::Retry { delivery_id } => {
            let d = call(
                "RetryWebhookDelivery",
                client.retry_webhook_delivery(pb::RetryWebhookDeliveryRequest { id: delivery_id }),
            )
            .await?;
            print_delivery(&d);
        }
        WebhooksCommand::Replay { endpoint_id, after } => {
            let replayed = call(
                "ReplayWebhookEvents",
                client.replay_webhook_events(pb::ReplayWebhookEventsRequest {
                    endpoint_id,
                    after_sequence: after,
                }),
            )
            .await?;
            println!(
                "replaying the events after sequence {after}: {} deliveries due again now, the \
                 rest made within a moment",
                replayed.rearmed
            );
        }
    }
    Ok(())
}

async fn deliveries(
    client: &mut Client,
    endpoint: Option<String>,
    status: Option<String>,
    limit: i32,
) -> anyhow::Result<()> {
    let status = match status.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None => pb::WebhookDeliveryStatus::Unspecified,
        Some("PENDING") => pb::WebhookDeliveryStatus::Pending,
        Some("DELIVERED") => pb::WebhookDeliveryStatus::Delivered,
        Some("FAILED") => pb::WebhookDeliveryStatus::Failed,
        Some(other) => {
            return Err(anyhow!(
                "--status {other:?}: one of PENDING, DELIVERED, FAILED"
            ));
        }
    };
    let listed = call(
        "ListWebhookDeliveries",
        client.list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            endpoint_id: endpoint.unwrap_or_default(),
            status: status.into(),
            page_size: limit,
            ..Default::default()
        }),
    )
    .await?;
    if listed.deliveries.is_empty() {
        println!("no deliveries");
    }
    for d in &listed.deliveries {
        print_delivery(d);
    }
    Ok(())
}

async fn call<T>(
    rpc: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    call.await
        .map(tonic::Response::into_inner)
        .map_err(|s| anyhow!("{rpc} failed: {} ({:?})", s.message(), s.code()))
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.map(|t| {
        crate::domain::rfc3339(crate::domain::Timestamp::from_micros(
            t.seconds
                .saturating_mul(1_000_000)
                .saturating_add(i64::from(t.nanos / 1_000)),
        ))
    })
    .unwrap_or_else(|| "-".to_owned())
}

fn print_endpoint(e: Option<&pb::WebhookEndpoint>) {
    let Some(e) = e else { return };
    println!("{}  {}", e.id, e.url);
    println!(
        "  events: {}",
        if e.event_types.is_empty() {
            "all".to_owned()
        } else {
            e.event_types.join(",")
        }
    );
    if !e.description.is_empty() {
        println!("  description: {}", e.description);
    }
    let state = if e.enabled { "enabled" } else { "disabled" };
    if e.disabled_reason.is_empty() {
        println!("  {state}");
    } else {
        println!("  {state}: {}", e.disabled_reason);
    }
    if e.failing_since.is_some() {
        println!("  failing since {}", time(e.failing_since.as_ref()));
    }
    if e.previous_secret_expires_at.is_some() {
        println!(
            "  previous secret signs until {}",
            time(e.previous_secret_expires_at.as_ref())
        );
    }
    println!(
        "  cursor: {}  created {}",
        e.cursor,
        time(e.created_at.as_ref())
    );
}

fn print_delivery(d: &pb::WebhookDelivery) {
    let status = d
        .status()
        .as_str_name()
        .trim_start_matches("WEBHOOK_DELIVERY_STATUS_");
    let code = if d.last_status_code == 0 {
        "-".to_owned()
    } else {
        d.last_status_code.to_string()
    };
    println!(
        "{}  {status:<9}  {}  {} #{}  attempts {}  last {code}{}{}",
        d.id,
        d.endpoint_id,
        d.event_type,
        d.event_sequence,
        d.attempts,
        if d.last_error.is_empty() { "" } else { "  " },
        d.last_error,
    );
}
