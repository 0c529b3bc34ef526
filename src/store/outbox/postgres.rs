//! The outbox in PostgreSQL.
//!
//! **Enqueue** is one statement, so it is atomic even on a client in autocommit mode: it takes a
//! transaction-scoped advisory lock per aggregate (in a fixed order, so two enqueues cannot
//! deadlock on each other), inserts the rows and calls `pg_notify` on the table's channel. The lock is held until the
//! application's transaction ends, so two transactions enqueueing for one aggregate commit in the
//! order of their ids, and the notice reaches listening relays only on commit.
//!
//! **Relays** claim due rows with `FOR UPDATE SKIP LOCKED` plus a second, try-only advisory lock
//! per aggregate: the first relay to see an aggregate takes all of its due rows and the others
//! skip it for that batch, so one aggregate is never published by two relays at once.

use super::{
    hand_over, set_aside, set_aside_round, tally, ClaimDue, Delivery, EnqueueListener, HandedOver,
    OutboxCounts, OutboxPage, OutboxRow, OutboxStatus, OutboxStore, PublishRound, Requeue,
    RowOutcome, DEFAULT_OUTBOX_TABLE,
};
use crate::event::Event;
use crate::headers;
use crate::redact::ConnectionString;
use crate::store::migrations::{Migration, PendingMigration};
use crate::store::postgres::{
    apply_migrations, apply_migrations_on, by_id_only, new_manager, new_pool, parse_url,
    pending_migrations, pg, validate_pool, MigrationTarget, PgConnection, PgConnector, Pool,
    SessionLimits, DEFAULT_MIGRATION_LOCK_TIMEOUT,
};
use crate::store::{validate_table_name, StoreError};
use crate::tls::TlsSettings;
use chrono::{DateTime, Utc};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{GenericClient, Row};
use std::time::Duration;
use uuid::Uuid;

/// The embedded outbox migrations for PostgreSQL, from `sql/postgres/outbox/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_event_outbox.sql",
        sql: include_str!("../../../sql/postgres/outbox/0001_event_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "0002_headers.sql",
        sql: include_str!("../../../sql/postgres/outbox/0002_headers.sql"),
    },
];

/// The `NOTIFY` channel of an outbox table (at most 57 characters, within PostgreSQL's 63), so
/// a relay hears only about its own table.
fn channel(table: &str) -> String {
    format!("eventflow_outbox_{table}")
}

/// Candidate rows looked at per row a claim may take: room to skip the aggregates other relays
/// hold.
const CANDIDATES_PER_ROW: i64 = 4;

/// The planner's choices for a claim's transaction. A claim's only good plan is a walk of the
/// due-rows index in id order that stops at its limit, and a primary-key or index probe for
/// each row it keeps; every other plan reads every due row. Without statistics (a new table, a
/// flood between two runs of autovacuum, a server with autovacuum off) the planner expects a
/// few due rows where there are many, and chose to read and sort them all, or to hash them, for
/// each claim: on 70,000 due rows, 60 ms per claim of 500, planned for the call as the relay's
/// sessions plan every statement (8 s with a generic plan made on the empty table). With these
/// scans and joins priced out, the claim takes its good plan whatever the statistics say: 5 ms
/// on the same rows (9 ms generic). `SET LOCAL` ends with the transaction. Sorts stay allowed
/// (the batch is sorted by id at the end, which no plan avoids) so that no plan carries a
/// disabled node's cost, which would set off JIT compilation.
const CLAIM_PLANNER: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// An aggregate's advisory lock key for enqueueing transactions: 64 bits of the md5 of a tag
/// and the whole id (`pg_advisory_xact_lock(bigint)`), so ids that share a part (all version-1
/// UUIDs of one node share their last 48 bits; version-7 UUIDs made close together their first
/// 48) do not share a key. Relays try a second key made with another tag, so a relay never
/// makes an application wait.
///
/// Other users of the single-key form share the key space: the inbox's ordered mode
/// (`hashtext(table) << 32 # md5(id)`), the migration lock, and any advisory locks the
/// application takes itself. The tag makes these keys independent hashes of theirs, so a
/// collision has a chance of about 2^-64 per pair of keys held at once, and its only effect is
/// that two transactions wait for each other.
const ENQUEUE_LANE: &str =
    "('x' || left(md5('eventflow outbox ' || aggregate_id::text), 16))::bit(64)::int8";
