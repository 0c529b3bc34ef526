//! The outbox relay end to end: the application enqueues in its own transactions, the relay
//! publishes, and what reaches the stream is counted event by event.
//!
//! The SQLite tests use the in-process stream and always run; the PostgreSQL + Redis tests need
//! both servers (skipped with a message when they are missing, failing under
//! `EVENTFLOW_REQUIRE_SERVICES=1`).

mod support;

use eventflow::outbox::{self, OutboxRelay, OutboxTable};
use eventflow::store::outbox::{OutboxStatus, OutboxStore, PostgresOutbox, Requeue, SqliteOutbox};
use eventflow::transport::{
    GroupStats, MemoryStream, OutgoingEntry, ReadRequest, ReclaimRequest, Reclaimed, StreamEntry,
    Transport, TransportError,
};
use eventflow::{Event, HandlerResult, InboxConsumer, ManualClock, RetryPolicy, SqliteStore};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn numbered(aggregate: Uuid, n: u64) -> Event {
    let mut event = Event::new("Numbered", aggregate, json!({ "n": n }));
    event.event_id = format!("{aggregate}-{n}");
    event
}

/// A SQLite database file private to one test, removed when the test ends.
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("{}.db", support::unique_name("ef_or"))))
    }

    fn connect(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.0).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// Reads every entry of `stream` through a group of its own, in stream order.
