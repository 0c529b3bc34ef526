//! Pooled PostgreSQL connections that keep their prepared statements.
//!
//! A statement given as text costs the driver two round trips (prepare, then execute); the
//! store's statements are prepared once per connection and reused, which halves the round trips
//! of every claim, completion and insert.

use super::tls::PgConnector;
use postgres::{Client, Statement, Transaction};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

const RECENTLY_USED: Duration = Duration::from_millis(500);

/// A pooled connection: a [`postgres::Client`] (it derefs to one) plus the statements the store
/// prepared on it.
pub struct PgConnection {
    client: Client,
    statements: HashMap<String, Statement>,
    returned_at: Instant,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection")
            .field("prepared", &self.statements.len())
            .finish_non_exhaustive()
    }
}

impl PgConnection {
    /// `sql` prepared on this connection, from the cache when it was prepared before.
    pub(in crate::store) fn prepared(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        let client = &mut self.client;
        cached(&mut self.statements, sql, |sql| client.prepare(sql))
    }

    /// Drops every cached statement. Called after a batch that failed, since a cached statement
    /// can go stale (a table altered under it fails with "cached plan must not change result
    /// type" until it is prepared again).
    pub(in crate::store) fn forget_statements(&mut self) {
        self.statements.clear();
    }
}

/// Most statements cached per connection; past that the cache starts over, so SQL built at run
/// time cannot pile up prepared statements on the server.
const MAX_CACHED: usize = 256;

fn cached(
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    prepare: impl FnOnce(&str) -> Result<Statement, postgres::Error>,
) -> Result<Statement, postgres::Error> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = prepare(sql)?;
    if statements.len() >= MAX_CACHED {
        statements.clear();
    }
    statements.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

impl PgConnection {
    /// Begins a transaction that can prepare statements into this connection's cache: the
    /// kind a handler runs in. Dropping it uncommitted rolls it back, which is what a handler's
    /// unit test wants (see [`crate::testing::run_handler`]); take the connection from
    /// [`PostgresStore::pool`](crate::store::PostgresStore::pool).
    ///
    /// Always READ COMMITTED, whatever the role's or database's default: claims rely on its
    /// re-check of a row that changed while they waited for it.
    pub fn transaction(&mut self) -> Result<PgTransaction<'_>, postgres::Error> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::ReadCommitted)
            .start()?;
        Ok(PgTransaction {
            tx,
            statements: &mut self.statements,
        })
    }
}

/// The transaction a PostgreSQL handler writes in: a [`postgres::Transaction`] (it derefs to
/// one, so `tx.execute(sql, params)` works as usual) that can also reuse prepared statements.
///
/// A statement given as text is prepared on every call, which costs a round trip;
/// [`prepare_cached`](Self::prepare_cached) prepares it once per pooled connection.
/// Pass `&mut **tx` to functions that take a `postgres::GenericClient`.
pub struct PgTransaction<'t> {
    tx: Transaction<'t>,
    statements: &'t mut HashMap<String, Statement>,
}

impl std::fmt::Debug for PgTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTransaction").finish_non_exhaustive()
    }
}

impl<'t> PgTransaction<'t> {
    /// `sql` prepared on this connection, from its cache when prepared before.
    ///
    /// ```no_run
    /// # fn handler(tx: &mut eventflow::store::PgTransaction<'_>, row: &eventflow::InboxRow) -> eventflow::HandlerResult {
    /// let insert = tx.prepare_cached("INSERT INTO invoices (event_id) VALUES ($1)")?;
    /// tx.execute(&insert, &[&row.event.event_id])?;
    /// # Ok(()) }
    /// ```
    ///
    /// The cache is cleared after any batch with a failure, so a statement that went stale
    /// (its table altered) is prepared again on the next batch.
    pub fn prepare_cached(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        let tx = &mut self.tx;
        cached(self.statements, sql, |sql| tx.prepare(sql))
    }

    /// Drops the connection's cached statements.
    pub(in crate::store) fn forget_statements(&mut self) {
        self.statements.clear();
    }

    /// Commits, consuming the transaction.
    pub(in crate::store) fn commit(self) -> Result<(), postgres::Error> {
        self.tx.commit()
    }
}

impl<'t> Deref for PgTransaction<'t> {
    type Target = Transaction<'t>;

    fn deref(&self) -> &Transaction<'t> {
        &self.tx
    }
}

impl<'t> DerefMut for PgTransaction<'t> {
    fn deref_mut(&mut self) -> &mut Transaction<'t> {
        &mut self.tx
    }
}

impl Deref for PgConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Makes [`PgConnection`]s for the r2d2 pool, with the store's one TLS connector.
#[derive(Debug, Clone)]
pub struct PgManager {
    pub(super) config: postgres::Config,
    pub(super) connector: PgConnector,
}

/// A connection [`PgManager`] could not open. The pool keeps only an error's text, so this
/// one's text carries the detail: the server's refusal (`FATAL 28000: no pg_hba.conf entry
/// ...`) or the TLS handshake's reason (`invalid peer certificate: UnknownIssuer`), where the
/// driver's own text says only "db error" or "error performing TLS handshake".
#[derive(Debug)]
pub struct PgConnectError(postgres::Error);

impl std::fmt::Display for PgConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            return write!(
                f,
                "{} {}: {}",
                db.severity(),
                db.code().code(),
                db.message()
            );
        }
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for PgConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl PgManager {
    /// The driver config and the TLS connector, for sessions opened by other means.
    pub(in crate::store) fn parts(&self) -> (postgres::Config, PgConnector) {
        (self.config.clone(), self.connector.clone())
    }

    /// A plain session, for one held outside the pool.
    pub(super) fn connect_client(&self) -> Result<postgres::Client, postgres::Error> {
        self.connector.connect(&self.config)
    }
}

impl r2d2::ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = PgConnectError;

    fn connect(&self) -> Result<PgConnection, PgConnectError> {
        Ok(PgConnection {
            client: self.connect_client().map_err(PgConnectError)?,
            statements: HashMap::new(),
            returned_at: Instant::now(),
        })
    }

    /// Checks with a round trip only a connection that sat idle: one returned moments ago by
    /// a busy worker would have failed its last statement if it were broken, and checking it
    /// would cost a round trip per batch.
    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), PgConnectError> {
        if conn.returned_at.elapsed() < RECENTLY_USED {
            return Ok(());
        }
        conn.client
            .simple_query("")
            .map(|_| ())
            .map_err(PgConnectError)
    }

    /// r2d2 asks this when a connection comes back to the pool.
    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.returned_at = Instant::now();
        conn.client.is_closed()
    }
}
