//! When a failed event is tried again.
//!
//! A [`RetryPolicy`] is a pure function from the number of failed attempts to the delay before
//! the next one. The default, [`ExponentialBackoff`], is the reference schedule: 60 s, 120 s,
//! 240 s, 480 s, then 15 min for every later attempt, each spread by ±10 % jitter so that events
//! that failed together (a database restart, say) are not all retried in the same instant.
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

/// Exponential backoff: `initial * 2^(failures - 1)`, capped at `max`, spread by
/// `± jitter_ratio`.
///
/// The default is the reference schedule: initial 60 s, max 15 min, jitter 0.1, that is
/// 60 s, 120 s, 240 s, 480 s, 900 s, 900 s, ... (each ±10 %, never above 15 min).
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
        let base = self.base_delay(failures).as_secs_f64();
        let ratio = self.jitter_ratio.clamp(0.0, 1.0);
        let spread = 1.0 + ratio * (2.0 * jitter.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * spread).max(0.0)).min(self.max)
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
    fn jitter_spreads_within_ten_percent_and_never_exceeds_the_cap() {
        let policy = ExponentialBackoff::default();
        assert_eq!(policy.delay(1, 0.0).as_secs_f64(), 54.0);
        assert_eq!(policy.delay(1, 0.5).as_secs_f64(), 60.0);
        assert!((policy.delay(1, 0.999_999).as_secs_f64() - 66.0).abs() < 0.001);
        assert_eq!(policy.delay(9, 0.999).as_secs(), 900);
        assert!(policy.delay(9, 0.0).as_secs() >= 810);
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
