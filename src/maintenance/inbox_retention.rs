//! Retention: deletes processed inbox rows older than the configured age, a batch per
//! transaction, on an interval. Only processed rows go; pending, failed and dead-lettered rows
//! stay whatever their age.
//!
//! Several consumer processes may run it: each batch asks the store for exclusivity (on
//! PostgreSQL a per-table `pg_try_advisory_xact_lock`; SQLite has one writer anyway), and a
//! process that finds another cleaning skips its round instead of deleting alongside.

use super::Service;
use crate::clock::Clock;
use crate::store::{Cleanup, InboxStore, ProcessedCleanup, StoreError};
use chrono::{DateTime, Utc};
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
        delete_in_batches(
            self.clock.as_ref(),
            self.keep,
            stopping,
            "processed inbox rows",
            |before| {
                self.store.delete_processed_before(&ProcessedCleanup {
                    before,
                    limit: BATCH_ROWS,
                    exclusive: true,
                })
            },
        );
    }
}

/// Deletes what `delete` takes (at most [`BATCH_ROWS`] older than `now - keep` per call, with
/// exclusivity asked of the store) until a call takes fewer or shutdown begins; a round that
/// finds another process cleaning, or fails, ends and waits for the next. Shared by the inbox's
/// and the quarantine's retention.
pub(crate) fn delete_in_batches(
    clock: &dyn Clock,
    keep: Duration,
    stopping: &dyn Fn() -> bool,
    what: &str,
    mut delete: impl FnMut(DateTime<Utc>) -> Result<Cleanup, StoreError>,
) {
    // Validated by the builder to fit; saturate rather than panic all the same.
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    let Some(before) = clock.now().checked_sub_signed(keep) else {
        return;
    };
    let mut total = 0;
    loop {
        match delete(before) {
            Ok(Cleanup::Deleted(deleted)) => {
                total += deleted;
                if (deleted as usize) < BATCH_ROWS || stopping() {
                    break;
                }
            }
            Ok(Cleanup::Busy) => {
                tracing::debug!(what, "another process is cleaning; skipping this round");
                break;
            }
            Err(error) => {
                tracing::warn!(%error, what, "retention failed; trying again next round");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(deleted = total, %before, what, "deleted past retention");
    }
}
