//! Background services that keep tables and streams in shape, one file each, and the small
//! loop that runs them. The inbox consumer and the outbox relay start the ones configured on
//! their builders on threads of their own and stop them with the rest at shutdown.
//!
//! - `inbox_retention`: deletes processed inbox rows past their retention, in batches.
//! - `quarantine_retention`: deletes quarantined entries past their retention, in batches.
//! - `outbox_retention`: deletes published outbox rows past their retention, in batches.
//! - `stream_trim`: trims stream entries every consumer group has read and acknowledged.
//! - `parked_gauges`: refreshes an ordered consumer's parked-aggregate gauges.
//! - `hung_handlers`: logs and counts handlers running past the handler time limit.
//! - `process_liveness`: keeps a consumer process's lease and finds processes that died.

pub(crate) mod hung_handlers;
pub(crate) mod inbox_retention;
pub(crate) mod outbox_retention;
pub(crate) mod parked_gauges;
pub(crate) mod process_liveness;
pub(crate) mod quarantine_retention;
pub(crate) mod stream_trim;

use crossbeam_channel::{select, Receiver, TryRecvError};
use std::time::Duration;

/// A background service: a round of work run on an interval.
pub(crate) trait Service: Send + 'static {
    /// How long to wait between rounds.
    fn interval(&self) -> Duration;

    /// Does one round. `stopping` says whether shutdown has begun, for a round that could run
    /// long to stop between its steps.
    fn run_once(&mut self, stopping: &dyn Fn() -> bool);
}

/// Runs `service` once per interval (the first round after one interval) until `stop` is
/// dropped. Meant to be a thread's body.
pub(crate) fn run(mut service: impl Service, stop: Receiver<()>) {
    let tick = crossbeam_channel::tick(service.interval());
    let stopping = || matches!(stop.try_recv(), Err(TryRecvError::Disconnected));
    loop {
        select! {
            recv(tick) -> _ => service.run_once(&stopping),
            recv(stop) -> _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counting(Arc<AtomicUsize>, crossbeam_channel::Sender<()>);

    impl Service for Counting {
        fn interval(&self) -> Duration {
            Duration::from_millis(1)
        }
        fn run_once(&mut self, _stopping: &dyn Fn() -> bool) {
            self.0.fetch_add(1, Ordering::SeqCst);
            let _ = self.1.try_send(());
        }
    }

    #[test]
    fn a_service_runs_on_its_interval_until_stopped() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let (ran_tx, ran_rx) = crossbeam_channel::bounded(1);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let service = Counting(rounds.clone(), ran_tx);
        let thread = std::thread::spawn(move || run(service, stop_rx));
        ran_rx.recv().unwrap();
        ran_rx.recv().unwrap();
        drop(stop_tx);
        thread.join().unwrap();
        assert!(rounds.load(Ordering::SeqCst) >= 2);
    }
}
