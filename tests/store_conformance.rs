//! The store conformance suite: what every [`InboxStore`] must do, written once.
//!
//! Each check is a function generic over [`Backend`] (an [`InboxStore`] plus the little a test
//! needs to look inside: a marker table that handlers write to in the claim transaction, so
//! committed handler effects can be counted). The `conformance!` list at the bottom runs every
//! check against SQLite (in memory) always, and against PostgreSQL when it answers
//! (`EVENTFLOW_TEST_DATABASE_URL`; skipped with a message otherwise, or failing under
//! `EVENTFLOW_REQUIRE_SERVICES=1`). Checks that only make sense on PostgreSQL (a database made by
//! the earlier toolkit, an aborted transaction, row locks held across connections) are in
//! `postgres_only`. Every test works on its own inbox table, so they run in parallel; PostgreSQL
//! tables are dropped when the test ends.
//!
//! Time comes from a [`ManualClock`], so nothing here sleeps.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Deref;
use std::thread;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use eventflow::event::EntryError;
use eventflow::quarantine::{self, encode_fields, QuarantinedEntry, RawFields};

use eventflow::store::{
    validate_table_name, AfterDeadLetter, Claim, ClaimParams, Cleanup, Cursor, DeadLetterRequeue,
    DeadLetterSkip, Failure, InboxStore, MalformedEntry, Page, ParkedAggregate, ParkedPage,
    ParkedSummary, ProcessedCleanup, QuarantineCleanup, QuarantineFilter, QuarantineReplay,
    QuarantineSummary, ReceivedBatch, ReceivedEvent, RowFilter, RowHandler, Settled, StatusCounts,
    StoreError, Stored, Verdict, NEVER_FINISHED,
};
use eventflow::transport::StreamEntry;
use eventflow::{
    Clock, Error, Event, EventStatus, InboxRow, ManualClock, PostgresStore, SqliteStore,
};
use serde_json::json;
use uuid::Uuid;

/// What the suite needs beyond [`InboxStore`].
trait Backend: InboxStore + Sized {
    /// Whether the database answers; prints why the test is skipped when it does not.
    fn available(test: &str) -> bool;
    /// A store on inbox table `table`, with nothing created yet.
    fn with_table(table: &str) -> Result<Self, StoreError>;
    /// Creates `<table>_markers`, which handlers write to inside the claim transaction.
    fn create_markers(&self);
    /// Writes one marker in the handler's transaction.
    fn write_marker(&self, tx: &mut Self::Tx<'_>, key: &str) -> Result<(), String>;
    /// Every committed marker, in insertion order.
    fn markers(&self) -> Vec<String>;
    /// The migration versions recorded for this inbox table, ascending.
    fn migration_versions(&self) -> Vec<u32>;
    /// Sets a row's status by hand, as no store operation would (to `processing`, say).
    fn force_status(&self, event_id: &str, status: EventStatus);
    /// Clears a row's stream, as rows stored by other writers have none.
    fn clear_stream(&self, event_id: &str);
    /// Removes what the test created; best effort.
    fn drop_tables(&self);
    /// Ends the database session holding `process`'s lease, as an administrator or a network
    /// failure would. Only called on stores that give leases.
    fn end_lease_session(&self, process: i32);
}

impl Backend for SqliteStore {
    fn available(_test: &str) -> bool {
        true
    }

    fn with_table(table: &str) -> Result<Self, StoreError> {
        SqliteStore::open_in_memory()?.with_table(table)
    }

    fn create_markers(&self) {
        let sql = format!(
            "CREATE TABLE {}_markers (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL)",
            self.table()
        );
        self.with_connection(|conn| conn.execute_batch(&sql))
            .expect("create the marker table");
    }

    fn write_marker(&self, tx: &mut Self::Tx<'_>, key: &str) -> Result<(), String> {
        tx.execute(
            &format!("INSERT INTO {}_markers (key) VALUES (?1)", self.table()),
            [key],
        )
        .map(drop)
        .map_err(|error| support::error_chain(&error))
    }

    fn markers(&self) -> Vec<String> {
        let sql = format!("SELECT key FROM {}_markers ORDER BY seq", self.table());
        self.with_connection(|conn| {
            let mut statement = conn.prepare(&sql)?;
            let keys = statement.query_map([], |row| row.get(0))?;
            keys.collect::<rusqlite::Result<Vec<String>>>()
        })
        .expect("read markers")
    }

    fn migration_versions(&self) -> Vec<u32> {
        let target = format!("inbox:{}", self.table());
        self.with_connection(|conn| {
            let mut statement = conn.prepare(
                "SELECT version FROM eventflow_migrations WHERE target = ?1 ORDER BY version",
            )?;
            let versions = statement.query_map([&target], |row| row.get(0))?;
            versions.collect::<rusqlite::Result<Vec<u32>>>()
        })
        .expect("read applied migrations")
    }

    fn force_status(&self, event_id: &str, status: EventStatus) {
        let sql = format!(
            "UPDATE {} SET status = ?1 WHERE event_id = ?2",
            self.table()
        );
        let changed = self
            .with_connection(|conn| conn.execute(&sql, [status.as_str(), event_id]))
            .expect("force a status");
        assert_eq!(changed, 1, "{event_id}");
    }

    fn clear_stream(&self, event_id: &str) {
        let sql = format!(
            "UPDATE {} SET stream = NULL WHERE event_id = ?1",
            self.table()
        );
        let changed = self
            .with_connection(|conn| conn.execute(&sql, [event_id]))
            .expect("clear a stream");
        assert_eq!(changed, 1, "{event_id}");
    }

    fn drop_tables(&self) {
        // In memory: gone with the store.
    }

    fn end_lease_session(&self, _process: i32) {
        unreachable!("SQLite gives no process leases");
    }
}

impl Backend for PostgresStore {
    fn available(test: &str) -> bool {
        support::postgres_available(test)
    }

    fn with_table(table: &str) -> Result<Self, StoreError> {
        // Time from the tests' manual clock, not the database's (see `postgres_only` for that).
        PostgresStore::builder(support::postgres_url())
            .table(table)
            .pool_size(8)
            .database_clock(false)
            .build()
    }

    fn create_markers(&self) {
        let sql = format!(
            "CREATE TABLE {}_markers (seq BIGSERIAL PRIMARY KEY, key TEXT NOT NULL)",
            self.table()
        );
        self.pool()
            .get()
            .expect("a connection")
            .batch_execute(&sql)
            .expect("create the marker table");
    }

    fn write_marker(&self, tx: &mut Self::Tx<'_>, key: &str) -> Result<(), String> {
        tx.execute(
            &format!("INSERT INTO {}_markers (key) VALUES ($1)", self.table()),
            &[&key],
        )
        .map(drop)
        .map_err(|error| support::error_chain(&error))
    }

    fn markers(&self) -> Vec<String> {
        let sql = format!("SELECT key FROM {}_markers ORDER BY seq", self.table());
        self.pool()
            .get()
            .expect("a connection")
            .query(&sql, &[])
            .expect("read markers")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    fn migration_versions(&self) -> Vec<u32> {
        let target = format!("inbox:{}", self.table());
        self.pool()
            .get()
            .expect("a connection")
            .query(
                "SELECT version FROM eventflow_migrations WHERE target = $1 ORDER BY version",
                &[&target],
            )
            .expect("read applied migrations")
            .iter()
            .map(|row| row.get::<_, i32>(0) as u32)
            .collect()
    }

    fn force_status(&self, event_id: &str, status: EventStatus) {
        let sql = format!(
            "UPDATE {} SET status = $1 WHERE event_id = $2",
            self.table()
        );
        let changed = self
            .pool()
            .get()
            .expect("a connection")
            .execute(&sql, &[&status.as_str(), &event_id])
            .expect("force a status");
        assert_eq!(changed, 1, "{event_id}");
    }

    fn clear_stream(&self, event_id: &str) {
        let sql = format!(
            "UPDATE {} SET stream = NULL WHERE event_id = $1",
            self.table()
        );
        let changed = self
            .pool()
            .get()
            .expect("a connection")
            .execute(&sql, &[&event_id])
            .expect("clear a stream");
        assert_eq!(changed, 1, "{event_id}");
    }

    fn drop_tables(&self) {
        let Ok(mut conn) = self.pool().get() else {
            return;
        };
        let t = self.table();
        // Separate statements: a failing one must not take the others with it.
        let _ = conn.batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}_markers, {t}_quarantine, {t}"
        ));
        let _ = conn.execute(
            "DELETE FROM eventflow_migrations WHERE target IN ($1, $2)",
            &[&format!("inbox:{t}"), &format!("inbox-ordered:{t}")],
        );
        let _ = conn.execute(
            "DELETE FROM eventflow_inbox_owners WHERE inbox_table = $1",
            &[&t],
        );
        let _ = conn.execute(
            "DELETE FROM eventflow_inbox_streams WHERE inbox_table = $1",
            &[&t],
        );
        let _ = conn.execute(
            "DELETE FROM eventflow_consumer_processes WHERE inbox_table = $1",
            &[&t],
        );
    }

    fn end_lease_session(&self, process: i32) {
        let mut conn = self.pool().get().unwrap();
        // A two-key advisory lock shows its keys as classid and objid, with objsubid 2.
        let ended = conn
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
                 AND objsubid = 2 AND objid = $1::int8::oid AND granted",
                &[&i64::from(process)],
            )
            .unwrap();
        assert_eq!(
            ended.len(),
            1,
            "one session holds process {process}'s lease"
        );
    }
}

/// A store on its own table, dropped (on PostgreSQL) when the test ends, failed or not.
struct TestStore<B: Backend>(B);

impl<B: Backend> TestStore<B> {
    /// A store on a new table, not migrated; `None` when the database is not there.
    fn fresh(test: &str) -> Option<Self> {
        if !B::available(test) {
            return None;
        }
        let table = support::unique_name("t");
        Some(Self(B::with_table(&table).expect("build a store")))
    }
}

impl<B: Backend> Deref for TestStore<B> {
    type Target = B;

    fn deref(&self) -> &B {
        &self.0
    }
}

impl<B: Backend> Drop for TestStore<B> {
    fn drop(&mut self) {
        self.0.drop_tables();
    }
}

/// Migrates `store` as an ordered consumer's `start()` does, so the ordered claims below run
/// on the schema they have in production (unordered claims do not mind the extra index), and
/// creates its marker table.
fn setup<B: Backend>(store: &B) {
    store.migrate().expect("migrate");
    store
        .migrate_ordered()
        .expect("migrate for ordered consumers");
    store.create_markers();
}

/// Runs one check on a new store, migrated or not.
fn run<B: Backend>(test: &str, migrated: bool, check: fn(&B)) {
    let Some(store) = TestStore::<B>::fresh(test) else {
        return;
    };
    if migrated {
        setup(&*store);
    }
    check(&store);
}

// The handler: a closure, plus a record of what the store asked.

/// A [`RowHandler`] that calls a closure and records every call.
struct TestHandler<F> {
    handle: F,
    /// Event ids of the rows handled, in call order.
    calls: Vec<String>,
    /// `(event_id, error)` of each `failed_after` call.
    failed_after: Vec<(String, String)>,
    /// Refuse every admission to count retries and orphans, as a consumer does while another
    /// worker of its process runs a suspect.
    refuse_counting: bool,
}

impl<B: Backend, F> RowHandler<B> for TestHandler<F>
where
    F: for<'t> FnMut(&mut B::Tx<'t>, &InboxRow) -> Verdict,
{
    fn handle(&mut self, tx: &mut B::Tx<'_>, row: &InboxRow) -> Verdict {
        self.calls.push(row.event.event_id.clone());
        (self.handle)(tx, row)
    }

    fn failed_after(&mut self, row: &InboxRow, error: String) -> Verdict {
        self.failed_after
            .push((row.event.event_id.clone(), error.clone()));
        Verdict::Failed(failure_after(row, error))
    }

    fn admit(&mut self, _suspect: bool) -> bool {
        !self.refuse_counting
    }
}

/// What [`TestHandler::failed_after`] records: a retry in ten minutes.
fn failure_after(row: &InboxRow, error: String) -> Failure {
    Failure {
        status: EventStatus::Failed,
        retry_count: row.retry_count + 1,
        next_retry_at: Some(t0() + secs(600)),
        error_message: error,
        failed_at: t0() + secs(1),
    }
}

fn handler<B: Backend, F>(handle: F) -> TestHandler<F>
where
    F: for<'t> FnMut(&mut B::Tx<'t>, &InboxRow) -> Verdict,
{
    TestHandler {
        handle,
        calls: Vec::new(),
        failed_after: Vec::new(),
        refuse_counting: false,
    }
}

/// A handler that writes a marker (the row's event id) for every row, then returns the verdict
/// `script` holds for its event id, `Processed` when none.
fn marking<'s, B: Backend>(
    store: &'s B,
    script: HashMap<String, Verdict>,
) -> TestHandler<impl for<'t> FnMut(&mut B::Tx<'t>, &InboxRow) -> Verdict + 's> {
    handler::<B, _>(move |tx, row| {
        store
            .write_marker(tx, &row.event.event_id)
            .expect("write a marker");
        script
            .get(&row.event.event_id)
            .cloned()
            .unwrap_or(Verdict::Processed)
    })
}

fn script(pairs: &[(&str, Verdict)]) -> HashMap<String, Verdict> {
    pairs
        .iter()
        .map(|(id, verdict)| (id.to_string(), verdict.clone()))
        .collect()
}

// Fixtures.

const STREAM: &str = "orders";
const AGGREGATE: &str = "7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33";
const MAX_RETRIES: i32 = 3;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a timestamp")
        .to_utc()
}

/// The tests' epoch, with microseconds so their round trip is checked.
fn t0() -> DateTime<Utc> {
    at("2025-03-01T12:00:00.123456Z")
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn std_secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

/// A stream entry id.
fn sid(n: usize) -> String {
    format!("1735689600000-{n}")
}

/// An event using every attribute, with a nested payload.
fn event(id: &str) -> Event {
    Event::new(
        "OrderCreated",
        Uuid::parse_str(AGGREGATE).unwrap(),
        json!({
            "order_id": id,
            "amount": 12.5,
            "lines": [{"sku": "a-1", "qty": 2}, {"sku": "b-2", "qty": 1}],
            "note": "ünïcødé \"quoted\" 'single'",
            "gift": null,
        }),
    )
    .with_event_id(id)
    .with_occurred_on(at("2025-01-02T03:04:05.678901Z"))
    .with_correlation_id(format!("corr-{id}"))
    .with_causation_id(format!("cause-{id}"))
    .with_headers(
        [
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tenant", "ünïcødé \"quoted\""),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect(),
    )
}

fn received(id: &str, stream_id: &str) -> ReceivedEvent {
    ReceivedEvent {
        row_id: Uuid::now_v7(),
        stream_id: stream_id.to_string(),
        event: event(id),
    }
}

/// An event's fields as a stream entry delivers them: names as bytes.
fn raw_entry_fields(event: &Event) -> RawFields {
    StreamEntry::from_text_fields("0-0", event.to_entry_fields()).fields
}

/// A malformed entry with `fields`, its reason what the parser says about them.
fn malformed(stream_id: &str, fields: &[(&str, &[u8])]) -> (MalformedEntry, RawFields) {
    let fields: RawFields = fields
        .iter()
        .map(|(name, value)| (name.as_bytes().to_vec(), value.to_vec()))
        .collect();
    let reason = Event::from_entry(&StreamEntry {
        id: stream_id.to_string(),
        fields: fields.clone(),
    })
    .expect_err("the entry is malformed")
    .to_string();
    let entry = MalformedEntry {
        id: Uuid::now_v7(),
        stream_id: stream_id.to_string(),
        raw_fields: encode_fields(&fields),
        reason,
    };
    (entry, fields)
}

fn store_batch<B: Backend>(
    store: &B,
    stream: &str,
    events: &[ReceivedEvent],
    malformed: &[MalformedEntry],
    received_at: DateTime<Utc>,
) -> Stored {
    store
        .store_received(&ReceivedBatch {
            stream,
            ordered: false,
            events,
            malformed,
            received_at,
            max_retries: MAX_RETRIES,
            stored_by: None,
        })
        .expect("store_received")
}

/// Stores new events `ids` in one batch and checks they were all inserted.
fn store_events<B: Backend>(
    store: &B,
    ids: &[&str],
    received_at: DateTime<Utc>,
) -> Vec<ReceivedEvent> {
    let events: Vec<ReceivedEvent> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| received(id, &sid(n)))
        .collect();
    let stored = store_batch(store, STREAM, &events, &[], received_at);
    assert_eq!(
        stored.inserted,
        events.iter().map(|e| e.row_id).collect::<Vec<_>>()
    );
    events
}

/// Claims and handles with a savepoint per row from the start.
fn process<B: Backend>(
    store: &B,
    claim: Claim<'_>,
    clock: &dyn Clock,
    handler: &mut dyn RowHandler<B>,
) -> Vec<Settled> {
    process_with(store, claim, clock, false, handler)
}

fn process_with<B: Backend>(
    store: &B,
    claim: Claim<'_>,
    clock: &dyn Clock,
    optimistic: bool,
    handler: &mut dyn RowHandler<B>,
) -> Vec<Settled> {
    store
        .process_claimed(
            &ClaimParams {
                claim,
                clock,
                optimistic,
            },
            handler,
        )
        .expect("process_claimed")
}

/// `row` with the changes `edit` makes (`InboxRow` is `#[non_exhaustive]`, so a test changes
/// a copy rather than writing a literal).
fn edited(row: &InboxRow, edit: impl FnOnce(&mut InboxRow)) -> InboxRow {
    let mut row = row.clone();
    edit(&mut row);
    row
}

fn row<B: Backend>(store: &B, event_id: &str) -> InboxRow {
    store
        .find_by_event_id(event_id)
        .expect("find_by_event_id")
        .unwrap_or_else(|| panic!("no row for {event_id}"))
}

fn event_ids(settled: &[Settled]) -> Vec<&str> {
    settled
        .iter()
        .map(|s| s.row.event.event_id.as_str())
        .collect()
}

fn counts(pairs: &[(EventStatus, u64)]) -> StatusCounts {
    StatusCounts(pairs.iter().copied().collect::<BTreeMap<_, _>>())
}

fn retry_at(
    retry_count: i32,
    next_retry_at: DateTime<Utc>,
    message: &str,
    failed_at: DateTime<Utc>,
) -> Verdict {
    Verdict::Failed(Failure {
        status: EventStatus::Failed,
        retry_count,
        next_retry_at: Some(next_retry_at),
        error_message: message.to_string(),
        failed_at,
    })
}

fn dead_letter(retry_count: i32, message: &str, failed_at: DateTime<Utc>) -> Verdict {
    Verdict::Failed(Failure {
        status: EventStatus::DeadLetter,
        retry_count,
        next_retry_at: None,
        error_message: message.to_string(),
        failed_at,
    })
}

// Checks on every backend.

/// Gets a store that was never migrated.
/// `pending_migrations` (what `eventflow migrate --dry-run` prints) lists every embedded file on
/// a new database and changes nothing; after `migrate` it lists none.
fn pending_migrations_show_what_migrate_applies<B: Backend>(store: &B) {
    let pending = store
        .pending_migrations()
        .expect("pending on a new database");
    let versions: Vec<u32> = pending.iter().map(|m| m.version).collect();
    assert!(versions.len() >= 2, "{versions:?}");
    assert_eq!(versions, (1..=versions.len() as u32).collect::<Vec<_>>());
    for migration in &pending {
        assert!(
            migration
                .name
                .starts_with(&format!("{:04}_", migration.version)),
            "{migration:?}"
        );
        assert!(!migration.statements.is_empty(), "{migration:?}");
        assert!(
            migration
                .statements
                .iter()
                .all(|s| !s.contains("--") && !s.trim().is_empty()),
            "statements without comments: {migration:?}"
        );
    }
    assert!(
        pending[0]
            .statements
            .iter()
            .any(|s| s.contains(store.table())),
        "rendered for the store's table: {:?}",
        pending[0].statements
    );
    assert!(
        store.count_by_status().is_err(),
        "listing the pending migrations created nothing"
    );
    assert_eq!(
        store.pending_migrations().unwrap(),
        pending,
        "and recorded nothing"
    );
    store.migrate().expect("migrate");
    assert_eq!(store.pending_migrations().unwrap(), vec![]);
    assert_eq!(store.migration_versions(), versions);
}

fn migrate_is_idempotent<B: Backend>(store: &B) {
    assert!(
        store.count_by_status().is_err(),
        "a fresh store has no inbox table yet"
    );
    store.migrate().expect("first migrate");
    let versions = store.migration_versions();
    assert!(versions.len() >= 2, "{versions:?}");
    assert_eq!(
        versions,
        (1..=versions.len() as u32).collect::<Vec<_>>(),
        "each migration recorded once, in order"
    );
    let embedded: Vec<u32> = store.migrations().iter().map(|m| m.version).collect();
    assert_eq!(embedded, versions, "every embedded migration, in order");
    store.migrate().expect("second migrate, right after");
    assert_eq!(store.migration_versions(), versions);

    store.create_markers();
    store_events(store, &["m-1"], t0());
    let before = row(store, "m-1");
    store.migrate().expect("migrate with data");
    assert_eq!(row(store, "m-1"), before, "migrate leaves rows alone");
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Pending, 1)])
    );
    assert_eq!(store.list_quarantined(10, 0).unwrap(), vec![]);
    assert_eq!(
        store.quarantine_summary().unwrap(),
        QuarantineSummary::default()
    );
    store.ping().expect("ping");
}

