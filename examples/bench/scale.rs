//! **Scale.** With `--scale`, how the inbox's throughput grows with consumer processes and with
//! partitions, and which process group runs out of CPU first.
//!
//! Each run puts `--events` events in the stream(s) first, one fresh aggregate per event, and
//! only then starts 1, 2 or 4 consumer processes (this program run again with `--scale-child`,
//! each with the bench's `--workers`, `--readers`, `--read-batch` and `--claim-batch` and the
//! one-row-write handler), on:
//! - the single Redis of `EVENTFLOW_REDIS_URL`, one stream: the single-node figure every other
//!   row is divided by (its 1-process median);
//! - the Redis Cluster of `EVENTFLOW_REDIS_CLUSTER_URL` (default: the `.ci/redis-cluster` one),
//!   the stream split into 1 partition, and into 3 (`partitioned_stream`), each event sent to
//!   its aggregate's partition as the relay would.
//!
//! A backlog rather than a flood while consuming: on a machine with few cores a producer running
//! beside the consumers takes CPU from them, and more so the faster they go, so a flood would
//! measure the producer as much as the consumers. Draining a backlog times the consumers alone.
//! The children build their consumers, say they are ready, and are all started at once; a run is
//! timed from that start until the events the children report processed add up to the backlog,
//! and only counts when the inbox table then holds every event stored once and processed, with
//! one effect row each.
//!
//! During each run the bench reads the CPU time (`utime + stime` in `/proc/<pid>/stat`) of the
//! consumer children, of their PostgreSQL backends (found by an `application_name` of the run's
//! own) with the server's WAL writer, background writer and checkpointer, and of the Redis
//! server(s) (every node of the cluster, replicas too; `INFO`'s `process_id`), and the whole
//! machine's busy time from `/proc/stat`; it prints each as cores used on average over the run.
//! The Redis servers and the PostgreSQL background processes are shared with anything else
//! running on the machine, so their figures include that work; "other" is the machine's busy
//! time none of the groups accounts for.
//!
//! With `--statements`, the bench also reads `pg_stat_statements` (which must be loaded by the
//! server and created in the database) before and after each run, for the statements run in the
//! bench's database, and prints the costliest statements of each configuration's median run:
//! calls per 1,000 events, execution time per event and rows per call. Execution time is time
//! spent executing, waits included, not CPU.
//!
//! Every configuration runs `--repeat` times, round by round over all nine, so that a slow spell
//! of the shared machine falls on them alike; the median run of each is reported.

use super::{cleanup, parse_options, setup, Options};
use eventflow::transport::partition::{partition_of, partition_streams};
use eventflow::transport::{RedisStreams, Transport};
use eventflow::{Event, HandlerResult, InboxConsumer};
use postgres::{Client, NoTls};
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The consumer process counts each target is measured with.
const PROCESSES: [usize; 3] = [1, 2, 4];

/// How often each consumer process reports the events it has processed; the measured time
/// overshoots by at most this. The count comes from the processes rather than from a
/// `count(*)` on the inbox table, which would spend PostgreSQL's CPU, the resource measured.
const POLL: Duration = Duration::from_millis(20);

/// How often the bench looks for the run's new PostgreSQL backends (a pool may open more
/// connections as workers need them; a backend found late was born in the run, so all its CPU
/// time counts).
const FIND_BACKENDS_EVERY: Duration = Duration::from_millis(250);

/// A run that makes no progress for this long ends the bench rather than hanging it.
const STALL: Duration = Duration::from_secs(120);

/// Where the events go and the consumers read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Target {
    /// One stream on the single Redis node.
    Single,
    /// The stream split into this many partitions on the Redis Cluster.
    Cluster(u32),
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::Single => "single Redis, 1 stream".to_string(),
            Target::Cluster(1) => "cluster, 1 partition".to_string(),
            Target::Cluster(n) => format!("cluster, {n} partitions"),
        }
    }
}

/// CPU time of each process group over one run, in clock ticks.
#[derive(Clone, Copy, Default, Debug)]
struct Cpu {
    consumers: u64,
    postgres: u64,
    redis: u64,
    /// Every core's busy time, from `/proc/stat`.
    machine: u64,
}

/// One drain.
struct Run {
    elapsed: Duration,
    events: usize,
    cpu: Cpu,
    /// With `--statements`: what each statement cost over the run, costliest first.
    statements: Vec<Statement>,
}

/// One statement's work over a run, from `pg_stat_statements`.
#[derive(Clone, Debug)]
struct Statement {
    query: String,
    calls: i64,
    exec_ms: f64,
    rows: i64,
}

