//! The outbox, for operators: its backlog, rows listed and shown, dead letters requeued,
//! published rows purged in small batches, and published rows checked against their streams.

use super::purge::cutoff;
use super::status::age;
use super::{AdminError, AdminResult, MigrationState, BATCH_ROWS};
use crate::clock::{Clock, SystemClock};
use crate::store::outbox::{
    OutboxCounts, OutboxPage, OutboxRow, OutboxStatus, OutboxStore, Requeue,
};
use crate::store::{PendingMigration, StoreError};
use crate::transport::partition::Partitioning;
use crate::transport::{parse_entry_id, FoundEntries, Transport};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Whether the outbox table exists, and when it does, its counts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxState {
    /// The outbox table does not exist in the database.
    NotInstalled {
        /// The table looked for.
        table: String,
    },
    /// The outbox table exists; what it holds.
    Installed(OutboxReport),
}

/// The outbox at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxReport {
    /// The outbox table.
    pub table: String,
    /// Rows per status, and when the oldest unpublished row was enqueued.
    pub counts: OutboxCounts,
    /// When this was read, by the admin's clock.
    pub now: DateTime<Utc>,
}

impl OutboxReport {
    /// Rows in `status`.
    pub fn count(&self, status: OutboxStatus) -> u64 {
        match status {
            OutboxStatus::Pending => self.counts.pending,
            OutboxStatus::Failed => self.counts.failed,
            OutboxStatus::Published => self.counts.published,
            OutboxStatus::DeadLetter => self.counts.dead_letter,
        }
    }

    /// Rows waiting to be published: pending plus failed.
    pub fn backlog(&self) -> u64 {
        self.counts.backlog()
    }

    /// How long the oldest unpublished row (pending or failed) has waited: how far behind the
    /// relay is. `None` when nothing waits.
    pub fn oldest_unpublished_age(&self) -> Option<Duration> {
        self.counts.oldest_unpublished.map(|at| age(self.now, at))
    }
}

/// One page of an outbox listing.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRowPage {
    /// The rows, in `id` (enqueue) order.
    pub rows: Vec<OutboxRow>,
    /// The id the next page starts after, when this one was full.
    pub next: Option<i64>,
}

/// One page of [`OutboxAdmin::lost_entries`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LostEntriesPage {
    /// Published rows whose entry their stream no longer holds although it holds older ones,
    /// so trimming did not take it: appended and then lost, as when a Redis master fails over
    /// before passing the entry to its replica (or deleted by hand). In `id` order.
    pub lost: Vec<OutboxRow>,
    /// Published rows looked at.
    pub checked: usize,
    /// Published rows whose stream cannot tell: it holds no entries (trimmed empty, or gone),
    /// or the transport cannot look entries up.
    pub unknown: usize,
    /// The id the next page starts after, when this one was full.
    pub next: Option<i64>,
}

/// Operations on one outbox table. Cheap to clone.
///
/// Every operation on a database without the table fails with [`AdminError::NotInstalled`],
/// except [`status`](Self::status), which reports [`OutboxState::NotInstalled`].
///
/// ```
/// use eventflow::admin::{OutboxAdmin, OutboxState};
/// use eventflow::store::outbox::{Requeue, SqliteOutbox};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let admin = OutboxAdmin::new(Arc::new(SqliteOutbox::open_in_memory()?));
/// assert!(matches!(admin.status()?, OutboxState::NotInstalled { .. }));
/// admin.migrate()?;
/// let OutboxState::Installed(report) = admin.status()? else { unreachable!() };
/// assert_eq!((report.backlog(), report.oldest_unpublished_age()), (0, None));
/// assert_eq!(admin.requeue_dead_letters(Requeue::All)?, 0);
/// assert_eq!(admin.purge_published(Duration::from_secs(86_400), &mut |_so_far| {})?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct OutboxAdmin {
    store: Arc<dyn OutboxStore>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OutboxAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxAdmin")
            .field("table", &self.store.table())
            .finish_non_exhaustive()
    }
}

impl OutboxAdmin {
    /// Operations on `store`'s outbox table, on the system clock.
    ///
    /// ```
    /// # use eventflow::admin::OutboxAdmin;
    /// # use eventflow::store::outbox::SqliteOutbox;
    /// # use std::sync::Arc;
    /// let admin = OutboxAdmin::new(Arc::new(SqliteOutbox::open_in_memory()?));
    /// admin.migrate()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(store: Arc<dyn OutboxStore>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for ages and purge cut-offs. Defaults to the system clock; tests pass a
    /// [`crate::ManualClock`].
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The store.
    pub fn store(&self) -> &dyn OutboxStore {
        self.store.as_ref()
    }

