//! Migrating a live PostgreSQL table: concurrent index builds outside a transaction, applied
//! once however many processes race; an index an interrupted build left invalid is rebuilt;
//! DDL that waits behind a long transaction gives up after the lock timeout and retries, so
//! writers are not queued behind it; `Migrations::Verify` refuses to start on an old schema.

mod support;

use eventflow::store::{InboxStore, Migration, PostgresStore, StoreError};
use eventflow::transport::MemoryStream;
use eventflow::{HandlerResult, InboxConsumer, Migrations};
use postgres::{Client, NoTls};
use std::io::Write;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;
use support::{postgres_available, postgres_url, unique_name, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn connect() -> Client {
    Client::connect(&postgres_url(), NoTls).expect("connect")
}

/// A table of the test's own, dropped (with what eventflow recorded for it) at the end.
struct Table(String);

impl Table {
    fn new(prefix: &str) -> Self {
        Self(unique_name(prefix))
    }

    fn store(&self) -> PostgresStore {
        self.store_with(Duration::from_secs(2))
    }

    fn store_with(&self, lock_timeout: Duration) -> PostgresStore {
        PostgresStore::builder(postgres_url())
            .table(&self.0)
            .pool_size(2)
            .migration_lock_timeout(lock_timeout)
            .build()
            .expect("store")
    }

    /// The table as the earlier toolkit created it (the reference schema), with `rows` rows,
    /// and no eventflow migration applied.
    fn create_reference(&self, client: &mut Client, rows: i32) {
        let reference = Migration {
            version: 1,
            name: "0001_event_inbox.sql",
            sql: include_str!("../sql/postgres/inbox/0001_event_inbox.sql"),
        };
        client
            .batch_execute(&reference.render(&self.0))
            .expect("reference table");
        client
            .batch_execute(&format!(
                "INSERT INTO {t} (event_id, stream_id, event_type, aggregate_id, occurred_on, \
                 payload) SELECT 'r-' || i, i || '-0', 'Seeded', gen_random_uuid(), now(), '{{}}' \
                 FROM generate_series(1, {rows}) AS i",
                t = self.0
            ))
            .expect("seed rows");
    }

    fn index_state(&self, client: &mut Client, index: &str) -> Option<(bool, String)> {
        client
            .query_opt(
                "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index \
                 WHERE indexrelid = to_regclass($1)",
                &[&index],
            )
            .expect("read pg_index")
            .map(|row| (row.get(0), row.get(1)))
    }

    /// The versions recorded for the table's inbox migrations.
    fn recorded(&self, client: &mut Client) -> Vec<i32> {
        self.recorded_for(client, "inbox")
    }

    /// The versions recorded for the table's migrations for ordered consumers.
    fn recorded_ordered(&self, client: &mut Client) -> Vec<i32> {
        self.recorded_for(client, "inbox-ordered")
    }

    fn recorded_for(&self, client: &mut Client, kind: &str) -> Vec<i32> {
        client
            .query(
                "SELECT version FROM eventflow_migrations WHERE target = $1 ORDER BY version",
                &[&format!("{kind}:{}", self.0)],
            )
            .map(|rows| rows.iter().map(|row| row.get(0)).collect())
            .unwrap_or_default()
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Ok(mut client) = Client::connect(&postgres_url(), NoTls) {
            support::drop_inbox_table(&mut client, &self.0, &[]);
        }
    }
}

/// Runs `migrate` on every store at the same moment, one thread each; every run must succeed.
fn race(stores: &[PostgresStore], migrate: fn(&PostgresStore) -> Result<(), StoreError>) {
    let start = Barrier::new(stores.len());
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
        let runs: Vec<_> = stores
            .iter()
            .map(|store| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    migrate(store)
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("migrator"))
            .collect()
    });
    for result in &results {
        assert!(result.is_ok(), "{results:?}");
    }
}

