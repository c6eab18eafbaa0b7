//! Following one batch's event stream to its summary, through dropped connections and until the
//! user interrupts.
//!
//! Re-opening is always safe: re-sending a BulkRefund with the same batch key re-attaches to the
//! stored batch, and WatchBulkRefund is read-only. Events come with gapless sequences, so
//! re-opening after the last sequence seen (or skipping what was seen, when the request had to
//! be re-sent) hands every event over exactly once.

use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt as _;

use crate::api::pb;
use crate::api::pb::bulk_refund_event::Event as PbEvent;
use crate::api::pb::refund_service_client::RefundServiceClient;
use tonic::service::interceptor::InterceptedService;

pub(crate) type Client = RefundServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Adds `authorization: Bearer <API key>` to every call.
#[derive(Clone)]
pub(crate) struct BearerAuth(pub(super) tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Re-opening attempts in a row before giving up: about half a minute with the back-off below,
/// enough for a service restart.
const MAX_REOPENS: u32 = 10;
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(5);

/// How to (re-)open a batch's stream.
pub(super) enum Open {
    Create(pb::BulkRefundRequest),
    Watch { bulk_id: String },
}

/// What the caller is told while a batch runs.
pub(super) enum Event<'a> {
    Accepted(&'a pb::BulkAccepted),
    Result(Box<pb::BulkJobResult>),
    /// The batch holds a provider's jobs while it is unavailable, or stopped doing so.
    ProviderWaiting(&'a pb::BulkProviderWaiting),
    ProviderWaitEnded(&'a pb::BulkProviderWaitEnded),
    /// The stream broke; it is re-opened after `delay`.
    Reopening {
        why: &'a Status,
        attempt: u32,
        delay: Duration,
    },
}

/// Why following a batch stopped before its summary.
pub(super) enum Halt {
    /// Ctrl-C (or SIGTERM). The batch keeps running on the server; `bulk_id` is `None` when it
    /// was interrupted before the batch was accepted.
    Interrupted {
        bulk_id: Option<String>,
    },
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Halt {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

pub(super) struct Follower {
    client: Client,
    interrupt: watch::Receiver<bool>,
}

impl Follower {
    /// `interrupt` turns `true` when the user asks to stop.
    pub(super) fn new(client: Client, interrupt: watch::Receiver<bool>) -> Self {
        Self { client, interrupt }
    }

    pub(super) async fn get(&mut self, bulk_id: &str) -> Result<pb::BulkRefundBatch, Halt> {
        let request = pb::GetBulkRefundRequest {
            bulk_id: bulk_id.to_owned(),
        };
        let mut client = self.client.clone();
        tokio::select! {
            () = interrupted(&mut self.interrupt) => Err(Halt::Interrupted { bulk_id: Some(bulk_id.to_owned()) }),
            response = client.get_bulk_refund(request) => response
                .map(tonic::Response::into_inner)
                .map_err(|s| Halt::Failed(status_error("GetBulkRefund", &s))),
        }
    }

    /// Follows a batch to its summary, handing each event to `on_event` once. Returns the bulk id
    /// and the summary.
    pub(super) async fn follow(
        &mut self,
        open: Open,
        mut on_event: impl FnMut(Event<'_>) -> anyhow::Result<()>,
    ) -> Result<(String, pb::BulkSummary), Halt> {
        let mut bulk_id = match &open {
            Open::Watch { bulk_id } => Some(bulk_id.clone()),
            Open::Create(_) => None,
        };
        let mut last_sequence = 0;
        // An error on the first call is the server's answer (e.g. INVALID_ARGUMENT), not a lost
        // connection: it is not retried.
        let mut stream = match self.open(&open, bulk_id.as_deref(), 0).await? {
            Ok(stream) => stream,
            Err(status) => return Err(Halt::Failed(status_error(open.rpc(), &status))),
        };
        let mut reopens = 0;
        loop {
            let message = tokio::select! {
                () = interrupted(&mut self.interrupt) => return Err(Halt::Interrupted { bulk_id }),
                message = stream.message() => message,
            };
            let mut lost = match message {
                Ok(Some(event)) => {
                    reopens = 0;
                    // A re-sent BulkRefund streams from the start again.
                    if event.sequence <= last_sequence {
                        continue;
                    }
                    last_sequence = event.sequence;
                    match event.event {
                        Some(PbEvent::Accepted(accepted)) => {
                            bulk_id = Some(accepted.bulk_id.clone());
                            on_event(Event::Accepted(&accepted))?;
                        }
                        Some(PbEvent::Result(result)) => on_event(Event::Result(Box::new(result)))?,
                        Some(PbEvent::ProviderWaiting(wait)) => {
                            on_event(Event::ProviderWaiting(&wait))?
                        }
                        Some(PbEvent::ProviderWaitEnded(end)) => {
                            on_event(Event::ProviderWaitEnded(&end))?
                        }
                        Some(PbEvent::Summary(summary)) => {
                            let bulk_id = bulk_id.ok_or_else(|| {
                                anyhow!("the server sent a summary before accepting the batch")
                            })?;
                            return Ok((bulk_id, summary));
                        }
                        // A keep-alive repeats the last sequence and is skipped above; an event
                        // kind newer than this client is ignored.
                        Some(PbEvent::Progress(_)) | None => {}
                    }
                    continue;
                }
                Ok(None) => Status::unavailable("the stream ended before the batch's summary"),
                Err(status) if transient(&status) => status,
                Err(status) => return Err(Halt::Failed(status_error(open.rpc(), &status))),
            };
            stream = loop {
                reopens += 1;
                if reopens > MAX_REOPENS {
                    return Err(Halt::Failed(status_error(open.rpc(), &lost)));
                }
                let delay = (Duration::from_millis(250) * 2u32.pow(reopens.min(5) - 1))
                    .min(MAX_REOPEN_DELAY);
                on_event(Event::Reopening {
                    why: &lost,
                    attempt: reopens,
                    delay,
                })?;
                tokio::select! {
                    () = interrupted(&mut self.interrupt) => return Err(Halt::Interrupted { bulk_id }),
                    () = tokio::time::sleep(delay) => {}
                }
                match self.open(&open, bulk_id.as_deref(), last_sequence).await? {
                    Ok(stream) => break stream,
                    Err(status) if transient(&status) => lost = status,
                    Err(status) => return Err(Halt::Failed(status_error(open.rpc(), &status))),
                }
            };
        }
    }

    /// Opens the stream: watches after `after` once the bulk id is known, sends the request
    /// (again) otherwise. The outer error is an interruption.
    async fn open(
        &mut self,
        open: &Open,
        bulk_id: Option<&str>,
        after: u64,
    ) -> Result<Result<Streaming<pb::BulkRefundEvent>, Status>, Halt> {
        let mut client = self.client.clone();
        let call = async {
            let watch = |bulk_id: &str| pb::WatchBulkRefundRequest {
                bulk_id: bulk_id.to_owned(),
                after_sequence: after,
            };
            let response = match (bulk_id, open) {
                (Some(bulk_id), _) => client.watch_bulk_refund(watch(bulk_id)).await,
                (None, Open::Watch { bulk_id }) => client.watch_bulk_refund(watch(bulk_id)).await,
                (None, Open::Create(request)) => client.bulk_refund(request.clone()).await,
            };
            response.map(tonic::Response::into_inner)
        };
        tokio::select! {
            () = interrupted(&mut self.interrupt) => Err(Halt::Interrupted { bulk_id: bulk_id.map(str::to_owned) }),
            result = call => Ok(result),
        }
    }
}

impl Open {
    fn rpc(&self) -> &'static str {
        match self {
            Self::Create(_) => "BulkRefund",
            Self::Watch { .. } => "WatchBulkRefund",
        }
    }
}

/// Resolves when the user asks to stop; never, if the signal cannot be watched.
async fn interrupted(interrupt: &mut watch::Receiver<bool>) {
    if interrupt.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Errors of the connection rather than answers of the service: worth re-opening the stream.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

/// A status as an error message: the server's message and code, plus a hint where the fix is a
/// flag of this command.
pub(super) fn status_error(rpc: &str, status: &Status) -> anyhow::Error {
    let mut message = format!("{rpc} failed: {} ({:?})", status.message(), status.code());
    let details = status.get_error_details();
    let reason = details.error_info().map(|i| i.reason.as_str());
    let on_jobs = details
        .bad_request()
        .is_some_and(|b| b.field_violations.iter().any(|v| v.field == "jobs"));
    if reason == Some("IDEMPOTENCY_KEY_REUSED") {
        message.push_str(
            "\nThis batch key was used for different rows: the same file with another \
             --batch-size or --abort-on-error, or another file with the same --idempotency-key. \
             Use the original flags to re-attach, or a new --idempotency-key to start a new run \
             (which refunds its rows again).",
        );
    } else if status.code() == Code::InvalidArgument && on_jobs {
        message.push_str("\nLower --batch-size to the server's limit (its --bulk-max-jobs).");
    }
    anyhow!(message)
}
