//! A fault soak: two consumer processes and an outbox relay over real PostgreSQL and Redis, with
//! producers enqueueing through the outbox, while a fault loop SIGKILLs and restarts a random
//! process, terminates database sessions and restarts Redis. At the end a ledger is checked:
//! every committed event handled exactly once, nothing handled that was rolled back, each
//! aggregate's events handled in order, nothing left stuck. The exit code says whether it held.
//!
//! ```text
//! cargo run --release --example soak -- --duration 60s
//! cargo run --release --example soak -- --duration 1h --rate 300
//! ```
//!
//! PostgreSQL comes from `EVENTFLOW_DATABASE_URL` (default: the local server, database `test`).
//! Redis is a private `redis-server` the soak starts on a free port, with an append-only file
//! synced on every write, so that restarting it (SIGKILL, then start again) loses nothing the
//! relay was told is stored; `redis-server` must be on the PATH. The soak's tables are named
//! `soak_<run>_...` and dropped at the end unless `--keep` is given or the ledger does not
//! hold (then they are kept for inspection).

mod children;
mod faults;
mod ledger;
mod producer;
mod roles;

use clap::Parser;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What the soak runs; a child process gets `--role`.
#[derive(Parser, Debug, Clone)]
#[command(about = "Fault soak of eventflow's inbox and outbox")]
pub struct Options {
    /// How long producers enqueue and faults strike (e.g. 60s, 10m, 1h).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Events committed per second, over all producers (about).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Aggregates the events are spread over.
    #[arg(long, default_value_t = 200)]
    aggregates: u32,
    /// Mean time between two faults.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    fault_interval: Duration,
    /// Longest wait for everything to drain once the faults stop.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Seed of the fault loop's and producers' random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the soak's tables at the end.
    #[arg(long)]
    keep: bool,
    /// Internal: run as a child process of this role (`consumer` or `relay`).
    #[arg(long, hide = true)]
    role: Option<String>,
    /// Internal: the run's name, which names its tables and stream.
    #[arg(long, hide = true)]
    run: Option<String>,
    /// Internal: the private Redis's URL.
    #[arg(long, hide = true)]
    redis_url: Option<String>,
    /// Internal: the child's name, its sessions' application_name.
    #[arg(long, hide = true)]
    name: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 60s or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

/// The PostgreSQL URL, with `application_name` set to `name` so the soak can find (and end)
/// the sessions of each process.
pub fn database_url(name: &str) -> String {
    let url = std::env::var("EVENTFLOW_DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_string());
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

/// Names derived from the run's name.
#[derive(Debug, Clone)]
pub struct Names {
    pub run: String,
}

impl Names {
    pub fn inbox(&self) -> String {
        format!("{}_inbox", self.run)
    }
    pub fn outbox(&self) -> String {
        format!("{}_outbox", self.run)
    }
    pub fn ledger(&self) -> String {
        format!("{}_ledger", self.run)
    }
    pub fn committed(&self) -> String {
        format!("{}_committed", self.run)
    }
    pub fn stream(&self) -> String {
        self.run.clone()
    }
}

/// A small, seedable random source: the soak needs reproducible choices, not quality.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let result = match options.role.as_deref() {
        Some(role) => roles::run(role, &options),
        None => coordinate(&options),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: {error}");
            ExitCode::from(2)
        }
    }
}

/// Runs the soak; true when the ledger holds.
fn coordinate(options: &Options) -> Result<bool, Box<dyn std::error::Error>> {
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let names = Names {
        run: format!("soak_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    };
    println!(
        "soak {}: {:?} of faults every ~{:?}, {} events/s over {} aggregates, seed {seed}",
        names.run, options.duration, options.fault_interval, options.rate, options.aggregates
    );
    let mut redis = children::PrivateRedis::start()?;
    ledger::create(&names)?;
    let mut fleet = children::Fleet::start(&names, &redis.url())?;
    let started = Instant::now();
    let producers = producer::start(&names, options, seed);
    let faults = faults::run(&names, options, seed, &mut fleet, &mut redis, started)?;
    let produced = producers.stop();
    println!(
        "faults done after {:?}: {faults}; producers committed {} and rolled back {} transactions",
        started.elapsed(),
        produced.committed,
        produced.rolled_back.len()
    );
    fleet.ensure_running()?;
    let drained = ledger::wait_for_drain(&names, options.drain_timeout)?;
    fleet.stop();
    let report = ledger::check(&names, &produced.rolled_back)?;
    println!("{report}");
    if !drained {
        println!("NOT DRAINED within {:?}", options.drain_timeout);
    }
    let holds = drained && report.holds();
    if holds && !options.keep {
        ledger::drop_tables(&names)?;
    } else if !holds {
        println!("tables kept for inspection: {}_*", names.run);
    }
    drop(redis);
    Ok(holds)
}