/// The relays' try-only key for an aggregate; see [`ENQUEUE_LANE`].
const RELAY_LANE: &str =
    "('x' || left(md5('eventflow relay ' || aggregate_id::text), 16))::bit(64)::int8";

const COLUMNS: &str = "id, stream, event_id, event_type, aggregate_id, correlation_id, \
     causation_id, occurred_on, payload, status, attempts, next_attempt_at, created_at, \
     published_at, last_error, last_error_at, stream_entry_id, headers";

/// Configures a [`PostgresOutbox`]; see [`PostgresOutbox::builder`]. Every setter says its
/// default.
///
/// ```no_run
/// use eventflow::outbox::OutboxRelay;
/// use eventflow::store::outbox::{OutboxStore, PostgresOutbox};
/// use std::time::Duration;
///
/// let outbox = PostgresOutbox::builder("host=db user=app dbname=app")
///     .table("billing_outbox")
///     .pool_size(4)
///     .connect_timeout(Duration::from_secs(5))
///     .build()?;
/// outbox.migrate()?;
/// let relay = OutboxRelay::builder()
///     .store(outbox)
///     .redis("redis://127.0.0.1:6379")
///     .build()?
///     .start()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PostgresOutboxBuilder {
    url: ConnectionString,
    pool_size: u32,
    connect_timeout: Duration,
    table: String,
    limits: SessionLimits,
    migration_lock_timeout: Duration,
    tls: TlsSettings,
}

impl PostgresOutboxBuilder {
    /// TLS settings in code, for the pool and the listener alike: a CA file, a client
    /// certificate, verification on or off. They win over the connection string's
    /// `sslrootcert`, `sslcert`, `sslkey` and `sslmode`; see [`crate::tls`] for the modes.
    /// Defaults to none (the connection string decides).
    pub fn tls(mut self, settings: TlsSettings) -> Self {
        self.tls = settings;
        self
    }

    /// How long a migration's DDL statement waits for its table lock before giving up,
    /// pausing and trying again (logged, up to 30 attempts), so writers are never queued long
    /// behind it. Defaults to 2 s.
    pub fn migration_lock_timeout(mut self, timeout: Duration) -> Self {
        self.migration_lock_timeout = timeout;
        self
    }

    /// Most pooled connections. Each relay thread holds one while it publishes a batch, and
    /// retention one while it deletes. Defaults to 4.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// How long to wait for a connection before reporting the database unavailable.
    /// Defaults to 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The outbox table's name. Defaults to `event_outbox`.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// The timeouts and keepalives every connection carries, the listener's included (the
    /// handler time limit does not apply: relays run no handlers). Defaults to
    /// [`SessionLimits::default()`].
    pub fn session_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Validates the settings and creates the pool. Connections are made on first use, so this
    /// succeeds while the database is down.
    pub fn build(self) -> Result<PostgresOutbox, StoreError> {
        validate_table_name(&self.table)?;
        validate_pool(self.pool_size, self.connect_timeout)?;
        let (mut config, connector) = parse_url(self.url.expose(), &self.tls)?;
        config.connect_timeout(self.connect_timeout);
        // The relay's statements are prepared once per connection, often while the table is
        // still small; a generic plan made then can scan the whole backlog per row once it
        // has grown (and autovacuum may not have analyzed it yet). Custom plans see the table
        // as it is at each claim.
        let options = match config.get_options() {
            Some(given) => format!("{given} -c plan_cache_mode=force_custom_plan"),
            None => "-c plan_cache_mode=force_custom_plan".to_string(),
        };
        config.options(&options);
        let manager = new_manager(config, connector, &self.limits);
        let (listen_config, listen_connector) = manager.parts();
        let pool = new_pool(manager, self.pool_size, self.connect_timeout);
        Ok(PostgresOutbox {
            pool,
            listen_config,
            listen_connector,
            sql: Queries::new(&self.table),
            table: self.table,
            migration_lock_timeout: self.migration_lock_timeout,
        })
    }
}