fn read_all(transport: &impl Transport, stream: &str) -> Vec<StreamEntry> {
    let group = support::unique_name("audit");
    transport.ensure_group(stream, &group).unwrap();
    let mut all = Vec::new();
    loop {
        let batch = transport
            .read_group(&ReadRequest {
                stream,
                group: &group,
                consumer: "audit",
                count: 1_000,
                block: Duration::ZERO,
            })
            .unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn events_of(entries: &[StreamEntry]) -> Vec<Event> {
    entries
        .iter()
        .map(|entry| Event::from_entry(entry).expect("the relay writes entries the inbox reads"))
        .collect()
}

/// Checks that, per aggregate, the `n` payload numbers arrive in increasing order.
fn assert_aggregate_order(events: &[Event]) {
    let mut last: HashMap<Uuid, u64> = HashMap::new();
    for event in events {
        let n = event.payload["n"].as_u64().unwrap();
        if let Some(previous) = last.insert(event.aggregate_id, n) {
            assert!(
                previous < n,
                "aggregate {} went {previous} then {n}",
                event.aggregate_id
            );
        }
    }
}

#[test]
fn sqlite_end_to_end_with_the_in_process_stream() {
    const STREAM: &str = "orders";
    let db = TempDb::new();
    let outbox = SqliteOutbox::open(&db.0).unwrap();
    outbox.migrate().unwrap();
    let broker = MemoryStream::new();
    let relay = OutboxRelay::builder()
        .store(outbox)
        .transport(broker.clone())
        .workers(2)
        .batch_size(20)
        .build()
        .unwrap()
        .start()
        .unwrap();

    // The consumer side: an inbox on its own in-memory database, reading the same stream.
    let inbox = Arc::new(SqliteStore::open_in_memory().unwrap());
    inbox.with_connection(|conn| {
        conn.execute_batch("CREATE TABLE shipped (event_id TEXT PRIMARY KEY)")
            .unwrap()
    });
    let consumer = InboxConsumer::builder()
        .transport(broker.clone())
        .store(inbox.clone())
        .stream(STREAM)
        .group("shipping")
        .handler(|tx, row| -> HandlerResult {
            tx.execute("INSERT INTO shipped VALUES (?1)", [&row.event.event_id])?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    // Application transactions: 10 aggregates, 30 events each, every fifth transaction rolled
    // back along with its business write.
    let aggregates: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    let mut conn = db.connect();
    conn.execute_batch("CREATE TABLE orders (id TEXT PRIMARY KEY)")
        .unwrap();
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    let mut next_n: HashMap<Uuid, u64> = HashMap::new();
    for round in 0..30u64 {
        for aggregate in &aggregates {
            let mut tx = conn.transaction().unwrap();
            let n = *next_n.get(aggregate).unwrap_or(&0);
            let mut event = numbered(*aggregate, n);
            if round % 5 == 4 {
                event.event_id = format!("{aggregate}-rolled-back-{round}");
            }
            tx.execute("INSERT INTO orders VALUES (?1)", [&event.event_id])
                .unwrap();
            outbox::enqueue(&mut tx, STREAM, &event).unwrap();
            if round % 5 == 4 {
                tx.rollback().unwrap();
                rolled_back.insert(event.event_id);
            } else {
                tx.commit().unwrap();
                next_n.insert(*aggregate, n + 1);
                committed.insert(event.event_id);
            }
        }
    }
    assert_eq!((committed.len(), rolled_back.len()), (240, 60));

    assert!(
        support::wait_until(WAIT, || relay.stats().published == 240),
        "published {:?}",
        relay.stats()
    );
    assert!(support::wait_until(WAIT, || consumer.stats().processed == 240));
    let report = relay.shutdown(WAIT).unwrap();
    assert_eq!(report.stats.published, 240);
    consumer.shutdown(WAIT).unwrap();

    let published = events_of(&read_all(&broker, STREAM));
    let ids: HashSet<String> = published.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(published.len(), 240, "each committed event once");
    assert_eq!(ids, committed);
    assert!(ids.is_disjoint(&rolled_back));
    assert_aggregate_order(&published);
    let shipped: i64 = inbox.with_connection(|c| {
        c.query_row("SELECT count(*) FROM shipped", [], |r| r.get(0))
            .unwrap()
    });
    assert_eq!(shipped, 240);
}

/// A transport that refuses every entry for one stream, as Redis does when that key holds
/// another type, until `fixed`; or is unreachable while `down`.
#[derive(Clone, Default)]
struct Faulty {
    inner: MemoryStream,
    refuse: Arc<Mutex<Option<String>>>,
    down: Arc<AtomicBool>,
}

impl Transport for Faulty {
    fn create_group(&self, stream: &str, group: &str, after: &str) -> Result<(), TransportError> {
        self.inner.create_group(stream, group, after)
    }
    fn read_group(&self, request: &ReadRequest<'_>) -> Result<Vec<StreamEntry>, TransportError> {
        self.inner.read_group(request)
    }
    fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<u64, TransportError> {
        self.inner.ack(stream, group, ids)
    }
    fn reclaim_stale(&self, request: &ReclaimRequest<'_>) -> Result<Reclaimed, TransportError> {
        self.inner.reclaim_stale(request)
    }
    fn publish_entries(
        &self,
        entries: &[OutgoingEntry<'_>],
    ) -> Result<Vec<Result<String, TransportError>>, TransportError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TransportError::Unavailable("connection refused".into()));
        }
        let refused = self.refuse.lock().clone();
        let mut results = Vec::new();
        for entry in entries {
            if refused.as_deref() == Some(entry.stream) {
                results.push(Err(TransportError::Broker(
                    "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
                )));
            } else {
                results.extend(self.inner.publish_entries(std::slice::from_ref(entry))?);
            }
        }
        Ok(results)
    }
    fn trim(&self, stream: &str, max_len: usize) -> Result<u64, TransportError> {
        self.inner.trim(stream, max_len)
    }
    fn trim_consumed(&self, stream: &str, before: &str) -> Result<u64, TransportError> {
        self.inner.trim_consumed(stream, before)
    }
    fn group_stats(&self, stream: &str, group: &str) -> Result<GroupStats, TransportError> {
        self.inner.group_stats(stream, group)
    }
    fn oldest_pending_before(
        &self,
        stream: &str,
        group: &str,
        before: &str,
    ) -> Result<Option<eventflow::transport::PendingEntry>, TransportError> {
        self.inner.oldest_pending_before(stream, group, before)
    }
    fn ping(&self, timeout: Duration) -> Result<(), TransportError> {
        self.inner.ping(timeout)
    }
}

/// Retries at once, so a test sees every attempt without waiting out a schedule.
struct RetryNow;

impl RetryPolicy for RetryNow {
    fn delay(&self, _failures: u32, _jitter: f64) -> Duration {
        Duration::ZERO
    }
}

fn sqlite_outbox_with(events: &[(&str, Event)]) -> Arc<SqliteOutbox> {
    let outbox = Arc::new(SqliteOutbox::open_in_memory().unwrap());
    outbox.migrate().unwrap();
    outbox.with_connection(|conn| {
        let mut tx = conn.transaction().unwrap();
        for (stream, event) in events {
            outbox::enqueue(&mut tx, stream, event).unwrap();
        }
        tx.commit().unwrap();
    });
    outbox
}

#[test]
fn refused_entries_are_retried_then_dead_lettered_and_publish_once_requeued() {
    let (good, bad) = (numbered(Uuid::new_v4(), 0), numbered(Uuid::new_v4(), 0));
    let outbox = sqlite_outbox_with(&[("good", good.clone()), ("bad", bad.clone())]);
    let broker = Faulty::default();
    *broker.refuse.lock() = Some("bad".into());
    let relay = OutboxRelay::builder()
        .store(outbox.clone())
        .transport(broker.clone())
        .workers(1)
        .max_attempts(3)
        .retry_policy(RetryNow)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(support::wait_until(WAIT, || relay.stats().dead_lettered == 1));
    let stats = relay.stats();
    assert_eq!(
        (stats.published, stats.retried, stats.dead_lettered),
        (1, 2, 1)
    );
    let dead = &outbox.find_by_event_id(&bad.event_id).unwrap()[0];
    assert_eq!((dead.status, dead.attempts), (OutboxStatus::DeadLetter, 3));
    assert!(dead.last_error.as_deref().unwrap().contains("WRONGTYPE"));

    // The operator fixes the stream and requeues.
    *broker.refuse.lock() = None;
    assert_eq!(outbox.requeue_dead_letters(Requeue::All).unwrap(), 1);
    assert!(support::wait_until(WAIT, || relay.stats().published == 2));
    relay.shutdown(WAIT).unwrap();
    assert_eq!(events_of(&read_all(&broker.inner, "bad")), [bad]);
    assert_eq!(events_of(&read_all(&broker.inner, "good")), [good]);
}

#[test]
fn an_unreachable_broker_counts_no_attempt_and_publishes_once_back() {
    let event = numbered(Uuid::new_v4(), 0);
    let outbox = sqlite_outbox_with(&[("orders", event.clone())]);
    let broker = Faulty::default();
    broker.down.store(true, Ordering::SeqCst);
    let relay = OutboxRelay::builder()
        .store(outbox.clone())
        .transport(broker.clone())
        .workers(1)
        .max_attempts(1)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(support::wait_until(WAIT, || relay
        .stats()
        .abandoned_batches
        >= 2));
    let row = &outbox.find_by_event_id(&event.event_id).unwrap()[0];
    assert_eq!((row.status, row.attempts), (OutboxStatus::Pending, 0));

    broker.down.store(false, Ordering::SeqCst);
    assert!(support::wait_until(WAIT, || relay.stats().published == 1));
    let report = relay.shutdown(WAIT).unwrap();
    assert_eq!(report.stats.dead_lettered, 0);
    assert_eq!(events_of(&read_all(&broker.inner, "orders")), [event]);
}

#[test]
fn retention_deletes_published_rows_past_their_age_and_trimming_only_consumed_entries() {
    let events: Vec<Event> = (0..6).map(|n| numbered(Uuid::new_v4(), n)).collect();
    let pairs: Vec<(&str, Event)> = events.iter().map(|e| ("orders", e.clone())).collect();
    let outbox = sqlite_outbox_with(&pairs);
    let broker = MemoryStream::new();
    broker.ensure_group("orders", "billing").unwrap();
    let clock = ManualClock::starting_now();
    let relay = OutboxRelay::builder()
        .store(outbox.clone())
        .transport(broker.clone())
        .clock(clock.clone())
        .retention(Some(Duration::from_secs(24 * 3600)))
        .retention_interval(Duration::from_millis(20))
        .trim_streams(Some(Duration::from_secs(60)))
        .trim_interval(Duration::from_millis(20))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(support::wait_until(WAIT, || relay.stats().published == 6));

    // The group reads four entries and acknowledges two.
    let read = broker
        .read_group(&ReadRequest {
            stream: "orders",
            group: "billing",
            consumer: "c1",
            count: 4,
            block: Duration::ZERO,
        })
        .unwrap();
    let acked: Vec<String> = read[..2].iter().map(|e| e.id.clone()).collect();
    broker.ack("orders", "billing", &acked).unwrap();

    assert_eq!(
        outbox.count_by_status().unwrap().published,
        6,
        "young rows stay"
    );
    clock.advance(Duration::from_secs(2 * 24 * 3600));
    assert!(support::wait_until(WAIT, || relay.stats().deleted == 6));
    assert!(support::wait_until(WAIT, || relay.stats().trimmed == 2));
    relay.shutdown(WAIT).unwrap();
    assert_eq!(outbox.count_by_status().unwrap().published, 0);
    let left: Vec<String> = read_all(&broker, "orders")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let expected: Vec<String> = read[2..].iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        left[..2],
        expected[..],
        "read but unacknowledged entries stay"
    );
    assert_eq!(left.len(), 4, "unread entries stay");
}

#[test]
fn build_names_the_setting_at_fault() {
    let error = |builder: eventflow::outbox::RelayBuilder| match builder.build() {
        Err(eventflow::Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    let base = || {
        OutboxRelay::builder()
            .store(SqliteOutbox::open_in_memory().unwrap())
            .transport(MemoryStream::new())
    };
    assert_eq!(
        error(OutboxRelay::builder().transport(MemoryStream::new())),
        "store"
    );
    assert_eq!(
        error(OutboxRelay::builder().store(SqliteOutbox::open_in_memory().unwrap())),
        "transport"
    );
    assert_eq!(error(base().workers(0)), "workers");
    assert_eq!(error(base().batch_size(0)), "batch_size");
    assert_eq!(error(base().max_attempts(0)), "max_attempts");
    assert_eq!(error(base().poll_interval(Duration::ZERO)), "poll_interval");
    assert_eq!(error(base().retention(Some(Duration::ZERO))), "retention");
    assert_eq!(error(base().table("drop table")), "table");
}

// -- PostgreSQL + Redis ------------------------------------------------------------------------

fn servers_available(test: &str) -> bool {
    support::postgres_available(test) && support::redis_available(test)
}

struct PgCleanup {
    tables: Vec<String>,
    stream: String,
}

impl Drop for PgCleanup {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&support::postgres_url(), postgres::NoTls)
        {
            for table in &self.tables {
                let _ = client.batch_execute(&format!(
                    "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_quarantine;
                     DELETE FROM eventflow_migrations WHERE target IN ('outbox:{table}', 'inbox:{table}')"
                ));
            }
        }
        if let Ok(client) = redis::Client::open(support::redis_url()) {
            if let Ok(mut conn) = client.get_connection() {
                let _ = redis::cmd("DEL").arg(&self.stream).query::<i64>(&mut conn);
            }
        }
    }
}

#[test]
fn postgres_commit_publishes_within_a_listen_wakeup_and_rollback_never() {
    if !servers_available("postgres_commit_publishes_within_a_listen_wakeup_and_rollback_never") {
        return;
    }
    let table = support::unique_name("ef_or");
    let stream = support::unique_name("ef_or");
    let _cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: stream.clone(),
    };
    let redis = eventflow::transport::RedisStreams::connect(&support::redis_url()).unwrap();
    // Polling every minute: only the LISTEN/NOTIFY wake-up can publish within the wait below.
    let relay = OutboxRelay::builder()
        .postgres(support::postgres_url())
        .table(&table)
        .transport(redis.clone())
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let outbox = OutboxTable::named(&table).unwrap();
    let mut client = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();

    let (kept, dropped) = (numbered(Uuid::new_v4(), 0), numbered(Uuid::new_v4(), 0));
    let mut tx = client.transaction().unwrap();
    outbox.enqueue(&mut tx, &stream, &dropped).unwrap();
    tx.rollback().unwrap();
    let mut tx = client.transaction().unwrap();
    outbox.enqueue(&mut tx, &stream, &kept).unwrap();
    tx.commit().unwrap();
    // An autocommit client is its own transaction.
    let auto = numbered(Uuid::new_v4(), 0);
    outbox.enqueue(&mut client, &stream, &auto).unwrap();

    assert!(
        support::wait_until(Duration::from_secs(20), || relay.stats().published == 2),
        "{:?}",
        relay.stats()
    );
    relay.shutdown(WAIT).unwrap();
    assert_eq!(events_of(&read_all(&redis, &stream)), [kept, auto]);
    let store = PostgresOutbox::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    assert!(store
        .find_by_event_id(&dropped.event_id)
        .unwrap()
        .is_empty());
}