    /// Creates or upgrades the outbox table (idempotent; safe from several processes at once)
    /// and returns the migrations that were missing, now applied.
    pub fn migrate(&self) -> AdminResult<Vec<PendingMigration>> {
        let pending = self.store.pending_migrations()?;
        self.store.migrate()?;
        Ok(pending)
    }

    /// The migrations [`migrate`](Self::migrate) would apply, in order, with their
    /// statements; changes nothing.
    ///
    /// ```
    /// # use eventflow::admin::OutboxAdmin;
    /// # use eventflow::store::outbox::SqliteOutbox;
    /// # use std::sync::Arc;
    /// let admin = OutboxAdmin::new(Arc::new(SqliteOutbox::open_in_memory()?));
    /// assert!(!admin.pending_migrations()?.is_empty());
    /// admin.migrate()?;
    /// assert!(admin.pending_migrations()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pending_migrations(&self) -> AdminResult<Vec<PendingMigration>> {
        Ok(self.store.pending_migrations()?)
    }

    /// Every embedded migration of the outbox table, in order, and whether it is applied.
    ///
    /// ```
    /// # use eventflow::admin::OutboxAdmin;
    /// # use eventflow::store::outbox::SqliteOutbox;
    /// # use std::sync::Arc;
    /// let admin = OutboxAdmin::new(Arc::new(SqliteOutbox::open_in_memory()?));
    /// admin.migrate()?;
    /// for state in admin.migrations()? {
    ///     println!("{} {} applied: {}", state.version, state.name, state.applied);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn migrations(&self) -> AdminResult<Vec<MigrationState>> {
        let pending = self.store.pending_migrations()?;
        Ok(MigrationState::list(self.store.migrations(), &pending))
    }

    /// Row counts by status, the backlog and the age of the oldest unpublished row; or
    /// [`OutboxState::NotInstalled`] when the table does not exist.
    pub fn status(&self) -> AdminResult<OutboxState> {
        match self.store.count_by_status() {
            Ok(counts) => Ok(OutboxState::Installed(OutboxReport {
                table: self.store.table().to_string(),
                counts,
                now: self.clock.now(),
            })),
            Err(error) if error.is_missing_table() => Ok(OutboxState::NotInstalled {
                table: self.store.table().to_string(),
            }),
            Err(error) => Err(error.into()),
        }
    }

    /// Rows in `status` (every status when `None`), `limit` of them after row id `after`.
    ///
    /// ```
    /// # use eventflow::admin::OutboxAdmin;
    /// # use eventflow::store::outbox::SqliteOutbox;
    /// # use eventflow::{outbox, Event};
    /// # use std::sync::Arc;
    /// let store = Arc::new(SqliteOutbox::open_in_memory()?);
    /// let admin = OutboxAdmin::new(store.clone());
    /// admin.migrate()?;
    /// let event = Event::new("OrderPlaced", eventflow::uuid::Uuid::new_v4(), serde_json::json!({}))
    ///     .with_event_id("o-1");
    /// store.with_connection(|conn| outbox::enqueue(conn, "orders", &event))?;
    /// use eventflow::store::outbox::OutboxStatus;
    ///
    /// let page = admin.list_rows(Some(OutboxStatus::Pending), None, 50)?;
    /// assert_eq!(page.rows.len(), 1);
    /// assert_eq!((page.rows[0].stream.as_str(), page.next), ("orders", None));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn list_rows(
        &self,
        status: Option<OutboxStatus>,
        after: Option<i64>,
        limit: usize,
    ) -> AdminResult<OutboxRowPage> {
        let rows = self.checked(self.store.list_rows(&OutboxPage {
            status,
            after_id: after,
            limit,
        }))?;
        let next = if rows.len() >= limit && limit > 0 {
            rows.last().map(|row| row.id)
        } else {
            None
        };
        Ok(OutboxRowPage { rows, next })
    }

    /// Checks `limit` published rows after row id `after` against their streams through
    /// `transport`, and returns those whose entries are gone: lost in a failover that the relay
    /// did not wait for replicas to survive (see
    /// [`wait_for_replicas`](crate::outbox::RelayBuilder::wait_for_replicas)). Such an event
    /// reached no consumer that had not read it before the loss; requeueing is up to the
    /// operator, as the inbox may have it already. One `XRANGE` round trip per stream on the
    /// page; retention's deleted rows are not checked.
    ///
    /// `partitioned` names the streams the relay splits, with their partition counts (as given
    /// to [`partitioned_stream`](crate::outbox::RelayBuilder::partitioned_stream)): a row
    /// enqueued for such a stream keeps the stream's name, and its entry is looked for in its
    /// aggregate's partition. A split stream left out is looked for under its own name, where
    /// there is nothing, and its rows count as `unknown`.
    pub fn lost_entries(
        &self,
        transport: &dyn Transport,
        partitioned: &[(&str, u32)],
        after: Option<i64>,
        limit: usize,
    ) -> AdminResult<LostEntriesPage> {
        let page = self.list_rows(Some(OutboxStatus::Published), after, limit)?;
        let mut partitioning = Partitioning::default();
        for (stream, partitions) in partitioned {
            partitioning.insert(stream.to_string(), *partitions);
        }
        let mut by_stream: BTreeMap<String, Vec<(&OutboxRow, String)>> = BTreeMap::new();
        let mut unknown = 0;
        for row in &page.rows {
            match &row.stream_entry_id {
                Some(id) => by_stream
                    .entry(
                        partitioning
                            .stream_for(&row.stream, &row.event.aggregate_id)
                            .into_owned(),
                    )
                    .or_default()
                    .push((row, id.clone())),
                None => unknown += 1,
            }
        }
        let mut lost = Vec::new();
        for (stream, rows) in by_stream {
            let ids: Vec<String> = rows.iter().map(|(_, id)| id.clone()).collect();
            let Some(FoundEntries {
                oldest: Some(oldest),
                present,
            }) = transport.find_entries(&stream, &ids)?
            else {
                unknown += rows.len();
                continue;
            };
            let oldest = parse_entry_id(&oldest);
            for ((row, id), present) in rows.into_iter().zip(present) {
                // Absent and older than the oldest entry: trimmed, as it should be.
                let younger = parse_entry_id(&id)
                    .zip(oldest)
                    .is_some_and(|(id, oldest)| id >= oldest);
                if !present && younger {
                    lost.push(row.clone());
                }
            }
        }
        lost.sort_by_key(|row| row.id);
        Ok(LostEntriesPage {
            lost,
            checked: page.rows.len(),
            unknown,
            next: page.next,
        })
    }

    /// The rows of event `key`, in enqueue order (one event may go to several streams); or,
    /// when there are none and `key` is a number, the row with that id.
    ///
    /// ```
    /// # use eventflow::admin::OutboxAdmin;
    /// # use eventflow::store::outbox::SqliteOutbox;
    /// # use eventflow::{outbox, Event};
    /// # use std::sync::Arc;
    /// let store = Arc::new(SqliteOutbox::open_in_memory()?);
    /// let admin = OutboxAdmin::new(store.clone());
    /// admin.migrate()?;
    /// let event = Event::new("OrderPlaced", eventflow::uuid::Uuid::new_v4(), serde_json::json!({}))
    ///     .with_event_id("o-1");
    /// store.with_connection(|conn| outbox::enqueue(conn, "orders", &event))?;
    /// let rows = admin.show("o-1")?; // an event id, or a row id
    /// assert_eq!(rows.len(), 1);
    /// assert_eq!(rows[0].attempts, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn show(&self, key: &str) -> AdminResult<Vec<OutboxRow>> {
        let rows = self.checked(self.store.find_by_event_id(key))?;
        if !rows.is_empty() {
            return Ok(rows);
        }
        match key.parse::<i64>() {
            Ok(id) => self
                .find_row(id)
                .map(|row| vec![row])
                .map_err(|_| not_found(key)),
            Err(_) => Err(not_found(key)),
        }
    }

    /// The row with id `id`.
    ///
    /// ```
    /// # use eventflow::admin::OutboxAdmin;
    /// # use eventflow::store::outbox::SqliteOutbox;
    /// # use eventflow::{outbox, Event};
    /// # use std::sync::Arc;
    /// let store = Arc::new(SqliteOutbox::open_in_memory()?);
    /// let admin = OutboxAdmin::new(store.clone());
    /// admin.migrate()?;
    /// let event = Event::new("OrderPlaced", eventflow::uuid::Uuid::new_v4(), serde_json::json!({}))
    ///     .with_event_id("o-1");
    /// store.with_connection(|conn| outbox::enqueue(conn, "orders", &event))?;
    /// # let id = admin.show("o-1")?[0].id;
    /// let row = admin.find_row(id)?;
    /// assert_eq!(row.event.event_id, "o-1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn find_row(&self, id: i64) -> AdminResult<OutboxRow> {
        let page = OutboxPage {
            status: None,
            after_id: id.checked_sub(1),
            limit: 1,
        };
        self.checked(self.store.list_rows(&page))?
            .pop()
            .filter(|row| row.id == id)
            .ok_or_else(|| AdminError::NotFound {
                what: "outbox row",
                key: id.to_string(),
            })
    }

    /// Sends dead letters back to `pending` with attempts reset, so the relay publishes them
    /// (and the later events of their aggregates they held back) on its next round. Given ids,
    /// each must be a dead letter: an unknown id is [`AdminError::NotFound`], another status
    /// [`AdminError::WrongState`], and then nothing is requeued. Returns how many were.
    pub fn requeue_dead_letters(&self, which: Requeue<'_>) -> AdminResult<u64> {
        if let Requeue::Ids(ids) = which {
            for &id in ids {
                let row = self.find_row(id)?;
                if row.status != OutboxStatus::DeadLetter {
                    return Err(AdminError::WrongState(format!(
                        "outbox row {id} (event {}) is {}, not a dead letter; \
                         only dead letters are requeued",
                        row.event.event_id,
                        row.status.as_str()
                    )));
                }
            }
        }
        let requeued = self.checked(self.store.requeue_dead_letters(which))? as u64;
        tracing::info!(
            requeued,
            table = self.store.table(),
            "requeued outbox dead letters"
        );
        Ok(requeued)
    }

    /// Deletes published rows whose `published_at` is more than `older_than` ago, oldest
    /// first, [`BATCH_ROWS`] per transaction, so relays and writers go on meanwhile. Rows in
    /// any other status are kept. `progress` hears the running total after each batch.
    /// Returns how many rows went.
    pub fn purge_published(
        &self,
        older_than: Duration,
        progress: &mut dyn FnMut(u64),
    ) -> AdminResult<u64> {
        let before = cutoff(self.clock.as_ref(), older_than)?;
        let mut total = 0;
        loop {
            let deleted = self.checked(self.store.delete_published_before(before, BATCH_ROWS))?;
            total += deleted as u64;
            progress(total);
            if deleted < BATCH_ROWS {
                break;
            }
        }
        tracing::info!(deleted = total, %before, table = self.store.table(), "purged published outbox rows");
        Ok(total)
    }

    /// A store result, with a missing table reported as [`AdminError::NotInstalled`].
    fn checked<T>(&self, result: Result<T, StoreError>) -> AdminResult<T> {
        result.map_err(|error| {
            if error.is_missing_table() {
                AdminError::NotInstalled {
                    table: self.store.table().to_string(),
                }
            } else {
                error.into()
            }
        })
    }
}

