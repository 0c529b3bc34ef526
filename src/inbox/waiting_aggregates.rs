//! Ordered mode: the aggregates a reader stored rows of but could not hand over, because every
//! worker was busy and the hand-over channel was full.
//!
//! Busy workers take from here as they follow the aggregates they settle, topping each claim
//! up to a full batch, so a backlog is worked through by claims of given aggregates (one index
//! probe each) instead of scans for heads over every due row, whose cost grows with the
//! backlog. An aggregate here is only a hint: the claim checks that its head is due and free.
//! Losing one costs latency, not events (the rows are in the table, and the workers' polls
//! find every head); past [`CAPACITY`] the queue stops taking and says so, and workers fall
//! back to those scans until it has drained.

use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use uuid::Uuid;

/// Most aggregates held: 16 bytes each, twice (queue and set), so about 2 MiB at most.
pub(crate) const CAPACITY: usize = 65_536;

#[derive(Default)]
pub(crate) struct WaitingAggregates {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    order: VecDeque<Uuid>,
    held: HashSet<Uuid>,
    /// Set when an aggregate could not be taken for lack of room; cleared once the queue is
    /// empty again.
    overflowed: bool,
}

impl WaitingAggregates {
    /// Adds `aggregates` not held already, in their order, as far as there is room.
    pub fn add(&self, aggregates: &[Uuid]) {
        let mut state = self.state.lock();
        for aggregate in aggregates {
            if state.held.len() >= CAPACITY {
                state.overflowed = true;
                return;
            }
            if state.held.insert(*aggregate) {
                state.order.push_back(*aggregate);
            }
        }
    }

    /// Moves up to `room` aggregates, the longest waiting first, onto the end of `into`,
    /// skipping those `into` holds already.
    pub fn take_into(&self, into: &mut Vec<Uuid>, room: usize) {
        if room == 0 {
            return;
        }
        let mut state = self.state.lock();
        let mut taken = 0;
        while taken < room {
            let Some(aggregate) = state.order.pop_front() else {
                break;
            };
            state.held.remove(&aggregate);
            if !into.contains(&aggregate) {
                into.push(aggregate);
                taken += 1;
            }
        }
        if state.order.is_empty() {
            state.overflowed = false;
        }
    }

    /// Whether aggregates were turned away since the queue was last empty: some heads are then
    /// known only to the table, and a scan for heads is the way to them.
    pub fn overflowed(&self) -> bool {
        self.state.lock().overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::new_v4()).collect()
    }

    #[test]
    fn aggregates_come_out_once_in_the_order_they_went_in() {
        let waiting = WaitingAggregates::default();
        let [a, b, c] = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        waiting.add(&[a, b]);
        waiting.add(&[b, c, a]);
        let mut into = vec![c];
        waiting.take_into(&mut into, 2);
        assert_eq!(into, vec![c, a, b]);
        waiting.take_into(&mut into, 10);
        assert_eq!(
            into,
            vec![c, a, b],
            "c is there already, so it is not added twice"
        );
        let mut rest = Vec::new();
        waiting.take_into(&mut rest, 10);
        assert!(rest.is_empty(), "c was taken out, though not added");
    }

    #[test]
    fn a_full_queue_turns_aggregates_away_and_says_so_until_it_has_drained() {
        let waiting = WaitingAggregates::default();
        waiting.add(&ids(CAPACITY));
        assert!(!waiting.overflowed());
        waiting.add(&ids(1));
        assert!(waiting.overflowed());
        let mut into = Vec::new();
        waiting.take_into(&mut into, CAPACITY - 1);
        assert!(waiting.overflowed(), "one is still waiting");
        waiting.take_into(&mut into, 10);
        assert_eq!(into.len(), CAPACITY);
        assert!(!waiting.overflowed());
    }
}
