//! ListEvents and WatchEvents: an account's event log, paged newest first, or followed from a
//! cursor (the stored events first, then live ones) with no gaps and no duplicates.
//!
//! A follower reads the log, never a channel: it is woken by this process's commits
//! (`Store::events_appended`), by another replica's notice, and by a poll in case a notice was
//! lost — and whatever woke it, it reads everything after its cursor, in sequence order.

use tokio::sync::mpsc;

use super::page::{decode_token, encode_token, page_size};
use super::{RefundService, internal};
use crate::domain::{AccountId, Event, EventType, RefundError, Timestamp, Violations};
use crate::store::EventFilter;

pub const DEFAULT_EVENT_PAGE: u32 = 50;
pub const MAX_EVENT_PAGE: u32 = 500;
/// Events read per round trip while a follower catches up.
const FOLLOW_BATCH: u64 = 500;
/// Events prune in slices of this many, one statement each.
const PRUNE_SLICE: u64 = 5_000;

/// A ListEvents request, unvalidated.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub types: Vec<String>,
    pub resource_id: String,
    pub created_from: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub page_size: i32,
    pub page_token: String,
}

#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub next_page_token: String,
}

impl RefundService {
    pub async fn list_events(
        &self,
        account: &AccountId,
        q: EventQuery,
    ) -> Result<EventPage, RefundError> {
        let mut v = Violations::default();
        let size = page_size(q.page_size, DEFAULT_EVENT_PAGE, MAX_EVENT_PAGE, &mut v);
        let types = event_types("types", &q.types, &mut v);
        if q.resource_id.len() > 128 {
            v.push("resource_id", "resource_id is at most 128 characters");
        }
        if let (Some(from), Some(before)) = (q.created_from, q.created_before)
            && from >= before
        {
            v.push(
                "created_before",
                "created_before must be after created_from",
            );
        }
        let filters = format!(
            "{}|{}|{}|{}|{}",
            account.as_str(),
            q.types.join(","),
            q.resource_id,
            q.created_from.map_or(0, Timestamp::as_micros),
            q.created_before.map_or(0, Timestamp::as_micros),
        );
        let before = decode_token(&q.page_token, "events", &filters, &mut v).and_then(|cursor| {
            let parsed = cursor.parse::<u64>().ok();
            if parsed.is_none() {
                v.push(
                    "page_token",
                    "page_token is not a token this service issued",
                );
            }
            parsed
        });
        let filter = v
            .into_result(|| {
                Some(EventFilter {
                    types,
                    resource_id: (!q.resource_id.is_empty()).then_some(q.resource_id),
                    created_from: q.created_from,
                    created_before: q.created_before,
                })
            })
            .map_err(RefundError::InvalidArgument)?;
        let mut events = self
            .store()
            .list_events(account, &filter, before, u64::from(size) + 1)
            .await
            .map_err(internal)?;
        let next_page_token = if events.len() > size as usize {
            events.truncate(size as usize);
            events
                .last()
                .map(|e| encode_token("events", &e.sequence.to_string(), &filters))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(EventPage {
            events,
            next_page_token,
        })
    }

    /// Follows `account`'s events after sequence `after` (0: from the oldest kept), only of
    /// `types` if any are given. A cursor whose next events were pruned already (older than the
    /// retention) is refused with `EVENTS_EXPIRED`: following it would skip them silently.
    pub async fn watch_events(
        &self,
        account: &AccountId,
        after: u64,
        types: &[String],
    ) -> Result<mpsc::Receiver<Result<Event, RefundError>>, RefundError> {
        let mut v = Violations::default();
        let types = event_types("types", types, &mut v);
        v.into_result(|| Some(()))
            .map_err(RefundError::InvalidArgument)?;
        if after > 0 {
            let oldest = self
                .store()
                .oldest_event_sequence(account)
                .await
                .map_err(internal)?;
            if let Some(oldest) = oldest
                && oldest > after.saturating_add(1)
            {
                return Err(RefundError::NotSetUp {
                    reason: "EVENTS_EXPIRED",
                    message: format!(
                        "events after sequence {after} up to {} are past their retention; \
                         resume from {} or later (ListEvents shows what is kept)",
                        oldest - 1,
                        oldest - 1
                    ),
                });
            }
        }
        let filter = EventFilter {
            types,
            ..EventFilter::default()
        };
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        let account = account.clone();
        tokio::spawn(async move { service.follow_events(account, filter, after, tx).await });
        Ok(rx)
    }

    async fn follow_events(
        &self,
        account: AccountId,
        filter: EventFilter,
        mut after: u64,
        tx: mpsc::Sender<Result<Event, RefundError>>,
    ) {
        let poll = self.config().watch_poll_interval;
        let mut local = self.store().events_appended();
        let mut remote = self.inner.remote_events.subscribe();
        loop {
            // Marked seen before the read, so an append committed after it still wakes us.
            local.borrow_and_update();
            remote.borrow_and_update();
            loop {
                let events = match self
                    .store()
                    .events_after(&account, &filter, after, FOLLOW_BATCH)
                    .await
                {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                let full = events.len() as u64 == FOLLOW_BATCH;
                for event in events {
                    after = event.sequence;
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                _ = local.changed() => {}
                _ = remote.changed() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Deletes events older than the retention, a slice at a time. Returns how many.
    pub async fn prune_events(&self) -> Result<u64, RefundError> {
        let cutoff = Timestamp::now().saturating_sub(self.config().event_retention);
        let mut pruned = 0;
        loop {
            let n = self
                .store()
                .prune_events(cutoff, PRUNE_SLICE)
                .await
                .map_err(internal)?;
            pruned += n;
            if n < PRUNE_SLICE {
                return Ok(pruned);
            }
        }
    }
}

/// Parses the event type names of the repeated field `field`, recording each unknown one.
pub(super) fn event_types(field: &str, names: &[String], v: &mut Violations) -> Vec<EventType> {
    let mut types = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match EventType::parse(name) {
            Some(t) => types.push(t),
            None => v.push(
                format!("{field}[{i}]"),
                format!(
                    "unknown event type {name:?}; known: {}",
                    EventType::ALL.map(EventType::as_str).join(", ")
                ),
            ),
        }
    }
    types
}
