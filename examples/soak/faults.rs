//! The fault loop: until the soak's time is up, at random intervals around the mean, one of
//! SIGKILL a random process (started again a moment later), terminate every database session
//! of the soak, or restart Redis.

use super::children::{Fleet, PrivateRedis};
use super::{database_url, Names, Options, Random};
use postgres::{Client, NoTls};
use std::fmt;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How many faults of each kind struck.
#[derive(Debug, Default)]
pub struct Struck {
    pub kills: u32,
    pub terminated_sessions: u32,
    pub session_terminations: u32,
    pub redis_restarts: u32,
}

impl fmt::Display for Struck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} processes SIGKILLed, {} rounds of session termination ({} sessions), {} Redis restarts",
            self.kills, self.session_terminations, self.terminated_sessions, self.redis_restarts
        )
    }
}

pub fn run(
    names: &Names,
    options: &Options,
    seed: u64,
    fleet: &mut Fleet,
    redis: &mut PrivateRedis,
    started: Instant,
) -> Result<Struck> {
    let mut random = Random::new(seed.rotate_left(17));
    let mut struck = Struck::default();
    let mut admin = Client::connect(&database_url(&format!("{}_admin", names.run)), NoTls)?;
    let mean = options.fault_interval.as_millis().max(1) as u64;
    let mut last_report = Instant::now();
    while started.elapsed() < options.duration {
        // Between half and one and a half of the mean.
        let pause = Duration::from_millis(mean / 2 + random.below(mean + 1));
        let pause = pause.min(options.duration.saturating_sub(started.elapsed()));
        std::thread::sleep(pause);
        if started.elapsed() >= options.duration {
            break;
        }
        match random.below(10) {
            0..=4 => {
                let name = fleet.kill_random(&mut random);
                tracing::warn!(%name, "fault: SIGKILL");
                struck.kills += 1;
                std::thread::sleep(Duration::from_millis(200 + random.below(800)));
            }
            5..=7 => {
                if admin.is_closed() {
                    admin = Client::connect(&database_url(&format!("{}_admin", names.run)), NoTls)?;
                }
                let ended: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name LIKE $1 AND pid <> pg_backend_pid()) ended",
                        &[&format!("{}\\_%", names.run)],
                    )?
                    .get(0);
                tracing::warn!(ended, "fault: database sessions terminated");
                struck.session_terminations += 1;
                struck.terminated_sessions += ended as u32;
            }
            _ => {
                tracing::warn!("fault: Redis restarted");
                redis.restart()?;
                struck.redis_restarts += 1;
            }
        }
        fleet.ensure_running()?;
        if last_report.elapsed() >= Duration::from_secs(60) {
            let progress = admin
                .query_one(
                    &format!(
                        "SELECT (SELECT count(*) FROM {}), (SELECT count(DISTINCT event_id) FROM {})",
                        names.committed(),
                        names.ledger()
                    ),
                    &[],
                )
                .map(|row| format!("{} committed, {} handled", row.get::<_, i64>(0), row.get::<_, i64>(1)))
                .unwrap_or_else(|error| format!("progress unknown: {error}"));
            println!("after {:?}: {struck}; {progress}", started.elapsed());
            last_report = Instant::now();
        }
    }
    Ok(struck)
}
