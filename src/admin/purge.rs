//! Deleting processed rows past their retention, in small batches.

use super::{Admin, AdminError, AdminResult, BATCH_ROWS};
use crate::clock::Clock;
use crate::store::{Cleanup, InboxStore, ProcessedCleanup, QuarantineCleanup};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The moment `older_than` before `clock`'s now: rows finished before it are purged.
pub(super) fn cutoff(clock: &dyn Clock, older_than: Duration) -> AdminResult<DateTime<Utc>> {
    chrono::Duration::from_std(older_than)
        .ok()
        .and_then(|older_than| clock.now().checked_sub_signed(older_than))
        .ok_or_else(|| AdminError::InvalidInput("the age is too large".into()))
}

impl<S: InboxStore> Admin<S> {
    /// Deletes processed rows whose `processed_at` is more than `older_than` ago, oldest first,
    /// [`BATCH_ROWS`] per transaction, so the table stays available to the consumer meanwhile.
    /// Rows in any other status are kept. `progress` hears the running total after each batch.
    /// Returns how many rows went.
    pub fn purge_processed(
        &self,
        older_than: Duration,
        progress: &mut dyn FnMut(u64),
    ) -> AdminResult<u64> {
        let before = cutoff(self.clock.as_ref(), older_than)?;
        let mut total = 0;
        loop {
            let cleanup = ProcessedCleanup {
                before,
                limit: BATCH_ROWS,
                exclusive: false,
            };
            let deleted = match self.store.delete_processed_before(&cleanup)? {
                Cleanup::Deleted(deleted) => deleted,
                Cleanup::Busy => 0, // not asked for exclusivity, so never
            };
            total += deleted;
            progress(total);
            if (deleted as usize) < BATCH_ROWS {
                break;
            }
        }
        tracing::info!(deleted = total, %before, "purged processed rows");
        Ok(total)
    }

    /// Deletes quarantined entries, replayed or not, quarantined more than `older_than` ago,
    /// oldest first, [`BATCH_ROWS`] per transaction. `progress` hears the running total after
    /// each batch. Returns how many entries went.
    pub fn purge_quarantined(
        &self,
        older_than: Duration,
        progress: &mut dyn FnMut(u64),
    ) -> AdminResult<u64> {
        let before = cutoff(self.clock.as_ref(), older_than)?;
        let mut total = 0;
        loop {
            let cleanup = QuarantineCleanup {
                before,
                limit: BATCH_ROWS,
                exclusive: false,
            };
            let deleted = match self.store.delete_quarantined_before(&cleanup)? {
                Cleanup::Deleted(deleted) => deleted,
                Cleanup::Busy => 0, // not asked for exclusivity, so never
            };
            total += deleted;
            progress(total);
            if (deleted as usize) < BATCH_ROWS {
                break;
            }
        }
        tracing::info!(deleted = total, %before, "purged quarantined entries");
        Ok(total)
    }
}