/// The outbox in PostgreSQL, for relays. Applications enqueue with
/// [`crate::outbox::enqueue`] on their own connection.
///
/// Its sessions plan every statement for the table as it is (`plan_cache_mode =
/// force_custom_plan`): a plan cached while the table was small can scan the whole backlog per
/// row once it has grown.
pub struct PostgresOutbox {
    pool: Pool,
    /// For the listener's own connection, which stays out of the pool: a pooled connection
    /// would keep listening after it went back.
    listen_config: postgres::Config,
    /// The pool's TLS connector, so the listener connects as the pool does.
    listen_connector: PgConnector,
    table: String,
    sql: Queries,
    migration_lock_timeout: Duration,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No connection string: it may hold a password.
        f.debug_struct("PostgresOutbox")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl PostgresOutbox {
    /// Settings for an outbox at `url` (`postgresql://user@host/db` or `host=... user=...`).
    pub fn builder(url: impl Into<String>) -> PostgresOutboxBuilder {
        PostgresOutboxBuilder {
            url: ConnectionString::new(url),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            limits: SessionLimits::default(),
            table: DEFAULT_OUTBOX_TABLE.to_string(),
            migration_lock_timeout: DEFAULT_MIGRATION_LOCK_TIMEOUT,
            tls: TlsSettings::default(),
        }
    }

    /// An outbox at `url` with default settings.
    pub fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// The connection pool, for the application's own queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn migration_target(&self) -> MigrationTarget<'_> {
        MigrationTarget {
            target: format!("outbox:{}", self.table),
            migrations: MIGRATIONS,
            render: Box::new(|migration| migration.render_as(DEFAULT_OUTBOX_TABLE, &self.table)),
            lock_timeout: self.migration_lock_timeout,
        }
    }

    fn connection(&self) -> Result<r2d2::PooledConnection<crate::store::PgManager>, StoreError> {
        self.pool.get().map_err(StoreError::Pool)
    }

