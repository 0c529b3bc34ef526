//! The outbox end to end against PostgreSQL and Redis, with a relay process SIGKILLed in the
//! middle of a batch: producers enqueue 20,000 events from four threads (some transactions roll
//! back) while two relay processes publish; one relay is stopped at a moment it holds a claimed,
//! uncommitted batch and killed there; a replacement starts; an inbox consumer reads the stream.
//! Every committed event must be handled exactly once, no rolled-back event may appear anywhere,
//! and the stream must carry each aggregate's events in the order they were enqueued.
//!
//! A relay killed after appending its batch and before marking it published leaves those rows
//! pending, so another relay appends them again: the stream holds duplicates, and the inbox's
//! `event_id` deduplication absorbs them. The test counts them and checks that they all come
//! from the batch the killed relay held.
//!
//! The relay processes are this test binary run again with `EVENTFLOW_OUTBOX_CRASH_TABLE` set,
//! so the test needs nothing built beyond itself.

mod support;

use eventflow::outbox::{OutboxRelay, OutboxTable};
use eventflow::store::outbox::{OutboxStore, PostgresOutbox};
use eventflow::transport::{RedisStreams, StreamEntry, Transport};
use eventflow::{Event, HandlerResult, InboxConsumer};
use postgres::{Client, NoTls};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{postgres_url, redis_url, unique_name, wait_until};
use uuid::Uuid;

/// Committed events, over all producers.
const EVENTS: usize = 20_000;
const PRODUCERS: usize = 4;
const AGGREGATES: usize = 200;
/// Small batches, so that a relay spends much of its time holding one.
const RELAY_BATCH: usize = 50;
/// Rows the first relay must have published before it is killed.
const PUBLISHED_BEFORE_KILL: u64 = 1_000;
/// Every tenth transaction of each producer rolls back.
const ROLLBACK_EVERY: usize = 10;
const GROUP: &str = "shipping";

