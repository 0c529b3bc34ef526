//! A configured consumer and how it starts its threads.

use super::handle::{ConsumerHandle, Observed, Threads, READER_THREAD, WORKER_THREAD};
use super::health::{Heartbeats, Probes};
use super::metrics::InboxMetrics;
use super::receiver::Reader;
use super::settings::Settings;
use super::stats::Counters;
use super::worker::Worker;
use crate::error::Result;
use crate::event::InboxRow;
use crate::handler::HandlerResult;
use crate::maintenance::{self, inbox_retention::InboxRetention};
use crate::store::InboxStore;
use crate::transport::Transport;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The user's event handler for a store `S`. Implemented by every
/// `Fn(&mut S::Tx<'_>, &InboxRow) -> HandlerResult + Send + Sync`.
pub trait Handler<S: InboxStore>: Send + Sync + 'static {
    /// Handles one event inside `tx`.
    fn handle(&self, tx: &mut S::Tx<'_>, row: &InboxRow) -> HandlerResult;
}

impl<S, F> Handler<S> for F
where
    S: InboxStore,
    F: Fn(&mut S::Tx<'_>, &InboxRow) -> HandlerResult + Send + Sync + 'static,
{
    fn handle(&self, tx: &mut S::Tx<'_>, row: &InboxRow) -> HandlerResult {
        self(tx, row)
    }
}

/// A configured consumer, ready to [`start`](InboxConsumer::start).
pub struct InboxConsumer {
    runtime: Box<dyn Start>,
}

impl std::fmt::Debug for InboxConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxConsumer").finish_non_exhaustive()
    }
}

impl InboxConsumer {
    pub(crate) fn new<S: InboxStore>(runtime: Runtime<S>) -> Self {
        Self {
            runtime: Box::new(runtime),
        }
    }

    /// Migrates the database (unless disabled), creates the consumer group, then spawns the
    /// reader and worker threads and returns at once.
    ///
    /// Fails if the database or the broker cannot be reached now; once started, outages are
    /// logged and retried with backoff instead.
    pub fn start(self) -> Result<ConsumerHandle> {
        self.runtime.start()
    }
}

trait Start: Send {
    fn start(self: Box<Self>) -> Result<ConsumerHandle>;
}

/// Everything the threads share.
pub(crate) struct Runtime<S: InboxStore> {
    pub store: Arc<S>,
    pub transport: Arc<dyn Transport>,
    pub handler: Arc<dyn Handler<S>>,
    pub settings: Arc<Settings>,
}

impl<S: InboxStore> Start for Runtime<S> {
    fn start(self: Box<Self>) -> Result<ConsumerHandle> {
        let settings = &self.settings;
        if settings.migrate {
            self.store.migrate()?;
        }
        self.transport
            .ensure_group(&settings.stream, &settings.group)?;

        // Two batches per worker in flight: enough to keep workers busy, small enough that
        // readers wait (and memory stays bounded) when workers fall behind.
        let (work_tx, work_rx) = crossbeam_channel::bounded(settings.workers * 2);
        let counters = Arc::new(Counters::new(InboxMetrics::new(
            &settings.stream,
            &settings.group,
        )));
        let heartbeats = Arc::new(Heartbeats::new());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Threads::new(stop.clone());
        let base_name = consumer_name(&settings.consumer_prefix);

        for index in 0..settings.workers {
            let worker = Worker {
                store: self.store.clone(),
                handler: self.handler.clone(),
                settings: self.settings.clone(),
                counters: counters.clone(),
                heartbeats: heartbeats.clone(),
                work: work_rx.clone(),
                halt: threads.halt_signal(),
                stop: stop.clone(),
                recent_failure: Default::default(),
            };
            threads.spawn(format!("{WORKER_THREAD}{index}"), move || worker.run())?;
        }
        for index in 0..settings.readers {
            let reader = Reader {
                store: self.store.clone(),
                transport: self.transport.clone(),
                settings: self.settings.clone(),
                counters: counters.clone(),
                heartbeats: heartbeats.clone(),
                consumer: if index == 0 {
                    base_name.clone()
                } else {
                    format!("{base_name}-{index}")
                },
                work: work_tx.clone(),
                stop: stop.clone(),
            };
            threads.spawn(format!("{READER_THREAD}{index}"), move || reader.run())?;
        }
        if let Some(keep) = settings.retention {
            let cleaner = InboxRetention {
                store: self.store.clone(),
                clock: settings.clock.clone(),
                keep,
                interval: settings.retention_interval,
            };
            let stopping = threads.stopping_signal();
            threads.spawn("eventflow-retention".into(), move || {
                maintenance::run(cleaner, stopping)
            })?;
        }
        tracing::info!(
            stream = %settings.stream, group = %settings.group, consumer = %base_name,
            readers = settings.readers, workers = settings.workers, "inbox consumer started"
        );
        Ok(ConsumerHandle::new(
            threads,
            counters,
            base_name,
            Observed {
                heartbeats,
                probes: Probes::new(self.store.clone(), self.transport.clone()),
                readers: settings.readers,
                workers: settings.workers,
            },
        ))
    }
}

/// `{prefix}-{hostname}-{pid}`, as the reference consumer names itself.
fn consumer_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
