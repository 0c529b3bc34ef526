//! The workers' polls for due rows (retries whose time has come, orphans), shared by the
//! process's workers so that a poll that found nothing is not repeated by each of them in the
//! same interval.
//!
//! Each worker ticks every `poll_interval`, and a poll walks the open-rows index from its oldest
//! entry. Until a vacuum, that walk also passes the entries of every row processed since (a
//! partial index keeps them), so an empty poll late in a large backlog reads the whole index:
//! in a backlog of 1,000,000 events the polls cost 2.4 microseconds of server time per event
//! early and 6.4 late. Four workers made four such walks per interval where one tells them all
//! that nothing is due. The worker that made the empty poll goes on polling on its own ticks, so
//! a due retry still waits at most about one interval, as with a single worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// No empty poll recorded.
const NONE: u64 = u64::MAX;

/// Bits of a record that hold the worker's number; the rest hold the time.
const WORKER_BITS: u32 = 16;

/// When a worker of this process last polled and found nothing due, and which worker it was.
pub(crate) struct EmptyPolls {
    origin: Instant,
    /// Milliseconds from `origin` to the end of the last empty poll, shifted left by
    /// [`WORKER_BITS`], with the number of the worker that made it below; or [`NONE`].
    last_empty: AtomicU64,
}

impl EmptyPolls {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_empty: AtomicU64::new(NONE),
        }
    }

    /// Whether another worker than `worker` found nothing due less than `interval` before
    /// `now`: a poll now would most likely find nothing either. A worker's own empty poll never
    /// holds it back, so that one worker keeps polling on every tick, as a lone worker does.
    pub fn recently_empty(&self, worker: usize, now: Instant, interval: Duration) -> bool {
        match self.last_empty.load(Ordering::Relaxed) {
            NONE => false,
            record => {
                let (at, by) = (record >> WORKER_BITS, record & Self::worker_mask());
                by != Self::worker_bits(worker)
                    && self.millis(now).saturating_sub(at) < interval.as_millis() as u64
            }
        }
    }

    /// Records a poll by `worker` that ended at `now`, and whether it settled anything: one that
    /// did leaves the other workers polling on their ticks, as the backlog of due rows may go on.
    pub fn record(&self, worker: usize, now: Instant, settled_any: bool) {
        let value = match settled_any {
            true => NONE,
            false => (self.millis(now) << WORKER_BITS) | Self::worker_bits(worker),
        };
        self.last_empty.store(value, Ordering::Relaxed);
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    fn worker_mask() -> u64 {
        (1 << WORKER_BITS) - 1
    }

    /// The worker's number as recorded: workers past 65,535 share numbers, which only lets
    /// one of them hold the other back for an interval.
    fn worker_bits(worker: usize) -> u64 {
        worker as u64 & Self::worker_mask()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(500);

    #[test]
    fn an_empty_poll_holds_back_the_other_workers_for_one_interval() {
        let polls = EmptyPolls::new();
        let start = Instant::now();
        assert!(
            !polls.recently_empty(1, start, INTERVAL),
            "nothing polled yet"
        );
        polls.record(0, start, false);
        let later = |ms| start + Duration::from_millis(ms);
        assert!(polls.recently_empty(1, later(0), INTERVAL));
        assert!(polls.recently_empty(3, later(499), INTERVAL));
        assert!(
            !polls.recently_empty(1, later(500), INTERVAL),
            "an interval on"
        );
        assert!(!polls.recently_empty(1, later(5_000), INTERVAL));
    }

    #[test]
    fn a_worker_is_never_held_back_by_its_own_empty_poll() {
        let polls = EmptyPolls::new();
        let start = Instant::now();
        polls.record(2, start, false);
        // Its next tick comes a poll's duration short of an interval after the poll ended.
        assert!(!polls.recently_empty(2, start + Duration::from_millis(490), INTERVAL));
        assert!(polls.recently_empty(0, start + Duration::from_millis(490), INTERVAL));
    }

    #[test]
    fn a_poll_that_settled_rows_lets_every_worker_poll() {
        let polls = EmptyPolls::new();
        let start = Instant::now();
        polls.record(0, start, false);
        polls.record(0, start + Duration::from_millis(100), true);
        assert!(!polls.recently_empty(1, start + Duration::from_millis(101), INTERVAL));
        // An empty one after it holds them back again, from its own end.
        polls.record(3, start + Duration::from_millis(200), false);
        assert!(polls.recently_empty(1, start + Duration::from_millis(699), INTERVAL));
        assert!(!polls.recently_empty(1, start + Duration::from_millis(700), INTERVAL));
    }
}
