//! Throughput and latency of the inbox consumer, or with `--outbox` of the outbox relay, against
//! the real PostgreSQL and Redis, each with a baseline run in the same command.
//!
//! ```text
//! cargo run --release --example bench -- [--events 20000] [--baseline-events 3000] [--workers 4]
//!                                         [--readers 2] [--read-batch 500] [--claim-batch 64]
//!                                         [--rate 2000 (0 skips the paced run)] [--repeat 3]
//!                                         [--floor-read-batch 500] [--floor-claim-batch 512]
//!                                         [--no-floor | --floor-only]
//! cargo run --release --example bench -- --ordered [--events 20000] [--rate 1000] [...]
//! cargo run --release --example bench -- --backlog [--events 1000000] [--workers 4] [...]
//! cargo run --release --example bench -- --outbox [--events 20000] [--baseline-events 3000]
//!                                         [--relay-workers 2] [--relay-batch 500]
//!                                         [--rate 2000] [--repeat 3]
//! cargo run --release --example bench -- --outbox --drains 20 [--events 20000] [...]
//! cargo run --release --example bench -- --takeover [--events 20000] [--repeat 3]
//! cargo run --release --example bench -- --scale [--events 40000] [--repeat 3] [--statements] [...]
//! cargo run --release --example bench -- --writes [--events 20000] [...]
//! cargo run --release --example bench -- --shapes [--events 100000] [--workers 4] [--read-batch 500] [--repeat 3]
//! ```
//! URLs come from `EVENTFLOW_DATABASE_URL` and `EVENTFLOW_REDIS_URL` (local defaults). The
//! floor, the baseline and the naive relay connect to PostgreSQL without TLS, while eventflow
//! uses TLS wherever the server offers it (`sslmode=prefer`, as libpq), so the default database
//! URL says `sslmode=disable` to compare like with like; a URL that leaves TLS on against a
//! server that offers it gets a warning (see [`warn_if_tls_differs`]). Each
//! flood scenario runs `--repeat` times and the median run is reported (`--baseline-events 0`
//! skips the baseline); a last run paces the producer at `--rate` events per second to show the
//! latency of a consumer (or relay) that keeps up, since under a flood latency is mostly time
//! spent queued. Unless `--no-floor`, the floor's one-row loop is paced the same way just
//! before it (unordered inbox runs), so the latency has a hand-written reference too.
//!
//! **Inbox.** The baseline is the one-transaction-per-event design of the reference toolkit
//! (store each entry in its own transaction and acknowledge it alone; claim, handle and commit
//! one row per transaction). Throughput is measured from the first XADD to the last row
//! committed as processed, with the producer sending as fast as it can; latency from each
//! event's XADD to the start of its handler.
//!
//! **Floor.** Next to the inbox scenarios runs the hand-written batched loop a competent
//! engineer would write with no library (see `floor.rs`), with the same events, the same
//! handler and the same thread counts, measured the same way. Each eventflow flood is printed
//! as a multiple of the floor with its handler (no-op or one-row write) in the "vs floor"
//! column. The floors and the eventflow floods run round by round (floor, eventflow, floor,
//! eventflow, ... `--repeat` times), so a slow spell of the shared machine hits both.
//!
//! **Backlog.** With `--backlog`, the consumer drains `--events` events produced before it
//! starts, and the run reports its resident memory and the rate of the first and the last
//! 100,000 (see `backlog.rs`).
//!
//! **Ordered.** With `--ordered`, the eventflow scenarios spread their events over 1,000
//! aggregates (each gets `events / 1000`, in a shuffled interleaving; the other scenarios use a
//! new aggregate per event) and run the one-row-write handler unordered and then with
//! `.ordered(true)`, same settings; a line under the table gives ordered as a share of
//! unordered. The paced runs (unordered, then ordered) show the latency to the handler's start.
//! The ordered runs check that each aggregate's events reach the handler in sending order. The
//! floor runs the one-row write over the same aggregates (it keeps no order: the easier job).
//!
//! **Outbox.** Events are enqueued first (transactions of 100, over 1,000 aggregates), then the
//! relay is started; throughput is measured from `start()` until every row is published. The
//! baseline is a naive relay: one row claimed per transaction and one XADD per row (statements
//! prepared once), with as many threads as the relay has workers. Latency, in the paced run, is
//! from the producer's commit returning to the entry being read from the stream by a blocked
//! `XREADGROUP`, so it shows how fast `LISTEN`/`NOTIFY` wakes the relay.
//!
//! **Drains.** With `--outbox --drains N`, the relay drains the same backlog N times with the
//! publishers waiting out contention the old way (`contention_wait(None)`: a short claim waits
//! the poll interval even while rows another publisher holds remain) and N times the new way
//! (default: at most 10 ms, woken by a sibling's commit), alternating, and reports the spread
//! (min / median / max seconds) of each and the ratio of the medians.
//!
//! **Takeover.** With `--takeover`, how soon the rows a killed consumer process stored are
//! taken by the survivor, with process leases and without (see `takeover.rs`).
//!
//! **Scale.** With `--scale`, the rate at which 1, 2 and 4 consumer processes drain a backlog on
//! the single Redis and on the Redis Cluster with 1 and 3 partitions, as a multiple of the
//! single node's 1-process rate, with the CPU each process group used (see `scale.rs`).
//!
//! **Shapes.** With `--shapes`, what PostgreSQL alone pays for the same rows written in
//! today's shape (stored pending, then marked processed), in that shape with a HOT update, and
//! written once, as multiples of today's; then the consumer's floods on a table as migrated and
//! on one whose updates are HOT, the bound of that design end to end (see `shapes.rs`).

