//! One process's counted attempts (retries and orphans, see `crate::store::attempts`) and
//! its suspects: a row whose last counted attempt never finished may kill the process again,
//! and every attempt counted in the process while it runs would die with it and be counted
//! once more, for its sake, until innocent rows are dead-lettered. So a suspect is counted only
//! when no other counted attempt of the process is unfinished, and nothing else is counted
//! until it has run. Admission is decided before counting, not after: two workers that each
//! counted a suspect, one waiting for the other to run, left the waiting one counted for
//! nothing when the other killed the process (a poison event's neighbour, counted three times
//! that way over three restarts, was dead-lettered beside it).
//!
//! Fresh rows are not held back: an attempt on a fresh row is not counted, so dying beside a
//! suspect costs it nothing but a later run as an orphan (counted once, with the rows that
//! shared its batch).

use parking_lot::Mutex;

#[derive(Default)]
pub(crate) struct SuspectGate {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Counted batches of plain retries and orphans admitted and not yet finished.
    counted: usize,
    /// Whether a suspect is admitted and not yet finished.
    suspect: bool,
}

impl SuspectGate {
    /// Admits attempts about to be counted, without waiting: a suspect when no other counted
    /// attempt of the process is unfinished, a batch of plain retries and orphans when no
    /// suspect is. Pair an admission with [`leave`](Self::leave).
    pub fn try_admit(&self, suspect: bool) -> bool {
        let mut state = self.state.lock();
        match suspect {
            true if state.suspect || state.counted > 0 => false,
            true => {
                state.suspect = true;
                true
            }
            false if state.suspect => false,
            false => {
                state.counted += 1;
                true
            }
        }
    }

    pub fn leave(&self, suspect: bool) {
        let mut state = self.state.lock();
        if suspect {
            state.suspect = false;
        } else {
            state.counted -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Suspects and counted batches admitted from several threads never overlap a suspect,
    /// and every thread is admitted in the end.
    #[test]
    fn a_suspect_is_never_admitted_beside_another_counted_attempt() {
        let gate = Arc::new(SuspectGate::default());
        let running = Arc::new(AtomicUsize::new(0));
        let suspect_running = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let admitted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|n| {
                let (gate, running, suspect_running, overlaps, admitted) = (
                    gate.clone(),
                    running.clone(),
                    suspect_running.clone(),
                    overlaps.clone(),
                    admitted.clone(),
                );
                std::thread::spawn(move || {
                    for round in 0..50 {
                        let suspect = (n + round) % 3 == 0;
                        while !gate.try_admit(suspect) {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        admitted.fetch_add(1, Ordering::SeqCst);
                        let others = running.fetch_add(1, Ordering::SeqCst);
                        if suspect {
                            suspect_running.store(true, Ordering::SeqCst);
                        }
                        if (suspect && others > 0)
                            || (!suspect && suspect_running.load(Ordering::SeqCst))
                        {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        std::thread::sleep(Duration::from_micros(200));
                        if suspect {
                            suspect_running.store(false, Ordering::SeqCst);
                        }
                        running.fetch_sub(1, Ordering::SeqCst);
                        gate.leave(suspect);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
        assert_eq!(running.load(Ordering::SeqCst), 0);
        assert_eq!(admitted.load(Ordering::SeqCst), 6 * 50);
    }

    #[test]
    fn a_suspect_waits_for_counted_batches_and_holds_back_new_ones() {
        let gate = SuspectGate::default();
        assert!(gate.try_admit(false));
        assert!(!gate.try_admit(true), "a counted batch is unfinished");
        gate.leave(false);
        assert!(gate.try_admit(true));
        assert!(!gate.try_admit(false), "a suspect is unfinished");
        assert!(!gate.try_admit(true), "one suspect at a time");
        gate.leave(true);
        assert!(gate.try_admit(false));
        assert!(gate.try_admit(false), "counted batches run side by side");
    }
}