fn store_received_inserts_new_and_skips_duplicates<B: Backend>(store: &B) {
    let first = vec![
        received("e-1", &sid(1)),
        received("e-2", &sid(2)),
        received("e-3", &sid(3)),
    ];
    assert_eq!(
        store_batch(store, STREAM, &first, &[], t0()),
        Stored {
            inserted: first.iter().map(|e| e.row_id).collect(),
            duplicates: 0,
            quarantined: 0,
        }
    );
    let original_e2 = row(store, "e-2");
    assert_eq!(original_e2.id, first[1].row_id);

    let mut e2_again = received("e-2", &sid(4));
    e2_again.event.event_type = "Changed".into();
    e2_again.event.payload = json!({"changed": true});
    let e4 = received("e-4", &sid(5));
    let mut e4_twin = received("e-4", &sid(6));
    e4_twin.event.payload = json!({"twin": true});
    let e5 = received("e-5", &sid(7));
    let second = vec![e2_again, e4.clone(), e4_twin, e5.clone()];
    assert_eq!(
        store_batch(store, STREAM, &second, &[], t0() + secs(1)),
        Stored {
            inserted: vec![e4.row_id, e5.row_id],
            duplicates: 2,
            quarantined: 0,
        }
    );
    assert_eq!(
        row(store, "e-2"),
        original_e2,
        "a duplicate changes nothing"
    );
    let stored_e4 = row(store, "e-4");
    assert_eq!(stored_e4.id, e4.row_id, "the first of a batch's twins wins");
    assert_eq!(stored_e4.event, e4.event);
    assert_eq!(stored_e4.stream_id, sid(5));
    assert_eq!(stored_e4.received_at, t0() + secs(1));
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Pending, 5)])
    );

    // A batch of only duplicates.
    let again = vec![received("e-1", &sid(8)), received("e-5", &sid(9))];
    assert_eq!(
        store_batch(store, STREAM, &again, &[], t0() + secs(2)),
        Stored {
            inserted: vec![],
            duplicates: 2,
            quarantined: 0,
        }
    );
    assert_eq!(store.count_by_status().unwrap().total(), 5);
}

fn malformed_entries_are_quarantined_once<B: Backend>(store: &B) {
    let binary: &[u8] = &[0xff, 0x00, 0xfe, 0x80];
    let (bad_json, bad_json_fields) = malformed(
        &sid(1),
        &[
            ("data", b"{oops"),
            ("blob", binary),
            ("note", "é € 😀".as_bytes()),
            ("data", b"a repeated name"),
        ],
    );
    let (missing, missing_fields) = malformed(
        &sid(2),
        &[("event_id", b"e-9"), ("payload", br#"{"a": 1}"#)],
    );
    assert!(bad_json.reason.contains("`data`"), "{}", bad_json.reason);
    assert_eq!(
        missing.reason,
        EntryError::Missing {
            field: "event_type"
        }
        .to_string()
    );
    let good = received("ok-1", &sid(3));
    assert_eq!(
        store_batch(
            store,
            STREAM,
            std::slice::from_ref(&good),
            &[bad_json.clone(), missing.clone()],
            t0()
        ),
        Stored {
            inserted: vec![good.row_id],
            duplicates: 0,
            quarantined: 2,
        }
    );

    // Redelivered (same stream and entry id, new quarantine id): kept once, even twice in a batch.
    let redelivered = MalformedEntry {
        id: Uuid::now_v7(),
        ..bad_json.clone()
    };
    let redelivered_twice = MalformedEntry {
        id: Uuid::now_v7(),
        ..bad_json.clone()
    };
    assert_eq!(
        store_batch(
            store,
            STREAM,
            &[],
            &[redelivered.clone(), redelivered_twice],
            t0() + secs(30)
        )
        .quarantined,
        0
    );
    // The same entry id on another stream is another entry.
    let other_stream = MalformedEntry {
        id: Uuid::now_v7(),
        ..bad_json.clone()
    };
    assert_eq!(
        store_batch(
            store,
            "payments",
            &[],
            std::slice::from_ref(&other_stream),
            t0() + secs(60)
        )
        .quarantined,
        1
    );

    let expected =
        |entry: &MalformedEntry, stream: &str, fields: &RawFields, at| QuarantinedEntry {
            id: entry.id,
            stream: stream.to_string(),
            stream_id: entry.stream_id.clone(),
            fields: fields.to_vec(),
            oversized: None,
            reason: entry.reason.clone(),
            received_at: at,
            replayed_at: None,
            replayed_event_id: None,
        };
    let all = vec![
        expected(&bad_json, STREAM, &bad_json_fields, t0()),
        expected(&missing, STREAM, &missing_fields, t0()),
        expected(&other_stream, "payments", &bad_json_fields, t0() + secs(60)),
    ];
    assert_eq!(store.list_quarantined(10, 0).unwrap(), all);
    assert_eq!(store.list_quarantined(1, 1).unwrap(), all[1..2].to_vec());
    assert_eq!(store.list_quarantined(10, 3).unwrap(), vec![]);
    assert_eq!(
        store.find_quarantined(bad_json.id).unwrap(),
        Some(all[0].clone())
    );
    assert_eq!(
        store.find_quarantined(other_stream.id).unwrap(),
        Some(all[2].clone())
    );
    assert_eq!(store.find_quarantined(redelivered.id).unwrap(), None);
    assert_eq!(store.find_quarantined(Uuid::now_v7()).unwrap(), None);
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Pending, 1)]),
        "quarantined entries are not inbox rows"
    );
}

/// A field value holding U+0000 is valid UTF-8 and must be kept like any other; otherwise the
/// whole batch, good events included, cannot be stored.
fn quarantine_keeps_nul_characters<B: Backend>(store: &B) {
    let (entry, fields) = malformed(&sid(1), &[("data", b"nul\0inside"), ("x", b"\0")]);
    let good = received("beside-nul", &sid(2));
    let stored = store
        .store_received(&ReceivedBatch {
            stream: STREAM,
            ordered: false,
            events: std::slice::from_ref(&good),
            malformed: std::slice::from_ref(&entry),
            received_at: t0(),
            max_retries: MAX_RETRIES,
            stored_by: None,
        })
        .unwrap_or_else(|error| {
            panic!(
                "the batch could not be stored: {}",
                support::error_chain(&error)
            )
        });
    assert_eq!(stored.inserted, vec![good.row_id]);
    assert_eq!(stored.quarantined, 1);
    let kept = store
        .find_quarantined(entry.id)
        .unwrap()
        .expect("quarantined");
    assert_eq!(kept.fields, fields);
}

/// An event the parser accepts must be storable: one that is not blocks its whole batch.
/// (A parser that rejected U+0000 would send these to quarantine instead, which
/// `quarantine_keeps_nul_characters` covers.)
fn parsed_events_with_nul_characters_are_stored<B: Backend>(store: &B) {
    let mut in_payload = event("nul-1").to_json();
    in_payload["payload"]["note"] = json!("a\u{0}b");
    let mut in_event_id = event("nul-2").to_json();
    in_event_id["event_id"] = json!("nul\u{0}2");
    let mut refused = Vec::new();
    for (n, data) in [in_payload, in_event_id].into_iter().enumerate() {
        let entry = StreamEntry {
            id: sid(n),
            fields: vec![(b"data".to_vec(), data.to_string().into_bytes())],
        };
        let Ok(parsed) = Event::from_entry(&entry) else {
            continue;
        };
        let received = ReceivedEvent {
            row_id: Uuid::now_v7(),
            stream_id: entry.id.clone(),
            event: parsed.clone(),
        };
        let batch = ReceivedBatch {
            stream: STREAM,
            ordered: false,
            events: std::slice::from_ref(&received),
            malformed: &[],
            received_at: t0(),
            max_retries: MAX_RETRIES,
            stored_by: None,
        };
        match store.store_received(&batch) {
            Ok(stored) => {
                assert_eq!(stored.inserted, vec![received.row_id]);
                assert_eq!(row(store, &parsed.event_id).event, parsed);
            }
            Err(error) => refused.push(format!(
                "{:?}: {}",
                parsed.event_id,
                support::error_chain(&error)
            )),
        }
    }
    assert!(
        refused.is_empty(),
        "parsed events the store refuses: {refused:#?}"
    );
}

fn processed_rows_commit_with_their_handler_writes<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(30));
    let events = store_events(store, &["p-1", "p-2", "p-3"], t0());
    let ids: Vec<Uuid> = events.iter().map(|e| e.row_id).collect();

    let mut h = marking(store, HashMap::new());
    let settled = process(store, Claim::Rows(&ids), &clock, &mut h);
    assert_eq!(h.calls, ["p-1", "p-2", "p-3"], "once per row, in order");
    assert_eq!(store.markers(), ["p-1", "p-2", "p-3"]);
    assert_eq!(settled.len(), 3);
    for (s, sent) in settled.iter().zip(&events) {
        assert_eq!(s.verdict, Verdict::Processed);
        assert_eq!(
            s.row,
            sent.clone().into_pending_row(STREAM, t0(), MAX_RETRIES),
            "the row as claimed, event intact"
        );
        assert_eq!(
            row(store, &sent.event.event_id),
            edited(&s.row, |row| {
                row.status = EventStatus::Processed;
                row.processed_at = Some(clock.now());
            })
        );
    }

    // Nothing is handled twice.
    assert_eq!(process(store, Claim::Rows(&ids), &clock, &mut h), vec![]);
    assert_eq!(process(store, due(10), &clock, &mut h), vec![]);
    assert_eq!(h.calls.len(), 3);

    // Processing after a failed attempt clears what the failure recorded.
    let retry = store_events(store, &["p-4"], t0() + secs(1));
    let p4 = [retry[0].row_id];
    let first_try = retry_at(1, clock.now() + secs(60), "first try failed", clock.now());
    let mut failing = marking(store, script(&[("p-4", first_try.clone())]));
    let settled = process(store, Claim::Rows(&p4), &clock, &mut failing);
    assert_eq!(settled[0].verdict, first_try);
    clock.advance(std_secs(60));
    let settled = process(store, Claim::Rows(&p4), &clock, &mut h);
    assert_eq!(event_ids(&settled), ["p-4"]);
    assert_eq!(settled[0].row.status, EventStatus::Failed);
    assert_eq!(settled[0].row.retry_count, 1);
    assert_eq!(
        settled[0].row.error_message.as_deref(),
        Some("first try failed")
    );
    let done = row(store, "p-4");
    assert_eq!(done.status, EventStatus::Processed);
    assert_eq!(done.processed_at, Some(clock.now()));
    assert_eq!(done.retry_count, 0);
    assert_eq!(done.next_retry_at, None);
    assert_eq!(done.error_message, None);
    assert_eq!(done.last_error_at, None);
    assert_eq!(done.event, retry[0].event);
    assert_eq!(store.markers(), ["p-1", "p-2", "p-3", "p-4"]);
}

fn failed_verdicts_roll_back_only_their_row<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(30));
    let events = store_events(store, &["f-1", "f-2", "f-3", "f-4"], t0());
    let ids: Vec<Uuid> = events.iter().map(|e| e.row_id).collect();
    let long_error = "é".repeat(1000);
    let retry = Failure {
        status: EventStatus::Failed,
        retry_count: 2,
        next_retry_at: Some(at("2025-03-01T12:04:00.654321Z")),
        error_message: long_error.clone(),
        failed_at: at("2025-03-01T12:00:31.000007Z"),
    };
    let give_up = Failure {
        status: EventStatus::DeadLetter,
        retry_count: 1,
        next_retry_at: None,
        error_message: "payload can never be handled".into(),
        failed_at: at("2025-03-01T12:00:32.5Z"),
    };
    let mut h = marking(
        store,
        script(&[
            ("f-2", Verdict::Failed(retry.clone())),
            ("f-3", Verdict::Failed(give_up.clone())),
        ]),
    );
    let settled = process(store, Claim::Rows(&ids), &clock, &mut h);
    assert_eq!(h.calls, ["f-1", "f-2", "f-3", "f-4"]);
    assert_eq!(
        settled
            .iter()
            .map(|s| s.verdict.clone())
            .collect::<Vec<_>>(),
        [
            Verdict::Processed,
            Verdict::Failed(retry.clone()),
            Verdict::Failed(give_up.clone()),
            Verdict::Processed
        ]
    );
    assert_eq!(
        store.markers(),
        ["f-1", "f-4"],
        "the failed rows' writes are rolled back, the others' kept"
    );

    let failed = row(store, "f-2");
    assert_eq!(
        failed,
        edited(&settled[1].row, |row| {
            row.status = EventStatus::Failed;
            row.retry_count = 2;
            row.next_retry_at = retry.next_retry_at;
            row.error_message = Some(long_error);
            row.last_error_at = Some(retry.failed_at);
            row.processed_at = None;
        })
    );
    let dead = row(store, "f-3");
    assert_eq!(
        dead,
        edited(&settled[2].row, |row| {
            row.status = EventStatus::DeadLetter;
            row.retry_count = 1;
            row.next_retry_at = None;
            row.error_message = Some(give_up.error_message.clone());
            row.last_error_at = Some(give_up.failed_at);
            row.processed_at = None;
        })
    );
    for id in ["f-1", "f-4"] {
        assert_eq!(row(store, id).status, EventStatus::Processed, "{id}");
    }
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[
            (EventStatus::Processed, 2),
            (EventStatus::Failed, 1),
            (EventStatus::DeadLetter, 1),
        ])
    );

    // A batch where every row fails commits only the failures.
    let lone = store_events(store, &["f-5"], t0() + secs(1));
    let mut all_fail = marking(store, script(&[("f-5", dead_letter(1, "no", clock.now()))]));
    let settled = process(store, Claim::Rows(&[lone[0].row_id]), &clock, &mut all_fail);
    assert_eq!(event_ids(&settled), ["f-5"]);
    assert_eq!(row(store, "f-5").status, EventStatus::DeadLetter);
    assert_eq!(store.markers(), ["f-1", "f-4"]);
}

/// Optimistic batches (no savepoint per row until a handler fails) keep the same promise:
/// each processed row's writes committed once, a failed row's rolled back, failures recorded as
/// given.
fn optimistic_batches_keep_each_write_once<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(30));
    store_events(store, &["o-1", "o-2", "o-3"], t0());
    let mut h = marking(store, HashMap::new());
    let settled = process_with(store, due(10), &clock, true, &mut h);
    assert_eq!(event_ids(&settled), ["o-1", "o-2", "o-3"]);
    assert!(settled.iter().all(|s| s.verdict == Verdict::Processed));
    assert_eq!(
        h.calls,
        ["o-1", "o-2", "o-3"],
        "nothing failed, nothing redone"
    );
    assert_eq!(store.markers(), ["o-1", "o-2", "o-3"]);
    for id in ["o-1", "o-2", "o-3"] {
        let done = row(store, id);
        assert_eq!(done.status, EventStatus::Processed);
        assert_eq!(done.processed_at, Some(clock.now()));
    }

    let events = store_events(store, &["f-1", "f-2", "f-3", "f-4"], t0() + secs(1));
    let ids: Vec<Uuid> = events.iter().map(|e| e.row_id).collect();
    let retry = Failure {
        status: EventStatus::Failed,
        retry_count: 1,
        next_retry_at: Some(at("2025-03-01T12:01:30.000001Z")),
        error_message: "try again".into(),
        failed_at: at("2025-03-01T12:00:30.5Z"),
    };
    let give_up = Failure {
        status: EventStatus::DeadLetter,
        retry_count: 1,
        next_retry_at: None,
        error_message: "never".into(),
        failed_at: at("2025-03-01T12:00:30.75Z"),
    };
    let mut h = marking(
        store,
        script(&[
            ("f-2", Verdict::Failed(retry.clone())),
            ("f-3", Verdict::Failed(give_up.clone())),
        ]),
    );
    let settled = process_with(store, Claim::Rows(&ids), &clock, true, &mut h);
    assert_eq!(event_ids(&settled), ["f-1", "f-2", "f-3", "f-4"]);
    assert_eq!(
        settled
            .iter()
            .map(|s| s.verdict.clone())
            .collect::<Vec<_>>(),
        [
            Verdict::Processed,
            Verdict::Failed(retry.clone()),
            Verdict::Failed(give_up.clone()),
            Verdict::Processed
        ]
    );
    for id in ["f-1", "f-2", "f-3", "f-4"] {
        let runs = h.calls.iter().filter(|call| *call == id).count();
        assert!((1..=2).contains(&runs), "{id} handled {runs} times");
    }
    assert_eq!(
        store.markers(),
        ["o-1", "o-2", "o-3", "f-1", "f-4"],
        "the failed rows' writes rolled back, the others' committed once"
    );
    let failed = row(store, "f-2");
    assert_eq!(failed.status, EventStatus::Failed);
    assert_eq!(failed.retry_count, 1);
    assert_eq!(failed.next_retry_at, retry.next_retry_at);
    assert_eq!(failed.error_message.as_deref(), Some("try again"));
    assert_eq!(failed.last_error_at, Some(retry.failed_at));
    let dead = row(store, "f-3");
    assert_eq!(dead.status, EventStatus::DeadLetter);
    assert_eq!(dead.next_retry_at, None);
    assert_eq!(dead.last_error_at, Some(give_up.failed_at));
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[
            (EventStatus::Processed, 5),
            (EventStatus::Failed, 1),
            (EventStatus::DeadLetter, 1),
        ])
    );
}

fn due_claims_follow_the_clock_order_and_limit<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(60));
    // Stored out of order: the later batch arrived first.
    store_events(store, &["late-1", "late-2"], t0() + secs(10));
    let early = store_events(store, &["early-1", "early-2"], t0() + secs(5));
    let early_retry = clock.now() + secs(120);
    let mut h = marking(
        store,
        script(&[
            ("early-1", retry_at(1, early_retry, "not yet", clock.now())),
            ("late-2", dead_letter(3, "never", clock.now())),
        ]),
    );

    let settled = process(store, due(1), &clock, &mut h);
    assert_eq!(event_ids(&settled), ["early-1"], "oldest received first");
    let settled = process(store, due(2), &clock, &mut h);
    assert_eq!(event_ids(&settled), ["early-2", "late-1"]);
    let settled = process(store, due(10), &clock, &mut h);
    assert_eq!(event_ids(&settled), ["late-2"]);
    assert_eq!(
        process(store, due(10), &clock, &mut h),
        vec![],
        "a failed row is not due before next_retry_at; processed and dead rows never are"
    );

    let mut ok = marking(store, HashMap::new());
    clock.advance(std_secs(119));
    assert_eq!(process(store, due(10), &clock, &mut ok), vec![]);
    assert_eq!(
        process(store, Claim::Rows(&[early[0].row_id]), &clock, &mut ok),
        vec![]
    );
    clock.advance(std_secs(1));
    assert_eq!(clock.now(), early_retry);
    let settled = process(store, due(10), &clock, &mut ok);
    assert_eq!(
        event_ids(&settled),
        ["early-1"],
        "due at next_retry_at exactly"
    );
    assert_eq!(settled[0].row.status, EventStatus::Failed);
    assert_eq!(settled[0].row.retry_count, 1);
    assert_eq!(settled[0].row.next_retry_at, Some(early_retry));

    clock.advance(std_secs(86_400));
    assert_eq!(process(store, due(10), &clock, &mut ok), vec![]);
    assert_eq!(
        store.markers(),
        ["early-2", "late-1", "early-1"],
        "only processed rows' writes"
    );
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Processed, 3), (EventStatus::DeadLetter, 1)])
    );

    // Claim::Rows takes only those of the rows still due.
    let rows = store_events(store, &["r-1", "r-2", "r-3"], t0() + secs(20));
    let mut fail_r1 = marking(
        store,
        script(&[(
            "r-1",
            retry_at(1, clock.now() + secs(60), "later", clock.now()),
        )]),
    );
    process(store, Claim::Rows(&[rows[0].row_id]), &clock, &mut fail_r1);
    process(store, Claim::Rows(&[rows[1].row_id]), &clock, &mut ok);
    let dead_late_2 = row(store, "late-2").id;
    let asked = [
        rows[0].row_id,
        rows[1].row_id,
        rows[2].row_id,
        dead_late_2,
        Uuid::now_v7(),
    ];
    let settled = process(store, Claim::Rows(&asked), &clock, &mut ok);
    assert_eq!(event_ids(&settled), ["r-3"]);
    assert_eq!(process(store, Claim::Rows(&[]), &clock, &mut ok), vec![]);
}

fn claims_are_exclusive_under_concurrency<B: Backend>(store: &B) {
    run_workers(store, false, None);
}

/// The same with optimistic batches where some handlers fail on their first attempt, so
/// batches are rolled back and redone while other workers claim.
fn optimistic_claims_are_exclusive_under_concurrency<B: Backend>(store: &B) {
    run_workers(store, true, Some(37));
}

