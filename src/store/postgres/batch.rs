//! Running a claimed batch on PostgreSQL: claim, handle, complete, commit, all in one
//! transaction that holds the rows' locks from claim to commit.
//!
//! Two passes exist. The optimistic pass runs every handler straight in the transaction, under
//! one savepoint for the whole batch: no round trip per event beyond the handler's own. When a
//! handler fails (or one left the transaction aborted), the batch is rolled back to that
//! savepoint, keeping the row locks taken by the claim, and the isolated pass runs every handler
//! again with a savepoint each, so that a failure undoes only its own writes. The handlers that
//! had succeeded run twice, but their first writes were rolled back, so their database effects
//! still happen once. The failed handler runs again too: its failure may have been caused by an
//! earlier handler that swallowed a database error.

use super::connection::PgConnection;
use super::connection::PgTransaction;
use super::queries::Queries;
use super::{is_aborted, pg, PostgresStore};
use crate::clock::Clock;
use crate::event::InboxRow;
use crate::store::attempts::{self, Count, Counted};
use crate::store::refusal::{one_row, Retry};
use crate::store::{
    orphaned_before, truncate_error, AfterDeadLetter, Claim, ClaimParams, Failure, RowHandler,
    Settled, StoreError, Verdict,
};
use chrono::{DateTime, Utc};
use postgres::types::Type;
use postgres::{SimpleQueryMessage, Statement};
use std::collections::HashSet;
use uuid::Uuid;

const BATCH_SAVEPOINT: &str = "SAVEPOINT eventflow_batch";
const BATCH_RELEASE: &str = "RELEASE SAVEPOINT eventflow_batch";
const BATCH_ROLLBACK: &str = "ROLLBACK TO SAVEPOINT eventflow_batch";
const SAVEPOINT: &str = "SAVEPOINT eventflow_row";
const RELEASE_AND_RENEW: &str = "RELEASE SAVEPOINT eventflow_row; SAVEPOINT eventflow_row";
const RELEASE: &str = "RELEASE SAVEPOINT eventflow_row";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT eventflow_row";

/// The statements a batch uses: prepared on its connection, or (as text) planned afresh on
/// every call. Those that find rows by id are planned afresh: a plan cached while the table was
/// small (or had no statistics yet) reads the whole table per call once it has grown, while a
/// plan made for the call's ids and the table's current size probes the primary key.
struct Prepared<'s> {
    claim_heads: &'s str,
    claim_heads_among: Statement,
    claim_rows: &'s str,
    /// The fresh claim is sent as text with its values in it (see [`Queries::claim_fresh`]).
    queries: &'s Queries,
    claim_due: Statement,
    claim_counted: &'s str,
    claim_unfinished_heads: &'s str,
    mark_processed: &'s str,
    record_failures: &'s str,
    dead_letter: Statement,
}

pub(super) fn process(
    store: &PostgresStore,
    params: &ClaimParams<'_>,
    handler: &mut dyn RowHandler<PostgresStore>,
) -> Result<Vec<Settled>, StoreError> {
    let mut conn = store.connection()?;
    attempts::process(
        &mut Batches {
            store,
            conn: &mut conn,
        },
        params,
        handler,
    )
}

/// Batches on one pooled connection.
struct Batches<'a> {
    store: &'a PostgresStore,
    conn: &'a mut PgConnection,
}

