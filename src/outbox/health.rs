//! What a liveness or readiness probe asks of a running relay: [`RelayHealth`].
//!
//! Publisher threads note when they last finished a round (a claim committed, an empty one
//! included) and when they last published a row; [`RelayHandle::health`](super::RelayHandle::health)
//! adds which threads are alive and whether the database and the broker answer now, pinged
//! with the consumer's probes (within [`PING_TIMEOUT`](crate::inbox::PING_TIMEOUT)).

use crate::inbox::ThreadCount;
use crate::probe::Beat;
use std::time::Duration;

/// A running relay's health, as [`RelayHandle::health`](super::RelayHandle::health) found it.
///
/// Two verdicts are derived from it, as from the consumer's
/// [`Health`](crate::inbox::Health): [`is_live`](Self::is_live) (restart the process if not)
/// and [`is_ready`](Self::is_ready) (page someone, or hold traffic, if not). The ages are
/// measured on the monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayHealth {
    /// False once [`shutdown`](super::RelayHandle::shutdown) has been called.
    pub running: bool,
    /// Publisher threads alive, out of those configured
    /// ([`workers`](super::RelayBuilder::workers)).
    pub publishers: ThreadCount,
    /// The relay's other threads alive, out of those it started: the listener (PostgreSQL),
    /// retention (unless turned off) and stream trimming (when on).
    pub services: ThreadCount,
    /// How long ago a publisher last finished a round: claimed due rows (none, on an idle
    /// outbox), published them and committed what became of them. An idle publisher claims at
    /// least every poll interval (1 s on PostgreSQL, 100 ms on SQLite), so this stays small
    /// while the database and the broker answer. `None` before the first round.
    pub since_last_round: Option<Duration>,
    /// How long ago a publisher last committed a published row. `None` before the first;
    /// grows while the outbox is empty, so on its own it says nothing about health.
    pub since_last_publish: Option<Duration>,
    /// Whether the outbox's database answered a ping just now, or why not.
    pub database: Result<(), String>,
    /// Whether the stream broker answered a ping just now, or why not.
    pub broker: Result<(), String>,
}

impl RelayHealth {
    /// Live: the relay is running and every thread it started is alive. Threads only end at
    /// shutdown (they survive panics and outages), so a relay that is not live needs a restart.
    /// A live relay may still be waiting out an outage, which a restart does not fix.
    pub fn is_live(&self) -> bool {
        self.running && self.publishers.all_alive() && self.services.all_alive()
    }

    /// Ready: live, and both the database and the broker answered the ping. A relay that is
    /// live but not ready is waiting out an outage and goes on by itself when it ends; the
    /// events stay in the outbox meanwhile.
    pub fn is_ready(&self) -> bool {
        self.is_live() && self.database.is_ok() && self.broker.is_ok()
    }
}

/// When the publishers last finished a round and last published, shared by all of them.
pub(crate) struct RelayBeats {
    pub round: Beat,
    pub published: Beat,
}

impl RelayBeats {
    pub fn new() -> Self {
        Self {
            round: Beat::new(),
            published: Beat::new(),
        }
    }
}
