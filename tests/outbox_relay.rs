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
    GroupStats, MemoryStream, OutgoingEntry, ReadRequest, ReclaimRequest, Reclaimed, RedisStreams,
    ReplicaWait, StreamEntry, Transport, TransportError,
};
use eventflow::{Event, HandlerResult, InboxConsumer, ManualClock, RetryPolicy, SqliteStore};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
/// another type, until `fixed`; or is unreachable while `down`; or takes `delay` to append.
#[derive(Clone, Default)]
struct Faulty {
    inner: MemoryStream,
    refuse: Arc<Mutex<Option<String>>>,
    down: Arc<AtomicBool>,
    delay: Arc<Mutex<Duration>>,
    /// How many replicas acknowledge what it appends.
    replicas: Arc<AtomicU32>,
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
        std::thread::sleep(*self.delay.lock());
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
    fn publish_entries_replicated(
        &self,
        entries: &[OutgoingEntry<'_>],
        wait: ReplicaWait,
    ) -> Result<Vec<Result<String, TransportError>>, TransportError> {
        let acknowledged = self.replicas.load(Ordering::SeqCst);
        Ok(self
            .publish_entries(entries)?
            .into_iter()
            .map(|result| {
                result.and_then(|id| {
                    if acknowledged >= wait.replicas {
                        Ok(id)
                    } else {
                        Err(TransportError::NotReplicated {
                            wanted: wait.replicas,
                            acknowledged,
                        })
                    }
                })
            })
            .collect())
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
        if self.down.load(Ordering::SeqCst) {
            return Err(TransportError::Unavailable("connection refused".into()));
        }
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
fn a_running_relay_is_live_and_ready_not_ready_while_its_broker_is_down_and_not_live_after_shutdown(
) {
    let began = std::time::Instant::now();
    let event = numbered(Uuid::new_v4(), 0);
    let outbox = sqlite_outbox_with(&[("orders", event.clone())]);
    let broker = Faulty::default();
    let relay = OutboxRelay::builder()
        .store(outbox.clone())
        .transport(broker.clone())
        .workers(3)
        .trim_streams(Some(Duration::from_secs(3600)))
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(support::wait_until(WAIT, || relay.stats().published == 1));

    let health = relay.health();
    assert!(health.is_live() && health.is_ready(), "{health:?}");
    assert!(health.running);
    let threads = |count: eventflow::inbox::ThreadCount| (count.alive, count.configured);
    assert_eq!(threads(health.publishers), (3, 3));
    // Retention (on by default) and stream trimming; SQLite has no listener.
    assert_eq!(threads(health.services), (2, 2));
    assert_eq!(
        (health.database.clone(), health.broker.clone()),
        (Ok(()), Ok(()))
    );
    // Both happened during this test, so they are younger than it.
    let since_round = health.since_last_round.expect("a round was committed");
    let since_publish = health.since_last_publish.expect("the event was published");
    assert!(since_round < began.elapsed() && since_publish < began.elapsed());

    // An unreachable broker: live (a restart would not help), not ready; ready again after.
    broker.down.store(true, Ordering::SeqCst);
    let health = relay.health();
    assert!(health.is_live() && !health.is_ready(), "{health:?}");
    assert_eq!(health.database, Ok(()));
    let error = health.broker.unwrap_err();
    assert!(error.contains("connection refused"), "{error}");
    broker.down.store(false, Ordering::SeqCst);
    assert!(relay.health().is_ready());

    relay.shutdown(WAIT).unwrap();
    let health = relay.health();
    assert!(!health.is_live() && !health.is_ready(), "{health:?}");
    assert!(!health.running);
    assert_eq!((health.publishers.alive, health.services.alive), (0, 0));
}

#[test]
fn waiting_for_replicas_publishes_only_what_enough_replicas_acknowledged() {
    let event = numbered(Uuid::new_v4(), 0);
    let outbox = sqlite_outbox_with(&[("orders", event.clone())]);
    let broker = Faulty::default();
    let relay = OutboxRelay::builder()
        .store(outbox.clone())
        .transport(broker.clone())
        .workers(1)
        .max_attempts(1)
        .poll_interval(Duration::from_millis(10))
        .wait_for_replicas(2, Duration::from_millis(100))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let still_pending = || {
        let row = &outbox.find_by_event_id(&event.event_id).unwrap()[0];
        assert_eq!((row.status, row.attempts), (OutboxStatus::Pending, 0));
    };
    // No replica, then one of the two asked for: appended each time, published never, and no
    // attempt counted (with max_attempts 1 a counted one would dead-letter the row).
    assert!(support::wait_until(WAIT, || relay.stats().unreplicated >= 2));
    still_pending();
    broker.replicas.store(1, Ordering::SeqCst);
    let before = relay.stats().unreplicated;
    assert!(support::wait_until(WAIT, || relay.stats().unreplicated > before));
    still_pending();
    assert_eq!(relay.stats().published, 0);

    broker.replicas.store(2, Ordering::SeqCst);
    assert!(support::wait_until(WAIT, || relay.stats().published == 1));
    let report = relay.shutdown(WAIT).unwrap();
    assert_eq!((report.stats.retried, report.stats.dead_lettered), (0, 0));
    // The publishing attempt is the only one counted.
    let row = &outbox.find_by_event_id(&event.event_id).unwrap()[0];
    assert_eq!((row.status, row.attempts), (OutboxStatus::Published, 1));
    // The stream holds the event once per append; the inbox stores it once by its event id.
    let copies = events_of(&read_all(&broker.inner, "orders"));
    assert_eq!(copies.len() as u64, report.stats.unreplicated + 1);
    assert!(copies.iter().all(|copy| *copy == event), "{copies:?}");
}

#[test]
fn the_in_process_stream_has_no_replicas_to_wait_for() {
    let event = numbered(Uuid::new_v4(), 0);
    let outbox = sqlite_outbox_with(&[("orders", event.clone())]);
    let stream = MemoryStream::new();
    let relay = OutboxRelay::builder()
        .store(outbox.clone())
        .transport(stream.clone())
        .workers(1)
        .poll_interval(Duration::from_millis(10))
        .wait_for_replicas(1, Duration::from_millis(10))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(support::wait_until(WAIT, || relay.stats().unreplicated >= 1));
    let report = relay.shutdown(WAIT).unwrap();
    assert_eq!(report.stats.published, 0);
    let row = &outbox.find_by_event_id(&event.event_id).unwrap()[0];
    assert_eq!((row.status, row.attempts), (OutboxStatus::Pending, 0));
    assert!(!read_all(&stream, "orders").is_empty());
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
    assert_eq!(
        error(base().wait_for_replicas(0, Duration::from_secs(1))),
        "wait_for_replicas"
    );
    assert_eq!(
        error(base().wait_for_replicas(1, Duration::ZERO)),
        "wait_for_replicas"
    );
}

/// `WAIT` on a Redis without replicas answers 0: the entry is appended and reported
/// `NotReplicated`, which is why a relay waiting for replicas never publishes to one.
#[test]
fn a_single_redis_without_replicas_acknowledges_no_entry() {
    if !support::redis_available("a_single_redis_without_replicas_acknowledges_no_entry") {
        return;
    }
    let redis = RedisStreams::connect(&support::redis_url()).unwrap();
    let stream = support::unique_name("ef_or_wait");
    let fields = vec![("event_id".to_string(), b"e1".to_vec())];
    let results = redis
        .publish_entries_replicated(
            &[
                OutgoingEntry {
                    stream: &stream,
                    fields: &fields,
                },
                OutgoingEntry {
                    stream: &stream,
                    fields: &[],
                },
            ],
            ReplicaWait {
                replicas: 1,
                timeout: Duration::from_millis(50),
            },
        )
        .unwrap();
    let entries = read_all(&redis, &stream);
    let mut conn = redis::Client::open(support::redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: i64 = redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
    assert!(
        matches!(
            results[..],
            [
                Err(TransportError::NotReplicated {
                    wanted: 1,
                    acknowledged: 0
                }),
                Err(TransportError::Broker(_))
            ]
        ),
        "{results:?}"
    );
    assert_eq!(entries.len(), 1, "the entry was appended all the same");
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
    let _serial = REDIS_WRITERS.lock();
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
    // Each committed event once. In either order: they are of two aggregates, and the relay's
    // two publishers, woken by the two commits, may append them either way round.
    let by_id = |mut events: Vec<Event>| {
        events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        events
    };
    assert_eq!(
        by_id(events_of(&read_all(&redis, &stream))),
        by_id(vec![kept, auto])
    );
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

/// Tests that write to the shared Redis hold this, so that the out-of-memory window of one
/// does not fail another of this file.
static REDIS_WRITERS: Mutex<()> = Mutex::new(());

/// Restores Redis's `maxmemory` and `maxmemory-policy` when dropped, however the test ends:
/// other tests share this server.
struct MaxMemoryGuard {
    conn: redis::Connection,
    maxmemory: String,
    policy: String,
}

impl MaxMemoryGuard {
    fn new() -> Self {
        let mut conn = redis::Client::open(support::redis_url())
            .unwrap()
            .get_connection()
            .unwrap();
        let get = |conn: &mut redis::Connection, name: &str| -> String {
            let pair: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query(conn)
                .unwrap();
            pair[1].clone()
        };
        let maxmemory = get(&mut conn, "maxmemory");
        let policy = get(&mut conn, "maxmemory-policy");
        Self {
            conn,
            maxmemory,
            policy,
        }
    }

    /// Refuses every write with OOM: a limit far below what the server uses, no eviction.
    fn starve(&mut self) {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction")
            .arg("maxmemory")
            .arg("1")
            .query::<()>(&mut self.conn)
            .unwrap();
    }

    fn restore(&mut self) {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(&self.maxmemory)
            .arg("maxmemory-policy")
            .arg(&self.policy)
            .query::<()>(&mut self.conn)
            .unwrap();
    }
}

impl Drop for MaxMemoryGuard {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(support::redis_url()) {
            if let Ok(mut conn) = client.get_connection() {
                let _ = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory")
                    .arg(&self.maxmemory)
                    .arg("maxmemory-policy")
                    .arg(&self.policy)
                    .query::<()>(&mut conn);
            }
        }
    }
}

/// Redis out of memory answers every XADD with OOM, "try later": the relay counts no attempt
/// and dead-letters nothing, and publishes everything once memory is back.
#[test]
fn postgres_redis_out_of_memory_counts_no_attempt_and_publishes_everything_after() {
    if !servers_available(
        "postgres_redis_out_of_memory_counts_no_attempt_and_publishes_everything_after",
    ) {
        return;
    }
    let _serial = REDIS_WRITERS.lock();
    let table = support::unique_name("ef_or");
    let stream = support::unique_name("ef_or");
    let _cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: stream.clone(),
    };
    let redis = eventflow::transport::RedisStreams::connect(&support::redis_url()).unwrap();
    let relay = OutboxRelay::builder()
        .postgres(support::postgres_url())
        .table(&table)
        .transport(redis.clone())
        .workers(2)
        .batch_size(50)
        // One refused attempt would dead-letter: any attempt counted shows.
        .max_attempts(1)
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let outbox = OutboxTable::named(&table).unwrap();
    let mut client = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    let aggregates: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    let mut all = Vec::new();

    let mut guard = MaxMemoryGuard::new();
    guard.starve();
    for n in 0..30 {
        let mut tx = client.transaction().unwrap();
        let batch: Vec<Event> = aggregates.iter().map(|a| numbered(*a, n)).collect();
        outbox.enqueue_batch(&mut tx, &stream, &batch).unwrap();
        tx.commit().unwrap();
        all.extend(batch);
    }
    // The relay tries (and is told OOM) for a while.
    let tried = support::wait_until(Duration::from_secs(3), || {
        relay.stats().abandoned_batches >= 2
    });
    let during = relay.stats();
    let store = PostgresOutbox::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    let counts_during = store.count_by_status().unwrap();
    let attempts_during: i32 = client
        .query_one(
            &format!("SELECT COALESCE(max(attempts), 0) FROM {table}"),
            &[],
        )
        .unwrap()
        .get(0);
    guard.restore();
    drop(guard);

    assert!(
        support::wait_until(Duration::from_secs(30), || relay.stats().published == 300),
        "{:?}",
        relay.stats()
    );
    let after = relay.shutdown(WAIT).unwrap().stats;
    assert!(tried, "the relay met OOM: {during:?}");
    assert_eq!(
        (during.published, during.retried, during.dead_lettered),
        (0, 0, 0),
        "{during:?}"
    );
    assert_eq!(
        (
            counts_during.pending,
            counts_during.failed,
            counts_during.dead_letter
        ),
        (300, 0, 0)
    );
    assert_eq!(attempts_during, 0, "no attempt counted while out of memory");
    assert_eq!((after.retried, after.dead_lettered), (0, 0), "{after:?}");
    let counts = store.count_by_status().unwrap();
    assert_eq!((counts.published, counts.dead_letter), (300, 0));
    let published = events_of(&read_all(&redis, &stream));
    assert_eq!(published.len(), 300, "each event published once");
    let ids: HashSet<_> = published.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, all.iter().map(|e| e.event_id.clone()).collect());
    assert_aggregate_order(&published);
}

/// Enqueues one event per aggregate of `aggregates` and returns their events.
fn enqueue_each(
    writer: &mut impl outbox::OutboxWriter,
    outbox: &OutboxTable,
    stream: &str,
    aggregates: &[Uuid],
    n: u64,
) -> Vec<Event> {
    let events: Vec<Event> = aggregates.iter().map(|a| numbered(*a, n)).collect();
    outbox.enqueue_batch(writer, stream, &events).unwrap();
    events
}

/// Runs a relay over `store` until it has published `expected` rows (on the in-process stream),
/// and returns what reached the stream.
fn relay_until_published(store: Arc<dyn OutboxStore>, stream: &str, expected: u64) -> Vec<Event> {
    let broker = MemoryStream::new();
    let relay = OutboxRelay::builder()
        .store(store)
        .transport(broker.clone())
        .workers(2)
        .batch_size(4)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(
        support::wait_until(WAIT, || relay.stats().published >= expected),
        "{:?}",
        relay.stats()
    );
    // A little longer, to see that nothing else is published.
    std::thread::sleep(Duration::from_millis(300));
    let stats = relay.shutdown(WAIT).unwrap().stats;
    assert_eq!(stats.published, expected, "{stats:?}");
    events_of(&read_all(&broker, stream))
}

/// After an unreadable row was set aside: it is the only dead letter, and `held`, the next row
/// of its aggregate, still waits behind it (order kept).
fn assert_set_aside(store: &dyn OutboxStore, held: &Event) {
    let counts = store.count_by_status().unwrap();
    assert_eq!(counts.dead_letter, 1, "{counts:?}");
    let held_row = &store.find_by_event_id(&held.event_id).unwrap()[0];
    assert_eq!(
        held_row.status,
        OutboxStatus::Pending,
        "its aggregate waits"
    );
}

#[test]
fn postgres_an_infinity_timestamp_is_set_aside_and_the_relay_goes_on() {
    if !support::postgres_available(
        "postgres_an_infinity_timestamp_is_set_aside_and_the_relay_goes_on",
    ) {
        return;
    }
    let table = support::unique_name("ef_or");
    let stream = support::unique_name("ef_or");
    let _cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: stream.clone(),
    };
    let store = Arc::new(
        PostgresOutbox::builder(support::postgres_url())
            .table(&table)
            .build()
            .unwrap(),
    );
    store.migrate().unwrap();
    let outbox = OutboxTable::named(&table).unwrap();
    let mut client = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    let aggregates: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let first = enqueue_each(&mut client, &outbox, &stream, &aggregates, 0);
    let second = enqueue_each(&mut client, &outbox, &stream, &aggregates, 1);
    // Aggregate 0's first row gets an infinite created_at (unreadable); aggregate 1's first row
    // an infinite retry time (never due, holding its aggregate back, readable by no listing).
    client
        .execute(
            &format!("UPDATE {table} SET created_at = 'infinity' WHERE event_id = $1"),
            &[&first[0].event_id],
        )
        .unwrap();
    client
        .execute(
            &format!(
                "UPDATE {table} SET status = 'failed', next_attempt_at = 'infinity' WHERE event_id = $1"
            ),
            &[&first[1].event_id],
        )
        .unwrap();

    let published = relay_until_published(store.clone(), &stream, 8);
    let ids: HashSet<String> = published.iter().map(|e| e.event_id.clone()).collect();
    let expected: HashSet<String> = first[2..]
        .iter()
        .chain(&second[2..])
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(ids, expected);
    assert_aggregate_order(&published);
    let row = client
        .query_one(
            &format!("SELECT status, last_error FROM {table} WHERE event_id = $1"),
            &[&first[0].event_id],
        )
        .unwrap();
    let (status, error): (String, String) = (row.get(0), row.get(1));
    assert_eq!(status, "dead_letter");
    assert!(
        error.contains("created_at") && error.contains("cannot read"),
        "{error}"
    );
    assert_set_aside(&*store, &second[0]);
    let waiting = &store.find_by_event_id(&second[1].event_id).unwrap()[0];
    assert_eq!(
        waiting.status,
        OutboxStatus::Pending,
        "behind the never-due row"
    );
    // Reading the never-due row is an error naming it, not a panic.
    let error = store.find_by_event_id(&first[1].event_id).unwrap_err();
    assert!(error.to_string().contains("next_attempt_at"), "{error}");
}

#[test]
fn sqlite_an_unreadable_timestamp_is_set_aside_and_the_relay_goes_on() {
    let db = TempDb::new();
    let store = Arc::new(SqliteOutbox::open(&db.0).unwrap());
    store.migrate().unwrap();
    let outbox = OutboxTable::default();
    let conn = db.connect();
    let aggregates: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let stream = "orders";
    let mut writer = db.connect();
    let first = enqueue_each(&mut writer, &outbox, stream, &aggregates, 0);
    let second = enqueue_each(&mut writer, &outbox, stream, &aggregates, 1);
    conn.execute(
        "UPDATE event_outbox SET created_at = 'infinity' WHERE event_id = ?1",
        [&first[0].event_id],
    )
    .unwrap();

    let published = relay_until_published(store.clone(), stream, 10);
    let ids: HashSet<String> = published.iter().map(|e| e.event_id.clone()).collect();
    let expected: HashSet<String> = first[1..]
        .iter()
        .chain(&second[1..])
        .map(|e| e.event_id.clone())
        .collect();
    assert_eq!(ids, expected);
    assert_aggregate_order(&published);
    let (status, error): (String, String) = conn
        .query_row(
            "SELECT status, last_error FROM event_outbox WHERE event_id = ?1",
            [&first[0].event_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "dead_letter");
    assert!(error.contains("cannot read"), "{error}");
    assert_set_aside(&*store, &second[0]);
}

/// A version-1 UUID of node `node` made at `ticks`: v1 UUIDs of one node share their last 64
/// bits (clock sequence and node id); only the time in the first 64 differs.
fn v1_uuid(ticks: u64, node: [u8; 6]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&ticks.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x10; // version 1
    bytes[8] = 0x80 | 0x12; // RFC 4122 variant, clock sequence
    bytes[9] = 0x34;
    bytes[10..].copy_from_slice(&node);
    Uuid::from_bytes(bytes)
}

/// Two aggregates whose ids share their last 64 bits (v1 UUIDs of one node) get different lock
/// keys: a transaction enqueueing for one does not make another, enqueueing for the other,
/// wait. The same aggregate still waits (the lock is real).
#[test]
fn postgres_v1_uuids_of_one_node_do_not_share_an_enqueue_lock() {
    if !support::postgres_available("postgres_v1_uuids_of_one_node_do_not_share_an_enqueue_lock") {
        return;
    }
    let table = support::unique_name("ef_or");
    let _cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: support::unique_name("ef_or"),
    };
    let store = PostgresOutbox::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    store.migrate().unwrap();
    let outbox = OutboxTable::named(&table).unwrap();
    let node = [1, 2, 3, 4, 5, 6];
    let (a, b) = (v1_uuid(1_000, node), v1_uuid(2_000, node));
    assert_eq!(a.as_bytes()[8..], b.as_bytes()[8..], "same last 64 bits");
    assert_eq!((a.get_version_num(), b.get_version_num()), (1, 1));
    assert_ne!(a, b);
    let connect = || postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();

    let mut holder = connect();
    let mut held = holder.transaction().unwrap();
    outbox.enqueue(&mut held, "s", &numbered(a, 0)).unwrap();
    let mut other = connect();
    let mut try_enqueue = |aggregate: Uuid| {
        let mut tx = other.transaction().unwrap();
        tx.batch_execute("SET LOCAL lock_timeout = '1s'").unwrap();
        let result = outbox.enqueue(&mut tx, "s", &numbered(aggregate, 1));
        if result.is_ok() {
            tx.commit().unwrap();
        }
        result
    };
    try_enqueue(b).expect("another aggregate of the same node does not wait");
    let error = try_enqueue(a).expect_err("the same aggregate waits for the holder");
    assert!(
        error.to_string().contains("55P03"),
        "it timed out on the lock: {error}"
    );
    held.commit().unwrap();
}

/// The database ending a transaction for a conflict with a concurrent one is an error that
/// says to run the transaction again, for real on PostgreSQL: a serialization failure (40001)
/// in two SERIALIZABLE transactions that each read the outbox and then enqueue (write skew),
/// and a deadlock (40P01) between two transactions enqueueing for two aggregates in opposite
/// orders, one call each. Any other error (a refused event, a lock timeout) does not.
#[test]
fn postgres_serialization_failures_and_deadlocks_say_retry_the_transaction() {
    if !support::postgres_available(
        "postgres_serialization_failures_and_deadlocks_say_retry_the_transaction",
    ) {
        return;
    }
    let table = support::unique_name("ef_rt");
    let _cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: support::unique_name("ef_rt"),
    };
    let store = PostgresOutbox::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    store.migrate().unwrap();
    let outbox = OutboxTable::named(&table).unwrap();
    let connect = || postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    fn serializable<'c>(
        client: &'c mut postgres::Client,
        table: &str,
    ) -> postgres::Transaction<'c> {
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::Serializable)
            .start()
            .unwrap();
        tx.query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap();
        tx
    }

    // Write skew: both read the table, both insert into what the other read.
    let (mut first_client, mut second_client) = (connect(), connect());
    let mut first = serializable(&mut first_client, &table);
    let mut second = serializable(&mut second_client, &table);
    outbox
        .enqueue(&mut first, "s", &numbered(Uuid::new_v4(), 0))
        .unwrap();
    first.commit().unwrap();
    let error = outbox
        .enqueue(&mut second, "s", &numbered(Uuid::new_v4(), 0))
        .expect_err("the second transaction cannot be serialized after the first");
    assert!(error.to_string().contains("40001"), "{error}");
    assert!(error.is_retryable(), "{error}");
    assert!(matches!(&error, outbox::EnqueueError::Store(store) if store.is_retryable()));
    drop(second);

    // Deadlock: each holds one aggregate's enqueue lock and waits for the other's.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let race = |mine: Uuid, theirs: Uuid| {
        let (barrier, outbox, mut client) = (barrier.clone(), outbox.clone(), connect());
        std::thread::spawn(move || {
            let mut tx = client.transaction().unwrap();
            outbox.enqueue(&mut tx, "s", &numbered(mine, 0)).unwrap();
            barrier.wait();
            let result = outbox.enqueue(&mut tx, "s", &numbered(theirs, 1));
            if result.is_ok() {
                tx.commit().unwrap();
            }
            result
        })
    };
    let (one, two) = (race(a, b), race(b, a));
    let results = [one.join().unwrap(), two.join().unwrap()];
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        errors.len(),
        1,
        "the server ends one of the two: {results:?}"
    );
    assert!(errors[0].to_string().contains("40P01"), "{}", errors[0]);
    assert!(errors[0].is_retryable(), "{}", errors[0]);

    // Not a conflict: a lock timeout, and an invalid event.
    let mut holder = connect();
    let mut held = holder.transaction().unwrap();
    outbox.enqueue(&mut held, "s", &numbered(a, 2)).unwrap();
    let mut other = connect();
    let mut tx = other.transaction().unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '100ms'")
        .unwrap();
    let timeout = outbox
        .enqueue(&mut tx, "s", &numbered(a, 3))
        .expect_err("the holder keeps the aggregate's lock");
    assert!(timeout.to_string().contains("55P03"), "{timeout}");
    assert!(!timeout.is_retryable(), "{timeout}");
    drop(tx);
    held.commit().unwrap();
    let mut tx = other.transaction().unwrap();
    let invalid = outbox
        .enqueue(&mut tx, "s", &numbered(a, 4).with_event_id(" "))
        .expect_err("an empty event id");
    assert!(!invalid.is_retryable(), "{invalid}");
}