/// 2,000 events, four threads each claiming `due(25)` until nothing is left;
/// every `fail_first_every`-th event fails its first attempt and is due again at once.
/// Every event's marker must be committed exactly once.
fn run_workers<B: Backend>(store: &B, optimistic: bool, fail_first_every: Option<usize>) {
    const EVENTS: usize = 2_000;
    const THREADS: usize = 4;
    let clock = ManualClock::new(t0() + secs(60));
    let ids: Vec<String> = (0..EVENTS).map(|n| format!("c-{n:04}")).collect();
    for (batch, chunk) in ids.chunks(100).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        store_events(store, &refs, t0() + secs(batch as i64));
    }
    let failing: HashSet<String> = match fail_first_every {
        Some(every) => ids.iter().step_by(every).cloned().collect(),
        None => HashSet::new(),
    };
    let failed_once = std::sync::Mutex::new(HashSet::<String>::new());

    let settled: Vec<Vec<Settled>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (clock, failing, failed_once) = (&clock, &failing, &failed_once);
                scope.spawn(move || {
                    let mut h = handler::<B, _>(|tx, row| {
                        let id = &row.event.event_id;
                        store.write_marker(tx, id).expect("write a marker");
                        if failing.contains(id) && failed_once.lock().unwrap().insert(id.clone()) {
                            return retry_at(1, clock.now(), "first attempt", clock.now());
                        }
                        Verdict::Processed
                    });
                    let mut mine = Vec::new();
                    loop {
                        let settled = store
                            .process_claimed(
                                &ClaimParams {
                                    claim: due(25),
                                    clock,
                                    optimistic,
                                },
                                &mut h,
                            )
                            .expect("process_claimed");
                        if settled.is_empty() {
                            return mine;
                        }
                        assert!(settled.len() <= 25, "{} rows claimed", settled.len());
                        mine.extend(settled);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .collect()
    });

    let all: Vec<Settled> = settled.concat();
    let processed: Vec<Uuid> = all
        .iter()
        .filter(|s| s.verdict == Verdict::Processed)
        .map(|s| s.row.id)
        .collect();
    assert_eq!(processed.len(), EVENTS, "rows processed in all");
    assert_eq!(
        processed.iter().collect::<HashSet<_>>().len(),
        EVENTS,
        "no row processed twice"
    );
    let failures = all.len() - processed.len();
    assert!(failures <= failing.len(), "{failures} failures recorded");
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for marker in store.markers() {
        *per_event.entry(marker).or_default() += 1;
    }
    let twice: Vec<_> = per_event.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(
        per_event.keys().cloned().collect::<HashSet<_>>(),
        ids.into_iter().collect::<HashSet<_>>(),
        "every event handled"
    );
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Processed, EVENTS as u64)])
    );
}

/// Rows as `store_received` stored `events`, the way a reader hands them to workers.
fn fresh(events: &[ReceivedEvent], received_at: DateTime<Utc>) -> Vec<InboxRow> {
    events
        .iter()
        .map(|e| e.clone().into_pending_row(STREAM, received_at, MAX_RETRIES))
        .collect()
}

/// Every due row, however young, up to `limit`.
fn due(limit: usize) -> Claim<'static> {
    Claim::Due {
        limit,
        orphan_after: std::time::Duration::ZERO,
        dead_processes: &[],
    }
}

/// A fresh claim marks rows processed with their handler writes and records failures over
/// that in the same transaction; rows touched since they were stored are not fresh.
fn fresh_claims_commit_processed_rows_and_failures<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(30));
    let events = store_events(store, &["f-1", "f-2", "f-3", "f-4"], t0());
    let rows = fresh(&events, t0());

    // f-4 is claimed and processed by another worker first: no longer fresh.
    let mut ok = marking(store, HashMap::new());
    let settled = process(store, Claim::Rows(&[events[3].row_id]), &clock, &mut ok);
    assert_eq!(event_ids(&settled), ["f-4"]);

    for optimistic in [true, false] {
        let mut h = marking(
            store,
            script(&[("f-2", retry_at(1, t0() + secs(90), "nope", t0() + secs(30)))]),
        );
        let settled = process_with(store, Claim::Fresh(&rows[..3]), &clock, optimistic, &mut h);
        if optimistic {
            assert_eq!(event_ids(&settled), ["f-1", "f-2", "f-3"]);
            assert_eq!(
                settled[1].row.retry_count, 0,
                "the row as the reader handed it"
            );
        } else {
            assert_eq!(settled, vec![], "nothing is fresh any more");
        }
    }
    let mut markers = store.markers();
    markers.sort();
    assert_eq!(
        markers,
        ["f-1", "f-3", "f-4"],
        "the failed row's write rolled back"
    );
    let f1 = row(store, "f-1");
    assert_eq!(f1.status, EventStatus::Processed);
    assert!(f1.processed_at.is_some());
    let f2 = row(store, "f-2");
    assert_eq!(
        (f2.status, f2.retry_count, f2.processed_at, f2.next_retry_at),
        (EventStatus::Failed, 1, None, Some(t0() + secs(90)))
    );
    assert_eq!(f2.error_message.as_deref(), Some("nope"));
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Processed, 3), (EventStatus::Failed, 1)])
    );
}

/// Readers hand fresh rows to two workers while two pollers claim due rows from the same
/// table, some handlers failing once: every event's marker is committed exactly once.
fn fresh_and_due_claims_are_exclusive_under_concurrency<B: Backend>(store: &B) {
    const EVENTS: usize = 2_000;
    let clock = ManualClock::new(t0() + secs(60));
    let mut rows = Vec::new();
    for batch in 0..EVENTS / 100 {
        let ids: Vec<String> = (0..100).map(|n| format!("x-{batch:02}-{n:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        rows.extend(fresh(
            &store_events(store, &refs, t0() + secs(batch as i64)),
            t0(),
        ));
    }
    let failed_once = std::sync::Mutex::new(HashSet::<String>::new());
    let settled: Vec<Vec<Settled>> = thread::scope(|scope| {
        let mut threads = Vec::new();
        for worker in 0..4 {
            let (clock, failed_once, rows) = (&clock, &failed_once, &rows);
            threads.push(scope.spawn(move || {
                let mut h = handler::<B, _>(|tx, row| {
                    let id = &row.event.event_id;
                    store.write_marker(tx, id).expect("write a marker");
                    if id.ends_with('7') && failed_once.lock().unwrap().insert(id.clone()) {
                        return retry_at(row.retry_count + 1, clock.now(), "once", clock.now());
                    }
                    Verdict::Processed
                });
                let params = |claim| ClaimParams {
                    claim,
                    clock,
                    optimistic: true,
                };
                let mut mine = Vec::new();
                if worker < 2 {
                    // Workers fed by readers: every other chunk of 25 fresh rows.
                    for chunk in rows.chunks(25).skip(worker).step_by(2) {
                        mine.extend(
                            store
                                .process_claimed(&params(Claim::Fresh(chunk)), &mut h)
                                .unwrap(),
                        );
                    }
                }
                loop {
                    let settled = store.process_claimed(&params(due(25)), &mut h).unwrap();
                    if settled.is_empty() {
                        return mine;
                    }
                    mine.extend(settled);
                }
            }));
        }
        threads
            .into_iter()
            .map(|t| t.join().expect("worker"))
            .collect()
    });
    let processed: Vec<Uuid> = settled
        .concat()
        .iter()
        .filter(|s| s.verdict == Verdict::Processed)
        .map(|s| s.row.id)
        .collect();
    assert_eq!(processed.len(), EVENTS);
    assert_eq!(
        processed.iter().collect::<HashSet<_>>().len(),
        EVENTS,
        "no row processed twice"
    );
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for marker in store.markers() {
        *per_event.entry(marker).or_default() += 1;
    }
    assert_eq!(per_event.len(), EVENTS, "every event handled");
    assert!(
        per_event.values().all(|n| *n == 1),
        "an event's write committed twice"
    );
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Processed, EVENTS as u64)])
    );
}

/// A due claim leaves pending rows younger than `orphan_after` to the workers their reader
/// handed them to, but takes failed rows whose retry time has come whatever their age.
fn due_claims_leave_young_pending_rows_alone<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(5));
    store_events(store, &["y-1", "y-2"], t0());
    let ten = std::time::Duration::from_secs(10);
    // y-2 fails (at t0 + 1 s) and is due again at t0 + 3 s.
    let mut fail = marking(
        store,
        script(&[("y-2", retry_at(1, t0() + secs(3), "x", t0() + secs(1)))]),
    );
    let y2 = row(store, "y-2").id;
    process(store, Claim::Rows(&[y2]), &clock, &mut fail);

    let mut ok = marking(store, HashMap::new());
    let settled = process(
        store,
        Claim::Due {
            limit: 10,
            orphan_after: ten,
            dead_processes: &[],
        },
        &clock,
        &mut ok,
    );
    assert_eq!(
        event_ids(&settled),
        ["y-2"],
        "the retry is due; y-1 is only 5 s old"
    );
    clock.set(t0() + secs(10));
    let settled = process(
        store,
        Claim::Due {
            limit: 10,
            orphan_after: ten,
            dead_processes: &[],
        },
        &clock,
        &mut ok,
    );
    assert_eq!(
        event_ids(&settled),
        ["y-1"],
        "10 s after it was stored, y-1 counts as orphaned"
    );
    let huge = std::time::Duration::MAX;
    assert_eq!(
        process(
            store,
            Claim::Due {
                limit: 10,
                orphan_after: huge,
                dead_processes: &[],
            },
            &clock,
            &mut ok
        ),
        vec![]
    );
}

/// Runs a claim whose handler dies mid-attempt, as a process that aborts or a transaction the
/// server ends: the claim's transaction is dropped unfinished. Returns the events the handler
/// was called for.
fn die_in_handler<B: Backend>(store: &B, claim: Claim<'_>, clock: &dyn Clock) -> Vec<String> {
    let mut dying = handler::<B, _>(|_, row| panic!("the attempt on {} dies", row.event.event_id));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.process_claimed(
            &ClaimParams {
                claim,
                clock,
                optimistic: false,
            },
            &mut dying,
        )
    }));
    assert!(outcome.is_err(), "the handler died");
    dying.calls
}

/// An attempt that dies with its process is counted: a retry or an orphan is recorded as a
/// failed attempt before it runs, so the count survives the attempt's rolled-back transaction,
/// and the row is dead-lettered, without running again, once its last attempt never finished.
fn attempts_that_never_finish_are_counted<B: Backend>(store: &B) {
    let due_claim = Claim::Due {
        limit: 10,
        orphan_after: std_secs(10),
        dead_processes: &[],
    };
    let clock = ManualClock::new(t0() + secs(1));
    let events = store_events(store, &["p-1"], t0());
    // The first, fresh attempt dies: it leaves no trace (the hot path writes nothing up front).
    let fresh_rows = fresh(&events, t0());
    assert_eq!(
        die_in_handler(store, Claim::Fresh(&fresh_rows), &clock),
        ["p-1"]
    );
    let p1 = row(store, "p-1");
    assert_eq!((p1.status, p1.retry_count), (EventStatus::Pending, 0));
    let mut ok = marking(store, HashMap::new());
    assert!(
        process(store, due_claim, &clock, &mut ok).is_empty(),
        "a young pending row is left to its worker"
    );

    // Found as an orphan, then as a due retry each time: every attempt is counted before it
    // runs, with the backoff, and each dies.
    clock.set(t0() + secs(10));
    for attempt in 1..=MAX_RETRIES {
        assert_eq!(
            die_in_handler(store, due_claim, &clock),
            ["p-1"],
            "attempt {attempt}"
        );
        let p1 = row(store, "p-1");
        assert_eq!(p1.status, EventStatus::Failed, "attempt {attempt}");
        assert_eq!(p1.retry_count, attempt, "counted before it ran");
        assert_eq!(p1.error_message.as_deref(), Some(NEVER_FINISHED));
        assert_eq!(p1.last_error_at, Some(clock.now()));
        // The test handler's up-front failure: due again a minute later.
        assert_eq!(p1.next_retry_at, Some(clock.now() + secs(60)));
        assert!(
            process(store, due_claim, &clock, &mut ok).is_empty(),
            "not due again before its backoff"
        );
        clock.set(clock.now() + secs(60));
    }

    // Its last attempt never finished: a dead letter, not run again.
    let settled = process(store, due_claim, &clock, &mut ok);
    assert_eq!(
        settled,
        vec![Settled {
            row: row_as(store, "p-1", EventStatus::DeadLetter, |r| {
                r.status = EventStatus::Failed;
                r.next_retry_at = Some(clock.now());
                r.last_error_at = Some(clock.now() - secs(60));
            }),
            verdict: dead_letter(MAX_RETRIES, NEVER_FINISHED, clock.now()),
        }]
    );
    assert!(ok.calls.is_empty(), "the handler never ran again");
    let p1 = row(store, "p-1");
    assert_eq!(
        (p1.status, p1.retry_count, p1.next_retry_at),
        (EventStatus::DeadLetter, MAX_RETRIES, None)
    );
    assert_eq!(p1.error_message.as_deref(), Some(NEVER_FINISHED));
    assert!(store.markers().is_empty(), "no attempt's writes committed");
}

/// A row whose counted attempt never finished runs in a transaction of its own: an attempt that
/// dies again takes no other row's work with it, so a poison event cannot get the rows that
/// shared its batch counted again and again and dead-lettered for its sake.
fn attempts_that_never_finished_run_alone<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(30));
    store_events(store, &["s-ok", "s-die"], t0());
    for round in 1..=2 {
        let mut h = handler::<B, _>(|tx, row| {
            store
                .write_marker(tx, &row.event.event_id)
                .expect("write a marker");
            assert_ne!(row.event.event_id, "s-die", "the attempt on s-die dies");
            Verdict::Processed
        });
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.process_claimed(
                &ClaimParams {
                    claim: due(10),
                    clock: &clock,
                    optimistic: true,
                },
                &mut h,
            )
        }));
        assert!(outcome.is_err(), "round {round}: the attempt on s-die died");
        clock.set(clock.now() + secs(60));
    }
    // Round 1: both orphans counted and run together, both rolled back. Round 2: each runs
    // alone, s-ok first, committed before s-die dies again.
    assert_eq!(store.markers(), ["s-ok"]);
    let ok = row(store, "s-ok");
    assert_eq!((ok.status, ok.retry_count), (EventStatus::Processed, 0));
    let died = row(store, "s-die");
    assert_eq!((died.status, died.retry_count), (EventStatus::Failed, 2));
}

/// A suspect the process does not admit now is neither counted nor run: not by a due claim,
/// and not by a claim of heads over any aggregate, which would otherwise take it as a pending
/// head and run it uncounted.
fn a_suspect_not_admitted_is_neither_counted_nor_run<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(30));
    store_events(store, &["n-die"], t0());
    let mut dies = handler::<B, _>(|_, _| panic!("the attempt dies with its process"));
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.process_claimed(
            &ClaimParams {
                claim: due(10),
                clock: &clock,
                optimistic: true,
            },
            &mut dies,
        )
    }));
    assert!(died.is_err());
    let suspect = row(store, "n-die");
    assert_eq!(
        (suspect.status, suspect.retry_count),
        (EventStatus::Failed, 1)
    );
    assert_eq!(suspect.error_message.as_deref(), Some(NEVER_FINISHED));
    clock.set(clock.now() + secs(120));

    let heads = Claim::Heads {
        limit: 10,
        after_dead_letter: AfterDeadLetter::Park,
        aggregates: None,
        orphan_after: std::time::Duration::ZERO,
    };
    for claim in [due(10), heads] {
        let mut refusing = marking(store, HashMap::new());
        refusing.refuse_counting = true;
        let settled = process(store, claim, &clock, &mut refusing);
        assert!(settled.is_empty(), "{claim:?}: {:?}", event_ids(&settled));
        assert!(refusing.calls.is_empty(), "{claim:?}: {:?}", refusing.calls);
        let unchanged = row(store, "n-die");
        assert_eq!(
            (unchanged.status, unchanged.retry_count),
            (EventStatus::Failed, 1),
            "{claim:?}"
        );
    }
    // Admitted, it is counted and runs.
    let mut admitting = marking(store, HashMap::new());
    assert_eq!(
        event_ids(&process(store, due(10), &clock, &mut admitting)),
        ["n-die"]
    );
    assert_eq!(row(store, "n-die").status, EventStatus::Processed);
}

/// The row `event_id` as stored now with `status`, changed by `edit` back to how a claim saw it.
fn row_as<B: Backend>(
    store: &B,
    event_id: &str,
    status: EventStatus,
    edit: impl FnOnce(&mut InboxRow),
) -> InboxRow {
    let mut found = row(store, event_id);
    assert_eq!(found.status, status, "{event_id}");
    edit(&mut found);
    found
}

/// A retry's count is taken once: a handler error after the up-front count records that same
/// attempt, and success clears the count and the errors, as the reference does.
fn counted_attempts_that_end_are_recorded_once<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(30));
    store_events(store, &["q-1", "q-2"], t0());
    let mut h = marking(
        store,
        script(&[("q-1", retry_at(1, t0() + secs(40), "boom", clock.now()))]),
    );
    let settled = process(store, due(10), &clock, &mut h);
    assert_eq!(event_ids(&settled), ["q-1", "q-2"]);
    assert_eq!(
        settled[0].row.retry_count, 0,
        "handlers see the row as it was"
    );
    let q1 = row(store, "q-1");
    assert_eq!(
        (q1.status, q1.retry_count, q1.next_retry_at),
        (EventStatus::Failed, 1, Some(t0() + secs(40))),
        "one failed attempt, not two"
    );
    assert_eq!(q1.error_message.as_deref(), Some("boom"));
    let q2 = row(store, "q-2");
    assert_eq!((q2.status, q2.retry_count), (EventStatus::Processed, 0));
    assert_eq!((q2.error_message, q2.last_error_at), (None, None));

    clock.set(t0() + secs(40));
    let mut ok = marking(store, HashMap::new());
    assert_eq!(
        event_ids(&process(store, due(10), &clock, &mut ok)),
        ["q-1"]
    );
    let q1 = row(store, "q-1");
    assert_eq!(
        (
            q1.status,
            q1.retry_count,
            q1.next_retry_at,
            q1.error_message,
            q1.last_error_at
        ),
        (EventStatus::Processed, 0, None, None, None)
    );
    assert_eq!(
        store.markers(),
        ["q-2", "q-1"],
        "the failed attempt's write rolled back; each event's writes committed once"
    );
}

/// Rows the reference toolkit left in `processing` (its process died mid-handler) are orphans:
/// claimed once older than `orphan_after` and not held by anyone, counted, and handled, in
/// ordered mode too, where they held back their aggregate.
/// A process's lease: while it lives its rows wait for `orphan_after` like any fresh row; once
/// its session ends the others find it dead and its pending rows are theirs at once. A lease
/// whose session was lost is taken again under the same number, alive once more.
fn a_dead_processs_rows_are_orphans_at_once_and_a_live_ones_are_not<B: Backend>(store: &B) {
    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    let Some(lease) = store.open_process_lease("conformance-a").unwrap() else {
        // A store that cannot tell processes apart finds none dead: rows wait for orphan_after.
        assert!(store.dead_processes(0, year).unwrap().is_empty());
        return;
    };
    let watcher = store.open_process_lease("conformance-b").unwrap().unwrap();
    let (me, other) = (lease.process(), watcher.process());
    assert_ne!(me, other, "each process has a number of its own");
    let events = vec![received("lv-1", &sid(1)), received("lv-2", &sid(2))];
    store
        .store_received(&ReceivedBatch {
            stream: STREAM,
            ordered: false,
            events: &events,
            malformed: &[],
            received_at: t0(),
            max_retries: MAX_RETRIES,
            stored_by: Some(me),
        })
        .unwrap();
    let clock = ManualClock::new(t0() + secs(1));
    let mut ok = marking(store, HashMap::new());
    let due = |dead: &[i32]| {
        let claim = Claim::Due {
            limit: 10,
            orphan_after: year,
            dead_processes: dead,
        };
        let settled = process(store, claim, &clock, &mut marking(store, HashMap::new()));
        event_ids(&settled)
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
    };

    assert!(store.dead_processes(other, year).unwrap().is_empty());
    assert!(
        due(&[other]).is_empty(),
        "rows of a live process stay with it"
    );

    // Lost and taken again: dead meanwhile, alive after.
    store.end_lease_session(me);
    let mut lease = lease;
    assert!(support::wait_until(Duration::from_secs(10), || {
        store.dead_processes(other, year).unwrap() == [me]
    }));
    lease.keep().unwrap();
    assert!(store.dead_processes(other, year).unwrap().is_empty());
    assert_eq!(lease.process(), me, "the same number");

    drop(lease);
    assert!(support::wait_until(Duration::from_secs(10), || {
        store.dead_processes(other, year).unwrap() == [me]
    }));
    assert_eq!(due(&[me]), ["lv-1", "lv-2"]);
    assert!(process(
        store,
        Claim::Due {
            limit: 10,
            orphan_after: year,
            dead_processes: &[me],
        },
        &clock,
        &mut ok
    )
    .is_empty());
    // A process does not find itself dead, and the dead are forgotten after forget_after.
    assert!(store.dead_processes(me, year).unwrap().is_empty());
    assert!(store
        .dead_processes(other, Duration::ZERO)
        .unwrap()
        .is_empty());
    assert!(store.dead_processes(other, year).unwrap().is_empty());
    drop(watcher);
}

