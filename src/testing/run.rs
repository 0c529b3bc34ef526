//! Running a handler on one event, synchronously, and reading what the consumer would record.

use super::transaction::HandlerTransaction;
use crate::clock::{Clock, SystemClock};
use crate::event::{EntryError, Event, EventStatus};
use crate::inbox::verdict::{Jitter, Rules};
use crate::inbox::Handler;
use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::store::{ReceivedEvent, StoreError, Verdict};
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// What the consumer would record after a handler ran on an event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded: its writes stay in the transaction, and the row would be marked
    /// `processed` with them.
    Processed,
    /// The handler failed (an error, or a panic) and the event would be tried again at
    /// `next_attempt_at`; its writes were rolled back.
    Retry {
        /// When the next attempt is due: the clock's time plus the retry policy's delay.
        next_attempt_at: DateTime<Utc>,
        /// Failed attempts so far, this one included (the row's `retry_count`).
        retry_count: i32,
        /// The error, as the row's `error_message` would keep it.
        reason: String,
    },
    /// The event would be dead-lettered: the handler gave up, or this failure used the last
    /// of `max_retries`. Its writes were rolled back.
    DeadLetter {
        /// The error, as the row's `error_message` would keep it.
        reason: String,
        /// Failed attempts so far, this one included.
        retry_count: i32,
    },
}

impl Outcome {
    /// Whether the handler succeeded.
    pub fn is_processed(&self) -> bool {
        matches!(self, Outcome::Processed)
    }

    /// The failure's reason; `None` when processed.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Processed => None,
            Outcome::Retry { reason, .. } | Outcome::DeadLetter { reason, .. } => Some(reason),
        }
    }
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Processed => Outcome::Processed,
            Verdict::Failed(failure) => match (failure.status, failure.next_retry_at) {
                (EventStatus::Failed, Some(next_attempt_at)) => Outcome::Retry {
                    next_attempt_at,
                    retry_count: failure.retry_count,
                    reason: failure.error_message,
                },
                _ => Outcome::DeadLetter {
                    reason: failure.error_message,
                    retry_count: failure.retry_count,
                },
            },
        }
    }
}

/// How [`run_handler`] runs: the clock, the retry policy and the attempt, as the consumer's
/// settings and the inbox row would give them. Every setter says its default.
///
/// ```
/// use eventflow::testing::RunOptions;
/// use eventflow::{ExponentialBackoff, ManualClock};
/// use std::time::Duration;
///
/// // The last of five attempts, on the consumer's schedule, at a known time.
/// let options = RunOptions::new()
///     .clock(ManualClock::starting_now())
///     .retry_policy(ExponentialBackoff::default())
///     .jitter(0.0)
///     .max_retries(5)
///     .retry_count(4)
///     .stream("orders");
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct RunOptions {
    clock: Arc<dyn Clock>,
    retry_policy: Arc<dyn RetryPolicy>,
    jitter: f64,
    retry_count: i32,
    max_retries: i32,
    stream: String,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("now", &self.clock.now())
            .field("jitter", &self.jitter)
            .field("retry_count", &self.retry_count)
            .field("max_retries", &self.max_retries)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            retry_policy: Arc::new(ExponentialBackoff::default()),
            jitter: 0.0,
            retry_count: 0,
            max_retries: 3,
            stream: "test".to_string(),
        }
    }
}

impl RunOptions {
    /// The defaults: a first attempt, under the system clock, with the consumer's default
    /// retry policy and `max_retries`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock that stamps the failure and from which the next attempt is scheduled; pass a
    /// [`ManualClock`](crate::ManualClock) to know the time exactly. Defaults to the system
    /// clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The retry policy, as given to
    /// [`ConsumerBuilder::retry_policy`](crate::inbox::ConsumerBuilder::retry_policy).
    /// Defaults to [`ExponentialBackoff::default`], the consumer's default.
    pub fn retry_policy(mut self, policy: impl RetryPolicy) -> Self {
        self.retry_policy = Arc::new(policy);
        self
    }

    /// The jitter, in `[0, 1)`, handed to the retry policy (the consumer draws it at random).
    /// Defaults to 0, which gives the policy's shortest delay: 60 s after a first failure
    /// with the default policy.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Failed attempts before this one (the row's `retry_count`): 2 with `max_retries` 3 runs
    /// the last attempt, whose failure is a dead letter. Defaults to 0.
    pub fn retry_count(mut self, failures: i32) -> Self {
        self.retry_count = failures;
        self
    }

