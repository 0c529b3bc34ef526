//! When a failed event is tried again.
//!
//! A [`RetryPolicy`] is a pure function from the number of failed attempts to the delay before
//! the next one. The default, [`ExponentialBackoff`], is the reference schedule: 60 s, 120 s,
//! 240 s, 480 s, then 15 min for every later attempt, with up to 10 % jitter so that events that
//! failed together (a database restart, say) are not all retried in the same instant. Jitter
//! lengthens a delay, never shortens it below the reference schedule, except at the 15 min cap,
//! which it never exceeds: there it shortens the delay by up to 10 %.
//!
//! Whether there is a next attempt at all is decided by the row's `max_retries`, not here: when
//! the failure count reaches a positive `max_retries` the row is dead-lettered.

use std::time::Duration;

/// Decides the delay before the next attempt of a failed event.
pub trait RetryPolicy: Send + Sync + 'static {
    /// The delay after `failures` failed attempts (1 after the first failure).
    ///
    /// `jitter` is a uniformly random number in `[0, 1)` drawn by the caller, so the policy
    /// itself stays deterministic and testable.
    fn delay(&self, failures: u32, jitter: f64) -> Duration;
}

/// Exponential backoff: `initial * 2^(failures - 1)`, capped at `max`, with up to
/// `jitter_ratio` added (below the cap) or taken off (at the cap).
///
/// The default is the reference schedule: initial 60 s, max 15 min, jitter 0.1, that is
/// 60–66 s, 120–132 s, 240–264 s, 480–528 s, then 810–900 s for every later attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    /// Delay after the first failure. Defaults to 60 s.
    pub initial: Duration,
    /// Upper bound of any delay. Defaults to 15 min.
    pub max: Duration,
    /// Fraction by which a delay is spread either way; 0 disables jitter. Defaults to 0.1.
    pub jitter_ratio: f64,
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(15 * 60),
            jitter_ratio: 0.1,
        }
    }
}

impl ExponentialBackoff {
    /// The delay after `failures` failed attempts before jitter.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

impl RetryPolicy for ExponentialBackoff {
    fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let base = self.base_delay(failures);
        let spread = self.jitter_ratio.clamp(0.0, 1.0) * jitter.clamp(0.0, 1.0);
        if base < self.max {
            base.mul_f64(1.0 + spread).min(self.max)
        } else {
            base.mul_f64(1.0 - spread)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_schedule_doubles_from_one_minute_and_caps_at_fifteen() {
        let policy = ExponentialBackoff::default();
        let secs: Vec<u64> = (1..=7).map(|n| policy.base_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(policy.base_delay(1000).as_secs(), 900);
    }

    #[test]
    fn jitter_never_shortens_the_reference_schedule_nor_exceeds_the_cap() {
        let policy = ExponentialBackoff::default();
        assert_eq!(policy.delay(1, 0.0).as_secs_f64(), 60.0);
        assert_eq!(policy.delay(1, 0.5).as_secs_f64(), 63.0);
        assert!((policy.delay(1, 0.999_999).as_secs_f64() - 66.0).abs() < 0.001);
        assert!((policy.delay(4, 0.999_999).as_secs_f64() - 528.0).abs() < 0.001);
        assert_eq!(policy.delay(9, 0.0).as_secs(), 900);
        assert!((policy.delay(9, 0.999_999).as_secs_f64() - 810.0).abs() < 0.001);
        // Just below the cap, jitter stops at the cap.
        let steep = ExponentialBackoff {
            initial: Duration::from_secs(500),
            ..policy
        };
        assert_eq!(steep.delay(1, 0.999), Duration::from_millis(549_950));
        assert_eq!(steep.delay(2, 0.0), Duration::from_secs(900));
        let near = ExponentialBackoff {
            initial: Duration::from_secs(850),
            ..policy
        };
        assert_eq!(near.delay(1, 0.999), Duration::from_secs(900));
    }

    #[test]
    fn zero_jitter_gives_the_base_schedule() {
        let policy = ExponentialBackoff {
            jitter_ratio: 0.0,
            ..ExponentialBackoff::default()
        };
        assert_eq!(policy.delay(3, 0.77), Duration::from_secs(240));
    }
}