/// How many of each run's costliest statements `--statements` prints.
const TOP_STATEMENTS: usize = 6;

/// Reads `pg_stat_statements` for the bench's own database, by query id, leaving out the
/// bench's own reads of the statistics views.
fn statements(db: &mut Client) -> HashMap<i64, Statement> {
    db.query(
        "SELECT queryid, left(regexp_replace(query, '\\s+', ' ', 'g'), 90), calls, \
         total_exec_time, rows FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND queryid IS NOT NULL AND query NOT LIKE '%pg_stat_%'",
        &[],
    )
    .unwrap_or_else(|e| {
        panic!(
            "--statements needs pg_stat_statements in shared_preload_libraries and \
             CREATE EXTENSION pg_stat_statements in the bench's database: {e}"
        )
    })
    .iter()
    .map(|row| {
        (
            row.get(0),
            Statement {
                query: row.get(1),
                calls: row.get(2),
                exec_ms: row.get(3),
                rows: row.get(4),
            },
        )
    })
    .collect()
}

/// What each statement did between two readings, costliest first.
fn statements_between(
    before: &HashMap<i64, Statement>,
    after: HashMap<i64, Statement>,
) -> Vec<Statement> {
    let mut delta: Vec<Statement> = after
        .into_iter()
        .map(|(id, mut statement)| {
            if let Some(earlier) = before.get(&id) {
                statement.calls -= earlier.calls;
                statement.exec_ms -= earlier.exec_ms;
                statement.rows -= earlier.rows;
            }
            statement
        })
        .filter(|statement| statement.calls > 0)
        .collect();
    delta.sort_by(|a, b| b.exec_ms.total_cmp(&a.exec_ms));
    delta
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU microseconds per event for `ticks` of CPU time.
    fn micros_per_event(&self, ticks: u64) -> f64 {
        ticks as f64 * 1e6 / clock_ticks() as f64 / self.events as f64
    }

    /// Average cores busy over the run for `ticks` of CPU time.
    fn cores(&self, ticks: u64) -> f64 {
        ticks as f64 / clock_ticks() as f64 / self.elapsed.as_secs_f64()
    }
}

/// The consumer process of a scale run: `--scale-child <redis url> <table> <stream>
/// <partitions, 0 for a plain stream> <database url> [bench flags]`. Prints `ready` once built,
/// starts on the first line of its stdin, then prints the events it has processed every
/// [`POLL`], and shuts down when stdin closes.
pub fn child(args: &[String]) -> ! {
    let [redis_url, table, stream, partitions, database_url, flags @ ..] = args else {
        panic!("--scale-child <redis url> <table> <stream> <partitions> <database url> [flags]");
    };
    let options = parse_options(flags.to_vec());
    let partitions: u32 = partitions.parse().expect("a partition count");
    let insert = format!("INSERT INTO {table}_effects (event_id) VALUES ($1)");
    let mut builder = InboxConsumer::builder()
        .postgres(database_url)
        .redis(redis_url)
        .table(table)
        .group("bench")
        .workers(options.workers)
        .read_batch(options.read_batch)
        .claim_batch(options.claim_batch)
        .block(Duration::from_millis(100));
    builder = match partitions {
        0 => builder.stream(stream),
        n => builder.partitioned_stream(stream, n),
    };
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
    let stdin = std::io::stdin();
    let mut line = String::new();
    println!("ready");
    std::io::stdout().flush().unwrap();
    stdin.read_line(&mut line).unwrap();
    let handle = consumer.start().unwrap();
    // The bench closes stdin (or dies) when the run is over.
    let closed = std::thread::spawn(
        move || {
            while stdin.read_line(&mut line).is_ok_and(|read| read > 0) {}
        },
    );
    let mut stdout = std::io::stdout().lock();
    while !closed.is_finished() {
        // Ignore a closed pipe: the bench may stop reading before it closes stdin.
        let _ = writeln!(stdout, "{}", handle.stats().processed).and_then(|()| stdout.flush());
        std::thread::sleep(POLL);
    }
    handle.shutdown(Duration::from_secs(30)).unwrap();
    std::process::exit(0);
}

