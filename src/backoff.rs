//! Waiting between attempts to reach a server that is down: doubling pauses with jitter, cut
//! short by shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Pauses of 100 ms doubling to 5 s, ±25 % jitter so that many threads reconnecting to a
/// restarted server do not arrive together.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

const FIRST: Duration = Duration::from_millis(100);
const LONGEST: Duration = Duration::from_secs(5);

impl Backoff {
    pub fn new() -> Self {
        Self { next: FIRST }
    }

    /// After a success: the next failure waits the shortest pause again.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// The next pause, doubling the one after.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next.mul_f64(0.75 + 0.5 * random_unit());
        self.next = (self.next * 2).min(LONGEST);
        pause
    }

    /// Sleeps the next pause, waking early when `stop` is set. Returns false if stopped.
    pub fn wait(&mut self, stop: &AtomicBool) -> bool {
        let until = Instant::now() + self.next_pause();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
        false
    }
}

/// A uniformly random number in `[0, 1)`, from the OS's randomness that UUID v4 uses.
pub(crate) fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_within_jitter() {
        let mut backoff = Backoff::new();
        let pauses: Vec<Duration> = (0..10).map(|_| backoff.next_pause()).collect();
        assert!(pauses[0] >= Duration::from_millis(75) && pauses[0] <= Duration::from_millis(125));
        assert!(pauses[1] >= Duration::from_millis(150) && pauses[1] <= Duration::from_millis(250));
        assert!(
            pauses[9] >= Duration::from_millis(3750) && pauses[9] <= Duration::from_millis(6250)
        );
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(125));
    }

    #[test]
    fn wait_returns_at_once_when_stopped() {
        let stop = AtomicBool::new(true);
        let started = Instant::now();
        assert!(!Backoff::new().wait(&stop));
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn random_unit_stays_in_range() {
        assert!((0..1000)
            .map(|_| random_unit())
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
