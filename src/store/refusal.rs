//! A batch the database refuses as a whole (a deferred constraint failing at commit, a
//! statement over a server limit: see [`StoreError::is_refusal`]) would fail the same way at
//! every claim, holding up every row behind it. Its rows are therefore handled one transaction
//! each, and a row refused on its own is recorded as a failed attempt, in a transaction of its
//! own, as for a handler error. Anything else (a lock or statement timeout, a trigger's
//! exception outside classes 22 and 23, a lost connection) is an outage: the batch rolls back
//! untouched and the worker backs off, counting no attempt.

use super::attempts::Counted;
use super::{Claim, ClaimParams, InboxStore, RowHandler, Settled, StoreError};
use uuid::Uuid;

/// What a backend gives [`split_refused`]: running a claim, and recording a refusal.
pub(crate) trait Retry<S: InboxStore> {
    /// Runs one claim in one transaction, reporting the ids it claimed before failing.
    fn run(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<S>,
        claimed: &mut Vec<Uuid>,
    ) -> Result<Vec<Settled>, StoreError>;

    /// Records a failed attempt for row `id` (if it is still due) without running its handler.
    fn record_refusal(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<S>,
        id: Uuid,
        reason: &str,
    ) -> Result<Option<Settled>, StoreError>;

    /// Claims the retries and orphans `params` asks for (rows another worker holds skipped) and
    /// records each one's attempt up front, in one committed transaction (see
    /// [`super::attempts`]); other claims count nothing.
    fn count_attempts(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<S>,
    ) -> Result<Counted, StoreError>;
}

/// Runs `params` as one batch; when the database refuses it, goes row by row.
pub(crate) fn split_refused<S: InboxStore>(
    backend: &mut dyn Retry<S>,
    params: &ClaimParams<'_>,
    handler: &mut dyn RowHandler<S>,
) -> Result<Vec<Settled>, StoreError> {
    let mut claimed = Vec::new();
    match backend.run(params, handler, &mut claimed) {
        Err(error) if error.is_refusal() && claimed.len() == 1 => {
            let reason = format!("its transaction was refused: {error}");
            Ok(backend
                .record_refusal(params, handler, claimed[0], &reason)?
                .into_iter()
                .collect())
        }
        Err(error) if error.is_refusal() && claimed.len() > 1 => {
            tracing::warn!(%error, rows = claimed.len(), "a batch was refused; handling its rows one at a time");
            let mut settled = Vec::with_capacity(claimed.len());
            for id in claimed {
                let single = ClaimParams {
                    claim: one_row(params.claim, &id),
                    optimistic: false,
                    ..*params
                };
                match backend.run(&single, handler, &mut Vec::new()) {
                    Ok(done) => settled.extend(done),
                    Err(error) if error.is_refusal() => {
                        let reason = format!("its transaction was refused: {error}");
                        settled.extend(backend.record_refusal(&single, handler, id, &reason)?);
                    }
                    Err(error) => return Err(error),
                }
            }
            Ok(settled)
        }
        result => result,
    }
}

/// Row `id` of `claim` alone: a counted row stays a counted row (it is not due until its count's
/// retry time, and its handler sees it as it was before the count), any other row is claimed by
/// id if still due.
pub(crate) fn one_row<'a>(claim: Claim<'a>, id: &'a Uuid) -> Claim<'a> {
    match claim {
        Claim::Counted(rows) => Claim::Counted(
            rows.iter()
                .position(|row| row.id == *id)
                .map_or(&[][..], |at| &rows[at..=at]),
        ),
        _ => Claim::Rows(std::slice::from_ref(id)),
    }
}