/// Two processes' stores migrating one reference table at the same moment: both succeed (a
/// second run of a non-transactional file would fail recording its version twice), every
/// version is recorded once, and every index is built and valid.
#[test]
fn racing_migrators_apply_each_file_once() {
    if !postgres_available("racing_migrators_apply_each_file_once") {
        return;
    }
    let table = Table::new("mig_race");
    let mut client = connect();
    table.create_reference(&mut client, 1_000);
    let stores = [table.store(), table.store()];
    race(&stores, PostgresStore::migrate);
    let versions = table.recorded(&mut client);
    assert_eq!(versions, (1..=versions.len() as i32).collect::<Vec<_>>());
    assert!(versions.len() >= 4, "{versions:?}");
    for suffix in ["open", "dead_letter", "processed"] {
        let index = format!("ix_{}_{suffix}", table.0);
        let (valid, _) = table.index_state(&mut client, &index).expect("index built");
        assert!(valid, "{index} valid");
    }
    let ordered_index = format!("ix_{}_aggregate_order", table.0);
    assert_eq!(
        table.index_state(&mut client, &ordered_index),
        None,
        "only ordered consumers need the aggregate index"
    );
    assert_eq!(stores[0].pending_migrations().unwrap(), vec![]);
    assert_eq!(stores[0].pending_ordered_migrations().unwrap().len(), 1);

    // The ordered migrations race the same way, and are recorded apart.
    race(&stores, PostgresStore::migrate_ordered);
    assert_eq!(table.recorded_ordered(&mut client), vec![1]);
    assert_eq!(
        table.recorded(&mut client),
        versions,
        "the inbox's own untouched"
    );
    let (valid, _) = table
        .index_state(&mut client, &ordered_index)
        .expect("ordered index built");
    assert!(valid, "{ordered_index} valid");
    assert_eq!(stores[1].pending_ordered_migrations().unwrap(), vec![]);
    assert_eq!(stores[0].count_by_status().unwrap().total(), 1_000);
}

