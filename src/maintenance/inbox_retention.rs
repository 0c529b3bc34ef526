//! Retention: deletes processed inbox rows older than the configured age, a batch per
//! transaction, on an interval. Only processed rows go; pending, failed and dead-lettered rows
//! stay whatever their age.
//!
//! Several consumer processes may run it: each batch asks the store for exclusivity (on
//! PostgreSQL a per-table `pg_try_advisory_xact_lock`; SQLite has one writer anyway), and a
//! process that finds another cleaning skips its round instead of deleting alongside.

use super::Service;
use crate::clock::Clock;
use crate::store::{Cleanup, InboxStore, ProcessedCleanup};
use std::sync::Arc;
use std::time::Duration;

/// Rows deleted per transaction.
pub(crate) const BATCH_ROWS: usize = 1000;

/// The retention cleaner of one inbox.
pub(crate) struct InboxRetention<S: InboxStore> {
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
    /// Processed rows older than this go.
    pub keep: Duration,
    pub interval: Duration,
}

impl<S: InboxStore> Service for InboxRetention<S> {
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
            let cleanup = ProcessedCleanup {
                before,
                limit: BATCH_ROWS,
                exclusive: true,
            };
            match self.store.delete_processed_before(&cleanup) {
                Ok(Cleanup::Deleted(deleted)) => {
                    total += deleted;
                    if (deleted as usize) < BATCH_ROWS || stopping() {
                        break;
                    }
                }
                Ok(Cleanup::Busy) => {
                    tracing::debug!("another process is cleaning the inbox; skipping this round");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "inbox retention failed; trying again next round");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, %before, "deleted processed inbox rows past retention");
        }
    }
}
