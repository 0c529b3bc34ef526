//! The relay: starts the threads that publish committed outbox rows to their streams (the
//! publishers, `publisher.rs`; the listener that wakes them, `listener.rs`; retention and stream
//! trimming, `maintenance/`) and hands back their handle.
//!
//! Each publisher thread loops: claim a batch of due rows, append them with one pipelined
//! round trip, record each row's outcome, commit. A full batch is followed at once by the next;
//! otherwise the thread sleeps until a listener wakes it (PostgreSQL `NOTIFY` on commit) or the
//! poll interval passes, or, when due rows remain that another relay holds, until a sibling
//! commits (at most `contention_wait`, 10 ms by default). A broker that cannot be reached leaves the rows untouched (no attempt
//! is counted) and the thread backs off; an entry the broker refuses is retried on the
//! [`RetryPolicy`]'s schedule and dead-lettered after `max_attempts`.

use super::builder::RelayBuilder;
use super::handle::{Counters, Observed, RelayHandle, PUBLISHER_THREAD};
use super::health::RelayBeats;
use super::listener::listen_until_stopped;
use super::publisher::publish_until_stopped;
use crate::clock::Clock;
use crate::error::Result;
use crate::inbox::Threads;
use crate::maintenance::outbox_retention::OutboxRetention;
use crate::maintenance::run as run_service;
use crate::maintenance::stream_trim::StreamTrim;
use crate::probe::Probes;
use crate::retry::RetryPolicy;
use crate::store::outbox::OutboxStore;
use crate::store::{not_migrated, Migrations};
use crate::transport::partition::Partitioning;
use crate::transport::{ReplicaWait, Transport};
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Publishes committed outbox rows to their streams; see the [module docs](crate::outbox).
pub struct OutboxRelay {
    pub(super) store: Arc<dyn OutboxStore>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) workers: usize,
    pub(super) batch_size: usize,
    pub(super) partitioning: Partitioning,
    pub(super) poll_interval: Option<Duration>,
    pub(super) contention_wait: Option<Duration>,
    pub(super) max_attempts: u32,
    pub(super) retry_policy: Arc<dyn RetryPolicy>,
    pub(super) retention: Option<Duration>,
    pub(super) retention_interval: Duration,
    pub(super) trim_after: Option<Duration>,
    pub(super) trim_interval: Duration,
    pub(super) replica_wait: Option<ReplicaWait>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) migrations: Migrations,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("table", &self.store.table())
            .field("workers", &self.workers)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    /// Settings for a relay.
    pub fn builder() -> RelayBuilder {
        RelayBuilder::new()
    }

    /// The store the relay publishes from, for the application's own use (counts, requeues).
    pub fn store(&self) -> &Arc<dyn OutboxStore> {
        &self.store
    }

    /// Migrates (unless turned off) and starts the publisher threads, the listener (when the
    /// store has one) and the maintenance threads.
    pub fn start(self) -> Result<RelayHandle> {
        match self.migrations {
            Migrations::Apply => self.store.migrate()?,
            Migrations::Verify => {
                let table = self.store.table();
                let pending = self.store.pending_migrations()?;
                if !pending.is_empty() {
                    let command = format!("eventflow migrate --outbox --outbox-table {table}");
                    return Err(not_migrated(table, &pending, command).into());
                }
            }
            Migrations::Skip => {}
        }
        // A store that cannot listen now (the database is down) may later: only a store that
        // says it has no listener makes the relay a pure poller.
        let first_listener = match self.store.listener() {
            Ok(listener) => listener.map(Ok),
            Err(error) => Some(Err(error)),
        };
        let listens = first_listener.is_some();
        let poll_interval = self.poll_interval.unwrap_or(if listens {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        });

        let stopping = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::new(self.store.table()));
        let streams = Arc::new(Mutex::new(BTreeSet::new()));
        let (publishers, wake_rxs): (Vec<_>, Vec<_>) = (0..self.workers)
            .map(|_| {
                let (wake, wake_rx) = crossbeam_channel::bounded(1);
                (Publisher::new(wake), wake_rx)
            })
            .unzip();
        let beats = Arc::new(RelayBeats::new());
        let shared = Arc::new(Shared {
            beats: beats.clone(),
            publishers,
            store: self.store.clone(),
            transport: self.transport.clone(),
            clock: self.clock.clone(),
            retry_policy: self.retry_policy,
            batch_size: self.batch_size,
            partitioning: self.partitioning,
            max_attempts: self.max_attempts,
            replica_wait: self.replica_wait,
            poll_interval,
            contention_wait: self.contention_wait.map(|wait| wait.min(poll_interval)),
            stopping: stopping.clone(),
            counters: counters.clone(),
            streams: streams.clone(),
        });
        let mut threads = Threads::new(stopping.clone());
        // The listener, retention and trimming threads, counted for the health check.
        let mut services = 0;
        // Disconnects as shutdown begins, waking idle threads.
        let stop_rx = threads.stopping_signal();
        for (n, wake_rx) in wake_rxs.into_iter().enumerate() {
            let shared = shared.clone();
            let stop = stop_rx.clone();
            threads.spawn(format!("{PUBLISHER_THREAD}{n}"), move || {
                publish_until_stopped(&shared, n, &wake_rx, &stop)
            })?;
        }
        if let Some(first) = first_listener {
            let shared = shared.clone();
            threads.spawn("eventflow-relay-listener".to_string(), move || {
                listen_until_stopped(&shared, first)
            })?;
            services += 1;
        }
        if let Some(keep) = self.retention {
            let retention = OutboxRetention {
                store: self.store.clone(),
                clock: self.clock.clone(),
                keep,
                interval: self.retention_interval,
                counters: counters.clone(),
            };
            let stop = stop_rx.clone();
            threads.spawn("eventflow-outbox-retention".to_string(), move || {
                run_service(retention, stop)
            })?;
            services += 1;
        }
        if let Some(keep) = self.trim_after {
            let trim = StreamTrim {
                transport: self.transport.clone(),
                clock: self.clock.clone(),
                keep,
                interval: self.trim_interval,
                streams,
                counters: counters.clone(),
            };
            let stop = stop_rx.clone();
            threads.spawn("eventflow-stream-trim".to_string(), move || {
                run_service(trim, stop)
            })?;
            services += 1;
        }
        tracing::info!(table = %self.store.table(), workers = self.workers, "outbox relay started");
        let store = self.store.clone();
        Ok(RelayHandle::new(
            threads,
            counters,
            self.store.table().to_string(),
            Observed {
                beats,
                probes: Probes::new(
                    Arc::new(move || store.ping().map_err(|error| error.to_string())),
                    self.transport.clone(),
                ),
                publishers: self.workers,
                services,
            },
        ))
    }
}