/// SQLite: a writer that finds the database locked by another connection past its busy
/// timeout gets SQLITE_BUSY, which says to run the transaction again.
#[test]
fn sqlite_a_busy_database_says_retry_the_transaction() {
    let path = std::env::temp_dir().join(format!("{}.db", support::unique_name("ef_busy")));
    let outbox = SqliteOutbox::open(&path).unwrap();
    outbox.migrate().unwrap();
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut writer = rusqlite::Connection::open(&path).unwrap();
    writer.busy_timeout(Duration::ZERO).unwrap();
    let mut tx = writer.transaction().unwrap();
    let error = outbox::enqueue(&mut tx, "s", &numbered(Uuid::new_v4(), 0))
        .expect_err("the holder has the write lock");
    assert!(error.is_retryable(), "{error}");
    drop(tx);
    holder.execute_batch("ROLLBACK").unwrap();
    drop((holder, writer, outbox));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// `url` naming database `database`, in either connection-string style.
fn in_database(url: &str, database: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, query) = match rest.split_once('?') {
                Some((before, query)) => (before, format!("?{query}")),
                None => (rest, String::new()),
            };
            let host = authority.split('/').next().unwrap_or(authority);
            format!("{scheme}://{host}/{database}{query}")
        }
        None => format!("{url} dbname={database}"),
    }
}