/// A consumer applies the ordered migrations only when it is ordered; with
/// `Migrations::Verify` an ordered consumer refuses a table that lacks them, and says the
/// command that applies them; a table that got the aggregate index from an older
/// `0004_services.sql` just has the file recorded.
#[test]
fn only_ordered_consumers_apply_the_ordered_migrations() {
    if !postgres_available("only_ordered_consumers_apply_the_ordered_migrations") {
        return;
    }
    let table = Table::new("mig_ordered");
    let mut client = connect();
    table.create_reference(&mut client, 10);
    let consumer = |ordered: bool, migrations: Migrations| {
        InboxConsumer::builder()
            .transport(MemoryStream::new())
            .store(Arc::new(table.store()))
            .stream("orders")
            .group(&table.0)
            .readers(1)
            .workers(1)
            .ordered(ordered)
            .migrations(migrations)
            .handler(|_tx, _row| -> HandlerResult { Ok(()) })
            .build()
            .expect("build")
    };
    let index = format!("ix_{}_aggregate_order", table.0);

    let unordered = consumer(false, Migrations::Apply).start().expect("starts");
    unordered
        .shutdown(Duration::from_secs(10))
        .expect("shutdown");
    assert_eq!(table.index_state(&mut client, &index), None);
    assert_eq!(table.recorded_ordered(&mut client), Vec::<i32>::new());

    let error = consumer(true, Migrations::Verify)
        .start()
        .expect_err("no ordered migrations yet");
    match &error {
        eventflow::Error::Store(StoreError::NotMigrated {
            missing, command, ..
        }) => {
            assert_eq!(
                missing,
                &["inbox_ordered/0001_aggregate_order_index.sql".to_string()]
            );
            assert_eq!(
                command,
                &format!("eventflow migrate --table {} --ordered", table.0)
            );
        }
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    // Verifying an unordered consumer asks nothing of the sort.
    let unordered = consumer(false, Migrations::Verify).start().expect("starts");
    unordered
        .shutdown(Duration::from_secs(10))
        .expect("shutdown");

    let ordered = consumer(true, Migrations::Apply).start().expect("starts");
    ordered.shutdown(Duration::from_secs(10)).expect("shutdown");
    let (valid, definition) = table.index_state(&mut client, &index).expect("built");
    assert!(valid && definition.contains("WHERE"), "{definition}");
    assert_eq!(table.recorded_ordered(&mut client), vec![1]);
    let ordered = consumer(true, Migrations::Verify).start().expect("starts");
    ordered.shutdown(Duration::from_secs(10)).expect("shutdown");

    // A table migrated when 0004 still made the index: the file finds it there.
    let older = Table::new("mig_ordered_old");
    older.create_reference(&mut client, 10);
    older.store().migrate().expect("migrate");
    let older_index = format!("ix_{}_aggregate_order", older.0);
    client
        .batch_execute(&format!(
            "CREATE INDEX {older_index} ON {t}(aggregate_id, (coalesce(seq, 0)), received_at, id) \
             WHERE status <> 'processed'",
            t = older.0
        ))
        .expect("the index as 0004 made it");
    let before = older.index_state(&mut client, &older_index);
    older.store().migrate_ordered().expect("migrate ordered");
    assert_eq!(older.index_state(&mut client, &older_index), before);
    assert_eq!(older.recorded_ordered(&mut client), vec![1]);
}

/// A concurrent build that failed half-way leaves an INVALID index under the name the
/// migration uses; `IF NOT EXISTS` alone would keep it for ever. The next migration drops it and
/// builds it again, with the migration's definition.
#[test]
fn an_invalid_index_left_by_an_interrupted_build_is_rebuilt() {
    if !postgres_available("an_invalid_index_left_by_an_interrupted_build_is_rebuilt") {
        return;
    }
    let table = Table::new("mig_invalid");
    let mut client = connect();
    table.create_reference(&mut client, 10);
    let index = format!("ix_{}_open", table.0);
    // A build whose expression fails on the first row: PostgreSQL keeps the index, invalid.
    let failed = client.batch_execute(&format!(
        "CREATE INDEX CONCURRENTLY {index} ON {t} ((1 / (retry_count - retry_count)))",
        t = table.0
    ));
    assert!(failed.is_err(), "the build fails");
    let (valid, _) = table.index_state(&mut client, &index).expect("left behind");
    assert!(
        !valid,
        "an interrupted concurrent build leaves an invalid index"
    );

    table.store().migrate().expect("migrate");

    let (valid, definition) = table.index_state(&mut client, &index).expect("rebuilt");
    assert!(valid, "rebuilt valid: {definition}");
    assert!(
        definition.contains("received_at") && definition.contains("pending"),
        "with the migration's definition: {definition}"
    );
}

/// Log lines, captured from `tracing`.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An `ALTER TABLE` waiting behind a long transaction queues every writer of the table behind
/// it. With a lock timeout it gives up, logs, pauses and retries: a writer's insert goes through
/// while the long transaction still holds the table, and the migration completes once the long
/// transaction ends.
#[test]
fn ddl_behind_a_long_transaction_retries_and_lets_writers_through() {
    if !postgres_available("ddl_behind_a_long_transaction_retries_and_lets_writers_through") {
        return;
    }
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());

    let table = Table::new("mig_lock");
    let mut client = connect();
    table.create_reference(&mut client, 100);
    let store = table.store_with(Duration::from_millis(300));

    // A long reader: its ACCESS SHARE lock lets writers in but keeps ALTER TABLE out.
    let mut holder = connect();
    let mut long = holder.transaction().expect("begin");
    long.query(&format!("SELECT count(*) FROM {}", table.0), &[])
        .expect("read");

    std::thread::scope(|scope| {
        let migrating =
            scope.spawn(|| tracing::dispatcher::with_default(&dispatch, || store.migrate()));
        let retried = wait_until(WAIT, || {
            logs.count("timed out waiting for a table lock") >= 2
        });
        assert!(retried, "the migration retried after its lock timeout");

        // A writer with no timeout of its own: queued behind a waiting ALTER TABLE it would
        // wait for the long transaction. The statement timeout only turns such a hang into a
        // failure.
        let mut writer = connect();
        writer
            .batch_execute("SET statement_timeout = '30s'")
            .expect("set");
        let inserted = writer.execute(
            &format!(
                "INSERT INTO {} (event_id, stream_id, event_type, aggregate_id, occurred_on, \
                 payload) VALUES ('w-1', '1-0', 'Written', gen_random_uuid(), now(), '{{}}')",
                table.0
            ),
            &[],
        );
        assert_eq!(
            inserted.map_err(|e| e.to_string()),
            Ok(1),
            "the insert went through while the migration waited"
        );
        assert!(
            !migrating.is_finished(),
            "the migration cannot finish while the long transaction holds the table"
        );
        long.commit().expect("end the long transaction");
        let migrated = migrating.join().expect("migrator");
        assert!(migrated.is_ok(), "{migrated:?}");
    });
    assert_eq!(store.pending_migrations().unwrap(), vec![]);
    assert_eq!(store.count_by_status().unwrap().total(), 101);
}

