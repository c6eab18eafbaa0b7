//! Bulk refunds: accepting a batch, reading and canceling it, and streaming its events.
//!
//! A batch is stored with all its jobs before anything runs; the jobs are then run by the bulk
//! runner ([`super::bulk_runner`]) of whichever replica claims them. A stream of a batch is a
//! reader of the batch's stored events: it does not own the batch, so a client that goes away
//! changes nothing, and a client that comes back reads from where it left off.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{RefundService, internal, page};
use crate::domain::{
    AccountId, Bulk, BulkEvent, BulkId, BulkState, ItemResult, ItemStatus, NewBulk, RefundError,
    SequencedEvent, Timestamp, Violations,
};
use crate::store::CreateBulkOutcome;

/// Limits and pacing of bulk refunds.
#[derive(Debug, Clone)]
pub struct BulkConfig {
    /// Most jobs one BulkRefund request may carry.
    pub max_jobs: u32,
    /// Jobs in flight per batch when the request does not say.
    pub default_concurrency: u32,
    /// Upper bound of a request's `max_concurrency`.
    pub max_concurrency: u32,
    /// How long a claimed job stays with its worker without a heartbeat. A worker that dies
    /// holds its jobs this long before another worker takes them over.
    pub lease: Duration,
    /// How often the runner looks for batches and events are polled when no in-process
    /// notification arrives (another replica did the work).
    pub poll_interval: Duration,
    /// Longest a batch holds a provider's jobs while the provider is unavailable (circuit open,
    /// or a long Retry-After); past it the held jobs fail with a retryable error.
    pub max_provider_wait: Duration,
    /// A batch's stream that has sent nothing for this long sends its progress counts, so that
    /// proxies and load balancers that cut idle connections (gRPC-Web over HTTP/1.1 has no
    /// HTTP/2 pings) keep it open.
    pub stream_keepalive: Duration,
}

impl Default for BulkConfig {
    fn default() -> Self {
        Self {
            max_jobs: 10_000,
            default_concurrency: 32,
            max_concurrency: 256,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            max_provider_wait: Duration::from_secs(15 * 60),
            stream_keepalive: Duration::from_secs(15),
        }
    }
}

const ITEMS_TOKEN_KIND: &str = "i1";
const BULKS_TOKEN_KIND: &str = "b1";
const DEFAULT_BULKS_PAGE: u32 = 20;
const MAX_BULKS_PAGE: u32 = 100;
const DEFAULT_ITEMS_PAGE: u32 = 100;
const MAX_ITEMS_PAGE: u32 = 1000;

/// Events read from the store per query while streaming.
const EVENT_PAGE: u64 = 256;
/// How long a stream waits after being woken before it reads, to read several events at once.
const EVENT_COALESCE: Duration = Duration::from_millis(10);

impl RefundService {
    /// Stores a batch and wakes the runner. Returns the batch and whether it is new (`false`:
    /// the same batch was submitted before with the same key).
    pub async fn create_bulk(
        &self,
        account: &AccountId,
        mut new: NewBulk,
    ) -> Result<(Bulk, bool), RefundError> {
        let cfg = &self.config().bulk;
        if new.jobs.is_empty() {
            return Err(RefundError::invalid(
                "jobs",
                "a batch needs at least one job",
            ));
        }
        if new.jobs.len() > cfg.max_jobs as usize {
            return Err(RefundError::invalid(
                "jobs",
                format!(
                    "a batch may have at most {} jobs (the configured limit); got {}. Split it into several batches",
                    cfg.max_jobs,
                    new.jobs.len()
                ),
            ));
        }
        new.max_concurrency = match new.max_concurrency {
            0 => cfg.default_concurrency,
            n => n.min(cfg.max_concurrency),
        };
        let outcome = self
            .store()
            .create_bulk(
                account,
                &new,
                self.providers().default_name(),
                Timestamp::now(),
                super::context::request_id().as_deref(),
            )
            .await
            .map_err(internal)?;
        match outcome {
            CreateBulkOutcome::Created(bulk) => {
                tracing::info!(bulk_id = %bulk.id, total = bulk.counts.total, "bulk refund accepted");
                self.bulk_work_changed();
                self.events_changed();
                Ok((bulk, true))
            }
            CreateBulkOutcome::Existing(bulk) => Ok((bulk, false)),
            CreateBulkOutcome::KeyReused => Err(RefundError::IdempotencyKeyReused {
                key: new
                    .idempotency_key
                    .map(|k| k.as_str().to_owned())
                    .unwrap_or_default(),
            }),
        }
    }

    pub async fn get_bulk(&self, account: &AccountId, id: &BulkId) -> Result<Bulk, RefundError> {
        self.store()
            .get_bulk(account, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| RefundError::BulkNotFound {
                id: id.as_str().to_owned(),
            })
    }