/// Two transactions enqueueing for aggregate A on one stream and B on another, in opposite
/// orders, each in one call: the locks are taken in one global order, so they never deadlock.
/// Counted on a database of the test's own, so no other test moves its deadlock counter.
#[test]
fn postgres_opposite_orders_across_streams_never_deadlock() {
    if !support::postgres_available("postgres_opposite_orders_across_streams_never_deadlock") {
        return;
    }
    let database = support::unique_name("ef_dl");
    let mut admin = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .unwrap();
    struct DropDatabase(String);
    impl Drop for DropDatabase {
        fn drop(&mut self) {
            if let Ok(mut admin) =
                postgres::Client::connect(&support::postgres_url(), postgres::NoTls)
            {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
            }
        }
    }
    let _drop = DropDatabase(database.clone());
    let config: postgres::Config = in_database(&support::postgres_url(), &database)
        .parse()
        .unwrap();
    let connect = || config.connect(postgres::NoTls).unwrap();
    let deadlocks = |client: &mut postgres::Client| -> i64 {
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .unwrap();
        client
            .query_one(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let mut watcher = connect();
    let before = deadlocks(&mut watcher);
    let outbox = OutboxTable::default();
    let store = PostgresOutbox::connect(in_database(&support::postgres_url(), &database)).unwrap();
    store.migrate().unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let rounds = 200;
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        for forward in [true, false] {
            let (barrier, outbox, connect) = (&barrier, &outbox, &connect);
            scope.spawn(move || {
                let mut client = connect();
                for n in 0..rounds {
                    let n = 2 * n + u64::from(forward);
                    let (x, y) = (numbered(a, n), numbered(b, n));
                    let entries = if forward {
                        [("s1", x), ("s2", y)]
                    } else {
                        [("s2", y), ("s1", x)]
                    };
                    barrier.wait();
                    let mut tx = client.transaction().unwrap();
                    outbox
                        .enqueue_to_streams(&mut tx, &entries)
                        .expect("no deadlock");
                    tx.commit().unwrap();
                }
            });
        }
    });
    drop(watcher);
    // The counter is flushed when a session ends; a fresh session reads it.
    let after = deadlocks(&mut connect());
    assert_eq!(after, before, "the server detected no deadlock");
    let counts = store.count_by_status().unwrap();
    assert_eq!(counts.pending, 2 * 2 * rounds, "every event enqueued once");
}