/// `Migrations::Verify`: `start()` on a table lacking migrations fails naming them and the
/// command to run, and changes nothing; once migrated, it starts.
#[test]
fn verify_refuses_an_unmigrated_table_and_starts_once_migrated() {
    if !postgres_available("verify_refuses_an_unmigrated_table_and_starts_once_migrated") {
        return;
    }
    let table = Table::new("mig_verify");
    let mut client = connect();
    table.create_reference(&mut client, 10);
    let consumer = || {
        InboxConsumer::builder()
            .transport(MemoryStream::new())
            .store(Arc::new(table.store()))
            .stream("orders")
            .group(&table.0)
            .readers(1)
            .workers(1)
            .migrations(Migrations::Verify)
            .handler(|_tx, _row| -> HandlerResult { Ok(()) })
            .build()
            .expect("build")
    };
    let error = consumer().start().expect_err("an unmigrated table");
    match &error {
        eventflow::Error::Store(StoreError::NotMigrated {
            table: named,
            missing,
            command,
        }) => {
            assert_eq!(named, &table.0);
            assert_eq!(missing[0], "0001_event_inbox.sql");
            assert!(
                missing.contains(&"0004_services.sql".to_string()),
                "{missing:?}"
            );
            assert_eq!(command, &format!("eventflow migrate --table {}", table.0));
        }
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("eventflow migrate"), "{message}");
    assert_eq!(
        table.recorded(&mut client),
        Vec::<i32>::new(),
        "nothing applied"
    );

    table.store().migrate().expect("migrate");
    let handle = consumer().start().expect("starts once migrated");
    handle.shutdown(Duration::from_secs(10)).expect("shutdown");
}

/// The unique indexes of the table on `event_id` alone, by name.
fn event_id_unique_indexes(client: &mut Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT i.indexrelid::regclass::text FROM pg_index AS i \
             JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnatts = 1 \
             AND a.attname = 'event_id' ORDER BY 1",
            &[&table],
        )
        .expect("read pg_index")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Migration 6 drops the reference schema's second unique index on `event_id`, keeping the
/// column's constraint, which still refuses a duplicate and serves the inbox's duplicate
/// check; on a table whose only unique index on `event_id` is that one, it keeps it.
#[test]
fn the_redundant_unique_index_on_event_id_goes_only_where_the_constraint_stays() {
    if !postgres_available("the_redundant_unique_index_on_event_id_goes") {
        return;
    }
    let mut client = connect();
    let both = Table::new("mig_uq");
    both.create_reference(&mut client, 10);
    let t = &both.0;
    assert_eq!(
        event_id_unique_indexes(&mut client, t),
        [format!("{t}_event_id_key"), format!("uq_{t}_event_id")],
        "the reference schema declares both"
    );
    both.store().migrate().expect("migrate");
    assert_eq!(
        event_id_unique_indexes(&mut client, t),
        [format!("{t}_event_id_key")],
        "the constraint's index is left"
    );
    let duplicate = client.execute(
        &format!(
            "INSERT INTO {t} (event_id, stream_id, event_type, aggregate_id, occurred_on, payload) \
             VALUES ('r-1', '1-1', 'Seeded', gen_random_uuid(), now(), '{{}}')"
        ),
        &[],
    );
    let error = duplicate.expect_err("a duplicate event id");
    assert_eq!(
        error.code(),
        Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
        "{error}"
    );
    assert_eq!(both.recorded(&mut client), (1..=9).collect::<Vec<i32>>());

    // A table made by other DDL, unique on event_id only through the index: it stays.
    let index_only = Table::new("mig_uq_only");
    index_only.create_reference(&mut client, 1);
    let t = &index_only.0;
    client
        .batch_execute(&format!("ALTER TABLE {t} DROP CONSTRAINT {t}_event_id_key"))
        .expect("drop the constraint");
    index_only.store().migrate().expect("migrate");
    assert_eq!(
        event_id_unique_indexes(&mut client, t),
        [format!("uq_{t}_event_id")],
        "the only unique index is kept"
    );
    assert_eq!(
        index_only.recorded(&mut client),
        (1..=9).collect::<Vec<i32>>()
    );
}

