//! The relay: threads that publish committed outbox rows to their streams.
//!
//! Each publisher thread loops: claim a batch of due rows, append them with one pipelined
//! round trip, record each row's outcome, commit. A full batch is followed at once by the next;
//! otherwise the thread sleeps until a listener wakes it (PostgreSQL `NOTIFY` on commit) or the
//! poll interval passes. A broker that cannot be reached leaves the rows untouched (no attempt
//! is counted) and the thread backs off; an entry the broker refuses is retried on the
//! [`RetryPolicy`]'s schedule and dead-lettered after `max_attempts`.

use crate::backoff::{random_unit, Backoff};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::inbox::Threads;
use crate::maintenance::outbox_retention::OutboxRetention;
use crate::maintenance::run as run_service;
use crate::maintenance::stream_trim::StreamTrim;
use crate::outbox::metrics::RelayMetrics;
use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::store::outbox::{
    ClaimDue, Delivery, EnqueueListener, OutboxRow, OutboxStore, PublishRound, RowOutcome,
    DEFAULT_OUTBOX_TABLE,
};
use crate::store::validate_table_name;
use crate::transport::{OutgoingEntry, Transport, TransportError};
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a listener waits before looking at the stop flag again.
const LISTEN_SLICE: Duration = Duration::from_millis(250);

enum StoreChoice {
    Unset,
    #[cfg(feature = "postgres")]
    Postgres(String),
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    Given(Arc<dyn OutboxStore>),
}

enum TransportChoice {
    Unset,
    #[cfg(feature = "redis")]
    Redis(String),
    Given(Arc<dyn Transport>),
}

/// Settings for an [`OutboxRelay`]; see [`OutboxRelay::builder`]. Every setting has a default
/// but the store and the transport.
#[must_use = "a builder does nothing until build() is called"]
pub struct RelayBuilder {
    store: StoreChoice,
    transport: TransportChoice,
    table: String,
    workers: usize,
    batch_size: usize,
    poll_interval: Option<Duration>,
    max_attempts: u32,
    retry_policy: Arc<dyn RetryPolicy>,
    retention: Option<Duration>,
    retention_interval: Duration,
    trim_after: Option<Duration>,
    trim_interval: Duration,
    clock: Arc<dyn Clock>,
    migrate: bool,
}

