//! Throughput and latency of the inbox consumer against the real PostgreSQL and Redis, with a
//! baseline run in the same command: the one-transaction-per-event design of the reference
//! toolkit (store each entry in its own transaction and acknowledge it alone; claim, handle and
//! commit one row per transaction).
//!
//! ```text
//! cargo run --release --example bench -- [--events 20000] [--baseline-events 3000] [--workers 4]
//!                                         [--readers 2] [--read-batch 500] [--claim-batch 64]
//!                                         [--rate 2000 (0 skips the paced run)] [--repeat 3]
//! ```
//! URLs come from `EVENTFLOW_DATABASE_URL` and `EVENTFLOW_REDIS_URL` (local defaults).
//! Throughput is measured from the first XADD to the last row committed as processed, with the
//! producer sending as fast as it can; latency from each event's XADD to the start of its
//! handler. Under a flood, latency is mostly time spent queued, so a last run paces the producer
//! at `--rate` events per second to show the latency of a consumer that keeps up. Each flood
//! scenario runs `--repeat` times and the median run is reported (`--baseline-events 0` skips
//! the baseline).

use eventflow::store::{InboxStore, PostgresStore};
use eventflow::transport::{ReadRequest, RedisStreams, Transport};
use eventflow::{Event, HandlerResult, InboxConsumer, InboxRow};
use parking_lot::Mutex;
use postgres::{Client, NoTls};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Options {
    events: usize,
    baseline_events: usize,
    workers: usize,
    readers: usize,
    read_batch: usize,
    claim_batch: usize,
    rate: usize,
    repeat: usize,
    database_url: String,
    redis_url: String,
}

struct Outcome {
    name: String,
    events: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or(0) as f64 / 1000.0
    }
}

fn main() {
    let options = parse_options();
    let repeat = |run: &dyn Fn() -> Outcome| median((0..options.repeat).map(|_| run()).collect());
    let mut outcomes = Vec::new();
    if options.baseline_events > 0 {
        outcomes.push(repeat(&|| baseline(&options)));
    }
    outcomes.push(repeat(&|| eventflow_run(&options, false, None)));
    outcomes.push(repeat(&|| eventflow_run(&options, true, None)));
    if options.rate > 0 {
        outcomes.push(eventflow_run(&options, true, Some(options.rate)));
    }

    let base = outcomes[0].rate();
    println!(
        "\n{:<48} {:>7} {:>8} {:>10} {:>9} {:>9} {:>8}",
        "scenario", "events", "seconds", "events/s", "p50 ms", "p99 ms", "ratio"
    );
    for outcome in &outcomes {
        println!(
            "{:<48} {:>7} {:>8.2} {:>10.0} {:>9.1} {:>9.1} {:>7.1}x",
            outcome.name,
            outcome.events,
            outcome.elapsed.as_secs_f64(),
            outcome.rate(),
            outcome.percentile_ms(0.50),
            outcome.percentile_ms(0.99),
            outcome.rate() / base
        );
    }
    println!("ratio: events/s relative to the baseline in the first row, same machine, same run");
}

/// The run with the median rate; the machine is shared with the servers, so single runs vary.
fn median(mut runs: Vec<Outcome>) -> Outcome {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let rates: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.rate())).collect();
    eprintln!(
        "{}: events/s of {} runs: {}",
        runs[0].name,
        runs.len(),
        rates.join(", ")
    );
    runs.swap_remove(runs.len() / 2)
}