/// The plan PostgreSQL makes for `sql`, one line per node.
fn plan(client: &mut Client, sql: &str) -> String {
    client
        .query(&format!("EXPLAIN {sql}"), &[])
        .expect("explain")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Migration 9 replaces the reference `(status, next_retry_at)` index and `ix_<t>_due` with
/// one index of open rows, so that a stored event adds 5 index entries and its move to
/// processed 4, not 6 and 5. Nothing is left without an index: each status has a partial index
/// that serves a query for it, and the reference toolkit's claim of due rows reads the open
/// rows oldest first with no sort, on a table whose rows are mostly processed.
#[test]
fn the_open_rows_index_replaces_the_status_index_and_every_status_keeps_an_index() {
    if !postgres_available(
        "the_open_rows_index_replaces_the_status_index_and_every_status_keeps_an_index",
    ) {
        return;
    }
    let table = Table::new("mig_open");
    let mut client = connect();
    table.create_reference(&mut client, 20_000);
    let t = &table.0;
    client
        .batch_execute(&format!(
            "UPDATE {t} SET status = CASE WHEN i % 100 = 1 THEN 'pending' \
             WHEN i % 100 = 2 THEN 'failed' WHEN i % 100 = 3 THEN 'processing' \
             WHEN i % 100 = 4 THEN 'dead_letter' ELSE 'processed' END, \
             processed_at = now() FROM (SELECT id, row_number() OVER (ORDER BY event_id) AS i \
             FROM {t}) AS n WHERE n.id = {t}.id"
        ))
        .expect("rows of every status");
    table.store().migrate().expect("migrate");
    client.batch_execute(&format!("ANALYZE {t}")).unwrap();

    let indexes: Vec<String> = client
        .query(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = to_regclass($1) \
             ORDER BY 1",
            &[&t],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for gone in [format!("ix_{t}_status_next_retry"), format!("ix_{t}_due")] {
        assert!(!indexes.contains(&gone), "{gone} is dropped: {indexes:?}");
    }
    for kept in ["open", "dead_letter", "processed", "aggregate_received"] {
        let index = format!("ix_{t}_{kept}");
        assert!(indexes.contains(&index), "{index} is there: {indexes:?}");
    }

    // With sequential scans priced out, a status no index serves would still be a Seq Scan.
    client.batch_execute("SET enable_seqscan = off").unwrap();
    for status in [
        "pending",
        "failed",
        "processing",
        "processed",
        "dead_letter",
    ] {
        let plan = plan(
            &mut client,
            &format!("SELECT id FROM {t} WHERE status = '{status}'"),
        );
        assert!(!plan.contains("Seq Scan"), "{status}: {plan}");
    }
    client.batch_execute("RESET enable_seqscan").unwrap();
    let due = plan(
        &mut client,
        &format!(
            "SELECT id FROM {t} WHERE status IN ('pending', 'failed') \
             AND (next_retry_at IS NULL OR next_retry_at <= now()) \
             ORDER BY received_at LIMIT 10 FOR UPDATE SKIP LOCKED"
        ),
    );
    assert!(
        due.contains(&format!("ix_{t}_open")) && !due.contains("Sort"),
        "{due}"
    );
}

/// On SQLite the setting means the same: `Verify` refuses a new database (nothing created),
/// and starts once it is migrated; the same for the outbox relay.
#[test]
fn verify_on_sqlite_inbox_and_outbox() {
    use eventflow::store::outbox::{OutboxStore, SqliteOutbox};
    use eventflow::store::SqliteStore;
    use eventflow::OutboxRelay;

    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let consumer = || {
        InboxConsumer::builder()
            .transport(MemoryStream::new())
            .store(store.clone())
            .stream("orders")
            .group("billing")
            .migrations(Migrations::Verify)
            .handler(|_tx, _row| -> HandlerResult { Ok(()) })
            .build()
            .unwrap()
    };
    let refused = consumer().start().expect_err("a new database");
    assert!(
        refused
            .to_string()
            .contains("eventflow migrate --table event_inbox"),
        "{refused}"
    );
    assert!(store.count_by_status().is_err(), "nothing created");
    store.migrate().unwrap();
    consumer()
        .start()
        .expect("starts once migrated")
        .shutdown(Duration::from_secs(10))
        .unwrap();

    let outbox = Arc::new(SqliteOutbox::open_in_memory().unwrap());
    let relay = || {
        OutboxRelay::builder()
            .store(outbox.clone())
            .transport(MemoryStream::new())
            .workers(1)
            .migrations(Migrations::Verify)
            .build()
            .unwrap()
    };
    let refused = relay().start().expect_err("no outbox table");
    assert!(
        refused
            .to_string()
            .contains("eventflow migrate --outbox --outbox-table event_outbox"),
        "{refused}"
    );
    assert_eq!(
        outbox.pending_migrations().unwrap().len(),
        2,
        "nothing applied: 0001_event_outbox.sql and 0002_headers.sql"
    );
    outbox.migrate().unwrap();
    relay()
        .start()
        .expect("starts once migrated")
        .shutdown(Duration::from_secs(10))
        .unwrap();
}
