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
