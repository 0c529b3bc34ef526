//! Migrating a large live inbox: the longest insert stall while eventflow's migrations are
//! applied to a 1,000,000-row table created from the reference schema, before (every file in
//! one transaction with plain `CREATE INDEX`, as eventflow did until issue 9) and after
//! (concurrent index builds outside a transaction, DDL with a short lock timeout and retries),
//! in the same command.
//!
//! ```text
//! cargo run --release --example migrate_bench -- [--rows 1000000] [--rate 200] [--repeat 1]
//! ```
//! The database comes from `EVENTFLOW_DATABASE_URL` (local default). Each run creates the table
//! `migrate_bench_inbox` from the reference schema (`sql/postgres/inbox/0001_event_inbox.sql`),
//! fills it with `--rows` rows by `generate_series` (99 % processed, 1 % pending), then, while
//! a consumer-like load runs, applies eventflow's migrations 0002-0004 to it:
//! - a writer inserts one row at a time at `--rate` rows per second, each in its own
//!   transaction, as a consumer's reader stores events; each insert's latency is recorded;
//! - a worker claims up to 10 pending rows `FOR UPDATE SKIP LOCKED`, holds them 50 ms (a
//!   handler) and marks them processed, in one transaction, as a consumer's worker does.
//!
//! It reports, per mode, how long the migration took, the inserts made while it ran, and the
//! longest insert during it (the stall a consumer's reader would see) against the longest
//! insert before it started; and the ratio of the stalls. The table is dropped afterwards.

use eventflow::store::{InboxStore, Migration, PostgresStore};
use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const TABLE: &str = "migrate_bench_inbox";

/// The reference table (migration 0001) and the files eventflow adds to it.
const FILES: [(u32, &str, &str); 4] = [
    (
        1,
        "0001_event_inbox.sql",
        include_str!("../sql/postgres/inbox/0001_event_inbox.sql"),
    ),
    (
        2,
        "0002_eventflow_additions.sql",
        include_str!("../sql/postgres/inbox/0002_eventflow_additions.sql"),
    ),
    (
        3,
        "0003_operations.sql",
        include_str!("../sql/postgres/inbox/0003_operations.sql"),
    ),
    (
        4,
        "0004_services.sql",
        include_str!("../sql/postgres/inbox/0004_services.sql"),
    ),
];

struct Options {
    rows: i64,
    rate: u32,
    repeat: usize,
}

fn options() -> Options {
    let mut options = Options {
        rows: 1_000_000,
        rate: 200,
        repeat: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--rows" => options.rows = value.parse().expect("--rows N"),
            "--rate" => options.rate = value.parse().expect("--rate N"),
            "--repeat" => options.repeat = value.parse().expect("--repeat N"),
            other => panic!("unknown argument {other}; see the example's docs"),
        }
    }
    options
}

fn url() -> String {
    std::env::var("EVENTFLOW_DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_string())
}

fn connect() -> Client {
    Client::connect(&url(), NoTls).expect("connect to PostgreSQL")
}

fn migration(index: usize) -> Migration {
    let (version, name, sql) = FILES[index];
    Migration { version, name, sql }
}

/// Drops the table and what eventflow recorded about it.
fn drop_table(client: &mut Client) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}_quarantine, {TABLE};
             DROP SEQUENCE IF EXISTS {TABLE}_seq;
             DELETE FROM eventflow_migrations WHERE target = 'inbox:{TABLE}';
             DELETE FROM eventflow_inbox_owners WHERE inbox_table = '{TABLE}';"
        ))
        .or_else(|_| {
            client.batch_execute(&format!(
                "DROP TABLE IF EXISTS {TABLE}_quarantine, {TABLE}; \
                 DROP SEQUENCE IF EXISTS {TABLE}_seq"
            ))
        })
        .expect("drop the bench table");
}

/// The reference table holding `rows` rows, 1 % of them pending; nothing of eventflow's yet.
fn create_reference(client: &mut Client, rows: i64) {
    drop_table(client);
    client
        .batch_execute(&migration(0).render(TABLE))
        .expect("create the reference table");
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "INSERT INTO {TABLE} (event_id, stream_id, event_type, aggregate_id, occurred_on, \
             payload, status, processed_at, received_at)
             SELECT 'seed-' || i, i || '-0', 'OrderCreated', gen_random_uuid(), now(),
                    jsonb_build_object('order', i),
                    CASE WHEN i % 100 = 0 THEN 'pending' ELSE 'processed' END,
                    CASE WHEN i % 100 = 0 THEN NULL ELSE now() END,
                    now() - (({rows} - i) * interval '1 millisecond')
             FROM generate_series(1, {rows}) AS i"
        ))
        .expect("seed the reference table");
    client
        .batch_execute(&format!("VACUUM ANALYZE {TABLE}"))
        .expect("vacuum the reference table");
    println!(
        "  seeded {rows} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Insert latencies, each with when it started.
#[derive(Default)]
struct Inserts(Vec<(Instant, Duration)>);

/// A consumer-like load: a paced single-row writer and a claiming worker.
struct Load {
    stop: Arc<AtomicBool>,
    inserts: Arc<Mutex<Inserts>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(rate: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let inserts = Arc::new(Mutex::new(Inserts::default()));
        let writer = {
            let (stop, inserts) = (stop.clone(), inserts.clone());
            thread::spawn(move || {
                let mut client = connect();
                let insert = format!(
                    "INSERT INTO {TABLE} (event_id, stream_id, event_type, aggregate_id, \
                     occurred_on, payload) VALUES ($1, '1-0', 'OrderCreated', \
                     gen_random_uuid(), now(), '{{}}')"
                );
                let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
                let mut next = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    n += 1;
                    client
                        .execute(&insert, &[&format!("live-{}-{n}", uuid::Uuid::new_v4())])
                        .expect("insert");
                    inserts.lock().unwrap().0.push((started, started.elapsed()));
                    next += period;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    } else {
                        next = Instant::now();
                    }
                }
            })
        };
        let worker = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut client = connect();
                while !stop.load(Ordering::Relaxed) {
                    let mut tx = client.transaction().expect("begin");
                    let ids: Vec<uuid::Uuid> = tx
                        .query(
                            &format!(
                                "SELECT id FROM {TABLE} WHERE status = 'pending' \
                                 ORDER BY received_at LIMIT 10 FOR UPDATE SKIP LOCKED"
                            ),
                            &[],
                        )
                        .expect("claim")
                        .iter()
                        .map(|row| row.get(0))
                        .collect();
                    thread::sleep(Duration::from_millis(50)); // the handler
                    tx.execute(
                        &format!(
                            "UPDATE {TABLE} SET status = 'processed', processed_at = now() \
                             WHERE id = ANY($1)"
                        ),
                        &[&ids],
                    )
                    .expect("mark processed");
                    tx.commit().expect("commit");
                }
            })
        };
        Self {
            stop,
            inserts,
            threads: vec![writer, worker],
        }
    }

    fn stop(self) -> Inserts {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("load thread");
        }
        std::mem::take(&mut *self.inserts.lock().unwrap())
    }
}

