//! Consumer processes' leases: a session advisory lock per process (see migration 0007), so the
//! survivors tell the rows a killed process stored from a live process's fresh rows at once.
//!
//! A process takes a number, locks `(LIVENESS_LOCK_KEY, number)` on a session of its own and
//! records itself in `eventflow_consumer_processes`. The server releases the lock when the
//! session ends, which it does as soon as the process dies and the kernel closes its socket (or,
//! for a host cut off, when keepalives give up on it). A survivor that can take the lock knows the
//! process is gone; taking it as a transaction lock lets it go again at once.

use super::connection::PgManager;
use super::pg;
use crate::store::{ProcessLease, StoreError};
use postgres::Client;
use std::sync::Arc;
use std::time::Duration;

/// The first key of a process's lease lock, `pg_advisory_lock(key, process)`: the two-key form
/// never collides with the one-key locks, and this key is not the cleanup lock's.
const LIVENESS_LOCK_KEY: i32 = 0x6566_6c76; // "eflv"

/// Registers the process (again, after a lost session: alive once more).
const REGISTER: &str = "INSERT INTO eventflow_consumer_processes (inbox_table, process, consumer) \
     VALUES ($1, $2, $3) ON CONFLICT (inbox_table, process) DO UPDATE SET died_at = NULL";

/// Marks the processes whose lock can be taken as dead (a transaction lock, released at
/// commit: the process never comes back under its number but through `keep`, which waits for
/// it), forgets those dead for longer than `$3` seconds, and returns every process known dead.
/// The final select sees the table as it was before this statement's changes, so the newly
/// dead come from `found`.
const DEAD_PROCESSES: &str =
    "WITH found AS (UPDATE eventflow_consumer_processes SET died_at = now() \
     WHERE inbox_table = $1 AND process <> $2 AND died_at IS NULL \
     AND pg_try_advisory_xact_lock($4, process) RETURNING process), \
     forgotten AS (DELETE FROM eventflow_consumer_processes WHERE inbox_table = $1 \
     AND died_at < now() - make_interval(secs => $3)) \
     SELECT process FROM found UNION SELECT process FROM eventflow_consumer_processes \
     WHERE inbox_table = $1 AND process <> $2 AND died_at >= now() - make_interval(secs => $3)";

/// A consumer process's lease on PostgreSQL: the session holding its lock.
pub(super) struct PgProcessLease {
    manager: Arc<PgManager>,
    table: String,
    consumer: String,
    process: i32,
    /// `None` after the session was lost, until `keep` opens another.
    session: Option<Client>,
}

impl PgProcessLease {
    pub(super) fn open(
        manager: Arc<PgManager>,
        table: &str,
        consumer: &str,
    ) -> Result<Self, StoreError> {
        let mut client = connect(&manager)?;
        let process: i32 = client
            .query_one(
                "SELECT nextval('eventflow_consumer_process_seq')::int4",
                &[],
            )
            .map_err(pg("number a consumer process"))?
            .get(0);
        let mut lease = PgProcessLease {
            manager,
            table: table.to_string(),
            consumer: consumer.to_string(),
            process,
            session: None,
        };
        lease.hold(client)?;
        Ok(lease)
    }

    /// Takes the lock on `client`, then records the process as alive: in that order, so a
    /// survivor never finds it registered and unlocked while it lives.
    fn hold(&mut self, mut client: Client) -> Result<(), StoreError> {
        // Waits out a survivor checking it (a transaction lock, held for one short statement).
        client
            .execute(
                "SELECT pg_advisory_lock($1, $2)",
                &[&LIVENESS_LOCK_KEY, &self.process],
            )
            .map_err(pg("lock a consumer process's lease"))?;
        client
            .execute(REGISTER, &[&self.table, &self.process, &self.consumer])
            .map_err(pg("register a consumer process"))?;
        self.session = Some(client);
        Ok(())
    }
}

impl ProcessLease for PgProcessLease {
    fn process(&self) -> i32 {
        self.process
    }

    fn keep(&mut self) -> Result<(), StoreError> {
        if let Some(session) = &mut self.session {
            if session.simple_query("").is_ok() {
                return Ok(());
            }
            self.session = None;
            tracing::warn!(process = self.process, table = %self.table, "lost the session holding this consumer process's lease; taking it again");
        }
        let client = connect(&self.manager)?;
        self.hold(client)
    }
}

fn connect(manager: &PgManager) -> Result<Client, StoreError> {
    manager
        .connect_client()
        .map_err(pg("open a consumer process's lease session"))
}

/// The processes of `table` other than `me` found dead, remembered for `forget_after`.
pub(super) fn dead_processes(
    client: &mut Client,
    table: &str,
    me: i32,
    forget_after: Duration,
) -> Result<Vec<i32>, StoreError> {
    let rows = client
        .query(
            DEAD_PROCESSES,
            &[&table, &me, &forget_after.as_secs_f64(), &LIVENESS_LOCK_KEY],
        )
        .map_err(pg("find dead consumer processes"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