fn not_found(key: &str) -> AdminError {
    AdminError::NotFound {
        what: "outbox event",
        key: key.to_string(),
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::outbox::OutboxTable;
    use crate::store::outbox::{ClaimDue, Delivery, RowOutcome, SqliteOutbox};
    use crate::{Event, ManualClock};

    fn event(id: &str) -> Event {
        let mut event = Event::new("OrderPlaced", uuid::Uuid::new_v4(), serde_json::json!({}));
        event.event_id = id.to_string();
        event
    }

    /// An outbox with rows `a` (published 10 days ago), `b` (dead-lettered), `c` (pending),
    /// read on a clock at `now`.
    fn outbox(now: DateTime<Utc>) -> (OutboxAdmin, Arc<SqliteOutbox>) {
        let store = Arc::new(SqliteOutbox::open_in_memory().unwrap());
        let admin = OutboxAdmin::new(store.clone()).with_clock(ManualClock::new(now));
        admin.migrate().unwrap();
        store.with_connection(|conn| {
            for id in ["a", "b", "c"] {
                OutboxTable::default()
                    .enqueue(conn, "orders", &event(id))
                    .unwrap();
            }
        });
        let ten_days_ago = now - chrono::Duration::days(10);
        let claim = |limit| ClaimDue {
            limit,
            now: ten_days_ago,
        };
        store
            .publish_due(&claim(1), &mut |_| {
                Delivery::Settled(vec![RowOutcome::Published {
                    entry_id: "1-0".into(),
                }])
            })
            .unwrap();
        store
            .publish_due(&claim(1), &mut |_| {
                Delivery::Settled(vec![RowOutcome::DeadLetter {
                    error: "refused".into(),
                }])
            })
            .unwrap();
        (admin, store)
    }

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    #[test]
    fn a_missing_table_is_not_installed() {
        let admin = OutboxAdmin::new(Arc::new(SqliteOutbox::open_in_memory().unwrap()));
        assert_eq!(
            admin.status().unwrap(),
            OutboxState::NotInstalled {
                table: "event_outbox".into()
            }
        );
        for error in [
            admin.list_rows(None, None, 10).map(|_| ()).unwrap_err(),
            admin.show("e-1").map(|_| ()).unwrap_err(),
            admin
                .requeue_dead_letters(Requeue::All)
                .map(|_| ())
                .unwrap_err(),
            admin
                .purge_published(Duration::ZERO, &mut |_| {})
                .map(|_| ())
                .unwrap_err(),
        ] {
            assert!(
                matches!(&error, AdminError::NotInstalled { table } if table == "event_outbox"),
                "{error:?}"
            );
        }
    }

    #[test]
    fn status_counts_and_ages_the_backlog() {
        let now = now();
        let (admin, _store) = outbox(now);
        let OutboxState::Installed(report) = admin.status().unwrap() else {
            panic!("installed");
        };
        let counts = report.counts;
        assert_eq!(
            (
                counts.pending,
                counts.failed,
                counts.published,
                counts.dead_letter
            ),
            (1, 0, 1, 1)
        );
        assert_eq!(report.backlog(), 1);
        assert_eq!(report.count(OutboxStatus::DeadLetter), 1);
        // `c` was enqueued just now, by the database's clock.
        assert!(report.oldest_unpublished_age().unwrap() < Duration::from_secs(60));
    }

    #[test]
    fn rows_are_listed_by_status_a_page_at_a_time_and_shown() {
        let (admin, _store) = outbox(now());
        let dead = admin
            .list_rows(Some(OutboxStatus::DeadLetter), None, 10)
            .unwrap();
        assert_eq!(dead.rows.len(), 1);
        assert_eq!(dead.rows[0].event.event_id, "b");
        assert_eq!(dead.next, None);
        let first = admin.list_rows(None, None, 2).unwrap();
        let ids: Vec<&str> = first
            .rows
            .iter()
            .map(|r| r.event.event_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        let rest = admin.list_rows(None, first.next, 2).unwrap();
        assert_eq!(rest.rows.len(), 1);
        assert_eq!(rest.rows[0].event.event_id, "c");
        assert_eq!(rest.next, None);

        let shown = admin.show("b").unwrap();
        assert_eq!(shown[0].status, OutboxStatus::DeadLetter);
        assert_eq!(shown[0].last_error.as_deref(), Some("refused"));
        let by_id = admin.show(&shown[0].id.to_string()).unwrap();
        assert_eq!(by_id, shown);
        assert!(matches!(
            admin.show("nope"),
            Err(AdminError::NotFound {
                what: "outbox event",
                ..
            })
        ));
        assert!(matches!(
            admin.show("999"),
            Err(AdminError::NotFound {
                what: "outbox event",
                ..
            })
        ));
    }

    #[test]
    fn only_dead_letters_are_requeued() {
        let (admin, store) = outbox(now());
        let id = |event_id: &str| store.find_by_event_id(event_id).unwrap()[0].id;
        assert!(matches!(
            admin.requeue_dead_letters(Requeue::Ids(&[id("c")])),
            Err(AdminError::WrongState(message)) if message.contains("is pending")
        ));
        assert!(matches!(
            admin.requeue_dead_letters(Requeue::Ids(&[id("b"), 999])),
            Err(AdminError::NotFound {
                what: "outbox row",
                ..
            })
        ));
        assert_eq!(store.count_by_status().unwrap().dead_letter, 1);
        assert_eq!(
            admin
                .requeue_dead_letters(Requeue::Ids(&[id("b")]))
                .unwrap(),
            1
        );
        let row = &store.find_by_event_id("b").unwrap()[0];
        assert_eq!((row.status, row.attempts), (OutboxStatus::Pending, 0));
        assert_eq!(admin.requeue_dead_letters(Requeue::All).unwrap(), 0);
    }

    #[test]
    fn purge_deletes_only_published_rows_past_the_age() {
        let (admin, store) = outbox(now());
        let mut heard = Vec::new();
        let purged = admin
            .purge_published(Duration::from_secs(11 * 86_400), &mut |n| heard.push(n))
            .unwrap();
        assert_eq!((purged, heard.as_slice()), (0, &[0][..]));
        let purged = admin
            .purge_published(Duration::from_secs(9 * 86_400), &mut |_| {})
            .unwrap();
        assert_eq!(purged, 1);
        let counts = store.count_by_status().unwrap();
        assert_eq!(
            (counts.pending, counts.published, counts.dead_letter),
            (1, 0, 1)
        );
        assert!(matches!(
            admin.purge_published(Duration::MAX, &mut |_| {}),
            Err(AdminError::InvalidInput(_))
        ));
    }
}