/// Two transactions enqueueing for one aggregate: the second waits for the first to end, so a
/// relay running in between cannot publish the second event before the first.
#[test]
fn postgres_enqueues_for_one_aggregate_commit_in_id_order() {
    if !servers_available("postgres_enqueues_for_one_aggregate_commit_in_id_order") {
        return;
    }
    let table = support::unique_name("ef_or");
    let stream = support::unique_name("ef_or");
    let _cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: stream.clone(),
    };
    let store = PostgresOutbox::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    store.migrate().unwrap();
    let outbox = OutboxTable::named(&table).unwrap();
    let aggregate = Uuid::new_v4();
    let (first, second) = (numbered(aggregate, 0), numbered(aggregate, 1));
    let connect = || postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();

    let mut first_client = connect();
    let mut first_tx = first_client.transaction().unwrap();
    outbox.enqueue(&mut first_tx, &stream, &first).unwrap();
    let second_done = std::thread::scope(|scope| {
        let second_tx = scope.spawn(|| {
            let mut client = connect();
            let mut tx = client.transaction().unwrap();
            outbox.enqueue(&mut tx, &stream, &second).unwrap();
            tx.commit().unwrap();
        });
        // Wait until the second transaction is blocked on the aggregate's lock.
        let mut watcher = connect();
        assert!(support::wait_until(WAIT, || {
            watcher
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .map(|row| row.get::<_, i64>(0) > 0)
                .unwrap_or(false)
        }));
        let published = Mutex::new(Vec::new());
        let mut publish = |rows: &[eventflow::store::outbox::OutboxRow]| {
            published
                .lock()
                .extend(rows.iter().map(|r| r.event.event_id.clone()));
            eventflow::store::outbox::Delivery::Settled(
                rows.iter()
                    .map(|r| eventflow::store::outbox::RowOutcome::Published {
                        entry_id: format!("{}-0", r.id),
                    })
                    .collect(),
            )
        };
        let claim = eventflow::store::outbox::ClaimDue {
            limit: 10,
            now: chrono::Utc::now(),
        };
        store.publish_due(&claim, &mut publish).unwrap();
        assert!(published.lock().is_empty(), "nothing is committed yet");
        first_tx.commit().unwrap();
        second_tx.join().unwrap();
        store.publish_due(&claim, &mut publish).unwrap();
        published.into_inner()
    });
    assert_eq!(second_done, [first.event_id, second.event_id]);
}