/// One call writes events for several streams, each row bound for its own.
#[test]
fn sqlite_enqueue_to_streams_writes_each_event_for_its_stream() {
    let db = TempDb::new();
    let store = SqliteOutbox::open(&db.0).unwrap();
    store.migrate().unwrap();
    let (a, b) = (numbered(Uuid::new_v4(), 0), numbered(Uuid::new_v4(), 0));
    let mut conn = db.connect();
    let tx = conn.transaction().unwrap();
    let mut tx = tx;
    outbox::enqueue_to_streams(&mut tx, &[("orders", a.clone()), ("invoices", b.clone())]).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        store.find_by_event_id(&a.event_id).unwrap()[0].stream,
        "orders"
    );
    assert_eq!(
        store.find_by_event_id(&b.event_id).unwrap()[0].stream,
        "invoices"
    );
    let error = outbox::enqueue_to_streams(&mut conn, &[("", a)]).unwrap_err();
    assert!(
        matches!(error, outbox::EnqueueError::InvalidStream { .. }),
        "{error}"
    );
}

/// The outbox table migrated on the application's own SQLite connection: inside a transaction
/// it rolls back with it; on the connection, or in a committed transaction, it stays, recorded
/// so that the relay's store finds nothing left to apply; running it again changes nothing.
#[test]
fn sqlite_the_outbox_migrates_on_the_applications_own_connection() {
    let db = TempDb::new();
    let table = support::unique_name("ef_om");
    let outbox = OutboxTable::named(&table).unwrap();
    let event = numbered(Uuid::new_v4(), 0);
    let mut conn = db.connect();
    let exists = |conn: &rusqlite::Connection| -> bool {
        conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [&table],
            |row| row.get(0),
        )
        .unwrap()
    };

    let mut tx = conn.transaction().unwrap();
    outbox.migrate(&mut tx).unwrap();
    outbox.enqueue(&mut tx, "orders", &event).unwrap();
    tx.rollback().unwrap();
    assert!(!exists(&conn), "rolled back with the caller's transaction");

    let mut tx = conn.transaction().unwrap();
    outbox.migrate(&mut tx).unwrap();
    outbox.enqueue(&mut tx, "orders", &event).unwrap();
    tx.commit().unwrap();
    outbox.migrate(&mut conn).unwrap();
    assert!(exists(&conn));

    let store = SqliteOutbox::open(&db.0)
        .unwrap()
        .with_table(&table)
        .unwrap();
    assert_eq!(store.pending_migrations().unwrap(), []);
    store.migrate().unwrap();
    assert_eq!(store.find_by_event_id(&event.event_id).unwrap().len(), 1);

    // The default table, on a connection in no transaction.
    let mut other = db.connect();
    outbox::migrate(&mut other).unwrap();
    outbox::enqueue(&mut other, "orders", &event).unwrap();
    let default = SqliteOutbox::open(&db.0).unwrap();
    assert_eq!(default.pending_migrations().unwrap(), []);
    assert_eq!(default.find_by_event_id(&event.event_id).unwrap().len(), 1);
}

