//! What a liveness or readiness probe asks of a running consumer: [`Health`].
//!
//! Threads note when they last read the stream and last committed a batch ([`Heartbeats`]);
//! [`ConsumerHandle::health`](super::ConsumerHandle::health) adds which threads are alive and
//! whether the database and the broker answer now, pinged within [`PING_TIMEOUT`] by the
//! probes the relay's health check uses too (`crate::probe`).

use super::in_flight::HungHandler;
pub use crate::probe::PING_TIMEOUT;
use crate::probe::{Beat, Probes};
use crate::store::InboxStore;
use crate::transport::Transport;
use std::sync::Arc;
use std::time::Duration;

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
    last_read: Beat,
    last_commit: Beat,
}

impl Heartbeats {
    pub fn new() -> Self {
        Self {
            last_read: Beat::new(),
            last_commit: Beat::new(),
        }
    }

    pub fn read(&self) {
        self.last_read.beat();
    }

    pub fn committed(&self) {
        self.last_commit.beat();
    }

    pub fn since_last_read(&self) -> Option<Duration> {
        self.last_read.since()
    }

    pub fn since_last_commit(&self) -> Option<Duration> {
        self.last_commit.since()
    }
}

/// Pings the consumer's database (through `store`) and broker with a bounded wait.
pub(crate) fn probes<S: InboxStore>(store: Arc<S>, transport: Arc<dyn Transport>) -> Probes {
    Probes::new(
        Arc::new(move || store.ping().map_err(|error| error.to_string())),
        transport,
    )
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
}