fn parse_options() -> Options {
    let mut options = Options {
        events: 20_000,
        baseline_events: 3_000,
        workers: 4,
        readers: 2,
        read_batch: 500,
        claim_batch: 64,
        rate: 2000,
        repeat: 3,
        database_url: std::env::var("EVENTFLOW_DATABASE_URL")
            .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into()),
        redis_url: std::env::var("EVENTFLOW_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = || {
            pair.get(1)
                .and_then(|v| v.parse().ok())
                .expect("a number after the flag")
        };
        match pair[0].as_str() {
            "--events" => options.events = value(),
            "--baseline-events" => options.baseline_events = value(),
            "--workers" => options.workers = value(),
            "--readers" => options.readers = value(),
            "--read-batch" => options.read_batch = value(),
            "--claim-batch" => options.claim_batch = value(),
            "--rate" => options.rate = value(),
            "--repeat" => options.repeat = value(),
            other => panic!("unknown option {other}; see the file's doc comment"),
        }
    }
    options
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Produces `n` events from another thread, each stamped with its send time: in batches of 100
/// as fast as possible, or in batches of 10 paced to `rate` events per second. Returns the time
/// of the first XADD.
fn produce(redis: &RedisStreams, stream: &str, n: usize, rate: Option<usize>) -> Instant {
    let started = Instant::now();
    let redis = redis.clone();
    let stream = stream.to_string();
    let batch = if rate.is_some() { 10 } else { 100 };
    std::thread::spawn(move || {
        for (k, start) in (0..n).step_by(batch).enumerate() {
            if let Some(rate) = rate {
                let due = started + Duration::from_secs_f64((k * batch) as f64 / rate as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let sent_at = micros_now();
            let entries: Vec<_> = (start..(start + batch).min(n))
                .map(|i| {
                    let mut event = Event::new(
                        "BenchEvent",
                        uuid::Uuid::new_v4(),
                        json!({ "sent_at_us": sent_at, "i": i }),
                    );
                    event.event_id = format!("{stream}-{i}");
                    event.to_entry_fields()
                })
                .collect();
            redis.publish_batch(&stream, &entries).expect("XADD");
        }
    });
    started
}

fn latency_of(row: &InboxRow) -> u64 {
    let sent = row.event.payload["sent_at_us"].as_u64().unwrap_or(0);
    micros_now().saturating_sub(sent)
}

fn cleanup(options: &Options, table: &str, stream: &str) {
    let mut client = Client::connect(&options.database_url, NoTls).unwrap();
    let _ = client.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}_effects; DROP TABLE IF EXISTS {table}; \
         DROP TABLE IF EXISTS {table}_quarantine; DELETE FROM eventflow_migrations WHERE target = 'inbox:{table}'"
    ));
    let client = redis::Client::open(options.redis_url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(stream).query(&mut conn);
}

/// A migrated inbox table with its `_effects` table for handlers, a stream name, and Redis.
struct Setup {
    table: String,
    stream: String,
    store: Arc<PostgresStore>,
    redis: RedisStreams,
}

fn setup(options: &Options, prefix: &str) -> Setup {
    let table = unique(prefix);
    let store = Arc::new(
        PostgresStore::builder(&options.database_url)
            .table(&table)
            .pool_size((options.workers + options.readers) as u32 + 2)
            .build()
            .unwrap(),
    );
    store.migrate().unwrap();
    Client::connect(&options.database_url, NoTls)
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE {table}_effects (event_id TEXT NOT NULL)"
        ))
        .unwrap();
    Setup {
        stream: format!("{table}_stream"),
        table,
        store,
        redis: RedisStreams::connect(&options.redis_url).unwrap(),
    }
}

