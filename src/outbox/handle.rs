//! A running relay: its totals, and stopping it.

use super::health::{RelayBeats, RelayHealth};
use super::metrics::RelayMetrics;
use crate::error::Result;
use crate::inbox::{ThreadCount, Threads, PING_TIMEOUT};
use crate::probe::Probes;
use crate::store::outbox::PublishRound;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The relay's totals, kept both for [`RelayHandle::stats`] and as metrics.
pub(crate) struct Counters {
    published: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    batches: AtomicU64,
    abandoned: AtomicU64,
    deleted: AtomicU64,
    trimmed: AtomicU64,
    unreplicated: AtomicU64,
    metrics: RelayMetrics,
}

impl Counters {
    pub(crate) fn new(table: &str) -> Self {
        Self {
            published: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            trimmed: AtomicU64::new(0),
            unreplicated: AtomicU64::new(0),
            metrics: RelayMetrics::new(table),
        }
    }

    /// A committed batch, and when its published rows were enqueued.
    pub(crate) fn record(
        &self,
        round: &PublishRound,
        enqueued: &[DateTime<Utc>],
        published_at: DateTime<Utc>,
    ) {
        if round.claimed > 0 {
            self.batches.fetch_add(1, Ordering::Relaxed);
        }
        let (published, retried, dead) = (
            round.published as u64,
            round.retried as u64,
            round.dead_lettered as u64,
        );
        self.published.fetch_add(published, Ordering::Relaxed);
        self.retried.fetch_add(retried, Ordering::Relaxed);
        self.dead_lettered.fetch_add(dead, Ordering::Relaxed);
        self.metrics.published.increment(published);
        self.metrics.retried.increment(retried);
        self.metrics.dead_lettered.increment(dead);
        for created_at in enqueued {
            self.metrics.published_after(*created_at, published_at);
        }
    }

    pub(crate) fn abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
        self.metrics.unreachable_batches.increment(1);
    }

    pub(crate) fn deleted(&self, rows: u64) {
        self.deleted.fetch_add(rows, Ordering::Relaxed);
        self.metrics.deleted.increment(rows);
    }

    pub(crate) fn trimmed(&self, entries: u64) {
        self.trimmed.fetch_add(entries, Ordering::Relaxed);
        self.metrics.trimmed.increment(entries);
    }

    /// Rows left unpublished because too few replicas acknowledged their entries.
    pub(crate) fn unreplicated(&self, rows: u64) {
        self.unreplicated.fetch_add(rows, Ordering::Relaxed);
        self.metrics.unreplicated.increment(rows);
    }

    fn snapshot(&self) -> RelayStats {
        RelayStats {
            published: self.published.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            abandoned_batches: self.abandoned.load(Ordering::Relaxed),
            deleted: self.deleted.load(Ordering::Relaxed),
            trimmed: self.trimmed.load(Ordering::Relaxed),
            unreplicated: self.unreplicated.load(Ordering::Relaxed),
        }
    }
}

/// What a relay has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rows published (their transaction committed).
    pub published: u64,
    /// Rows the broker refused, scheduled for another attempt.
    pub retried: u64,
    /// Rows dead-lettered after `max_attempts`.
    pub dead_lettered: u64,
    /// Batches published.
    pub batches: u64,
    /// Batches left in the outbox because the broker could not be reached.
    pub abandoned_batches: u64,
    /// Published rows deleted by retention.
    pub deleted: u64,
    /// Stream entries trimmed.
    pub trimmed: u64,
    /// Rows appended to their stream but left unpublished, without an attempt counted, because
    /// fewer replicas than [`wait_for_replicas`](super::RelayBuilder::wait_for_replicas) asks
    /// for acknowledged them in time; each is appended again later. Rising while `published`
    /// stays put means the replicas are missing or behind (a Redis without replicas never
    /// acknowledges).
    pub unreplicated: u64,
}

/// What [`RelayHandle::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayReport {
    /// False when the relay had been stopped already.
    pub stopped_now: bool,
    /// Threads joined.
    pub threads_joined: usize,
    /// Totals at the end.
    pub stats: RelayStats,
}