impl RelayBuilder {
    /// Publish from the outbox in PostgreSQL at `url`.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.store = StoreChoice::Postgres(url.into());
        self
    }

    /// Publish from the outbox in the SQLite file at `path`.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.store = StoreChoice::Sqlite(path.into());
        self
    }

    /// Publish from an outbox store built by hand (a [`SqliteOutbox`] shared with the
    /// application, say). [`table`](Self::table) does not apply to it.
    ///
    /// [`SqliteOutbox`]: crate::store::outbox::SqliteOutbox
    pub fn store(mut self, store: impl OutboxStore) -> Self {
        self.store = StoreChoice::Given(Arc::new(store));
        self
    }

    /// Publish to Redis at `url`.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.transport = TransportChoice::Redis(url.into());
        self
    }

    /// Publish through any transport (a [`MemoryStream`](crate::transport::MemoryStream) in
    /// tests and demos).
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = TransportChoice::Given(Arc::new(transport));
        self
    }

    /// The outbox table's name, for stores built from a URL or path. Defaults to
    /// `event_outbox`.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Publisher threads. Each publishes its own batches; one aggregate is only ever published
    /// by one of them at a time. Defaults to 2.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Most rows claimed and published per round trip. Each claim is planned afresh (see
    /// [`PostgresOutbox`](crate::store::outbox::PostgresOutbox)), so larger batches spread that
    /// cost: on the bench machine 500 published about 2.5 times as many events per second as
    /// 100. Defaults to 500.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// How often an idle publisher looks for due rows without being woken. Defaults to 1 s
    /// when the store wakes relays on commit (PostgreSQL), 100 ms when it cannot (SQLite).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// Attempts before a row the broker keeps refusing is dead-lettered. An unreachable
    /// broker counts no attempt. Defaults to 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// When a refused row is tried again. Defaults to 1 s doubling to 5 min, with 10 % jitter.
    pub fn retry_policy(mut self, policy: impl RetryPolicy) -> Self {
        self.retry_policy = Arc::new(policy);
        self
    }

    /// How long published rows are kept before retention deletes them (in batches of 1,000);
    /// `None` keeps them for ever. Defaults to 7 days.
    pub fn retention(mut self, keep: Option<Duration>) -> Self {
        self.retention = keep;
        self
    }

    /// How often retention runs. Defaults to 1 min.
    pub fn retention_interval(mut self, interval: Duration) -> Self {
        self.retention_interval = interval;
        self
    }

    /// Trims the streams published to: entries older than `keep` that every consumer group
    /// has read and acknowledged go; unread or unacknowledged entries never do. `None` never
    /// trims. Defaults to `None`.
    pub fn trim_streams(mut self, keep: Option<Duration>) -> Self {
        self.trim_after = keep;
        self
    }

    /// How often streams are trimmed. Defaults to 1 min.
    pub fn trim_interval(mut self, interval: Duration) -> Self {
        self.trim_interval = interval;
        self
    }

    /// The clock for due times, retry times and retention. Defaults to the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Whether `start()` creates or upgrades the outbox table first. Defaults to true.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Checks the settings and connects lazily (nothing is contacted yet).
    pub fn build(self) -> Result<OutboxRelay> {
        if self.workers == 0 {
            return Err(Error::config("workers", "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config("batch_size", "must be between 1 and 10,000"));
        }
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        for (field, interval) in [
            ("poll_interval", self.poll_interval),
            ("retention", self.retention),
            ("retention_interval", Some(self.retention_interval)),
            ("trim_streams", self.trim_after),
            ("trim_interval", Some(self.trim_interval)),
        ] {
            if interval == Some(Duration::ZERO) {
                return Err(Error::config(field, "must be longer than zero"));
            }
        }
        validate_table_name(&self.table).map_err(|e| Error::config("table", e.to_string()))?;
        // Each publisher holds a connection while it publishes, retention one more.
        let connections = self.workers as u32 + 1;
        let store: Arc<dyn OutboxStore> = match self.store {
            StoreChoice::Unset => {
                return Err(Error::config(
                    "store",
                    "choose where the outbox is: .postgres(url), .sqlite(path) or .store(..)",
                ))
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres(url) => Arc::new(
                crate::store::outbox::PostgresOutbox::builder(url)
                    .table(&self.table)
                    .pool_size(connections)
                    .build()
                    .map_err(|e| Error::config("postgres", e.to_string()))?,
            ),
            #[cfg(feature = "sqlite")]
            StoreChoice::Sqlite(path) => Arc::new(
                crate::store::outbox::SqliteOutbox::open(path)
                    .and_then(|outbox| outbox.with_table(&self.table))?,
            ),
            StoreChoice::Given(store) => store,
        };
        let transport: Arc<dyn Transport> = match self.transport {
            TransportChoice::Unset => {
                return Err(Error::config(
                    "transport",
                    "choose where events go: .redis(url) or .transport(..)",
                ))
            }
            #[cfg(feature = "redis")]
            TransportChoice::Redis(url) => Arc::new(
                crate::transport::RedisStreams::builder(url)
                    .pool_size(connections)
                    .build()
                    .map_err(|e| Error::config("redis", e.to_string()))?,
            ),
            TransportChoice::Given(transport) => transport,
        };
        Ok(OutboxRelay {
            store,
            transport,
            workers: self.workers,
            batch_size: self.batch_size,
            poll_interval: self.poll_interval,
            max_attempts: self.max_attempts,
            retry_policy: self.retry_policy,
            retention: self.retention,
            retention_interval: self.retention_interval,
            trim_after: self.trim_after,
            trim_interval: self.trim_interval,
            clock: self.clock,
            migrate: self.migrate,
        })
    }
}

/// Publishes committed outbox rows to their streams; see the [module docs](crate::outbox).
pub struct OutboxRelay {
    store: Arc<dyn OutboxStore>,
    transport: Arc<dyn Transport>,
    workers: usize,
    batch_size: usize,
    poll_interval: Option<Duration>,
    max_attempts: u32,
    retry_policy: Arc<dyn RetryPolicy>,
    retention: Option<Duration>,
    retention_interval: Duration,
    trim_after: Option<Duration>,
    trim_interval: Duration,
    clock: Arc<dyn Clock>,
    migrate: bool,
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
        RelayBuilder {
            store: StoreChoice::Unset,
            transport: TransportChoice::Unset,
            table: DEFAULT_OUTBOX_TABLE.to_string(),
            workers: 2,
            batch_size: 500,
            poll_interval: None,
            max_attempts: 10,
            retry_policy: Arc::new(ExponentialBackoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
                jitter_ratio: 0.1,
            }),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_interval: Duration::from_secs(60),
            trim_after: None,
            trim_interval: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
            migrate: true,
        }
    }

    /// The store the relay publishes from, for the application's own use (counts, requeues).
    pub fn store(&self) -> &Arc<dyn OutboxStore> {
        &self.store
    }

    /// Migrates (unless turned off) and starts the publisher threads, the listener (when the
    /// store has one) and the maintenance threads.
    pub fn start(self) -> Result<RelayHandle> {
        if self.migrate {
            self.store.migrate()?;
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
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            transport: self.transport.clone(),
            clock: self.clock.clone(),
            retry_policy: self.retry_policy,
            batch_size: self.batch_size,
            max_attempts: self.max_attempts,
            poll_interval,
            stopping: stopping.clone(),
            counters: counters.clone(),
            streams: streams.clone(),
        });
        let mut threads = Threads::new(stopping.clone());
        // Disconnects as shutdown begins, waking idle threads.
        let stop_rx = threads.stopping_signal();
        let mut wakers = Vec::with_capacity(self.workers);
        for n in 0..self.workers {
            let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
            wakers.push(wake_tx);
            let shared = shared.clone();
            let stop = stop_rx.clone();
            threads.spawn(format!("eventflow-relay-{n}"), move || {
                publish_until_stopped(&shared, &wake_rx, &stop)
            })?;
        }
        if let Some(first) = first_listener {
            let shared = shared.clone();
            threads.spawn("eventflow-relay-listener".to_string(), move || {
                listen_until_stopped(&shared, first, &wakers)
            })?;
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
        }
        tracing::info!(table = %self.store.table(), workers = self.workers, "outbox relay started");
        Ok(RelayHandle {
            running: Mutex::new(Some(threads)),
            counters,
            table: self.store.table().to_string(),
        })
    }
}