fn rows_left_processing_are_taken_over<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(5));
    store_events(store, &["r-1", "r-2"], t0());
    store.force_status("r-1", EventStatus::Processing);
    let ten = std::time::Duration::from_secs(10);
    let heads = Claim::Heads {
        limit: 10,
        after_dead_letter: AfterDeadLetter::Park,
        aggregates: None,
        orphan_after: ten,
    };
    let mut ok = marking(store, HashMap::new());
    let first = process(store, heads, &clock, &mut ok);
    assert!(
        first.is_empty(),
        "r-1 is young and holds back r-2: {:?}",
        event_ids(&first)
    );
    clock.set(t0() + secs(10));
    // r-1 first, and then r-2, now the head and as old.
    let first = process(store, heads, &clock, &mut ok);
    assert_eq!(event_ids(&first), ["r-1", "r-2"]);
    assert_eq!(first[0].row.status, EventStatus::Processing);
    assert_eq!(first[0].verdict, Verdict::Processed);
    assert!(process(store, heads, &clock, &mut ok).is_empty());

    store_events(store, &["r-3"], t0());
    store.force_status("r-3", EventStatus::Processing);
    let due = Claim::Due {
        limit: 10,
        orphan_after: ten,
        dead_processes: &[],
    };
    assert_eq!(event_ids(&process(store, due, &clock, &mut ok)), ["r-3"]);
    assert_eq!(store.markers(), ["r-1", "r-2", "r-3"]);
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Processed, 3)])
    );
}

fn counts_and_lookups<B: Backend>(store: &B) {
    assert_eq!(store.count_by_status().unwrap(), StatusCounts::default());
    assert_eq!(store.count_by_status().unwrap().total(), 0);
    assert_eq!(store.find_by_event_id("k-1").unwrap(), None);

    let quoted = "k'2 \"quoted\" ünï";
    let events = store_events(store, &["k-1", quoted, "k-3", "k-4", "k-5"], t0());
    let clock = ManualClock::new(t0() + secs(30));
    let next = clock.now() + secs(60);
    let mut h = marking(
        store,
        script(&[
            (quoted, retry_at(1, next, "retry me", clock.now())),
            ("k-3", dead_letter(3, "dead", clock.now())),
        ]),
    );
    let first_three: Vec<Uuid> = events[..3].iter().map(|e| e.row_id).collect();
    process(store, Claim::Rows(&first_three), &clock, &mut h);

    let counted = store.count_by_status().unwrap();
    assert_eq!(
        counted,
        counts(&[
            (EventStatus::Pending, 2),
            (EventStatus::Processed, 1),
            (EventStatus::Failed, 1),
            (EventStatus::DeadLetter, 1),
        ])
    );
    assert_eq!(counted.total(), 5);
    assert_eq!(counted.get(EventStatus::Processing), 0);

    assert_eq!(
        store.find_by_event_id(quoted).unwrap(),
        Some(edited(
            &events[1]
                .clone()
                .into_pending_row(STREAM, t0(), MAX_RETRIES),
            |row| {
                row.status = EventStatus::Failed;
                row.retry_count = 1;
                row.next_retry_at = Some(next);
                row.error_message = Some("retry me".into());
                row.last_error_at = Some(clock.now());
            }
        ))
    );
    assert_eq!(
        store.find_by_event_id("k-4").unwrap(),
        Some(
            events[3]
                .clone()
                .into_pending_row(STREAM, t0(), MAX_RETRIES)
        )
    );
    for absent in ["K-4", "k-", "k-%", "%", "k-4 "] {
        assert_eq!(store.find_by_event_id(absent).unwrap(), None, "{absent:?}");
    }
}

fn replaying_a_quarantined_entry_happens_once<B: Backend>(store: &B) {
    let (bad_json, bad_json_fields) = malformed(&sid(1), &[("data", b"{oops")]);
    let (no_type, _) = malformed(&sid(2), &[("event_id", b"x-1")]);
    let (still_bad, still_bad_fields) = malformed(&sid(3), &[("data", b"[1, 2]")]);
    // Valid now, rejected by an older parser: replayed as it is.
    let parser_fixed_fields = raw_entry_fields(&event("replayed-d"));
    let parser_fixed = MalformedEntry {
        id: Uuid::now_v7(),
        stream_id: sid(4),
        raw_fields: encode_fields(&parser_fixed_fields),
        reason: "rejected by an older parser".into(),
    };
    let entries = [
        bad_json.clone(),
        no_type.clone(),
        still_bad.clone(),
        parser_fixed.clone(),
    ];
    assert_eq!(
        store_batch(store, STREAM, &[], &entries, t0()).quarantined,
        4
    );
    let now = t0() + secs(3600);

    // The store operation.
    let fixed = received("replayed-a", &bad_json.stream_id);
    assert!(store
        .replay_quarantined(&QuarantineReplay {
            id: bad_json.id,
            event: &fixed,
            now,
            max_retries: 5,
        })
        .unwrap());
    let expected_row = fixed.clone().into_pending_row(STREAM, now, 5);
    assert_eq!(row(store, "replayed-a"), expected_row);
    let replayed = QuarantinedEntry {
        id: bad_json.id,
        stream: STREAM.into(),
        stream_id: bad_json.stream_id.clone(),
        fields: bad_json_fields,
        oversized: None,
        reason: bad_json.reason.clone(),
        received_at: t0(),
        replayed_at: Some(now),
        replayed_event_id: Some("replayed-a".into()),
    };
    assert_eq!(
        store.find_quarantined(bad_json.id).unwrap(),
        Some(replayed.clone())
    );
    assert_eq!(
        store.quarantine_summary().unwrap(),
        QuarantineSummary {
            waiting: 3,
            replayed: 1,
            oldest_waiting: Some(t0()),
        },
        "the replayed entry counts apart from those still waiting"
    );

    let again = received("replayed-a-again", &bad_json.stream_id);
    assert!(!store
        .replay_quarantined(&QuarantineReplay {
            id: bad_json.id,
            event: &again,
            now: now + secs(1),
            max_retries: 5,
        })
        .unwrap());
    assert_eq!(store.find_by_event_id("replayed-a-again").unwrap(), None);
    assert_eq!(
        store.find_quarantined(bad_json.id).unwrap(),
        Some(replayed),
        "a second replay changes nothing"
    );
    assert!(!store
        .replay_quarantined(&QuarantineReplay {
            id: Uuid::now_v7(),
            event: &again,
            now,
            max_retries: 5,
        })
        .unwrap());
    assert_eq!(row(store, "replayed-a"), expected_row);

    // The replayed row is an ordinary pending row.
    let clock = ManualClock::new(now);
    let mut h = marking(store, HashMap::new());
    let settled = process(store, due(10), &clock, &mut h);
    assert_eq!(event_ids(&settled), ["replayed-a"]);

    // The public helper, with corrected fields.
    let corrected = raw_entry_fields(&event("replayed-b"));
    let replayed_id = quarantine::replay(store, no_type.id, Some(corrected), 3, now).unwrap();
    assert_eq!(replayed_id, "replayed-b");
    let b = row(store, "replayed-b");
    assert_eq!(b.event, event("replayed-b"));
    assert_eq!(b.stream_id, no_type.stream_id);
    assert_eq!(b.status, EventStatus::Pending);
    assert_eq!(b.max_retries, 3);
    assert_eq!(b.received_at, now);
    let entry = store.find_quarantined(no_type.id).unwrap().unwrap();
    assert_eq!(entry.replayed_at, Some(now));
    assert_eq!(entry.replayed_event_id.as_deref(), Some("replayed-b"));
    match quarantine::replay(
        store,
        no_type.id,
        Some(raw_entry_fields(&event("b2"))),
        3,
        now,
    ) {
        Err(Error::NotFound(id)) => assert_eq!(id, no_type.id),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(store.find_by_event_id("b2").unwrap(), None);

    // ... without corrections.
    let replayed_id = quarantine::replay(store, parser_fixed.id, None, 3, now).unwrap();
    assert_eq!(replayed_id, "replayed-d");
    assert_eq!(row(store, "replayed-d").event, event("replayed-d"));

    // A correction that is still invalid writes nothing.
    let before = store.count_by_status().unwrap();
    let still_invalid = vec![(
        b"data".to_vec(),
        br#"{"event_id": "x-2", "event_type": "T"}"#.to_vec(),
    )];
    match quarantine::replay(store, still_bad.id, Some(still_invalid), 3, now) {
        Err(Error::Entry(EntryError::Missing {
            field: "aggregate_id",
        })) => {}
        other => panic!("expected the entry error, got {other:?}"),
    }
    assert_eq!(store.count_by_status().unwrap(), before);
    assert_eq!(store.find_by_event_id("x-2").unwrap(), None);
    let untouched = store.find_quarantined(still_bad.id).unwrap().unwrap();
    assert_eq!(untouched.replayed_at, None);
    assert_eq!(untouched.replayed_event_id, None);
    assert_eq!(untouched.fields, still_bad_fields);
    assert!(matches!(
        quarantine::replay(store, Uuid::now_v7(), None, 3, now),
        Err(Error::NotFound(_))
    ));
}

/// Gets a store that was never migrated; builds its own.
fn invalid_table_names_are_rejected<B: Backend>(_fresh: &B) {
    let too_long = "x".repeat(41);
    for bad in [
        "",
        "Inbox",
        "1inbox",
        "inbox-2",
        "inbox; DROP TABLE x",
        "a\"b",
        "schema.table",
        "ïnbox",
        "inbox ",
        too_long.as_str(),
    ] {
        match validate_table_name(bad) {
            Err(StoreError::InvalidTableName { name, reason }) => {
                assert_eq!(name, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("validate_table_name({bad:?}): {other:?}"),
        }
        match B::with_table(bad) {
            Err(StoreError::InvalidTableName { name, .. }) => assert_eq!(name, bad),
            Err(other) => panic!("building with {bad:?}: {other:?}"),
            Ok(_) => panic!("building with {bad:?} succeeded"),
        }
    }
    for good in ["event_inbox", "_x", "orders_inbox_2", &"x".repeat(40)] {
        validate_table_name(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        B::with_table(good).unwrap_or_else(|e| panic!("building with {good:?}: {e}"));
    }
}

/// Gets a store that was never migrated; builds its own with the longest name allowed.
fn the_longest_table_name_works<B: Backend>(_fresh: &B) {
    let mut name = support::unique_name("t");
    while name.len() < 40 {
        name.push('x');
    }
    let store = TestStore(B::with_table(&name).expect("a 40-character name is valid"));
    setup(&*store);
    store.migrate().expect("migrate again");
    let (entry, _) = malformed(&sid(9), &[("data", b"{")]);
    let events = vec![received("long-1", &sid(1))];
    let stored = store_batch(&*store, STREAM, &events, std::slice::from_ref(&entry), t0());
    assert_eq!(stored.inserted, vec![events[0].row_id]);
    assert_eq!(stored.quarantined, 1);
    let clock = ManualClock::new(t0());
    let mut h = marking(&*store, HashMap::new());
    let settled = process(&*store, due(10), &clock, &mut h);
    assert_eq!(event_ids(&settled), ["long-1"]);
    assert_eq!(store.markers(), ["long-1"]);
    assert_eq!(store.list_quarantined(10, 0).unwrap().len(), 1);
}

// PostgreSQL only.

// Operations: listings, requeues, retention.

/// Stores one event per `(event_id, event_type)`, each in its own batch received `gap` after
/// the one before, starting at `start`.
fn store_typed<B: Backend>(
    store: &B,
    events: &[(&str, &str)],
    start: DateTime<Utc>,
    gap: chrono::Duration,
) -> Vec<ReceivedEvent> {
    events
        .iter()
        .enumerate()
        .map(|(n, (id, event_type))| {
            let mut one = received(id, &sid(100 + n));
            one.event.event_type = event_type.to_string();
            let stored = store_batch(
                store,
                STREAM,
                std::slice::from_ref(&one),
                &[],
                start + gap * n as i32,
            );
            assert_eq!(stored.inserted, [one.row_id]);
            one
        })
        .collect()
}

fn dead_letters() -> RowFilter {
    RowFilter {
        status: Some(EventStatus::DeadLetter),
        ..RowFilter::default()
    }
}

fn listed<B: Backend>(store: &B, filter: &RowFilter, limit: usize) -> Vec<String> {
    store
        .list_rows(filter, &Page::first(limit))
        .expect("list_rows")
        .into_iter()
        .map(|record| record.row.event.event_id)
        .collect()
}

/// Dead-letters `a-1`..`a-4` (two event types, two error texts) and leaves `a-5` pending and
/// `a-6` processed; rows received a minute apart from `t0()`.
fn some_dead_letters<B: Backend>(store: &B) -> Vec<ReceivedEvent> {
    let events = store_typed(
        store,
        &[
            ("a-1", "OrderCreated"),
            ("a-2", "OrderPaid"),
            ("a-3", "OrderCreated"),
            ("a-4", "OrderPaid"),
            ("a-5", "OrderCreated"),
            ("a-6", "OrderCreated"),
        ],
        t0(),
        secs(60),
    );
    let clock = ManualClock::new(t0() + secs(3600));
    let now = clock.now();
    let mut h = handler::<B, _>(
        move |_tx, row: &InboxRow| match row.event.event_id.as_str() {
            "a-1" | "a-2" => dead_letter(3, "Timeout talking to Billing", now),
            "a-3" | "a-4" => dead_letter(1, "bad payload: no amount", now),
            _ => Verdict::Processed,
        },
    );
    let ids: Vec<Uuid> = events
        .iter()
        .filter(|e| e.event.event_id != "a-5")
        .map(|e| e.row_id)
        .collect();
    process(store, Claim::Rows(&ids), &clock, &mut h);
    events
}

fn rows_are_listed_by_filter_in_stable_pages<B: Backend>(store: &B) {
    assert!(store
        .list_rows(&RowFilter::default(), &Page::first(10))
        .unwrap()
        .is_empty());
    let events = some_dead_letters(store);

    assert_eq!(
        listed(store, &RowFilter::default(), 10),
        ["a-1", "a-2", "a-3", "a-4", "a-5", "a-6"]
    );
    assert_eq!(
        listed(store, &dead_letters(), 10),
        ["a-1", "a-2", "a-3", "a-4"]
    );
    let paid = RowFilter {
        event_type: Some("OrderPaid".into()),
        ..dead_letters()
    };
    assert_eq!(listed(store, &paid, 10), ["a-2", "a-4"]);
    // Substring, either case for ASCII; the text is bound, never interpolated.
    let timeouts = RowFilter {
        error_contains: Some("TIMEOUT talking".into()),
        ..dead_letters()
    };
    assert_eq!(listed(store, &timeouts, 10), ["a-1", "a-2"]);
    for nothing in ["%", "_", "' OR 1=1 --", "timeout%"] {
        let filter = RowFilter {
            error_contains: Some(nothing.into()),
            ..RowFilter::default()
        };
        assert_eq!(
            listed(store, &filter, 10),
            Vec::<String>::new(),
            "{nothing}"
        );
    }
    // A half-open time range on received_at: [a-2, a-4).
    let range = RowFilter {
        received_from: Some(t0() + secs(60)),
        received_before: Some(t0() + secs(180)),
        ..RowFilter::default()
    };
    assert_eq!(listed(store, &range, 10), ["a-2", "a-3"]);
    let by_id = RowFilter {
        id: Some(events[2].row_id),
        ..RowFilter::default()
    };
    assert_eq!(listed(store, &by_id, 10), ["a-3"]);
    let by_event_id = RowFilter {
        event_id: Some("a-4".into()),
        ..RowFilter::default()
    };
    assert_eq!(listed(store, &by_event_id, 10), ["a-4"]);
    let processed = RowFilter {
        status: Some(EventStatus::Processed),
        ..RowFilter::default()
    };
    assert_eq!(listed(store, &processed, 10), ["a-6"]);

    // Paging by cursor, two at a time, through the dead letters; a row leaving the listing
    // between pages moves nothing.
    let first = store.list_rows(&dead_letters(), &Page::first(2)).unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].row, row(store, "a-1"));
    assert_eq!(first[0].replay_count, 0);
    assert_eq!(first[0].last_replayed_at, None);
    assert_eq!(
        first[0].row.error_message.as_deref(),
        Some("Timeout talking to Billing")
    );
    let cursor = first[1].cursor();
    assert_eq!(
        cursor,
        Cursor {
            received_at: t0() + secs(60),
            id: events[1].row_id
        }
    );
    store.force_status("a-1", EventStatus::Pending);
    let second = store
        .list_rows(
            &dead_letters(),
            &Page {
                limit: 2,
                after: Some(cursor),
            },
        )
        .unwrap();
    let ids: Vec<&str> = second
        .iter()
        .map(|r| r.row.event.event_id.as_str())
        .collect();
    assert_eq!(ids, ["a-3", "a-4"]);
    let past_end = store
        .list_rows(
            &dead_letters(),
            &Page {
                limit: 2,
                after: Some(second[1].cursor()),
            },
        )
        .unwrap();
    assert!(past_end.is_empty());
    // Rows received at the same instant are ordered by id.
    let same = store_events(store, &["s-1", "s-2", "s-3"], t0() + secs(7200));
    let mut ids: Vec<Uuid> = same.iter().map(|e| e.row_id).collect();
    ids.sort();
    let from = RowFilter {
        received_from: Some(t0() + secs(7200)),
        ..RowFilter::default()
    };
    let page = store.list_rows(&from, &Page::first(1)).unwrap();
    let rest = store
        .list_rows(
            &from,
            &Page {
                limit: 10,
                after: Some(page[0].cursor()),
            },
        )
        .unwrap();
    let listed_ids: Vec<Uuid> = page.iter().chain(&rest).map(|r| r.row.id).collect();
    assert_eq!(listed_ids, ids);
}

/// Stores one new event per call, `ordered` as the consumer's per-aggregate order does, `n`
/// seconds after `t0()`, read from `stream`.
fn store_one<B: Backend>(store: &B, stream: &str, event: &ReceivedEvent, n: i64, ordered: bool) {
    let stored = store
        .store_received(&ReceivedBatch {
            stream,
            ordered,
            events: std::slice::from_ref(event),
            malformed: &[],
            received_at: t0() + secs(n),
            max_retries: MAX_RETRIES,
            stored_by: None,
        })
        .expect("store_received");
    assert_eq!(stored.inserted, [event.row_id]);
}

/// Rows record the stream they were read from: counted per stream, listed and requeued by
/// stream; the table's owner is the first group to adopt it.
fn rows_are_counted_and_filtered_by_stream<B: Backend>(store: &B) {
    assert_eq!(store.find_owner().unwrap(), None);
    assert_eq!(store.adopt_owner("billing", t0()).unwrap(), "billing");
    assert_eq!(store.adopt_owner("shipping", t0()).unwrap(), "billing");
    assert_eq!(store.find_owner().unwrap().as_deref(), Some("billing"));

    assert!(store.count_by_stream().unwrap().is_empty());
    for (n, (id, stream)) in [("o-1", "orders"), ("o-2", "orders"), ("p-1", "payments")]
        .into_iter()
        .enumerate()
    {
        store_one(store, stream, &received(id, &sid(n)), n as i64, false);
    }
    let clock = ManualClock::new(t0() + secs(60));
    let now = clock.now();
    let mut h = handler::<B, _>(
        move |_tx, row: &InboxRow| match row.event.event_id.as_str() {
            "o-2" | "p-1" => dead_letter(1, "refused", now),
            _ => Verdict::Processed,
        },
    );
    process(store, due(10), &clock, &mut h);
    assert_eq!(row(store, "p-1").stream.as_deref(), Some("payments"));
    assert_eq!(
        store.count_by_stream().unwrap(),
        [
            (
                Some("orders".to_string()),
                counts(&[(EventStatus::Processed, 1), (EventStatus::DeadLetter, 1)])
            ),
            (
                Some("payments".to_string()),
                counts(&[(EventStatus::DeadLetter, 1)])
            ),
        ]
    );

    let from = |stream: &str| RowFilter {
        stream: Some(stream.to_string()),
        ..dead_letters()
    };
    assert_eq!(listed(store, &from("orders"), 10), ["o-2"]);
    assert_eq!(listed(store, &from("payments"), 10), ["p-1"]);
    assert!(listed(store, &from("nowhere"), 10).is_empty());
    let requeued = store
        .requeue_dead_letters(&DeadLetterRequeue {
            filter: &from("payments"),
            after: None,
            limit: 10,
            now,
        })
        .unwrap();
    assert_eq!(requeued.count, 1);
    assert_eq!(row(store, "p-1").status, EventStatus::Pending);
    assert_eq!(row(store, "o-2").status, EventStatus::DeadLetter);
}

/// In ordered mode a dead letter parks its aggregate: listed with what waits behind it until
/// it is skipped, which releases the next event; another aggregate goes on meanwhile.
fn parked_aggregates_are_listed_and_released_by_skipping<B: Backend>(store: &B) {
    let parked_id = Uuid::parse_str(AGGREGATE).unwrap();
    let other_id = Uuid::now_v7();
    let mut other = received("b-1", &sid(9));
    other.event.aggregate_id = other_id;
    let events: Vec<ReceivedEvent> = ["a-1", "a-2", "a-3"]
        .iter()
        .enumerate()
        .map(|(n, id)| received(id, &sid(n)))
        .collect();
    for (n, event) in events.iter().chain([&other]).enumerate() {
        store_one(store, STREAM, event, n as i64, true);
    }
    let empty = ParkedPage {
        limit: 10,
        after: None,
        aggregate_id: None,
    };
    assert!(store.list_parked(&empty).unwrap().is_empty());
    assert_eq!(store.parked_summary().unwrap(), Default::default());

    let clock = ManualClock::new(t0() + secs(60));
    let now = clock.now();
    let heads = Claim::Heads {
        limit: 10,
        after_dead_letter: AfterDeadLetter::Park,
        aggregates: None,
        orphan_after: std::time::Duration::from_secs(3600),
    };
    let mut h = handler::<B, _>(
        move |_tx, row: &InboxRow| match row.event.event_id.as_str() {
            "a-1" => dead_letter(1, "cannot bill", now),
            _ => Verdict::Processed,
        },
    );
    let first = process(store, heads, &clock, &mut h);
    assert_eq!(event_ids(&first), ["a-1", "b-1"]);
    assert!(
        process(store, heads, &clock, &mut h).is_empty(),
        "a-2 waits"
    );

    let parked = store.list_parked(&empty).unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].aggregate_id, parked_id);
    assert_eq!(parked[0].dead_letter.event.event_id, "a-1");
    assert_eq!(parked[0].dead_letter.status, EventStatus::DeadLetter);
    assert_eq!(parked[0].waiting, 2);
    assert_eq!(parked[0].oldest_waiting, Some(t0() + secs(1)));
    let only = |aggregate_id| ParkedPage {
        aggregate_id: Some(aggregate_id),
        ..empty
    };
    assert_eq!(store.list_parked(&only(parked_id)).unwrap(), parked);
    assert!(store.list_parked(&only(other_id)).unwrap().is_empty());
    let after = ParkedPage {
        after: Some(parked_id),
        ..empty
    };
    assert!(store.list_parked(&after).unwrap().is_empty());
    assert_eq!(
        store.parked_summary().unwrap(),
        eventflow::store::ParkedSummary {
            aggregates: 1,
            oldest_waiting: Some(t0() + secs(1)),
        }
    );

    // Skipping: once; never a row that is not a dead letter.
    let skip = |id| DeadLetterSkip { id, now };
    assert!(!store.skip_dead_letter(&skip(row(store, "b-1").id)).unwrap());
    assert!(store.skip_dead_letter(&skip(events[0].row_id)).unwrap());
    assert!(!store.skip_dead_letter(&skip(events[0].row_id)).unwrap());
    assert_eq!(row(store, "a-1").status, EventStatus::DeadLetter, "stays");
    assert!(store.list_parked(&empty).unwrap().is_empty());
    assert_eq!(store.parked_summary().unwrap().aggregates, 0);
    let released = process(store, heads, &clock, &mut h);
    assert_eq!(event_ids(&released), ["a-2"]);
}

