//! The operations API: what an operator does to a running inbox, as library calls. The
//! `eventflow` command is a thin layer over it.
//!
//! [`Admin`] wraps a store: counts and lag ([`Admin::inbox_status`]), dead letters listed with
//! filters a page at a time, shown, and requeued ([`Admin::requeue_dead_letters`]), quarantined
//! entries listed, shown and replayed with corrections ([`Admin::replay_quarantined`]), aggregates
//! parked by per-aggregate order listed and released ([`Admin::skip_parked`]), and processed rows
//! purged in small batches ([`Admin::purge_processed`]). Stream-side operations
//! take a [`crate::transport::Transport`]: [`stream_status`] and [`publish_event`].
//!
//! [`OutboxAdmin`] does the same for an outbox table: its backlog ([`OutboxAdmin::status`],
//! which also tells when the table is not installed), rows listed by status and shown,
//! dead letters requeued, and published rows purged ([`OutboxAdmin::purge_published`]).
//!
//! ```
//! use eventflow::admin::Admin;
//! use eventflow::store::{Page, RowFilter};
//! use eventflow::{EventStatus, SqliteStore};
//! use std::sync::Arc;
//!
//! let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
//! admin.migrate()?;
//! let status = admin.inbox_status()?;
//! assert_eq!(status.counts.total(), 0);
//! let dead = RowFilter { status: Some(EventStatus::DeadLetter), ..RowFilter::default() };
//! assert!(admin.list_rows(&dead, Page::first(50))?.rows.is_empty());
//! let requeued = admin.requeue_dead_letters(&dead, &mut |_so_far| {})?;
//! assert_eq!(requeued, 0);
//! # Ok::<(), eventflow::admin::AdminError>(())
//! ```

mod dead_letters;
mod error;
mod migrate;
mod outbox;
mod parked;
mod publish;
mod purge;
mod quarantine;
mod status;

pub use dead_letters::RowPage;
pub use error::{AdminError, AdminResult};
pub use migrate::MigrationState;
pub use outbox::{LostEntriesPage, OutboxAdmin, OutboxReport, OutboxRowPage, OutboxState};
pub use parked::ParkedList;
pub use publish::{parse_event_json, publish_event, EVENT_FIELDS};
pub use quarantine::{Correction, QuarantinePage};
pub use status::{stream_status, InboxStatus, StreamStatus};

use crate::clock::{Clock, SystemClock};
use crate::store::InboxStore;
use std::sync::Arc;

/// Rows changed per transaction by bulk operations (inbox requeue, purges): small enough that each
/// transaction holds its locks only briefly, so the consumer goes on meanwhile.
pub const BATCH_ROWS: usize = 1000;

/// Operations on one inbox. Cheap to clone.
pub struct Admin<S: InboxStore> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
}

impl<S: InboxStore> Clone for Admin<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl<S: InboxStore> std::fmt::Debug for Admin<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl<S: InboxStore> Admin<S> {
    /// Operations on `store`'s inbox, on the system clock.
    ///
    /// ```
    /// # use eventflow::{admin::Admin, SqliteStore};
    /// # use std::sync::Arc;
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
    /// admin.migrate()?;
    /// assert_eq!(admin.inbox_status()?.counts.total(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for ages, purge cut-offs and replay times. Defaults to the system clock;
    /// tests pass a [`crate::ManualClock`].
    ///
    /// ```
    /// # use eventflow::{admin::Admin, ManualClock, SqliteStore};
    /// # use std::{sync::Arc, time::Duration};
    /// let clock = ManualClock::new(chrono::Utc::now());
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?)).with_clock(clock.clone());
    /// admin.migrate()?;
    /// clock.advance(Duration::from_secs(86_400)); // ages and purge cut-offs follow this clock
    /// assert_eq!(admin.purge_processed(Duration::from_secs(3600), &mut |_| {})?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }
}
