//! The child processes' bodies: a consumer writing the ledger, and the outbox relay. Both run
//! until they are killed.

use super::{database_url, Names, Options, Random};
use eventflow::store::SessionLimits;
use eventflow::{ExponentialBackoff, HandlerError, HandlerResult, InboxConsumer, OutboxRelay};
use parking_lot::Mutex;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Short limits: the soak's faults should be recovered from in seconds.
fn limits() -> SessionLimits {
    SessionLimits::default()
        .idle_in_transaction_timeout(Duration::from_secs(2))
        .lock_timeout(Duration::from_secs(1))
        .statement_timeout(Duration::from_secs(10))
        .keepalives(Duration::from_secs(2), Duration::from_secs(1), 2)
}

fn fast_retries() -> ExponentialBackoff {
    ExponentialBackoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(2),
        jitter_ratio: 0.1,
    }
}

pub fn run(role: &str, options: &Options) -> Result<bool> {
    let names = Names {
        run: options.run.clone().ok_or("--run is required with --role")?,
    };
    let redis_url = options.redis_url.clone().ok_or("--redis-url is required")?;
    let name = options.name.clone().ok_or("--name is required")?;
    match role {
        "consumer" => consume(&names, &redis_url, &name),
        "relay" => relay(&names, &redis_url, &name),
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// Handles events in order per aggregate, writing one ledger row per handled event in the
/// handler's transaction; one attempt in a hundred fails, to exercise retries.
fn consume(names: &Names, redis_url: &str, name: &str) -> Result<bool> {
    let insert = format!(
        "INSERT INTO {} (event_id, aggregate_id, seq, process) VALUES ($1, $2, $3, $4)",
        names.ledger()
    );
    let process = name.to_string();
    let random = Mutex::new(Random::new(std::process::id() as u64 * 7919));
    let handle = InboxConsumer::builder()
        .redis(redis_url)
        .postgres(database_url(name))
        .table(names.inbox())
        .stream(names.stream())
        .group("soak")
        .consumer_prefix(name)
        .ordered(true)
        .workers(3)
        .readers(1)
        .block(Duration::from_millis(200))
        .reclaim_idle(Duration::from_secs(2))
        .reclaim_interval(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(200))
        .orphan_after(Duration::from_secs(2))
        .retry_policy(fast_retries())
        .max_attempts(0)
        .session_limits(limits())
        .handler_timeout(Duration::from_secs(2))
        .handler(move |tx, row| -> HandlerResult {
            let seq = row.event.payload["seq"].as_i64().unwrap_or(-1) as i32;
            let statement = tx.prepare_cached(&insert)?;
            tx.execute(
                &statement,
                &[&row.event.event_id, &row.event.aggregate_id, &seq, &process],
            )?;
            if random.lock().chance(1) {
                return Err(HandlerError::retry("the soak's one failure in a hundred"));
            }
            Ok(())
        })
        .build()?
        .start()?;
    loop {
        std::thread::sleep(Duration::from_secs(5));
        tracing::info!(stats = ?handle.stats(), "consumer");
    }
}

/// Publishes the outbox to the stream.
fn relay(names: &Names, redis_url: &str, name: &str) -> Result<bool> {
    let handle = OutboxRelay::builder()
        .postgres(database_url(name))
        .redis(redis_url)
        .table(names.outbox())
        .workers(2)
        .poll_interval(Duration::from_millis(200))
        .retry_policy(fast_retries())
        .build()?
        .start()?;
    loop {
        std::thread::sleep(Duration::from_secs(5));
        tracing::info!(stats = ?handle.stats(), "relay");
    }
}