fn dead_letters_are_requeued_once_and_recorded<B: Backend>(store: &B) {
    some_dead_letters(store);
    let requeued_at = t0() + secs(7200);
    let requeue = |filter: &RowFilter, after: Option<Cursor>, limit: usize| {
        store
            .requeue_dead_letters(&DeadLetterRequeue {
                filter,
                after,
                limit,
                now: requeued_at,
            })
            .expect("requeue_dead_letters")
    };

    // One, by event id.
    let one = RowFilter {
        event_id: Some("a-3".into()),
        ..RowFilter::default()
    };
    let done = requeue(&one, None, 10);
    let a3 = row(store, "a-3");
    assert_eq!(done.count, 1);
    assert_eq!(
        done.last,
        Some(Cursor {
            received_at: a3.received_at,
            id: a3.id
        })
    );
    assert_eq!(a3.status, EventStatus::Pending);
    assert_eq!(a3.retry_count, 0);
    assert_eq!(a3.next_retry_at, None);
    assert_eq!(
        a3.error_message.as_deref(),
        Some("bad payload: no amount"),
        "kept for reference"
    );
    let record = store.list_rows(&one, &Page::first(1)).unwrap().remove(0);
    assert_eq!(record.replay_count, 1);
    assert_eq!(record.last_replayed_at, Some(requeued_at));
    // Again: no longer a dead letter, so nothing happens.
    assert_eq!(requeue(&one, None, 10).count, 0);
    // Neither pending nor processed rows are ever requeued, whatever the filter says.
    let not_dead = RowFilter {
        status: Some(EventStatus::Processed),
        event_id: Some("a-6".into()),
        ..RowFilter::default()
    };
    assert_eq!(requeue(&not_dead, None, 10), Default::default());
    assert_eq!(row(store, "a-6").status, EventStatus::Processed);

    // A filtered set, in batches of one, each going on after the last.
    let timeouts = RowFilter {
        error_contains: Some("timeout".into()),
        ..RowFilter::default()
    };
    let first = requeue(&timeouts, None, 1);
    assert_eq!(first.count, 1);
    assert_eq!(row(store, "a-1").status, EventStatus::Pending);
    assert_eq!(row(store, "a-2").status, EventStatus::DeadLetter);
    let second = requeue(&timeouts, first.last, 1);
    assert_eq!(second.count, 1);
    assert_eq!(row(store, "a-2").status, EventStatus::Pending);
    assert_eq!(requeue(&timeouts, second.last, 1).count, 0);

    // All the rest.
    assert_eq!(requeue(&RowFilter::default(), None, 100).count, 1);
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Pending, 5), (EventStatus::Processed, 1)])
    );

    // Requeued rows are due at once, and handled like any other.
    let clock = ManualClock::new(requeued_at);
    let mut ok = marking(store, HashMap::new());
    let settled = process(store, due(10), &clock, &mut ok);
    assert_eq!(event_ids(&settled), ["a-1", "a-2", "a-3", "a-4", "a-5"]);
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Processed, 6)])
    );
    let record = store.list_rows(&one, &Page::first(1)).unwrap().remove(0);
    assert_eq!(record.replay_count, 1, "the record outlives the requeue");
    assert_eq!(record.row.error_message, None);
}

fn oldest_received_tells_the_lag<B: Backend>(store: &B) {
    assert_eq!(store.oldest_received(EventStatus::Pending).unwrap(), None);
    some_dead_letters(store);
    assert_eq!(
        store.oldest_received(EventStatus::Pending).unwrap(),
        Some(t0() + secs(240))
    );
    assert_eq!(
        store.oldest_received(EventStatus::DeadLetter).unwrap(),
        Some(t0())
    );
    assert_eq!(store.oldest_received(EventStatus::Failed).unwrap(), None);
    store.force_status("a-2", EventStatus::Failed);
    assert_eq!(
        store.oldest_received(EventStatus::Failed).unwrap(),
        Some(t0() + secs(60))
    );
}

fn quarantine_is_listed_by_filter_in_stable_pages<B: Backend>(store: &B) {
    let none = QuarantineFilter::default();
    assert!(store
        .list_quarantined_matching(&none, &Page::first(10))
        .unwrap()
        .is_empty());
    let (bad_json, _) = malformed(&sid(1), &[("data", b"{oops")]);
    let (no_type, _) = malformed(&sid(2), &[("event_id", b"x-1")]);
    let (other_stream, _) = malformed(&sid(3), &[("data", b"[1]")]);
    let (later, _) = malformed(&sid(4), &[("event_id", b"x-2")]);
    store_batch(
        store,
        STREAM,
        &[],
        &[bad_json.clone(), no_type.clone()],
        t0(),
    );
    store_batch(
        store,
        "payments",
        &[],
        std::slice::from_ref(&other_stream),
        t0() + secs(10),
    );
    store_batch(
        store,
        STREAM,
        &[],
        std::slice::from_ref(&later),
        t0() + secs(20),
    );
    let ids = |filter: &QuarantineFilter, page: Page| -> Vec<Uuid> {
        store
            .list_quarantined_matching(filter, &page)
            .expect("list_quarantined_matching")
            .iter()
            .map(|entry| entry.id)
            .collect()
    };
    let mut first_two = [bad_json.id, no_type.id];
    first_two.sort();
    let all = ids(&none, Page::first(10));
    assert_eq!(all[..2], first_two);
    assert_eq!(all[2..], [other_stream.id, later.id]);

    let orders = QuarantineFilter {
        stream: Some(STREAM.into()),
        ..QuarantineFilter::default()
    };
    assert_eq!(ids(&orders, Page::first(10)).len(), 3);
    let missing_type = QuarantineFilter {
        reason_contains: Some("MISSING required field `event_type`".into()),
        ..QuarantineFilter::default()
    };
    assert_eq!(ids(&missing_type, Page::first(10)), [no_type.id, later.id]);
    let window = QuarantineFilter {
        received_from: Some(t0() + secs(10)),
        received_before: Some(t0() + secs(20)),
        ..QuarantineFilter::default()
    };
    assert_eq!(ids(&window, Page::first(10)), [other_stream.id]);
    let one = QuarantineFilter {
        id: Some(later.id),
        ..QuarantineFilter::default()
    };
    assert_eq!(ids(&one, Page::first(10)), [later.id]);

    // Pages of one, by cursor.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_quarantined_matching(&none, &Page { limit: 1, after })
            .unwrap();
        let Some(entry) = page.first() else { break };
        seen.push(entry.id);
        after = Some(Cursor {
            received_at: entry.received_at,
            id: entry.id,
        });
    }
    assert_eq!(seen, all);

    // Replayed or not.
    let fixed = received("x-2", &later.stream_id);
    assert!(store
        .replay_quarantined(&QuarantineReplay {
            id: later.id,
            event: &fixed,
            now: t0() + secs(30),
            max_retries: MAX_RETRIES,
        })
        .unwrap());
    let replayed = QuarantineFilter {
        replayed: Some(true),
        ..QuarantineFilter::default()
    };
    assert_eq!(ids(&replayed, Page::first(10)), [later.id]);
    let waiting = QuarantineFilter {
        replayed: Some(false),
        ..QuarantineFilter::default()
    };
    assert_eq!(ids(&waiting, Page::first(10)).len(), 3);
}

/// Rows in every status, each processed row `processed_at` as its event id says.
fn rows_in_every_status<B: Backend>(store: &B) {
    store_events(
        store,
        &[
            "old-1", "old-2", "old-3", "new-1", "pend", "proc", "fail", "dead",
        ],
        t0(),
    );
    let old = ManualClock::new(t0() + secs(60));
    let ids: Vec<Uuid> = ["old-1", "old-2", "old-3"]
        .iter()
        .map(|id| row(store, id).id)
        .collect();
    process(
        store,
        Claim::Rows(&ids),
        &old,
        &mut marking(store, HashMap::new()),
    );
    let later = ManualClock::new(t0() + secs(86_400));
    let now = later.now();
    let mut h = handler::<B, _>(
        move |_tx, row: &InboxRow| match row.event.event_id.as_str() {
            "fail" => retry_at(1, now + secs(60), "later", now),
            "dead" => dead_letter(3, "dead", now),
            _ => Verdict::Processed,
        },
    );
    let ids: Vec<Uuid> = ["new-1", "fail", "dead"]
        .iter()
        .map(|id| row(store, id).id)
        .collect();
    process(store, Claim::Rows(&ids), &later, &mut h);
    store.force_status("proc", EventStatus::Processing);
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[
            (EventStatus::Pending, 1),
            (EventStatus::Processing, 1),
            (EventStatus::Processed, 4),
            (EventStatus::Failed, 1),
            (EventStatus::DeadLetter, 1),
        ])
    );
}

fn only_old_processed_rows_are_deleted_in_batches<B: Backend>(store: &B) {
    rows_in_every_status(store);
    // Every row is old by received_at; only processed_at counts, and only for processed rows.
    let cleanup = |limit: usize, exclusive: bool| {
        store
            .delete_processed_before(&ProcessedCleanup {
                before: t0() + secs(3600),
                limit,
                exclusive,
            })
            .expect("delete_processed_before")
    };
    assert_eq!(cleanup(2, false), Cleanup::Deleted(2));
    assert_eq!(cleanup(2, true), Cleanup::Deleted(1));
    assert_eq!(cleanup(2, true), Cleanup::Deleted(0));
    for gone in ["old-1", "old-2", "old-3"] {
        assert_eq!(store.find_by_event_id(gone).unwrap(), None, "{gone}");
    }
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[
            (EventStatus::Pending, 1),
            (EventStatus::Processing, 1),
            (EventStatus::Processed, 1),
            (EventStatus::Failed, 1),
            (EventStatus::DeadLetter, 1),
        ])
    );
    // Far in the future: the young processed row goes too, and nothing else.
    assert_eq!(
        store
            .delete_processed_before(&ProcessedCleanup {
                before: t0() + secs(10 * 86_400),
                limit: 1000,
                exclusive: false,
            })
            .unwrap(),
        Cleanup::Deleted(1)
    );
    assert_eq!(
        store.count_by_status().unwrap().get(EventStatus::Processed),
        0
    );
    assert_eq!(store.count_by_status().unwrap().total(), 4);
}

// Table owners and streams.

/// The first group to adopt a table owns it; later groups are told who does.
fn the_first_group_to_adopt_a_table_owns_it<B: Backend>(store: &B) {
    assert_eq!(store.find_owner().unwrap(), None, "nobody owns a new table");
    assert_eq!(store.adopt_owner("billing", t0()).unwrap(), "billing");
    assert_eq!(store.find_owner().unwrap(), Some("billing".into()));
    assert_eq!(
        store.adopt_owner("shipping", t0() + secs(1)).unwrap(),
        "billing",
        "a later group gets the owner's name back"
    );
    assert_eq!(
        store.adopt_owner("billing", t0() + secs(2)).unwrap(),
        "billing",
        "the owner adopting again changes nothing"
    );
    assert_eq!(store.find_owner().unwrap(), Some("billing".into()));
}

/// Two groups adopting a new table at once: exactly one owns it, and both are told which.
/// Gets a store that was never migrated; makes a new table per round, to give the race chances.
fn racing_groups_agree_on_one_owner<B: Backend>(_fresh: &B) {
    const ROUNDS: usize = 20;
    let groups = ["billing", "shipping"];
    for round in 0..ROUNDS {
        let store = TestStore::<B>::fresh("racing_groups_agree_on_one_owner")
            .expect("the database answered a moment ago");
        store.migrate().expect("migrate");
        let barrier = std::sync::Barrier::new(groups.len());
        let owners: Vec<String> = thread::scope(|scope| {
            let adopters: Vec<_> = groups
                .iter()
                .map(|group| {
                    let (store, barrier) = (&*store, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        store.adopt_owner(group, t0())
                    })
                })
                .collect();
            adopters
                .into_iter()
                .map(|adopter| {
                    adopter.join().expect("adopter").unwrap_or_else(|error| {
                        panic!(
                            "round {round}: adopt_owner failed: {}",
                            support::error_chain(&error)
                        )
                    })
                })
                .collect()
        });
        assert_eq!(owners[0], owners[1], "round {round}: both told one owner");
        assert!(groups.contains(&owners[0].as_str()), "{owners:?}");
        assert_eq!(store.find_owner().unwrap(), Some(owners[0].clone()));
    }
}

/// Every row records the stream it came from, a replayed quarantined entry its entry's stream;
/// `count_by_stream` counts per stream and status, rows without a stream first.
fn rows_record_their_stream<B: Backend>(store: &B) {
    let orders = vec![
        received("s-1", &sid(1)),
        received("s-2", &sid(2)),
        received("s-3", &sid(3)),
    ];
    store_batch(store, "orders", &orders, &[], t0());
    let payments = vec![received("s-4", &sid(1))];
    let (bad, _) = malformed(&sid(2), &[("data", b"{oops")]);
    let stored = store_batch(
        store,
        "payments",
        &payments,
        std::slice::from_ref(&bad),
        t0() + secs(1),
    );
    assert_eq!(stored.inserted, vec![payments[0].row_id]);
    assert_eq!(stored.quarantined, 1);
    for (id, stream) in [
        ("s-1", "orders"),
        ("s-2", "orders"),
        ("s-3", "orders"),
        ("s-4", "payments"),
    ] {
        assert_eq!(row(store, id).stream.as_deref(), Some(stream), "{id}");
    }

    let fixed = received("s-5", &bad.stream_id);
    assert!(store
        .replay_quarantined(&QuarantineReplay {
            id: bad.id,
            event: &fixed,
            now: t0() + secs(2),
            max_retries: MAX_RETRIES,
        })
        .unwrap());
    assert_eq!(
        row(store, "s-5").stream.as_deref(),
        Some("payments"),
        "a replayed row comes from its entry's stream"
    );

    let clock = ManualClock::new(t0() + secs(60));
    let mut ok = marking(store, HashMap::new());
    let settled = process(store, Claim::Rows(&[orders[0].row_id]), &clock, &mut ok);
    assert_eq!(event_ids(&settled), ["s-1"]);
    assert_eq!(settled[0].row.stream.as_deref(), Some("orders"));
    store.clear_stream("s-3");
    assert_eq!(row(store, "s-3").stream, None);

    assert_eq!(
        store.count_by_stream().unwrap(),
        vec![
            (None, counts(&[(EventStatus::Pending, 1)])),
            (
                Some("orders".to_string()),
                counts(&[(EventStatus::Pending, 1), (EventStatus::Processed, 1)])
            ),
            (
                Some("payments".to_string()),
                counts(&[(EventStatus::Pending, 2)])
            ),
        ]
    );
}

// Per-aggregate order.

/// Aggregate `n` of a test.
fn aggregate(n: usize) -> Uuid {
    Uuid::from_u128(0x0e7e_0000_0000_4000_8000_0000_0000_0000 + n as u128)
}

/// A stored event of `aggregate`, otherwise like [`received`].
fn received_of(id: &str, aggregate: Uuid, stream_id: &str) -> ReceivedEvent {
    let mut received = received(id, stream_id);
    received.event.aggregate_id = aggregate;
    received
}

/// Stores `(event id, aggregate)` pairs in one batch and checks they were all inserted.
fn store_aggregated<B: Backend>(
    store: &B,
    events: &[(&str, Uuid)],
    received_at: DateTime<Utc>,
) -> Vec<ReceivedEvent> {
    let events: Vec<ReceivedEvent> = events
        .iter()
        .enumerate()
        .map(|(n, (id, aggregate))| received_of(id, *aggregate, &sid(n)))
        .collect();
    let stored = store_batch(store, STREAM, &events, &[], received_at);
    assert_eq!(
        stored.inserted,
        events.iter().map(|e| e.row_id).collect::<Vec<_>>()
    );
    events
}

fn heads(limit: usize, after_dead_letter: AfterDeadLetter) -> Claim<'static> {
    Claim::Heads {
        limit,
        after_dead_letter,
        aggregates: None,
        orphan_after: std::time::Duration::from_secs(3600),
    }
}

fn sorted_ids(settled: &[Settled]) -> Vec<&str> {
    let mut ids = event_ids(settled);
    ids.sort();
    ids
}

/// Requeues the dead letter holding `event_id`; returns how many rows were requeued.
fn requeue_event<B: Backend>(store: &B, event_id: &str, now: DateTime<Utc>) -> u64 {
    store
        .requeue_dead_letters(&DeadLetterRequeue {
            filter: &RowFilter {
                event_id: Some(event_id.into()),
                ..RowFilter::default()
            },
            after: None,
            limit: 10,
            now,
        })
        .expect("requeue_dead_letters")
        .count
}

/// Rows a-1..a-3, b-1..b-3 and c-1..c-3 of three aggregates, stored interleaved (a-1, b-1, c-1,
/// a-2, ...), one batch per round a second apart.
fn store_three_aggregates<B: Backend>(store: &B) -> (Uuid, Uuid, Uuid) {
    let (a, b, c) = (aggregate(1), aggregate(2), aggregate(3));
    for n in 1..=3 {
        let ids = [format!("a-{n}"), format!("b-{n}"), format!("c-{n}")];
        store_aggregated(
            store,
            &[(&ids[0], a), (&ids[1], b), (&ids[2], c)],
            t0() + secs(n),
        );
    }
    (a, b, c)
}

/// Heads among given aggregates: how a worker follows the aggregates it just settled, and takes
/// those a reader just stored, without scanning every due row.
fn heads_are_claimed_among_given_aggregates<B: Backend>(store: &B) {
    let (_, b, c) = store_three_aggregates(store);
    let clock = ManualClock::new(t0() + secs(60));
    let mut h = marking(store, HashMap::new());
    fn among(aggregates: &[Uuid]) -> Claim<'_> {
        Claim::Heads {
            limit: 10,
            after_dead_letter: AfterDeadLetter::Park,
            aggregates: Some(aggregates),
            orphan_after: std::time::Duration::from_secs(3600),
        }
    }
    assert_eq!(
        event_ids(&process(store, among(&[b]), &clock, &mut h)),
        ["b-1"]
    );
    assert_eq!(
        sorted_ids(&process(store, among(&[c, b]), &clock, &mut h)),
        ["b-2", "c-1"],
        "b's next head, and c's first"
    );
    assert!(process(store, among(&[]), &clock, &mut h).is_empty());
    assert!(process(store, among(&[aggregate(99)]), &clock, &mut h).is_empty());
    assert_eq!(
        sorted_ids(&process(
            store,
            heads(10, AfterDeadLetter::Park),
            &clock,
            &mut h
        )),
        ["a-1", "b-3", "c-2"],
        "any aggregate when none are given"
    );
}

