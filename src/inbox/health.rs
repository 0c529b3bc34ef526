//! What a liveness or readiness probe asks of a running consumer: [`Health`].
//!
//! Threads note when they last read the stream and last committed a batch ([`Heartbeats`]);
//! [`ConsumerHandle::health`](super::ConsumerHandle::health) adds which threads are alive and
//! whether the database and the broker answer now. The two pings run side by side on threads
//! of their own and are waited for at most [`PING_TIMEOUT`], so a probe returns in bounded time
//! even when a server hangs; a ping that has not answered by the next probe is not started twice.

use super::in_flight::HungHandler;
use crate::store::InboxStore;
use crate::transport::Transport;
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long [`ConsumerHandle::health`](super::ConsumerHandle::health) waits for the database
/// and the broker to answer a ping: 1 s, as a Kubernetes probe's default timeout.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A running consumer's health, as [`ConsumerHandle::health`](super::ConsumerHandle::health)
/// found it.
///
/// Two verdicts are derived from it: [`is_live`](Self::is_live) (restart the process if not) and
/// [`is_ready`](Self::is_ready) (send it no traffic, or page someone, if not). The ages are
/// measured on the monotonic clock, so a wall-clock jump cannot make the consumer look stale;
/// subtract them from the time of the check to get a timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// False once [`shutdown`](super::ConsumerHandle::shutdown) has been called.
    pub running: bool,
    /// Reader threads alive, out of those configured.
    pub readers: ThreadCount,
    /// Worker threads alive, out of those configured.
    pub workers: ThreadCount,
    /// How long ago a reader last read the stream successfully, an empty read included: a
    /// reader on an idle stream reads every `block` (1 s by default), so this stays small while
    /// the broker answers. `None` before the first read.
    pub since_last_read: Option<Duration>,
    /// How long ago a worker last committed a batch of handled rows (processed, or failed and
    /// recorded). `None` before the first; grows while there is nothing to do, so on its own it
    /// says nothing about health.
    pub since_last_commit: Option<Duration>,
    /// Handlers running for longer than the handler time limit
    /// ([`handler_timeout`](super::ConsumerBuilder::handler_timeout)), longest first. Each
    /// holds a worker; one stuck for good (a deadlock in the handler's own code, a call with no
    /// timeout) holds it until the process restarts, so any makes the consumer not live.
    pub hung_handlers: Vec<HungHandler>,
    /// Whether the database answered a ping just now, or why not.
    pub database: Result<(), String>,
    /// Whether the stream broker answered a ping just now, or why not.
    pub broker: Result<(), String>,
}

/// Threads of one kind: how many are alive, and how many were started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCount {
    /// Threads still running. A thread that ended, for any reason, is not.
    pub alive: usize,
    /// Threads the consumer was configured with.
    pub configured: usize,
}

impl ThreadCount {
    /// Whether every configured thread is alive.
    pub fn all_alive(&self) -> bool {
        self.alive == self.configured
    }
}

impl Health {
    /// Live: the consumer is running, every reader and worker thread is alive, and no handler
    /// has run past the handler time limit. Threads only end at shutdown (they survive panics
    /// and outages), so a consumer that is not live needs a restart. A live consumer may still
    /// be waiting out an outage, or be held back by slow handlers within their limit (readers
    /// wait for busy workers): neither is fixed by a restart.
    pub fn is_live(&self) -> bool {
        self.running
            && self.readers.all_alive()
            && self.workers.all_alive()
            && self.hung_handlers.is_empty()
    }

    /// Ready: live, and both the database and the broker answered the ping. A consumer that is
    /// live but not ready is waiting out an outage and will go on by itself when it ends.
    pub fn is_ready(&self) -> bool {
        self.is_live() && self.database.is_ok() && self.broker.is_ok()
    }
}

/// When the consumer's threads last read the stream and last committed, shared by all of them.
pub(crate) struct Heartbeats {
    origin: Instant,
    /// Nanoseconds after `origin`, plus one; zero for never.
    last_read: AtomicU64,
    last_commit: AtomicU64,
}

impl Heartbeats {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_read: AtomicU64::new(0),
            last_commit: AtomicU64::new(0),
        }
    }

    pub fn read(&self) {
        self.beat(&self.last_read);
    }

    pub fn committed(&self) {
        self.beat(&self.last_commit);
    }

    fn beat(&self, at: &AtomicU64) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        at.fetch_max(nanos + 1, Ordering::Relaxed);
    }

    pub fn since_last_read(&self) -> Option<Duration> {
        self.since(&self.last_read)
    }

    pub fn since_last_commit(&self) -> Option<Duration> {
        self.since(&self.last_commit)
    }

    fn since(&self, at: &AtomicU64) -> Option<Duration> {
        match at.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(nanos - 1)),
            ),
        }
    }
}

/// Pings the consumer's database and broker with a bounded wait.
pub(crate) struct Probes {
    database: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    transport: Arc<dyn Transport>,
    database_in_flight: Arc<AtomicBool>,
    broker_in_flight: Arc<AtomicBool>,
}

impl Probes {
    pub fn new<S: InboxStore>(store: Arc<S>, transport: Arc<dyn Transport>) -> Self {
        Self {
            database: Arc::new(move || store.ping().map_err(|error| error.to_string())),
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
    fn heartbeats_say_never_until_the_first_beat() {
        let beats = Heartbeats::new();
        assert_eq!(beats.since_last_read(), None);
        assert_eq!(beats.since_last_commit(), None);
        beats.read();
        assert!(beats.since_last_read().is_some());
        assert_eq!(beats.since_last_commit(), None);
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