/// The same on PostgreSQL, on a `Client`, a `Transaction` and a connection from the
/// application's own pool; and two applications migrating one table at once both succeed.
#[test]
fn postgres_the_outbox_migrates_on_the_applications_own_connection() {
    if !support::postgres_available(
        "postgres_the_outbox_migrates_on_the_applications_own_connection",
    ) {
        return;
    }
    let table = support::unique_name("ef_om");
    let _cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: support::unique_name("ef_om"),
    };
    let outbox = OutboxTable::named(&table).unwrap();
    let event = numbered(Uuid::new_v4(), 0);
    let connect = || postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    let mut client = connect();
    let exists = |client: &mut postgres::Client| -> bool {
        client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .unwrap()
            .get(0)
    };

    let mut tx = client.transaction().unwrap();
    outbox.migrate(&mut tx).unwrap();
    outbox.enqueue(&mut tx, "orders", &event).unwrap();
    tx.rollback().unwrap();
    assert!(
        !exists(&mut client),
        "rolled back with the caller's transaction"
    );

    // Two at once, on connections of their own: one migrates, the other finds it done.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (outbox, mut client) = (outbox.clone(), connect());
            std::thread::spawn(move || {
                let mut tx = client.transaction().unwrap();
                outbox.migrate(&mut tx).unwrap();
                tx.commit().unwrap();
            })
        })
        .collect();
    for racer in racers {
        racer.join().unwrap();
    }
    assert!(exists(&mut client));
    outbox.migrate(&mut client).unwrap();

    // A pooled connection of the store's own pool, as an application's pool would give.
    let store = PostgresOutbox::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    let mut pooled = store.pool().get().unwrap();
    let client: &mut postgres::Client = &mut pooled;
    outbox.migrate(client).unwrap();
    outbox.enqueue(client, "orders", &event).unwrap();
    drop(pooled);
    assert_eq!(store.pending_migrations().unwrap(), []);
    assert_eq!(store.find_by_event_id(&event.event_id).unwrap().len(), 1);
}