/// Runs every configuration `--repeat` times, round by round, and prints the table.
pub fn run(options: &Options) {
    let cluster_url = std::env::var("EVENTFLOW_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        let seeds: Vec<String> = (7000..=7005).map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", seeds.join(","))
    });
    let cluster = RedisStreams::connect(&cluster_url)
        .and_then(|c| c.ping(Duration::from_secs(2)).map(|()| c))
        .unwrap_or_else(|e| {
            panic!(
                "--scale needs the Redis Cluster at {cluster_url} (.ci/redis-cluster start): {e}"
            )
        });
    let targets = [Target::Single, Target::Cluster(1), Target::Cluster(3)];
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut runs: HashMap<(Target, usize), Vec<Run>> = HashMap::new();
    for round in 0..options.repeat {
        for processes in PROCESSES {
            for target in targets {
                let run = drain(options, &cluster, &cluster_url, target, processes);
                eprintln!(
                    "round {}: {}, {processes} processes: {:.0} events/s",
                    round + 1,
                    target.describe(),
                    run.rate()
                );
                runs.entry((target, processes)).or_default().push(run);
            }
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let medians: Vec<((Target, usize), Run)> = targets
        .iter()
        .flat_map(|&t| PROCESSES.map(|p| (t, p)))
        .map(|key| {
            let mut runs = runs.remove(&key).expect("every configuration ran");
            runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            (key, runs.swap_remove(runs.len() / 2))
        })
        .collect();
    let single = medians[0].1.rate();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\n{} events per run (a backlog, one aggregate per event), one-row-write handler; each \
         process: {} workers, {} readers per stream, read batch {}, claim batch {}; median of {} \
         runs",
        options.events,
        options.workers,
        options.readers.unwrap_or(super::DEFAULT_READERS),
        options.read_batch,
        options.claim_batch,
        options.repeat
    );
    println!(
        "machine: {cores} cores ({}); load average before {}, after {}",
        cpu_model(),
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "\n{:<26} {:>5} {:>9} {:>9} {:>10} {:>10} {:>7} {:>7} {:>7} {:>12}",
        "target",
        "procs",
        "events/s",
        "vs single",
        "consumers",
        "PostgreSQL",
        "Redis",
        "other",
        "idle",
        "us/ev cons/pg"
    );
    for ((target, processes), run) in &medians {
        let cpu = run.cpu;
        let other = cpu
            .machine
            .saturating_sub(cpu.consumers + cpu.postgres + cpu.redis);
        println!(
            "{:<26} {:>5} {:>9.0} {:>8.2}x {:>10.2} {:>10.2} {:>7.2} {:>7.2} {:>7.2} {:>12}",
            target.describe(),
            processes,
            run.rate(),
            run.rate() / single,
            run.cores(cpu.consumers),
            run.cores(cpu.postgres),
            run.cores(cpu.redis),
            run.cores(other),
            (cores as f64 - run.cores(cpu.machine)).max(0.0),
            format!(
                "{:.0} / {:.0}",
                run.micros_per_event(cpu.consumers),
                run.micros_per_event(cpu.postgres)
            ),
        );
    }
    println!(
        "vs single: over the single Redis node's 1-process figure of this run; the CPU columns \
         are cores busy on average over the run (of {cores}): the consumer processes, their \
         PostgreSQL backends with the server's WAL writer, background writer and checkpointer, \
         every Redis server process of the target, the rest of the machine's busy time, and \
         what was left idle; us/ev: CPU microseconds per event of the consumers and of \
         PostgreSQL"
    );
    if options.statements {
        print_statements(&medians);
    }
}

/// The costliest statements of each configuration's median run, per event.
fn print_statements(medians: &[((Target, usize), Run)]) {
    for ((target, processes), run) in medians {
        let events = run.events as f64;
        let total: f64 = run.statements.iter().map(|s| s.exec_ms).sum();
        println!(
            "\n{}, {processes} processes: {:.0} us of statement execution per event; costliest:",
            target.describe(),
            total * 1000.0 / events
        );
        println!(
            "{:>12} {:>10} {:>9}  query",
            "calls/1000ev", "us/event", "rows/call"
        );
        for statement in run.statements.iter().take(TOP_STATEMENTS) {
            println!(
                "{:>12.1} {:>10.1} {:>9.1}  {}",
                statement.calls as f64 * 1000.0 / events,
                statement.exec_ms * 1000.0 / events,
                statement.rows as f64 / statement.calls as f64,
                statement.query
            );
        }
    }
}

