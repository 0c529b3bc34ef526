//! The one rule that turns a handler's outcome into what the inbox records: processed, a retry
//! at the policy's time, or a dead letter. The workers decide through it, and so does
//! [`crate::testing::run_handler`], so a handler's unit test sees what the consumer would record.

use super::consumer::Handler;
use super::worker::panic_message;
use crate::backoff::random_unit;
use crate::clock::Clock;
use crate::event::{EventStatus, InboxRow};
use crate::handler::HandlerResult;
use crate::retry::RetryPolicy;
use crate::store::{truncate_error, Failure, InboxStore, Verdict};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The longest delay before a retry, whatever the policy says.
pub(crate) const MAX_RETRY_DELAY: chrono::Duration = chrono::Duration::days(365);

/// Where the jitter handed to the retry policy comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Jitter {
    /// A fresh random draw per failure: the consumer's workers.
    Random,
    /// Always this value in `[0, 1)`: tests that need the next retry time exactly.
    Fixed(f64),
}

/// What the decision needs: the time, the retry policy, and the jitter.
pub(crate) struct Rules<'a> {
    pub clock: &'a dyn Clock,
    pub retry_policy: &'a dyn RetryPolicy,
    pub jitter: Jitter,
}

impl Rules<'_> {
    /// Runs `handler` on `row` in `tx`, catching a panic, and says what to record.
    pub fn run<S: InboxStore, H: Handler<S> + ?Sized>(
        &self,
        handler: &H,
        tx: &mut S::Tx<'_>,
        row: &InboxRow,
    ) -> Verdict {
        let outcome = catch_unwind(AssertUnwindSafe(|| handler.handle(tx, row)));
        self.after_handler(row, outcome)
    }

    /// What to record for `row` after its handler returned `outcome` (or panicked).
    pub fn after_handler(
        &self,
        row: &InboxRow,
        outcome: std::thread::Result<HandlerResult>,
    ) -> Verdict {
        match outcome {
            Ok(Ok(())) => Verdict::Processed,
            Ok(Err(error)) => self.failure(row, error.to_string(), error.is_give_up()),
            Err(panic) => self.failure(
                row,
                format!("handler panicked: {}", panic_message(panic.as_ref())),
                false,
            ),
        }
    }

    /// The reference rule: one more failure; dead-lettered when it reaches a positive
    /// `max_retries` (or the handler gave up), else retried after the policy's delay.
    pub fn failure(&self, row: &InboxRow, message: String, give_up: bool) -> Verdict {
        let failures = row.retry_count.saturating_add(1);
        let now = self.clock.now();
        let dead = give_up || (row.max_retries > 0 && failures >= row.max_retries);
        let next_retry_at = (!dead).then(|| now + self.retry_delay(failures));
        Verdict::Failed(Failure {
            status: if dead {
                EventStatus::DeadLetter
            } else {
                EventStatus::Failed
            },
            retry_count: failures,
            next_retry_at,
            error_message: truncate_error(&message),
            failed_at: now,
        })
    }

    /// The retry policy's delay after `failures` failed attempts.
    pub fn retry_delay(&self, failures: i32) -> chrono::Duration {
        let jitter = match self.jitter {
            Jitter::Random => random_unit(),
            Jitter::Fixed(jitter) => jitter,
        };
        let delay = self.retry_policy.delay(failures.max(0) as u32, jitter);
        // A year at most: beyond that a custom policy's delay is a bug, and a far-off time
        // could overflow the stores' timestamp ranges.
        chrono::Duration::from_std(delay)
            .unwrap_or(MAX_RETRY_DELAY)
            .min(MAX_RETRY_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::event::Event;
    use crate::handler::HandlerError;
    use crate::retry::ExponentialBackoff;

    fn row(retry_count: i32, max_retries: i32) -> InboxRow {
        InboxRow {
            id: uuid::Uuid::new_v4(),
            stream_id: "1-0".into(),
            stream: Some("orders".into()),
            event: Event::new("OrderCreated", uuid::Uuid::nil(), serde_json::json!({})),
            status: EventStatus::Pending,
            retry_count,
            max_retries,
            received_at: chrono::Utc::now(),
            processed_at: None,
            next_retry_at: None,
            error_message: None,
            last_error_at: None,
        }
    }

    fn failed(verdict: Verdict) -> Failure {
        match verdict {
            Verdict::Failed(failure) => failure,
            Verdict::Processed => panic!("expected a failure"),
        }
    }

    #[test]
    fn failures_retry_on_the_schedule_until_max_retries_then_dead_letter() {
        let clock = ManualClock::starting_now();
        let policy = ExponentialBackoff::default();
        let rules = Rules {
            clock: &clock,
            retry_policy: &policy,
            jitter: Jitter::Fixed(0.0),
        };
        let first = failed(rules.after_handler(&row(0, 3), Ok(Err("down".into()))));
        assert_eq!(first.status, EventStatus::Failed);
        assert_eq!(first.retry_count, 1);
        assert_eq!(
            first.next_retry_at,
            Some(clock.now() + chrono::Duration::seconds(60))
        );
        let second = failed(rules.after_handler(&row(1, 3), Ok(Err("down".into()))));
        assert_eq!(
            second.next_retry_at,
            Some(clock.now() + chrono::Duration::seconds(120))
        );
        let last = failed(rules.after_handler(&row(2, 3), Ok(Err("down".into()))));
        assert_eq!(last.status, EventStatus::DeadLetter);
        assert_eq!(last.next_retry_at, None);
        // max_retries 0: retried for ever.
        let unlimited = failed(rules.after_handler(&row(50, 0), Ok(Err("down".into()))));
        assert_eq!(unlimited.status, EventStatus::Failed);
    }

    #[test]
    fn give_up_dead_letters_at_once_and_a_panic_is_a_failure_with_its_message() {
        let clock = ManualClock::starting_now();
        let policy = ExponentialBackoff::default();
        let rules = Rules {
            clock: &clock,
            retry_policy: &policy,
            jitter: Jitter::Random,
        };
        let gave_up =
            failed(rules.after_handler(&row(0, 3), Ok(Err(HandlerError::give_up("bad payload")))));
        assert_eq!(gave_up.status, EventStatus::DeadLetter);
        assert_eq!(gave_up.error_message, "bad payload");
        let panicked = failed(rules.after_handler(&row(0, 3), Err(Box::new("boom"))));
        assert_eq!(panicked.status, EventStatus::Failed);
        assert_eq!(panicked.error_message, "handler panicked: boom");
        let delay = panicked.next_retry_at.unwrap() - clock.now();
        assert!(delay >= chrono::Duration::seconds(60) && delay <= chrono::Duration::seconds(66));
    }
}
