//! How the inbox, the stream and the outbox stand: counts, lag, backlog.

use super::{Admin, AdminResult};
use crate::event::EventStatus;
use crate::store::{InboxStore, StatusCounts};
use crate::transport::{GroupStats, Transport};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The outbox table's default name. When it does not exist, the outbox is not installed.
pub const OUTBOX_TABLE: &str = "event_outbox";

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
fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

/// Whether the outbox is there, and (once it reports one) its backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxStatus {
    /// The outbox table does not exist.
    NotInstalled,
    /// The outbox table exists.
    Installed {
        /// Its name.
        table: String,
    },
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

    /// Whether the outbox table `table` exists in the inbox's database.
    pub fn outbox_status(&self, table: &str) -> AdminResult<OutboxStatus> {
        Ok(if self.store.table_exists(table)? {
            OutboxStatus::Installed {
                table: table.to_string(),
            }
        } else {
            OutboxStatus::NotInstalled
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