/// The files as eventflow applied them until issue 9: all in one transaction, every index
/// built with a plain `CREATE INDEX` (which blocks inserts for the whole build).
fn migrate_plain(client: &mut Client) {
    let mut tx = client.transaction().expect("begin");
    for index in 1..FILES.len() {
        let sql = migration(index).render(TABLE).replace("CONCURRENTLY ", "");
        tx.batch_execute(&sql).expect("apply");
    }
    tx.commit().expect("commit");
}

/// The files as eventflow applies them now.
fn migrate_eventflow(client: &mut Client) {
    // 0001 is recorded as applied, as on a database the reference toolkit created and
    // eventflow adopted: the table exists, only eventflow's additions remain.
    let store = PostgresStore::builder(url())
        .table(TABLE)
        .pool_size(1)
        .build()
        .expect("store");
    let _ = client.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS eventflow_migrations (
            target VARCHAR(255) NOT NULL, version INTEGER NOT NULL, name VARCHAR(255) NOT NULL,
            applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
            PRIMARY KEY (target, version));
         INSERT INTO eventflow_migrations (target, version, name)
         VALUES ('inbox:{TABLE}', 1, '0001_event_inbox.sql') ON CONFLICT DO NOTHING"
    ));
    store.migrate().expect("migrate");
}

struct Outcome {
    migration: Duration,
    during: usize,
    stall: Duration,
    before: Duration,
}

fn run(mode: &str, options: &Options) -> Outcome {
    println!("{mode}:");
    let mut client = connect();
    create_reference(&mut client, options.rows);
    let load = Load::start(options.rate);
    thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    match mode {
        "plain" => migrate_plain(&mut client),
        _ => migrate_eventflow(&mut client),
    }
    let migration = started.elapsed();
    let ended = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let inserts = load.stop();
    // An insert stalled by the migration started before it ended and ended after it started.
    let during: Vec<Duration> = inserts
        .0
        .iter()
        .filter(|(at, took)| *at < ended && *at + *took > started)
        .map(|(_, took)| *took)
        .collect();
    let before = inserts
        .0
        .iter()
        .filter(|(at, took)| *at + *took <= started)
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    let outcome = Outcome {
        migration,
        during: during.len(),
        stall: during.iter().copied().max().unwrap_or_default(),
        before,
    };
    println!(
        "  migration {:.2} s; {} inserts during it; longest insert during it {:.0} ms \
         (before it: {:.1} ms)",
        outcome.migration.as_secs_f64(),
        outcome.during,
        outcome.stall.as_secs_f64() * 1e3,
        outcome.before.as_secs_f64() * 1e3,
    );
    drop_table(&mut client);
    outcome
}

fn main() {
    let options = options();
    println!(
        "migrating a {}-row reference table while a writer inserts {} rows/s and a worker \
         claims (50 ms per batch), {} run(s) per mode",
        options.rows, options.rate, options.repeat
    );
    let mut results: Vec<(Outcome, Outcome)> = Vec::new();
    for _ in 0..options.repeat {
        let plain = run("plain", &options);
        let eventflow = run("eventflow", &options);
        results.push((plain, eventflow));
    }
    println!();
    println!("mode       migration   longest insert stall   inserts during");
    for (plain, eventflow) in &results {
        for (name, outcome) in [("plain", plain), ("eventflow", eventflow)] {
            println!(
                "{name:<10} {:>7.2} s   {:>14.0} ms      {:>8}",
                outcome.migration.as_secs_f64(),
                outcome.stall.as_secs_f64() * 1e3,
                outcome.during
            );
        }
        println!(
            "stall ratio plain / eventflow: {:.0}x; migration time ratio eventflow / plain: {:.1}x",
            plain.stall.as_secs_f64() / eventflow.stall.as_secs_f64().max(1e-6),
            eventflow.migration.as_secs_f64() / plain.migration.as_secs_f64().max(1e-6)
        );
    }
}
