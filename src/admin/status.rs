//! How the inbox and the stream stand: counts and lag. (The outbox's backlog is
//! [`super::OutboxAdmin::status`].)

use super::{Admin, AdminResult};
use crate::event::EventStatus;
use crate::store::{InboxStore, StatusCounts};
use crate::transport::{GroupStats, Transport};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The inbox at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxStatus {
    /// Rows in each status.
    pub counts: StatusCounts,
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
}

/// `now - then`, zero when `then` is ahead (another machine's clock).
pub(super) fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

impl<S: InboxStore> Admin<S> {
    /// Row counts by status and the age of the oldest pending and failed rows.
    pub fn inbox_status(&self) -> AdminResult<InboxStatus> {
        Ok(InboxStatus {
            counts: self.store.count_by_status()?,
            oldest_pending: self.store.oldest_received(EventStatus::Pending)?,
            oldest_failed: self.store.oldest_received(EventStatus::Failed)?,
            now: self.clock.now(),
        })
    }
}

/// Pending entries and lag of a consumer group.
pub fn stream_status(
    transport: &dyn Transport,
    stream: &str,
    group: &str,
) -> AdminResult<GroupStats> {
    Ok(transport.group_stats(stream, group)?)
}