/// One run: `processes` consumers drain a backlog of `--events` on `target`.
fn drain(
    options: &Options,
    cluster: &RedisStreams,
    cluster_url: &str,
    target: Target,
    processes: usize,
) -> Run {
    let setup = setup(options, "bench_scale");
    let (table, stream) = (&setup.table, &setup.stream);
    let (redis, redis_url, partitions) = match target {
        Target::Single => (&setup.redis, options.redis_url.as_str(), 0),
        Target::Cluster(n) => (cluster, cluster_url, n),
    };
    let streams = match partitions {
        0 => vec![stream.clone()],
        n => partition_streams(stream, n),
    };
    for stream in &streams {
        redis.ensure_group(stream, "bench").unwrap();
    }
    publish(redis, &streams, options.events);

    // The run's own application name finds its backends among everyone else's.
    let database_url = with_application_name(&options.database_url, table);
    let mut flags = vec![
        "--workers".to_string(),
        options.workers.to_string(),
        "--read-batch".to_string(),
        options.read_batch.to_string(),
        "--claim-batch".to_string(),
        options.claim_batch.to_string(),
    ];
    if let Some(readers) = options.readers {
        flags.extend(["--readers".to_string(), readers.to_string()]);
    }
    let mut children: Vec<(Child, ChildStdin, Arc<AtomicU64>)> = (0..processes)
        .map(|_| {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--scale-child", redis_url, table, stream])
                .arg(partitions.to_string())
                .arg(&database_url)
                .args(&flags)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut ready = String::new();
            stdout.read_line(&mut ready).unwrap();
            assert_eq!(ready.trim(), "ready", "a consumer process failed to build");
            let stdin = child.stdin.take().unwrap();
            let processed = Arc::new(AtomicU64::new(0));
            let report = processed.clone();
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    if let Ok(count) = line.trim().parse() {
                        report.store(count, Ordering::Relaxed);
                    }
                }
            });
            (child, stdin, processed)
        })
        .collect();

    let mut db = Client::connect(&options.database_url, NoTls).unwrap();
    let redis_pids = redis_pids(redis_url);
    let child_pids: Vec<u32> = children.iter().map(|(child, ..)| child.id()).collect();
    let mut backends = Backends::new(&mut db, table);
    let before = (
        ticks_of(&child_pids),
        ticks_of(&redis_pids),
        machine_busy_ticks(),
    );

    let statements_before = options.statements.then(|| statements(&mut db));
    let started = Instant::now();
    for (_, stdin, _) in &mut children {
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
    let (mut last_count, mut last_progress, mut last_find) = (0, Instant::now(), Instant::now());
    loop {
        let count: u64 = children
            .iter()
            .map(|(.., processed)| processed.load(Ordering::Relaxed))
            .sum();
        if count as usize >= options.events {
            break;
        }
        if count > last_count {
            (last_count, last_progress) = (count, Instant::now());
        }
        assert!(
            last_progress.elapsed() < STALL,
            "{}, {processes} processes: stuck at {count} of {} processed",
            target.describe(),
            options.events
        );
        if last_find.elapsed() >= FIND_BACKENDS_EVERY {
            backends.find(&mut db);
            last_find = Instant::now();
        }
        std::thread::sleep(POLL);
    }
    let elapsed = started.elapsed();
    backends.find(&mut db);
    let cpu = Cpu {
        consumers: ticks_of(&child_pids).saturating_sub(before.0),
        postgres: backends.ticks_since_found(),
        redis: ticks_of(&redis_pids).saturating_sub(before.1),
        machine: machine_busy_ticks().saturating_sub(before.2),
    };
    let statements = statements_before
        .map(|before| statements_between(&before, statements(&mut db)))
        .unwrap_or_default();

    for (mut child, stdin, _) in children {
        drop(stdin);
        let status = child.wait().unwrap();
        assert!(status.success(), "a consumer process failed: {status}");
    }
    let count = |db: &mut Client, sql: String| -> i64 { db.query_one(&sql, &[]).unwrap().get(0) };
    let stored = count(&mut db, format!("SELECT count(*) FROM {table}"));
    let done = count(
        &mut db,
        format!("SELECT count(*) FROM {table} WHERE status = 'processed'"),
    );
    let effects = count(&mut db, format!("SELECT count(*) FROM {table}_effects"));
    let distinct = count(
        &mut db,
        format!("SELECT count(DISTINCT event_id) FROM {table}_effects"),
    );
    let n = options.events as i64;
    assert_eq!(
        (stored, done, effects, distinct),
        (n, n, n, n),
        "{}, {processes} processes: every event should be stored, processed and handled once \
         (rows, processed rows, effect rows, distinct effects)",
        target.describe()
    );
    match target {
        Target::Single => cleanup(options, table, stream),
        Target::Cluster(_) => {
            cleanup_cluster(cluster_url, &streams);
            cleanup(options, table, stream);
        }
    }
    Run {
        elapsed,
        events: options.events,
        cpu,
        statements,
    }
}