/// `enqueue_batch` takes the events borrowed or owned, in any collection, and writes them in
/// the order given.
#[test]
fn sqlite_enqueue_batch_takes_borrowed_or_owned_events_in_order() {
    let db = TempDb::new();
    let store = SqliteOutbox::open(&db.0).unwrap();
    store.migrate().unwrap();
    let aggregate = Uuid::new_v4();
    let events: Vec<Event> = (0..6).map(|n| numbered(aggregate, n)).collect();
    let mut conn = db.connect();
    let mut tx = conn.transaction().unwrap();
    outbox::enqueue_batch(&mut tx, "orders", [&events[0], &events[1]]).unwrap();
    outbox::enqueue_batch(&mut tx, "orders", &events[2..3]).unwrap();
    outbox::enqueue_batch(&mut tx, "orders", events[3..].iter().take(2)).unwrap();
    outbox::enqueue_batch(&mut tx, "orders", vec![events[5].clone()]).unwrap();
    outbox::enqueue_batch(&mut tx, "orders", Vec::<Event>::new()).unwrap();
    tx.commit().unwrap();
    let page = eventflow::store::outbox::OutboxPage {
        status: None,
        after_id: None,
        limit: 10,
    };
    let stored: Vec<Event> = store
        .list_rows(&page)
        .unwrap()
        .into_iter()
        .map(|row| row.event)
        .collect();
    assert_eq!(stored, events);
}