/// What every relay thread shares.
struct Shared {
    store: Arc<dyn OutboxStore>,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    retry_policy: Arc<dyn RetryPolicy>,
    batch_size: usize,
    max_attempts: u32,
    poll_interval: Duration,
    stopping: Arc<AtomicBool>,
    counters: Arc<Counters>,
    streams: Arc<Mutex<BTreeSet<String>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

fn publish_until_stopped(shared: &Shared, wake: &Receiver<()>, stop: &Receiver<()>) {
    let mut backoff = Backoff::new();
    while !shared.stopping() {
        let now = shared.clock.now();
        let claim = ClaimDue {
            limit: shared.batch_size,
            now,
        };
        // When the published rows were enqueued, recorded once their batch commits.
        let mut enqueued = Vec::new();
        // A panicking clock, policy or transport must not end the thread.
        let round = catch_unwind(AssertUnwindSafe(|| {
            shared.store.publish_due(&claim, &mut |rows| {
                let delivery = deliver(shared, rows, now);
                if let Delivery::Settled(outcomes) = &delivery {
                    enqueued.clear();
                    enqueued.extend(rows.iter().zip(outcomes).filter_map(|(row, outcome)| {
                        matches!(outcome, RowOutcome::Published { .. }).then_some(row.created_at)
                    }));
                }
                delivery
            })
        }));
        match round {
            Ok(Ok(round)) if round.abandoned => {
                shared.counters.abandoned();
                if !backoff.wait(&shared.stopping) {
                    return;
                }
            }
            Ok(Ok(round)) => {
                shared
                    .counters
                    .record(&round, &enqueued, shared.clock.now());
                backoff.reset();
                if round.claimed >= shared.batch_size {
                    continue; // more may be waiting
                }
                crossbeam_channel::select! {
                    recv(wake) -> _ => {}
                    recv(stop) -> _ => return,
                    default(shared.poll_interval) => {}
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox relay cannot publish; backing off");
                if !backoff.wait(&shared.stopping) {
                    return;
                }
            }
            Err(panic) => {
                tracing::error!(panic = %panic_text(&panic), "outbox relay batch panicked; backing off");
                if !backoff.wait(&shared.stopping) {
                    return;
                }
            }
        }
    }
}

/// Appends a claimed batch in one round trip and says what became of each row.
fn deliver(shared: &Shared, rows: &[OutboxRow], now: DateTime<Utc>) -> Delivery {
    let fields: Vec<Vec<(String, Vec<u8>)>> =
        rows.iter().map(|row| row.event.to_entry_fields()).collect();
    let entries: Vec<OutgoingEntry<'_>> = rows
        .iter()
        .zip(&fields)
        .map(|(row, fields)| OutgoingEntry {
            stream: &row.stream,
            fields,
        })
        .collect();
    match shared.transport.publish_entries(&entries) {
        Err(TransportError::Unavailable(error)) => {
            tracing::warn!(%error, rows = rows.len(), "stream broker unreachable; the batch stays in the outbox");
            Delivery::Abandoned
        }
        // The round trip failed as a whole in a way a retry may not cure: count an attempt.
        Err(error) => {
            let error = error.to_string();
            Delivery::Settled(
                rows.iter()
                    .map(|row| failed(shared, row, &error, now))
                    .collect(),
            )
        }
        Ok(results) => {
            let mut streams = shared.streams.lock();
            Delivery::Settled(
                rows.iter()
                    .zip(results)
                    .map(|(row, result)| match result {
                        Ok(entry_id) => {
                            if !streams.contains(&row.stream) {
                                streams.insert(row.stream.clone());
                            }
                            RowOutcome::Published { entry_id }
                        }
                        Err(error) => failed(shared, row, &error.to_string(), now),
                    })
                    .collect(),
            )
        }
    }
}

fn failed(shared: &Shared, row: &OutboxRow, error: &str, now: DateTime<Utc>) -> RowOutcome {
    let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
    if attempts >= shared.max_attempts {
        tracing::error!(
            outbox_id = row.id,
            event_id = %row.event.event_id,
            event_type = %row.event.event_type,
            aggregate_id = %row.event.aggregate_id,
            stream = %row.stream,
            attempts,
            error,
            "outbox event dead-lettered"
        );
        return RowOutcome::DeadLetter {
            error: error.to_string(),
        };
    }
    let delay = shared.retry_policy.delay(attempts, random_unit());
    let at = chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    tracing::warn!(event_id = %row.event.event_id, stream = %row.stream, attempts, error, %at, "outbox event refused; retrying later");
    RowOutcome::Retry {
        error: error.to_string(),
        at,
    }
}

fn listen_until_stopped(
    shared: &Shared,
    first: std::result::Result<Box<dyn EnqueueListener>, crate::store::StoreError>,
    wakers: &[Sender<()>],
) {
    let wake_all = || {
        for waker in wakers {
            let _ = waker.try_send(()); // a full channel already has a wake-up queued
        }
    };
    let mut backoff = Backoff::new();
    let mut listener = match first {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, "outbox listener unavailable; polling until it is back");
            None
        }
    };
    while !shared.stopping() {
        let Some(active) = listener.as_mut() else {
            if !backoff.wait(&shared.stopping) {
                return;
            }
            match shared.store.listener() {
                Ok(Some(fresh)) => {
                    listener = Some(fresh);
                    backoff.reset();
                    wake_all(); // notices sent while it was down are lost
                }
                Ok(None) => return,
                Err(error) => tracing::warn!(%error, "outbox listener still unavailable"),
            }
            continue;
        };
        match active.wait(LISTEN_SLICE) {
            Ok(true) => wake_all(),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "outbox listener lost; reconnecting");
                listener = None;
                wake_all();
            }
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".to_string())
}

/// The relay's totals, kept both for [`RelayHandle::stats`] and as metrics.
pub(crate) struct Counters {
    published: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    batches: AtomicU64,
    abandoned: AtomicU64,
    deleted: AtomicU64,
    trimmed: AtomicU64,
    metrics: RelayMetrics,
}

impl Counters {
    fn new(table: &str) -> Self {
        Self {
            published: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            trimmed: AtomicU64::new(0),
            metrics: RelayMetrics::new(table),
        }
    }

    /// A committed batch, and when its published rows were enqueued.
    fn record(
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

    fn abandoned(&self) {
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

    fn snapshot(&self) -> RelayStats {
        RelayStats {
            published: self.published.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            abandoned_batches: self.abandoned.load(Ordering::Relaxed),
            deleted: self.deleted.load(Ordering::Relaxed),
            trimmed: self.trimmed.load(Ordering::Relaxed),
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

/// A running relay. [`shutdown`](Self::shutdown) stops it; dropping the handle does too, as a
/// safety net.
pub struct RelayHandle {
    running: Mutex<Option<Threads>>,
    counters: Arc<Counters>,
    table: String,
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