    fn publish_due_on(
        &self,
        conn: &mut PgConnection,
        claim: &ClaimDue,
        publish: &mut dyn FnMut(&[OutboxRow]) -> Delivery,
    ) -> Result<PublishRound, StoreError> {
        let claim_due = conn
            .prepared(&self.sql.claim_due)
            .map_err(pg("prepare claim"))?;
        let record = conn
            .prepared(&self.sql.record_outcomes)
            .map_err(pg("prepare record"))?;
        let mut tx = conn.transaction().map_err(pg("begin claim"))?;
        tx.batch_execute(CLAIM_PLANNER)
            .map_err(pg("set the claim's planner settings"))?;
        let limit = i64::try_from(claim.limit).unwrap_or(i64::MAX);
        let read: Vec<_> = tx
            .query(&claim_due, &[&claim.now, &limit])
            .map_err(pg("claim due outbox rows"))?
            .iter()
            .map(|row| Ok((column(row, 0, "id")?, read_row(row))))
            .collect::<Result<_, StoreError>>()?;
        let claimed = read.len();
        let (rows, unreadable) = set_aside(&self.table, read);
        if !unreadable.is_empty() {
            let (ids, reasons): (Vec<i64>, Vec<String>) = unreadable
                .into_iter()
                .map(|(id, reason)| (id, crate::store::truncate_error(&reason)))
                .unzip();
            tx.execute(&self.sql.set_aside, &[&ids, &reasons, &claim.now])
                .map_err(pg("dead-letter unreadable outbox rows"))?;
            tx.commit().map_err(pg("commit set-aside rows"))?;
            return Ok(set_aside_round(claimed, ids.len()));
        }
        // A short claim: are due rows left that another relay holds (or that wait behind one
        // it holds)? They become claimable when it commits. Asked after publishing, so that
        // the round trip is not between an enqueueing commit and its event's arrival.
        let short = claimed < claim.limit;
        let due_left = |tx: &mut crate::store::PgTransaction<'_>, rows: &[OutboxRow]| {
            let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
            let params: [&(dyn ToSql + Sync); 2] = [&claim.now, &ids];
            tx.query_one(&self.sql.due_left, &params)
                .and_then(|row| row.try_get::<_, bool>(0))
                .map_err(pg("look for due outbox rows left"))
        };
        if rows.is_empty() {
            return Ok(PublishRound {
                contended: short && due_left(&mut tx, &rows)?,
                ..PublishRound::default()
            });
        }
        let outcomes = match hand_over(&rows, publish)? {
            HandedOver::Record(outcomes) => outcomes,
            // Dropping the transaction rolls it back and frees the rows.
            HandedOver::Abandoned(round) => return Ok(round),
        };
        let contended = short && due_left(&mut tx, &rows)?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut statuses = Vec::with_capacity(rows.len());
        let mut entry_ids = Vec::with_capacity(rows.len());
        let mut errors = Vec::with_capacity(rows.len());
        let mut next_at = Vec::with_capacity(rows.len());
        for (row, outcome) in rows.iter().zip(&outcomes) {
            let (status, entry, error, at) = match outcome {
                RowOutcome::Published { entry_id } => {
                    (OutboxStatus::Published, Some(entry_id.as_str()), None, None)
                }
                RowOutcome::Retry { error, at } => {
                    (OutboxStatus::Failed, None, Some(error.as_str()), Some(*at))
                }
                RowOutcome::DeadLetter { error } => {
                    (OutboxStatus::DeadLetter, None, Some(error.as_str()), None)
                }
                // Left as it was: not in the update.
                RowOutcome::Deferred { .. } => continue,
            };
            ids.push(row.id);
            statuses.push(status.as_str());
            entry_ids.push(entry);
            errors.push(error.map(crate::store::truncate_error));
            next_at.push(at);
        }
        tx.execute(
            &record,
            &[&ids, &statuses, &entry_ids, &errors, &next_at, &claim.now],
        )
        .map_err(pg("record publish outcomes"))?;
        tx.commit().map_err(pg("commit published batch"))?;
        Ok(PublishRound {
            contended,
            ..tally(rows.len(), &outcomes)
        })
    }
}

impl OutboxStore for PostgresOutbox {
    fn table(&self) -> &str {
        &self.table
    }

    fn migrate(&self) -> Result<(), StoreError> {
        apply_migrations(&self.pool, &self.migration_target())
    }

    fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StoreError> {
        pending_migrations(&self.pool, &self.migration_target())
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn publish_due(
        &self,
        claim: &ClaimDue,
        publish: &mut dyn FnMut(&[OutboxRow]) -> Delivery,
    ) -> Result<PublishRound, StoreError> {
        let mut conn = self.connection()?;
        let round = self.publish_due_on(&mut conn, claim, publish);
        if round.is_err() {
            conn.forget_statements(); // they may have gone stale
        }
        round
    }

    fn delete_published_before(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let deleted = self
            .connection()?
            .execute(&self.sql.delete_published, &[&before, &limit])
            .map_err(pg("delete published outbox rows"))?;
        Ok(deleted as usize)
    }

    fn count_by_status(&self) -> Result<OutboxCounts, StoreError> {
        let rows = self
            .connection()?
            .query(&self.sql.count_by_status, &[])
            .map_err(pg("count outbox rows"))?;
        let mut counts = OutboxCounts::default();
        for row in rows {
            let what = format!("{} rows", self.table);
            counts.add(
                &self.table,
                column(&row, &what, "status")?,
                column::<i64>(&row, &what, "rows")? as u64,
                column(&row, &what, "oldest")?,
            )?;
        }
        Ok(counts)
    }

    fn find_by_event_id(&self, event_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        self.connection()?
            .query(&self.sql.find_by_event_id, &[&event_id])
            .map_err(pg("find outbox rows"))?
            .iter()
            .map(read_row)
            .collect()
    }

    fn list_rows(&self, page: &OutboxPage) -> Result<Vec<OutboxRow>, StoreError> {
        let status = page.status.map(OutboxStatus::as_str);
        let after = page.after_id.unwrap_or(i64::MIN);
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        self.connection()?
            .query(&self.sql.list_rows, &[&status, &after, &limit])
            .map_err(pg("list outbox rows"))?
            .iter()
            .map(read_row)
            .collect()
    }

    fn requeue_dead_letters(&self, which: Requeue<'_>) -> Result<usize, StoreError> {
        let (ids, all): (&[i64], bool) = match which {
            Requeue::Ids(ids) => (ids, false),
            Requeue::All => (&[], true),
        };
        let requeued = self
            .connection()?
            .execute(&self.sql.requeue_dead_letters, &[&ids, &all])
            .map_err(pg("requeue dead-lettered outbox rows"))?;
        Ok(requeued as usize)
    }

    fn listener(&self) -> Result<Option<Box<dyn EnqueueListener>>, StoreError> {
        let mut client = self
            .listen_connector
            .connect(&self.listen_config)
            .map_err(pg("connect the outbox listener"))?;
        // Quoted: pg_notify takes the channel name as written, LISTEN would fold it to
        // lower case.
        client
            .batch_execute(&format!("LISTEN \"{}\"", channel(&self.table)))
            .map_err(pg("listen for enqueued rows"))?;
        Ok(Some(Box::new(PgListener { client })))
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.connection()?
            .batch_execute("SELECT 1")
            .map_err(pg("ping"))
    }
}

/// A dedicated connection listening on the outbox table's channel.
struct PgListener {
    client: postgres::Client,
}

impl EnqueueListener for PgListener {
    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        let woken = {
            let mut notifications = self.client.notifications();
            // One notice is enough; the rest that arrived with it are drained, since one
            // wake-up serves them all.
            let woken = notifications
                .timeout_iter(timeout)
                .next()
                .map_err(pg("wait for enqueued rows"))?
                .is_some();
            let mut buffered = notifications.iter();
            while buffered
                .next()
                .map_err(pg("read enqueue notices"))?
                .is_some()
            {}
            woken
        };
        if self.client.is_closed() {
            return Err(StoreError::Closed("the outbox listener's connection"));
        }
        Ok(woken)
    }
}

/// Writes `entries` (events with their streams) to `table`, through the caller's client or
/// transaction: one statement, one round trip, atomic on its own. The aggregates' locks are
/// taken sorted by key, whatever the streams, so two transactions never wait in a circle on
/// locks taken by one call each.
/// Creates or upgrades outbox `table` (a validated name) on the application's `client`: a
/// `Client` (in a transaction of its own) or a `Transaction` (in a savepoint, so it commits
/// with the caller's transaction). Recorded in the migrations table as the relay's own
/// migration is, so either finds the other's work done.
pub(crate) fn migrate_on<C: GenericClient>(client: &mut C, table: &str) -> Result<(), StoreError> {
    apply_migrations_on(
        client,
        &MigrationTarget {
            target: format!("outbox:{table}"),
            migrations: MIGRATIONS,
            render: Box::new(|migration| migration.render_as(DEFAULT_OUTBOX_TABLE, table)),
            lock_timeout: DEFAULT_MIGRATION_LOCK_TIMEOUT,
        },
    )
}

