//! One process's counted attempts (retries and orphans, see `crate::store::attempts`) and
//! its suspects: a row whose last counted attempt never finished may kill the process again,
//! and every attempt running beside it in the process would die with it and be counted once
//! more, for its sake, until innocent rows are dead-lettered. So a suspect runs with no other
//! counted attempt of the process beside it, and counted attempts wait while one runs.
//!
//! Fresh rows are not held back: an attempt on a fresh row is not counted, so dying beside a
//! suspect costs it nothing but a later run as an orphan (counted once, with the rows that
//! shared its batch).

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
pub(crate) struct SuspectGate {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Counted batches of plain retries and orphans running now.
    counted: usize,
    /// Whether a suspect is running now.
    suspect: bool,
    /// Suspects waiting for their turn: counted batches let them go first, or a steady stream
    /// of retries would keep a suspect waiting for ever.
    suspects_waiting: usize,
}

impl SuspectGate {
    /// Waits for its turn: a suspect until nothing counted runs, anything counted until no
    /// suspect runs or waits. Pair with [`leave`](Self::leave).
    pub fn enter(&self, suspect: bool) {
        let mut state = self.state.lock();
        if suspect {
            state.suspects_waiting += 1;
            while state.suspect || state.counted > 0 {
                self.changed.wait(&mut state);
            }
            state.suspects_waiting -= 1;
            state.suspect = true;
        } else {
            while state.suspect || state.suspects_waiting > 0 {
                self.changed.wait(&mut state);
            }
            state.counted += 1;
        }
    }

    pub fn leave(&self, suspect: bool) {
        let mut state = self.state.lock();
        if suspect {
            state.suspect = false;
        } else {
            state.counted -= 1;
        }
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Suspects and counted batches from several threads never overlap a suspect, and all of
    /// them get their turn.
    #[test]
    fn a_suspect_never_runs_beside_another_counted_attempt() {
        let gate = Arc::new(SuspectGate::default());
        let running = Arc::new(AtomicUsize::new(0));
        let suspect_running = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|n| {
                let (gate, running, suspect_running, overlaps) = (
                    gate.clone(),
                    running.clone(),
                    suspect_running.clone(),
                    overlaps.clone(),
                );
                std::thread::spawn(move || {
                    for round in 0..50 {
                        let suspect = (n + round) % 3 == 0;
                        gate.enter(suspect);
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
    }
}