/// What every relay thread shares.
pub(super) struct Shared {
    /// When a publisher last finished a round and last published, for the health check.
    pub(super) beats: Arc<RelayBeats>,
    pub(super) store: Arc<dyn OutboxStore>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) retry_policy: Arc<dyn RetryPolicy>,
    pub(super) batch_size: usize,
    /// Which stream each event goes to (its aggregate's partition of a split stream).
    pub(super) partitioning: Partitioning,
    pub(super) max_attempts: u32,
    /// See [`RelayBuilder::wait_for_replicas`].
    pub(super) replica_wait: Option<ReplicaWait>,
    pub(super) poll_interval: Duration,
    /// See [`RelayBuilder::contention_wait`]; at most the poll interval.
    pub(super) contention_wait: Option<Duration>,
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) counters: Arc<Counters>,
    pub(super) streams: Arc<Mutex<BTreeSet<String>>>,
    /// Each publisher thread's wake-up and what it waits for, by index.
    pub(super) publishers: Vec<Publisher>,
}

/// A publisher thread's wake-up, and whether it is waiting for one: so that a commit's notice
/// wakes one waiting publisher rather than all (the others would claim nothing, and their
/// empty rounds take the CPU and round trips the one with rows needs), and a sibling's commit
/// wakes only the publishers whose claim came back short of rows another publisher held.
pub(super) struct Publisher {
    wake: crossbeam_channel::Sender<()>,
    state: AtomicU8,
}

/// Publishing, or woken and about to: a wake-up sent now is taken at the end of the round.
const WORKING: u8 = 0;
/// Waiting for a notice or the poll interval.
const WAITING: u8 = 1;
/// Waiting for a sibling to commit: its last claim came back short of rows another held.
const CONTENDED: u8 = 2;

impl Publisher {
    fn new(wake: crossbeam_channel::Sender<()>) -> Self {
        Self {
            wake,
            state: AtomicU8::new(WORKING),
        }
    }

    /// Wakes this publisher if it waits in one of `states`, and says whether it did.
    fn wake_if(&self, states: &[u8]) -> bool {
        let woken = states.iter().any(|&state| {
            self.state
                .compare_exchange(state, WORKING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        if woken {
            let _ = self.wake.try_send(()); // a full channel already has a wake-up queued
        }
        woken
    }
}

impl Shared {
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Wakes the publisher threads but `index` that wait for a sibling's commit: `index`
    /// committed a batch, which may free rows they could not claim.
    pub(super) fn wake_siblings(&self, index: usize) {
        for (n, publisher) in self.publishers.iter().enumerate() {
            if n != index {
                publisher.wake_if(&[CONTENDED]);
            }
        }
    }

    /// For a commit's notice: wakes one waiting publisher, or, when every one is publishing,
    /// gives each a wake-up for the end of its round (its claim may have missed the new rows).
    pub(super) fn wake_for_notice(&self) {
        let woke_one = self
            .publishers
            .iter()
            .any(|publisher| publisher.wake_if(&[WAITING, CONTENDED]));
        if !woke_one {
            self.wake_all();
        }
    }

    /// Gives every publisher a wake-up (notices may have been lost).
    pub(super) fn wake_all(&self) {
        for publisher in &self.publishers {
            publisher.state.store(WORKING, Ordering::SeqCst);
            let _ = publisher.wake.try_send(());
        }
    }

    /// Publisher `index` is about to wait: for a sibling's commit when `contended`, otherwise
    /// for a notice or the poll interval.
    pub(super) fn waiting(&self, index: usize, contended: bool) {
        let state = if contended { CONTENDED } else { WAITING };
        self.publishers[index].state.store(state, Ordering::SeqCst);
    }

    /// Publisher `index` woke (by a wake-up, or its wait ran out) and starts a round.
    pub(super) fn working(&self, index: usize) {
        self.publishers[index]
            .state
            .store(WORKING, Ordering::SeqCst);
    }
}
