//! **Takeover.** With `--takeover`, two consumer processes (this program run again with
//! `--takeover-child`) share a backlog of `--events`; the one whose handler is slow (1 ms per
//! event, so rows it stored always wait for its workers) is SIGKILLed once a tenth of the
//! backlog is processed. The run measures the time from the kill until every row stored before
//! it is processed: with process leases (the default), and as the baseline without them, where
//! the dead process's rows wait for `orphan_after` (10 s). Both run `--repeat` times,
//! alternating; it reports min / median / max and the ratio of the medians.

use super::{cleanup, setup, Options};
use eventflow::transport::{RedisStreams, Transport};
use eventflow::{Event, HandlerResult, InboxConsumer};
use postgres::{Client, NoTls};
use serde_json::json;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The consumer process a takeover run starts: `--takeover-child <table> <stream> <slow|fast>
/// <leases|no-leases>`. Runs until killed.
pub fn child(args: &[String], options: &Options) -> ! {
    let [table, stream, speed, leases] = args else {
        panic!("--takeover-child <table> <stream> <slow|fast> <leases|no-leases>");
    };
    let pause = Duration::from_millis(u64::from(speed == "slow"));
    let insert = format!("INSERT INTO {table}_effects (event_id) VALUES ($1)");
    let _handle = InboxConsumer::builder()
        .postgres(&options.database_url)
        .redis(&options.redis_url)
        .table(table)
        .stream(stream)
        .group("bench")
        .consumer_prefix(speed)
        .workers(options.workers)
        .read_batch(options.read_batch)
        .block(Duration::from_millis(100))
        .process_leases(leases == "leases")
        .handler(move |tx, row| -> HandlerResult {
            std::thread::sleep(pause);
            let insert = tx.prepare_cached(&insert)?;
            tx.execute(&insert, &[&row.event.event_id])?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Runs the takeover scenario with and without leases and prints the spread of each.
pub fn run(options: &Options) {
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..options.repeat {
        with.push(takeover(options, true));
        without.push(takeover(options, false));
    }
    println!(
        "\n{:<52} {:>5} {:>8} {:>8} {:>8}",
        "scenario (kill -> every row stored before it processed)",
        "runs",
        "min s",
        "median s",
        "max s"
    );
    for (name, runs) in [
        (
            "without leases: found by age (orphan_after 10 s)",
            &mut without,
        ),
        ("with process leases (default)", &mut with),
    ] {
        runs.sort();
        println!(
            "{name:<52} {:>5} {:>8.3} {:>8.3} {:>8.3}",
            runs.len(),
            runs[0].as_secs_f64(),
            median(runs).as_secs_f64(),
            runs[runs.len() - 1].as_secs_f64()
        );
    }
    println!(
        "ratio of the medians (without / with): {:.1}x",
        median(&without).as_secs_f64() / median(&with).as_secs_f64()
    );
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// One run: the time from the SIGKILL until every row stored before it is processed.
fn takeover(options: &Options, leases: bool) -> Duration {
    let setup = setup(options, "bench_takeover");
    let (table, stream) = (&setup.table, &setup.stream);
    publish(&setup.redis, stream, options.events);
    let leases = if leases { "leases" } else { "no-leases" };
    let mut doomed = spawn(table, stream, "slow", leases);
    let mut survivor = spawn(table, stream, "fast", leases);
    let mut db = Client::connect(&options.database_url, NoTls).unwrap();
    let processed = format!("SELECT count(*) FROM {table} WHERE status = 'processed'");
    let count = |db: &mut Client, sql: &str| -> i64 { db.query_one(sql, &[]).unwrap().get(0) };
    let started = Instant::now();
    while count(&mut db, &processed) < (options.events / 10) as i64 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    doomed.kill().unwrap();
    let killed_at = Instant::now();
    doomed.wait().unwrap();
    // Rows stored before the kill (the dead process stores nothing after it).
    let open: Vec<uuid::Uuid> = db
        .query(
            &format!("SELECT id FROM {table} WHERE status <> 'processed'"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let still_open =
        format!("SELECT count(*) FROM {table} WHERE id = ANY($1) AND status <> 'processed'");
    loop {
        let left: i64 = db.query_one(&still_open, &[&open]).unwrap().get(0);
        if left == 0 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(120),
            "rows never taken"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = killed_at.elapsed();
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    eprintln!(
        "takeover ({leases}): {} rows open at the kill, all processed {elapsed:?} after it",
        open.len()
    );
    cleanup(options, table, stream);
    elapsed
}

fn spawn(table: &str, stream: &str, speed: &str, leases: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--takeover-child", table, stream, speed, leases])
        .spawn()
        .unwrap()
}

fn publish(redis: &RedisStreams, stream: &str, n: usize) {
    let entries: Vec<_> = (0..n)
        .map(|i| {
            Event::new("BenchEvent", uuid::Uuid::new_v4(), json!({ "i": i })).to_entry_fields()
        })
        .collect();
    for chunk in entries.chunks(1000) {
        redis.publish_batch(stream, chunk).unwrap();
    }
}