fn eventflow_run(options: &Options, write: bool, rate: Option<usize>) -> Outcome {
    let Setup {
        table,
        stream,
        store,
        redis,
    } = setup(options, "bench");
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(options.events)));
    let seen = latencies.clone();
    let insert = format!("INSERT INTO {table}_effects (event_id) VALUES ($1)");
    let handle = InboxConsumer::builder()
        .transport(redis.clone())
        .store(store.clone())
        .stream(&stream)
        .group("bench")
        .workers(options.workers)
        .readers(options.readers)
        .read_batch(options.read_batch)
        .claim_batch(options.claim_batch)
        .block(Duration::from_millis(100))
        .handler(move |tx, row| -> HandlerResult {
            seen.lock().push(latency_of(row));
            if write {
                let insert = tx.prepare_cached(&insert)?;
                tx.execute(&insert, &[&row.event.event_id])?;
            }
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    let started = produce(&redis, &stream, options.events, rate);
    while handle.stats().processed < options.events as u64 {
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = started.elapsed();
    handle.shutdown(Duration::from_secs(30)).unwrap();
    cleanup(options, &table, &stream);
    let latencies_us = std::mem::take(&mut *latencies.lock());
    Outcome {
        name: format!(
            "eventflow, {} workers, {} handler{}",
            options.workers,
            if write { "one-row write" } else { "no-op" },
            rate.map(|r| format!(", paced {r}/s")).unwrap_or_default()
        ),
        events: options.events,
        elapsed,
        latencies_us,
    }
}

/// The reference toolkit's design, kept simple and honest: one transaction and one XACK per
/// event on the way in, one claimed row per transaction on the way out; workers poll without
/// sleeping so the figure shows the per-event transaction cost, not an idle sleep.
fn baseline(options: &Options) -> Outcome {
    let Setup {
        table,
        stream,
        redis,
        ..
    } = setup(options, "bench_base");
    redis.ensure_group(&stream, "bench").unwrap();
    let n = options.baseline_events;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));

    let mut threads = Vec::new();
    {
        let (redis, stream, stop, url, table) = (
            redis.clone(),
            stream.clone(),
            stop.clone(),
            options.database_url.clone(),
            table.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut db = Client::connect(&url, NoTls).unwrap();
            let insert = db
                .prepare(&format!(
                    "INSERT INTO {table} (event_id, stream_id, event_type, aggregate_id, occurred_on, payload) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING"
                ))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let request =
                    ReadRequest { stream: &stream, group: "bench", consumer: "base", count: 10, block: Duration::from_millis(100) };
                for entry in redis.read_group(&request).unwrap() {
                    let event = Event::from_entry(&entry).unwrap();
                    db.execute(
                        &insert,
                        &[&event.event_id, &entry.id, &event.event_type, &event.aggregate_id, &event.occurred_on, &event.payload],
                    )
                    .unwrap();
                    redis.ack(&stream, "bench", std::slice::from_ref(&entry.id)).unwrap();
                }
            }
        }));
    }
    for _ in 0..options.workers {
        let (stop, done, latencies, url, table) = (
            stop.clone(),
            done.clone(),
            latencies.clone(),
            options.database_url.clone(),
            table.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut db = Client::connect(&url, NoTls).unwrap();
            // Prepared once, as a careful hand-written loop would: the baseline pays for its
            // design (a transaction per event), not for re-parsing SQL.
            let claim = db
                .prepare(&format!(
                    "SELECT id, event_id, payload FROM {table} WHERE status IN ('pending', 'failed') \
                     AND (next_retry_at IS NULL OR next_retry_at <= now()) \
                     ORDER BY received_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                ))
                .unwrap();
            let effect = db
                .prepare(&format!("INSERT INTO {table}_effects (event_id) VALUES ($1)"))
                .unwrap();
            let mark = db
                .prepare(&format!(
                    "UPDATE {table} SET status = 'processed', processed_at = now() WHERE id = $1"
                ))
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let mut tx = db.transaction().unwrap();
                let Some(row) = tx.query_opt(&claim, &[]).unwrap() else {
                    continue;
                };
                let id: uuid::Uuid = row.get(0);
                let event_id: String = row.get(1);
                let payload: serde_json::Value = row.get(2);
                let sent = payload["sent_at_us"].as_u64().unwrap_or(0);
                latencies.lock().push(micros_now().saturating_sub(sent));
                tx.execute(&effect, &[&event_id]).unwrap();
                tx.execute(&mark, &[&id]).unwrap();
                tx.commit().unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = produce(&redis, &stream, n, None);
    while done.load(Ordering::Relaxed) < n as u64 {
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    cleanup(options, &table, &stream);
    let latencies_us = std::mem::take(&mut *latencies.lock());
    Outcome {
        name: format!(
            "baseline: one transaction per event, {} workers",
            options.workers
        ),
        events: n,
        elapsed,
        latencies_us,
    }
}
