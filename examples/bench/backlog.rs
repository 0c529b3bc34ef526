//! **Backlog.** With `--backlog`, `--events` events (the measurement is meant for 1,000,000)
//! are in the stream before the consumer starts, and an eventflow consumer with the one-row-write
//! handler and the bench's settings drains them. It reports what the backlog costs in memory
//! and whether the rate holds as the table grows: the process's resident memory (`VmRSS` from
//! `/proc/self/status`, read before `start()` and every 50 ms during the drain; `VmHWM`, the
//! peak the kernel recorded, at the end) and the rate of the first and the last window of
//! events (100,000, or a fifth of the backlog when that is less), each from `start()` or from
//! the moment the window's first event was still to be handled. The process runs nothing but
//! the consumer while it drains (the producer has finished), so its memory is the consumer's.

use super::{cleanup, produce, setup, Options, Setup};
use eventflow::{HandlerResult, InboxConsumer};
use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events in each of the windows whose rates are compared, for a large enough backlog.
const WINDOW: usize = 100_000;

/// How often resident memory is sampled during the drain.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Runs the backlog measurement and prints its results.
pub fn run(options: &Options) {
    let Setup {
        table,
        stream,
        store,
        redis,
    } = setup(options, "bench_backlog");
    let n = options.events;
    let window = WINDOW.min(n / 5).max(1);
    let produced = Instant::now();
    produce(&redis, &stream, n, None, None).finish();
    eprintln!(
        "backlog: {n} events in the stream after {:.1} s; draining",
        produced.elapsed().as_secs_f64()
    );

    let insert = format!("INSERT INTO {table}_effects (event_id) VALUES ($1)");
    let mut builder = InboxConsumer::builder()
        .transport(redis.clone())
        .store(store.clone())
        .stream(&stream)
        .group("bench")
        .workers(options.workers)
        .read_batch(options.read_batch)
        .claim_batch(options.claim_batch)
        .block(Duration::from_millis(100));
    if let Some(readers) = options.readers {
        builder = builder.readers(readers);
    }
    let consumer = builder
        .handler(move |tx, row| -> HandlerResult {
            let insert = tx.prepare_cached(&insert)?;
            tx.execute(&insert, &[&row.event.event_id])?;
            Ok(())
        })
        .build()
        .unwrap();

    let rss_before = memory_kib("VmRSS");
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(memory_kib("VmRSS"));
                std::thread::sleep(SAMPLE_EVERY);
            }
            peak
        })
    };
    let started = Instant::now();
    let handle = consumer.start().unwrap();
    let (mut first_window_done, mut last_window_from) = (None, None);
    loop {
        let processed = handle.stats().processed as usize;
        if first_window_done.is_none() && processed >= window {
            first_window_done = Some(started.elapsed());
        }
        if last_window_from.is_none() && processed >= n - window {
            last_window_from = Some(started.elapsed());
        }
        if processed >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let rss_peak = sampler.join().expect("the memory sampler");
    let hwm = memory_kib("VmHWM");
    handle.shutdown(Duration::from_secs(30)).unwrap();
    // Closes the pool's sessions, which report their statistics as they end.
    drop(store);
    std::thread::sleep(Duration::from_millis(500));

    let mut db = Client::connect(&options.database_url, NoTls).unwrap();
    let indexes = index_use(&mut db, &table);
    let mut count = |sql: String| -> i64 { db.query_one(&sql, &[]).unwrap().get(0) };
    let effects = count(format!("SELECT count(*) FROM {table}_effects"));
    let processed = count(format!(
        "SELECT count(*) FROM {table} WHERE status = 'processed'"
    ));
    cleanup(options, &table, &stream);
    assert_eq!(
        (effects, processed),
        (n as i64, n as i64),
        "every event should be handled once (effect rows, processed rows)"
    );

    let first = window as f64 / first_window_done.expect("measured").as_secs_f64();
    let last = window as f64 / (elapsed - last_window_from.expect("measured")).as_secs_f64();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\nbacklog of {n} events, eventflow, {} workers, {} readers, read batch {}, claim batch {}, \
         one-row write handler",
        options.workers,
        options.readers.unwrap_or(super::DEFAULT_READERS),
        options.read_batch,
        options.claim_batch
    );
    println!(
        "drained in {:.1} s: {:.0} events/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "first {window}: {first:.0} events/s; last {window}: {last:.0} events/s; \
         last / first: {:.0} %",
        100.0 * last / first
    );
    println!(
        "resident memory: {:.1} MiB before start(), peak {:.1} MiB while draining (VmRSS every \
         {} ms), VmHWM {:.1} MiB",
        mib(rss_before),
        mib(rss_peak),
        SAMPLE_EVERY.as_millis(),
        mib(hwm)
    );
    let per_event: Vec<String> = indexes
        .iter()
        .map(|(name, buffers, scans)| {
            let short = name.replace(&format!("{table}_"), "").replace(&table, "");
            format!("{short} {:.2} ({scans} scans)", *buffers as f64 / n as f64)
        })
        .collect();
    println!("index buffers per event: {}", per_event.join(", "));
}

/// Each index of `table`: its name, the buffers read through it (from shared buffers or not;
/// walks, probes and the insertion of entries alike) and its scans, as the server counted them.
fn index_use(db: &mut Client, table: &str) -> Vec<(String, i64, i64)> {
    db.query(
        "SELECT io.indexrelname::text, coalesce(io.idx_blks_hit + io.idx_blks_read, 0), \
         coalesce(st.idx_scan, 0) FROM pg_statio_user_indexes AS io \
         JOIN pg_stat_user_indexes AS st USING (indexrelid) \
         WHERE io.relname = $1 ORDER BY 2 DESC",
        &[&table],
    )
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

/// A `kB` line of `/proc/self/status` (`VmRSS`, `VmHWM`), in KiB.
fn memory_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status (the backlog mode needs Linux)");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}