impl Retry<PostgresStore> for Batches<'_> {
    fn run(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<PostgresStore>,
        claimed: &mut Vec<Uuid>,
    ) -> Result<Vec<Settled>, StoreError> {
        let result = run(self.store, self.conn, params, handler, claimed);
        let failed = match &result {
            Ok(settled) => settled.iter().any(|s| s.verdict != Verdict::Processed),
            Err(_) => true,
        };
        if failed {
            self.conn.forget_statements();
        }
        result
    }

    /// Records a failed attempt for row `id` without running its handler again.
    fn record_refusal(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<PostgresStore>,
        id: Uuid,
        reason: &str,
    ) -> Result<Option<Settled>, StoreError> {
        let prepared = prepare(self.store, self.conn)?;
        let mut tx = self
            .conn
            .transaction()
            .map_err(pg("begin recording a refusal"))?;
        let time = ClaimTime::of(self.store, &mut tx, params.claim, params.clock)?;
        let (rows, _) = claim(
            &mut tx,
            &prepared,
            one_row(params.claim, &id),
            time.now,
            None,
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None); // settled meanwhile by someone else
        };
        let verdict = handler.failed_after(&row, reason.to_string());
        let settled = [Settled { row, verdict }];
        complete(&mut tx, &prepared, &settled, time, false)?;
        tx.commit().map_err(pg("commit a refusal"))?;
        let [settled] = settled;
        Ok(Some(settled))
    }

    fn count_attempts(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<PostgresStore>,
    ) -> Result<Counted, StoreError> {
        let prepared = prepare(self.store, self.conn)?;
        let mut tx = self
            .conn
            .transaction()
            .map_err(pg("begin counting attempts"))?;
        let now = ClaimTime::of(self.store, &mut tx, params.claim, params.clock)?.now;
        let rows = match params.claim {
            Claim::Due { .. } => claim(&mut tx, &prepared, params.claim, now, None)?.0,
            // Unnamed, planned for these values every time, as the other claim over any
            // aggregate.
            Claim::Heads {
                limit,
                after_dead_letter,
                aggregates: None,
                orphan_after,
            } => {
                let rows = tx
                    .query_typed(
                        prepared.claim_unfinished_heads,
                        &[
                            (&now, Type::TIMESTAMPTZ),
                            (&(limit as i64), Type::INT8),
                            (&(after_dead_letter == AfterDeadLetter::Park), Type::BOOL),
                            (&orphaned_before(now, orphan_after), Type::TIMESTAMPTZ),
                        ],
                    )
                    .map_err(pg("claim unfinished heads"))?;
                readable(&mut tx, &prepared, &rows, now)?
            }
            _ => return Ok(Counted::default()),
        };
        let Some(rows) = attempts::pick(rows, handler) else {
            return Ok(Counted {
                refused: true,
                ..Counted::default()
            });
        };
        if rows.is_empty() {
            return Ok(Counted::default());
        }
        let mut counted = Counted::default();
        let mut failures = Vec::with_capacity(rows.len());
        for row in rows {
            match attempts::count(&row, handler, now) {
                Count::DeadLetter(failure) => {
                    failures.push((row.id, failure.clone()));
                    counted.settled.push(Settled {
                        row,
                        verdict: Verdict::Failed(failure),
                    });
                }
                Count::Run(failure) => {
                    failures.push((row.id, failure));
                    counted.run.push(row);
                }
            }
        }
        let failures: Vec<(Uuid, &Failure)> = failures.iter().map(|(id, f)| (*id, f)).collect();
        record_failures(&mut tx, &prepared, &failures)?;
        tx.commit().map_err(pg("commit counted attempts"))?;
        Ok(counted)
    }
}

fn run(
    store: &PostgresStore,
    conn: &mut PgConnection,
    params: &ClaimParams<'_>,
    handler: &mut dyn RowHandler<PostgresStore>,
    claimed: &mut Vec<Uuid>,
) -> Result<Vec<Settled>, StoreError> {
    let prepared = prepare(store, conn)?;
    let mut tx = conn.transaction().map_err(pg("begin a claim"))?;
    let time = ClaimTime::of(store, &mut tx, params.claim, params.clock)?;
    // The handlers' time limit is set before their savepoint, which a rollback to must not lift.
    let savepoint = match params.optimistic {
        true => BATCH_SAVEPOINT,
        false => SAVEPOINT,
    };
    let before_handlers = match &store.handler_statement {
        Some(limits) => format!("{limits}; {savepoint}"),
        None => savepoint.to_string(),
    };
    let (rows, marked) = claim(
        &mut tx,
        &prepared,
        params.claim,
        time.now,
        Some(&before_handlers),
    )?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    claimed.extend(rows.iter().map(|row| row.id));
    let settled = match params.optimistic {
        true => match optimistic(&mut tx, &rows, handler)? {
            Some(verdicts) => rows
                .into_iter()
                .zip(verdicts)
                .map(|(row, verdict)| Settled { row, verdict })
                .collect(),
            None => {
                tracing::debug!(rows = rows.len(), "a handler failed in an optimistic batch; redoing it with a savepoint per event");
                // A handler's cached statement may have gone stale (its table altered): the
                // redo prepares afresh.
                tx.forget_statements();
                tx.batch_execute(SAVEPOINT).map_err(pg("set a savepoint"))?;
                isolated(&mut tx, rows, handler)?
            }
        },
        false => isolated(&mut tx, rows, handler)?,
    };
    complete(&mut tx, &prepared, &settled, time, marked)?;
    tx.commit().map_err(pg("commit handled rows"))?;
    Ok(settled)
}