/// Publisher threads are named this, then their index.
pub(super) const PUBLISHER_THREAD: &str = "eventflow-relay-publisher-";

/// What [`RelayHandle::health`] looks at besides the threads.
pub(super) struct Observed {
    pub beats: Arc<RelayBeats>,
    pub probes: Probes,
    /// Publisher threads started.
    pub publishers: usize,
    /// Other threads started: listener, retention, trimming.
    pub services: usize,
}

/// A running relay. [`shutdown`](Self::shutdown) stops it; dropping the handle does too, as a
/// safety net.
pub struct RelayHandle {
    running: Mutex<Option<Threads>>,
    counters: Arc<Counters>,
    table: String,
    observed: Observed,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("table", &self.table)
            .field("running", &self.is_running())
            .finish()
    }
}

impl RelayHandle {
    pub(super) fn new(
        threads: Threads,
        counters: Arc<Counters>,
        table: String,
        observed: Observed,
    ) -> Self {
        Self {
            running: Mutex::new(Some(threads)),
            counters,
            table,
            observed,
        }
    }

    /// Whether the relay is live and ready, for liveness and readiness probes, as
    /// [`ConsumerHandle::health`](crate::ConsumerHandle::health) says for a consumer: which
    /// threads are alive, when a publisher last finished a round and last published, and
    /// whether the database and the broker answer a ping now. See [`RelayHealth::is_live`]
    /// and [`RelayHealth::is_ready`] for the rules.
    ///
    /// Returns within about [`PING_TIMEOUT`] (1 s) however the servers behave: the pings run
    /// on threads of their own, and one that has not answered in time is reported as failed.
    ///
    /// ```
    /// use eventflow::outbox::OutboxRelay;
    /// use eventflow::store::outbox::SqliteOutbox;
    /// use eventflow::transport::MemoryStream;
    ///
    /// let relay = OutboxRelay::builder()
    ///     .store(SqliteOutbox::open_in_memory()?)
    ///     .transport(MemoryStream::new())
    ///     .build()?
    ///     .start()?;
    /// let health = relay.health();
    /// assert!(health.is_live());
    /// if !health.is_ready() {
    ///     eprintln!("waiting out an outage: database {:?}, broker {:?}", health.database, health.broker);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn health(&self) -> RelayHealth {
        let observed = &self.observed;
        let (running, publishers, all) = match self.running.lock().as_ref() {
            Some(threads) => (true, threads.alive(PUBLISHER_THREAD), threads.alive("")),
            None => (false, 0, 0),
        };
        let (database, broker) = observed.probes.ping(PING_TIMEOUT);
        RelayHealth {
            running,
            publishers: ThreadCount {
                alive: publishers,
                configured: observed.publishers,
            },
            services: ThreadCount {
                alive: all - publishers,
                configured: observed.services,
            },
            since_last_round: observed.beats.round.since(),
            since_last_publish: observed.beats.published.since(),
            database,
            broker,
        }
    }

    /// Totals so far.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Whether the relay is running (not yet shut down).
    pub fn is_running(&self) -> bool {
        self.running.lock().is_some()
    }

    /// Stops the relay: each publisher finishes the batch it holds (committing it), then every
    /// thread is joined, waiting at most `timeout`. Calling it again returns at once.
    pub fn shutdown(&self, timeout: Duration) -> Result<RelayReport> {
        let Some(threads) = self.running.lock().take() else {
            return Ok(RelayReport {
                stopped_now: false,
                threads_joined: 0,
                stats: self.stats(),
            });
        };
        let joined = threads.stop_and_join(timeout, "outbox relay")?;
        let stats = self.stats();
        tracing::info!(table = %self.table, published = stats.published, "outbox relay stopped");
        Ok(RelayReport {
            stopped_now: true,
            threads_joined: joined,
            stats,
        })
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if self.is_running() {
            tracing::warn!(table = %self.table, "RelayHandle dropped without shutdown(); stopping it now");
            if let Err(error) = self.shutdown(Duration::from_secs(30)) {
                tracing::error!(%error, "stopping the outbox relay on drop failed");
            }
        }
    }
}
