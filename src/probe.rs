//! What the consumer's and the relay's health checks share: pinging the database and the broker
//! with a bounded wait ([`Probes`]), and noting when a thread last did its work ([`Beat`]).
//!
//! The two pings run side by side on threads of their own and are waited for at most
//! [`PING_TIMEOUT`], so a probe returns in bounded time even when a server hangs; a ping that
//! has not answered by the next probe is not started twice.

use crate::transport::Transport;
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a health check (`ConsumerHandle::health`, `RelayHandle::health`) waits for the
/// database and the broker to answer a ping: 1 s, as a Kubernetes probe's default timeout.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// When something last happened, measured on the monotonic clock so a wall-clock jump cannot
/// make a thread look stale. Shared by the threads that beat it.
pub(crate) struct Beat {
    origin: Instant,
    /// Nanoseconds after `origin`, plus one; zero for never.
    at: AtomicU64,
}

impl Beat {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            at: AtomicU64::new(0),
        }
    }

    /// It happened now.
    pub fn beat(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.at.fetch_max(nanos + 1, Ordering::Relaxed);
    }

    /// How long ago it last happened; `None` before the first time.
    pub fn since(&self) -> Option<Duration> {
        match self.at.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(nanos - 1)),
            ),
        }
    }
}

/// A database ping: `Ok`, or why not, as text for a health report.
pub(crate) type DatabasePing = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Pings a database and a broker with a bounded wait.
pub(crate) struct Probes {
    database: DatabasePing,
    transport: Arc<dyn Transport>,
    database_in_flight: Arc<AtomicBool>,
    broker_in_flight: Arc<AtomicBool>,
}

impl Probes {
    pub fn new(database: DatabasePing, transport: Arc<dyn Transport>) -> Self {
        Self {
            database,
            transport,
            database_in_flight: Arc::default(),
            broker_in_flight: Arc::default(),
        }
    }

    /// Pings both side by side; returns (database, broker) within about `timeout`.
    pub fn ping(&self, timeout: Duration) -> (Result<(), String>, Result<(), String>) {
        let deadline = Instant::now() + timeout;
        let database = self.database.clone();
        let database = spawn_ping("database", &self.database_in_flight, move || database());
        let transport = self.transport.clone();
        let broker = spawn_ping("broker", &self.broker_in_flight, move || {
            transport.ping(timeout).map_err(|error| error.to_string())
        });
        (
            wait_for(database, deadline, timeout),
            wait_for(broker, deadline, timeout),
        )
    }
}

type Pending = Result<Receiver<Result<(), String>>, String>;

/// Runs `ping` on a thread of its own, unless the previous one has not answered yet.
fn spawn_ping(
    what: &str,
    in_flight: &Arc<AtomicBool>,
    ping: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Pending {
    if in_flight.swap(true, Ordering::SeqCst) {
        return Err(format!("the previous {what} ping has not answered yet"));
    }
    let (answer_tx, answer_rx) = crossbeam_channel::bounded(1);
    let flag = in_flight.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("eventflow-ping-{what}"))
        .spawn(move || {
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(ping))
                .unwrap_or_else(|_| Err("the ping panicked".to_string()));
            flag.store(false, Ordering::SeqCst);
            let _ = answer_tx.send(answer);
        });
    match spawned {
        Ok(_) => Ok(answer_rx),
        Err(error) => {
            in_flight.store(false, Ordering::SeqCst);
            Err(format!("cannot start the {what} ping: {error}"))
        }
    }
}

fn wait_for(pending: Pending, deadline: Instant, timeout: Duration) -> Result<(), String> {
    pending?
        .recv_deadline(deadline)
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_says_never_until_the_first() {
        let beat = Beat::new();
        assert_eq!(beat.since(), None);
        beat.beat();
        assert!(beat.since().is_some());
    }

    #[test]
    fn a_ping_that_hangs_is_reported_and_not_started_twice() {
        let in_flight = Arc::new(AtomicBool::new(false));
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        let pending = spawn_ping("test", &in_flight, move || {
            let _ = release_rx.recv();
            Ok(())
        });
        let answer = wait_for(pending, Instant::now(), Duration::ZERO);
        assert!(answer.unwrap_err().contains("no answer"));
        let again = spawn_ping("test", &in_flight, || Ok(()));
        assert!(again.unwrap_err().contains("has not answered yet"));
        drop(release_tx);
    }
}