pub(crate) fn enqueue<C: GenericClient>(
    client: &mut C,
    table: &str,
    entries: &[(&str, &Event)],
) -> Result<(), StoreError> {
    let streams: Vec<&str> = entries.iter().map(|(stream, _)| *stream).collect();
    let events: Vec<&Event> = entries.iter().map(|(_, event)| *event).collect();
    let event_ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let aggregates: Vec<Uuid> = events.iter().map(|e| e.aggregate_id).collect();
    let correlations: Vec<Option<&str>> =
        events.iter().map(|e| e.correlation_id.as_deref()).collect();
    let causations: Vec<Option<&str>> = events.iter().map(|e| e.causation_id.as_deref()).collect();
    let occurred: Vec<DateTime<Utc>> = events.iter().map(|e| e.occurred_on).collect();
    let payloads: Vec<String> = events.iter().map(|e| e.payload.to_string()).collect();
    let headers: Vec<Option<String>> = events
        .iter()
        .map(|e| headers::to_column_text(&e.headers))
        .collect();
    let channel = channel(table);
    let params: [(&(dyn ToSql + Sync), Type); 10] = [
        (&streams, Type::VARCHAR_ARRAY),
        (&aggregates, Type::UUID_ARRAY),
        (&event_ids, Type::VARCHAR_ARRAY),
        (&types, Type::VARCHAR_ARRAY),
        (&correlations, Type::VARCHAR_ARRAY),
        (&causations, Type::VARCHAR_ARRAY),
        (&occurred, Type::TIMESTAMPTZ_ARRAY),
        (&payloads, Type::TEXT_ARRAY),
        (&channel, Type::TEXT),
        (&headers, Type::TEXT_ARRAY),
    ];
    // A typed query goes out in one round trip: no separate prepare on the caller's connection.
    let inserted: i64 = client
        .query_typed_one(&enqueue_sql(table), &params)
        .map_err(pg("enqueue outbox events"))?
        .get(0);
    if inserted as usize != events.len() {
        return Err(StoreError::Corrupt {
            row: format!("{table} enqueue"),
            reason: format!("inserted {inserted} of {} rows", events.len()),
        });
    }
    Ok(())
}

/// The unpublished (pending) rows of `table` that `client` sees, in id order: what the caller's
/// transaction enqueued, for [`crate::testing::enqueued`].
pub(crate) fn list_pending<C: GenericClient>(
    client: &mut C,
    table: &str,
) -> Result<Vec<OutboxRow>, StoreError> {
    client
        .query(
            &format!("SELECT {COLUMNS} FROM {table} WHERE status = 'pending' ORDER BY id"),
            &[],
        )
        .map_err(pg("list enqueued outbox rows"))?
        .iter()
        .map(read_row)
        .collect()
}

fn enqueue_sql(table: &str) -> String {
    let lane = ENQUEUE_LANE.replace("aggregate_id", "a");
    format!(
        "WITH locked AS (
            SELECT count(*) AS n FROM (
                SELECT pg_advisory_xact_lock(lane)
                FROM (SELECT DISTINCT {lane} AS lane FROM unnest($2::uuid[]) AS a) AS lanes
                ORDER BY lane) AS taken
        ), inserted AS (
            INSERT INTO {table} (event_id, stream, event_type, aggregate_id, correlation_id,
                                 causation_id, occurred_on, payload, headers)
            SELECT e.event_id, e.stream, e.event_type, e.aggregate_id, e.correlation_id,
                   e.causation_id, e.occurred_on, e.payload::jsonb, e.headers::jsonb
            FROM unnest($3::varchar[], $1::varchar[], $4::varchar[], $2::uuid[], $5::varchar[],
                        $6::varchar[], $7::timestamptz[], $8::text[], $10::text[]) WITH ORDINALITY
                 AS e(event_id, stream, event_type, aggregate_id, correlation_id, causation_id,
                      occurred_on, payload, headers, n)
            -- The locks are taken before the first id is drawn.
            WHERE (SELECT n FROM locked) >= 0
            ORDER BY e.n
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM inserted), pg_notify($9, '')"
    )
}