/// While one relay holds an aggregate's due rows, another's claim comes back short and says so
/// (`contended`), so its publisher waits for the commit rather than a poll interval; once the
/// first commits, nothing is left and nothing is reported.
#[test]
fn postgres_a_short_claim_reports_rows_another_relay_holds() {
    if !support::postgres_available("postgres_a_short_claim_reports_rows_another_relay_holds") {
        return;
    }
    let table = support::unique_name("ef_or");
    let _cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: support::unique_name("ef_or"),
    };
    let store = PostgresOutbox::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    store.migrate().unwrap();
    let outbox = OutboxTable::named(&table).unwrap();
    let mut client = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    let aggregate = Uuid::new_v4();
    let events: Vec<Event> = (0..4).map(|n| numbered(aggregate, n)).collect();
    outbox.enqueue_batch(&mut client, "s", &events).unwrap();
    let claim = eventflow::store::outbox::ClaimDue {
        limit: 10,
        now: chrono::Utc::now(),
    };
    let publish_all = |rows: &[eventflow::store::outbox::OutboxRow]| {
        eventflow::store::outbox::Delivery::Settled(
            rows.iter()
                .map(|r| eventflow::store::outbox::RowOutcome::Published {
                    entry_id: format!("{}-0", r.id),
                })
                .collect(),
        )
    };
    let (held, other) = std::thread::scope(|scope| {
        let (claimed_tx, claimed_rx) = crossbeam_channel::bounded::<()>(0);
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        let (store, claim, publish_all) = (&store, &claim, &publish_all);
        let first = scope.spawn(move || {
            let mut publish = |rows: &[eventflow::store::outbox::OutboxRow]| {
                claimed_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                publish_all(rows)
            };
            store.publish_due(claim, &mut publish).unwrap()
        });
        claimed_rx.recv().unwrap();
        let other = store
            .publish_due(claim, &mut |rows| publish_all(rows))
            .unwrap();
        release_tx.send(()).unwrap();
        (first.join().unwrap(), other)
    });
    assert_eq!(held.published, 4);
    assert_eq!(other.claimed, 0);
    assert!(other.contended, "{other:?}");
    let after = store
        .publish_due(&claim, &mut |rows| publish_all(rows))
        .unwrap();
    assert_eq!((after.claimed, after.contended), (0, false));
}