    /// The account's batches, newest first, optionally only those in `state`.
    pub async fn list_bulks(
        &self,
        account: &AccountId,
        state: Option<BulkState>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Bulk>, String), RefundError> {
        let mut v = Violations::default();
        let limit = page::page_size(page_size, DEFAULT_BULKS_PAGE, MAX_BULKS_PAGE, &mut v);
        let filters = state.map_or("all", BulkState::as_str);
        let before =
            page::decode_token(page_token, BULKS_TOKEN_KIND, filters, &mut v).and_then(|cursor| {
                let id = BulkId::parse(&cursor);
                if id.is_none() {
                    v.push(
                        "page_token",
                        "page_token is not a token this service issued",
                    );
                }
                id
            });
        v.into_result(|| Some(()))
            .map_err(RefundError::InvalidArgument)?;
        let mut bulks = self
            .store()
            .list_bulks(account, state, before.as_ref(), u64::from(limit) + 1)
            .await
            .map_err(internal)?;
        let next = if bulks.len() > limit as usize {
            bulks.truncate(limit as usize);
            bulks
                .last()
                .map(|b| page::encode_token(BULKS_TOKEN_KIND, b.id.as_str(), filters))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((bulks, next))
    }

    /// Stops dispatching the batch's remaining jobs; they end CANCELED once the jobs in flight
    /// have finished. Canceling a finished batch changes nothing.
    pub async fn cancel_bulk(
        &self,
        account: &AccountId,
        actor: Option<&crate::domain::ApiKeyId>,
        id: &BulkId,
    ) -> Result<Bulk, RefundError> {
        let bulk = self
            .store()
            .cancel_bulk(account, id, actor, super::context::request_id().as_deref())
            .await
            .map_err(internal)?
            .ok_or_else(|| RefundError::BulkNotFound {
                id: id.as_str().to_owned(),
            })?;
        self.bulk_work_changed();
        Ok(bulk)
    }

    /// One page of a batch's jobs in request order, optionally only those in `status`; the
    /// second value is the next page's token, empty on the last page.
    pub async fn list_bulk_items(
        &self,
        account: &AccountId,
        id: &BulkId,
        status: Option<ItemStatus>,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<ItemResult>, String), RefundError> {
        let mut v = Violations::default();
        let limit = page::page_size(page_size, DEFAULT_ITEMS_PAGE, MAX_ITEMS_PAGE, &mut v);
        let filters = status.map_or("all", ItemStatus::as_str);
        let after =
            page::decode_token(page_token, ITEMS_TOKEN_KIND, filters, &mut v).and_then(|cursor| {
                let index = cursor.parse::<u32>().ok();
                if index.is_none() {
                    v.push(
                        "page_token",
                        "page_token is not a token this service issued",
                    );
                }
                index
            });
        v.into_result(|| Some(()))
            .map_err(RefundError::InvalidArgument)?;
        let bulk = self.get_bulk(account, id).await?;
        let mut items = self
            .store()
            .list_items(&bulk.id, status, after, u64::from(limit) + 1)
            .await
            .map_err(internal)?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items
                .last()
                .map(|i| page::encode_token(ITEMS_TOKEN_KIND, &i.index.to_string(), filters))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((items, next))
    }

    /// Streams the batch's events after `after`: stored ones first, then new ones as they are
    /// written (by this replica or another), ending after the summary. The stream stops when
    /// the receiver is dropped.
    pub async fn watch_bulk(
        &self,
        account: &AccountId,
        id: &BulkId,
        after: u64,
    ) -> Result<mpsc::Receiver<Result<SequencedEvent, RefundError>>, RefundError> {
        let bulk = self.get_bulk(account, id).await?;
        let (tx, rx) = mpsc::channel(EVENT_PAGE as usize);
        let service = self.clone();
        tokio::spawn(async move { service.pump_events(bulk.id, bulk.account, after, tx).await });
        Ok(rx)
    }

    async fn pump_events(
        &self,
        bulk_id: BulkId,
        account: AccountId,
        mut after: u64,
        tx: mpsc::Sender<Result<SequencedEvent, RefundError>>,
    ) {
        let poll = self.config().bulk.poll_interval;
        let keepalive = self.config().bulk.stream_keepalive;
        let mut changed = self.inner.bulk_events.subscribe();
        let mut last_sent = tokio::time::Instant::now();
        loop {
            // Mark the current version seen before reading, so an event written after the read
            // still wakes us.
            changed.borrow_and_update();
            let events = match self.store().bulk_events(&bulk_id, after, EVENT_PAGE).await {
                Ok(events) => events,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            let full_page = events.len() as u64 == EVENT_PAGE;
            for event in events {
                after = event.sequence;
                let last = matches!(event.event, BulkEvent::Summary { .. });
                if tx.send(Ok(event)).await.is_err() {
                    return; // the client went away; the batch goes on
                }
                last_sent = tokio::time::Instant::now();
                if last {
                    return;
                }
            }
            if full_page {
                continue;
            }
            tokio::select! {
                () = tx.closed() => return,
                _ = changed.changed() => {
                    // Let a few more results land, then read them in one query: a batch writes
                    // hundreds of events a second and each read competes with its writes.
                    tokio::time::sleep(EVENT_COALESCE).await;
                }
                () = tokio::time::sleep(poll) => {}
                () = tokio::time::sleep_until(last_sent + keepalive) => {
                    match self.store().get_bulk(&account, &bulk_id).await {
                        Ok(Some(bulk)) => {
                            let progress = SequencedEvent {
                                sequence: after,
                                event: BulkEvent::Progress {
                                    counts: bulk.counts,
                                    state: bulk.state,
                                },
                            };
                            if tx.send(Ok(progress)).await.is_err() {
                                return;
                            }
                        }
                        // A failed read only delays the keep-alive: the stream is still good.
                        Ok(None) => {}
                        Err(e) => tracing::warn!(bulk_id = %bulk_id, error = ?anyhow::Error::new(e), "cannot read a batch's progress for its stream's keep-alive"),
                    }
                    last_sent = tokio::time::Instant::now();
                }
            }
        }
    }
}
