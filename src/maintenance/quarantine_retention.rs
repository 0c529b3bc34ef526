//! Quarantine retention: deletes quarantined entries, replayed or not, once they were
//! quarantined longer ago than the configured age, a batch per transaction, on an interval, so
//! that a producer sending malformed or oversized entries cannot grow the quarantine table for
//! ever. The newest stream id of what it deletes is remembered (as inbox retention does), so a
//! consumer group created again still starts after it.
//!
//! Several consumer processes may run it; on PostgreSQL a per-table advisory lock lets one
//! clean at a time, and the others skip their round.

use super::inbox_retention::{delete_in_batches, BATCH_ROWS};
use super::Service;
use crate::clock::Clock;
use crate::store::{InboxStore, QuarantineCleanup};
use std::sync::Arc;
use std::time::Duration;

/// The quarantine retention cleaner of one inbox.
pub(crate) struct QuarantineRetention<S: InboxStore> {
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
    /// Entries quarantined longer ago than this go.
    pub keep: Duration,
    pub interval: Duration,
}

impl<S: InboxStore> Service for QuarantineRetention<S> {
    fn interval(&self) -> Duration {
        self.interval
    }

    fn run_once(&mut self, stopping: &dyn Fn() -> bool) {
        delete_in_batches(
            self.clock.as_ref(),
            self.keep,
            stopping,
            "quarantined entries",
            |before| {
                self.store.delete_quarantined_before(&QuarantineCleanup {
                    before,
                    limit: BATCH_ROWS,
                    exclusive: true,
                })
            },
        );
    }
}