mod backlog;
mod floor;
mod scale;
mod shapes;
mod takeover;
mod writes;

use eventflow::outbox::{OutboxRelay, OutboxTable};
use eventflow::store::outbox::{OutboxStore, PostgresOutbox};
use eventflow::store::{InboxStore, PostgresStore};
use eventflow::transport::{ReadRequest, RedisStreams, Transport};
use eventflow::{Event, HandlerResult, InboxConsumer, InboxRow};
use parking_lot::Mutex;
use postgres::{Client, NoTls};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Options {
    outbox: bool,
    /// Measure a backlog's memory and the rate at its start and end (see `backlog.rs`).
    backlog: bool,
    /// Run the hand-written floor next to the inbox scenarios (see `floor.rs`); `--no-floor`
    /// skips it.
    floor: bool,
    /// Run only the floors (`--floor-only`), to tune their batch sizes.
    floor_only: bool,
    /// Entries per `XREADGROUP` of the floor's readers. Defaults to 500, the bench's read batch
    /// for eventflow (100 to 1,000 ran alike, within the noise).
    floor_read_batch: usize,
    /// Rows per claim of the floor's workers. Defaults to 512, not the consumer's 64: on the
    /// reference table no index serves `ORDER BY received_at` among pending rows, so each claim
    /// sorts every pending row, and under a flood a small claim pays that sort for few rows (in two
    /// sweeps at 100,000 events, on a machine with a load average of 15 to 30, 64 ran at a third
    /// of the rate or less of 256, 512 and 1,024, which ran alike within the noise).
    floor_claim_batch: usize,
    /// Measure how soon a killed consumer's stored rows are taken over (see `takeover.rs`).
    takeover: bool,
    /// Measure how throughput grows with consumer processes and partitions (see `scale.rs`).
    scale: bool,
    /// Count what PostgreSQL writes per event, from its WAL (see `writes.rs`).
    writes: bool,
    /// Measure what three shapes of writes cost PostgreSQL alone, and the HOT one's bound end
    /// to end (see `shapes.rs`).
    shapes: bool,
    /// With `scale`: the cost of each SQL statement per event, from `pg_stat_statements`.
    statements: bool,
    /// With `outbox`: drain the backlog this many times each way and report the spread.
    drains: usize,
    ordered: bool,
    events: usize,
    baseline_events: usize,
    workers: usize,
    /// Reader threads per stream; the consumer's default when not given.
    readers: Option<usize>,
    read_batch: usize,
    claim_batch: usize,
    rate: usize,
    repeat: usize,
    relay_workers: usize,
    relay_batch: usize,
    database_url: String,
    redis_url: String,
}

struct Outcome {
    name: String,
    events: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    role: Role,
}

/// What a run is in the table, which decides its ratio columns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// The one-transaction-per-event baseline (or the naive relay): 1× in the "vs base" column.
    Baseline,
    /// The hand-written floor with this handler: 1× in the "vs floor" column for it.
    Floor(Handler),
    /// A measured run, divided by the floor with the same handler when it has one (a paced
    /// run's rate is the producer's pace, so it has none).
    Measured(Option<Handler>),
}

/// What an inbox scenario's handler does, which decides the floor it is compared to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Handler {
    /// Nothing: the cost of moving events alone.
    NoOp,
    /// One `INSERT` in the handler's transaction, as a real handler writes its effect.
    OneRow,
}

