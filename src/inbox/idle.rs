//! Knowing when a running consumer is idle, for [`ConsumerHandle::wait_idle`]: readers and
//! workers report each unit of work they begin and end to an [`Activity`], which wakes the
//! waiters on a condition variable, so a test blocks until the consumer has settled what it was
//! given instead of polling its counters.
//!
//! [`ConsumerHandle::wait_idle`]: super::ConsumerHandle::wait_idle

use crate::error::{Error, Result};
use crate::transport::{Transport, TransportError};
use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Units of work in progress, and a count of those that ended having done something.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Units begun and not ended: readers storing a batch, hand-overs queued for or held by a
    /// worker, workers claiming rows.
    busy: usize,
    /// Bumped whenever a unit ends having stored or settled something.
    generation: u64,
}

/// A unit of work in progress; dropping it ends the unit.
pub(crate) struct Busy<'a> {
    activity: &'a Activity,
    did_something: bool,
}

impl Busy<'_> {
    /// Says whether the unit stored or settled anything; assumed so unless told otherwise.
    pub fn did_something(&mut self, did: bool) {
        self.did_something = did;
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.activity.leave(self.did_something);
    }
}

impl Activity {
    /// Begins a unit of work that ends when the returned guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.enter();
        Busy {
            activity: self,
            did_something: true,
        }
    }

    /// Begins a unit of work that another thread ends with [`leave`](Self::leave): a hand-over
    /// queued for the workers, counted before it is sent so no worker can end it first.
    pub fn enter(&self) {
        self.state.lock().busy += 1;
    }

    /// Ends a unit begun with [`enter`](Self::enter).
    pub fn leave(&self, did_something: bool) {
        let mut state = self.state.lock();
        state.busy = state.busy.saturating_sub(1);
        if did_something {
            state.generation += 1;
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Waits until no unit is in progress; returns the generation then, or `None` when
    /// `deadline` passed first (no deadline: wait as long as it takes).
    fn wait_quiet(&self, deadline: Option<Instant>) -> Option<u64> {
        let mut state = self.state.lock();
        while state.busy > 0 {
            match deadline {
                Some(deadline) => {
                    if self.changed.wait_until(&mut state, deadline).timed_out() {
                        return (state.busy == 0).then_some(state.generation);
                    }
                }
                None => self.changed.wait(&mut state),
            }
        }
        Some(state.generation)
    }

    /// Waits until the generation moves past `generation`; false when `deadline` passed first.
    fn wait_change(&self, generation: u64, deadline: Option<Instant>) -> bool {
        let mut state = self.state.lock();
        while state.generation == generation {
            match deadline {
                Some(deadline) => {
                    if self.changed.wait_until(&mut state, deadline).timed_out() {
                        return state.generation != generation;
                    }
                }
                None => self.changed.wait(&mut state),
            }
        }
        true
    }

    /// Whether nothing is in progress and nothing has been done since `generation`.
    fn still_quiet(&self, generation: u64) -> bool {
        let state = self.state.lock();
        state.busy == 0 && state.generation == generation
    }
}

/// A request to a worker to claim every due row now, answered when it has.
pub(crate) type SweepRequest = Sender<Swept>;

/// What a requested sweep did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Swept {
    /// Rows settled (processed, retried or dead-lettered).
    pub settled: usize,
    /// Whether a claim failed on a database error (the rows stay due).
    pub failed: bool,
}

/// What [`ConsumerHandle::wait_idle`](super::ConsumerHandle::wait_idle) looks at.
pub(crate) struct IdleWatch {
    pub activity: Arc<Activity>,
    /// Taken by whichever worker is free first.
    pub sweeps: Sender<SweepRequest>,
    pub transport: Arc<dyn Transport>,
    pub streams: Vec<String>,
    pub group: String,
}

impl IdleWatch {
    /// Blocks until the consumer is idle (see `ConsumerHandle::wait_idle`), or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now().checked_add(timeout);
        let timed_out = |waiting_for: String| Error::IdleTimedOut {
            timeout,
            waiting_for,
        };
        let mut waiting_for = String::from("work in progress");
        loop {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(timed_out(waiting_for));
            }
            let Some(generation) = self.activity.wait_quiet(deadline) else {
                return Err(timed_out("work in progress".into()));
            };
            // Entries not read yet, or read and not yet stored: a reader is about to store
            // them, and its unit of work will move the generation.
            if let Some(backlog) = self.stream_backlog()? {
                waiting_for = backlog;
                if !self.activity.wait_change(generation, deadline) {
                    return Err(timed_out(waiting_for));
                }
                continue;
            }
            // Rows due in the inbox (retries whose time has come, pending rows no hand-over
            // carries, such as a replayed quarantine entry): a worker claims them now instead
            // of on its next tick.
            let swept = self.sweep(deadline, timeout)?;
            if swept.settled > 0 {
                waiting_for = "rows a sweep settled".into();
                continue;
            }
            if swept.failed {
                waiting_for = "a claim that failed on a database error".into();
                continue;
            }
            if self.activity.still_quiet(generation) {
                return Ok(());
            }
            waiting_for = "work that began during the check".into();
        }
    }

    /// What the streams still hold for the group, if anything.
    fn stream_backlog(&self) -> Result<Option<String>> {
        for stream in &self.streams {
            let stats = match self.transport.group_stats(stream, &self.group) {
                Ok(stats) => stats,
                // Lost (a broker restart, say): a reader creates it again and says so.
                Err(TransportError::NoGroup { .. }) => {
                    return Ok(Some(format!(
                        "the group on stream {stream}, to be created again"
                    )))
                }
                Err(error) => return Err(error.into()),
            };
            let unread = stats.lag.unwrap_or(0);
            if unread > 0 || stats.pending > 0 {
                return Ok(Some(format!(
                    "stream {stream}: {unread} entries not read, {} read and not acknowledged",
                    stats.pending
                )));
            }
        }
        Ok(None)
    }

    /// Asks a worker to claim every due row now and waits for its answer.
    fn sweep(&self, deadline: Option<Instant>, timeout: Duration) -> Result<Swept> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        if self.sweeps.send(reply).is_err() {
            return Err(Error::NotRunning);
        }
        let answered = match deadline {
            Some(deadline) => answer.recv_deadline(deadline).ok(),
            None => answer.recv().ok(),
        };
        answered.ok_or_else(|| Error::IdleTimedOut {
            timeout,
            waiting_for: "a worker free to claim due rows".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_quiet_returns_once_every_unit_has_ended() {
        let activity = Arc::new(Activity::default());
        activity.enter();
        let busy = activity.busy();
        let ended = {
            let activity = activity.clone();
            std::thread::spawn(move || activity.leave(true))
        };
        drop(busy);
        let generation = activity.wait_quiet(None).unwrap();
        ended.join().unwrap();
        assert_eq!(generation, 2);
        assert!(activity.still_quiet(2));
    }

    #[test]
    fn a_unit_that_did_nothing_leaves_the_generation_alone() {
        let activity = Activity::default();
        activity.busy().did_something(false);
        assert!(activity.still_quiet(0));
        let past = Instant::now();
        assert!(!activity.wait_change(0, Some(past)));
        activity.enter();
        assert_eq!(activity.wait_quiet(Some(past)), None);
    }
}
