//! Quarantine retention: deletes quarantined entries, replayed or not, once they were
//! quarantined longer ago than the configured age, a batch per transaction, on an interval, so
//! that a producer sending malformed or oversized entries cannot grow the quarantine table for
//! ever. The newest stream id of what it deletes is remembered (as inbox retention does), so a
//! consumer group created again still starts after it.
//!
//! Several consumer processes may run it; on PostgreSQL a per-table advisory lock lets one
//! clean at a time, and the others skip their round.

use super::inbox_retention::BATCH_ROWS;
use super::Service;
use crate::clock::Clock;
use crate::store::{Cleanup, InboxStore, QuarantineCleanup};
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
        // Validated by the builder to fit; saturate rather than panic all the same.
        let keep = chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        let Some(before) = self.clock.now().checked_sub_signed(keep) else {
            return;
        };
        let mut total = 0;
        loop {
            let cleanup = QuarantineCleanup {
                before,
                limit: BATCH_ROWS,
                exclusive: true,
            };
            match self.store.delete_quarantined_before(&cleanup) {
                Ok(Cleanup::Deleted(deleted)) => {
                    total += deleted;
                    if (deleted as usize) < BATCH_ROWS || stopping() {
                        break;
                    }
                }
                Ok(Cleanup::Busy) => {
                    tracing::debug!(
                        "another process is cleaning the quarantine; skipping this round"
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "quarantine retention failed; trying again next round");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, %before, "deleted quarantined entries past retention");
        }
    }
}