impl Handler {
    fn describe(self) -> &'static str {
        match self {
            Handler::NoOp => "no-op",
            Handler::OneRow => "one-row write",
        }
    }
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p` quantile in milliseconds, or "-" when the run measured no latency.
    fn percentile_ms(&self, p: f64) -> String {
        percentile_ms(&self.latencies_us, p)
    }
}

/// The `p` quantile of latencies in microseconds, in milliseconds, or "-" when there are none.
fn percentile_ms(latencies_us: &[u64], p: f64) -> String {
    let mut sorted = latencies_us.to_vec();
    sorted.sort_unstable();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).map_or_else(
        || "-".to_string(),
        |us| format!("{:.1}", *us as f64 / 1000.0),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--takeover-child") {
        takeover::child(&args[1..], &parse_options(Vec::new()));
    }
    if args.first().map(String::as_str) == Some("--scale-child") {
        scale::child(&args[1..]);
    }
    let options = parse_options(args);
    warn_if_tls_differs(&options.database_url);
    if options.takeover {
        return takeover::run(&options);
    }
    if options.scale {
        return scale::run(&options);
    }
    if options.backlog {
        return backlog::run(&options);
    }
    if options.writes {
        return writes::run(&options);
    }
    if options.shapes {
        return shapes::run(&options);
    }
    let repeat = |run: &dyn Fn() -> Outcome| median((0..options.repeat).map(|_| run()).collect());
    let mut outcomes = Vec::new();
    let mut ordered_share = None;
    if options.outbox && options.drains > 0 {
        return drains(&options);
    }
    if options.outbox {
        if options.baseline_events > 0 {
            outcomes.push(repeat(&|| naive_relay(&options)));
        }
        outcomes.push(repeat(&|| relay_run(&options, None)));
        if options.rate > 0 {
            outcomes.push(relay_run(&options, Some(options.rate)));
        }
    } else {
        if options.baseline_events > 0 && !options.floor_only {
            outcomes.push(repeat(&|| baseline(&options)));
        }
        let floor = |handler, aggregates: Option<Vec<uuid::Uuid>>| {
            let options = &options;
            move || {
                options
                    .floor
                    .then(|| floor::run(options, handler, aggregates.clone(), None))
            }
        };
        let measured = |scenario| {
            let options = &options;
            move || (!options.floor_only).then(|| eventflow_run(options, scenario))
        };
        if options.ordered {
            let scenario = |ordered, rate| Scenario {
                write: true,
                spread: true,
                ordered,
                rate,
                hot: false,
            };
            let floods = alternate(
                &[
                    &floor(Handler::OneRow, Some(spread_aggregates(options.events))),
                    &measured(scenario(false, None)),
                    &measured(scenario(true, None)),
                ],
                options.repeat,
            );
            // The unordered and ordered floods are the last two.
            if let [.., unordered, ordered] = &floods[..] {
                ordered_share = Some(ordered.rate() / unordered.rate());
            }
            outcomes.extend(floods);
            if options.rate > 0 && !options.floor_only {
                for ordered in [false, true] {
                    let paced = scenario(ordered, Some(options.rate));
                    outcomes.push(eventflow_run(&options, paced));
                }
            }
        } else {
            let flood = |write| Scenario {
                write,
                ..Scenario::default()
            };
            outcomes.extend(alternate(
                &[
                    &floor(Handler::NoOp, None),
                    &measured(flood(false)),
                    &floor(Handler::OneRow, None),
                    &measured(flood(true)),
                ],
                options.repeat,
            ));
            if options.rate > 0 && options.floor {
                let rate = Some(options.rate);
                outcomes.push(floor::run(&options, Handler::OneRow, None, rate));
            }
            if options.rate > 0 && !options.floor_only {
                let paced = Scenario {
                    write: true,
                    rate: Some(options.rate),
                    ..Scenario::default()
                };
                outcomes.push(eventflow_run(&options, paced));
            }
        }
    }
    print_table(&outcomes);
    if let Some(share) = ordered_share {
        println!(
            "ordered / unordered (one-row write, {AGGREGATES} aggregates): {:.0} %",
            100.0 * share
        );
    }
}

/// The results, one row per run, with each rate as a multiple of the baseline's and of the
/// floor's with the same handler ("-" where there is none to divide by).
fn print_table(outcomes: &[Outcome]) {
    let rate_of = |role| outcomes.iter().find(|o| o.role == role).map(Outcome::rate);
    let base = rate_of(Role::Baseline);
    let ratio = |rate: f64, to: Option<f64>| {
        to.map_or_else(|| "-".to_string(), |to| format!("{:.2}x", rate / to))
    };
    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(0)
        .max(48);
    println!(
        "\n{:<width$} {:>7} {:>8} {:>10} {:>9} {:>9} {:>8} {:>8}",
        "scenario", "events", "seconds", "events/s", "p50 ms", "p99 ms", "vs base", "vs floor"
    );
    for outcome in outcomes {
        let floor = match outcome.role {
            Role::Floor(handler) | Role::Measured(Some(handler)) => rate_of(Role::Floor(handler)),
            Role::Baseline | Role::Measured(None) => None,
        };
        println!(
            "{:<width$} {:>7} {:>8.2} {:>10.0} {:>9} {:>9} {:>8} {:>8}",
            outcome.name,
            outcome.events,
            outcome.elapsed.as_secs_f64(),
            outcome.rate(),
            outcome.percentile_ms(0.50),
            outcome.percentile_ms(0.99),
            ratio(outcome.rate(), base),
            ratio(outcome.rate(), floor),
        );
    }
    let floors = outcomes.iter().any(|o| matches!(o.role, Role::Floor(_)));
    println!(
        "vs base: events/s over the baseline's{}; same machine, same command",
        if floors {
            "; vs floor: over the hand-written floor's with the same handler"
        } else {
            ""
        }
    );
}

/// Runs each of `runs` `repeat` times, round by round, so that a slow spell of the shared
/// machine falls on every scenario alike, and returns the median run of each (a run that
/// returns `None`, switched off by `--no-floor` or `--floor-only`, is left out).
fn alternate(runs: &[&dyn Fn() -> Option<Outcome>], repeat: usize) -> Vec<Outcome> {
    let mut results: Vec<Vec<Outcome>> = runs.iter().map(|_| Vec::new()).collect();
    for _ in 0..repeat {
        for (run, results) in runs.iter().zip(&mut results) {
            results.extend(run());
        }
    }
    results
        .into_iter()
        .filter(|runs| !runs.is_empty())
        .map(median)
        .collect()
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

/// Warns when eventflow's connections would use TLS and the hand-written comparisons' (which
/// connect with `NoTls`) would not: on the 2-core benchmark machine, TLS to a local server cost
/// eventflow about a fifth of its one-row rate, in its own process and in the server's, which is
/// the bottleneck.
fn warn_if_tls_differs(database_url: &str) {
    let Ok(config) = database_url.parse::<postgres::Config>() else {
        return;
    };
    if config.get_ssl_mode() == postgres::config::SslMode::Disable {
        return;
    }
    let server_offers_tls = Client::connect(database_url, NoTls)
        .and_then(|mut db| db.query_one("SHOW ssl", &[]))
        .is_ok_and(|row| row.get::<_, String>(0) == "on");
    if server_offers_tls {
        eprintln!(
            "warning: eventflow connects with TLS (the server offers it and the URL does not say \
             sslmode=disable), while the floor, the baseline and the naive relay connect without; \
             add sslmode=disable to the URL to compare like with like"
        );
    }
}

fn parse_options(args: Vec<String>) -> Options {
    let mut options = Options {
        outbox: false,
        backlog: false,
        floor: true,
        floor_only: false,
        floor_read_batch: 500,
        floor_claim_batch: 512,
        takeover: false,
        scale: false,
        statements: false,
        writes: false,
        shapes: false,
        drains: 0,
        ordered: false,
        events: 20_000,
        baseline_events: 3_000,
        workers: 4,
        readers: None,
        read_batch: 500,
        claim_batch: 64,
        rate: 2000,
        repeat: 3,
        relay_workers: 2,
        relay_batch: 500,
        database_url: std::env::var("EVENTFLOW_DATABASE_URL")
            .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test sslmode=disable".into()),
        redis_url: std::env::var("EVENTFLOW_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .and_then(|v| v.parse().ok())
                .expect("a number after the flag")
        };
        match flag.as_str() {
            "--outbox" => options.outbox = true,
            "--ordered" => options.ordered = true,
            "--takeover" => options.takeover = true,
            "--scale" => options.scale = true,
            "--statements" => options.statements = true,
            "--writes" => options.writes = true,
            "--shapes" => options.shapes = true,
            "--backlog" => options.backlog = true,
            "--no-floor" => options.floor = false,
            "--floor-only" => options.floor_only = true,
            "--events" => options.events = value(),
            "--baseline-events" => options.baseline_events = value(),
            "--workers" => options.workers = value(),
            "--readers" => options.readers = Some(value()),
            "--read-batch" => options.read_batch = value(),
            "--claim-batch" => options.claim_batch = value(),
            "--rate" => options.rate = value(),
            "--repeat" => options.repeat = value(),
            "--relay-workers" => options.relay_workers = value(),
            "--relay-batch" => options.relay_batch = value(),
            "--drains" => options.drains = value(),
            "--floor-read-batch" => options.floor_read_batch = value(),
            "--floor-claim-batch" => options.floor_claim_batch = value(),
            other => panic!("unknown option {other}; see the file's doc comment"),
        }
    }
    assert!(
        options.floor || !options.floor_only,
        "--no-floor and --floor-only leave nothing to run"
    );
    for (flag, value) in [
        ("--repeat", options.repeat),
        ("--floor-read-batch", options.floor_read_batch),
        ("--floor-claim-batch", options.floor_claim_batch),
    ] {
        assert!(value > 0, "{flag} must be at least 1");
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

/// Reader threads per stream when `--readers` is not given: the consumer's default, which the
/// floor then uses too.
const DEFAULT_READERS: usize = 2;

/// Aggregates the `--ordered` scenarios (and the outbox scenarios) spread their events over.
const AGGREGATES: usize = 1_000;

/// The aggregate of each of `n` events: `AGGREGATES` random ids, each given `n / AGGREGATES`
/// events (one more for the first `n % AGGREGATES`), interleaved in a shuffled order that is the
/// same in every run (a fixed seed), so repeated runs measure the same workload.
fn spread_aggregates(n: usize) -> Vec<uuid::Uuid> {
    let ids: Vec<uuid::Uuid> = (0..AGGREGATES).map(|_| uuid::Uuid::new_v4()).collect();
    let mut order: Vec<usize> = (0..n).map(|i| i % AGGREGATES).collect();
    // Fisher-Yates with xorshift64*: no dependency for a shuffle that need not be strong.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let j = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order.into_iter().map(|k| ids[k]).collect()
}

/// Produces `n` events from another thread, each stamped with its send time: in batches of 100
/// as fast as possible, or in batches of 10 paced to `rate` events per second. Event `i` belongs
/// to `aggregates[i]`, or with none given to an aggregate of its own. Returns the time of the
/// first XADD.
fn produce(
    redis: &RedisStreams,
    stream: &str,
    n: usize,
    rate: Option<usize>,
    aggregates: Option<Vec<uuid::Uuid>>,
) -> Producer {
    let started = Instant::now();
    let redis = redis.clone();
    let stream = stream.to_string();
    let batch = if rate.is_some() { 10 } else { 100 };
    let thread = std::thread::spawn(move || {
        for (k, start) in (0..n).step_by(batch).enumerate() {
            if let Some(rate) = rate {
                let due = started + Duration::from_secs_f64((k * batch) as f64 / rate as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let sent_at = micros_now();
            let entries: Vec<_> = (start..(start + batch).min(n))
                .map(|i| {
                    let aggregate = aggregates
                        .as_ref()
                        .map_or_else(uuid::Uuid::new_v4, |a| a[i]);
                    let mut event = Event::new(
                        "BenchEvent",
                        aggregate,
                        json!({ "sent_at_us": sent_at, "i": i }),
                    );
                    event.event_id = format!("{stream}-{i}");
                    event.to_entry_fields()
                })
                .collect();
            redis.publish_batch(&stream, &entries).expect("XADD");
        }
    });
    Producer {
        started,
        thread: Some(thread),
    }
}

/// The producer thread of a run, and when it started.
struct Producer {
    started: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    /// Waits until every event is sent; ends the bench with the producer's error if it failed.
    fn finish(mut self) {
        if let Err(panic) = self.thread.take().expect("producer").join() {
            panic!("the producer failed: {}", panic_text(&*panic));
        }
    }

    /// Waits until `done()` reaches `n`; returns the time from the first `XADD`. Ends the bench
    /// with the producer's error if it failed, rather than waiting for events never sent.
    fn wait_for(mut self, n: usize, done: impl Fn() -> u64) -> Duration {
        while done() < n as u64 {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                if let Err(panic) = self.thread.take().expect("producer").join() {
                    panic!(
                        "the producer failed after {} of {n} events handled: {}",
                        done(),
                        panic_text(&*panic)
                    );
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        self.started.elapsed()
    }
}

/// What a panic said, when it said it with a string.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// From the event's XADD to the moment its reader's read returned (`received_at`, from the
/// reader's clock).
fn read_latency_of(row: &InboxRow) -> u64 {
    let sent = row.event.payload["sent_at_us"].as_u64().unwrap_or(0);
    (row.received_at.timestamp_micros().max(0) as u64).saturating_sub(sent)
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
            .pool_size((options.workers + options.readers.unwrap_or(DEFAULT_READERS)) as u32 + 2)
            .build()
            .unwrap(),
    );
    store.migrate().unwrap();
    let mut db = Client::connect(&options.database_url, NoTls).unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE {table}_effects (event_id TEXT NOT NULL)"
    ))
    .unwrap();
    checkpoint(&mut db);
    Setup {
        stream: format!("{table}_stream"),
        table,
        store,
        redis: RedisStreams::connect(&options.redis_url).unwrap(),
    }
}

/// Starts a run on a fresh checkpoint where the role may (a superuser, or `pg_checkpoint`), so
/// that no run is slowed by a checkpoint that an earlier run's WAL set off, and each pays alike
/// for the full-page images of the pages it is first to change after one.
fn checkpoint(db: &mut Client) {
    let _ = db.batch_execute("CHECKPOINT");
}

/// One eventflow inbox scenario.
#[derive(Clone, Copy, Default)]
struct Scenario {
    /// The handler inserts a row in the same transaction; else it does nothing.
    write: bool,
    /// Events spread over `AGGREGATES` aggregates; else an aggregate per event.
    spread: bool,
    /// The consumer runs with `.ordered(true)`.
    ordered: bool,
    /// Events per second the producer is paced to; else as fast as it can.
    rate: Option<usize>,
    /// The table's partial indexes on `status` are dropped before the run, so the update that
    /// marks a row processed is HOT (see `shapes.rs`). Not a table eventflow supports (its
    /// sweeps and operations need those indexes): the most writing less could win end to end.
    hot: bool,
}

impl Scenario {
    fn handler(&self) -> Handler {
        if self.write {
            Handler::OneRow
        } else {
            Handler::NoOp
        }
    }

    fn name(&self, options: &Options) -> String {
        let mut name = format!(
            "eventflow{}, {} workers, {} handler",
            if self.ordered { " ordered" } else { "" },
            options.workers,
            self.handler().describe(),
        );
        if self.spread {
            name += &format!(", {AGGREGATES} aggregates");
        }
        if let Some(rate) = self.rate {
            name += &format!(", paced {rate}/s");
        }
        if self.hot {
            name += ", HOT (no status indexes)";
        }
        name
    }
}

fn eventflow_run(options: &Options, scenario: Scenario) -> Outcome {
    let Setup {
        table,
        stream,
        store,
        redis,
    } = setup(options, "bench");
    if scenario.hot {
        shapes::drop_status_indexes(&options.database_url, &table);
    }
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(options.events)));
    let seen = latencies.clone();
    // Of each latency, the part before the reader had the event (XADD to `received_at`, taken
    // as the read returned), to show where a paced run's time goes.
    let read_latencies = Arc::new(Mutex::new(Vec::with_capacity(options.events)));
    let read_seen = read_latencies.clone();
    // The last event index each aggregate's handler saw, to check the order ordered mode keeps.
    let last_seen = Arc::new(Mutex::new(HashMap::<uuid::Uuid, u64>::new()));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let (last, disorder) = (last_seen.clone(), out_of_order.clone());
    let insert = format!("INSERT INTO {table}_effects (event_id) VALUES ($1)");
    let Scenario { write, ordered, .. } = scenario;
    let mut builder = InboxConsumer::builder()
        .transport(redis.clone())
        .store(store.clone())
        .stream(&stream)
        .group("bench")
        .workers(options.workers);
    if let Some(readers) = options.readers {
        builder = builder.readers(readers);
    }
    let handle = builder
        .read_batch(options.read_batch)
        .claim_batch(options.claim_batch)
        .block(Duration::from_millis(100))
        .ordered(ordered)
        .handler(move |tx, row| -> HandlerResult {
            seen.lock().push(latency_of(row));
            read_seen.lock().push(read_latency_of(row));
            if ordered {
                let i = row.event.payload["i"].as_u64().unwrap_or(0);
                // A rolled-back batch runs its handlers again (same index): only an earlier
                // index after a later one breaks the order.
                let mut last = last.lock();
                let previous = last.insert(row.event.aggregate_id, i);
                if previous.is_some_and(|previous| previous > i) {
                    disorder.fetch_add(1, Ordering::Relaxed);
                }
            }
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
    let aggregates = scenario.spread.then(|| spread_aggregates(options.events));
    let elapsed = produce(&redis, &stream, options.events, scenario.rate, aggregates)
        .wait_for(options.events, || handle.stats().processed);
    handle.shutdown(Duration::from_secs(30)).unwrap();
    cleanup(options, &table, &stream);
    let out_of_order = out_of_order.load(Ordering::Relaxed);
    assert_eq!(
        out_of_order, 0,
        "ordered mode handled {out_of_order} events before an earlier one of their aggregate"
    );
    let latencies_us = std::mem::take(&mut *latencies.lock());
    if scenario.rate.is_some() {
        let read = read_latencies.lock();
        eprintln!(
            "{}: XADD to read p50 {} ms, p99 {} ms (the rest is storing and handing over)",
            scenario.name(options),
            percentile_ms(&read, 0.5),
            percentile_ms(&read, 0.99)
        );
    }
    Outcome {
        name: scenario.name(options),
        events: options.events,
        elapsed,
        latencies_us,
        // A paced run's rate is the producer's pace: no floor to divide by.
        role: Role::Measured(scenario.rate.is_none().then_some(scenario.handler())),
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
    let elapsed =
        produce(&redis, &stream, n, None, None).wait_for(n, || done.load(Ordering::Relaxed));
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
        role: Role::Baseline,
    }
}

/// A migrated outbox table of its own, the stream its rows go to, and the aggregates.
struct OutboxSetup {
    table: OutboxTable,
    stream: String,
    aggregates: Vec<uuid::Uuid>,
}

fn outbox_setup(options: &Options, prefix: &str) -> OutboxSetup {
    let table = unique(prefix);
    PostgresOutbox::builder(&options.database_url)
        .table(&table)
        .pool_size(1)
        .build()
        .unwrap()
        .migrate()
        .unwrap();
    OutboxSetup {
        stream: format!("{table}_stream"),
        table: OutboxTable::named(table).unwrap(),
        aggregates: (0..AGGREGATES).map(|_| uuid::Uuid::new_v4()).collect(),
    }
}

impl OutboxSetup {
    fn events(&self, range: std::ops::Range<usize>) -> Vec<Event> {
        range
            .map(|i| {
                let aggregate = self.aggregates[i % self.aggregates.len()];
                let mut event = Event::new("BenchEvent", aggregate, json!({ "i": i }));
                event.event_id = format!("{}-{i}", self.stream);
                event
            })
            .collect()
    }

    /// Enqueues `n` events in transactions of 100.
    fn enqueue_all(&self, options: &Options, n: usize) {
        let mut client = Client::connect(&options.database_url, NoTls).unwrap();
        for start in (0..n).step_by(100) {
            let mut tx = client.transaction().unwrap();
            self.table
                .enqueue_batch(
                    &mut tx,
                    &self.stream,
                    self.events(start..(start + 100).min(n)),
                )
                .unwrap();
            tx.commit().unwrap();
        }
    }

    fn cleanup(&self, options: &Options) {
        let table = self.table.name();
        let mut client = Client::connect(&options.database_url, NoTls).unwrap();
        let _ = client.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; DELETE FROM eventflow_migrations WHERE target = 'outbox:{table}'"
        ));
        let client = redis::Client::open(options.redis_url.as_str()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.stream).query(&mut conn);
    }
}

/// The eventflow relay: with `rate` unset, over a backlog of `--events` rows, from `start()`
/// until the last is published; with `rate`, while a producer enqueues at that pace, measuring
/// the latency from each commit to its entry being read from the stream.
fn relay_run(options: &Options, rate: Option<usize>) -> Outcome {
    let setup = outbox_setup(options, "bench_outbox");
    let n = options.events;
    let relay = OutboxRelay::builder()
        .postgres(&options.database_url)
        .redis(&options.redis_url)
        .table(setup.table.name())
        .workers(options.relay_workers)
        .batch_size(options.relay_batch)
        .retention(None)
        .build()
        .unwrap();
    let name = format!(
        "eventflow relay, {} workers, batch {}{}",
        options.relay_workers,
        options.relay_batch,
        rate.map(|r| format!(", paced {r}/s")).unwrap_or_default()
    );
    let Some(rate) = rate else {
        setup.enqueue_all(options, n);
        let started = Instant::now();
        let handle = relay.start().unwrap();
        while handle.stats().published < n as u64 {
            std::thread::sleep(Duration::from_micros(500));
        }
        let elapsed = started.elapsed();
        handle.shutdown(Duration::from_secs(30)).unwrap();
        setup.cleanup(options);
        return Outcome {
            name,
            events: n,
            elapsed,
            latencies_us: Vec::new(),
            role: Role::Measured(None),
        };
    };

    let handle = relay.start().unwrap();
    let redis = RedisStreams::connect(&options.redis_url).unwrap();
    redis.ensure_group(&setup.stream, "bench").unwrap();
    let committed_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    // The reader: a blocked XREADGROUP, stamping when each entry arrives.
    let reader = {
        let stream = setup.stream.clone();
        std::thread::spawn(move || {
            let mut arrived = vec![0u64; n];
            let mut seen = 0;
            while seen < n {
                let request = ReadRequest {
                    stream: &stream,
                    group: "bench",
                    consumer: "reader",
                    count: 1_000,
                    block: Duration::from_millis(100),
                };
                for entry in redis.read_group(&request).expect("XREADGROUP") {
                    let now = micros_now();
                    let event = Event::from_entry(&entry).expect("an outbox entry");
                    let i = event.payload["i"].as_u64().unwrap() as usize;
                    if arrived[i] == 0 {
                        arrived[i] = now;
                        seen += 1;
                    }
                }
            }
            arrived
        })
    };
    let mut client = Client::connect(&options.database_url, NoTls).unwrap();
    let started = Instant::now();
    let batch = 10;
    for (k, start) in (0..n).step_by(batch).enumerate() {
        let due = started + Duration::from_secs_f64((k * batch) as f64 / rate as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let end = (start + batch).min(n);
        let mut tx = client.transaction().unwrap();
        setup
            .table
            .enqueue_batch(&mut tx, &setup.stream, setup.events(start..end))
            .unwrap();
        tx.commit().unwrap();
        let now = micros_now();
        for at in &committed_at[start..end] {
            at.store(now, Ordering::Relaxed);
        }
    }
    let arrived = reader.join().unwrap();
    let elapsed = started.elapsed();
    handle.shutdown(Duration::from_secs(30)).unwrap();
    setup.cleanup(options);
    // An entry can be read before its producer sees the commit return: that counts as zero.
    let latencies_us = arrived
        .iter()
        .zip(committed_at.iter())
        .map(|(arrived, committed)| arrived.saturating_sub(committed.load(Ordering::Relaxed)))
        .collect();
    Outcome {
        name,
        events: n,
        elapsed,
        latencies_us,
        role: Role::Measured(None),
    }
}

/// A naive relay, as a hand-written loop would do it: claim one row per transaction, XADD it,
/// mark it published, commit; statements prepared once, `--relay-workers` threads. It does not
/// keep per-aggregate order across its threads, so it is the easier job.
fn naive_relay(options: &Options) -> Outcome {
    let setup = outbox_setup(options, "bench_naive");
    let n = options.baseline_events;
    setup.enqueue_all(options, n);
    let table = setup.table.name().to_string();
    let started = Instant::now();
    let threads: Vec<_> = (0..options.relay_workers)
        .map(|_| {
            let (url, redis_url, table, stream) = (
                options.database_url.clone(),
                options.redis_url.clone(),
                table.clone(),
                setup.stream.clone(),
            );
            std::thread::spawn(move || {
                let mut db = Client::connect(&url, NoTls).unwrap();
                let redis = RedisStreams::connect(&redis_url).unwrap();
                let claim = db
                    .prepare(&format!(
                        "SELECT id, event_id, event_type, aggregate_id, occurred_on, payload \
                         FROM {table} WHERE status = 'pending' ORDER BY id LIMIT 1 \
                         FOR UPDATE SKIP LOCKED"
                    ))
                    .unwrap();
                let mark = db
                    .prepare(&format!(
                        "UPDATE {table} SET status = 'published', published_at = now(), \
                         stream_entry_id = $2 WHERE id = $1"
                    ))
                    .unwrap();
                loop {
                    let mut tx = db.transaction().unwrap();
                    // The backlog is all there: nothing left to claim means done.
                    let Some(row) = tx.query_opt(&claim, &[]).unwrap() else {
                        return;
                    };
                    let id: i64 = row.get(0);
                    let mut event = Event::new(
                        row.get::<_, String>(2),
                        row.get(3),
                        row.get::<_, serde_json::Value>(5),
                    );
                    event.event_id = row.get(1);
                    event.occurred_on = row.get(4);
                    let entry_id = redis.publish(&stream, event.to_entry_fields()).unwrap();
                    tx.execute(&mark, &[&id, &entry_id]).unwrap();
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let elapsed = started.elapsed();
    setup.cleanup(options);
    Outcome {
        name: format!(
            "naive relay: one row per transaction, {} threads",
            options.relay_workers
        ),
        events: n,
        elapsed,
        latencies_us: Vec::new(),
        role: Role::Baseline,
    }
}

/// One drain of a `--events` backlog over the bench's aggregates: seconds from `start()` until
/// every row is published.
fn drain(options: &Options, contention_wait: Option<Duration>) -> f64 {
    let setup = outbox_setup(options, "bench_drain");
    let n = options.events;
    setup.enqueue_all(options, n);
    let relay = OutboxRelay::builder()
        .postgres(&options.database_url)
        .redis(&options.redis_url)
        .table(setup.table.name())
        .workers(options.relay_workers)
        .batch_size(options.relay_batch)
        .contention_wait(contention_wait)
        .retention(None)
        .build()
        .unwrap();
    let started = Instant::now();
    let handle = relay.start().unwrap();
    while handle.stats().published < n as u64 {
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = started.elapsed().as_secs_f64();
    handle.shutdown(Duration::from_secs(30)).unwrap();
    setup.cleanup(options);
    elapsed
}

/// `--drains`: the spread of drain times with the old and the new contention wait.
fn drains(options: &Options) {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for round in 0..options.drains {
        before.push(drain(options, None));
        after.push(drain(options, Some(Duration::from_millis(10))));
        eprintln!(
            "drain {}: before {:.2} s, after {:.2} s",
            round + 1,
            before[round],
            after[round]
        );
    }
    let spread = |runs: &mut Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        (runs[0], runs[runs.len() / 2], runs[runs.len() - 1])
    };
    let (b, a) = (spread(&mut before), spread(&mut after));
    println!(
        "\n{} drains of {} events over {AGGREGATES} aggregates, {} relay workers, batch {}",
        options.drains, options.events, options.relay_workers, options.relay_batch
    );
    println!(
        "{:<52} {:>8} {:>8} {:>8}",
        "scenario", "min s", "median s", "max s"
    );
    println!(
        "{:<52} {:>8.2} {:>8.2} {:>8.2}",
        "before: short claim waits the poll interval", b.0, b.1, b.2
    );
    println!(
        "{:<52} {:>8.2} {:>8.2} {:>8.2}",
        "after: waits at most 10 ms, woken by a sibling", a.0, a.1, a.2
    );
    println!(
        "median before / after: {:.2}x; max before / after: {:.2}x",
        b.1 / a.1,
        b.2 / a.2
    );
}
