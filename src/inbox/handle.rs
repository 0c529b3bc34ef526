//! A running consumer: its threads, and stopping them.

use super::health::{Health, Heartbeats, ThreadCount, PING_TIMEOUT};
use super::idle::IdleWatch;
use super::in_flight::InFlight;
use super::stats::{ConsumerStats, Counters};
use crate::error::{Error, Result};
use crate::probe::Probes;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What [`ConsumerHandle::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// False when an earlier call had already stopped the consumer.
    pub stopped_now: bool,
    /// Rows committed as processed between the shutdown request and the threads' exit: the
    /// in-flight and queued work that was drained.
    pub drained: u64,
    /// Threads joined.
    pub threads_joined: usize,
    /// The consumer's counters at the end.
    pub stats: ConsumerStats,
}

/// Reader threads are named this, then their index.
pub(crate) const READER_THREAD: &str = "eventflow-reader-";
/// Worker threads are named this, then their index.
pub(crate) const WORKER_THREAD: &str = "eventflow-worker-";

/// What [`ConsumerHandle::health`] looks at besides the threads.
pub(crate) struct Observed {
    pub heartbeats: Arc<Heartbeats>,
    pub probes: Probes,
    pub readers: usize,
    pub workers: usize,
    pub in_flight: Arc<InFlight>,
    pub handler_timeout: std::time::Duration,
}

/// The threads of a running consumer and the signals that stop them.
pub(crate) struct Threads {
    stop: Arc<AtomicBool>,
    /// Never sent on: dropping it tells workers to stop after their current batch.
    halt: Option<Sender<()>>,
    halt_rx: Receiver<()>,
    /// Never sent on: dropped as shutdown begins, which wakes the maintenance services.
    stopping: Option<Sender<()>>,
    stopping_rx: Receiver<()>,
    done_tx: Sender<String>,
    done_rx: Receiver<String>,
    running: Vec<(String, JoinHandle<()>)>,
}

/// Tells the handle a thread has ended, even when it ends by panicking.
struct ExitNotice {
    name: String,
    done: Sender<String>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.done.send(std::mem::take(&mut self.name));
    }
}

impl Threads {
    pub fn new(stop: Arc<AtomicBool>) -> Self {
        let (halt, halt_rx) = crossbeam_channel::bounded(0);
        let (stopping, stopping_rx) = crossbeam_channel::bounded(0);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Self {
            stop,
            halt: Some(halt),
            halt_rx,
            stopping: Some(stopping),
            stopping_rx,
            done_tx,
            done_rx,
            running: Vec::new(),
        }
    }

    /// Threads whose name starts with `prefix` and that have not ended.
    pub fn alive(&self, prefix: &str) -> usize {
        self.running
            .iter()
            .filter(|(name, handle)| name.starts_with(prefix) && !handle.is_finished())
            .count()
    }

    pub fn halt_signal(&self) -> Receiver<()> {
        self.halt_rx.clone()
    }

    /// Disconnects as soon as shutdown begins.
    pub fn stopping_signal(&self) -> Receiver<()> {
        self.stopping_rx.clone()
    }

    /// Spawns a named thread whose end the handle hears about.
    pub fn spawn(&mut self, name: String, body: impl FnOnce() + Send + 'static) -> Result<()> {
        let notice = ExitNotice {
            name: name.clone(),
            done: self.done_tx.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _notice = notice;
                body();
            });
        match spawned {
            Ok(handle) => {
                self.running.push((name, handle));
                Ok(())
            }
            Err(source) => {
                // Stop what did start before reporting.
                self.stop.store(true, Ordering::SeqCst);
                self.stopping.take();
                self.halt.take();
                Err(Error::Spawn { name, source })
            }
        }
    }

    /// Stops the threads and joins them, waiting at most `timeout` (a timeout too large to add,
    /// such as `Duration::MAX`, means no deadline). Threads still busy then are detached and
    /// named in the error; they stop after their current batch. Returns how many were joined.
    pub fn stop_and_join(mut self, timeout: Duration, what: &str) -> Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        self.stopping.take();
        let deadline = Instant::now().checked_add(timeout);
        let mut alive: BTreeSet<String> =
            self.running.iter().map(|(name, _)| name.clone()).collect();
        while !alive.is_empty() {
            let done = match deadline {
                Some(deadline) => self.done_rx.recv_deadline(deadline).ok(),
                None => self.done_rx.recv().ok(),
            };
            match done {
                Some(name) => {
                    alive.remove(&name);
                }
                None => break,
            }
        }
        // Threads still busy stop after their current batch; the others have stopped.
        self.halt.take();

        let mut joined = 0;
        for (name, handle) in self.running {
            if alive.contains(&name) {
                continue; // detached: joining would wait past the timeout
            }
            if handle.join().is_err() {
                tracing::error!(thread = %name, "{what} thread panicked");
            }
            joined += 1;
        }
        if !alive.is_empty() {
            tracing::warn!(still_running = ?alive, ?timeout, "{what} shutdown timed out");
            return Err(Error::ShutdownTimedOut {
                timeout,
                still_running: alive.into_iter().collect(),
            });
        }
        Ok(joined)
    }
}

/// A running consumer. Call [`shutdown`](ConsumerHandle::shutdown) to stop it; dropping the
/// handle also stops it (waiting up to 30 s), as a safety net.
pub struct ConsumerHandle {
    threads: Mutex<Option<Threads>>,
    counters: Arc<Counters>,
    consumer: String,
    observed: Observed,
    idle: IdleWatch,
}

impl std::fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("consumer", &self.consumer)
            .field("running", &self.is_running())
            .finish()
    }
}

impl ConsumerHandle {
    pub(crate) fn new(
        threads: Threads,
        counters: Arc<Counters>,
        consumer: String,
        observed: Observed,
        idle: IdleWatch,
    ) -> Self {
        Self {
            threads: Mutex::new(Some(threads)),
            counters,
            consumer,
            observed,
            idle,
        }
    }

    /// This process's consumer name in the group (`{prefix}-{hostname}-{pid}`).
    pub fn consumer_name(&self) -> &str {
        &self.consumer
    }

    /// What the consumer has done so far, over all its streams.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// What the consumer has done so far, per stream, in the order the streams were given.
    /// Rows from a stream the consumer does not read (a replayed quarantine entry from another
    /// stream, rows written by other writers) count in [`stats`](Self::stats) only.
    pub fn stats_by_stream(&self) -> Vec<(String, ConsumerStats)> {
        self.counters.snapshot_by_stream()
    }

    /// Whether the consumer is live and ready, for liveness and readiness probes: which threads
    /// are alive, when the stream was last read and a batch last committed, and whether the
    /// database and the broker answer a ping now. See [`Health::is_live`] and
    /// [`Health::is_ready`] for the rules.
    ///
    /// Returns within about [`PING_TIMEOUT`] (1 s) however the servers behave: the pings run on
    /// threads of their own, and one that has not answered in time is reported as failed.
    ///
    /// ```
    /// # use eventflow::transport::MemoryStream;
    /// # use eventflow::InboxConsumer;
    /// # let handle = InboxConsumer::builder().transport(MemoryStream::new()).sqlite_in_memory()
    /// #     .stream("orders").group("billing").handler(|_tx, _row| Ok(())).build()?.start()?;
    /// let health = handle.health();
    /// assert!(health.is_live());
    /// if !health.is_ready() {
    ///     eprintln!("waiting out an outage: database {:?}, broker {:?}", health.database, health.broker);
    /// }
    /// # Ok::<(), eventflow::Error>(())
    /// ```
    pub fn health(&self) -> Health {
        let observed = &self.observed;
        let (running, readers, workers) = match self.threads.lock().as_ref() {
            Some(threads) => (
                true,
                threads.alive(READER_THREAD),
                threads.alive(WORKER_THREAD),
            ),
            None => (false, 0, 0),
        };
        let (database, broker) = observed.probes.ping(PING_TIMEOUT);
        Health {
            running,
            readers: ThreadCount {
                alive: readers,
                configured: observed.readers,
            },
            workers: ThreadCount {
                alive: workers,
                configured: observed.workers,
            },
            since_last_read: observed.heartbeats.since_last_read(),
            since_last_commit: observed.heartbeats.since_last_commit(),
            hung_handlers: observed
                .in_flight
                .running_longer_than(observed.handler_timeout),
            database,
            broker,
        }
    }

    /// Blocks until the consumer is idle, or `timeout` passes: everything published to its
    /// streams before the call has been read and stored, and every row due in the inbox has
    /// been settled (processed, scheduled for a retry that is not yet due under the
    /// consumer's clock, or dead-lettered). For tests: publish, wait, then assert, with no
    /// polling of [`stats`](Self::stats) and no sleeping.
    ///
    /// It waits on signals from the readers and workers, not on a timer: when they are quiet
    /// it checks that the streams hold nothing unread or unacknowledged for the group and asks
    /// a free worker to claim due rows at once rather than on its next poll, so retries made
    /// due by advancing a [`ManualClock`](crate::ManualClock), and pending rows no reader
    /// handed over (a replayed quarantine entry, a requeued dead letter), are handled before
    /// it returns, without waiting out `orphan_after`.
    /// Entries another consumer of the group holds unacknowledged keep the consumer from being
    /// idle until they are reclaimed. Not waited for: work other processes do on the same
    /// table, the maintenance services (retention, stream trimming), and, on a Redis older than
    /// 7, which does not report a group's lag, entries no reader has been handed yet.
    ///
    /// Returns [`Error::IdleTimedOut`] saying what was still going on when `timeout` ran out,
    /// [`Error::NotRunning`] after [`shutdown`](Self::shutdown), or the broker's error when
    /// the streams could not be checked.
    ///
    /// ```
    /// use eventflow::transport::{MemoryStream, Transport};
    /// use eventflow::{Event, InboxConsumer};
    /// use std::time::Duration;
    ///
    /// let stream = MemoryStream::new();
    /// let handle = InboxConsumer::builder()
    ///     .transport(stream.clone())
    ///     .sqlite_in_memory()
    ///     .stream("orders")
    ///     .group("billing")
    ///     .handler(|_tx, _row| Ok(()))
    ///     .build()?
    ///     .start()?;
    /// let event = Event::new("OrderCreated", uuid::Uuid::new_v4(), serde_json::json!({}));
    /// stream.publish("orders", event.to_entry_fields())?;
    ///
    /// handle.wait_idle(Duration::from_secs(10))?;
    /// assert_eq!(handle.stats().processed, 1);
    /// # handle.shutdown(Duration::from_secs(10))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_idle(&self, timeout: Duration) -> Result<()> {
        if !self.is_running() {
            return Err(Error::NotRunning);
        }
        self.idle.wait(timeout)
    }

    /// Whether the threads are running (shutdown not yet called).
    pub fn is_running(&self) -> bool {
        self.threads.lock().is_some()
    }

    /// Stops the consumer: readers stop reading (within the block time), workers finish the
    /// batches in flight and the rows already handed to them, then every thread is joined.
    ///
    /// Safe to call more than once; later calls report `stopped_now: false`. When `timeout`
    /// runs out first, returns [`Error::ShutdownTimedOut`] naming the busy threads, which then
    /// stop after their current batch. Nothing is lost either way: unhandled rows stay pending
    /// in the inbox, and unacknowledged entries stay pending in the stream.
    pub fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport> {
        let Some(threads) = self.threads.lock().take() else {
            return Ok(ShutdownReport {
                stopped_now: false,
                drained: 0,
                threads_joined: 0,
                stats: self.stats(),
            });
        };
        let processed_before = self.counters.snapshot().processed;
        let joined = threads.stop_and_join(timeout, "inbox consumer")?;
        // Every thread is gone: what is left queued stays pending in the inbox.
        self.counters.metrics.release_gauges();
        let stats = self.stats();
        let drained = stats.processed - processed_before;
        tracing::info!(consumer = %self.consumer, drained, "inbox consumer stopped");
        Ok(ShutdownReport {
            stopped_now: true,
            drained,
            threads_joined: joined,
            stats,
        })
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        if self.is_running() {
            tracing::warn!(consumer = %self.consumer, "ConsumerHandle dropped without shutdown(); stopping it now");
            if let Err(error) = self.shutdown(Duration::from_secs(30)) {
                tracing::error!(%error, "stopping the inbox consumer on drop failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_ended_is_not_counted_alive() {
        let mut threads = Threads::new(Arc::default());
        let (release, wait) = crossbeam_channel::bounded::<()>(0);
        threads
            .spawn(format!("{READER_THREAD}0"), move || {
                let _ = wait.recv();
            })
            .unwrap();
        threads.spawn(format!("{WORKER_THREAD}0"), || ()).unwrap();
        let ended = threads.done_rx.recv().unwrap();
        assert_eq!(ended, format!("{WORKER_THREAD}0"));
        // The exit notice is sent as the thread's closure returns, a moment before it ends.
        while threads.alive(WORKER_THREAD) != 0 {
            std::thread::yield_now();
        }
        assert_eq!(threads.alive(READER_THREAD), 1);
        drop(release);
    }
}
