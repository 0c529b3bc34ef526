//! What a consumer knows of the processes storing into its table: its own number, recorded on
//! the rows its readers store, and the numbers of processes found dead, whose pending rows its
//! workers take at once (see [`crate::store::InboxStore::open_process_lease`]). Kept up to date
//! by the `process_liveness` maintenance service.

use parking_lot::RwLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub(crate) struct Liveness {
    /// This process's number; 0 while it has none (its lease is not open yet, or the store
    /// does not tell processes apart). Numbers start at 1.
    process: AtomicI32,
    dead: RwLock<Arc<[i32]>>,
}

impl Liveness {
    /// The number to record on stored rows, if any.
    pub fn process(&self) -> Option<i32> {
        Some(self.process.load(Ordering::Relaxed)).filter(|&number| number != 0)
    }

    pub fn set_process(&self, number: i32) {
        self.process.store(number, Ordering::Relaxed);
    }

    /// The processes found dead at the last look.
    pub fn dead(&self) -> Arc<[i32]> {
        self.dead.read().clone()
    }

    /// Records the processes found dead; returns whether one of them is newly found.
    pub fn set_dead(&self, dead: Vec<i32>) -> bool {
        let mut known = self.dead.write();
        let new = dead.iter().any(|number| !known.contains(number));
        *known = dead.into();
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_a_number_records_none() {
        let liveness = Liveness::default();
        assert_eq!(liveness.process(), None);
        liveness.set_process(7);
        assert_eq!(liveness.process(), Some(7));
    }

    #[test]
    fn only_a_process_not_seen_dead_before_counts_as_newly_dead() {
        let liveness = Liveness::default();
        assert!(!liveness.set_dead(vec![]));
        assert!(liveness.set_dead(vec![3]));
        assert!(!liveness.set_dead(vec![3]), "seen already");
        assert!(liveness.set_dead(vec![3, 4]));
        assert!(!liveness.set_dead(vec![4]), "one forgotten, none new");
        assert_eq!(&*liveness.dead(), &[4]);
    }
}