/// Puts `n` events, each with an aggregate of its own, in their aggregates' partitions (the
/// relay's rule), in batches of up to 1,000 per stream.
fn publish(redis: &RedisStreams, streams: &[String], n: usize) {
    let mut by_stream: Vec<Vec<_>> = streams.iter().map(|_| Vec::new()).collect();
    for i in 0..n {
        let aggregate = uuid::Uuid::new_v4();
        let mut event = Event::new("BenchEvent", aggregate, json!({ "i": i }));
        event.event_id = format!("{}-{i}", streams[0]);
        by_stream[partition_of(&aggregate, streams.len() as u32) as usize]
            .push(event.to_entry_fields());
    }
    for (stream, entries) in streams.iter().zip(&by_stream) {
        for chunk in entries.chunks(1000) {
            redis.publish_batch(stream, chunk).expect("XADD");
        }
    }
}

/// `url` with `application_name` set to `name`, in whichever form the URL is written.
fn with_application_name(url: &str, name: &str) -> String {
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// The PostgreSQL processes whose CPU time a run counts, with their ticks when first seen.
struct Backends {
    application_name: String,
    /// Process id → ticks when found (before the start) or 0 (found during the run: born in it).
    found: HashMap<u32, u64>,
    /// Ticks of each process at the last look, kept for processes that exit before the end.
    last: HashMap<u32, u64>,
}

impl Backends {
    /// Finds the run's backends so far and the server's background writers, at the start.
    fn new(db: &mut Client, application_name: &str) -> Self {
        let mut backends = Backends {
            application_name: application_name.to_string(),
            found: HashMap::new(),
            last: HashMap::new(),
        };
        for pid in backends.pids(db, true) {
            let ticks = process_ticks(pid).unwrap_or(0);
            backends.found.insert(pid, ticks);
            backends.last.insert(pid, ticks);
        }
        backends
    }

    fn pids(&self, db: &mut Client, with_background: bool) -> Vec<u32> {
        db.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 OR ($2 AND \
             backend_type IN ('walwriter', 'background writer', 'checkpointer'))",
            &[&self.application_name, &with_background],
        )
        .unwrap()
        .iter()
        .map(|row| row.get::<_, i32>(0) as u32)
        .collect()
    }

    /// Adds backends opened since the last look, and reads everyone's ticks.
    fn find(&mut self, db: &mut Client) {
        for pid in self.pids(db, false) {
            self.found.entry(pid).or_insert(0);
        }
        for &pid in self.found.keys() {
            if let Some(ticks) = process_ticks(pid) {
                self.last.insert(pid, ticks);
            }
        }
    }

    fn ticks_since_found(&self) -> u64 {
        self.found
            .iter()
            .map(|(pid, from)| self.last.get(pid).unwrap_or(from).saturating_sub(*from))
            .sum()
    }
}

/// The process id of every Redis server behind `url` (a single node, or every seed of a
/// `redis+cluster://` URL), from `INFO server`.
fn redis_pids(url: &str) -> Vec<u32> {
    seed_urls(url)
        .iter()
        .map(|seed| {
            let mut conn = redis::Client::open(seed.as_str())
                .and_then(|c| c.get_connection())
                .unwrap_or_else(|e| panic!("{seed}: {e}"));
            let info: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
            info.lines()
                .find_map(|line| line.strip_prefix("process_id:"))
                .and_then(|pid| pid.trim().parse().ok())
                .expect("process_id in INFO server")
        })
        .collect()
}

/// A cluster URL's seeds as single-node URLs (credentials kept); a single-node URL as it is.
fn seed_urls(url: &str) -> Vec<String> {
    let Some(rest) = url.strip_prefix("redis+cluster://") else {
        return vec![url.to_string()];
    };
    let rest = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), rest),
    };
    hosts
        .split(',')
        .map(|host| format!("redis://{userinfo}{}", host.trim()))
        .collect()
}

/// Deletes the run's partition streams, each on whichever master holds it.
fn cleanup_cluster(url: &str, streams: &[String]) {
    let Ok(mut conn) = redis::cluster::ClusterClient::new(seed_urls(url))
        .and_then(|client| client.get_connection())
    else {
        return;
    };
    for stream in streams {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(stream).query(&mut conn);
    }
}

/// `utime + stime` of a live process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis don't.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at field 3, so fields 14 and 15 are at 11 and 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&pid| process_ticks(pid)).sum()
}

/// Busy ticks of every core together: the `cpu` line of `/proc/stat` less idle and iowait.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat (--scale needs Linux)");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    total - fields.get(3).copied().unwrap_or(0) - fields.get(4).copied().unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The CPU's model name, to name the machine.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}