/// A new outbox table, migrated, with its store; the table is dropped with the guard.
fn migrated_outbox() -> (String, Arc<PostgresOutbox>, PgCleanup) {
    let table = support::unique_name("ef_ob");
    let cleanup = PgCleanup {
        tables: vec![table.clone()],
        stream: support::unique_name("ef_ob"),
    };
    let store = Arc::new(
        PostgresOutbox::builder(support::postgres_url())
            .table(&table)
            .build()
            .unwrap(),
    );
    store.migrate().unwrap();
    (table, store, cleanup)
}

/// Rows the relay's statements read from the outbox table, by sequential and index scans, as
/// PostgreSQL's statistics count them once every backend that read has reported.
fn tuples_read(client: &mut postgres::Client, table: &str) -> i64 {
    let read = |client: &mut postgres::Client| -> i64 {
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .unwrap();
        client
            .query_one(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) \
                 FROM pg_stat_user_tables WHERE relname = $1",
                &[&table],
            )
            .unwrap()
            .get(0)
    };
    // A backend reports its counts when it goes idle, at most about once a second: read until
    // two readings a while apart agree.
    let mut last = read(client);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = read(client);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// A backlog in a table without statistics (a new table, or a server with autovacuum off, as
/// the test server may be) is claimed by walking the due rows in order, not by reading every
/// due row for each claim.
#[test]
fn postgres_a_backlog_is_claimed_without_reading_every_due_row_per_claim() {
    if !support::postgres_available(
        "postgres_a_backlog_is_claimed_without_reading_every_due_row_per_claim",
    ) {
        return;
    }
    const EVENTS: u64 = 20_000;
    let (table, store, _cleanup) = migrated_outbox();
    let broker = MemoryStream::new();
    let relay = OutboxRelay::builder()
        .store(store.clone())
        .transport(broker.clone())
        .workers(2)
        .batch_size(100)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let mut client = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    let before = tuples_read(&mut client, &table);

    let aggregates: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    let outbox = OutboxTable::named(&table).unwrap();
    let mut tx = client.transaction().unwrap();
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| numbered(aggregates[(i % 200) as usize], i / 200))
        .collect();
    outbox.enqueue_batch(&mut tx, "orders", &events).unwrap();
    tx.commit().unwrap();
    assert!(
        support::wait_until(Duration::from_secs(120), || relay.stats().published
            == EVENTS),
        "{:?}",
        relay.stats()
    );
    relay.shutdown(WAIT).unwrap();
    assert_aggregate_order(&events_of(&read_all(&broker, "orders")));

    let per_event = (tuples_read(&mut client, &table) - before) as f64 / EVENTS as f64;
    // Walking the due rows reads each a few times (as a candidate, when locked, when read out,
    // and its aggregate's earlier rows): 5 per event. The claim as planned before, without
    // statistics, read 225 per event here.
    assert!(
        per_event < 30.0,
        "the relay's claims read {per_event:.1} rows of the outbox table per event published"
    );
}

/// With polling out of the picture (a poll interval of a minute), only commit notices wake the
/// relay's publishers: a notice that comes while every publisher is busy must still be heard,
/// or its rows would wait for the poll. Appending takes 30 ms here, and each round commits
/// three transactions 8 ms apart for two publishers, so the third commit's notice finds both
/// busy.
#[test]
fn postgres_a_notice_while_every_publisher_is_busy_is_heard() {
    if !support::postgres_available("postgres_a_notice_while_every_publisher_is_busy_is_heard") {
        return;
    }
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 3;
    let (table, store, _cleanup) = migrated_outbox();
    let broker = Faulty::default();
    *broker.delay.lock() = Duration::from_millis(30);
    let relay = OutboxRelay::builder()
        .store(store.clone())
        .transport(broker.clone())
        .workers(2)
        .poll_interval(Duration::from_secs(60))
        // No short waits after a claim that met rows another publisher held either.
        .contention_wait(None)
        .build()
        .unwrap()
        .start()
        .unwrap();
    let outbox = OutboxTable::named(&table).unwrap();
    let mut client = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    let mut expected = 0;
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            outbox
                .enqueue(&mut client, "orders", &numbered(Uuid::new_v4(), 0))
                .unwrap();
            expected += 1;
            // Long enough for a woken publisher to claim it, well within the 30 ms append.
            std::thread::sleep(Duration::from_millis(8));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        support::wait_until(Duration::from_secs(20), || relay.stats().published
            == expected),
        "published {} of {expected} without a poll: {:?}",
        relay.stats().published,
        relay.stats()
    );
    relay.shutdown(WAIT).unwrap();
    assert_eq!(
        events_of(&read_all(&broker.inner, "orders")).len() as u64,
        expected,
        "each event once"
    );
}