/// A heads claim takes the earliest open row of each aggregate, one per aggregate; a failed
/// head holds back only its own aggregate until it is processed, and so does a row in
/// `processing`. Storing order decides, not `received_at`.
fn heads_are_the_earliest_open_row_of_each_aggregate<B: Backend>(store: &B) {
    store_three_aggregates(store);
    let clock = ManualClock::new(t0() + secs(60));
    let retry = t0() + secs(600);
    let mut h = marking(
        store,
        script(&[("b-1", retry_at(1, retry, "not yet", t0() + secs(60)))]),
    );
    let park = AfterDeadLetter::Park;

    let first = process(store, heads(10, park), &clock, &mut h);
    assert_eq!(sorted_ids(&first), ["a-1", "b-1", "c-1"]);
    assert_eq!(row(store, "b-1").status, EventStatus::Failed);
    assert_eq!(row(store, "b-1").next_retry_at, Some(retry));
    let second = process(store, heads(10, park), &clock, &mut h);
    assert_eq!(
        sorted_ids(&second),
        ["a-2", "c-2"],
        "the failed b-1 holds back b-2 only"
    );
    let third = process(store, heads(1, park), &clock, &mut h);
    assert_eq!(event_ids(&third).len(), 1, "the limit holds");
    let third_rest = process(store, heads(10, park), &clock, &mut h);
    let mut thirds = [event_ids(&third), event_ids(&third_rest)].concat();
    thirds.sort();
    assert_eq!(thirds, ["a-3", "c-3"]);
    assert!(process(store, heads(10, park), &clock, &mut h).is_empty());

    clock.set(retry);
    let mut ok = marking(store, HashMap::new());
    for expected in ["b-1", "b-2", "b-3"] {
        let settled = process(store, heads(10, park), &clock, &mut ok);
        assert_eq!(event_ids(&settled), [expected], "one row of b per claim");
        assert_eq!(settled[0].verdict, Verdict::Processed);
    }
    assert!(process(store, heads(10, park), &clock, &mut ok).is_empty());
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Processed, 9)])
    );
    let mut markers = store.markers();
    markers.sort();
    let all: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|x| (1..=3).map(move |n| format!("{x}-{n}")))
        .collect();
    assert_eq!(
        markers, all,
        "each row's writes committed once (b-1's failed attempt rolled back)"
    );

    // Storing order decides, even against `received_at` (another machine's clock).
    let d = aggregate(4);
    store_aggregated(store, &[("d-1", d)], t0() + secs(100));
    store_aggregated(store, &[("d-2", d)], t0() + secs(50));
    // A row in `processing` (the reference toolkit's claim) holds back its aggregate too.
    store.force_status("d-1", EventStatus::Processing);
    assert!(process(store, heads(10, park), &clock, &mut ok).is_empty());
    store.force_status("d-1", EventStatus::Pending);
    assert_eq!(
        event_ids(&process(store, heads(10, park), &clock, &mut ok)),
        ["d-1"]
    );
    assert_eq!(
        event_ids(&process(store, heads(10, park), &clock, &mut ok)),
        ["d-2"]
    );
}

/// A dead letter parks its aggregate (with `Park`, not with `Skip`) until it is skipped or
/// requeued; parked aggregates are listed with what waits behind them.
fn dead_letters_park_their_aggregate_until_skipped_or_requeued<B: Backend>(store: &B) {
    let (p, s) = (aggregate(1), aggregate(2));
    store_aggregated(store, &[("p-1", p), ("s-1", s)], t0());
    store_aggregated(store, &[("p-2", p), ("s-2", s)], t0() + secs(1));
    store_aggregated(store, &[("p-3", p)], t0() + secs(2));
    let clock = ManualClock::new(t0() + secs(60));
    let failed_at = t0() + secs(60);
    let mut h = marking(
        store,
        script(&[
            ("p-1", dead_letter(1, "poison", failed_at)),
            ("s-1", dead_letter(1, "poison", failed_at)),
            // Due again at once: still open, so it holds p-3 back, but claimable.
            ("p-2", retry_at(1, failed_at, "flaky", failed_at)),
        ]),
    );
    let (park, skip) = (AfterDeadLetter::Park, AfterDeadLetter::Skip);
    let parked_page = |limit, after, aggregate_id| {
        store
            .list_parked(&ParkedPage {
                limit,
                after,
                aggregate_id,
            })
            .expect("list_parked")
    };

    assert_eq!(parked_page(10, None, None), vec![]);
    assert_eq!(store.parked_summary().unwrap(), ParkedSummary::default());
    let first = process(store, heads(10, park), &clock, &mut h);
    assert_eq!(sorted_ids(&first), ["p-1", "s-1"]);
    assert_eq!(row(store, "p-1").status, EventStatus::DeadLetter);
    assert!(
        process(store, heads(10, park), &clock, &mut h).is_empty(),
        "both aggregates parked"
    );

    let parked_p = ParkedAggregate {
        aggregate_id: p,
        dead_letter: row(store, "p-1"),
        waiting: 2,
        oldest_waiting: Some(t0() + secs(1)),
    };
    let parked_s = ParkedAggregate {
        aggregate_id: s,
        dead_letter: row(store, "s-1"),
        waiting: 1,
        oldest_waiting: Some(t0() + secs(1)),
    };
    assert_eq!(
        parked_page(10, None, None),
        vec![parked_p.clone(), parked_s.clone()]
    );
    assert_eq!(parked_page(1, None, None), vec![parked_p.clone()]);
    assert_eq!(parked_page(10, Some(p), None), vec![parked_s.clone()]);
    assert_eq!(parked_page(10, None, Some(s)), vec![parked_s.clone()]);
    assert_eq!(
        store.parked_summary().unwrap(),
        ParkedSummary {
            aggregates: 2,
            oldest_waiting: Some(t0() + secs(1)),
        }
    );

    // Skipping releases s; only a dead letter not skipped yet can be skipped.
    let skip_row = |event_id: &str| {
        store
            .skip_dead_letter(&DeadLetterSkip {
                id: row(store, event_id).id,
                now: t0() + secs(120),
            })
            .expect("skip_dead_letter")
    };
    assert!(!skip_row("p-2"), "a pending row is not a dead letter");
    assert!(skip_row("s-1"));
    assert!(!skip_row("s-1"), "skipped already");
    assert!(!store
        .skip_dead_letter(&DeadLetterSkip {
            id: Uuid::now_v7(),
            now: t0()
        })
        .unwrap());
    assert_eq!(
        row(store, "s-1").status,
        EventStatus::DeadLetter,
        "still a dead letter"
    );
    assert_eq!(parked_page(10, None, None), vec![parked_p.clone()]);
    assert_eq!(parked_page(10, None, Some(s)), vec![]);
    assert_eq!(
        store.parked_summary().unwrap(),
        ParkedSummary {
            aggregates: 1,
            oldest_waiting: Some(t0() + secs(1)),
        }
    );
    let released = process(store, heads(10, park), &clock, &mut h);
    assert_eq!(event_ids(&released), ["s-2"], "p stays parked");

    // With Skip, a dead letter holds nothing back: p-2 goes on (and fails, due again at once).
    let skipping = process(store, heads(10, skip), &clock, &mut h);
    assert_eq!(event_ids(&skipping), ["p-2"], "one row of p per claim");
    assert_eq!(row(store, "p-2").status, EventStatus::Failed);
    assert_eq!(
        parked_page(10, None, None),
        vec![parked_p.clone()],
        "a failed row still waits"
    );

    // Requeued, the dead letter is its aggregate's head again, before the due p-2.
    assert_eq!(requeue_event(store, "p-1", t0() + secs(180)), 1);
    assert_eq!(parked_page(10, None, None), vec![]);
    assert_eq!(store.parked_summary().unwrap(), ParkedSummary::default());
    let mut ok = marking(store, HashMap::new());
    assert_eq!(
        event_ids(&process(store, heads(10, skip), &clock, &mut ok)),
        ["p-1"],
        "requeued, it is open: it holds p-2 back even with Skip"
    );
    for expected in ["p-2", "p-3"] {
        let settled = process(store, heads(10, park), &clock, &mut ok);
        assert_eq!(event_ids(&settled), [expected]);
    }
    assert!(process(store, heads(10, park), &clock, &mut ok).is_empty());

    // A requeue clears the skip: dead-lettered again, s-1 parks s again and can be skipped.
    assert_eq!(requeue_event(store, "s-1", t0() + secs(240)), 1);
    store_aggregated(store, &[("s-3", s)], t0() + secs(3));
    assert_eq!(
        event_ids(&process(store, heads(10, park), &clock, &mut h)),
        ["s-1"]
    );
    assert_eq!(row(store, "s-1").status, EventStatus::DeadLetter);
    assert!(process(store, heads(10, park), &clock, &mut h).is_empty());
    assert_eq!(
        parked_page(10, None, None),
        vec![ParkedAggregate {
            aggregate_id: s,
            dead_letter: row(store, "s-1"),
            waiting: 1,
            oldest_waiting: Some(t0() + secs(3)),
        }]
    );
    assert!(skip_row("s-1"), "the requeue cleared the earlier skip");
}

/// The sequence number in an event id `<prefix>-<aggregate>-<sequence>`.
fn sequence_of(event_id: &str) -> usize {
    event_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sequence in {event_id}"))
}

/// Four workers claiming heads over 20 aggregates of 10 rows: every row handled once, each
/// aggregate's rows in order, never two of one aggregate at once.
fn heads_claims_keep_each_aggregate_in_order_under_concurrency<B: Backend>(store: &B) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    const AGGREGATES: usize = 20;
    const ROWS: usize = 10;
    const THREADS: usize = 4;
    const TOTAL: usize = AGGREGATES * ROWS;
    for seq in 0..ROWS {
        // Each batch holds one row of every aggregate, in a different order each time.
        let events: Vec<ReceivedEvent> = (0..AGGREGATES)
            .map(|n| {
                let a = (n * 7 + seq) % AGGREGATES;
                received_of(
                    &format!("o-{a:02}-{seq}"),
                    aggregate(a),
                    &sid(seq * AGGREGATES + n),
                )
            })
            .collect();
        store_batch(store, STREAM, &events, &[], t0() + secs(seq as i64));
    }
    let clock = ManualClock::new(t0() + secs(60));
    let in_flight = Mutex::new(HashSet::<Uuid>::new());
    let overlaps = Mutex::new(Vec::<String>::new());
    let seen = Mutex::new(Vec::<(Uuid, usize)>::new());
    let done = AtomicUsize::new(0);

    thread::scope(|scope| {
        for _ in 0..THREADS {
            let (clock, in_flight, overlaps, seen, done) =
                (&clock, &in_flight, &overlaps, &seen, &done);
            scope.spawn(move || {
                let mut h = handler::<B, _>(|tx, row| {
                    let id = &row.event.event_id;
                    let aggregate = row.event.aggregate_id;
                    if !in_flight.lock().unwrap().insert(aggregate) {
                        overlaps.lock().unwrap().push(id.clone());
                    }
                    seen.lock().unwrap().push((aggregate, sequence_of(id)));
                    store.write_marker(tx, id).expect("write a marker");
                    thread::sleep(Duration::from_millis(1));
                    in_flight.lock().unwrap().remove(&aggregate);
                    Verdict::Processed
                });
                let deadline = Instant::now() + Duration::from_secs(120);
                while done.load(Ordering::SeqCst) < TOTAL {
                    assert!(Instant::now() < deadline, "workers stalled");
                    let settled = store
                        .process_claimed(
                            &ClaimParams {
                                claim: heads(5, AfterDeadLetter::Park),
                                clock,
                                optimistic: false,
                            },
                            &mut h,
                        )
                        .expect("process_claimed");
                    assert!(settled.len() <= 5, "{} rows claimed", settled.len());
                    let aggregates: HashSet<Uuid> =
                        settled.iter().map(|s| s.row.event.aggregate_id).collect();
                    assert_eq!(aggregates.len(), settled.len(), "one row per aggregate");
                    if settled.is_empty() {
                        // Every head is held by another worker: wait for one to commit.
                        thread::sleep(Duration::from_millis(1));
                    }
                    done.fetch_add(settled.len(), Ordering::SeqCst);
                }
            });
        }
    });

    assert_eq!(
        overlaps.into_inner().unwrap(),
        Vec::<String>::new(),
        "rows handled while another row of their aggregate was"
    );
    let mut per_aggregate: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
    for (aggregate, seq) in seen.into_inner().unwrap() {
        per_aggregate.entry(aggregate).or_default().push(seq);
    }
    assert_eq!(per_aggregate.len(), AGGREGATES);
    for (aggregate, seqs) in &per_aggregate {
        assert_eq!(
            *seqs,
            (0..ROWS).collect::<Vec<_>>(),
            "aggregate {aggregate}: each row once, in order"
        );
    }
    let markers = store.markers();
    assert_eq!(markers.len(), TOTAL);
    assert_eq!(markers.iter().collect::<HashSet<_>>().len(), TOTAL);
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Processed, TOTAL as u64)])
    );
}

/// Two readers storing ordered batches of overlapping aggregates at once: neither deadlocks,
/// every row is stored, and each reader's rows of an aggregate are claimed in its storing order.
fn ordered_batches_stored_concurrently_all_commit_in_order<B: Backend>(store: &B) {
    const AGGREGATES: usize = 8;
    const PER_BATCH: usize = 5;
    const BATCHES: usize = 30;
    const WRITERS: usize = 2;
    let barrier = std::sync::Barrier::new(WRITERS);
    thread::scope(|scope| {
        for writer in 0..WRITERS {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                for batch in 0..BATCHES {
                    // Overlapping, shifting sets of aggregates, one writer walking them up and
                    // the other down: locks taken in batch order would wait in a circle.
                    let mut picked: Vec<usize> = (0..PER_BATCH)
                        .map(|n| (batch + writer * 3 + n) % AGGREGATES)
                        .collect();
                    if writer == 1 {
                        picked.reverse();
                    }
                    let events: Vec<ReceivedEvent> = picked
                        .iter()
                        .enumerate()
                        .map(|(n, a)| {
                            received_of(
                                &format!("w{writer}-{a}-{batch}"),
                                aggregate(*a),
                                &sid(batch * PER_BATCH + n),
                            )
                        })
                        .collect();
                    let stored = store
                        .store_received(&ReceivedBatch {
                            stream: STREAM,
                            ordered: true,
                            events: &events,
                            malformed: &[],
                            received_at: t0(),
                            max_retries: MAX_RETRIES,
                            stored_by: None,
                        })
                        .unwrap_or_else(|error| {
                            panic!(
                                "writer {writer}, batch {batch}: {}",
                                support::error_chain(&error)
                            )
                        });
                    assert_eq!(
                        stored.inserted,
                        events.iter().map(|e| e.row_id).collect::<Vec<_>>()
                    );
                }
            });
        }
    });
    let total = WRITERS * BATCHES * PER_BATCH;
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[(EventStatus::Pending, total as u64)])
    );

    // Drained by heads: each writer's rows of an aggregate come in its batch order.
    let clock = ManualClock::new(t0() + secs(60));
    let mut ok = marking(store, HashMap::new());
    let mut handled: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut count = 0;
    loop {
        let settled = process(store, heads(100, AfterDeadLetter::Park), &clock, &mut ok);
        if settled.is_empty() {
            break;
        }
        for id in event_ids(&settled) {
            let mut parts = id.split('-');
            let (writer, aggregate) = (parts.next().unwrap(), parts.next().unwrap());
            handled
                .entry((aggregate.to_string(), writer.to_string()))
                .or_default()
                .push(sequence_of(id));
            count += 1;
        }
    }
    assert_eq!(count, total);
    for (key, batches) in handled {
        let mut in_order = batches.clone();
        in_order.sort();
        assert_eq!(batches, in_order, "{key:?} claimed out of storing order");
    }
}

mod postgres_only {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Barrier;
    use std::time::Duration;

    /// The reference DDL from the earlier toolkit's documentation, verbatim.
    const REFERENCE_DDL: &str = r#"
CREATE EXTENSION IF NOT EXISTS pgcrypto;   -- for gen_random_uuid()
CREATE TABLE event_inbox (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id        VARCHAR(255) NOT NULL UNIQUE,
    stream_id       VARCHAR(255) NOT NULL,
    event_type      VARCHAR(128) NOT NULL,
    aggregate_id    UUID NOT NULL,
    correlation_id  VARCHAR(255),
    occurred_on     TIMESTAMP WITH TIME ZONE NOT NULL,
    payload         JSONB NOT NULL,
    status          VARCHAR(50) NOT NULL DEFAULT 'pending',
    retry_count     INTEGER NOT NULL DEFAULT 0,
    max_retries     INTEGER NOT NULL DEFAULT 3,
    received_at     TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    processed_at    TIMESTAMP WITH TIME ZONE,
    next_retry_at   TIMESTAMP WITH TIME ZONE,
    error_message   TEXT,
    last_error_at   TIMESTAMP WITH TIME ZONE,
    CONSTRAINT chk_event_inbox_status CHECK (
        status IN ('pending', 'processing', 'processed', 'failed', 'dead_letter'))
);
CREATE UNIQUE INDEX uq_event_inbox_event_id ON event_inbox(event_id);
CREATE INDEX ix_event_inbox_status_next_retry ON event_inbox(status, next_retry_at);
CREATE INDEX ix_event_inbox_aggregate_received ON event_inbox(aggregate_id, received_at);
"#;

    fn open(test: &str) -> Option<TestStore<PostgresStore>> {
        let store = TestStore::<PostgresStore>::fresh(test)?;
        setup(&*store);
        Some(store)
    }

