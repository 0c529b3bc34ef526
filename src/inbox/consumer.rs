//! A configured consumer and how it starts its threads.

use super::handle::{ConsumerHandle, Observed, Threads, READER_THREAD, WORKER_THREAD};
use super::health::{probes, Heartbeats};
use super::idle::{Activity, IdleWatch};
use super::in_flight::InFlight;
use super::liveness::Liveness;
use super::metrics::{InboxMetrics, ParkedGauges};
use super::polls::EmptyPolls;
use super::receiver::{Reader, StoredSignal};
use super::settings::Settings;
use super::stats::Counters;
use super::suspects::SuspectGate;
use super::waiting_aggregates::WaitingAggregates;
use super::worker::Worker;
use crate::error::{Error, Result};
use crate::event::InboxRow;
use crate::handler::HandlerResult;
use crate::maintenance::{
    self, hung_handlers::HungHandlerWatch, inbox_retention::InboxRetention,
    parked_gauges::ParkedGaugeRefresh, process_liveness::ProcessLiveness,
    quarantine_retention::QuarantineRetention,
};
use crate::store::{not_migrated, InboxStore, Migrations};
use crate::transport::{Transport, TransportError};
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
        // Per-aggregate order needs more of the schema (an index) than a consumer without it,
        // which would pay for that index on every stored row.
        match settings.migrations {
            Migrations::Apply => {
                self.store.migrate()?;
                if settings.ordered {
                    self.store.migrate_ordered()?;
                }
            }
            Migrations::Verify => {
                let table = self.store.table();
                let mut pending = self.store.pending_migrations()?;
                let mut command = format!("eventflow migrate --table {table}");
                if settings.ordered {
                    pending.extend(self.store.pending_ordered_migrations()?);
                    command.push_str(" --ordered");
                }
                if !pending.is_empty() {
                    return Err(not_migrated(table, &pending, command).into());
                }
            }
            Migrations::Skip => {}
        }
        adopt_table(self.store.as_ref(), &settings.group, settings.clock.now())?;
        for stream in &settings.streams {
            // A missing group starts after what the inbox already stored from the stream (none:
            // from the start), so a group lost while the process was down does not replay
            // history. Finding that reads the stream's rows, so it is done only when the group
            // is missing; one that exists is left where it is.
            match self.transport.group_stats(stream, &settings.group) {
                Ok(_) => continue,
                Err(TransportError::NoGroup { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            let after = self.store.newest_stream_id(stream)?;
            self.transport.create_group(
                stream,
                &settings.group,
                after.as_deref().unwrap_or("0"),
            )?;
        }

        // Two batches per worker in flight: enough to keep workers busy, small enough that
        // readers wait (and memory stays bounded) when workers fall behind. In ordered mode a
        // reader hands aggregates only to a worker waiting for work (a rendezvous): busy
        // workers follow the aggregates they settle, and a queued hand-over would send them
        // after heads another worker already holds, in small contended batches.
        let capacity = if settings.ordered {
            0
        } else {
            settings.workers * 2
        };
        let (work_tx, work_rx) = crossbeam_channel::bounded(capacity);
        let counters = Arc::new(Counters::new(
            &settings.streams,
            InboxMetrics::new(&settings.streams, &settings.group),
        ));
        let heartbeats = Arc::new(Heartbeats::new());
        let activity = Arc::new(Activity::default());
        let (sweeps, sweep_requests) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Threads::new(stop.clone());
        let base_name = consumer_name(&settings.consumer_prefix);
        // Taken before any reader stores a row, so every row records this process. A store
        // that cannot tell processes apart has no lease and no watch; a lease that cannot be
        // taken now is taken by the watch later, rows stored meanwhile being found by age.
        let liveness = Arc::new(Liveness::default());
        let suspects = Arc::new(SuspectGate::default());
        let polls = Arc::new(EmptyPolls::new());
        let waiting = Arc::new(WaitingAggregates::default());
        let lease = match settings
            .process_leases
            .then(|| self.store.open_process_lease(&base_name))
        {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(lease))) => {
                liveness.set_process(lease.process());
                Some(Some(lease))
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "cannot take the consumer process lease yet; trying again in the background");
                Some(None)
            }
        };
        let in_flight = Arc::new(InFlight::new(
            (0..settings.workers).map(|index| format!("{WORKER_THREAD}{index}")),
        ));

        for index in 0..settings.workers {
            let worker = Worker {
                index,
                in_flight: in_flight.clone(),
                store: self.store.clone(),
                handler: self.handler.clone(),
                settings: self.settings.clone(),
                counters: counters.clone(),
                heartbeats: heartbeats.clone(),
                work: work_rx.clone(),
                halt: threads.halt_signal(),
                stop: stop.clone(),
                activity: activity.clone(),
                sweeps: sweep_requests.clone(),
                settled: Default::default(),
                failed_batches: Default::default(),
                recent_failure: Default::default(),
                liveness: liveness.clone(),
                suspects: suspects.clone(),
                waiting: waiting.clone(),
                polls: polls.clone(),
            };
            threads.spawn(format!("{WORKER_THREAD}{index}"), move || worker.run())?;
        }
        // Consumer names are per stream in Redis, so every stream's readers share the names.
        for (stream_index, stream) in settings.streams.iter().enumerate() {
            let stored = Arc::new(StoredSignal::default());
            for index in 0..settings.readers {
                let reader = Reader {
                    store: self.store.clone(),
                    transport: self.transport.clone(),
                    settings: self.settings.clone(),
                    counters: counters.clone(),
                    heartbeats: heartbeats.clone(),
                    stream: stream.clone(),
                    consumer: if index == 0 {
                        base_name.clone()
                    } else {
                        format!("{base_name}-{index}")
                    },
                    work: work_tx.clone(),
                    stop: stop.clone(),
                    activity: activity.clone(),
                    stored: stored.clone(),
                    liveness: liveness.clone(),
                    waiting: waiting.clone(),
                    read_count: std::cell::Cell::new(self.settings.read_batch),
                };
                let number = stream_index * settings.readers + index;
                threads.spawn(format!("{READER_THREAD}{number}"), move || reader.run())?;
            }
        }
        if settings.ordered {
            let refresh = ParkedGaugeRefresh {
                store: self.store.clone(),
                clock: settings.clock.clone(),
                gauges: ParkedGauges::new(&settings.group),
                interval: settings.parked_gauge_interval,
            };
            let stopping = threads.stopping_signal();
            threads.spawn("eventflow-parked-gauges".into(), move || {
                maintenance::run(refresh, stopping)
            })?;
        }
        if let Some(lease) = lease {
            let watch = ProcessLiveness {
                store: self.store.clone(),
                lease,
                consumer: base_name.clone(),
                liveness: liveness.clone(),
                forget_after: settings.orphan_after,
                work: work_tx.clone(),
                workers: settings.workers,
                warned: false,
            };
            let stopping = threads.stopping_signal();
            threads.spawn("eventflow-process-liveness".into(), move || {
                maintenance::run(watch, stopping)
            })?;
        }
        let watch =
            HungHandlerWatch::new(in_flight.clone(), settings.handler_timeout, &settings.group);
        let stopping = threads.stopping_signal();
        threads.spawn("eventflow-hung-handlers".into(), move || {
            maintenance::run(watch, stopping)
        })?;
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
        if let Some(keep) = settings.quarantine_retention {
            let cleaner = QuarantineRetention {
                store: self.store.clone(),
                clock: settings.clock.clone(),
                keep,
                interval: settings.retention_interval,
            };
            let stopping = threads.stopping_signal();
            threads.spawn("eventflow-quarantine-retention".into(), move || {
                maintenance::run(cleaner, stopping)
            })?;
        }
        tracing::info!(
            streams = ?settings.streams, group = %settings.group, consumer = %base_name,
            table = %self.store.table(), ordered = settings.ordered,
            readers = settings.reader_threads(), workers = settings.workers, "inbox consumer started"
        );
        Ok(ConsumerHandle::new(
            threads,
            counters,
            base_name,
            Observed {
                heartbeats,
                probes: probes(self.store.clone(), self.transport.clone()),
                readers: settings.reader_threads(),
                workers: settings.workers,
                in_flight,
                handler_timeout: settings.handler_timeout,
            },
            IdleWatch {
                activity,
                sweeps,
                transport: self.transport.clone(),
                streams: settings.streams.clone(),
                group: settings.group.clone(),
            },
        ))
    }
}

/// Makes `group` the owner of the store's table, or refuses when another group owns it: the
/// table deduplicates by `event_id`, so a second service on it would skip the first one's events.
fn adopt_table<S: InboxStore>(
    store: &S,
    group: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    let owner = store.adopt_owner(group, now)?;
    if owner == group {
        return Ok(());
    }
    Err(Error::TableOwned {
        table: store.table().to_string(),
        owner,
        group: group.to_string(),
        suggested: table_for(group),
    })
}

/// A valid table name for `group`'s inbox: `<group>_inbox`, lowercased, other characters as `_`.
fn table_for(group: &str) -> String {
    let mut name: String = group
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .take(34)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        name.insert(0, '_');
    }
    name + "_inbox"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_group_is_offered_a_valid_table_name() {
        for group in ["billing", "Shipping-Service", "9lives", "a.b c"] {
            let table = table_for(group);
            assert!(
                crate::store::validate_table_name(&table).is_ok(),
                "{group} -> {table}"
            );
        }
        assert_eq!(table_for("Shipping-Service"), "shipping_service_inbox");
    }
}