fn prepare<'s>(
    store: &'s PostgresStore,
    conn: &mut PgConnection,
) -> Result<Prepared<'s>, StoreError> {
    let mut statement = |sql: &str| conn.prepared(sql).map_err(pg("prepare a statement"));
    Ok(Prepared {
        claim_heads: &store.sql.claim_heads,
        claim_heads_among: statement(&store.sql.claim_heads_among)?,
        claim_rows: &store.sql.claim_rows,
        queries: &store.sql,
        claim_due: statement(&store.sql.claim_due)?,
        claim_counted: &store.sql.claim_counted,
        claim_unfinished_heads: &store.sql.claim_unfinished_heads,
        mark_processed: &store.sql.mark_processed,
        record_failures: &store.sql.record_failures,
        dead_letter: statement(&store.sql.dead_letter)?,
    })
}

/// Locks the claimed rows; returns them, and whether they are already marked processed. When
/// rows were claimed, `then` runs after the claim (in the same round trip, for a fresh claim).
fn claim(
    tx: &mut PgTransaction<'_>,
    prepared: &Prepared<'_>,
    claim: Claim<'_>,
    now: DateTime<Utc>,
    then: Option<&str>,
) -> Result<(Vec<InboxRow>, bool), StoreError> {
    if let Claim::Fresh(rows) = claim {
        return claim_fresh(tx, prepared, rows, now, then).map(|rows| (rows, true));
    }
    let (rows, marked) = claim_locked(tx, prepared, claim, now)?;
    if let (Some(then), false) = (then, rows.is_empty()) {
        tx.batch_execute(then).map_err(pg("set a savepoint"))?;
    }
    Ok((rows, marked))
}

/// Locks the rows of a claim other than a fresh one; returns them, and whether they are
/// already marked processed.
fn claim_locked(
    tx: &mut PgTransaction<'_>,
    prepared: &Prepared<'_>,
    claim: Claim<'_>,
    now: DateTime<Utc>,
) -> Result<(Vec<InboxRow>, bool), StoreError> {
    let mut marked = false;
    let rows = match claim {
        // `claim` sends these with what follows them; alone, nothing follows.
        Claim::Fresh(rows) => {
            return claim_fresh(tx, prepared, rows, now, None).map(|rows| (rows, true))
        }
        Claim::Counted(rows) => return claim_counted(tx, prepared, rows).map(|rows| (rows, false)),
        Claim::Rows(ids) => tx.query_typed(
            prepared.claim_rows,
            &[(&ids, Type::UUID_ARRAY), (&now, Type::TIMESTAMPTZ)],
        ),
        Claim::Due {
            limit,
            orphan_after,
            dead_processes,
        } => {
            let orphaned_before = orphaned_before(now, orphan_after);
            tx.query(
                &prepared.claim_due,
                &[&now, &(limit as i64), &orphaned_before, &dead_processes],
            )
        }
        // Any aggregate: unnamed, so planned for these values every time; a cached generic
        // plan, made while the table was small, would scan every due row per claim once a
        // backlog builds. Given aggregates: prepared, since its plan is one index probe per
        // aggregate whatever the table holds, and planning it costs more than running it.
        Claim::Heads {
            limit,
            after_dead_letter,
            aggregates,
            orphan_after: _,
        } => {
            let park = after_dead_letter == AfterDeadLetter::Park;
            let limit = limit as i64;
            match aggregates {
                Some(aggregates) => {
                    marked = true;
                    tx.query(
                        &prepared.claim_heads_among,
                        &[&now, &limit, &park, &aggregates],
                    )
                }
                None => tx.query_typed(
                    prepared.claim_heads,
                    &[
                        (&now, Type::TIMESTAMPTZ),
                        (&limit, Type::INT8),
                        (&park, Type::BOOL),
                    ],
                ),
            }
        }
    }
    .map_err(pg("claim rows"))?;
    Ok((readable(tx, prepared, &rows, now)?, marked))
}