    /// The storing transaction commits with `synchronous_commit` at least `on` whatever the
    /// session's default (set here on the store's own connections through `options`, never
    /// server-wide), since the reader acknowledges entries once it commits. A deferred trigger
    /// records the setting in force at commit time, for events and for quarantined entries.
    #[test]
    fn batches_commit_durably_whatever_the_sessions_synchronous_commit() {
        if !support::postgres_available("postgres_only::batches_commit_durably") {
            return;
        }
        for (default, expected) in [
            ("off", "on"),
            ("local", "on"),
            ("remote_apply", "remote_apply"),
        ] {
            let table = support::unique_name("t");
            let url =
                support::postgres_url_with(None, Some(&format!("-c synchronous_commit={default}")));
            let store = TestStore(
                PostgresStore::builder(url)
                    .table(&table)
                    .pool_size(1)
                    .build()
                    .expect("build a store"),
            );
            setup(&*store);
            let t = store.table();
            let show = || -> String {
                let mut conn = store.pool().get().expect("a connection");
                conn.query_one("SHOW synchronous_commit", &[])
                    .unwrap()
                    .get(0)
            };
            assert_eq!(show(), default, "the session default the test sets");
            store
                .pool()
                .get()
                .unwrap()
                .batch_execute(&format!(
                    "CREATE TABLE {t}_sync (tbl TEXT NOT NULL, setting TEXT NOT NULL);
                     CREATE FUNCTION {t}_record_sync() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                         INSERT INTO {t}_sync VALUES (TG_TABLE_NAME, current_setting('synchronous_commit'));
                         RETURN NULL;
                     END $$;
                     CREATE CONSTRAINT TRIGGER {t}_sync AFTER INSERT ON {t}
                         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {t}_record_sync();
                     CREATE CONSTRAINT TRIGGER {t}_qsync AFTER INSERT ON {t}_quarantine
                         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {t}_record_sync();"
                ))
                .expect("create the recording trigger");
            let events = [received("d-1", &sid(1)), received("d-2", &sid(2))];
            store_batch(&*store, STREAM, &events, &[], t0());
            let (entry, _) = malformed(&sid(3), &[("event_id", b"x")]);
            store_batch(&*store, STREAM, &[], &[entry], t0());
            let ordered = [received("d-3", &sid(4))];
            store
                .store_received(&ReceivedBatch {
                    stream: STREAM,
                    ordered: true,
                    events: &ordered,
                    malformed: &[],
                    received_at: t0(),
                    max_retries: MAX_RETRIES,
                    stored_by: None,
                })
                .expect("store an ordered batch");
            let recorded: Vec<(String, String)> = store
                .pool()
                .get()
                .unwrap()
                .query(
                    &format!("SELECT tbl, setting FROM {t}_sync ORDER BY tbl"),
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            let quarantine = format!("{t}_quarantine");
            assert_eq!(
                recorded,
                [
                    (t.to_string(), expected.to_string()),
                    (t.to_string(), expected.to_string()),
                    (t.to_string(), expected.to_string()),
                    (quarantine, expected.to_string()),
                ],
                "session default {default}"
            );
            assert_eq!(show(), default, "the setting was the transaction's only");
            let _ = store.pool().get().unwrap().batch_execute(&format!(
                "DROP TABLE IF EXISTS {t}_sync; DROP FUNCTION IF EXISTS {t}_record_sync() CASCADE"
            ));
        }
    }

    /// Readers storing overlapping duplicate event ids in different orders never deadlock:
    /// four stores (two processes with two readers each, as far as the database can tell:
    /// separate pools) store, round after round at the same instant, batches in which 30 % of
    /// the event ids are shared and ordered differently by each. Run on a database of its own,
    /// so its deadlock counter counts only this test. Every event is stored exactly once.
    #[test]
    fn readers_storing_overlapping_duplicates_never_deadlock() {
        const READERS: usize = 4;
        const ROUNDS: usize = 20;
        const FRESH: usize = 70;
        const SHARED: usize = 30;
        if !support::postgres_available("postgres_only::readers_storing_overlapping_duplicates") {
            return;
        }
        let database = format!("eventflow_deadlock_{}", std::process::id());
        let mut admin = ::postgres::Client::connect(&support::postgres_url(), ::postgres::NoTls)
            .expect("connect");
        for statement in [
            format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
            format!("CREATE DATABASE {database}"),
        ] {
            admin
                .batch_execute(&statement)
                .expect("create the test's database");
        }
        let url = support::postgres_url_with(Some(&database), None);
        let deadlocks = || -> i64 {
            let mut conn = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
            conn.query_one(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .unwrap()
            .get(0)
        };
        let stores: Vec<PostgresStore> = (0..READERS)
            .map(|_| {
                PostgresStore::builder(url.clone())
                    .table("dup_inbox")
                    .pool_size(1)
                    .build()
                    .unwrap()
            })
            .collect();
        stores[0].migrate().expect("migrate");
        let before = deadlocks();
        let barrier = Barrier::new(READERS);
        let results: Vec<(usize, Vec<String>)> = thread::scope(|scope| {
            let handles: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(reader, store)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut inserted = 0;
                        let mut errors = Vec::new();
                        for round in 0..ROUNDS {
                            let mut shared: Vec<String> =
                                (0..SHARED).map(|n| format!("s-{round}-{n:02}")).collect();
                            // Each reader its own order of the shared ids.
                            match reader % 4 {
                                0 => {}
                                1 => shared.reverse(),
                                2 => shared.rotate_left(SHARED / 2),
                                _ => {
                                    shared.rotate_left(SHARED / 3);
                                    shared.reverse()
                                }
                            }
                            let mut ids: Vec<String> = (0..FRESH)
                                .map(|n| format!("f-{reader}-{round}-{n}"))
                                .collect();
                            // Shared ids spread through the batch.
                            for (n, id) in shared.into_iter().enumerate() {
                                ids.insert((n * 3 + reader) % ids.len(), id);
                            }
                            let events: Vec<ReceivedEvent> = ids
                                .iter()
                                .enumerate()
                                .map(|(n, id)| {
                                    let mut event = received(id, &sid(n));
                                    event.event.aggregate_id = Uuid::from_u128((n % 7) as u128 + 1);
                                    event
                                })
                                .collect();
                            barrier.wait();
                            match store.store_received(&ReceivedBatch {
                                stream: STREAM,
                                ordered: round % 2 == 1,
                                events: &events,
                                malformed: &[],
                                received_at: t0(),
                                max_retries: MAX_RETRIES,
                                stored_by: None,
                            }) {
                                Ok(stored) => inserted += stored.inserted.len(),
                                Err(error) => errors.push(support::error_chain(&error)),
                            }
                        }
                        (inserted, errors)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("reader"))
                .collect()
        });
        let rows: i64 = stores[0]
            .pool()
            .get()
            .unwrap()
            .query_one("SELECT count(*) FROM dup_inbox", &[])
            .unwrap()
            .get(0);
        // Closing the connections makes their backends report their statistics.
        drop(stores);
        thread::sleep(Duration::from_millis(1500));
        let after = deadlocks();
        drop(admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")));
        let errors: Vec<&String> = results.iter().flat_map(|(_, e)| e).collect();
        assert_eq!(errors, Vec::<&String>::new(), "no batch failed");
        assert_eq!(after - before, 0, "the database counted deadlocks");
        let expected = ROUNDS * (READERS * FRESH + SHARED);
        assert_eq!(rows as usize, expected, "every event stored once");
        let inserted: usize = results.iter().map(|(n, _)| n).sum();
        assert_eq!(
            inserted, expected,
            "each reported inserted by one reader only"
        );
    }

    /// With the database's clock (the default), a host whose clock runs an hour ahead or
    /// behind judges by the database's time: rows are stamped with it, a fresh row is not taken
    /// as an orphan by a host an hour ahead, an orphan is found on time by a host an hour
    /// behind, and the failures it records are due by the database's time.
    #[test]
    fn a_skewed_host_clock_neither_steals_fresh_rows_nor_delays_orphans() {
        let test =
            "postgres_only::a_skewed_host_clock_neither_steals_fresh_rows_nor_delays_orphans";
        let Some(probe) = TestStore::<PostgresStore>::fresh(test) else {
            return;
        };
        let store = TestStore(
            PostgresStore::builder(support::postgres_url())
                .table(probe.table())
                .build()
                .expect("a store on the database's clock"),
        );
        setup(&*store);
        let db_now = || -> DateTime<Utc> {
            store
                .pool()
                .get()
                .unwrap()
                .query_one("SELECT now()", &[])
                .unwrap()
                .get(0)
        };
        let hour = secs(3600);
        let ahead = ManualClock::new(db_now() + hour);
        let before = db_now();
        store_events(&*store, &["k-1", "k-2"], ahead.now());
        let k1 = row(&*store, "k-1");
        assert!(
            k1.received_at >= before && k1.received_at <= db_now(),
            "stamped with the database's time, not the host's hour ahead: {}",
            k1.received_at
        );

        // An hour ahead, ten seconds' orphan_after: by the host's clock both rows are an hour
        // old, by the database's they were just stored.
        let ten = std_secs(10);
        let due = Claim::Due {
            limit: 10,
            orphan_after: ten,
            dead_processes: &[],
        };
        let mut ok = marking(&*store, HashMap::new());
        assert!(
            process(&*store, due, &ahead, &mut ok).is_empty(),
            "fresh rows are not stolen as orphans"
        );

        // Ten seconds later by the database (the rows stored 11 s ago), a host an hour behind
        // finds them orphaned.
        let sql = format!(
            "UPDATE {} SET received_at = received_at - interval '11 seconds'",
            store.table()
        );
        store.pool().get().unwrap().execute(&sql, &[]).unwrap();
        let behind = ManualClock::new(db_now() - hour);
        let mut h = marking(
            &*store,
            script(&[(
                "k-1",
                retry_at(1, behind.now() + secs(60), "x", behind.now()),
            )]),
        );
        let settled = process(&*store, due, &behind, &mut h);
        assert_eq!(event_ids(&settled), ["k-1", "k-2"], "orphans found on time");
        let k1 = row(&*store, "k-1");
        let next = k1.next_retry_at.expect("a retry time");
        let now = db_now();
        assert!(
            next > now + secs(30) && next <= now + secs(60),
            "due a minute after the failure by the database's time, not the host's: {next}"
        );
        assert!(
            process(&*store, due, &behind, &mut ok).is_empty(),
            "not due before then"
        );
        assert_eq!(row(&*store, "k-2").status, EventStatus::Processed);
    }

    /// An adopter whose insert meets another group's adoption still in flight waits for it,
    /// then is told that group: the owner is not lost between the conflict and the answer.
    #[test]
    fn an_adopter_that_waits_for_a_racing_adoption_is_told_its_group() {
        let Some(store) = open("postgres_only::an_adopter_that_waits_for_a_racing_adoption") else {
            return;
        };
        let connect = || {
            ::postgres::Client::connect(&support::postgres_url(), ::postgres::NoTls)
                .expect("connect")
        };
        let mut racer = connect();
        let mut racing = racer.transaction().expect("begin");
        racing
            .execute(
                "INSERT INTO eventflow_inbox_owners (inbox_table, consumer_group, adopted_at) \
                 VALUES ($1, 'billing', now())",
                &[&store.table()],
            )
            .expect("the racing adoption");
        thread::scope(|scope| {
            let adopter = scope.spawn(|| store.adopt_owner("shipping", t0()));
            let mut watcher = connect();
            let blocked = support::wait_until(Duration::from_secs(10), || {
                watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                         AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
                        &[&store.table()],
                    )
                    .map(|row| row.get::<_, i64>(0) > 0)
                    .expect("read pg_stat_activity")
            });
            assert!(blocked, "adopt_owner waits for the racing adoption");
            racing.commit().expect("commit the racing adoption");
            let owner = adopter
                .join()
                .expect("adopter")
                .map_err(|e| support::error_chain(&e));
            assert_eq!(owner, Ok("billing".to_string()));
        });
        assert_eq!(store.find_owner().unwrap(), Some("billing".into()));
    }

    /// A handler whose write passes but fails at commit (a deferred constraint) must not hold
    /// up its batch for ever: the batch is split, the others commit, and that row's refusal is
    /// recorded as a failed attempt.
    #[test]
    fn a_batch_refused_at_commit_is_split_and_the_refused_row_failed() {
        let Some(store) =
            open("postgres_only::a_batch_refused_at_commit_is_split_and_the_refused_row_failed")
        else {
            return;
        };
        let store = &*store;
        let t = store.table();
        let mut conn = store.pool().get().unwrap();
        conn.batch_execute(&format!(
            "CREATE TABLE {t}_parent (key TEXT PRIMARY KEY); INSERT INTO {t}_parent VALUES ('ok'); \
             CREATE TABLE {t}_child (key TEXT REFERENCES {t}_parent (key) DEFERRABLE INITIALLY DEFERRED)"
        ))
        .unwrap();
        drop(conn);
        let clock = ManualClock::new(t0() + secs(30));
        let events = store_events(store, &["r-1", "r-bad", "r-2"], t0());
        for optimistic in [true, false] {
            let mut h = handler::<PostgresStore, _>(|tx, row| {
                store.write_marker(tx, &row.event.event_id).unwrap();
                let key = if row.event.event_id == "r-bad" {
                    "missing"
                } else {
                    "ok"
                };
                tx.execute(&format!("INSERT INTO {t}_child VALUES ($1)"), &[&key])
                    .unwrap();
                Verdict::Processed
            });
            let rows = fresh(&events, t0());
            let claim = if optimistic {
                Claim::Fresh(&rows)
            } else {
                due(10)
            };
            let settled = process_with(store, claim, &clock, optimistic, &mut h);
            if optimistic {
                assert_eq!(event_ids(&settled), ["r-1", "r-bad", "r-2"]);
                assert_eq!(h.failed_after.len(), 1, "{:?}", h.failed_after);
                assert_eq!(h.failed_after[0].0, "r-bad");
                assert!(
                    h.failed_after[0].1.contains("23503"),
                    "{}",
                    h.failed_after[0].1
                );
            } else {
                assert_eq!(settled, vec![], "r-bad is failed and not yet due again");
            }
        }
        let mut markers = store.markers();
        markers.sort();
        assert_eq!(
            markers,
            ["r-1", "r-2"],
            "each write once; the refused row's rolled back"
        );
        let bad = row(store, "r-bad");
        assert_eq!((bad.status, bad.retry_count), (EventStatus::Failed, 1));
        assert_eq!(
            store.count_by_status().unwrap(),
            counts(&[(EventStatus::Processed, 2), (EventStatus::Failed, 1)])
        );
        // Its retry, counted before it runs, is refused again: the refusal is recorded over
        // the count, as one more attempt, not two, with the database's reason.
        clock.set(t0() + secs(600));
        let mut h = handler::<PostgresStore, _>(|tx, _row| {
            tx.execute(&format!("INSERT INTO {t}_child VALUES ('missing')"), &[])
                .unwrap();
            Verdict::Processed
        });
        // One row at most: the test handler's refusal is due again at once.
        let settled = process(store, due(1), &clock, &mut h);
        assert_eq!(event_ids(&settled), ["r-bad"]);
        let bad = row(store, "r-bad");
        assert_eq!((bad.status, bad.retry_count), (EventStatus::Failed, 2));
        let error = bad.error_message.unwrap_or_default();
        assert!(error.contains("23503"), "{error}");
        let mut conn = store.pool().get().unwrap();
        let _ = conn.batch_execute(&format!("DROP TABLE {t}_child; DROP TABLE {t}_parent"));
    }

    /// A row holding a value eventflow cannot read is dead-lettered with the reason instead of
    /// failing every claim that reaches it.
    #[test]
    fn an_unreadable_row_is_dead_lettered_not_blocking_the_rest() {
        let Some(store) =
            open("postgres_only::an_unreadable_row_is_dead_lettered_not_blocking_the_rest")
        else {
            return;
        };
        let store = &*store;
        store_events(store, &["u-1", "u-bad", "u-2"], t0());
        let mut conn = store.pool().get().unwrap();
        conn.execute(
            &format!(
                "UPDATE {} SET occurred_on = 'infinity' WHERE event_id = 'u-bad'",
                store.table()
            ),
            &[],
        )
        .unwrap();
        drop(conn);
        let clock = ManualClock::new(t0() + secs(30));
        let mut ok = marking(store, HashMap::new());
        let settled = process(store, due(10), &clock, &mut ok);
        assert_eq!(event_ids(&settled), ["u-1", "u-2"]);
        let statuses: Vec<(String, String, Option<String>)> = store
            .pool()
            .get()
            .unwrap()
            .query(
                &format!(
                    "SELECT event_id, status, error_message FROM {} ORDER BY event_id",
                    store.table()
                ),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(statuses[2].0, "u-bad");
        assert_eq!(statuses[2].1, "dead_letter");
        assert!(
            statuses[2].2.as_deref().unwrap().contains("unreadable row"),
            "{statuses:?}"
        );
    }

    #[test]
    fn migrate_is_safe_from_racing_processes() {
        if !support::postgres_available("postgres_only::migrate_is_safe_from_racing_processes") {
            return;
        }
        for round in 0..3 {
            let table = support::unique_name("t");
            let guard = TestStore(PostgresStore::with_table(&table).unwrap());
            // One pool each, as separate processes would have.
            let racers: Vec<PostgresStore> = (0..4)
                .map(|_| PostgresStore::with_table(&table).unwrap())
                .collect();
            let barrier = Barrier::new(racers.len());
            let results: Vec<Result<(), StoreError>> = thread::scope(|scope| {
                let threads: Vec<_> = racers
                    .iter()
                    .map(|store| {
                        let barrier = &barrier;
                        scope.spawn(move || {
                            barrier.wait();
                            store.migrate()?;
                            store.migrate()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            for (n, result) in results.into_iter().enumerate() {
                result.unwrap_or_else(|e| panic!("round {round}, racer {n}: {e}"));
            }
            let versions = guard.migration_versions();
            assert!(versions.len() >= 2, "{versions:?}");
            assert_eq!(versions, (1..=versions.len() as u32).collect::<Vec<_>>());
            guard.migrate().expect("migrate after the race");
            assert_eq!(guard.migration_versions(), versions);

            guard.create_markers();
            let events = store_events(&racers[3], &["race-1"], t0());
            let clock = ManualClock::new(t0());
            let mut h = marking(&racers[0], HashMap::new());
            let settled = process(&racers[0], due(10), &clock, &mut h);
            assert_eq!(event_ids(&settled), ["race-1"]);
            assert_eq!(row(&*guard, "race-1").id, events[0].row_id);
        }
    }

    #[test]
    fn a_database_made_from_the_reference_schema_keeps_working() {
        let test = "postgres_only::a_database_made_from_the_reference_schema_keeps_working";
        // CREATE EXTENSION IF NOT EXISTS is not safe against a concurrent one, and other tests
        // migrate (under eventflow's lock) while this runs. A database the earlier toolkit made
        // has pgcrypto already; make sure this one has, the way eventflow would.
        let Some(_extension) = open(test) else {
            return;
        };
        let Some(store) = TestStore::<PostgresStore>::fresh(test) else {
            return;
        };
        let t = store.table().to_string();
        let mut conn = store.pool().get().unwrap();
        conn.batch_execute(&REFERENCE_DDL.replace("event_inbox", &t))
            .expect("the reference DDL");
        // As the earlier toolkit stored an event: no causation_id column, defaults for the rest.
        conn.execute(
            &format!(
                "INSERT INTO {t} (event_id, stream_id, event_type, aggregate_id, correlation_id, \
                 occurred_on, payload, status) \
                 VALUES ($1, $2, $3, $4::text::uuid, $5, $6::text::timestamptz, $7::text::jsonb, 'pending')"
            ),
            &[
                &"legacy-1",
                &"1735689600000-0",
                &"OrderCreated",
                &AGGREGATE,
                &"corr-legacy",
                &"2025-01-01T00:00:00Z",
                &r#"{"order_id": "o-123"}"#,
            ],
        )
        .expect("insert as the earlier toolkit did");
        drop(conn);

        setup(&*store);
        let versions = store.migration_versions();
        assert_eq!(versions, (1..=versions.len() as u32).collect::<Vec<_>>());
        let legacy = row(&*store, "legacy-1");
        assert_eq!(
            legacy.event,
            Event::new(
                "OrderCreated",
                Uuid::parse_str(AGGREGATE).unwrap(),
                json!({"order_id": "o-123"})
            )
            .with_event_id("legacy-1")
            .with_occurred_on(at("2025-01-01T00:00:00Z"))
            .with_correlation_id("corr-legacy")
        );
        assert_eq!(legacy.status, EventStatus::Pending);
        assert_eq!(legacy.max_retries, 3);

        // Microseconds, as the column keeps them.
        let clock = ManualClock::new(Utc::now().trunc_subsecs(6));
        let new = store_events(&*store, &["new-1", "new-2"], clock.now() + secs(1));
        assert_eq!(
            row(&*store, "new-1").event.causation_id.as_deref(),
            Some("cause-new-1")
        );
        let mut h = marking(&*store, HashMap::new());
        let settled = process(&*store, due(10), &clock, &mut h);
        assert_eq!(event_ids(&settled), ["legacy-1", "new-1", "new-2"]);
        assert_eq!(settled[0].row.id, legacy.id);
        assert_eq!(settled[1].row.id, new[0].row_id);
        assert_eq!(store.markers(), ["legacy-1", "new-1", "new-2"]);
        let done = row(&*store, "legacy-1");
        assert_eq!(done.status, EventStatus::Processed);
        assert_eq!(done.processed_at, Some(clock.now()));
        assert_eq!(
            store.count_by_status().unwrap(),
            counts(&[(EventStatus::Processed, 3)])
        );
        // The operations columns came with migration 3: the legacy row can be listed,
        // requeued and purged like any other.
        let legacy_filter = RowFilter {
            event_id: Some("legacy-1".into()),
            ..RowFilter::default()
        };
        let record = store
            .list_rows(&legacy_filter, &Page::first(1))
            .unwrap()
            .remove(0);
        assert_eq!((record.replay_count, record.last_replayed_at), (0, None));
        assert_eq!(
            store
                .delete_processed_before(&ProcessedCleanup {
                    before: clock.now() + secs(1),
                    limit: 1,
                    exclusive: true,
                })
                .unwrap(),
            Cleanup::Deleted(1)
        );
        assert_eq!(store.count_by_status().unwrap().total(), 2);
        // The quarantine table came with the migration.
        let (entry, fields) = malformed(&sid(5), &[("data", b"{")]);
        assert_eq!(
            store_batch(&*store, STREAM, &[], std::slice::from_ref(&entry), t0()).quarantined,
            1
        );
        assert_eq!(store.list_quarantined(10, 0).unwrap()[0].fields, fields);
    }

    /// A cleaner that finds another process cleaning the same table gives way; an operator's
    /// purge (not exclusive) does not wait for it.
    #[test]
    fn an_exclusive_cleanup_gives_way_to_another_cleaner_of_the_same_table() {
        let test =
            "postgres_only::an_exclusive_cleanup_gives_way_to_another_cleaner_of_the_same_table";
        let Some(store) = open(test) else {
            return;
        };
        rows_in_every_status(&*store);
        let cleanup = |exclusive: bool| {
            store
                .delete_processed_before(&ProcessedCleanup {
                    before: t0() + secs(3600),
                    limit: 1,
                    exclusive,
                })
                .unwrap()
        };
        let mut other = ::postgres::Client::connect(&support::postgres_url(), ::postgres::NoTls)
            .expect("a second connection");
        let mut cleaning = other.transaction().unwrap();
        // The lock the store takes: ("efcl", hashtext(table)).
        let locked: bool = cleaning
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                &[&0x6566_636c_i32, &store.table()],
            )
            .unwrap()
            .get(0);
        assert!(locked);
        assert_eq!(cleanup(true), Cleanup::Busy);
        assert_eq!(
            store.count_by_status().unwrap().get(EventStatus::Processed),
            4
        );
        assert_eq!(cleanup(false), Cleanup::Deleted(1));
        cleaning.rollback().unwrap();
        assert_eq!(cleanup(true), Cleanup::Deleted(1));
        // Another table's cleaner is not in the way.
        let Some(neighbour) = open(test) else {
            return;
        };
        let mut cleaning = other.transaction().unwrap();
        cleaning
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                &[&0x6566_636c_i32, &neighbour.table()],
            )
            .unwrap();
        assert_eq!(cleanup(true), Cleanup::Deleted(1));
        assert_eq!(
            store.count_by_status().unwrap().get(EventStatus::Processed),
            1
        );
    }

    #[test]
    fn a_handler_that_swallows_a_database_error_fails_only_its_row() {
        let Some(store) =
            open("postgres_only::a_handler_that_swallows_a_database_error_fails_only_its_row")
        else {
            return;
        };
        let store = &*store;
        let clock = ManualClock::new(t0() + secs(30));
        let events = store_events(store, &["a-1", "a-2", "a-3", "a-4", "a-5", "a-6"], t0());
        let ids: Vec<Uuid> = events.iter().map(|e| e.row_id).collect();
        // Covers an aborted row followed by another, by a good one, by one that reports its
        // own failure, and last in the batch.
        let swallowing = ["a-2", "a-3", "a-5", "a-6"];
        let reported = retry_at(4, t0() + secs(90), "reported", t0() + secs(2));
        let mut h = handler::<PostgresStore, _>(|tx, row| {
            let id = row.event.event_id.as_str();
            store.write_marker(tx, id).expect("write a marker");
            if swallowing.contains(&id) {
                let result = tx.execute("SELECT * FROM eventflow_no_such_table", &[]);
                assert!(result.is_err(), "the statement is invalid");
            }
            if id == "a-5" {
                return reported.clone();
            }
            Verdict::Processed
        });
        let settled = process(store, Claim::Rows(&ids), &clock, &mut h);
        assert_eq!(h.calls, ["a-1", "a-2", "a-3", "a-4", "a-5", "a-6"]);
        // a-5's handler said it failed, so its own failure is recorded.
        assert_eq!(settled[4].verdict, reported);
        let a5 = row(store, "a-5");
        assert_eq!((a5.status, a5.retry_count), (EventStatus::Failed, 4));
        assert_eq!(a5.error_message.as_deref(), Some("reported"));
        let swallowing = ["a-2", "a-3", "a-6"];
        assert_eq!(
            h.failed_after
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>(),
            swallowing
        );
        for (s, sent) in settled.iter().zip(&events) {
            let id = sent.event.event_id.as_str();
            let stored = row(store, id);
            if id == "a-5" {
                continue;
            }
            if swallowing.contains(&id) {
                let error = &h.failed_after.iter().find(|(e, _)| e == id).unwrap().1;
                assert!(!error.is_empty());
                let failure = failure_after(&s.row, error.clone());
                assert_eq!(s.verdict, Verdict::Failed(failure.clone()), "{id}");
                assert_eq!(stored.status, EventStatus::Failed, "{id}");
                assert_eq!(stored.retry_count, 1);
                assert_eq!(stored.next_retry_at, failure.next_retry_at);
                assert_eq!(stored.error_message.as_deref(), Some(error.as_str()));
                assert_eq!(stored.last_error_at, Some(failure.failed_at));
                assert_eq!(stored.processed_at, None);
            } else {
                assert_eq!(s.verdict, Verdict::Processed, "{id}");
                assert_eq!(stored.status, EventStatus::Processed, "{id}");
            }
        }
        assert_eq!(
            store.markers(),
            ["a-1", "a-4"],
            "the aborted rows' writes are gone"
        );
    }

    /// In an optimistic batch a handler that swallows a database error aborts the transaction
    /// under the handlers after it too; only its own row may be blamed.
    #[test]
    fn an_optimistic_batch_blames_only_the_handler_that_swallowed_an_error() {
        let Some(store) = open(
            "postgres_only::an_optimistic_batch_blames_only_the_handler_that_swallowed_an_error",
        ) else {
            return;
        };
        let store = &*store;
        let clock = ManualClock::new(t0() + secs(30));
        let events = store_events(store, &["b-1", "b-2", "b-3"], t0());
        let ids: Vec<Uuid> = events.iter().map(|e| e.row_id).collect();
        // b-2 swallows an error; b-1 and b-3 are ordinary handlers that report a failed write
        // as a failure, as `?` in a user's handler does.
        let mut h = handler::<PostgresStore, _>(|tx, row| {
            let id = row.event.event_id.as_str();
            if let Err(error) = store.write_marker(tx, id) {
                return retry_at(row.retry_count + 1, t0() + secs(60), &error, clock.now());
            }
            if id == "b-2" {
                let _ignored = tx.execute("SELECT * FROM eventflow_no_such_table", &[]);
            }
            Verdict::Processed
        });
        let settled = process_with(store, Claim::Rows(&ids), &clock, true, &mut h);
        assert_eq!(event_ids(&settled), ["b-1", "b-2", "b-3"]);
        let recorded: Vec<(&str, EventStatus, Option<String>)> = ["b-1", "b-2", "b-3"]
            .into_iter()
            .map(|id| {
                let stored = row(store, id);
                (id, stored.status, stored.error_message)
            })
            .collect();
        assert_eq!(
            h.failed_after
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>(),
            ["b-2"],
            "recorded: {recorded:#?}"
        );
        assert_eq!(settled[0].verdict, Verdict::Processed, "{recorded:#?}");
        assert_eq!(
            settled[1].verdict,
            Verdict::Failed(failure_after(&settled[1].row, h.failed_after[0].1.clone()))
        );
        assert_eq!(settled[2].verdict, Verdict::Processed, "{recorded:#?}");
        assert_eq!(store.markers(), ["b-1", "b-3"]);
    }

    #[test]
    fn claims_skip_rows_held_by_another_worker() {
        let Some(store) = open("postgres_only::claims_skip_rows_held_by_another_worker") else {
            return;
        };
        let store = &*store;
        let clock = ManualClock::new(t0() + secs(30));
        let events = store_events(store, &["h-1", "h-2"], t0());
        let (held, wait_held) = mpsc::channel();
        let (release, wait_release) = mpsc::channel::<()>();
        let h1 = events[0].row_id;
        thread::scope(|scope| {
            let clock = &clock;
            let holder = scope.spawn(move || {
                let mut h = handler::<PostgresStore, _>(|tx, row| {
                    store.write_marker(tx, &row.event.event_id).unwrap();
                    held.send(()).unwrap();
                    wait_release
                        .recv_timeout(Duration::from_secs(30))
                        .expect("released");
                    Verdict::Processed
                });
                process(store, Claim::Rows(&[h1]), clock, &mut h)
            });
            wait_held
                .recv_timeout(Duration::from_secs(30))
                .expect("the first worker holds h-1");
            let mut h = marking(store, HashMap::new());
            let both = [events[0].row_id, events[1].row_id];
            let settled = process(store, Claim::Rows(&both), clock, &mut h);
            assert_eq!(event_ids(&settled), ["h-2"], "h-1 is held, so skipped");
            assert_eq!(process(store, due(10), clock, &mut h), vec![]);
            release.send(()).unwrap();
            let settled = holder.join().expect("holder");
            assert_eq!(event_ids(&settled), ["h-1"]);
        });
        let mut markers = store.markers();
        markers.sort();
        assert_eq!(markers, ["h-1", "h-2"], "each row handled once");
        assert_eq!(
            store.count_by_status().unwrap(),
            counts(&[(EventStatus::Processed, 2)])
        );
    }
}

/// Within an aggregate, rows keep the order of the stream even when their event ids sort the
/// other way (PostgreSQL inserts a batch sorted by event id, so readers never deadlock).
fn an_aggregate_keeps_stream_order_whatever_its_event_ids<B: Backend>(store: &B) {
    let ids = ["z-1", "y-2", "x-3", "w-4"];
    let events: Vec<ReceivedEvent> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| received(id, &sid(n)))
        .collect();
    store
        .store_received(&ReceivedBatch {
            stream: STREAM,
            ordered: true,
            events: &events,
            malformed: &[],
            received_at: t0(),
            max_retries: MAX_RETRIES,
            stored_by: None,
        })
        .expect("store an ordered batch");
    let clock = ManualClock::new(t0() + secs(60));
    let mut ok = marking(store, HashMap::new());
    for expected in ids {
        let settled = process(store, heads(10, AfterDeadLetter::Park), &clock, &mut ok);
        assert_eq!(
            event_ids(&settled),
            [expected],
            "one head at a time, in stream order"
        );
    }
    assert_eq!(store.markers(), ids);
}

/// A batch that carries events twice (a relay that crashed after publishing sends them again,
/// so a reader may read both copies at once) stores each event's first copy in the stream, so
/// the event keeps its place in its aggregate's order.
fn a_batch_carrying_an_event_twice_stores_its_first_copy<B: Backend>(store: &B) {
    let aggregate = Uuid::from_u128(42);
    let first: Vec<ReceivedEvent> = (0..40)
        .map(|n| {
            let mut event = received(&format!("twice-{n:02}"), &sid(n));
            event.event.aggregate_id = aggregate;
            event
        })
        .collect();
    let again: Vec<ReceivedEvent> = first
        .iter()
        .enumerate()
        .map(|(n, e)| {
            let mut copy = received(&e.event.event_id, &sid(100 + n));
            copy.event.aggregate_id = aggregate;
            copy
        })
        .collect();
    let batch: Vec<ReceivedEvent> = first.into_iter().chain(again).collect();
    let stored = store
        .store_received(&ReceivedBatch {
            stream: STREAM,
            ordered: true,
            events: &batch,
            malformed: &[],
            received_at: t0(),
            max_retries: MAX_RETRIES,
            stored_by: None,
        })
        .expect("store a batch with every event twice");
    assert_eq!((stored.inserted.len(), stored.duplicates), (40, 40));
    for n in 0..40 {
        let row = row(store, &format!("twice-{n:02}"));
        assert_eq!(
            row.stream_id,
            sid(n),
            "the first copy of twice-{n:02} is stored"
        );
    }
    let clock = ManualClock::new(t0() + secs(60));
    let mut ok = marking(store, HashMap::new());
    for n in 0..40 {
        let settled = process(store, heads(10, AfterDeadLetter::Park), &clock, &mut ok);
        let expected = format!("twice-{n:02}");
        assert_eq!(event_ids(&settled), [expected.as_str()], "in stream order");
    }
}

/// Quarantine retention deletes entries quarantined before the cutoff, replayed or not, oldest
/// first and at most the limit per call, leaves younger ones, and the newest stream id of the
/// deleted entries is still known afterwards.
fn quarantine_retention_deletes_old_entries_and_keeps_the_newest_id<B: Backend>(store: &B) {
    let old: Vec<MalformedEntry> = (1..=3)
        .map(|n| malformed(&format!("1735689600000-{n}"), &[("data", b"{")]).0)
        .collect();
    store_batch(store, STREAM, &[], &old, t0());
    let (young, _) = malformed("1735689600000-9", &[("event_id", b"x")]);
    let young_id = young.id;
    store_batch(store, "other", &[], &[young], t0() + secs(7200));
    // A replayed entry goes too: it was kept for the operator, and the event is in the inbox.
    let fixed = raw_entry_fields(&event("q-fixed"));
    quarantine::replay(store, old[0].id, Some(fixed), 3, t0()).unwrap();

    let purge = |limit| match store
        .delete_quarantined_before(&QuarantineCleanup {
            before: t0() + secs(3600),
            limit,
            exclusive: true,
        })
        .expect("delete_quarantined_before")
    {
        Cleanup::Deleted(deleted) => deleted,
        Cleanup::Busy => panic!("nobody else is cleaning"),
    };
    assert_eq!(purge(2), 2, "at most the limit");
    assert_eq!(purge(10), 1);
    assert_eq!(purge(10), 0);
    let left: Vec<Uuid> = store
        .list_quarantined(10, 0)
        .unwrap()
        .iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(left, [young_id], "the younger entry stays");
    assert_eq!(
        store.newest_stream_id(STREAM).unwrap().as_deref(),
        Some("1735689600000-3"),
        "the newest id of the deleted entries is kept"
    );
}

/// The newest stream id stored per stream compares ids as two numbers (`-10` is after `-9`),
/// counts quarantined entries, ignores other streams and ids of another form, and survives
/// retention deleting the rows that held it.
fn newest_stream_id_is_kept_through_retention<B: Backend>(store: &B) {
    assert_eq!(store.newest_stream_id(STREAM).unwrap(), None);
    let batch = |ids: &[(&str, &str)]| -> Vec<ReceivedEvent> {
        ids.iter()
            .map(|(event_id, stream_id)| received(event_id, stream_id))
            .collect()
    };
    store_batch(
        store,
        STREAM,
        &batch(&[
            ("n-1", "1735689600000-9"),
            ("n-2", "1735689600000-10"),
            ("n-3", "999-99"),
        ]),
        &[],
        t0(),
    );
    store_batch(
        store,
        "other",
        &batch(&[("o-1", "1735689699999-0")]),
        &[],
        t0(),
    );
    assert_eq!(
        store.newest_stream_id(STREAM).unwrap().as_deref(),
        Some("1735689600000-10")
    );
    assert_eq!(
        store.newest_stream_id("other").unwrap().as_deref(),
        Some("1735689699999-0")
    );
    assert_eq!(store.newest_stream_id("none").unwrap(), None);

    // A quarantined entry was stored, and acknowledged, too.
    let (entry, _) = malformed("1735689600001-0", &[("event_id", b"x")]);
    store_batch(store, STREAM, &[], &[entry], t0());
    assert_eq!(
        store.newest_stream_id(STREAM).unwrap().as_deref(),
        Some("1735689600001-0")
    );
    // Ids of another form (written by other tools) are not ids Redis could start after.
    store_batch(store, STREAM, &batch(&[("n-odd", "not-an-id")]), &[], t0());
    assert_eq!(
        store.newest_stream_id(STREAM).unwrap().as_deref(),
        Some("1735689600001-0")
    );

    store_batch(
        store,
        STREAM,
        &batch(&[("n-4", "1735689600002-3")]),
        &[],
        t0(),
    );
    let clock = ManualClock::new(t0() + secs(30));
    let mut ok = marking(store, HashMap::new());
    assert_eq!(process(store, due(100), &clock, &mut ok).len(), 6);
    let purge = || {
        store
            .delete_processed_before(&ProcessedCleanup {
                before: t0() + secs(3600),
                limit: 2,
                exclusive: false,
            })
            .expect("delete_processed_before")
    };
    // Deleted two at a time, oldest first; the newest id is kept whichever batch held it.
    while purge() != Cleanup::Deleted(0) {}
    assert_eq!(
        store.count_by_status().unwrap(),
        counts(&[]),
        "every row purged"
    );
    assert_eq!(
        store.newest_stream_id(STREAM).unwrap().as_deref(),
        Some("1735689600002-3")
    );
    assert_eq!(
        store.newest_stream_id("other").unwrap().as_deref(),
        Some("1735689699999-0")
    );

    // Newer rows after the purge count again; an older one does not move the mark back.
    store_batch(
        store,
        STREAM,
        &batch(&[("n-5", "1735689600002-20"), ("n-6", "5-5")]),
        &[],
        t0(),
    );
    assert_eq!(
        store.newest_stream_id(STREAM).unwrap().as_deref(),
        Some("1735689600002-20")
    );
    assert_eq!(process(store, due(100), &clock, &mut ok).len(), 2);
    while purge() != Cleanup::Deleted(0) {}
    assert_eq!(
        store.newest_stream_id(STREAM).unwrap().as_deref(),
        Some("1735689600002-20")
    );
}

/// A retry scheduled far beyond year 9999 (a policy returning huge delays, a clock far ahead)
/// is not due now nor at any time before it; SQLite keeps it as its latest storable time.
fn far_future_retries_are_never_due_early<B: Backend>(store: &B) {
    let clock = ManualClock::new(t0() + secs(60));
    store_events(store, &["far-1", "near-1"], t0());
    let far = chrono::NaiveDate::from_ymd_opt(12_000, 1, 1)
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .unwrap()
        .and_utc();
    let mut h = marking(
        store,
        script(&[
            ("far-1", retry_at(1, far, "much later", clock.now())),
            (
                "near-1",
                retry_at(1, clock.now() + secs(60), "soon", clock.now()),
            ),
        ]),
    );
    assert_eq!(
        event_ids(&process(store, due(10), &clock, &mut h)),
        ["far-1", "near-1"]
    );
    let next = row(store, "far-1").next_retry_at.expect("a retry time");
    assert!(next >= at("9999-12-31T23:59:59.999999Z"), "{next}");
    let mut ok = marking(store, HashMap::new());
    assert_eq!(process(store, due(10), &clock, &mut ok), vec![]);
    clock.advance(std_secs(60));
    assert_eq!(
        event_ids(&process(store, due(10), &clock, &mut ok)),
        ["near-1"]
    );
    // Nine thousand years on, the far retry is still not due.
    clock.set(at("9999-12-31T23:59:59Z"));
    assert_eq!(process(store, due(10), &clock, &mut ok), vec![]);
    assert_eq!(
        store.markers(),
        ["near-1"],
        "failed attempts roll back their writes"
    );
}

/// A payload that is not a JSON object is kept as it arrived, both when read back and when the
/// handler sees the row (the reference contract; the earlier toolkit replaced it with `{}`).
fn non_object_payloads_are_kept_as_they_are<B: Backend>(store: &B) {
    let payloads = [
        json!([1, "two", {"three": 3}]),
        json!("plain text"),
        json!(42),
        json!(4.5),
        json!(true),
        json!(null),
        json!({}),
    ];
    let events: Vec<ReceivedEvent> = payloads
        .iter()
        .enumerate()
        .map(|(n, payload)| {
            let mut received = received(&format!("p-{n}"), &sid(n));
            received.event.payload = payload.clone();
            received
        })
        .collect();
    let stored = store_batch(store, STREAM, &events, &[], t0());
    assert_eq!(stored.inserted.len(), payloads.len());
    for (n, payload) in payloads.iter().enumerate() {
        assert_eq!(
            &row(store, &format!("p-{n}")).event.payload,
            payload,
            "p-{n}"
        );
    }
    let mut seen = BTreeMap::new();
    let mut h = handler::<B, _>(|_tx, row| {
        seen.insert(row.event.event_id.clone(), row.event.payload.clone());
        Verdict::Processed
    });
    let clock = ManualClock::new(t0() + secs(30));
    let settled = process(store, due(100), &clock, &mut h);
    assert_eq!(settled.len(), payloads.len());
    drop(h);
    for (n, payload) in payloads.iter().enumerate() {
        assert_eq!(seen.get(&format!("p-{n}")), Some(payload), "p-{n}");
    }
}

/// Instantiates every check for one backend, as `<backend>::<check>`.
macro_rules! backend_suite {
    (
        $backend:ident, $store:ty,
        fresh: [$($fresh:ident),* $(,)?],
        migrated: [$($check:ident),* $(,)?] $(,)?
    ) => {
        mod $backend {
            $(
                #[test]
                fn $fresh() {
                    super::run::<$store>(
                        concat!(stringify!($backend), "::", stringify!($fresh)),
                        false,
                        super::$fresh,
                    );
                }
            )*
            $(
                #[test]
                fn $check() {
                    super::run::<$store>(
                        concat!(stringify!($backend), "::", stringify!($check)),
                        true,
                        super::$check,
                    );
                }
            )*
        }
    };
}

/// Runs every check on SQLite and on PostgreSQL. `fresh` checks get a store never migrated.
macro_rules! conformance {
    ($($lists:tt)*) => {
        backend_suite!(sqlite, eventflow::SqliteStore, $($lists)*);
        backend_suite!(postgres, eventflow::PostgresStore, $($lists)*);
    };
}

conformance!(
    fresh: [
        migrate_is_idempotent,
        pending_migrations_show_what_migrate_applies,
        invalid_table_names_are_rejected,
        the_longest_table_name_works,
        racing_groups_agree_on_one_owner,
    ],
    migrated: [
        store_received_inserts_new_and_skips_duplicates,
        malformed_entries_are_quarantined_once,
        processed_rows_commit_with_their_handler_writes,
        failed_verdicts_roll_back_only_their_row,
        optimistic_batches_keep_each_write_once,
        due_claims_follow_the_clock_order_and_limit,
        claims_are_exclusive_under_concurrency,
        optimistic_claims_are_exclusive_under_concurrency,
        fresh_claims_commit_processed_rows_and_failures,
        due_claims_leave_young_pending_rows_alone,
        attempts_that_never_finish_are_counted,
        counted_attempts_that_end_are_recorded_once,
        attempts_that_never_finished_run_alone,
        a_suspect_not_admitted_is_neither_counted_nor_run,
        rows_left_processing_are_taken_over,
        a_dead_processs_rows_are_orphans_at_once_and_a_live_ones_are_not,
        fresh_and_due_claims_are_exclusive_under_concurrency,
        counts_and_lookups,
        replaying_a_quarantined_entry_happens_once,
        quarantine_keeps_nul_characters,
        parsed_events_with_nul_characters_are_stored,
        rows_are_listed_by_filter_in_stable_pages,
        dead_letters_are_requeued_once_and_recorded,
        oldest_received_tells_the_lag,
        quarantine_is_listed_by_filter_in_stable_pages,
        only_old_processed_rows_are_deleted_in_batches,
        the_first_group_to_adopt_a_table_owns_it,
        rows_record_their_stream,
        heads_are_the_earliest_open_row_of_each_aggregate,
        heads_are_claimed_among_given_aggregates,
        dead_letters_park_their_aggregate_until_skipped_or_requeued,
        heads_claims_keep_each_aggregate_in_order_under_concurrency,
        ordered_batches_stored_concurrently_all_commit_in_order,
        rows_are_counted_and_filtered_by_stream,
        parked_aggregates_are_listed_and_released_by_skipping,
        non_object_payloads_are_kept_as_they_are,
        far_future_retries_are_never_due_early,
        newest_stream_id_is_kept_through_retention,
        quarantine_retention_deletes_old_entries_and_keeps_the_newest_id,
        an_aggregate_keeps_stream_order_whatever_its_event_ids,
        a_batch_carrying_an_event_twice_stores_its_first_copy,
    ],
);

/// On SQLite too, a row eventflow cannot read is dead-lettered instead of blocking the claims.
#[test]
fn sqlite_unreadable_row_is_dead_lettered_not_blocking_the_rest() {
    let store = SqliteStore::open_in_memory().unwrap();
    setup(&store);
    store_events(&store, &["u-1", "u-bad", "u-2"], t0());
    store.with_connection(|conn| {
        conn.execute(
            "UPDATE event_inbox SET occurred_on = 'not a time' WHERE event_id = 'u-bad'",
            [],
        )
        .unwrap()
    });
    let clock = ManualClock::new(t0() + secs(30));
    let mut ok = marking(&store, HashMap::new());
    let settled = process(&store, due(10), &clock, &mut ok);
    assert_eq!(event_ids(&settled), ["u-1", "u-2"]);
    let (status, message): (String, String) = store.with_connection(|conn| {
        conn.query_row(
            "SELECT status, error_message FROM event_inbox WHERE event_id = 'u-bad'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    });
    assert_eq!(status, "dead_letter");
    assert!(message.contains("unreadable row"), "{message}");
}
