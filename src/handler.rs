//! What a handler tells the worker when it could not handle an event.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error from user code.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a handler returns: `Ok(())` commits its writes together with the row's move to
/// `processed`; an error rolls its writes back and records a failed attempt.
pub type HandlerResult = Result<(), HandlerError>;

/// Why a handler did not handle an event.
///
/// Any error converts into [`HandlerError::Retry`] with `?`; return
/// [`HandlerError::give_up`] for an event that can never succeed (a payload the handler cannot
/// accept, say) to dead-letter it at once instead of after `max_retries` attempts.
///
/// ```
/// use eventflow::{HandlerError, HandlerResult};
///
/// fn check(amount: i64) -> HandlerResult {
///     if amount < 0 {
///         return Err(HandlerError::give_up(format!("negative amount {amount}")));
///     }
///     let _parsed: i64 = "42".parse()?; // any error: retried later
///     Ok(())
/// }
/// assert!(check(-1).is_err());
/// ```
#[derive(Debug)]
pub enum HandlerError {
    /// A failure that may pass: the event is retried on the policy's schedule until the row's
    /// `max_retries` is reached, then dead-lettered.
    Retry(BoxError),
    /// A failure that will not pass: the event is dead-lettered now.
    GiveUp(BoxError),
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self::Retry(error.into())
    }

    /// A failure not worth retrying: dead-letter the event now.
    pub fn give_up(error: impl Into<BoxError>) -> Self {
        Self::GiveUp(error.into())
    }

    /// Whether the event should be dead-lettered without further attempts.
    pub fn is_give_up(&self) -> bool {
        matches!(self, Self::GiveUp(_))
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        match self {
            Self::Retry(error) | Self::GiveUp(error) => error.as_ref(),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The error chain, so "failed to insert: duplicate key ..." keeps its cause.
        let mut message = self.error().to_string();
        let mut source = self.error().source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        f.write_str(&message)
    }
}

// No `impl Error for HandlerError`: it would conflict with this blanket conversion, which is what
// lets handlers use `?` on any error.
impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::Retry(error.into())
    }
}
