//! **The floor.** What a competent engineer writes by hand with no library, so that every
//! eventflow scenario can be read as a multiple of it: on a table made from the reference DDL,
//! reader threads run `XREADGROUP COUNT n`, store the whole batch with one multi-row
//! `INSERT ... ON CONFLICT (event_id) DO NOTHING` (column arrays through `unnest`, prepared
//! once) and `XACK` the batch once it is committed; worker threads claim up to n pending rows
//! and mark them processed in one statement (`WITH c AS (SELECT ... FOR UPDATE SKIP LOCKED)
//! UPDATE ...`), run the handler's write (or nothing) for each row inside that transaction, and
//! commit. A reader wakes the workers after each commit; a worker that found nothing sleeps
//! until then (at most 100 ms), so it neither spins nor waits out a poll interval.
//!
//! It has the thread counts of the eventflow scenario it is compared to (`--readers`,
//! `--workers`); its batch sizes are its own (`--floor-read-batch`, `--floor-claim-batch`). It
//! keeps none of eventflow's promises beyond the happy path (no retries, no quarantine, no
//! reclaim of stale entries, no order), so it has the easier job.

use super::{micros_now, produce, unique, Handler, Options, Outcome, Role};
use chrono::{DateTime, Utc};
use eventflow::transport::RedisStreams;
use parking_lot::{Condvar, Mutex};
use postgres::{Client, NoTls};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{Commands, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The reference schema's PostgreSQL DDL, the file eventflow's first migration is: each
/// `event_inbox` in it (the table's, its indexes' and its constraint's names) becomes the run's
/// own table.
const REFERENCE_DDL: &str = include_str!("../../sql/postgres/inbox/0001_event_inbox.sql");

/// The attributes of one `data` entry, parsed as a hand-written consumer would.
#[derive(serde::Deserialize)]
struct Entry {
    event_id: String,
    event_type: String,
    aggregate_id: uuid::Uuid,
    occurred_on: DateTime<Utc>,
    #[serde(default)]
    payload: serde_json::Value,
    correlation_id: Option<String>,
}

/// How readers tell idle workers that rows were committed: a count of stored batches.
#[derive(Default)]
struct Wake {
    stored: Mutex<u64>,
    signal: Condvar,
}

impl Wake {
    fn generation(&self) -> u64 {
        *self.stored.lock()
    }

    fn stored(&self) {
        *self.stored.lock() += 1;
        self.signal.notify_all();
    }

    /// Sleeps until a batch is stored after generation `seen`, or `timeout`.
    fn wait_after(&self, seen: u64, timeout: Duration) {
        let mut stored = self.stored.lock();
        if *stored == seen {
            self.signal.wait_for(&mut stored, timeout);
        }
    }
}

/// One floor run of `options.events` events with `handler` (the one-row write inserts a row, as
/// the eventflow scenario's handler does); `aggregates` spreads the events as in `--ordered`;
/// `rate` paces the producer, as in eventflow's paced run, to show the hand-written loop's
/// latency when it keeps up. Measured like the eventflow runs: from the first XADD to the last
/// row committed.
pub fn run(
    options: &Options,
    handler: Handler,
    aggregates: Option<Vec<uuid::Uuid>>,
    rate: Option<usize>,
) -> Outcome {
    let table = unique("bench_floor");
    let stream = format!("{table}_stream");
    let mut db = Client::connect(&options.database_url, NoTls).expect("PostgreSQL");
    db.batch_execute(&REFERENCE_DDL.replace("event_inbox", &table))
        .expect("the reference DDL");
    db.batch_execute(&format!(
        "CREATE TABLE {table}_effects (event_id TEXT NOT NULL)"
    ))
    .expect("the effects table");
    super::checkpoint(&mut db);
    let redis = redis::Client::open(options.redis_url.as_str()).expect("a Redis URL");
    let mut conn = redis.get_connection().expect("Redis");
    let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&stream, "bench", "0");
    created.expect("XGROUP CREATE");

    let n = options.events;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Wake::default());
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut threads = Vec::new();
    for k in 0..options.readers.unwrap_or(super::DEFAULT_READERS) {
        let reader = Reader {
            db: Client::connect(&options.database_url, NoTls).expect("PostgreSQL"),
            redis: redis.get_connection().expect("Redis"),
            table: table.clone(),
            stream: stream.clone(),
            consumer: format!("floor-{k}"),
            count: options.floor_read_batch,
        };
        let (stop, wake) = (stop.clone(), wake.clone());
        threads.push(std::thread::spawn(move || reader.run(&stop, &wake)));
    }
    for _ in 0..options.workers {
        let worker = Worker {
            db: Client::connect(&options.database_url, NoTls).expect("PostgreSQL"),
            table: table.clone(),
            claim: options.floor_claim_batch,
            write: handler == Handler::OneRow,
        };
        let (stop, wake, done, latencies) =
            (stop.clone(), wake.clone(), done.clone(), latencies.clone());
        threads.push(std::thread::spawn(move || {
            worker.run(&stop, &wake, &done, &latencies)
        }));
    }

    // The producer is the bench's own, the same for every scenario.
    let producer = RedisStreams::connect(&options.redis_url).expect("Redis");
    let elapsed = produce(&producer, &stream, n, rate, aggregates)
        .wait_for(n, || done.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    wake.stored();
    for thread in threads {
        thread.join().expect("a floor thread panicked");
    }
    let _ = db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}_effects; DROP TABLE IF EXISTS {table}"
    ));
    let _: redis::RedisResult<()> = conn.del(&stream);
    let latencies_us = std::mem::take(&mut *latencies.lock());
    let paced = rate.map_or(String::new(), |rate| format!(", paced {rate}/s"));
    Outcome {
        name: format!(
            "floor: hand-written, {} workers, {} handler{paced}",
            options.workers,
            handler.describe()
        ),
        events: n,
        elapsed,
        latencies_us,
        // A paced run's rate is the producer's pace: not a floor to divide by.
        role: match rate {
            Some(_) => Role::Measured(None),
            None => Role::Floor(handler),
        },
    }
}

