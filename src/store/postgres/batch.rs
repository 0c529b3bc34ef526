//! Running a claimed batch on PostgreSQL: claim, handle, complete, commit, all in one
//! transaction that holds the rows' locks from claim to commit.
//!
//! Two passes exist. The optimistic pass runs every handler straight in the transaction: no
//! round trip per event beyond the handler's own. When a handler fails, that transaction is
//! rolled back and the same rows are claimed again for the isolated pass, which gives each event
//! a savepoint so that a failure undoes only its own writes. The handlers that had succeeded in
//! the optimistic pass run again there; their first writes were rolled back, so their database
//! effects still happen once. The failure already seen is recorded without running that handler
//! again.

use super::connection::PgConnection;
use super::{is_aborted, pg, PostgresStore};
use crate::clock::Clock;
use crate::event::InboxRow;
use crate::store::{Claim, ClaimParams, Failure, RowHandler, Settled, StoreError, Verdict};
use chrono::{DateTime, Utc};
use postgres::{Statement, Transaction};
use std::collections::HashMap;
use uuid::Uuid;

const SAVEPOINT: &str = "SAVEPOINT eventflow_row";
const RELEASE_AND_RENEW: &str = "RELEASE SAVEPOINT eventflow_row; SAVEPOINT eventflow_row";
const RELEASE: &str = "RELEASE SAVEPOINT eventflow_row";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT eventflow_row";

/// The statements a batch uses, prepared on its connection.
struct Prepared {
    claim_rows: Statement,
    claim_due: Statement,
    mark_processed: Statement,
    record_failures: Statement,
}

enum Pass {
    Committed(Vec<Settled>),
    /// Rolled back: run these rows again in the isolated pass, with the verdicts already known.
    Redo {
        claimed: Vec<Uuid>,
        known: HashMap<Uuid, Verdict>,
    },
}

pub(super) fn process(
    store: &PostgresStore,
    params: &ClaimParams<'_>,
    handler: &mut dyn RowHandler<PostgresStore>,
) -> Result<Vec<Settled>, StoreError> {
    let mut conn = store.connection()?;
    let prepared = prepare(store, &mut conn)?;
    if params.optimistic {
        match optimistic(&mut conn, &prepared, params, handler)? {
            Pass::Committed(settled) => return Ok(settled),
            Pass::Redo { claimed, known } => {
                tracing::debug!(rows = claimed.len(), "a handler failed in an optimistic batch; redoing it with a savepoint per event");
                let redo = ClaimParams {
                    claim: Claim::Rows(&claimed),
                    ..*params
                };
                return isolated(&mut conn, &prepared, &redo, handler, known);
            }
        }
    }
    isolated(&mut conn, &prepared, params, handler, HashMap::new())
}

fn prepare(store: &PostgresStore, conn: &mut PgConnection) -> Result<Prepared, StoreError> {
    let mut statement = |sql: &str| {
        conn.prepared(sql)
            .map(|(_, s)| s)
            .map_err(pg("prepare a statement"))
    };
    Ok(Prepared {
        claim_rows: statement(&store.sql.claim_rows)?,
        claim_due: statement(&store.sql.claim_due)?,
        mark_processed: statement(&store.sql.mark_processed)?,
        record_failures: statement(&store.sql.record_failures)?,
    })
}

