//! How the inbox and the stream stand: who owns the inbox, counts (in all and per stream), lag,
//! what per-aggregate order holds back and what is quarantined; and each stream's consumer
//! group, or which of stream and group is missing. (The outbox's backlog is
//! [`super::OutboxAdmin::status`].)

use super::{Admin, AdminResult};
use crate::event::EventStatus;
use crate::store::{InboxStore, ParkedSummary, QuarantineSummary, StatusCounts};
use crate::transport::{GroupStats, Transport, TransportError};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The inbox at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxStatus {
    /// The consumer group that owns the inbox table; `None` until a consumer has started on it.
    pub owner: Option<String>,
    /// Rows in each status.
    pub counts: StatusCounts,
    /// Rows in each status per stream they were read from, ordered by stream; `None` holds the
    /// rows that record no stream (stored before eventflow recorded it, or by another writer).
    pub by_stream: Vec<(Option<String>, StatusCounts)>,
    /// Aggregates parked behind a dead letter (per-aggregate order), and the oldest event
    /// waiting behind one.
    pub parked: ParkedSummary,
    /// Stream entries that did not parse into events, replayed or not.
    pub quarantine: QuarantineSummary,
    /// `received_at` of the oldest pending row.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// `received_at` of the oldest failed row (waiting for a retry).
    pub oldest_failed: Option<DateTime<Utc>>,
    /// When this was read, by the admin's clock.
    pub now: DateTime<Utc>,
}

impl InboxStatus {
    /// How long the oldest pending row has waited: how far behind the workers are.
    pub fn pending_lag(&self) -> Option<Duration> {
        self.oldest_pending.map(|at| age(self.now, at))
    }

    /// How long the oldest failed row has been in the inbox.
    pub fn failed_lag(&self) -> Option<Duration> {
        self.oldest_failed.map(|at| age(self.now, at))
    }

    /// How long the oldest event waiting behind a parked aggregate's dead letter has been in
    /// the inbox: how long an operator has left it parked, at least.
    pub fn parked_lag(&self) -> Option<Duration> {
        self.parked.oldest_waiting.map(|at| age(self.now, at))
    }

    /// How long the oldest quarantined entry not replayed yet has waited for an operator.
    pub fn quarantine_lag(&self) -> Option<Duration> {
        self.quarantine.oldest_waiting.map(|at| age(self.now, at))
    }
}

/// `now - then`, zero when `then` is ahead (another machine's clock).
pub(super) fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

impl<S: InboxStore> Admin<S> {
    /// The inbox's owner, row counts by status (in all and per stream), the age of the oldest
    /// pending and failed rows, the parked aggregates and the quarantined entries. Several reads, not one snapshot: on
    /// a busy inbox the totals and the per-stream counts may differ by the rows that moved
    /// in between.
    ///
    /// ```
    /// # use eventflow::transport::{MemoryStream, Transport};
    /// # use eventflow::{admin::Admin, Event, HandlerError, HandlerResult};
    /// # use eventflow::{InboxConsumer, SqliteStore};
    /// # use std::{sync::Arc, time::Duration};
    /// # let store = Arc::new(SqliteStore::open_in_memory()?);
    /// # let stream = MemoryStream::new();
    /// # let handle = InboxConsumer::builder().transport(stream.clone()).store(store.clone())
    /// #     .stream("orders").group("billing")
    /// #     .handler(|_tx, row| -> HandlerResult {
    /// #         if row.event.event_id == "e-1" { return Err(HandlerError::give_up("bad payload")); }
    /// #         Ok(())
    /// #     })
    /// #     .build()?.start()?;
    /// # for id in ["e-1", "e-2"] {
    /// #     let event = Event::new("OrderCreated", eventflow::uuid::Uuid::new_v4(), serde_json::json!({}))
    /// #         .with_event_id(id);
    /// #     stream.publish("orders", event.to_entry_fields())?;
    /// # }
    /// # stream.publish("orders", vec![("data".to_string(), b"{oops".to_vec())])?;
    /// # handle.wait_idle(Duration::from_secs(10))?;
    /// # handle.shutdown(Duration::from_secs(10))?;
    /// // e-1 was dead-lettered (its handler gave up), e-2 processed, and one entry quarantined.
    /// let admin = Admin::new(store);
    /// use eventflow::EventStatus;
    ///
    /// let status = admin.inbox_status()?;
    /// assert_eq!(status.counts.get(EventStatus::Processed), 1);
    /// assert_eq!(status.counts.get(EventStatus::DeadLetter), 1);
    /// assert_eq!(status.quarantine.waiting, 1);
    /// if let Some(lag) = status.pending_lag() {
    ///     println!("the oldest pending row waits for {lag:?}");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inbox_status(&self) -> AdminResult<InboxStatus> {
        Ok(InboxStatus {
            owner: self.store.find_owner()?,
            counts: self.store.count_by_status()?,
            by_stream: self.store.count_by_stream()?,
            parked: self.store.parked_summary()?,
            quarantine: self.store.quarantine_summary()?,
            oldest_pending: self.store.oldest_received(EventStatus::Pending)?,
            oldest_failed: self.store.oldest_received(EventStatus::Failed)?,
            now: self.clock.now(),
        })
    }
}

/// Where a consumer group stands on a stream, or what is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamStatus {
    /// The group's pending entries and lag.
    Group(GroupStats),
    /// The stream exists but the group does not: no consumer of it has started yet (or the
    /// group was destroyed). The consumer creates it when it starts.
    NoGroup,
    /// The stream does not exist: nothing was ever published to it (or the name is wrong),
    /// or Redis restarted without persistence.
    NoStream,
}

/// Pending entries and lag of a consumer group, or whether the stream or only the group is
/// missing. A transport that cannot tell the two apart reports [`StreamStatus::NoGroup`].
///
/// ```
/// use eventflow::admin::{stream_status, StreamStatus};
/// use eventflow::transport::{MemoryStream, Transport};
///
/// let stream = MemoryStream::new();
/// stream.ensure_group("orders", "billing")?;
/// match stream_status(&stream, "orders", "billing")? {
///     StreamStatus::Group(stats) => println!("{} pending, lag {:?}", stats.pending, stats.lag),
///     other => println!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn stream_status(
    transport: &dyn Transport,
    stream: &str,
    group: &str,
) -> AdminResult<StreamStatus> {
    match transport.group_stats(stream, group) {
        Ok(stats) => Ok(StreamStatus::Group(stats)),
        Err(TransportError::NoGroup { .. }) => match transport.stream_exists(stream)? {
            Some(false) => Ok(StreamStatus::NoStream),
            Some(true) | None => Ok(StreamStatus::NoGroup),
        },
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::MemoryStream;

    #[test]
    fn a_missing_stream_is_told_from_a_missing_group() {
        let transport = MemoryStream::new();
        assert_eq!(
            stream_status(&transport, "orders", "billing").unwrap(),
            StreamStatus::NoStream
        );
        transport.ensure_group("orders", "shipping").unwrap();
        assert_eq!(
            stream_status(&transport, "orders", "billing").unwrap(),
            StreamStatus::NoGroup
        );
        transport.ensure_group("orders", "billing").unwrap();
        assert_eq!(
            stream_status(&transport, "orders", "billing").unwrap(),
            StreamStatus::Group(GroupStats {
                pending: 0,
                lag: Some(0)
            })
        );
    }
}