    /// The row's `max_retries`, as given to
    /// [`ConsumerBuilder::max_attempts`](crate::inbox::ConsumerBuilder::max_attempts); 0
    /// retries for ever. Defaults to 3, the consumer's default.
    pub fn max_retries(mut self, max_retries: i32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The stream the event is taken to come from (the row's `stream`). Defaults to `test`.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    fn validate(&self) -> Result<(), RunError> {
        let invalid = |option, reason: &str| {
            Err(RunError::InvalidOption {
                option,
                reason: reason.to_string(),
            })
        };
        if !(0.0..1.0).contains(&self.jitter) {
            return invalid("jitter", "must be in [0, 1)");
        }
        if self.retry_count < 0 {
            return invalid("retry_count", "must not be negative");
        }
        if self.max_retries < 0 {
            return invalid("max_retries", "must not be negative; 0 retries for ever");
        }
        if self.stream.trim().is_empty() {
            return invalid("stream", "must not be empty");
        }
        Ok(())
    }
}

/// Why [`run_handler`] could not run a handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A [`RunOptions`] setting is out of range; `option` names the setter.
    #[error("invalid run option, {option}: {reason}")]
    InvalidOption {
        /// The setter at fault.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The event could not have come from a stream (an empty id, a payload that is not an
    /// object, ...): the consumer would quarantine it, never run a handler on it.
    #[error("the consumer would quarantine this event, not handle it: {0}")]
    InvalidEvent(#[from] EntryError),
    /// Setting or releasing the savepoint around the handler failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs `handler` on `event` inside `tx`, as a consumer's worker would, and returns what the
/// consumer would record.
///
/// Synchronous, on the calling thread: no consumer, no stream, no sleeping. The handler gets
/// the inbox row a reader would have stored (with `options`' stream, `retry_count` and
/// `max_retries`, received at the clock's time), inside a savepoint of `tx`. On success its
/// writes stay in `tx`, where the test can read them; on failure they are rolled back to the
/// savepoint, as the consumer does, and the failure is decided by the consumer's own code: a
/// retry at the clock's time plus the retry policy's delay, or a dead letter once
/// `max_retries` is used up or when the handler gave up. A panic is caught and counts as a
/// failure, as in the consumer. Nothing is written to an inbox table.
///
/// `tx` is a `rusqlite::Transaction` for a SQLite handler, or a
/// [`PgTransaction`](crate::store::PgTransaction) for a PostgreSQL one; the handler may be a
/// function, a closure with typed arguments, or a [`Router`](crate::Router).
///
/// ```
/// use eventflow::testing::{run_handler, Outcome, RunOptions};
/// use eventflow::{Event, HandlerResult, InboxRow, ManualClock};
/// use std::time::Duration;
///
/// fn flaky(_tx: &mut rusqlite::Transaction<'_>, _row: &InboxRow) -> HandlerResult {
///     Err("the payment service is down".into())
/// }
///
/// let clock = ManualClock::starting_now();
/// let mut conn = rusqlite::Connection::open_in_memory()?;
/// let mut tx = conn.transaction()?;
/// let event = Event::new("ChargeRequested", uuid::Uuid::new_v4(), serde_json::json!({}));
///
/// let first = run_handler(&flaky, &mut tx, &event, &RunOptions::new().clock(clock.clone()))?;
/// assert_eq!(first, Outcome::Retry {
///     next_attempt_at: clock.now() + Duration::from_secs(60),
///     retry_count: 1,
///     reason: "the payment service is down".into(),
/// });
///
/// // The third attempt of three is the last.
/// let last = run_handler(&flaky, &mut tx, &event, &RunOptions::new().retry_count(2))?;
/// assert!(matches!(last, Outcome::DeadLetter { retry_count: 3, .. }));
/// # use eventflow::Clock;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn run_handler<'t, T, H>(
    handler: &H,
    tx: &mut T,
    event: &Event,
    options: &RunOptions,
) -> Result<Outcome, RunError>
where
    T: HandlerTransaction<'t>,
    H: Handler<T::Store> + ?Sized,
{
    options.validate()?;
    event.validate_received()?;
    let mut row = ReceivedEvent {
        row_id: uuid::Uuid::now_v7(),
        stream_id: "0-1".to_string(),
        event: event.clone(),
    }
    .into_pending_row(&options.stream, options.clock.now(), options.max_retries);
    row.retry_count = options.retry_count;
    if options.retry_count > 0 {
        row.status = EventStatus::Failed;
    }
    let rules = Rules {
        clock: options.clock.as_ref(),
        retry_policy: options.retry_policy.as_ref(),
        jitter: Jitter::Fixed(options.jitter),
    };
    tx.savepoint()?;
    let mut verdict = rules.run::<T::Store, H>(handler, tx, &row);
    if verdict == Verdict::Processed {
        if let Some(reason) = tx.keep()? {
            verdict = rules.failure(&row, reason, false);
        }
    } else {
        tx.undo()?;
    }
    Ok(verdict.into())
}