/// The relay's statements for one outbox table.
#[derive(Debug)]
struct Queries {
    claim_due: String,
    record_outcomes: String,
    delete_published: String,
    count_by_status: String,
    find_by_event_id: String,
    list_rows: String,
    requeue_dead_letters: String,
    set_aside: String,
    due_left: String,
}

impl Queries {
    fn new(t: &str) -> Self {
        Self {
            // Candidates: due rows in id order, less those behind an earlier row of their
            // aggregate that waits (a retry not yet due, a dead letter), left out before the
            // limit so they cannot crowd out publishable rows; a few batches' worth, to leave
            // room for skipping the aggregates other relays hold.
            // Lanes: candidates, in that order, whose aggregate try-lock this relay gets (or
            // holds already), until a batch is had: the limit stops the try-locks there, so a
            // relay locks only the aggregates it takes. A materialized CTE is scanned in the
            // order it was filled.
            // Due: those rows locked, skipping any another session holds; the due conditions
            // are checked again because a row another relay published after this statement
            // began is re-read when its lock is taken, and must drop out.
            // Last, a row is published only if no earlier row of its aggregate is unpublished
            // and outside the batch (one locked by some other session, say).
            // After the candidates, every step finds rows by id, fenced (a LATERAL probe with
            // OFFSET 0, the status test out of the planner's sight) so that its one plan is a
            // primary-key probe per row whatever the table held when it was made: a plan
            // cached while the table was empty locked the rows by reading every due row for
            // each lane (on 70,000 due rows, 5 s per claim of 500).
            claim_due: format!(
                "WITH candidates AS MATERIALIZED (
                    SELECT id, aggregate_id FROM {t} AS o
                    WHERE status IN ('pending', 'failed')
                      AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
                      AND NOT EXISTS (
                        SELECT 1 FROM {t} AS w
                        WHERE w.aggregate_id = o.aggregate_id AND w.id < o.id
                          AND w.status IN ('failed', 'dead_letter')
                          AND (w.status = 'dead_letter' OR w.next_attempt_at > $1))
                    ORDER BY id
                    LIMIT $2::bigint * {CANDIDATES_PER_ROW}
                ), lanes AS MATERIALIZED (
                    SELECT c.id FROM candidates AS c
                    WHERE pg_try_advisory_xact_lock({candidate_lane})
                    LIMIT $2
                ), due AS MATERIALIZED (
                    SELECT d.id FROM lanes CROSS JOIN LATERAL (
                        SELECT o.id FROM {t} AS o
                        WHERE o.id = lanes.id AND {still_due}
                        OFFSET 0 FOR UPDATE SKIP LOCKED) AS d
                )
                SELECT o.* FROM due CROSS JOIN LATERAL (
                    SELECT {COLUMNS} FROM {t} WHERE id = due.id OFFSET 0) AS o
                WHERE NOT EXISTS (
                    SELECT 1 FROM {t} AS b
                    WHERE b.aggregate_id = o.aggregate_id AND b.id < o.id
                      AND b.status <> 'published'
                      AND b.id NOT IN (SELECT id FROM due))
                ORDER BY o.id",
                candidate_lane = RELAY_LANE.replace("aggregate_id", "c.aggregate_id"),
                still_due = by_id_only(
                    "o.status IN ('pending', 'failed') \
                     AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= $1)"
                ),
            ),
            record_outcomes: format!(
                "UPDATE {t} AS o SET
                    status = u.status,
                    attempts = o.attempts + 1,
                    next_attempt_at = u.next_at,
                    published_at = CASE WHEN u.status = 'published' THEN $6 ELSE o.published_at END,
                    stream_entry_id = COALESCE(u.entry_id, o.stream_entry_id),
                    last_error = COALESCE(u.error, o.last_error),
                    last_error_at = CASE WHEN u.error IS NULL THEN o.last_error_at ELSE $6 END
                FROM unnest($1::bigint[], $2::varchar[], $3::varchar[], $4::text[],
                            $5::timestamptz[]) AS u(id, status, entry_id, error, next_at)
                WHERE o.id = u.id"
            ),
            delete_published: format!(
                "DELETE FROM {t} WHERE id IN (
                    SELECT id FROM {t}
                    WHERE status = 'published' AND published_at < $1
                    ORDER BY published_at
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED)"
            ),
            count_by_status: format!(
                "SELECT status, count(*) AS rows,
                        min(created_at) FILTER (WHERE status IN ('pending', 'failed')) AS oldest
                 FROM {t} GROUP BY status"
            ),
            find_by_event_id: format!("SELECT {COLUMNS} FROM {t} WHERE event_id = $1 ORDER BY id"),
            list_rows: format!(
                "SELECT {COLUMNS} FROM {t}
                 WHERE ($1::varchar IS NULL OR status = $1) AND id > $2
                 ORDER BY id LIMIT $3"
            ),
            // Rows the relay cannot read become dead letters with the reason, without an
            // attempt counted; an operator fixes the row and requeues it.
            set_aside: format!(
                "UPDATE {t} AS o SET status = 'dead_letter', last_error = u.reason,
                    last_error_at = $3
                 FROM unnest($1::bigint[], $2::text[]) AS u(id, reason)
                 WHERE o.id = u.id"
            ),
            // The claim's candidate conditions, less the rows just claimed.
            due_left: format!(
                "SELECT EXISTS (
                    SELECT 1 FROM {t} AS o
                    WHERE status IN ('pending', 'failed')
                      AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
                      AND o.id <> ALL($2::bigint[])
                      AND NOT EXISTS (
                        SELECT 1 FROM {t} AS w
                        WHERE w.aggregate_id = o.aggregate_id AND w.id < o.id
                          AND w.status IN ('failed', 'dead_letter')
                          AND (w.status = 'dead_letter' OR w.next_attempt_at > $1)))"
            ),
            requeue_dead_letters: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = NULL
                 WHERE status = 'dead_letter' AND ($2 OR id = ANY($1))"
            ),
        }
    }
}