fn claim(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    claim: Claim<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<InboxRow>, StoreError> {
    let rows = match claim {
        Claim::Rows(ids) => tx.query(&prepared.claim_rows, &[&ids, &now]),
        Claim::Due { limit } => tx.query(&prepared.claim_due, &[&now, &(limit as i64)]),
    }
    .map_err(pg("claim rows"))?;
    rows.iter().map(super::inbox_row).collect()
}

fn optimistic(
    conn: &mut PgConnection,
    prepared: &Prepared,
    params: &ClaimParams<'_>,
    handler: &mut dyn RowHandler<PostgresStore>,
) -> Result<Pass, StoreError> {
    let mut tx = conn.transaction().map_err(pg("begin a claim"))?;
    let rows = claim(&mut tx, prepared, params.claim, params.clock.now())?;
    let claimed: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let mut settled = Vec::with_capacity(rows.len());
    for row in rows {
        let verdict = handler.handle(&mut tx, &row);
        if let Verdict::Failed(_) = verdict {
            tx.rollback().map_err(pg("roll back an optimistic batch"))?;
            return Ok(Pass::Redo {
                claimed,
                known: HashMap::from([(row.id, verdict)]),
            });
        }
        settled.push(Settled { row, verdict });
    }
    if settled.is_empty() {
        return Ok(Pass::Committed(settled));
    }
    match complete(&mut tx, prepared, &settled, params.clock) {
        Ok(()) => {}
        // A handler swallowed a database error; the isolated pass finds which.
        Err(StoreError::Postgres { source, .. }) if is_aborted(&source) => {
            tx.rollback().map_err(pg("roll back an optimistic batch"))?;
            return Ok(Pass::Redo {
                claimed,
                known: HashMap::new(),
            });
        }
        Err(error) => return Err(error),
    }
    tx.commit().map_err(pg("commit handled rows"))?;
    Ok(Pass::Committed(settled))
}

fn isolated(
    conn: &mut PgConnection,
    prepared: &Prepared,
    params: &ClaimParams<'_>,
    handler: &mut dyn RowHandler<PostgresStore>,
    mut known: HashMap<Uuid, Verdict>,
) -> Result<Vec<Settled>, StoreError> {
    let mut tx = conn.transaction().map_err(pg("begin a claim"))?;
    let rows = claim(&mut tx, prepared, params.claim, params.clock.now())?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut settled: Vec<Settled> = Vec::with_capacity(rows.len());
    // The savepoint of a row whose handler succeeded is released together with the next row's
    // new savepoint, one round trip per row. A release that finds the transaction aborted means
    // that handler swallowed a database error: its row fails instead.
    let mut unreleased: Option<usize> = None;
    let mut savepoint_set = false;
    for row in rows {
        if let Some(verdict) = known.remove(&row.id) {
            settled.push(Settled { row, verdict });
            continue;
        }
        match unreleased.take() {
            Some(index) => release(&mut tx, RELEASE_AND_RENEW, &mut settled[index], handler)?,
            None if !savepoint_set => tx.batch_execute(SAVEPOINT).map_err(pg("set a savepoint"))?,
            None => {} // the savepoint survives the previous row's rollback to it
        }
        savepoint_set = true;
        let verdict = handler.handle(&mut tx, &row);
        match verdict {
            Verdict::Processed => unreleased = Some(settled.len()),
            Verdict::Failed(_) => tx
                .batch_execute(ROLLBACK_TO)
                .map_err(pg("roll back a failed row"))?,
        }
        settled.push(Settled { row, verdict });
    }
    if let Some(index) = unreleased {
        release(&mut tx, RELEASE, &mut settled[index], handler)?;
    }
    complete(&mut tx, prepared, &settled, params.clock)?;
    tx.commit().map_err(pg("commit handled rows"))?;
    Ok(settled)
}

/// Releases the savepoint of the row at `settled`, whose handler succeeded; when the database
/// refuses because that handler left the transaction aborted, rolls the row back and fails it.
fn release(
    tx: &mut Transaction<'_>,
    statement: &str,
    settled: &mut Settled,
    handler: &mut dyn RowHandler<PostgresStore>,
) -> Result<(), StoreError> {
    match tx.batch_execute(statement) {
        Ok(()) => Ok(()),
        Err(error) if is_aborted(&error) => {
            tx.batch_execute(ROLLBACK_TO)
                .map_err(pg("roll back an aborted row"))?;
            settled.verdict = handler.failed_after(
                &settled.row,
                "the handler returned success but a statement it ran had failed, aborting its transaction"
                    .to_string(),
            );
            if statement == RELEASE_AND_RENEW {
                tx.batch_execute(RELEASE_AND_RENEW)
                    .map_err(pg("set a savepoint"))?;
            }
            Ok(())
        }
        Err(error) => Err(pg("release a savepoint")(error)),
    }
}

/// Records every row's verdict: one statement for the processed rows, one for the failures.
fn complete(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    settled: &[Settled],
    clock: &dyn Clock,
) -> Result<(), StoreError> {
    let finished_at = clock.now();
    let processed: Vec<Uuid> = settled
        .iter()
        .filter(|s| s.verdict == Verdict::Processed)
        .map(|s| s.row.id)
        .collect();
    if !processed.is_empty() {
        tx.execute(&prepared.mark_processed, &[&processed, &finished_at])
            .map_err(pg("mark rows processed"))?;
    }
    let failures: Vec<(Uuid, &Failure)> = settled
        .iter()
        .filter_map(|s| match &s.verdict {
            Verdict::Failed(failure) => Some((s.row.id, failure)),
            Verdict::Processed => None,
        })
        .collect();
    if !failures.is_empty() {
        let ids: Vec<Uuid> = failures.iter().map(|(id, _)| *id).collect();
        let statuses: Vec<&str> = failures.iter().map(|(_, f)| f.status.as_str()).collect();
        let counts: Vec<i32> = failures.iter().map(|(_, f)| f.retry_count).collect();
        let next: Vec<Option<DateTime<Utc>>> =
            failures.iter().map(|(_, f)| f.next_retry_at).collect();
        let errors: Vec<&str> = failures
            .iter()
            .map(|(_, f)| f.error_message.as_str())
            .collect();
        let at: Vec<DateTime<Utc>> = failures.iter().map(|(_, f)| f.failed_at).collect();
        tx.execute(
            &prepared.record_failures,
            &[&ids, &statuses, &counts, &next, &errors, &at],
        )
        .map_err(pg("record failed attempts"))?;
    }
    Ok(())
}