/// A reader thread: a batch from the stream, one insert (its own transaction), one XACK.
struct Reader {
    db: Client,
    redis: redis::Connection,
    table: String,
    stream: String,
    consumer: String,
    count: usize,
}

impl Reader {
    fn run(mut self, stop: &AtomicBool, wake: &Wake) {
        let table = &self.table;
        let insert = self
            .db
            .prepare(&format!(
                "INSERT INTO {table} \
                 (event_id, stream_id, event_type, aggregate_id, correlation_id, occurred_on, payload) \
                 SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::uuid[], \
                 $5::varchar[], $6::timestamptz[], $7::jsonb[]) \
                 ON CONFLICT (event_id) DO NOTHING"
            ))
            .expect("prepare the insert");
        let read = StreamReadOptions::default()
            .group("bench", &self.consumer)
            .count(self.count)
            .block(100);
        while !stop.load(Ordering::Relaxed) {
            let reply: Option<StreamReadReply> = self
                .redis
                .xread_options(&[&self.stream], &[">"], &read)
                .expect("XREADGROUP");
            let Some(entries) = reply
                .and_then(|reply| reply.keys.into_iter().next())
                .map(|key| key.ids)
            else {
                continue;
            };
            let mut columns = Columns::with_capacity(entries.len());
            let mut ids = Vec::with_capacity(entries.len());
            for entry in entries {
                let Some(Value::BulkString(data)) = entry.map.get("data") else {
                    panic!("entry {} has no `data` field", entry.id);
                };
                let parsed: Entry = serde_json::from_slice(data).expect("a JSON event");
                columns.push(parsed, entry.id.clone());
                ids.push(entry.id);
            }
            self.db
                .execute(
                    &insert,
                    &[
                        &columns.event_id,
                        &columns.stream_id,
                        &columns.event_type,
                        &columns.aggregate_id,
                        &columns.correlation_id,
                        &columns.occurred_on,
                        &columns.payload,
                    ],
                )
                .expect("insert the batch");
            wake.stored();
            let acked: usize = self.redis.xack(&self.stream, "bench", &ids).expect("XACK");
            assert_eq!(
                acked,
                ids.len(),
                "XACK acknowledged fewer entries than read"
            );
        }
    }
}

/// One batch as column arrays, the shape `unnest` takes.
struct Columns {
    event_id: Vec<String>,
    stream_id: Vec<String>,
    event_type: Vec<String>,
    aggregate_id: Vec<uuid::Uuid>,
    correlation_id: Vec<Option<String>>,
    occurred_on: Vec<DateTime<Utc>>,
    payload: Vec<serde_json::Value>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Columns {
            event_id: Vec::with_capacity(n),
            stream_id: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            aggregate_id: Vec::with_capacity(n),
            correlation_id: Vec::with_capacity(n),
            occurred_on: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, entry: Entry, stream_id: String) {
        self.event_id.push(entry.event_id);
        self.stream_id.push(stream_id);
        self.event_type.push(entry.event_type);
        self.aggregate_id.push(entry.aggregate_id);
        self.correlation_id.push(entry.correlation_id);
        self.occurred_on.push(entry.occurred_on);
        self.payload.push(entry.payload);
    }
}

/// A worker thread: claim and mark a batch in one statement, run the handler for each row in
/// that transaction, commit.
struct Worker {
    db: Client,
    table: String,
    claim: usize,
    write: bool,
}

impl Worker {
    fn run(
        mut self,
        stop: &AtomicBool,
        wake: &Wake,
        done: &AtomicU64,
        latencies: &Mutex<Vec<u64>>,
    ) {
        let table = &self.table;
        let claim = self
            .db
            .prepare(&format!(
                "WITH c AS (SELECT id FROM {table} WHERE status = 'pending' \
                 ORDER BY received_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 UPDATE {table} AS t SET status = 'processed', processed_at = now() \
                 FROM c WHERE t.id = c.id RETURNING t.event_id, t.payload"
            ))
            .expect("prepare the claim");
        let effect = self
            .db
            .prepare(&format!(
                "INSERT INTO {table}_effects (event_id) VALUES ($1)"
            ))
            .expect("prepare the handler's write");
        let limit = self.claim as i64;
        while !stop.load(Ordering::Relaxed) {
            let seen = wake.generation();
            let mut tx = self.db.transaction().expect("BEGIN");
            let rows = tx.query(&claim, &[&limit]).expect("claim");
            if rows.is_empty() {
                drop(tx);
                wake.wait_after(seen, Duration::from_millis(100));
                continue;
            }
            for row in &rows {
                // The handler starts here: its latency is measured as eventflow's is.
                let payload: serde_json::Value = row.get(1);
                let sent = payload["sent_at_us"].as_u64().unwrap_or(0);
                latencies.lock().push(micros_now().saturating_sub(sent));
                if self.write {
                    let event_id: &str = row.get(0);
                    tx.execute(&effect, &[&event_id])
                        .expect("the handler's write");
                }
            }
            tx.commit().expect("COMMIT");
            done.fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
    }
}