/// Column `index` of `row`, or an error naming the row (`what`) and the column: a value the
/// driver cannot convert (an `infinity` timestamp, an unexpected NULL) must not panic.
fn column<'a, T: postgres::types::FromSql<'a>>(
    row: &'a Row,
    what: impl std::fmt::Display,
    index: impl postgres::row::RowIndex + std::fmt::Display,
) -> Result<T, StoreError> {
    row.try_get(&index).map_err(|error| StoreError::Corrupt {
        row: what.to_string(),
        reason: format!("column {index}: {error}"),
    })
}

fn read_row(row: &Row) -> Result<OutboxRow, StoreError> {
    let id: i64 = column(row, "outbox", "id")?;
    let status: String = column(row, id, "status")?;
    Ok(OutboxRow {
        id,
        stream: column(row, id, "stream")?,
        event: Event {
            event_id: column(row, id, "event_id")?,
            event_type: column(row, id, "event_type")?,
            aggregate_id: column(row, id, "aggregate_id")?,
            occurred_on: column(row, id, "occurred_on")?,
            payload: column(row, id, "payload")?,
            correlation_id: column(row, id, "correlation_id")?,
            causation_id: column(row, id, "causation_id")?,
            headers: headers::from_column(column(row, id, "headers")?).map_err(|reason| {
                StoreError::Corrupt {
                    row: id.to_string(),
                    reason,
                }
            })?,
        },
        status: OutboxStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            row: id.to_string(),
            reason: format!("unknown outbox status {status:?}"),
        })?,
        attempts: column(row, id, "attempts")?,
        next_attempt_at: column(row, id, "next_attempt_at")?,
        created_at: column(row, id, "created_at")?,
        published_at: column(row, id, "published_at")?,
        last_error: column(row, id, "last_error")?,
        last_error_at: column(row, id, "last_error_at")?,
        stream_entry_id: column(row, id, "stream_entry_id")?,
    })
}