/// Not a test: a relay process the test below starts (and kills). Ignored so that a normal run
/// does not count it; the test runs it with `--ignored --exact outbox_relay_child`.
#[test]
#[ignore = "a child process of a_relay_killed_mid_batch_loses_nothing_and_its_duplicates_are_absorbed"]
fn outbox_relay_child() {
    let Ok(table) = std::env::var("EVENTFLOW_OUTBOX_CRASH_TABLE") else {
        return;
    };
    let url = std::env::var("EVENTFLOW_OUTBOX_CRASH_DATABASE_URL").unwrap();
    // The relay's warnings (claims failing, the broker unreachable) go to the inherited stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("eventflow=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let relay = OutboxRelay::builder()
        .postgres(url)
        .redis(redis_url())
        .table(table)
        .workers(2)
        .batch_size(RELAY_BATCH)
        .poll_interval(Duration::from_millis(100))
        .retention(None)
        .build()
        .unwrap()
        .start()
        .unwrap();
    // The parent reads these lines to know how much this relay has published.
    let mut out = std::io::stdout();
    loop {
        let stats = relay.stats();
        let _ = writeln!(out, "relay-stats {} {}", stats.published, stats.batches);
        let _ = out.flush();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `url` with `application_name` set, in either connection-string style, so the test can find
/// a relay's sessions in `pg_stat_activity`.
fn with_application_name(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// A relay process; killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct RelayProcess {
    child: Child,
    /// Rows published and batches, as the process last reported.
    published: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
    application_name: String,
}

impl RelayProcess {
    fn spawn(outbox: &str, application_name: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "outbox_relay_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EVENTFLOW_OUTBOX_CRASH_TABLE", outbox)
            .env(
                "EVENTFLOW_OUTBOX_CRASH_DATABASE_URL",
                with_application_name(&postgres_url(), application_name),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a relay process");
        let published = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().unwrap();
        let (seen, seen_batches) = (published.clone(), batches.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Some(stats) = line.strip_prefix("relay-stats ") else {
                    continue;
                };
                let numbers: Vec<u64> = stats.split(' ').filter_map(|n| n.parse().ok()).collect();
                if let [published, batches] = numbers[..] {
                    seen.store(published, Ordering::Relaxed);
                    seen_batches.store(batches, Ordering::Relaxed);
                }
            }
        });
        Self {
            child,
            published,
            batches,
            application_name: application_name.to_string(),
        }
    }

    fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Sends `signal` (`STOP`, `CONT`) with the system's `kill`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test's tables and stream; dropped at the end, whatever happened.
struct Names {
    outbox: String,
    inbox: String,
    handled: String,
    versions: String,
    stream: String,
}

impl Names {
    fn new() -> Self {
        let outbox = unique_name("obx");
        let inbox = unique_name("obxin");
        Self {
            handled: format!("{inbox}_handled"),
            versions: format!("{outbox}_versions"),
            stream: unique_name("obx_stream"),
            outbox,
            inbox,
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        if let Ok(mut db) = Client::connect(&postgres_url(), NoTls) {
            let _ = db.batch_execute(&format!(
                "DROP TABLE IF EXISTS {outbox}; DROP TABLE IF EXISTS {versions}; \
                 DROP TABLE IF EXISTS {handled}; DROP TABLE IF EXISTS {inbox}; \
                 DROP TABLE IF EXISTS {inbox}_quarantine; \
                 DELETE FROM eventflow_migrations WHERE target IN ('outbox:{outbox}', 'inbox:{inbox}')",
                outbox = self.outbox,
                versions = self.versions,
                handled = self.handled,
                inbox = self.inbox,
            ));
        }
        if let Ok(client) = redis::Client::open(redis_url()) {
            if let Ok(mut conn) = client.get_connection() {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(&self.stream).query(&mut conn);
            }
        }
    }
}

/// What one producer thread wrote.
#[derive(Default)]
struct Produced {
    committed: Vec<String>,
    rolled_back: Vec<String>,
}

/// Enqueues `quota` committed events in transactions of one to eight events, each event taking
/// the next version of its aggregate from the versions table (row locks held to commit, as an
/// application's aggregate rows would be), so versions grow in commit order and a rolled-back
/// transaction gives its versions back. Before its last quarter the producer waits at `gate`
/// until the test has killed a relay, so the kill always lands while producers are enqueueing.
fn produce(
    producer: usize,
    quota: usize,
    names: &Names,
    aggregates: &[Uuid],
    gate: &crossbeam_channel::Receiver<()>,
) -> Produced {
    let mut db = Client::connect(&postgres_url(), NoTls).unwrap();
    // The test crashes relays, not the database: waiting for each small transaction's WAL flush
    // would only make the producers slow.
    db.batch_execute("SET synchronous_commit = off").unwrap();
    // Locked in one order by every producer: no deadlocks.
    let lock = db
        .prepare(&format!(
            "SELECT aggregate_id, version FROM {} WHERE aggregate_id = ANY($1)
             ORDER BY aggregate_id FOR UPDATE",
            names.versions
        ))
        .unwrap();
    let store = db
        .prepare(&format!(
            "UPDATE {} AS v SET version = n.version
             FROM unnest($1::uuid[], $2::bigint[]) AS n(aggregate_id, version)
             WHERE v.aggregate_id = n.aggregate_id",
            names.versions
        ))
        .unwrap();
    let outbox = OutboxTable::named(&names.outbox).unwrap();
    let mut random = 0x9E37_79B9_7F4A_7C15_u64 ^ (producer as u64 + 1);
    let mut next = || {
        // xorshift64: deterministic, and enough to spread events over aggregates.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random as usize
    };
    let mut produced = Produced::default();
    let mut waited = false;
    let mut transaction = 0;
    while produced.committed.len() < quota {
        if !waited && produced.committed.len() >= quota * 3 / 4 {
            let _ = gate.recv(); // returns when the test drops the sender
            waited = true;
        }
        transaction += 1;
        let roll_back = transaction % ROLLBACK_EVERY == 0;
        let mut size = 1 + next() % 8;
        if !roll_back {
            size = size.min(quota - produced.committed.len());
        }
        let targets: Vec<Uuid> = (0..size)
            .map(|_| aggregates[next() % aggregates.len()])
            .collect();
        let mut tx = db.transaction().unwrap();
        let mut versions: HashMap<Uuid, i64> = tx
            .query(&lock, &[&targets])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let kind = if roll_back { "rb" } else { "ev" };
        let events: Vec<Event> = targets
            .iter()
            .enumerate()
            .map(|(k, aggregate)| {
                let version = versions.get_mut(aggregate).unwrap();
                *version += 1;
                let mut event = Event::new(
                    "OrderPlaced",
                    *aggregate,
                    json!({ "version": *version, "producer": producer }),
                );
                event.event_id = format!("{kind}-{producer}-{transaction}-{k}");
                event
            })
            .collect();
        let (ids, values): (Vec<Uuid>, Vec<i64>) = versions.into_iter().unzip();
        tx.execute(&store, &[&ids, &values]).unwrap();
        outbox
            .enqueue_batch(&mut tx, &names.stream, &events)
            .unwrap();
        let ids = events.into_iter().map(|event| event.event_id);
        if roll_back {
            tx.rollback().unwrap();
            produced.rolled_back.extend(ids);
        } else {
            tx.commit().unwrap();
            produced.committed.extend(ids);
        }
    }
    produced
}

/// The whole stream, oldest first (`XRANGE` in pages).
fn read_stream(conn: &mut redis::Connection, stream: &str) -> Vec<StreamEntry> {
    let mut entries = Vec::new();
    let mut start = "-".to_string();
    loop {
        let page: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(2_000)
            .query(conn)
            .unwrap();
        let redis::Value::Array(page) = page else {
            panic!("XRANGE answered {page:?}");
        };
        if page.is_empty() {
            return entries;
        }
        for entry in page {
            entries.push(stream_entry(entry));
        }
        start = format!("({}", entries.last().unwrap().id);
    }
}

fn stream_entry(value: redis::Value) -> StreamEntry {
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => bytes.clone(),
        redis::Value::SimpleString(text) => text.clone().into_bytes(),
        other => panic!("unexpected XRANGE value {other:?}"),
    };
    let redis::Value::Array(parts) = value else {
        panic!("unexpected XRANGE entry {value:?}");
    };
    let [id, redis::Value::Array(flat)] = parts.as_slice() else {
        panic!("unexpected XRANGE entry {parts:?}");
    };
    StreamEntry {
        id: String::from_utf8(text(id)).unwrap(),
        fields: flat
            .chunks(2)
            .map(|pair| (text(&pair[0]), text(&pair[1])))
            .collect(),
    }
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

/// The event ids of the rows a relay's sessions hold claimed in an open transaction: rows locked
/// `FOR UPDATE` carry the locking transaction's id in `xmax`. Only meaningful while the relay is
/// stopped (SIGSTOP), so the batch cannot be committed under our feet.
fn held_rows(db: &mut Client, outbox: &str, application_name: &str) -> Vec<String> {
    db.query(
        &format!(
            "SELECT o.event_id FROM {outbox} AS o
             WHERE o.status <> 'published'
               AND o.xmax IN (SELECT backend_xid FROM pg_stat_activity
                              WHERE application_name = $1
                                AND state = 'idle in transaction'
                                AND backend_xid IS NOT NULL)"
        ),
        &[&application_name],
    )
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// What the killed relay had done when it died.
struct Kill {
    published_before: u64,
    batches_before: u64,
    /// The rows it held claimed, uncommitted.
    held: HashSet<String>,
    /// How many of those it had appended to the stream.
    appended: usize,
    enqueued_before: i64,
    attempts: usize,
}

/// Stops relay `a` (SIGSTOP) at moments spread over its work until it is caught holding a
/// claimed batch it has already appended to the stream (at least in part) but not yet committed
/// as published, and kills it there (SIGKILL). That is the crash that makes a relay publish
/// twice.
fn kill_mid_batch(
    a: &mut RelayProcess,
    db: &mut Client,
    redis: &mut redis::Connection,
    names: &Names,
) -> Kill {
    assert!(
        wait_until(Duration::from_secs(60), || a.published()
            >= PUBLISHED_BEFORE_KILL),
        "the first relay published only {} rows",
        a.published()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the first relay was never caught between appending a batch and committing it \
             ({attempts} attempts)"
        );
        attempts += 1;
        a.signal("STOP");
        // What it sent just before stopping (a COMMIT, its last XADDs) is handled first.
        std::thread::sleep(Duration::from_millis(20));
        let held: HashSet<String> = held_rows(db, &names.outbox, &a.application_name)
            .into_iter()
            .collect();
        let appended = if held.is_empty() {
            0
        } else {
            read_stream(redis, &names.stream)
                .iter()
                .filter_map(|entry| Event::from_entry(entry).ok())
                .filter(|event| held.contains(&event.event_id))
                .count()
        };
        if appended == 0 {
            a.signal("CONT");
            // Resume for a varying while, so the next stop lands elsewhere in a batch.
            std::thread::sleep(Duration::from_millis(1 + attempts as u64 % 7));
            continue;
        }
        let (published_before, batches_before) = (a.published(), a.batches());
        let enqueued_before = count(db, &format!("SELECT count(*) FROM {}", names.outbox));
        a.kill();
        return Kill {
            published_before,
            batches_before,
            held,
            appended,
            enqueued_before,
            attempts,
        };
    }
}

#[test]
fn a_relay_killed_mid_batch_loses_nothing_and_its_duplicates_are_absorbed() {
    let test = "a_relay_killed_mid_batch_loses_nothing_and_its_duplicates_are_absorbed";
    if !(support::postgres_available(test) && support::redis_available(test)) {
        return;
    }
    let started = Instant::now();
    let names = Names::new();
    let mut db = Client::connect(&postgres_url(), NoTls).unwrap();
    PostgresOutbox::builder(postgres_url())
        .table(&names.outbox)
        .build()
        .unwrap()
        .migrate()
        .unwrap();
    let aggregates: Arc<Vec<Uuid>> = Arc::new((0..AGGREGATES).map(|_| Uuid::new_v4()).collect());
    db.batch_execute(&format!(
        "CREATE TABLE {versions} (aggregate_id UUID PRIMARY KEY, version BIGINT NOT NULL DEFAULT 0);
         CREATE TABLE {handled} (event_id TEXT NOT NULL);",
        versions = names.versions,
        handled = names.handled,
    ))
    .unwrap();
    for aggregate in aggregates.iter() {
        db.execute(
            &format!("INSERT INTO {} (aggregate_id) VALUES ($1)", names.versions),
            &[aggregate],
        )
        .unwrap();
    }
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();

    // The shipping service: an inbox consumer whose handler records each event it handles.
    let insert = format!("INSERT INTO {} (event_id) VALUES ($1)", names.handled);
    let consumer = InboxConsumer::builder()
        .redis(redis_url())
        .postgres(postgres_url())
        .table(&names.inbox)
        .stream(&names.stream)
        .group(GROUP)
        .workers(2)
        .block(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .handler(move |tx, row| -> HandlerResult {
            tx.execute(&insert, &[&row.event.event_id])?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    let app = unique_name("obxrelay");
    let mut a = RelayProcess::spawn(&names.outbox, &format!("{app}_a"));
    let b = RelayProcess::spawn(&names.outbox, &format!("{app}_b"));

    let names = Arc::new(names);
    let (gate, gate_rx) = crossbeam_channel::bounded::<()>(0);
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let (names, aggregates, gate) = (names.clone(), aggregates.clone(), gate_rx.clone());
            std::thread::spawn(move || {
                produce(producer, EVENTS / PRODUCERS, &names, &aggregates, &gate)
            })
        })
        .collect();
    drop(gate_rx);

    let kill = kill_mid_batch(&mut a, &mut db, &mut redis, &names);
    drop(gate); // the producers go on with their last quarter
    let c = RelayProcess::spawn(&names.outbox, &format!("{app}_c"));

    let mut committed = HashSet::new();
    let mut rolled_back = HashSet::new();
    for producer in producers {
        let produced = producer.join().unwrap();
        committed.extend(produced.committed);
        rolled_back.extend(produced.rolled_back);
    }
    assert_eq!(committed.len(), EVENTS);
    assert!(!rolled_back.is_empty());

    let outbox_counts = format!(
        "SELECT count(*), count(*) FILTER (WHERE status = 'published') FROM {}",
        names.outbox
    );
    let all_published = wait_until(Duration::from_secs(120), || {
        let row = db.query_one(&outbox_counts, &[]).unwrap();
        let (rows, published): (i64, i64) = (row.get(0), row.get(1));
        rows == EVENTS as i64 && published == rows
    });
    let row = db.query_one(&outbox_counts, &[]).unwrap();
    let (rows, published): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        all_published,
        "the outbox was not fully published: {published} of {rows} rows"
    );
    // Nothing is left to publish, so the remaining relays append nothing more.
    let (b_published, c_published) = (b.published(), c.published());
    let (b_batches, c_batches) = (b.batches(), c.batches());
    drop((b, c));

    let entries = read_stream(&mut redis, &names.stream);
    let handled_counts = format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        names.handled
    );
    let settled = wait_until(Duration::from_secs(120), || {
        let row = db.query_one(&handled_counts, &[]).unwrap();
        let distinct: i64 = row.get(1);
        distinct == EVENTS as i64
            && consumer.stats().received == entries.len() as u64
            && consumer.stats().processed == EVENTS as u64
    });
    let stats = consumer.shutdown(Duration::from_secs(30)).unwrap().stats;
    assert!(settled, "the consumer did not finish: {stats:?}");

    // The stream: every committed event, nothing rolled back, duplicates only from the batch
    // the killed relay held.
    let mut occurrences: HashMap<String, usize> = HashMap::new();
    let mut by_entry_id: HashMap<&str, String> = HashMap::new();
    let mut versions: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for entry in &entries {
        let event = Event::from_entry(entry).expect("the relay appends events an inbox reads");
        by_entry_id.insert(&entry.id, event.event_id.clone());
        let seen = occurrences.entry(event.event_id.clone()).or_default();
        *seen += 1;
        if *seen == 1 {
            versions
                .entry(event.aggregate_id)
                .or_default()
                .push(event.payload["version"].as_i64().unwrap());
        }
    }
    let distinct: HashSet<String> = occurrences.keys().cloned().collect();
    let duplicated: Vec<&String> = occurrences
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    let duplicates = entries.len() - distinct.len();
    assert!(
        distinct.is_disjoint(&rolled_back),
        "a rolled-back event was published"
    );
    assert_eq!(distinct, committed, "every committed event was published");
    assert!(
        duplicated
            .iter()
            .all(|id| kill.held.contains(*id) && occurrences[id.as_str()] == 2),
        "duplicates come only from the killed relay's batch, once each: {duplicated:?}"
    );
    // The killed relay's appended rows went out again: the duplicates the inbox absorbed.
    assert!(
        duplicates >= kill.appended && kill.appended > 0,
        "the rows the killed relay had appended ({}) were appended again ({duplicates})",
        kill.appended
    );

    // Per-aggregate order: first occurrences carry versions 1, 2, 3, ... in stream order.
    for (aggregate, seen) in &versions {
        let expected: Vec<i64> = (1..=seen.len() as i64).collect();
        assert_eq!(seen, &expected, "aggregate {aggregate} out of order");
    }
    let versions_total: i64 = count(
        &mut db,
        &format!("SELECT sum(version)::bigint FROM {}", names.versions),
    );
    assert_eq!(versions_total, EVENTS as i64);

    // The outbox: every row published, recording an entry that holds its event.
    let rows = db
        .query(
            &format!(
                "SELECT event_id, status, stream_entry_id FROM {}",
                names.outbox
            ),
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), EVENTS);
    for row in &rows {
        let (event_id, status, entry_id): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(status, "published", "{event_id}");
        let entry_id = entry_id.expect("a published row records its entry id");
        assert_eq!(by_entry_id.get(entry_id.as_str()), Some(&event_id));
    }

    // The consumer: each event handled once, duplicates absorbed by event_id.
    let row = db.query_one(&handled_counts, &[]).unwrap();
    let (handled, handled_distinct): (i64, i64) = (row.get(0), row.get(1));
    let handled_ids: HashSet<String> = db
        .query(&format!("SELECT event_id FROM {}", names.handled), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!((handled, handled_distinct), (EVENTS as i64, EVENTS as i64));
    assert_eq!(handled_ids, committed);
    assert_eq!(stats.received, entries.len() as u64);
    assert_eq!(stats.duplicates, duplicates as u64);
    assert_eq!(stats.processed, EVENTS as u64);
    let group = RedisStreams::connect(&redis_url())
        .unwrap()
        .group_stats(&names.stream, GROUP)
        .unwrap();
    assert_eq!(group.pending, 0);

    eprintln!(
        "outbox crash test: relay A killed after {} SIGSTOP attempts, having published {} rows in {} \
         batches, holding {} claimed rows of which {} were already appended; {} of {} events \
         enqueued at the kill; relays B and C published {} and {} rows in {} and {} batches; {} \
         rolled-back events never appeared; \
         stream entries {}, distinct events {}, duplicates absorbed by the inbox {} \
         (consumer: received {}, duplicates {}, processed {}); {:.1} s",
        kill.attempts,
        kill.published_before,
        kill.batches_before,
        kill.held.len(),
        kill.appended,
        kill.enqueued_before,
        EVENTS,
        b_published,
        c_published,
        b_batches,
        c_batches,
        rolled_back.len(),
        entries.len(),
        distinct.len(),
        duplicates,
        stats.received,
        stats.duplicates,
        stats.processed,
        started.elapsed().as_secs_f64(),
    );
}
