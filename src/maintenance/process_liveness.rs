//! Keeps this consumer process's lease and looks for processes that died, a few times a
//! second: a killed process's stored rows are then taken by the survivors' workers, woken at
//! once, within about a second of its death rather than after `orphan_after`.
//!
//! The lease is taken at start; when the database was down then, or the lease's session is
//! lost later, this service takes it (again) on its next round.

use super::Service;
use crate::inbox::liveness::Liveness;
use crate::inbox::worker::Work;
use crate::store::{InboxStore, ProcessLease};
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::time::Duration;

/// How often the lease is checked and dead processes are looked for: often enough that a dead
/// process's rows wait well under a second, and each look is one short query.
const INTERVAL: Duration = Duration::from_millis(250);

pub(crate) struct ProcessLiveness<S: InboxStore> {
    pub store: Arc<S>,
    /// `None` until the lease could be opened.
    pub lease: Option<Box<dyn ProcessLease>>,
    /// This process's consumer name, recorded with its lease.
    pub consumer: String,
    pub liveness: Arc<Liveness>,
    /// How long a dead process is remembered: `orphan_after`, after which its rows are
    /// orphans by age anyway.
    pub forget_after: Duration,
    /// Wakes idle workers to take a newly dead process's rows.
    pub work: Sender<Work>,
    pub workers: usize,
    /// Whether the last round's failure was logged at warn already (one warning per outage).
    pub warned: bool,
}

impl<S: InboxStore> ProcessLiveness<S> {
    fn keep_lease(&mut self) -> Result<(), crate::store::StoreError> {
        match &mut self.lease {
            Some(lease) => lease.keep(),
            None => {
                if let Some(lease) = self.store.open_process_lease(&self.consumer)? {
                    self.liveness.set_process(lease.process());
                    tracing::info!(process = lease.process(), "consumer process lease taken");
                    self.lease = Some(lease);
                }
                Ok(())
            }
        }
    }

    fn look(&mut self) -> Result<(), crate::store::StoreError> {
        self.keep_lease()?;
        let me = self.liveness.process().unwrap_or(0);
        let dead = self.store.dead_processes(me, self.forget_after)?;
        if self.liveness.set_dead(dead) {
            tracing::info!(dead = ?self.liveness.dead(), "found dead consumer processes; taking the rows they stored");
            for _ in 0..self.workers {
                let _ = self.work.try_send(Work::Sweep);
            }
        }
        Ok(())
    }
}

impl<S: InboxStore> Service for ProcessLiveness<S> {
    fn interval(&self) -> Duration {
        INTERVAL
    }

    fn run_once(&mut self, _stopping: &dyn Fn() -> bool) {
        match self.look() {
            Ok(()) => self.warned = false,
            // Rows are still found by age meanwhile; the next round tries again.
            Err(error) if !self.warned => {
                tracing::warn!(%error, "cannot keep the consumer process lease or look for dead processes; rows of dead processes wait for orphan_after meanwhile");
                self.warned = true;
            }
            Err(error) => tracing::debug!(%error, "process liveness still failing"),
        }
    }
}