/// The claimed rows as [`InboxRow`]s; a row that cannot be read is dead-lettered instead.
fn readable(
    tx: &mut PgTransaction<'_>,
    prepared: &Prepared<'_>,
    rows: &[postgres::Row],
    now: DateTime<Utc>,
) -> Result<Vec<InboxRow>, StoreError> {
    let mut readable = Vec::with_capacity(rows.len());
    for row in rows {
        match super::inbox_row(row) {
            Ok(row) => readable.push(row),
            // A row nobody can read would fail every claim that reaches it, holding up every
            // row behind it: it is dead-lettered with the reason instead.
            Err(StoreError::Corrupt { reason, .. }) => {
                let id: Uuid = row.try_get(0).map_err(pg("read a row id"))?;
                tracing::error!(row = %id, %reason, "unreadable inbox row dead-lettered");
                let message = truncate_error(&format!("unreadable row: {reason}"));
                tx.execute(&prepared.dead_letter, &[&id, &message, &now])
                    .map_err(pg("dead-letter an unreadable row"))?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(readable)
}

/// Locks the rows given that are still as their count left them (`failed`, one attempt more
/// than given), and returns those, as given.
fn claim_counted(
    tx: &mut PgTransaction<'_>,
    prepared: &Prepared,
    rows: &[InboxRow],
) -> Result<Vec<InboxRow>, StoreError> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let claimed: std::collections::HashMap<Uuid, i32> = tx
        .query_typed(prepared.claim_counted, &[(&ids, Type::UUID_ARRAY)])
        .map_err(pg("claim counted rows"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(rows
        .iter()
        .filter(|row| claimed.get(&row.id) == Some(&row.retry_count.saturating_add(1)))
        .cloned()
        .collect())
}

/// Claims fresh rows by marking them processed: one write per row instead of a lock and then
/// an update. A row another worker holds (a poller that found it due) makes this wait for that
/// worker's commit, after which the row is no longer fresh and is skipped; pollers skip locked
/// rows, so nobody waits in a circle. `then` is sent with the claim, in one round trip.
fn claim_fresh(
    tx: &mut PgTransaction<'_>,
    prepared: &Prepared,
    rows: &[InboxRow],
    now: DateTime<Utc>,
    then: Option<&str>,
) -> Result<Vec<InboxRow>, StoreError> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let text = prepared.queries.claim_fresh(&ids, now, then.unwrap_or(""));
    let mut claimed = HashSet::with_capacity(ids.len());
    for message in tx.simple_query(&text).map_err(pg("claim fresh rows"))? {
        if let SimpleQueryMessage::Row(row) = message {
            let id = row.get(0).and_then(|id| Uuid::parse_str(id).ok());
            claimed.insert(id.ok_or_else(|| StoreError::Corrupt {
                row: "a freshly claimed row".to_string(),
                reason: format!("the claim returned {:?} for an id", row.get(0)),
            })?);
        }
    }
    Ok(rows
        .iter()
        .filter(|row| claimed.contains(&row.id))
        .cloned()
        .collect())
}

/// Runs every handler under one savepoint, set by the claim; `None` when the batch must be
/// redone isolated (it has been rolled back to the savepoint, the row locks kept).
fn optimistic(
    tx: &mut PgTransaction<'_>,
    rows: &[InboxRow],
    handler: &mut dyn RowHandler<PostgresStore>,
) -> Result<Option<Vec<Verdict>>, StoreError> {
    let mut verdicts = Vec::with_capacity(rows.len());
    for row in rows {
        let verdict = handler.handle(tx, row);
        if verdict != Verdict::Processed {
            tx.batch_execute(BATCH_ROLLBACK)
                .map_err(pg("roll back a batch"))?;
            return Ok(None);
        }
        verdicts.push(verdict);
    }
    match tx.batch_execute(BATCH_RELEASE) {
        Ok(()) => Ok(Some(verdicts)),
        // A handler swallowed a database error; the isolated pass finds which.
        Err(error) if is_aborted(&error) => {
            tx.batch_execute(BATCH_ROLLBACK)
                .map_err(pg("roll back a batch"))?;
            Ok(None)
        }
        Err(error) => Err(pg("release a savepoint")(error)),
    }
}

/// Runs every handler under a savepoint of its own; the first row's is set already.
fn isolated(
    tx: &mut PgTransaction<'_>,
    rows: Vec<InboxRow>,
    handler: &mut dyn RowHandler<PostgresStore>,
) -> Result<Vec<Settled>, StoreError> {
    let mut settled: Vec<Settled> = Vec::with_capacity(rows.len());
    // The savepoint of a row whose handler succeeded is released together with the next row's
    // new savepoint, one round trip per row. A release that finds the transaction aborted means
    // that handler swallowed a database error: its row fails instead.
    let mut unreleased: Option<usize> = None;
    for row in rows {
        if let Some(index) = unreleased.take() {
            release(tx, RELEASE_AND_RENEW, &mut settled[index], handler)?;
        }
        let verdict = handler.handle(tx, &row);
        match verdict {
            Verdict::Processed => unreleased = Some(settled.len()),
            // The savepoint survives a rollback to it, ready for the next row.
            Verdict::Failed(_) => tx
                .batch_execute(ROLLBACK_TO)
                .map_err(pg("roll back a failed row"))?,
        }
        settled.push(Settled { row, verdict });
    }
    if let Some(index) = unreleased {
        release(tx, RELEASE, &mut settled[index], handler)?;
    }
    Ok(settled)
}

/// Releases the savepoint of the row at `settled`, whose handler succeeded; when the database
/// refuses because that handler left the transaction aborted, rolls the row back and fails it.
fn release(
    tx: &mut PgTransaction<'_>,
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

/// Records every row's verdict: one statement for the processed rows (unless the claim marked
/// them already), one for the failures.
fn complete(
    tx: &mut PgTransaction<'_>,
    prepared: &Prepared,
    settled: &[Settled],
    time: ClaimTime<'_>,
    marked: bool,
) -> Result<(), StoreError> {
    let finished_at = time.local(time.clock.now());
    let processed: Vec<Uuid> = settled
        .iter()
        .filter(|s| s.verdict == Verdict::Processed)
        .map(|s| s.row.id)
        .collect();
    if !processed.is_empty() && !marked {
        tx.query_typed(
            prepared.mark_processed,
            &[
                (&processed, Type::UUID_ARRAY),
                (&finished_at, Type::TIMESTAMPTZ),
            ],
        )
        .map_err(pg("mark rows processed"))?;
    }
    // The handlers' times are the host clock's: moved onto the database's.
    let failures: Vec<(Uuid, Failure)> = settled
        .iter()
        .filter_map(|s| match &s.verdict {
            Verdict::Failed(failure) => Some((s.row.id, time.shifted(failure))),
            Verdict::Processed => None,
        })
        .collect();
    let failures: Vec<(Uuid, &Failure)> = failures.iter().map(|(id, f)| (*id, f)).collect();
    record_failures(tx, prepared, &failures)
}

/// The time a claim judges by: the database's (see `database_clock`) or the injected clock's,
/// and how far the clock is from it.
#[derive(Clone, Copy)]
struct ClaimTime<'c> {
    now: DateTime<Utc>,
    clock: &'c dyn Clock,
    /// The database's time minus the clock's, zero when the clock is the store's time.
    skew: chrono::Duration,
}

impl<'c> ClaimTime<'c> {
    /// A fresh claim and a claim among given aggregates take pending rows by id or aggregate,
    /// whatever the time: they keep the host's time and no round trip.
    fn of(
        store: &PostgresStore,
        tx: &mut PgTransaction<'_>,
        claim: Claim<'_>,
        clock: &'c dyn Clock,
    ) -> Result<Self, StoreError> {
        let local = clock.now();
        let host_time = matches!(
            claim,
            Claim::Fresh(_)
                | Claim::Heads {
                    aggregates: Some(_),
                    ..
                }
        );
        if !store.database_clock || host_time {
            return Ok(Self {
                now: local,
                clock,
                skew: chrono::Duration::zero(),
            });
        }
        let now: DateTime<Utc> = tx
            .query_one("SELECT now()", &[])
            .map_err(pg("read the database's time"))?
            .get(0);
        Ok(Self {
            now,
            clock,
            skew: now - local,
        })
    }

    /// A time of the clock's, on the claim's time.
    fn local(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        at + self.skew
    }

    fn shifted(&self, failure: &Failure) -> Failure {
        Failure {
            next_retry_at: failure.next_retry_at.map(|at| self.local(at)),
            failed_at: self.local(failure.failed_at),
            ..failure.clone()
        }
    }
}

/// Records failed attempts, in one statement.
fn record_failures(
    tx: &mut PgTransaction<'_>,
    prepared: &Prepared,
    failures: &[(Uuid, &Failure)],
) -> Result<(), StoreError> {
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
        tx.query_typed(
            prepared.record_failures,
            &[
                (&ids, Type::UUID_ARRAY),
                (&statuses, Type::VARCHAR_ARRAY),
                (&counts, Type::INT4_ARRAY),
                (&next, Type::TIMESTAMPTZ_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&at, Type::TIMESTAMPTZ_ARRAY),
            ],
        )
        .map_err(pg("record failed attempts"))?;
    }
    Ok(())
}
