//! Creating or upgrading the outbox table on the application's own connection or pool, for
//! services that set up their schema at start-up, in their own migration step, or inside a
//! transaction of theirs; the relay's `start()` does the same through its store's pool.

use super::enqueue::OutboxTable;
use crate::store::StoreError;

/// A connection or transaction the outbox table can be created or upgraded through.
///
/// Implemented for `postgres::Client` and `postgres::Transaction` (so a pooled connection
/// from the application's own pool works too: pass `&mut *pooled`), and for
/// `rusqlite::Connection`, `rusqlite::Transaction` and `rusqlite::Savepoint`. On a connection
/// the migration runs in a transaction of its own; on a transaction, in a savepoint of it, so
/// it commits or rolls back with the caller's work.
///
/// Either way the migrations are recorded in `eventflow_migrations` as the relay's own are, so
/// a relay (or `eventflow migrate --outbox`) finds them applied, and several processes may run
/// it at once: one migrates, the others then find nothing to do. On PostgreSQL each file's DDL
/// waits at most 2 s for its table lock, then retries after a pause, so enqueueing writers are
/// never queued for long behind it. Inside a caller's transaction the table's migration lock
/// (and, on SQLite, the write lock) is held until that transaction ends: commit it before
/// starting a relay on the same table in the same thread, which would otherwise wait for it.
pub trait OutboxMigrator {
    /// Applies the embedded outbox migrations not yet applied to `table` (a validated name).
    fn migrate_outbox(&mut self, table: &str) -> Result<(), StoreError>;
}

#[cfg(feature = "postgres")]
impl OutboxMigrator for postgres::Client {
    fn migrate_outbox(&mut self, table: &str) -> Result<(), StoreError> {
        crate::store::outbox::postgres::migrate_on(self, table)
    }
}

#[cfg(feature = "postgres")]
impl OutboxMigrator for postgres::Transaction<'_> {
    fn migrate_outbox(&mut self, table: &str) -> Result<(), StoreError> {
        crate::store::outbox::postgres::migrate_on(self, table)
    }
}

#[cfg(feature = "sqlite")]
impl OutboxMigrator for rusqlite::Connection {
    fn migrate_outbox(&mut self, table: &str) -> Result<(), StoreError> {
        crate::store::outbox::sqlite::migrate_on(self, table)
    }
}

#[cfg(feature = "sqlite")]
impl OutboxMigrator for rusqlite::Transaction<'_> {
    fn migrate_outbox(&mut self, table: &str) -> Result<(), StoreError> {
        crate::store::outbox::sqlite::migrate_on(self, table)
    }
}

#[cfg(feature = "sqlite")]
impl OutboxMigrator for rusqlite::Savepoint<'_> {
    fn migrate_outbox(&mut self, table: &str) -> Result<(), StoreError> {
        crate::store::outbox::sqlite::migrate_on(self, table)
    }
}

impl OutboxTable {
    /// Creates or upgrades this outbox table through `conn`; see [`migrate`].
    pub fn migrate<M: OutboxMigrator + ?Sized>(&self, conn: &mut M) -> Result<(), StoreError> {
        conn.migrate_outbox(self.name())
    }
}

/// Creates or upgrades the `event_outbox` table through the application's own connection or
/// transaction (see [`OutboxMigrator`]), as the relay's `start()` does through its pool;
/// [`OutboxTable::migrate`] does it for another table. Idempotent.
///
/// ```
/// use eventflow::outbox;
/// use eventflow::Event;
///
/// let mut conn = rusqlite::Connection::open_in_memory()?;
/// outbox::migrate(&mut conn)?;
/// let event = Event::new("OrderPlaced", eventflow::uuid::Uuid::new_v4(), serde_json::json!({}));
/// outbox::enqueue(&mut conn, "orders", &event)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// On PostgreSQL, inside the transaction that creates the rest of the application's schema:
///
/// ```no_run
/// # fn f(client: &mut postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = client.transaction()?;
/// tx.batch_execute("CREATE TABLE IF NOT EXISTS orders (id UUID PRIMARY KEY)")?;
/// eventflow::outbox::migrate(&mut tx)?;
/// tx.commit()?;
/// # Ok(()) }
/// ```
pub fn migrate<M: OutboxMigrator + ?Sized>(conn: &mut M) -> Result<(), StoreError> {
    OutboxTable::default().migrate(conn)
}
